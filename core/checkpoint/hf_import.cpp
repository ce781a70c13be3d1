// Hugging Face model folders -> kiln (hf_import.h).
#include "core/checkpoint/hf_import.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/checkpoint/safetensors.h"
#include "kernels/error.h"

namespace kiln {

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

Json read_json(const fs::path& path) {
  std::ifstream in(path);
  KILN_CHECK(in, path.string(), ": cannot open");
  try {
    return Json::parse(in);
  } catch (const Json::exception& e) {
    throw Error(message(path.string(), ": not valid JSON (", e.what(), ")"));
  }
}

// config[key] as T, or `fallback` when absent or null; a value of the wrong type is an error
// naming the field.
template <class T>
T field(const Json& config, const std::string& file, const std::string& key, T fallback) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const Json::exception&) {
    throw Error(message(file, ": field '", key, "' is ", it->dump(), ", not the expected type"));
  }
}

template <class T>
T required(const Json& config, const std::string& file, const std::string& key) {
  KILN_CHECK(config.contains(key) && !config[key].is_null(), file, ": field '", key, "' is missing");
  return field<T>(config, file, key, T{});
}

// The folder's tensors: one file, or shards listed by model.safetensors.index.json.
class HfTensors {
 public:
  explicit HfTensors(const fs::path& dir) {
    const fs::path single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";
    if (fs::exists(index)) {
      const Json map = read_json(index);
      KILN_CHECK(map.contains("weight_map") && map["weight_map"].is_object(), index.string(),
                 ": no 'weight_map' object");
      for (const auto& [name, file] : map["weight_map"].items()) where_[name] = (dir / file.get<std::string>()).string();
    } else {
      KILN_CHECK(fs::exists(single), dir.string(), ": no model.safetensors or model.safetensors.index.json "
                 "(kiln reads safetensors weights; save the model with safe_serialization=True)");
      const SafetensorsFile file(single.string());
      for (const std::string& name : file.names()) where_[name] = single.string();
    }
  }
  bool contains(const std::string& name) const { return where_.count(name) > 0; }
  // The tensor in fp32 (bf16 widened exactly), with its shape checked against `shape`.
  Tensor load(const std::string& name, const Shape& shape) {
    auto it = where_.find(name);
    KILN_CHECK(it != where_.end(), "the Hugging Face weights have no tensor '", name, "'");
    const SafetensorsFile& file = open(it->second);
    KILN_CHECK(file.shape(name) == shape, file.path(), ": tensor '", name, "' has shape ", describe(file.shape(name)),
               ", expected ", describe(shape), " from config.json");
    Tensor t = file.load(name);
    if (t.dtype() == DType::f32) return t;
    Tensor wide = Tensor::empty(shape);
    const auto* raw = static_cast<const bf16*>(t.raw());
    for (std::int64_t i = 0; i < t.numel(); ++i) wide.f32()[i] = to_float(raw[i]);
    return wide;
  }

 private:
  static std::string describe(const Shape& s) {
    std::string out = "(";
    for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + ")";
  }
  const SafetensorsFile& open(const std::string& path) {
    auto it = files_.find(path);
    if (it == files_.end()) it = files_.emplace(path, std::make_unique<SafetensorsFile>(path)).first;
    return *it->second;
  }
  std::map<std::string, std::string> where_;
  std::map<std::string, std::unique_ptr<SafetensorsFile>> files_;
};

// dst[r * dst_cols + col0 + c] = src[c * rows + r] for src (cols, rows): a Linear weight
// (out, in) written transposed as columns [col0, col0 + out) of a kiln (in, ...) weight.
void put_transposed(float* dst, std::int64_t dst_cols, std::int64_t col0, const Tensor& src) {
  const std::int64_t out = src.shape()[0], in = src.shape()[1];
  for (std::int64_t o = 0; o < out; ++o)
    for (std::int64_t i = 0; i < in; ++i) dst[i * dst_cols + col0 + o] = src.f32()[o * in + i];
}

}  // namespace

bool is_hf_folder(const std::string& dir) { return fs::is_directory(dir) && fs::exists(fs::path(dir) / "config.json"); }

