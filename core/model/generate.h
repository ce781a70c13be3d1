// Text generation with a KV cache: each new token runs through the model once, attending to
// the cached keys and values of everything before it. Sampling: temperature, top-k, top-p,
// seeded (Rng), stop at end-of-text.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/model/gpt.h"

namespace kiln {

struct SampleOptions {
  int max_tokens = 200;
  float temperature = 0.8f;  // 0: greedy
  int top_k = 0;             // 0: no top-k cut
  float top_p = 1.0f;        // 1: no nucleus cut
  std::uint64_t seed = 0;
  bool stop_at_eot = true;
};

class Generator {
 public:
  explicit Generator(const Gpt& model);

  // Feeds `prompt` (at least one token) and samples up to max_tokens more; on_token sees each
  // new token as it is chosen. When the context fills, the cache restarts from the last half.
  std::vector<std::int32_t> generate(const std::vector<std::int32_t>& prompt,
                                     const SampleOptions& options, std::int32_t eot,
                                     const std::function<void(std::int32_t)>& on_token = {});

  // Runs one token at the next position; returns logits (padded_vocab) for the following one.
  const float* step(std::int32_t token);
  void reset() { length_ = 0; }
  int length() const { return length_; }

 private:
  std::int32_t choose(const float* logits, const SampleOptions& options, std::uint64_t draw) const;

  const Gpt& model_;
  const KernelTable* kernels_;
  int length_ = 0;                       // tokens in the cache
  std::vector<float> k_cache_, v_cache_;  // (n_layer, context, C)
  std::vector<float> x_, ln_, qkv_, att_, tmp_, fc_, fc_gelu_, mean_, rstd_, logits_;
  // Sparse layers: each layer's layout over the whole context (null: dense), and the keys each
  // head may see from the current position.
  std::vector<std::unique_ptr<BlockLayout>> layouts_;
  std::vector<std::uint8_t> key_mask_;
};

}  // namespace kiln
