// The architecture spec (spec.h): built from the config, counted (parameters, model FLOPs).
#include "core/model/spec.h"

#include <algorithm>

#include "core/model/params.h"
#include "kernels/error.h"

namespace kiln {

GptShape GptShape::from_config(const ModelConfig& config, int vocab_size, int tp_size, int tp_rank) {
  GptShape s;
  s.n_layer = config.n_layer;
  s.n_head = config.n_head;
  s.n_embd = config.n_embd;
  s.context = config.context;
  s.vocab = config.vocab_size > 0 ? config.vocab_size : vocab_size;
  KILN_CHECK(s.vocab > 0, "model.vocab_size is 0 and no tokenizer gave a vocabulary size");
  KILN_CHECK(s.vocab >= vocab_size, "model.vocab_size=", s.vocab,
             " is smaller than the tokenizer's vocabulary (", vocab_size,
             "); set it to 0 to use the tokenizer's");
  // Each tensor-parallel rank holds an equal, aligned part of the padded vocabulary (a
  // multiple of 128 rows each, as Megatron pads).
  const int multiple = (tp_size > 1 ? std::max(config.vocab_multiple, 128) : config.vocab_multiple) * tp_size;
  s.padded_vocab = (s.vocab + multiple - 1) / multiple * multiple;
  s.post_norm = config.norm == "post";
  s.mlp_width = config.mlp_width;
  s.bf16_matmul = config.matmul == "bf16";
  s.bf16 = config.dtype == "bf16";
  s.recompute = config.recompute != 0;
  s.tied_head = config.tie_embeddings != 0;
  s.n_kv_head = config.n_kv_head;
  s.rms_norm = config.norm_kind == "rmsnorm";
  s.norm_eps = config.norm_eps;
  s.rope = config.position == "rope";
  s.rope_theta = config.rope_theta;
  s.rope_scaling = {config.rope_scaling == "llama3", config.rope_factor, config.rope_low_freq_factor,
                    config.rope_high_freq_factor, config.rope_original_context};
  s.swiglu = config.mlp == "swiglu";
  s.bias = config.bias != 0;
  s.llama_names = config.arch == "llama";
  s.mlp_multiple_of = config.mlp_multiple_of;
  s.attention_block = config.attention_block;
  s.tp_size = tp_size;
  s.tp_rank = tp_rank;
  for (const std::string& kind : attention_kinds(config.attention, config.n_layer)) {
    AttentionPattern p;
    p.kind = kind;
    p.block = config.attention_block;
    p.window = config.attention_window;
    p.stride = config.attention_stride;
    p.summary = config.attention_summary;
    p.global = config.attention_global;
    p.per_head = config.attention_per_head != 0;
    s.attention.push_back(p);
  }
  KILN_CHECK(s.n_embd % s.n_head == 0, "model.n_embd=", s.n_embd, " is not divisible by model.n_head=",
             s.n_head, "; choose n_embd as a multiple of n_head");
  KILN_CHECK(s.n_head % s.kv_heads() == 0, "model.n_kv_head=", s.n_kv_head, " does not divide model.n_head=", s.n_head,
             ": each key/value head serves an equal group of query heads");
  KILN_CHECK(s.kv_heads() % tp_size == 0 || tp_size % s.kv_heads() == 0, "model.n_kv_head=", s.kv_heads(),
             " key/value heads neither split over parallel.tp=", tp_size, " ranks nor divide them (for replication); "
             "use a tp that divides the key/value heads or that they divide");
  KILN_CHECK(s.n_head % tp_size == 0, "model.n_head=", s.n_head, " is not divisible by parallel.tp=",
             tp_size, ": tensor parallelism splits the heads; choose a tp that divides the heads");
  KILN_CHECK(s.ffn() % tp_size == 0, "the MLP width ", s.ffn(),
             s.mlp_width > 0 ? " (model.mlp_width)"
             : s.swiglu      ? " (LLaMA's rule from model.n_embd and model.mlp_multiple_of)"
                             : " (4 x model.n_embd)",
             " is not divisible by parallel.tp=", tp_size, "; set model.mlp_width to a multiple of ", tp_size);
  return s;
}

std::string GptShape::describe() const {
  std::string s = std::string(post_norm ? "post" : "pre") + (rms_norm ? "-norm RMSNorm" : "-LN");
  if (rope) s += ", RoPE";
  if (swiglu) s += ", SwiGLU " + std::to_string(ffn());
  else if (ffn() != 4 * n_embd) s += ", MLP " + std::to_string(ffn());
  if (grouped()) s += ", " + std::to_string(kv_heads()) + " KV heads";
  if (!bias) s += ", no biases";
  if (!tied_head) s += ", untied head";
  return s;
}

int GptShape::ffn() const {
  if (mlp_width > 0) return mlp_width;
  if (!swiglu) return 4 * n_embd;
  // LLaMA's rule: two thirds of 4 x n_embd (SwiGLU has three matrices, not two), truncated, then
  // rounded up to a multiple of mlp_multiple_of.
  const int m = mlp_multiple_of, two_thirds = 8 * n_embd / 3;
  return (two_thirds + m - 1) / m * m;
}

// Both counts read the parameter table (params.cpp), so they follow the architecture.
std::int64_t GptShape::num_params() const {
  std::int64_t total = 0;
  for (const ParamSpec& p : declare_parameters(*this)) total += shape_numel(p.full_shape);
  return total;
}

std::int64_t GptShape::non_embedding_params() const {
  std::int64_t total = 0;
  for (const ParamSpec& p : declare_parameters(*this))
    if (p.role != Role::token_embedding && p.role != Role::position_embedding && p.role != Role::lm_head)
      total += shape_numel(p.full_shape);
  return total;
}

double GptShape::flops_per_token(int seq_len) const {
  const double c = n_embd;
  // The matmul weights (the decayed ones) and the LM head (tied or not) over the real vocabulary.
  double matmul_params = static_cast<double>(vocab) * c;
  for (const ParamSpec& p : declare_parameters(*this))
    if (p.decay && p.role != Role::lm_head) matmul_params += static_cast<double>(shape_numel(p.full_shape));
  // Scores and weighted sum, forward and backward: 12 C per (query, key) pair the layer attends.
  double attention_flops = 0.0;
  for (int l = 0; l < n_layer; ++l) {
    AttentionPattern p;
    if (attention.empty()) p.block = attention_block;
    else p = attention[l];
    attention_flops += 12.0 * c * build_layout(p, seq_len, n_head).attended_pairs(seq_len) / seq_len;
  }
  return 6.0 * matmul_params + attention_flops;
}

}  // namespace kiln
