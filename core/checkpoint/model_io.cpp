// Safetensors save and load of model weights and optimizer moments. Files always hold whole
// tensors: a tensor-parallel model gathers its shards to save (every rank takes part, one writes)
// and takes its shard of each whole tensor to load, so checkpoints do not depend on the layout.
#include "core/checkpoint/model_io.h"

#include <charconv>
#include <cmath>
#include <cstring>

#include "core/checkpoint/hugging_face.h"
#include "core/checkpoint/safetensors.h"

namespace kiln {

namespace {
// wte and an untied LM head have a row per token of the padded vocabulary; files hold the real
// vocabulary's rows only.
bool vocabulary_rows(const Parameter& p) { return p.role == Role::token_embedding || p.role == Role::lm_head; }

// The whole tensor of p as it is stored: without padded vocabulary rows.
Tensor stored(const Gpt& model, const Parameter& p, const float* local) {
  Tensor full = model.gather_full(p, local);
  if (!vocabulary_rows(p)) return full;
  return full.view(0, {model.shape().vocab, model.shape().n_embd});
}

// Reads the whole tensor `name` (shaped like p's whole tensor; vocabulary rows padded with zeros) and
// copies this rank's shard of it to `local`.
void read_shard(const Gpt& model, const SafetensorsFile& file, const std::string& name,
                const Parameter& p, float* local) {
  KILN_CHECK(file.contains(name), file.path(), ": has no tensor '", name,
             "'; the checkpoint belongs to a model of another shape or kind (compare its config.yaml)");
  Tensor full = Tensor::zeros(p.full_shape);
  Tensor target = vocabulary_rows(p) ? full.view(0, {model.shape().vocab, model.shape().n_embd}) : full;
  file.load_into(name, target);
  model.take_shard(p, full, local);
}

std::int64_t offset_of(const Gpt& model, const Parameter& p) {
  return p.value.f32() - model.parameter_buffer().f32();
}

// Every tensor of a file names a parameter of the model (with `suffix`, and ".exp_avg_sq" too for
// an optimizer file): a tensor the model does not have means the file belongs to another model.
void check_no_unexpected_tensors(const Gpt& model, const SafetensorsFile& file, const std::string& path,
                                 const std::string& suffix) {
  std::set<std::string> known;
  for (const Parameter& p : model.parameters()) {
    known.insert(p.name + suffix);
    if (!suffix.empty()) known.insert(p.name + ".exp_avg_sq");
  }
  for (const std::string& name : file.names())
    KILN_CHECK(known.count(name), path, ": tensor '", name, "' is not a", suffix.empty() ? " parameter" : "n optimizer state",
               " of this model (", model.shape().describe(), ", ", model.parameters().size(), " parameters); the file "
               "belongs to a model of another shape or architecture: compare model.* with the config.yaml of the "
               "run that wrote it");
}

// Files are read and written from host memory: a device buffer is copied to the host first.
Tensor on_host(const Tensor& t) { return t.device() == Device::cpu ? t : t.to(Device::cpu); }
}  // namespace

std::vector<NamedTensor> model_tensors(const Gpt& model) {
  const Tensor params = on_host(model.parameter_buffer());
  // transformers' LlamaForCausalLM reads the LLaMA family's layout as is.
  if (hf_llama_layout(model.shape())) return hf_llama_tensors(model, params.f32());
  std::vector<NamedTensor> tensors;
  for (const Parameter& p : model.parameters())
    tensors.push_back({p.name, stored(model, p, params.f32() + offset_of(model, p))});
  return tensors;
}

void save_model(const Gpt& model, const std::string& path,
                const std::map<std::string, std::string>& metadata, bool write) {
  const std::vector<NamedTensor> tensors = model_tensors(model);
  if (!write) return;
  std::map<std::string, std::string> meta = metadata;
  meta["format"] = "pt";  // what transformers expects to find
  write_safetensors(path, tensors, meta);
}

void load_model(Gpt& model, const std::string& path, const std::set<std::string>& may_be_missing) {
  if (hf_llama_layout(model.shape()) && may_be_missing.empty()) return load_hf_safetensors(model, path);
  KILN_CHECK(!hf_llama_layout(model.shape()), path, ": a scalar head over a LLaMA-named trunk is not supported "
             "in this version; start the reward model from a GPT-2-shaped (model.arch=gpt2) checkpoint");
  const SafetensorsFile file(path);
  check_no_unexpected_tensors(model, file, path, "");
  Tensor& buffer = model.parameter_buffer();
  Tensor params = buffer.device() == Device::cpu ? buffer : buffer.to(Device::cpu);
  for (Parameter& p : model.parameters()) {
    if (may_be_missing.count(p.name) && !file.contains(p.name)) continue;
    float* w = params.f32() + offset_of(model, p);
    read_shard(model, file, p.name, p, w);
    for (std::int64_t i = 0; i < p.value.numel(); ++i)
      KILN_CHECK(std::isfinite(w[i]), path, ": tensor '", p.name, "' holds a non-finite value (",
                 w[i], "); the checkpoint is damaged or training diverged");
  }
  if (buffer.device() != Device::cpu) buffer.copy_from(params);
  model.refresh_bf16_weights();
}

void save_optimizer(const Gpt& model, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                    std::int64_t steps, const std::string& path, bool write) {
  KILN_ASSERT(exp_avg.numel() == model.parameter_buffer().numel() && exp_avg_sq.numel() == exp_avg.numel());
  std::vector<NamedTensor> tensors;
  const Tensor m = on_host(exp_avg), v = on_host(exp_avg_sq);
  for (const Parameter& p : model.parameters()) {
    const std::int64_t offset = offset_of(model, p);
    tensors.push_back({p.name + ".exp_avg", stored(model, p, m.f32() + offset)});
    tensors.push_back({p.name + ".exp_avg_sq", stored(model, p, v.f32() + offset)});
  }
  if (!write) return;
  write_safetensors(path, tensors, {{"optimizer", "adamw"}, {"steps", std::to_string(steps)}});
}

std::int64_t load_optimizer(const Gpt& model, Tensor& exp_avg, Tensor& exp_avg_sq,
                            const std::string& path) {
  KILN_ASSERT(exp_avg.numel() == model.parameter_buffer().numel() && exp_avg_sq.numel() == exp_avg.numel());
  KILN_ASSERT(exp_avg.device() == Device::cpu && exp_avg_sq.device() == Device::cpu);
  const SafetensorsFile file(path);
  check_no_unexpected_tensors(model, file, path, ".exp_avg");
  for (const Parameter& p : model.parameters()) {
    const std::int64_t offset = offset_of(model, p);
    read_shard(model, file, p.name + ".exp_avg", p, exp_avg.f32() + offset);
    read_shard(model, file, p.name + ".exp_avg_sq", p, exp_avg_sq.f32() + offset);
  }
  auto it = file.metadata().find("steps");
  KILN_CHECK(it != file.metadata().end(), path, ": no 'steps' in the metadata; not a kiln optimizer file");
  std::int64_t steps = -1;
  const auto [end, ec] = std::from_chars(it->second.data(), it->second.data() + it->second.size(), steps);
  KILN_CHECK(ec == std::errc() && end == it->second.data() + it->second.size() && steps >= 0, path,
             ": metadata 'steps' is '", it->second, "', not a step count; the file is damaged");
  return steps;
}

}  // namespace kiln
