// Batched autoregressive decoding with a KV cache, on the model's device, through the same block
// code as training (core/model/block.cpp; only the attention core differs: each new query
// attends to its own sequence's cached keys and values, honouring the layer's layout).
//
// Sequences are ragged, not padded: each has its own length and position, and every step feeds
// one token to each sequence still running, so prompts of different lengths are fed in the same
// steps (a sequence still reading its prompt ignores its logits) and a sequence that stops
// leaves the batch. When a sequence's cache fills the context, it restarts from its newest half.
// Sampling: greedy, temperature, top-k, top-p, stop tokens, one seed per sequence; a sequence
// gives the same tokens alone as in a batch (up to the last bits of the matrix products).
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
  std::vector<std::int32_t> stop_tokens;  // more tokens that end a sequence (not emitted)
};

class Decoder {
 public:
  // Decodes with `model` (tensor parallelism: one rank, tp 1) on its device. The model must
  // outlive the decoder and keep its weights while it decodes.
  explicit Decoder(Gpt& model);
  ~Decoder();

  // Generates for each prompt (each at least one token; only its newest `context` tokens are
  // read). seeds[i] seeds sequence i (empty: options.seed for all). on_token(i, token) sees each
  // new token as it is chosen; on_choice(i, token, logits) sees every choice, a stop token
  // included, with the logits (padded vocabulary row, host) it was drawn from. Returns each
  // sequence's new tokens.
  std::vector<std::vector<std::int32_t>> generate(
      const std::vector<std::vector<std::int32_t>>& prompts, const SampleOptions& options,
      std::int32_t eot, const std::vector<std::uint64_t>& seeds = {},
      const std::function<void(int sequence, std::int32_t token)>& on_token = {},
      const std::function<void(int sequence, std::int32_t token, const float* logits)>& on_choice = {});

  // The low level: reset(batch) starts `batch` empty sequences; step feeds tokens[i] to
  // sequences[i] at its next position and returns the logits of the next token for each, on the
  // host, (sequences.size(), padded_vocab).
  void reset(int batch);
  const float* step(const std::vector<int>& sequences, const std::vector<std::int32_t>& tokens);
  int length(int sequence) const { return lengths_[sequence]; }

 private:
  void allocate(int batch);
  // The attention core of a step: each row's key and value into its sequence's cache, then its
  // query against the cache.
  void attend(int layer, Gpt::LayerActs& a);

  Gpt& model_;
  const KernelTable* kernels_;
  int batch_ = 0, capacity_ = 0;
  std::vector<int> lengths_;
  Tensor k_cache_, v_cache_;  // (n_layer, capacity, context, C)
  std::vector<Gpt::LayerActs> acts_;  // one, shared by the layers: one row per sequence of the step
  Tensor x_, scratch_, lnf_, lnf_mean_, lnf_rstd_, logits_, ids_, mask_;
  Tensor qkv32_, atty32_;  // bf16 activations: the attention core's fp32 input and output
  std::vector<float> host_logits_;
  // The step's rows: sequence and position of each.
  std::vector<int> rows_sequence_;
  std::vector<std::int32_t> rows_position_;
  // Sparse layers: each layer's layout over the whole context (null: dense).
  std::vector<std::unique_ptr<BlockLayout>> layouts_;
  std::vector<std::uint8_t> host_mask_;
};

}  // namespace kiln
