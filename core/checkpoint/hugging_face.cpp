// Hugging Face model folders <-> kiln (hugging_face.h).
#include "core/checkpoint/hugging_face.h"

#include <charconv>
#include <cstdio>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/checkpoint/atomic_file.h"
#include "core/checkpoint/model_io.h"
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
  // One safetensors file.
  explicit HfTensors(const std::string& file) {
    const SafetensorsFile opened(file);
    for (const std::string& name : opened.names()) where_[name] = file;
  }
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
    return file.load_f32(name);  // F32, or BF16 / F16 widened exactly
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
    if (c.contains("rope_scaling") && !c["rope_scaling"].is_null()) {
      const Json& r = c["rope_scaling"];
      const std::string kind = r.value("rope_type", r.value("type", std::string()));
      KILN_CHECK(kind == "llama3", file, ": field 'rope_scaling' (", r.dump(),
                 ") is not implemented; kiln has Llama 3's (rope_type llama3)");
      m.rope_scaling = "llama3";
      m.rope_factor = static_cast<float>(required<double>(r, file + " rope_scaling", "factor"));
      m.rope_low_freq_factor = static_cast<float>(required<double>(r, file + " rope_scaling", "low_freq_factor"));
      m.rope_high_freq_factor = static_cast<float>(required<double>(r, file + " rope_scaling", "high_freq_factor"));
      m.rope_original_context = required<int>(r, file + " rope_scaling", "original_max_position_embeddings");
    }
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

namespace {
void load_from(Gpt& model, HfTensors& hf, const std::string& dir);
}  // namespace

void load_hf_weights(Gpt& model, const std::string& dir) {
  HfTensors hf{fs::path(dir)};
  load_from(model, hf, dir);
}

void load_hf_safetensors(Gpt& model, const std::string& file) {
  HfTensors hf{file};
  load_from(model, hf, file);
}

namespace {
// The float as the double its shortest decimal names (1e-6f -> 1e-06, not 9.99999997e-07), as
// Python writes it.
double shortest(float x) {
  char text[32];
  const auto end = std::to_chars(text, text + sizeof text, x).ptr;
  return std::stod(std::string(text, end));
}
}  // namespace

nlohmann::json hf_config_json(const GptShape& s) {
  const bool gpt2 = !s.llama_names && !s.rms_norm && !s.rope && !s.swiglu && s.bias && !s.post_norm && !s.grouped();
  if (gpt2) {
    Json c = {{"architectures", {"GPT2LMHeadModel"}},
              {"model_type", "gpt2"},
              {"vocab_size", s.vocab},
              {"n_positions", s.context},
              {"n_ctx", s.context},
              {"n_embd", s.n_embd},
              {"n_layer", s.n_layer},
              {"n_head", s.n_head},
              {"n_inner", s.ffn() == 4 * s.n_embd ? Json() : Json(s.ffn())},
              {"activation_function", "gelu_new"},
              {"layer_norm_epsilon", 1e-5},
              {"tie_word_embeddings", s.tied_head},
              {"resid_pdrop", 0.0},
              {"embd_pdrop", 0.0},
              {"attn_pdrop", 0.0},
              {"torch_dtype", "float32"}};
    return c;
  }
  if (hf_llama_layout(s))
    return {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"vocab_size", s.vocab},
            {"hidden_size", s.n_embd},
            {"intermediate_size", s.ffn()},
            {"num_hidden_layers", s.n_layer},
            {"num_attention_heads", s.n_head},
            {"num_key_value_heads", s.kv_heads()},
            {"max_position_embeddings", s.context},
            {"rms_norm_eps", shortest(s.norm_eps)},
            {"rope_theta", shortest(s.rope_theta)},
            {"rope_scaling", s.rope_scaling.llama3 ? Json{{"rope_type", "llama3"},
                                                           {"factor", shortest(s.rope_scaling.factor)},
                                                           {"low_freq_factor", shortest(s.rope_scaling.low_freq_factor)},
                                                           {"high_freq_factor", shortest(s.rope_scaling.high_freq_factor)},
                                                           {"original_max_position_embeddings",
                                                            s.rope_scaling.original_context}}
                                                    : Json()},
            {"hidden_act", "silu"},
            {"attention_bias", false},
            {"tie_word_embeddings", s.tied_head},
            {"torch_dtype", "float32"}};
  return nullptr;
}

nlohmann::json hf_generation_config_json(int eot) {
  return {{"_from_model_config", true}, {"bos_token_id", eot}, {"eos_token_id", eot}};
}

bool write_hf_config(const std::string& dir, const GptShape& shape, int eot) {
  const Json config = hf_config_json(shape);
  if (config.is_null()) return false;
  Json with_tokens = config;
  with_tokens["bos_token_id"] = eot;
  with_tokens["eos_token_id"] = eot;
  write_file_atomic(dir + "/config.json", with_tokens.dump(2) + "\n");
  write_file_atomic(dir + "/generation_config.json", hf_generation_config_json(eot).dump(2) + "\n");
  return true;
}

