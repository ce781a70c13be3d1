// The CUDA fused softmax cross-entropy (kernels/cuda/cross_entropy.cu) against its CPU twin:
// padded vocabularies (50257 -> 50304, 5 -> 8, and unaligned rows 5 -> 5, 7 -> 9 that take the
// scalar path), masks and a null mask, forward only, the bf16 variant, and the three
// vocabulary-parallel passes.
//
// Tolerances. fp32: losses atol 1e-5 + rtol 1e-5 (a sum of exponentials in another order and
// another exp); gradients rtol 1e-5 + atol 1e-7 * |scale| (the target entry (p - 1) scale cancels
// when p is near 1). bf16 logits: the CPU twin gets the same rounded values in fp32, so losses
// keep the fp32 tolerance; gradients are rounded to bf16 once: rtol 1e-2.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gpu_test.h"
#include "kernels/cross_entropy.h"

namespace {

using kiln::bf16;
using kiln::testing::DeviceBuffer;
using kiln::testing::expect_close;

struct Problem {
  std::int64_t n, vocab, padded;
  std::vector<float> logits;  // (n, padded); padded columns hold 1e4 (wrong if ever read)
  std::vector<std::int32_t> targets;
  std::vector<std::uint8_t> mask;  // about one row in four off (target -1 there: never read)
};

Problem make_problem(std::int64_t n, std::int64_t vocab, std::int64_t padded, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> logit(0.0f, 3.0f);
  std::uniform_int_distribution<std::int32_t> token(0, static_cast<std::int32_t>(vocab - 1));
  Problem p{n, vocab, padded, std::vector<float>(n * padded), std::vector<std::int32_t>(n), std::vector<std::uint8_t>(n)};
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < padded; ++j) p.logits[i * padded + j] = j < vocab ? logit(gen) : 1e4f;
    p.mask[i] = gen() % 4 != 0;
    p.targets[i] = token(gen);
  }
  return p;
}

// Targets of unmasked rows set to -1 (out of range): the kernels must not read them.
std::vector<std::int32_t> targets_for(const Problem& p, bool masked) {
  std::vector<std::int32_t> t = p.targets;
  if (masked)
    for (std::int64_t i = 0; i < p.n; ++i)
      if (!p.mask[i]) t[i] = -1;
  return t;
}

// GPT-2's vocabulary padded to 50304; 5 padded to 8 (fp32 rows 32 bytes: vector path); 5 and
// 7 -> 9 (rows not 16-byte aligned: scalar path); a vocabulary of one.
const std::vector<Problem>& problems() {
  static const std::vector<Problem> all = {make_problem(7, 5, 8, 1), make_problem(3, 5, 5, 2),
                                           make_problem(5, 7, 9, 3), make_problem(33, 50257, 50304, 4),
                                           make_problem(2, 1, 4, 5)};
  return all;
}

TEST(CudaCrossEntropy, MatchesCpuWithPaddedVocabularyAndMasks) {
  KILN_REQUIRE_GPU();
  for (const Problem& p : problems()) {
    for (bool masked : {false, true}) {
      for (float scale : {0.0f, 1.0f / static_cast<float>(p.n), -2.5f}) {
        SCOPED_TRACE(testing::Message() << "n=" << p.n << " vocab=" << p.vocab << " padded=" << p.padded
                                        << " masked=" << masked << " scale=" << scale);
        const auto targets = targets_for(p, masked);
        std::vector<float> losses(p.n), logits = p.logits;
        kiln::cpu::softmax_cross_entropy(losses.data(), logits.data(), targets.data(), masked ? p.mask.data() : nullptr,
                                         p.n, p.vocab, p.padded, scale);
        DeviceBuffer<float> dlogits(p.logits), dlosses(p.n);
        DeviceBuffer<std::int32_t> dtargets(targets);
        DeviceBuffer<std::uint8_t> dmask(p.mask);
        kiln::cuda::softmax_cross_entropy(dlosses.get(), dlogits.get(), dtargets.get(), masked ? dmask.get() : nullptr,
                                          p.n, p.vocab, p.padded, scale);
        expect_close(dlosses.host(), losses, 1e-5, 1e-5, "losses");
        if (scale == 0.0f) {
          // Forward only: the logits are left exactly as they were.
          const auto after = dlogits.host();
          EXPECT_EQ(std::memcmp(after.data(), p.logits.data(), p.logits.size() * sizeof(float)), 0);
        } else {
          expect_close(dlogits.host(), logits, 1e-7 * std::fabs(scale), 1e-5, "dlogits");
        }
      }
    }
  }
}

