// The parameter table (params.h): each architecture's parameters declared once (GPT-2's and
// LLaMA's names), and their buffers.
#include "core/model/params.h"

#include <cmath>

#include "kernels/error.h"

namespace kiln {

namespace {

// Each role's Hugging Face name: GPT2LMHeadModel's, or LlamaForCausalLM's (model.arch=llama;
// fused q|k|v and gate|up under names of kiln's, which model_io writes apart).
std::string role_name(const GptShape& s, Role role, int layer) {
  const bool llama = s.llama_names;
  const std::string block =
      (llama ? "model.layers." : "transformer.h.") + std::to_string(layer) + ".";
  auto pick = [&](const char* gpt2, const char* llama_name) { return std::string(llama ? llama_name : gpt2); };
  switch (role) {
    case Role::token_embedding: return pick("transformer.wte.weight", "model.embed_tokens.weight");
    case Role::position_embedding: return pick("transformer.wpe.weight", "model.embed_positions.weight");
    case Role::norm1_weight: return block + pick("ln_1.weight", "input_layernorm.weight");
    case Role::norm1_bias: return block + pick("ln_1.bias", "input_layernorm.bias");
    case Role::qkv_weight: return block + pick("attn.c_attn.weight", "self_attn.qkv_proj.weight");
    case Role::qkv_bias: return block + pick("attn.c_attn.bias", "self_attn.qkv_proj.bias");
    case Role::attn_out_weight: return block + pick("attn.c_proj.weight", "self_attn.o_proj.weight");
    case Role::attn_out_bias: return block + pick("attn.c_proj.bias", "self_attn.o_proj.bias");
    case Role::norm2_weight: return block + pick("ln_2.weight", "post_attention_layernorm.weight");
    case Role::norm2_bias: return block + pick("ln_2.bias", "post_attention_layernorm.bias");
    case Role::mlp_in_weight:
      return block + pick("mlp.c_fc.weight", s.swiglu ? "mlp.gate_up_proj.weight" : "mlp.up_proj.weight");
    case Role::mlp_in_bias: return block + pick("mlp.c_fc.bias", s.swiglu ? "mlp.gate_up_proj.bias" : "mlp.up_proj.bias");
    case Role::mlp_out_weight: return block + pick("mlp.c_proj.weight", "mlp.down_proj.weight");
    case Role::mlp_out_bias: return block + pick("mlp.c_proj.bias", "mlp.down_proj.bias");
    case Role::final_norm_weight: return pick("transformer.ln_f.weight", "model.norm.weight");
    case Role::final_norm_bias: return pick("transformer.ln_f.bias", "model.norm.bias");
    case Role::lm_head: return "lm_head.weight";
    case Role::score_weight: return "score.weight";  // GPT2ForSequenceClassification's (one label, no bias)
  }
  return {};
}

// Biases the spec has not: none without model.bias, and no norm bias with RMSNorm.
bool absent(const GptShape& s, Role r) {
  const bool norm = r == Role::norm1_bias || r == Role::norm2_bias || r == Role::final_norm_bias;
  const bool bias = norm || r == Role::qkv_bias || r == Role::attn_out_bias || r == Role::mlp_in_bias ||
                    r == Role::mlp_out_bias;
  return bias && (!s.bias || (norm && s.rms_norm));
}

}  // namespace

std::vector<ParamSpec> declare_parameters(const GptShape& s) {
  const std::int64_t c = s.n_embd, f = s.ffn(), mlp_in = s.swiglu ? 2 * f : f;
  const std::int64_t qkv = c + 2 * static_cast<std::int64_t>(s.kv_heads()) * s.head_size();  // q | k | v
  const Split mlp_split = s.swiglu ? Split::gate_up : Split::cols;
  const float residual = 1.0f / std::sqrt(2.0f * s.n_layer);  // GPT-2's scaled residual projections
  std::vector<ParamSpec> t;
  // role, layer, whole shape, split, decay, init std (x model.init_std), constant
  auto add = [&](Role role, int layer, Shape shape, Split split, bool decay, float init_std, float init_value) {
    if (absent(s, role)) return;
    t.push_back({role_name(s, role, layer), role, layer, std::move(shape), split, decay, init_std, init_value,
                 split == Split::qkv ? c : 0});
  };
  add(Role::token_embedding, -1, {s.padded_vocab, c}, Split::rows, false, 1, 0);
  if (!s.rope) add(Role::position_embedding, -1, {s.context, c}, Split::none, false, 1, 0);
  for (int l = 0; l < s.n_layer; ++l) {
    add(Role::norm1_weight, l, {c}, Split::none, false, 0, 1);
    add(Role::norm1_bias, l, {c}, Split::none, false, 0, 0);
    add(Role::qkv_weight, l, {c, qkv}, Split::qkv, true, 1, 0);
    add(Role::qkv_bias, l, {qkv}, Split::qkv, false, 0, 0);
    add(Role::attn_out_weight, l, {c, c}, Split::rows, true, residual, 0);
    add(Role::attn_out_bias, l, {c}, Split::none, false, 0, 0);
    add(Role::norm2_weight, l, {c}, Split::none, false, 0, 1);
    add(Role::norm2_bias, l, {c}, Split::none, false, 0, 0);
    add(Role::mlp_in_weight, l, {c, mlp_in}, mlp_split, true, 1, 0);
    add(Role::mlp_in_bias, l, {mlp_in}, mlp_split, false, 0, 0);
    add(Role::mlp_out_weight, l, {f, c}, Split::rows, true, residual, 0);
    add(Role::mlp_out_bias, l, {c}, Split::none, false, 0, 0);
  }
  if (!s.post_norm) {
    add(Role::final_norm_weight, -1, {c}, Split::none, false, 0, 1);
    add(Role::final_norm_bias, -1, {c}, Split::none, false, 0, 0);
  }
  // The untied LM head: vocabulary-parallel like the embedding, a decayed matmul weight.
  if (!s.tied_head) add(Role::lm_head, -1, {s.padded_vocab, c}, Split::rows, true, 1, 0);
  if (s.score_head) add(Role::score_weight, -1, {1, c}, Split::none, true, 1, 0);
  return t;
}

ParamTable::ParamTable(const GptShape& shape, Device device)
    : tp_size_(shape.tp_size), tp_rank_(shape.tp_rank), kv_replicas_(shape.kv_replicas()) {
  const std::vector<ParamSpec> specs = declare_parameters(shape);
  // This rank's shard of each whole shape.
  std::vector<Shape> local;
  std::int64_t total = 0;
  for (const ParamSpec& s : specs) {
    Shape l = s.full_shape;
    if (s.split == Split::rows) l.front() /= tp_size_;
    if (s.split == Split::cols || s.split == Split::gate_up) l.back() /= tp_size_;
    if (s.split == Split::qkv) {  // the run of query heads, and the key/value heads those read
      const std::int64_t kv_full = (l.back() - s.q_width) / 2;
      l.back() = s.q_width / tp_size_ + 2 * kv_full * kv_replicas_ / tp_size_;
    }
    total += shape_numel(l);
    local.push_back(std::move(l));
  }
  values_ = Tensor::zeros({total}, DType::f32, device);
  grads_ = Tensor::zeros({total}, DType::f32, device);
  by_role_.assign(kRoles,
                  std::vector<std::size_t>(shape.n_layer + 1, static_cast<std::size_t>(-1)));
  std::int64_t offset = 0;
  first_block_ = specs.size();
  blocks_end_ = 0;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    Parameter p;
    static_cast<ParamSpec&>(p) = specs[i];
    p.value = values_.view(offset, local[i]);
    p.grad = grads_.view(offset, local[i]);
    offset += shape_numel(local[i]);
    by_role_[static_cast<std::size_t>(p.role)][p.layer + 1] = i;
    if (p.layer >= 0) {
      first_block_ = std::min(first_block_, i);
      blocks_end_ = i + 1;
    }
    params_.push_back(std::move(p));
  }
  if (shape.n_layer == 0) first_block_ = blocks_end_ = params_.size();
  heads_first_ = params_.size();
  blocks_.assign(shape.n_layer, ParamRange{0, 0});
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const int l = params_[i].layer;
    if (l < 0) continue;
    if (blocks_[l].end == 0) blocks_[l].first = i;
    blocks_[l].end = i + 1;
  }
  auto is_head = [](Role r) { return r == Role::lm_head || r == Role::score_weight; };
  while (heads_first_ > blocks_end_ && is_head(params_[heads_first_ - 1].role)) --heads_first_;
}

