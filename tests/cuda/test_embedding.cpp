// The CUDA embedding kernels against their CPU twins: repeated tokens (half the batch one token),
// vocabulary shards with tokens outside them, packed rows whose positions restart, odd widths.
// The forward and the (sorted, atomic-free) backward form every sum in the CPU twin's order, so
// the fp32 results must equal the CPU's bit for bit; so must the bf16 variants against the fp32
// CPU twin on the same bf16-rounded values.
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gpu_test.h"
#include "kernels/embedding.h"

namespace {

using kiln::bf16;
using kiln::testing::DeviceBuffer;
using kiln::testing::rounded;

struct Shape {
  std::int64_t n;
  std::int64_t c;
  std::int64_t vocab;        // ids 0..vocab-1 appear in the batch
  std::int64_t vocab_first;  // the shard on this "rank"
  std::int64_t vocab_rows;
  std::int64_t seq;          // rows of wpe: positions restart at least every seq tokens
};

// Whole tables, odd widths, and shards that leave out part of the batch's tokens (the repeated
// token is at vocab / 3: inside the first shard below, outside the second).
const Shape kShapes[] = {
    {1, 1, 5, 0, 5, 1},           {7, 3, 11, 0, 11, 4},         {333, 768, 50, 10, 30, 64},
    {333, 769, 50, 20, 25, 128},  {64, 2050, 97, 0, 97, 32},    {8192, 768, 1000, 0, 1000, 1024},
    {8192, 769, 1000, 300, 200, 1024}, {4096, 1, 300, 0, 300, 512}, {2048, 3, 300, 150, 150, 256},
};

struct Batch {
  std::vector<std::int32_t> tokens;
  std::vector<std::int32_t> positions;
};

// Half the tokens are one "hot" id; the rest uniform. Packed rows of seq tokens, each holding
// documents that restart their positions at random points.
Batch make_batch(const Shape& s, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int32_t> token(0, static_cast<std::int32_t>(s.vocab - 1));
  std::bernoulli_distribution hot(0.5), restart(0.03);
  const auto hot_token = static_cast<std::int32_t>(s.vocab / 3);
  Batch b;
  std::int32_t p = 0;
  for (std::int64_t i = 0; i < s.n; ++i) {
    b.tokens.push_back(hot(rng) ? hot_token : token(rng));
    if (i % s.seq == 0 || restart(rng)) p = 0;
    b.positions.push_back(p++);
  }
  return b;
}

std::vector<float> random_floats(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

void expect_bitwise_equal(const std::vector<float>& actual, const std::vector<float>& expected, const char* what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  int reported = 0;
  for (std::size_t i = 0; i < actual.size(); ++i)
    if (std::memcmp(&actual[i], &expected[i], sizeof(float)) != 0 && reported++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: " << actual[i] << " vs " << expected[i];
  EXPECT_EQ(reported, 0) << what << ": elements differing from the CPU twin";
}

void expect_bitwise_equal(const std::vector<bf16>& actual, const std::vector<bf16>& expected, const char* what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  int reported = 0;
  for (std::size_t i = 0; i < actual.size(); ++i)
    if (actual[i].bits != expected[i].bits && reported++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: bits " << actual[i].bits << " vs " << expected[i].bits;
  EXPECT_EQ(reported, 0) << what << ": elements differing from the CPU twin";
}

// Tolerance: none. Both twins compute te + pe (a missing term is + 0.0f) per element.
TEST(CudaEmbedding, ForwardEqualsCpuTwin) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(testing::Message() << "n=" << s.n << " c=" << s.c << " shard=[" << s.vocab_first << ", +"
                                    << s.vocab_rows << ")");
    const Batch b = make_batch(s, 11);
    const auto wte = random_floats(s.vocab_rows * s.c, 12), wpe = random_floats(s.seq * s.c, 13);
    DeviceBuffer<std::int32_t> tokens(b.tokens), positions(b.positions);
    DeviceBuffer<float> d_wte(wte), d_wpe(wpe);
    for (bool with_wpe : {true, false}) {
      std::vector<float> expected(s.n * s.c);
      kiln::cpu::embedding_forward(expected.data(), b.tokens.data(), with_wpe ? b.positions.data() : nullptr,
                                   wte.data(), with_wpe ? wpe.data() : nullptr, s.n, s.c, s.vocab_first,
                                   s.vocab_rows);
      // Aligned output (float4 path when c % 4 == 0) and one shifted by a float (scalar path).
      for (std::size_t shift : {0, 1}) {
        DeviceBuffer<float> out(s.n * s.c + shift);
        kiln::cuda::embedding_forward(out.get() + shift, tokens.get(), with_wpe ? positions.get() : nullptr,
                                      d_wte.get(), with_wpe ? d_wpe.get() : nullptr, s.n, s.c, s.vocab_first,
                                      s.vocab_rows);
        auto actual = out.host();
        actual.erase(actual.begin(), actual.begin() + static_cast<std::ptrdiff_t>(shift));
        expect_bitwise_equal(actual, expected, with_wpe ? "out (wte + wpe)" : "out (wte only)");
      }
    }
  }
}

// Tolerance: none (the CPU twin's per-row token order), and two runs give the same bits.
TEST(CudaEmbedding, BackwardEqualsCpuTwinAndIsDeterministic) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(testing::Message() << "n=" << s.n << " c=" << s.c << " shard=[" << s.vocab_first << ", +"
                                    << s.vocab_rows << ")");
    const Batch b = make_batch(s, 21);
    const auto dout = random_floats(s.n * s.c, 22);
    // Accumulates into existing gradients, as the CPU twin does.
    const auto dwte0 = random_floats(s.vocab_rows * s.c, 23), dwpe0 = random_floats(s.seq * s.c, 24);
    auto dwte_expected = dwte0, dwpe_expected = dwpe0;
    kiln::cpu::embedding_backward(dwte_expected.data(), dwpe_expected.data(), dout.data(), b.tokens.data(),
                                  b.positions.data(), s.n, s.c, s.vocab_first, s.vocab_rows);
    DeviceBuffer<std::int32_t> tokens(b.tokens), positions(b.positions);
    DeviceBuffer<float> d_dout(dout);
    std::vector<float> first_dwte;
    for (int run = 0; run < 2; ++run) {
      DeviceBuffer<float> dwte(dwte0), dwpe(dwpe0);
      kiln::cuda::embedding_backward(dwte.get(), dwpe.get(), d_dout.get(), tokens.get(), positions.get(), s.n, s.c,
                                     s.vocab_first, s.vocab_rows);
      const auto got_dwte = dwte.host();
      expect_bitwise_equal(got_dwte, dwte_expected, "dwte");
      expect_bitwise_equal(dwpe.host(), dwpe_expected, "dwpe");
      if (run == 0)
        first_dwte = got_dwte;
      else
        expect_bitwise_equal(got_dwte, first_dwte, "dwte, second run");
    }
    // Without a position table only dwte is touched.
    auto dwte_only = dwte0;
    kiln::cpu::embedding_backward(dwte_only.data(), nullptr, dout.data(), b.tokens.data(), nullptr, s.n, s.c,
                                  s.vocab_first, s.vocab_rows);
    DeviceBuffer<float> dwte(dwte0);
    kiln::cuda::embedding_backward(dwte.get(), nullptr, d_dout.get(), tokens.get(), nullptr, s.n, s.c, s.vocab_first,
                                   s.vocab_rows);
    expect_bitwise_equal(dwte.host(), dwte_only, "dwte (no wpe)");
  }
}