TEST(CudaCrossEntropy, Bf16GradientIsCloseToTheFp32Reference) {
  KILN_REQUIRE_GPU();
  for (const Problem& p : problems()) {
    for (bool masked : {false, true}) {
      SCOPED_TRACE(testing::Message() << "n=" << p.n << " vocab=" << p.vocab << " padded=" << p.padded << " masked=" << masked);
      const float scale = 1.0f / static_cast<float>(p.n);
      const auto targets = targets_for(p, masked);
      const auto logits16 = kiln::testing::to_bf16(p.logits);
      std::vector<float> losses(p.n), logits = kiln::testing::to_float(logits16);
      kiln::cpu::softmax_cross_entropy(losses.data(), logits.data(), targets.data(), masked ? p.mask.data() : nullptr,
                                       p.n, p.vocab, p.padded, scale);
      DeviceBuffer<bf16> dlogits(logits16);
      DeviceBuffer<float> dlosses(p.n);
      DeviceBuffer<std::int32_t> dtargets(targets);
      DeviceBuffer<std::uint8_t> dmask(p.mask);
      kiln::cuda::softmax_cross_entropy_bf16(dlosses.get(), dlogits.get(), dtargets.get(), masked ? dmask.get() : nullptr,
                                             p.n, p.vocab, p.padded, scale);
      expect_close(dlosses.host(), losses, 1e-5, 1e-5, "losses");
      expect_close(kiln::testing::to_float(dlogits.host()), logits, 1e-7 * scale, 1e-2, "dlogits");
    }
  }
}