std::size_t ParamTable::index(Role role, int layer) const {
  const std::size_t i = by_role_[static_cast<std::size_t>(role)][layer + 1];
  KILN_ASSERT(i != static_cast<std::size_t>(-1));
  return i;
}

bool ParamTable::has(Role role, int layer) const {
  return by_role_[static_cast<std::size_t>(role)][layer + 1] != static_cast<std::size_t>(-1);
}

const Parameter& ParamTable::by_name(const std::string& name) const {
  for (const Parameter& p : params_)
    if (p.name == name) return p;
  throw Error(message("the model has no parameter named '", name, "'"));
}

ParamRange ParamTable::block(int layer) const { return blocks_[layer]; }

std::int64_t ParamTable::full_index(const Parameter& p, std::int64_t local) const {
  const std::int64_t r = tp_rank_;
  const std::int64_t cols = p.value.shape().back();  // local last dimension
  const std::int64_t full_cols = p.full_shape.back();
  switch (p.split) {
    case Split::none:
      return local;
    case Split::rows:
      return r * p.value.numel() + local;
    case Split::cols:
      return local / cols * full_cols + r * cols + local % cols;
    case Split::qkv: {
      // local: [q_r | k_r | v_r], each part this rank's run of its heads (key/value heads
      // replicated over kv_replicas_ consecutive ranks when there are fewer than ranks).
      const std::int64_t q_full = p.q_width > 0 ? p.q_width : full_cols / 3, kv_full = (full_cols - q_full) / 2;
      const std::int64_t q_local = q_full / tp_size_, kv_local = kv_full * kv_replicas_ / tp_size_, j = local % cols;
      const std::int64_t kv_first = r / kv_replicas_ * kv_local;
      const std::int64_t col = j < q_local              ? r * q_local + j
                               : j < q_local + kv_local ? q_full + kv_first + (j - q_local)
                                                        : q_full + kv_full + kv_first + (j - q_local - kv_local);
      return local / cols * full_cols + col;
    }
    case Split::gate_up: {
      // local: [gate_r | up_r]
      const std::int64_t part_width = cols / 2, j = local % cols;
      return local / cols * full_cols + (j / part_width) * (full_cols / 2) + r * part_width + j % part_width;
    }
  }
  return local;
}

bool ParamTable::is_copy(const Parameter& p, std::int64_t local) const {
  if (p.split != Split::qkv || kv_replicas_ == 1 || tp_rank_ % kv_replicas_ == 0) return false;
  return local % p.value.shape().back() >= p.q_width / tp_size_;
}

std::pair<std::int64_t, std::int64_t> ParamTable::kv_columns(const Parameter& p) const {
  const std::int64_t cols = p.value.shape().back(), q_local = p.q_width / tp_size_;
  return {q_local, cols - q_local};
}

}  // namespace kiln