// bf16 in, bf16 out: kiln::to_bf16 of the fp32 CPU twin on the same (bf16) weights, bit for bit.
TEST(CudaEmbedding, Bf16ForwardIsRoundedFp32Sum) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(testing::Message() << "n=" << s.n << " c=" << s.c);
    const Batch b = make_batch(s, 31);
    const auto wte = rounded(random_floats(s.vocab_rows * s.c, 32)), wpe = rounded(random_floats(s.seq * s.c, 33));
    std::vector<float> sum(s.n * s.c);
    kiln::cpu::embedding_forward(sum.data(), b.tokens.data(), b.positions.data(), wte.data(), wpe.data(), s.n, s.c,
                                 s.vocab_first, s.vocab_rows);
    const auto expected = kiln::testing::to_bf16(sum);
    DeviceBuffer<std::int32_t> tokens(b.tokens), positions(b.positions);
    DeviceBuffer<bf16> d_wte(kiln::testing::to_bf16(wte)), d_wpe(kiln::testing::to_bf16(wpe));
    for (std::size_t shift : {0, 1}) {  // 16-byte path when c % 8 == 0, and the scalar one
      DeviceBuffer<bf16> out(s.n * s.c + shift);
      kiln::cuda::embedding_forward_bf16(out.get() + shift, tokens.get(), positions.get(), d_wte.get(), d_wpe.get(),
                                         s.n, s.c, s.vocab_first, s.vocab_rows);
      auto actual = out.host();
      actual.erase(actual.begin(), actual.begin() + static_cast<std::ptrdiff_t>(shift));
      expect_bitwise_equal(actual, expected, "bf16 out");
    }
  }
}

