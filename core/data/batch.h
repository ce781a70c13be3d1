// One micro-batch of token rows, as data code makes it (loader, packing) and a model reads it.
// Plain data: data code includes this, not the model.
#pragma once

#include <cstdint>
#include <vector>

namespace kiln {

// positions may be empty (then 0..T-1 in every row); mask may be empty (then every token counts
// in the loss); weights may be empty (then every counted token has weight 1).
struct Batch {
  int batch = 0;
  int seq_len = 0;
  std::vector<std::int32_t> inputs;     // (B*T)
  std::vector<std::int32_t> targets;    // (B*T)
  std::vector<std::int32_t> positions;  // (B*T) or empty
  std::vector<std::uint8_t> mask;       // (B*T) or empty
  // (B*T) per-token loss weights, or empty: token i's loss (and its gradient) is multiplied by
  // weights[i], which may be any finite number (negative raises the token's probability; 0 drops
  // it like mask 0). DPO and PPO form their losses this way (Gpt::forward_backward).
  std::vector<float> weights;
  // (B*T) document ids for packed rows, or empty: a token attends only to earlier tokens of its
  // own document (with positions restarting per document, each example trains as if alone).
  std::vector<std::int32_t> segments;
  // Tokens that count in the loss.
  std::int64_t loss_tokens() const {
    if (mask.empty()) return static_cast<std::int64_t>(batch) * seq_len;
    std::int64_t n = 0;
    for (auto m : mask) n += m != 0;
    return n;
  }
};

}  // namespace kiln
