// The parameter table (params.h): each architecture's parameters declared once (GPT-2's and
// LLaMA's names), and their buffers.
#include "core/model/params.h"

#include <cmath>

#include "kernels/error.h"

namespace kiln {

namespace {
std::vector<ParamSpec> declare_llama_parameters(const GptShape& s);
void drop_absent(const GptShape& s, std::vector<ParamSpec>& t);
std::vector<ParamSpec> with_heads(const GptShape& s, std::vector<ParamSpec> t);
}  // namespace

std::vector<ParamSpec> declare_parameters(const GptShape& s) {
  if (s.llama_names) return declare_llama_parameters(s);
  const std::int64_t c = s.n_embd, f = s.ffn();
  const float residual = 1.0f / std::sqrt(2.0f * s.n_layer);  // GPT-2's scaled residual projections
  // name, role, layer, whole shape, split, decay, init std (x model.init_std), constant
  std::vector<ParamSpec> t = {
      {"transformer.wte.weight", Role::token_embedding, -1, {s.padded_vocab, c}, Split::rows, false, 1, 0}};
  if (!s.rope) t.push_back({"transformer.wpe.weight", Role::position_embedding, -1, {s.context, c}, Split::none, false, 1, 0});
  for (int l = 0; l < s.n_layer; ++l) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    const std::int64_t mlp_in = s.swiglu ? 2 * f : f, qkv = c + 2 * s.kv_heads() * s.head_size();
    const Split mlp_split = s.swiglu ? Split::gate_up : Split::cols;
    t.insert(t.end(), {
        {p + "ln_1.weight", Role::norm1_weight, l, {c}, Split::none, false, 0, 1},
        {p + "ln_1.bias", Role::norm1_bias, l, {c}, Split::none, false, 0, 0},
        {p + "attn.c_attn.weight", Role::qkv_weight, l, {c, qkv}, Split::qkv, true, 1, 0},
        {p + "attn.c_attn.bias", Role::qkv_bias, l, {qkv}, Split::qkv, false, 0, 0},
        {p + "attn.c_proj.weight", Role::attn_out_weight, l, {c, c}, Split::rows, true, residual, 0},
        {p + "attn.c_proj.bias", Role::attn_out_bias, l, {c}, Split::none, false, 0, 0},
        {p + "ln_2.weight", Role::norm2_weight, l, {c}, Split::none, false, 0, 1},
        {p + "ln_2.bias", Role::norm2_bias, l, {c}, Split::none, false, 0, 0},
        {p + "mlp.c_fc.weight", Role::mlp_in_weight, l, {c, mlp_in}, mlp_split, true, 1, 0},
        {p + "mlp.c_fc.bias", Role::mlp_in_bias, l, {mlp_in}, mlp_split, false, 0, 0},
        {p + "mlp.c_proj.weight", Role::mlp_out_weight, l, {f, c}, Split::rows, true, residual, 0},
        {p + "mlp.c_proj.bias", Role::mlp_out_bias, l, {c}, Split::none, false, 0, 0}});
  }
  if (!s.post_norm) {
    t.push_back({"transformer.ln_f.weight", Role::final_norm_weight, -1, {c}, Split::none, false, 0, 1});
    t.push_back({"transformer.ln_f.bias", Role::final_norm_bias, -1, {c}, Split::none, false, 0, 0});
  }
  drop_absent(s, t);
  return with_heads(s, std::move(t));
}

