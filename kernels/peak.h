// The peak multiply-add rate of the hardware a run is on, for MFU (model FLOPs utilisation):
// measured on the CPU (kiln::cpu::peak_flops, kernels/cpu/peak.cpp), derived from the device's
// model on the GPU (kiln::device::cuda_peak_flops, kernels/device.h). MFU divides by it, so it
// must never be below what the matrix products reach: a peak from another machine (the CPU under
// a session may be Zen 4 or Zen 5, twice as fast) printed MFU above 100%.
#pragma once

#include <string>

namespace kiln {

struct PeakFlops {
  double flops_per_s = 0.0;
  std::string how;  // how it was obtained, said once at the start of a run
};

namespace cpu {

// The best rate of `repeats` runs (each about `seconds`, after a warm-up) of independent
// multiply-add chains on every OpenMP thread at once, each thread timed in its own CPU time (so
// other processes on a busy machine do not lower it), summed over the threads: 512-bit FMAs (AVX-512), 256-bit (AVX2),
// or scalar code, whichever the CPU has; with bf16, the AVX-512 BF16 dot product (vdpbf16ps,
// two multiply-adds per lane) where the CPU has it, else the fp32 rate. About 0.2 s in all.
PeakFlops peak_flops(bool bf16, int repeats = 5, double seconds = 0.02);

}  // namespace cpu
}  // namespace kiln
