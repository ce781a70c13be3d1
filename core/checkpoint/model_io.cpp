// Safetensors save and load of model weights and optimizer moments.
#include "core/checkpoint/model_io.h"

#include <charconv>
#include <cmath>

#include "core/checkpoint/safetensors.h"

namespace kiln {

namespace {
// The parameter as it is stored: wte without its padded rows.
Tensor stored_view(const Gpt& model, const Parameter& p, const Tensor& t) {
  if (p.name != "transformer.wte.weight") return t;
  return t.view(0, {model.shape().vocab, model.shape().n_embd});
}

Tensor moment_view(const Gpt& model, const Parameter& p, const Tensor& moments) {
  const std::int64_t offset = p.value.f32() - model.parameters().front().value.f32();
  return moments.view(offset, p.value.shape());
}
}  // namespace

void save_model(const Gpt& model, const std::string& path,
                const std::map<std::string, std::string>& metadata) {
  std::vector<NamedTensor> tensors;
  for (const Parameter& p : model.parameters()) tensors.push_back({p.name, stored_view(model, p, p.value)});
  std::map<std::string, std::string> meta = metadata;
  meta["format"] = "pt";  // what transformers expects to find
  write_safetensors(path, tensors, meta);
}

void load_model(Gpt& model, const std::string& path) {
  const SafetensorsFile file(path);
  for (Parameter& p : model.parameters()) {
    KILN_CHECK(file.contains(p.name), path, ": has no tensor '", p.name,
               "'; the checkpoint belongs to a model of another shape or kind (compare its config.yaml)");
    Tensor view = stored_view(model, p, p.value);
    file.load_into(p.name, view);
    const float* w = view.f32();
    for (std::int64_t i = 0; i < view.numel(); ++i)
      KILN_CHECK(std::isfinite(w[i]), path, ": tensor '", p.name, "' holds a non-finite value (",
                 w[i], ") at element ", i, "; the checkpoint is damaged or training diverged");
  }
}

void save_optimizer(const Gpt& model, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                    std::int64_t steps, const std::string& path) {
  KILN_ASSERT(exp_avg.numel() == model.parameter_buffer().numel() && exp_avg_sq.numel() == exp_avg.numel());
  std::vector<NamedTensor> tensors;
  for (const Parameter& p : model.parameters()) {
    tensors.push_back({p.name + ".exp_avg", moment_view(model, p, exp_avg)});
    tensors.push_back({p.name + ".exp_avg_sq", moment_view(model, p, exp_avg_sq)});
  }
  write_safetensors(path, tensors, {{"optimizer", "adamw"}, {"steps", std::to_string(steps)}});
}

std::int64_t load_optimizer(const Gpt& model, Tensor& exp_avg, Tensor& exp_avg_sq,
                            const std::string& path) {
  KILN_ASSERT(exp_avg.numel() == model.parameter_buffer().numel() && exp_avg_sq.numel() == exp_avg.numel());
  const SafetensorsFile file(path);
  for (const Parameter& p : model.parameters()) {
    Tensor m = moment_view(model, p, exp_avg);
    Tensor v = moment_view(model, p, exp_avg_sq);
    file.load_into(p.name + ".exp_avg", m);
    file.load_into(p.name + ".exp_avg_sq", v);
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
