// Counter-based random numbers (Philox-4x32-10, Salmon et al. 2011).
// A value depends only on (seed, stream, index), never on the order of calls or the number of
// threads, so initialisation and data sampling are identical however the work is split.
// The whole state of a stream is two integers, which makes it trivial to checkpoint.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace kiln {

// Four 32-bit random words for a 128-bit counter under a 64-bit key.
inline std::array<std::uint32_t, 4> philox4x32(std::array<std::uint32_t, 4> ctr,
                                               std::uint64_t key64) {
  constexpr std::uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr std::uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  std::uint32_t k0 = static_cast<std::uint32_t>(key64), k1 = static_cast<std::uint32_t>(key64 >> 32);
  for (int round = 0; round < 10; ++round) {
    std::uint64_t p0 = static_cast<std::uint64_t>(kMul0) * ctr[0];
    std::uint64_t p1 = static_cast<std::uint64_t>(kMul1) * ctr[2];
    ctr = {static_cast<std::uint32_t>(p1 >> 32) ^ ctr[1] ^ k0, static_cast<std::uint32_t>(p1),
           static_cast<std::uint32_t>(p0 >> 32) ^ ctr[3] ^ k1, static_cast<std::uint32_t>(p0)};
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return ctr;
}

// A stream of random numbers: element i of stream s under seed k is a pure function of (k, s, i).
class Rng {
 public:
  Rng(std::uint64_t seed, std::uint64_t stream) : seed_(seed), stream_(stream) {}

  std::array<std::uint32_t, 4> bits(std::uint64_t index) const {
    return philox4x32({static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32),
                       static_cast<std::uint32_t>(stream_), static_cast<std::uint32_t>(stream_ >> 32)},
                      seed_);
  }
  // Uniform in [0, 1) with 24 bits of precision.
  float uniform(std::uint64_t index) const { return (bits(index)[0] >> 8) * (1.0f / 16777216.0f); }
  // Uniform 64-bit integer.
  std::uint64_t u64(std::uint64_t index) const {
    auto b = bits(index);
    return (static_cast<std::uint64_t>(b[0]) << 32) | b[1];
  }
  // Standard normal by Box-Muller on two uniforms of the same counter.
  float normal(std::uint64_t index) const {
    auto b = bits(index);
    double u1 = ((b[0] >> 8) + 1.0) * (1.0 / 16777217.0);  // (0, 1]
    double u2 = (b[1] >> 8) * (1.0 / 16777216.0);
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }

  std::uint64_t seed() const { return seed_; }
  std::uint64_t stream() const { return stream_; }

 private:
  std::uint64_t seed_;
  std::uint64_t stream_;
};

// Fisher-Yates over v with the draws rng.u64(n), ..., rng.u64(2): a pure function of rng.
template <class T>
void shuffle(std::vector<T>& v, const Rng& rng) {
  for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.u64(i) % i]);
}

}  // namespace kiln