ModelConfig hf_model_config(const std::string& dir) {
  const fs::path path = fs::path(dir) / "config.json";
  const std::string file = path.string();
  const Json c = read_json(path);
  const std::string type = field<std::string>(c, file, "model_type", "");
  ModelConfig m;
  m.vocab_size = required<int>(c, file, "vocab_size");
  if (type == "gpt2") {
    m.arch = "gpt2";
    m.n_layer = required<int>(c, file, "n_layer");
    m.n_head = required<int>(c, file, "n_head");
    m.n_embd = required<int>(c, file, "n_embd");
    m.context = required<int>(c, file, "n_positions");
    m.mlp_width = field<int>(c, file, "n_inner", 0);
    const std::string act = field<std::string>(c, file, "activation_function", "gelu_new");
    KILN_CHECK(act == "gelu_new" || act == "gelu_pytorch_tanh", file, ": activation_function '", act,
               "' is not implemented; kiln's GPT-2 MLP is the tanh GELU (gelu_new)");
    const double eps = field<double>(c, file, "layer_norm_epsilon", 1e-5);
    KILN_CHECK(std::abs(eps - 1e-5) < 1e-12, file, ": layer_norm_epsilon ", eps, " is not implemented (1e-5 only)");
    m.tie_embeddings = field<bool>(c, file, "tie_word_embeddings", true) ? 1 : 0;
    KILN_CHECK(!field<bool>(c, file, "scale_attn_by_inverse_layer_idx", false) &&
                   !field<bool>(c, file, "reorder_and_upcast_attn", false),
               file, ": scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not implemented");
    return m;
  }
  if (type == "llama") {
    m.arch = "llama";
    m.norm_kind = "rmsnorm";
    m.position = "rope";
    m.mlp = "swiglu";
    m.bias = 0;
    m.n_layer = required<int>(c, file, "num_hidden_layers");
    m.n_head = required<int>(c, file, "num_attention_heads");
    m.n_embd = required<int>(c, file, "hidden_size");
    m.context = required<int>(c, file, "max_position_embeddings");
    m.mlp_width = required<int>(c, file, "intermediate_size");
    m.n_kv_head = field<int>(c, file, "num_key_value_heads", m.n_head);
    m.norm_eps = static_cast<float>(field<double>(c, file, "rms_norm_eps", 1e-6));
    m.rope_theta = static_cast<float>(field<double>(c, file, "rope_theta", 10000.0));
    m.tie_embeddings = field<bool>(c, file, "tie_word_embeddings", false) ? 1 : 0;
    const std::string act = field<std::string>(c, file, "hidden_act", "silu");
    KILN_CHECK(act == "silu", file, ": hidden_act '", act, "' is not implemented; kiln's LLaMA MLP is SwiGLU (silu)");
    KILN_CHECK(!c.contains("rope_scaling") || c["rope_scaling"].is_null(), file, ": field 'rope_scaling' (",
               c.contains("rope_scaling") ? c["rope_scaling"].dump() : "", ") is not implemented");
    KILN_CHECK(!field<bool>(c, file, "attention_bias", false), file,
               ": field 'attention_bias' is true; kiln's LLaMA has no biases");
    KILN_CHECK(!field<bool>(c, file, "mlp_bias", false), file, ": field 'mlp_bias' is true; kiln's LLaMA has no biases");
    const int head_dim = field<int>(c, file, "head_dim", m.n_embd / m.n_head);
    KILN_CHECK(head_dim * m.n_head == m.n_embd, file, ": head_dim ", head_dim, " x num_attention_heads ", m.n_head,
               " != hidden_size ", m.n_embd, "; kiln needs hidden_size = heads x head size");
    KILN_CHECK(c.value("sliding_window", Json()).is_null(), file, ": field 'sliding_window' is not implemented");
    return m;
  }
  throw Error(message(file, ": model_type '", type, "' is not one kiln reads; it reads gpt2 and llama"));
}