namespace {

// Hugging Face's LlamaForCausalLM names, with kiln's layouts: matmul weights (in, out), q|k|v and
// gate|up fused (kiln export and import convert).
std::vector<ParamSpec> declare_llama_parameters(const GptShape& s) {
  const std::int64_t c = s.n_embd, f = s.ffn(), mlp_in = s.swiglu ? 2 * f : f;
  const std::int64_t qkv = c + 2 * s.kv_heads() * s.head_size();  // q | k | v, grouped k and v
  const Split mlp_split = s.swiglu ? Split::gate_up : Split::cols;
  const float residual = 1.0f / std::sqrt(2.0f * s.n_layer);
  std::vector<ParamSpec> t = {
      {"model.embed_tokens.weight", Role::token_embedding, -1, {s.padded_vocab, c}, Split::rows, false, 1, 0}};
  if (!s.rope) t.push_back({"model.embed_positions.weight", Role::position_embedding, -1, {s.context, c}, Split::none, false, 1, 0});
  for (int l = 0; l < s.n_layer; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.insert(t.end(), {
        {p + "input_layernorm.weight", Role::norm1_weight, l, {c}, Split::none, false, 0, 1},
        {p + "input_layernorm.bias", Role::norm1_bias, l, {c}, Split::none, false, 0, 0},
        {p + "self_attn.qkv_proj.weight", Role::qkv_weight, l, {c, qkv}, Split::qkv, true, 1, 0},
        {p + "self_attn.qkv_proj.bias", Role::qkv_bias, l, {qkv}, Split::qkv, false, 0, 0},
        {p + "self_attn.o_proj.weight", Role::attn_out_weight, l, {c, c}, Split::rows, true, residual, 0},
        {p + "self_attn.o_proj.bias", Role::attn_out_bias, l, {c}, Split::none, false, 0, 0},
        {p + "post_attention_layernorm.weight", Role::norm2_weight, l, {c}, Split::none, false, 0, 1},
        {p + "post_attention_layernorm.bias", Role::norm2_bias, l, {c}, Split::none, false, 0, 0},
        {p + (s.swiglu ? "mlp.gate_up_proj.weight" : "mlp.up_proj.weight"), Role::mlp_in_weight, l, {c, mlp_in}, mlp_split, true, 1, 0},
        {p + (s.swiglu ? "mlp.gate_up_proj.bias" : "mlp.up_proj.bias"), Role::mlp_in_bias, l, {mlp_in}, mlp_split, false, 0, 0},
        {p + "mlp.down_proj.weight", Role::mlp_out_weight, l, {f, c}, Split::rows, true, residual, 0},
        {p + "mlp.down_proj.bias", Role::mlp_out_bias, l, {c}, Split::none, false, 0, 0}});
  }
  if (!s.post_norm) {
    t.push_back({"model.norm.weight", Role::final_norm_weight, -1, {c}, Split::none, false, 0, 1});
    t.push_back({"model.norm.bias", Role::final_norm_bias, -1, {c}, Split::none, false, 0, 0});
  }
  drop_absent(s, t);
  return with_heads(s, std::move(t));
}

bool is_bias(Role r) {
  return r == Role::norm1_bias || r == Role::norm2_bias || r == Role::final_norm_bias || r == Role::qkv_bias ||
         r == Role::attn_out_bias || r == Role::mlp_in_bias || r == Role::mlp_out_bias;
}

// Biases the spec has not: none without model.bias, and no norm bias with RMSNorm.
void drop_absent(const GptShape& s, std::vector<ParamSpec>& t) {
  std::erase_if(t, [&](const ParamSpec& p) {
    const bool norm = p.role == Role::norm1_bias || p.role == Role::norm2_bias || p.role == Role::final_norm_bias;
    return is_bias(p.role) && (!s.bias || (norm && s.rms_norm));
  });
}

std::vector<ParamSpec> with_heads(const GptShape& s, std::vector<ParamSpec> t) {
  const std::int64_t c = s.n_embd;
  // The untied LM head: vocabulary-parallel like wte, a decayed matmul weight (Hugging Face's
  // lm_head.weight).
  if (!s.tied_head) t.push_back({"lm_head.weight", Role::lm_head, -1, {s.padded_vocab, c}, Split::rows, true, 1, 0});
  // Hugging Face's name and shape (GPT2ForSequenceClassification with one label, no bias).
  if (s.score_head) t.push_back({"score.weight", Role::score_weight, -1, {1, c}, Split::none, true, 1, 0});
  return t;
}

}  // namespace

ParamTable::ParamTable(const GptShape& shape, Device device) : tp_size_(shape.tp_size), tp_rank_(shape.tp_rank) {
  const std::vector<ParamSpec> specs = declare_parameters(shape);
  // This rank's shard of each whole shape.
  std::vector<Shape> local;
  std::int64_t total = 0;
  for (const ParamSpec& s : specs) {
    Shape l = s.full_shape;
    if (s.split == Split::rows) l.front() /= tp_size_;
    if (s.split == Split::cols || s.split == Split::qkv || s.split == Split::gate_up) l.back() /= tp_size_;
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
    case Split::qkv:
    case Split::gate_up: {
      // local: [q_r | k_r | v_r] or [gate_r | up_r]
      const std::int64_t parts = split_parts(p.split), part_width = cols / parts, j = local % cols;
      return local / cols * full_cols + (j / part_width) * (full_cols / parts) + r * part_width + j % part_width;
    }
  }
  return local;
}

}  // namespace kiln