// A vocabulary of 1003 split over three ranks (real columns 335, 335, 333, padded to 336 or to
// an odd 337), plus a rank holding padding only; the max and sums are combined over the ranks on
// the host, as the caller would.
TEST(CudaCrossEntropy, VocabularyParallelPassesMatchCpu) {
  KILN_REQUIRE_GPU();
  const std::int64_t n = 17, vocab = 1003;
  const std::int64_t firsts[] = {0, 335, 670, 1003}, reals[] = {335, 335, 333, 0};
  for (std::int64_t padded : {336, 337}) {
    const Problem full = make_problem(n, vocab, vocab, 10 + static_cast<unsigned>(padded));
    for (bool masked : {false, true}) {
      SCOPED_TRACE(testing::Message() << "padded=" << padded << " masked=" << masked);
      const auto targets = full.targets;  // the vocab-parallel sums read targets of every row
      std::vector<std::vector<float>> shards(4, std::vector<float>(n * padded, 1e4f));
      for (int r = 0; r < 4; ++r)
        for (std::int64_t i = 0; i < n; ++i)
          for (std::int64_t j = 0; j < reals[r]; ++j) shards[r][i * padded + j] = full.logits[i * vocab + firsts[r] + j];
      // Pass 1 on every rank, then the max over ranks.
      std::vector<float> global_max(n, -INFINITY);
      for (int r = 0; r < 4; ++r) {
        std::vector<float> row_max(n);
        kiln::cpu::cross_entropy_local_max(row_max.data(), shards[r].data(), n, reals[r], padded);
        DeviceBuffer<float> dshard(shards[r]), drow_max(n);
        kiln::cuda::cross_entropy_local_max(drow_max.get(), dshard.get(), n, reals[r], padded);
        EXPECT_EQ(drow_max.host(), row_max) << "rank " << r;  // a maximum is exact
        for (std::int64_t i = 0; i < n; ++i) global_max[i] = std::fmax(global_max[i], row_max[i]);
      }
      // Pass 2 with the global max, then the sums over ranks.
      std::vector<float> global_sum(n, 0.0f);
      for (int r = 0; r < 4; ++r) {
        std::vector<float> row_sum(n), target_logit(n);
        kiln::cpu::cross_entropy_local_sums(row_sum.data(), target_logit.data(), shards[r].data(), global_max.data(),
                                            targets.data(), n, reals[r], padded, firsts[r]);
        DeviceBuffer<float> dshard(shards[r]), dmax(global_max), dsum(n), dtarget(n);
        DeviceBuffer<std::int32_t> dtargets(targets);
        kiln::cuda::cross_entropy_local_sums(dsum.get(), dtarget.get(), dshard.get(), dmax.get(), dtargets.get(), n,
                                             reals[r], padded, firsts[r]);
        expect_close(dsum.host(), row_sum, 1e-6, 1e-5, "row_sum");
        EXPECT_EQ(dtarget.host(), target_logit) << "rank " << r;
        for (std::int64_t i = 0; i < n; ++i) global_sum[i] += row_sum[i];
      }
      // Pass 3.
      const float scale = 1.0f / n;
      for (int r = 0; r < 4; ++r) {
        std::vector<float> grad = shards[r];
        kiln::cpu::cross_entropy_local_grad(grad.data(), global_max.data(), global_sum.data(), targets.data(),
                                            masked ? full.mask.data() : nullptr, n, reals[r], padded, firsts[r], scale);
        DeviceBuffer<float> dshard(shards[r]), dmax(global_max), dsum(global_sum);
        DeviceBuffer<std::int32_t> dtargets(targets);
        DeviceBuffer<std::uint8_t> dmask(full.mask);
        kiln::cuda::cross_entropy_local_grad(dshard.get(), dmax.get(), dsum.get(), dtargets.get(),
                                             masked ? dmask.get() : nullptr, n, reals[r], padded, firsts[r], scale);
        expect_close(dshard.host(), grad, 1e-7 * scale, 1e-5, "dlogits");
      }
    }
  }
}