void load_hf_weights(Gpt& model, const std::string& dir) {
  HfTensors hf{fs::path(dir)};
  const GptShape& s = model.shape();
  const std::int64_t c = s.n_embd, f = s.ffn(), vocab = s.vocab, hd = s.head_size();
  const std::int64_t kv = static_cast<std::int64_t>(s.kv_heads()) * hd;
  Tensor& buffer = model.parameter_buffer();
  Tensor params = buffer.device() == Device::cpu ? buffer : Tensor::zeros(buffer.shape());
  // GPT-2 files name tensors with or without the "transformer." prefix.
  auto gpt2_name = [&](const std::string& kiln) {
    if (hf.contains(kiln) || kiln.rfind("transformer.", 0) != 0) return kiln;
    return kiln.substr(12);
  };
  for (Parameter& p : model.parameters()) {
    Tensor full = Tensor::zeros(p.full_shape);
    float* w = full.f32();
    const std::string layer = "model.layers." + std::to_string(p.layer) + ".";
    if (!s.llama_names) {
      const Shape& shape = p.full_shape;
      // Vocabulary rows: the file holds the real vocabulary, kiln pads with zero rows.
      const bool rows = p.role == Role::token_embedding || p.role == Role::lm_head;
      if (p.role == Role::lm_head && !hf.contains("lm_head.weight"))
        throw Error(message(dir, ": no lm_head.weight, but config.json says the head is untied"));
      Tensor t = hf.load(gpt2_name(p.name), rows ? Shape{vocab, c} : shape);
      std::copy(t.f32(), t.f32() + t.numel(), w);
    } else {
      switch (p.role) {
        case Role::token_embedding:
        case Role::lm_head: {
          const std::string name = p.role == Role::lm_head ? "lm_head.weight" : "model.embed_tokens.weight";
          Tensor t = hf.load(name, {vocab, c});
          std::copy(t.f32(), t.f32() + t.numel(), w);
          break;
        }
        case Role::norm1_weight:
        case Role::norm2_weight:
        case Role::final_norm_weight: {
          const std::string name = p.role == Role::final_norm_weight ? "model.norm.weight"
                                   : p.role == Role::norm1_weight   ? layer + "input_layernorm.weight"
                                                                    : layer + "post_attention_layernorm.weight";
          Tensor t = hf.load(name, {c});
          std::copy(t.f32(), t.f32() + t.numel(), w);
          break;
        }
        case Role::qkv_weight: {  // (C, C + 2 kv) = [q^T | k^T | v^T]
          const std::int64_t cols = c + 2 * kv;
          put_transposed(w, cols, 0, hf.load(layer + "self_attn.q_proj.weight", {c, c}));
          put_transposed(w, cols, c, hf.load(layer + "self_attn.k_proj.weight", {kv, c}));
          put_transposed(w, cols, c + kv, hf.load(layer + "self_attn.v_proj.weight", {kv, c}));
          break;
        }
        case Role::attn_out_weight:
          put_transposed(w, c, 0, hf.load(layer + "self_attn.o_proj.weight", {c, c}));
          break;
        case Role::mlp_in_weight:  // (C, 2F) = [gate^T | up^T]
          put_transposed(w, 2 * f, 0, hf.load(layer + "mlp.gate_proj.weight", {f, c}));
          put_transposed(w, 2 * f, f, hf.load(layer + "mlp.up_proj.weight", {f, c}));
          break;
        case Role::mlp_out_weight:
          put_transposed(w, c, 0, hf.load(layer + "mlp.down_proj.weight", {c, f}));
          break;
        default:
          throw Error(message("a LLaMA model has no parameter like ", p.name, "; import supports the LLaMA preset"));
      }
    }
    for (std::int64_t i = 0; i < full.numel(); ++i)
      KILN_CHECK(std::isfinite(w[i]), dir, ": the weights for '", p.name, "' hold a non-finite value");
    model.take_shard(p, full, params.f32() + (p.value.f32() - buffer.f32()));
  }
  if (buffer.device() != Device::cpu) buffer.copy_from(params);
  model.refresh_bf16_weights();
}

}  // namespace kiln
