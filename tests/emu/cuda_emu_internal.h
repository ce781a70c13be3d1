// What the two halves of the host emulator (tests/emu/cuda_emu.h) share, and no one else uses:
// cuda_emu.cpp (fibers, blocks, warp collectives, the emulated PTX, kernel launch) and
// cuda_emu_runtime.cpp (streams and the CUDA runtime API). A launch queues its grid through
// enqueue() (cuda_emu.h); the one thing more it needs from the runtime is its error state.
#pragma once

#include "cuda_emu.h"

namespace kiln::emu {
// Makes error what cudaGetLastError reports next (a launch with a bad configuration).
void set_last_error(cudaError_t error);
}  // namespace kiln::emu
