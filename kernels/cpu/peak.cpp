// kiln::cpu::peak_flops (kernels/peak.h): multiply-add chains timed on every thread.
//
// Each variant keeps 16 independent accumulators so that the FMA units' latency (4 cycles, two
// pipes) is hidden and the loop is bound by throughput only. The multiplier comes from a volatile
// so that the compiler cannot fold anything, and the accumulators converge (acc * 0.9999 + 1e-4)
// so no value turns denormal, infinite or NaN. Each variant is compiled for its instruction set
// with a target attribute and picked at run time, so the probe runs on any x86-64 build.
#include "kernels/peak.h"

#include <omp.h>

#include <algorithm>
#include <ctime>
#include <cstdint>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace kiln::cpu {
namespace {

volatile float g_multiplier = 0.9999f;
volatile float g_addend = 1e-4f;
volatile float g_sink = 0.0f;

constexpr int kChains = 16;

struct Variant {
  const char* name;
  double flops_per_iteration;  // per thread
  float (*run)(std::int64_t iterations);
};

#if defined(__x86_64__)
// Two lanes of the accumulators' sum: enough to keep every chain's work (GCC 12's
// _mm512_reduce_add_ps warns about its own undefined vectors).
__attribute__((target("avx512f"))) float lanes_sum(const __m512 (&acc)[kChains]) {
  __m512 sum = acc[0];
  for (int c = 1; c < kChains; ++c) sum = _mm512_add_ps(sum, acc[c]);
  float out[16];
  _mm512_storeu_ps(out, sum);
  return out[0] + out[15];
}

__attribute__((target("avx512f"))) float fma_avx512(std::int64_t iterations) {
  const __m512 m = _mm512_set1_ps(g_multiplier), a = _mm512_set1_ps(g_addend);
  __m512 acc[kChains];
  for (auto& x : acc) x = _mm512_setzero_ps();
  for (std::int64_t i = 0; i < iterations; ++i)
    for (auto& x : acc) x = _mm512_fmadd_ps(x, m, a);
  return lanes_sum(acc);
}

__attribute__((target("avx512f,avx512bf16"))) float dpbf16_avx512(std::int64_t iterations) {
  const __m512bh m = _mm512_cvtne2ps_pbh(_mm512_set1_ps(g_multiplier), _mm512_set1_ps(g_multiplier));
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(g_addend), _mm512_set1_ps(g_addend));
  __m512 acc[kChains];
  for (auto& x : acc) x = _mm512_setzero_ps();
  for (std::int64_t i = 0; i < iterations; ++i)
    for (auto& x : acc) x = _mm512_dpbf16_ps(x, m, a);  // x += m.even*a.even + m.odd*a.odd
  return lanes_sum(acc);
}

__attribute__((target("avx2,fma"))) float fma_avx2(std::int64_t iterations) {
  const __m256 m = _mm256_set1_ps(g_multiplier), a = _mm256_set1_ps(g_addend);
  __m256 acc[kChains];
  for (auto& x : acc) x = _mm256_setzero_ps();
  for (std::int64_t i = 0; i < iterations; ++i)
    for (auto& x : acc) x = _mm256_fmadd_ps(x, m, a);
  float out[8];
  __m256 sum = acc[0];
  for (int c = 1; c < kChains; ++c) sum = _mm256_add_ps(sum, acc[c]);
  _mm256_storeu_ps(out, sum);
  return out[0] + out[7];
}
#endif

float fma_scalar(std::int64_t iterations) {
  const float m = g_multiplier, a = g_addend;
  float acc[kChains] = {};
  for (std::int64_t i = 0; i < iterations; ++i)
    for (float& x : acc) x = x * m + a;
  float sum = 0.0f;
  for (float x : acc) sum += x;
  return sum;
}

Variant pick(bool bf16) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (bf16 && __builtin_cpu_supports("avx512bf16"))
    return {"AVX-512 BF16 dot products (vdpbf16ps)", kChains * 16 * 4.0, dpbf16_avx512};
  if (__builtin_cpu_supports("avx512f")) return {"AVX-512 FMA", kChains * 16 * 2.0, fma_avx512};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {"AVX2 FMA", kChains * 8 * 2.0, fma_avx2};
#endif
  return {"scalar multiply-add", kChains * 2.0, fma_scalar};
}

// Every thread runs `iterations` of the variant at once and times itself in CPU time, not
// wall time: time the scheduler gives to other processes (another job, a compiler) is not
// counted, so a busy machine does not lower the peak (which would raise MFU above 100%). Returns
// the sum over threads of each thread's FLOP/s.
double rate_all_threads(const Variant& v, std::int64_t iterations) {
  double total = 0.0;
#pragma omp parallel reduction(+ : total)
  {
    timespec start{}, end{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &start);
    const float result = v.run(iterations);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &end);
    if (result == 12345.0f) g_sink = result;  // keeps the work observable
    const double seconds = static_cast<double>(end.tv_sec - start.tv_sec) + 1e-9 * static_cast<double>(end.tv_nsec - start.tv_nsec);
    total += v.flops_per_iteration * static_cast<double>(iterations) / std::max(seconds, 1e-9);
  }
  return total;
}

}  // namespace

PeakFlops peak_flops(bool bf16, int repeats, double seconds) {
  const Variant v = pick(bf16);
  const int threads = omp_get_max_threads();
  rate_all_threads(v, 1 << 10);  // starts the threads and wakes the cores up; not counted
  // Each timed run lasts about `seconds` of CPU time per thread.
  std::int64_t iterations = 1 << 14;
  double best = rate_all_threads(v, iterations);
  while (v.flops_per_iteration * static_cast<double>(iterations) * threads / best < seconds) {
    iterations *= 2;
    best = std::max(best, rate_all_threads(v, iterations));
  }
  for (int r = 1; r < repeats; ++r) best = std::max(best, rate_all_threads(v, iterations));
  return {best, std::string("measured: ") + v.name + " on " + std::to_string(threads) +
                    " thread(s), CPU time, best of " + std::to_string(repeats)};
}

}  // namespace kiln::cpu