std::vector<std::string> export_hf(const Gpt& model, const std::string& dir, int eot, std::int64_t max_shard_bytes) {
  GptShape whole = model.shape();
  whole.tp_size = 1;
  whole.tp_rank = 0;
  KILN_CHECK(!hf_config_json(whole).is_null(), "this model (", whole.describe(), (whole.llama_names ? ", llama names" : ""),
             ") has no Hugging Face counterpart: transformers has GPT-2 (pre-LN, LayerNorm, learned positions, GELU, "
             "biases) and LLaMA (model.arch=llama)");
  KILN_CHECK(max_shard_bytes > 0, "the shard size must be positive, got ", max_shard_bytes, " bytes");
  const std::vector<NamedTensor> tensors = model_tensors(model);
  // Greedy shards in table order, each at most max_shard_bytes (a larger tensor alone).
  std::vector<std::vector<NamedTensor>> shards(1);
  std::int64_t in_shard = 0, total = 0;
  for (const NamedTensor& t : tensors) {
    const auto bytes = static_cast<std::int64_t>(t.tensor.nbytes());
    if (in_shard > 0 && in_shard + bytes > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(t);
    in_shard += bytes;
    total += bytes;
  }
  fs::create_directories(dir);
  std::vector<std::string> written;
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  if (shards.size() == 1) {
    write_safetensors(dir + "/model.safetensors", tensors, meta);
    written.push_back("model.safetensors");
  } else {
    Json map = {{"metadata", {{"total_size", total}}}, {"weight_map", Json::object()}};
    for (std::size_t i = 0; i < shards.size(); ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
      write_safetensors(dir + "/" + name, shards[i], meta);
      for (const NamedTensor& t : shards[i]) map["weight_map"][t.name] = name;
      written.push_back(name);
    }
    write_file_atomic(dir + "/model.safetensors.index.json", map.dump(2) + "\n");
    written.push_back("model.safetensors.index.json");
  }
  write_hf_config(dir, whole, eot);
  written.insert(written.end(), {"config.json", "generation_config.json"});
  return written;
}

bool hf_llama_layout(const GptShape& s) {
  return s.llama_names && s.rms_norm && s.rope && s.swiglu && !s.bias && !s.post_norm;
}

std::vector<NamedTensor> hf_llama_tensors(const Gpt& model, const float* params) {
  const GptShape& s = model.shape();
  KILN_CHECK(hf_llama_layout(s), "the model is not in the LLaMA family Hugging Face has (", s.describe(), ")");
  const std::int64_t c = s.n_embd, f = s.ffn(), vocab = s.vocab, kv = static_cast<std::int64_t>(s.kv_heads()) * s.head_size();
  std::vector<NamedTensor> out;
  // Columns [col0, col0 + n) of a kiln (in, cols) weight as a Linear weight (n, in).
  auto linear = [](const Tensor& full, std::int64_t col0, std::int64_t n) {
    const std::int64_t in = full.shape()[0], cols = full.shape()[1];
    Tensor t = Tensor::empty({n, in});
    for (std::int64_t o = 0; o < n; ++o)
      for (std::int64_t i = 0; i < in; ++i) t.f32()[o * in + i] = full.f32()[i * cols + col0 + o];
    return t;
  };
  for (const Parameter& p : model.parameters()) {
    const Tensor full = model.gather_full(p, params + (p.value.f32() - model.parameter_buffer().f32()));
    const std::string layer = "model.layers." + std::to_string(p.layer) + ".";
    switch (p.role) {
      case Role::qkv_weight:
        out.push_back({layer + "self_attn.q_proj.weight", linear(full, 0, c)});
        out.push_back({layer + "self_attn.k_proj.weight", linear(full, c, kv)});
        out.push_back({layer + "self_attn.v_proj.weight", linear(full, c + kv, kv)});
        break;
      case Role::attn_out_weight: out.push_back({layer + "self_attn.o_proj.weight", linear(full, 0, c)}); break;
      case Role::mlp_in_weight:
        out.push_back({layer + "mlp.gate_proj.weight", linear(full, 0, f)});
        out.push_back({layer + "mlp.up_proj.weight", linear(full, f, f)});
        break;
      case Role::mlp_out_weight: out.push_back({layer + "mlp.down_proj.weight", linear(full, 0, c)}); break;
      default: {  // stored as kiln holds it, under its table name (Hugging Face's); real vocabulary rows only
        const bool rows = p.role == Role::token_embedding || p.role == Role::lm_head;
        out.push_back({p.name, rows ? full.view(0, {vocab, c}) : full});
        break;
      }
    }
  }
  return out;
}

namespace {
void load_from(Gpt& model, HfTensors& hf, const std::string& dir) {
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
    // A tensor Hugging Face stores as kiln holds it (every GPT-2 tensor; a LLaMA's embeddings,
    // norms and head), under the table's name: the file holds the real vocabulary rows, kiln pads
    // them with zero rows.
    auto as_held = [&](const std::string& name) {
      const bool rows = p.role == Role::token_embedding || p.role == Role::lm_head;
      Tensor t = hf.load(name, rows ? Shape{vocab, c} : p.full_shape);
      std::copy(t.f32(), t.f32() + t.numel(), w);
    };
    if (p.role == Role::lm_head && !hf.contains("lm_head.weight"))
      throw Error(message(dir, ": no lm_head.weight, but config.json says the head is untied"));
    if (!s.llama_names) {
      as_held(gpt2_name(p.name));
    } else {
      switch (p.role) {
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
          as_held(p.name);
          break;
      }
    }
    for (std::int64_t i = 0; i < full.numel(); ++i)
      KILN_CHECK(std::isfinite(w[i]), dir, ": the weights for '", p.name, "' hold a non-finite value");
    model.take_shard(p, full, params.f32() + (p.value.f32() - buffer.f32()));
  }
  if (buffer.device() != Device::cpu) buffer.copy_from(params);
  model.refresh_bf16_weights();
}
}  // namespace

}  // namespace kiln
