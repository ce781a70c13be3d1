// Hugging Face model folders -> kiln: config.json read into the model section of a kiln config,
// and the (possibly sharded) safetensors weights mapped onto the parameter table. GPT-2
// (GPT2LMHeadModel; its Conv1D weights are kiln's layout) and LLaMA (LlamaForCausalLM: Linear
// weights (out, in) transposed, q/k/v and gate/up fused, rotary pairs in Hugging Face's own
// rotate-half layout, which kiln uses, so no permutation) are read. fp32, bf16 and fp16 tensors.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/checkpoint/safetensors.h"
#include "core/config.h"
#include "core/model/gpt.h"

namespace kiln {

// True when `dir` holds a config.json (a Hugging Face model folder).
bool is_hf_folder(const std::string& dir);

// The model section for dir/config.json; vocab_size is the config's. Errors name the file and
// the field: an unknown model_type, or a setting kiln does not implement (rope_scaling, sliding
// windows, biases where LLaMA has none, an activation other than GPT-2's GELU or SiLU, ...).
ModelConfig hf_model_config(const std::string& dir);

// Every parameter of `model` (built from hf_model_config of the same folder, any tensor-parallel
// shard, any device) from dir's model.safetensors or model.safetensors.index.json shards. A
// missing or mis-shaped tensor is an error naming it and its file; a missing lm_head is taken
// as tied when the model's head is tied.
void load_hf_weights(Gpt& model, const std::string& dir);
// The same from one safetensors file in Hugging Face's LLaMA layout (kiln's LLaMA checkpoints).
void load_hf_safetensors(Gpt& model, const std::string& file);

// transformers' config.json for the model (GPT2LMHeadModel or LlamaForCausalLM), or null when
// the spec has no Hugging Face counterpart (post-LN, or a mix of the two families).
nlohmann::json hf_config_json(const GptShape& shape);
// generation_config.json: end-of-text as the stop (and start) token.
nlohmann::json hf_generation_config_json(int eot);
// Writes config.json and generation_config.json into `dir` (a kiln checkpoint folder or an
// export), so transformers' AutoModelForCausalLM.from_pretrained(dir) loads it; nothing when
// the spec has no Hugging Face counterpart. Returns whether it wrote them.
bool write_hf_config(const std::string& dir, const GptShape& shape, int eot);

// A Hugging Face model folder in `dir` (created): config.json, generation_config.json and the
// weights, in one model.safetensors or, past max_shard_bytes, in model-0000i-of-0000n.safetensors
// files listed by model.safetensors.index.json. Throws naming the reason when the model has no
// Hugging Face counterpart. Returns the files written.
std::vector<std::string> export_hf(const Gpt& model, const std::string& dir, int eot, std::int64_t max_shard_bytes);

// Whether the spec is the LLaMA Hugging Face has (LlamaForCausalLM): llama names, RMSNorm,
// rotary positions, SwiGLU, no biases, pre-norm. Such models are saved in its layout.
bool hf_llama_layout(const GptShape& shape);
// The model's weights (whole tensors: a collective under tensor parallelism) in Hugging Face's
// LLaMA names and layouts: q/k/v and gate/up apart, Linear weights (out, in), real vocabulary
// rows. params: the parameter buffer on the host.
std::vector<NamedTensor> hf_llama_tensors(const Gpt& model, const float* params);

}  // namespace kiln