// Per-token weights (negative and zero among them) and a temperature, through the fused fp32
// and bf16 kernels and the vocabulary-parallel passes (one rank holding the whole vocabulary).
// Gradient tolerance: z = logit / T is rounded once on the cpu (contracted into an FMA with the
// max's subtraction) and twice on the GPU, so exp's argument (|z| up to about 15) may differ by
// an ulp: about 1e-6 of the row's gradient scale, seen at the target entry where p - 1 cancels.
TEST(CudaCrossEntropy, WeightsAndTemperatureMatchCpu) {
  KILN_REQUIRE_GPU();
  const float it = 1.0f / 0.7f;
  for (const Problem& p : problems()) {
    if (p.vocab > 1000) continue;  // the small shapes cover the vector and scalar paths
    SCOPED_TRACE(testing::Message() << "n=" << p.n << " vocab=" << p.vocab << " padded=" << p.padded);
    std::vector<float> weights(p.n);
    for (std::int64_t i = 0; i < p.n; ++i) weights[i] = i % 3 == 0 ? 0.0f : (i % 2 ? 1.5f : -0.75f) + 0.1f * i;
    const auto targets = targets_for(p, true);
    const float scale = 1.0f / static_cast<float>(p.n);
    double max_weight = 0.0;
    for (const float w : weights) max_weight = std::max(max_weight, std::fabs(static_cast<double>(w)));
    const double atol = 2e-6 * scale * max_weight * it;
    DeviceBuffer<std::int32_t> dtargets(targets);
    DeviceBuffer<std::uint8_t> dmask(p.mask);
    DeviceBuffer<float> dweights(weights);
    {
      std::vector<float> losses(p.n), logits = p.logits;
      kiln::cpu::softmax_cross_entropy(losses.data(), logits.data(), targets.data(), p.mask.data(), p.n, p.vocab,
                                       p.padded, scale, weights.data(), it);
      DeviceBuffer<float> dlogits(p.logits), dlosses(p.n);
      kiln::cuda::softmax_cross_entropy(dlosses.get(), dlogits.get(), dtargets.get(), dmask.get(), p.n, p.vocab,
                                        p.padded, scale, dweights.get(), it);
      expect_close(dlosses.host(), losses, 1e-5, 1e-5, "losses");
      expect_close(dlogits.host(), logits, atol, 1e-5, "dlogits");
    }
    {
      const auto logits16 = kiln::testing::to_bf16(p.logits);
      std::vector<float> losses(p.n), logits = kiln::testing::to_float(logits16);
      kiln::cpu::softmax_cross_entropy(losses.data(), logits.data(), targets.data(), p.mask.data(), p.n, p.vocab,
                                       p.padded, scale, weights.data(), it);
      DeviceBuffer<bf16> dlogits(logits16);
      DeviceBuffer<float> dlosses(p.n);
      kiln::cuda::softmax_cross_entropy_bf16(dlosses.get(), dlogits.get(), dtargets.get(), dmask.get(), p.n, p.vocab,
                                             p.padded, scale, dweights.get(), it);
      expect_close(dlosses.host(), losses, 1e-5, 1e-5, "bf16 losses");
      expect_close(kiln::testing::to_float(dlogits.host()), logits, atol, 1e-2, "bf16 dlogits");
    }
    {
      const auto all_targets = p.targets;
      std::vector<float> row_max(p.n), row_sum(p.n), target_logit(p.n), grad = p.logits;
      kiln::cpu::cross_entropy_local_max(row_max.data(), p.logits.data(), p.n, p.vocab, p.padded, it);
      kiln::cpu::cross_entropy_local_sums(row_sum.data(), target_logit.data(), p.logits.data(), row_max.data(),
                                          all_targets.data(), p.n, p.vocab, p.padded, 0, it);
      kiln::cpu::cross_entropy_local_grad(grad.data(), row_max.data(), row_sum.data(), all_targets.data(),
                                          p.mask.data(), p.n, p.vocab, p.padded, 0, scale, weights.data(), it);
      DeviceBuffer<float> dlogits(p.logits), dmax(p.n), dsum(p.n), dtarget(p.n);
      DeviceBuffer<std::int32_t> dall(all_targets);
      kiln::cuda::cross_entropy_local_max(dmax.get(), dlogits.get(), p.n, p.vocab, p.padded, it);
      EXPECT_EQ(dmax.host(), row_max);
      kiln::cuda::cross_entropy_local_sums(dsum.get(), dtarget.get(), dlogits.get(), dmax.get(), dall.get(), p.n,
                                           p.vocab, p.padded, 0, it);
      expect_close(dsum.host(), row_sum, 1e-6, 1e-5, "row_sum");
      expect_close(dtarget.host(), target_logit, 0.0, 0.0, "target_logit");
      DeviceBuffer<float> dsum_cpu(row_sum);
      kiln::cuda::cross_entropy_local_grad(dlogits.get(), dmax.get(), dsum_cpu.get(), dall.get(), dmask.get(), p.n,
                                           p.vocab, p.padded, 0, scale, dweights.get(), it);
      expect_close(dlogits.host(), grad, atol, 1e-5, "local dlogits");
    }
  }
}

TEST(CudaCrossEntropy, ZeroRowsLaunchNothing) {
  KILN_REQUIRE_GPU();
  kiln::cuda::softmax_cross_entropy(nullptr, nullptr, nullptr, nullptr, 0, 5, 8, 1.0f);
  kiln::cuda::softmax_cross_entropy_bf16(nullptr, nullptr, nullptr, nullptr, 0, 5, 8, 1.0f);
  kiln::cuda::cross_entropy_local_max(nullptr, nullptr, 0, 5, 8);
  kiln::cuda::cross_entropy_local_sums(nullptr, nullptr, nullptr, nullptr, nullptr, 0, 5, 8, 0);
  kiln::cuda::cross_entropy_local_grad(nullptr, nullptr, nullptr, nullptr, nullptr, 0, 5, 8, 0, 1.0f);
  EXPECT_NO_THROW(kiln::device::synchronize());
}

}  // namespace