// bf16 dout, fp32 weight gradients: the fp32 CPU twin on the widened dout, bit for bit.
TEST(CudaEmbedding, Bf16BackwardEqualsCpuTwinOnWidenedGradient) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(testing::Message() << "n=" << s.n << " c=" << s.c);
    const Batch b = make_batch(s, 41);
    const auto dout = rounded(random_floats(s.n * s.c, 42));
    const auto dwte0 = random_floats(s.vocab_rows * s.c, 43), dwpe0 = random_floats(s.seq * s.c, 44);
    auto dwte_expected = dwte0, dwpe_expected = dwpe0;
    kiln::cpu::embedding_backward(dwte_expected.data(), dwpe_expected.data(), dout.data(), b.tokens.data(),
                                  b.positions.data(), s.n, s.c, s.vocab_first, s.vocab_rows);
    DeviceBuffer<std::int32_t> tokens(b.tokens), positions(b.positions);
    DeviceBuffer<bf16> d_dout(kiln::testing::to_bf16(dout));
    DeviceBuffer<float> dwte(dwte0), dwpe(dwpe0);
    kiln::cuda::embedding_backward_bf16(dwte.get(), dwpe.get(), d_dout.get(), tokens.get(), positions.get(), s.n,
                                        s.c, s.vocab_first, s.vocab_rows);
    expect_bitwise_equal(dwte.host(), dwte_expected, "dwte");
    expect_bitwise_equal(dwpe.host(), dwpe_expected, "dwpe");
  }
}

// A shard no token of the batch falls in leaves dwte as it was; dwpe still accumulates.
TEST(CudaEmbedding, BackwardLeavesAShardWithoutTokensUntouched) {
  KILN_REQUIRE_GPU();
  const Shape s{500, 65, 100, 0, 100, 50};
  const Batch b = make_batch(s, 51);
  const auto dout = random_floats(s.n * s.c, 52);
  const auto dwte0 = random_floats(40 * s.c, 53);
  DeviceBuffer<std::int32_t> tokens(b.tokens), positions(b.positions);
  DeviceBuffer<float> d_dout(dout), dwte(dwte0);
  kiln::cuda::embedding_backward(dwte.get(), nullptr, d_dout.get(), tokens.get(), positions.get(), s.n, s.c,
                                 /*vocab_first=*/100, /*vocab_rows=*/40);
  expect_bitwise_equal(dwte.host(), dwte0, "dwte of a shard past every token");
}

TEST(CudaEmbedding, ZeroSizesLaunchNothing) {
  KILN_REQUIRE_GPU();
  DeviceBuffer<float> buf(16);
  DeviceBuffer<bf16> buf16(16);
  DeviceBuffer<std::int32_t> ids(4);
  EXPECT_NO_THROW(kiln::cuda::embedding_forward(buf.get(), ids.get(), ids.get(), buf.get(), buf.get(), 0, 4, 0, 4));
  EXPECT_NO_THROW(kiln::cuda::embedding_backward(buf.get(), buf.get(), buf.get(), ids.get(), ids.get(), 0, 4, 0, 4));
  EXPECT_NO_THROW(kiln::cuda::embedding_forward_bf16(buf16.get(), ids.get(), ids.get(), buf16.get(), buf16.get(), 0,
                                                     4, 0, 4));
  EXPECT_NO_THROW(kiln::cuda::embedding_backward_bf16(buf.get(), buf.get(), buf16.get(), ids.get(), ids.get(), 0, 4,
                                                      0, 4));
  EXPECT_NO_THROW(kiln::cuda::embedding_backward(buf.get(), buf.get(), buf.get(), ids.get(), ids.get(), 4, 0, 0, 4));
  EXPECT_NO_THROW(kiln::device::synchronize());
}

}  // namespace
