// Model and optimizer tensors <-> safetensors files. Weights use Hugging Face GPT-2 names and
// shapes (wte holds the real vocabulary rows only, without kiln's padding), so
// transformers' GPT2LMHeadModel and the safetensors library read them as they are.
#pragma once

#include <map>
#include <set>
#include <string>

#include "core/checkpoint/safetensors.h"
#include "core/model/gpt.h"
#include "core/optim/adamw.h"

namespace kiln {

// With tensor parallelism every rank of the group must call save_model / save_optimizer (the
// shards are gathered); only a caller with write = true writes the file.
void save_model(const Gpt& model, const std::string& path,
                const std::map<std::string, std::string>& metadata = {}, bool write = true);
// The tensors save_model writes (whole tensors: a collective under tensor parallelism): GPT-2
// names and shapes, or Hugging Face's LLaMA names and layouts for that family (hugging_face.h).
std::vector<NamedTensor> model_tensors(const Gpt& model);
// Loads every parameter by name; errors name the file, the tensor and the shapes that differ.
// Parameters named in `may_be_missing` keep their current values when the file lacks them (a
// reward model's scalar head over a language model's trunk).
void load_model(Gpt& model, const std::string& path, const std::set<std::string>& may_be_missing = {});

// AdamW moments as "<param name>.exp_avg" / ".exp_avg_sq" (shaped like the weights), from
// moment buffers laid out like the model's whole flat parameter buffer — whatever slices the
// optimizers of a parallel run held, the file holds every parameter's moments.
void save_optimizer(const Gpt& model, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                    std::int64_t steps, const std::string& path, bool write = true);
// Fills whole-model moment buffers; returns the optimizer's step count.
std::int64_t load_optimizer(const Gpt& model, Tensor& exp_avg, Tensor& exp_avg_sq,
                            const std::string& path);

}  // namespace kiln
