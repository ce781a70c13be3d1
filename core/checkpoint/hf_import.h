// Hugging Face model folders -> kiln: config.json read into the model section of a kiln config,
// and the (possibly sharded) safetensors weights mapped onto the parameter table. GPT-2
// (GPT2LMHeadModel; its Conv1D weights are kiln's layout) and LLaMA (LlamaForCausalLM: Linear
// weights (out, in) transposed, q/k/v and gate/up fused, rotary pairs in Hugging Face's own
// rotate-half layout, which kiln uses, so no permutation) are read. fp32 and bf16 tensors.
#pragma once

#include <string>

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

}  // namespace kiln
