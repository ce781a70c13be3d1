// The model's architecture as data: every block's sizes and kinds, the numerics, the attention
// pattern of each layer and the tensor-parallel shard this process holds. GPT-2 (pre-LN and
// post-LN) is one instance; ModelConfig's architecture keys that name kinds not implemented yet
// are config errors (core/config.cpp). The parameter table (params.h) and the model are built
// from it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/model/attention_layout.h"
#include "kernels/llama.h"

namespace kiln {

struct GptShape {
  int n_layer = 0;
  int n_head = 0;
  int n_embd = 0;
  int context = 0;       // learned positions
  int vocab = 0;         // real vocabulary
  int padded_vocab = 0;  // vocab rounded up to a multiple of vocab_multiple
  bool post_norm = false;
  bool rms_norm = false;     // RMSNorm (no bias) instead of LayerNorm
  float norm_eps = 1e-5f;
  bool rope = false;         // rotary position embeddings (no learned positions)
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;  // Llama 3's frequency scaling, when rope_scaling.llama3
  bool swiglu = false;       // SwiGLU MLP (fused gate|up projection) instead of GELU
  bool bias = true;          // linears (and LayerNorms) have biases
  bool llama_names = false;  // parameters named as Hugging Face's LlamaForCausalLM (model.arch=llama)
  int mlp_width = 0;     // hidden width of the MLP; 0: 4 * n_embd (GELU), LLaMA's rule (SwiGLU)
  int mlp_multiple_of = 256;  // SwiGLU with mlp_width 0: 8/3 n_embd rounded up to a multiple of this
  bool tied_head = true;    // the LM head is the token embedding (model.tie_embeddings), else lm_head.weight
  bool score_head = false;  // a scalar head (score.weight) on the trunk: reward and value models
  bool bf16_matmul = false;
  bool recompute = false;  // model.recompute: blocks keep only their output for backward
  bool bf16 = false;  // model.dtype bf16: bf16 activations and weight copies (core/model/block.cpp)
  int attention_block = 64;
  // Each layer's attention pattern (empty: dense everywhere, in blocks of attention_block).
  std::vector<AttentionPattern> attention;
  // Tensor parallelism (the sharding plan): this model holds shard tp_rank of tp_size. Heads,
  // the MLP width and the padded vocabulary are split; everything else is replicated.
  int tp_size = 1;
  int tp_rank = 0;

  // tp_size > 1 pads the vocabulary to a multiple of vocab_multiple * tp_size and checks that
  // heads and the MLP width divide.
  static GptShape from_config(const ModelConfig& config, int vocab_size, int tp_size = 1, int tp_rank = 0);
  std::int64_t num_params() const;  // of the whole (unsharded) model
  // Without the token and position embeddings and an untied LM head: Kaplan et al.'s N, what
  // scaling laws are fitted on (docs/scaling.md).
  std::int64_t non_embedding_params() const;
  // The block in words: "pre-LN" for GPT-2; the LLaMA family's parts named, e.g. "pre-norm
  // RMSNorm, RoPE, SwiGLU 512, no biases, untied head".
  std::string describe() const;
  int local_heads() const { return n_head / tp_size; }
  int local_width() const { return n_embd / tp_size; }       // attention width of the shard
  int head_size() const { return n_embd / n_head; }
  int n_kv_head = 0;  // key/value heads (0: n_head); fewer: grouped-query attention
  int kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  bool grouped() const { return kv_heads() != n_head; }
  // Key/value heads under tensor parallelism: split over the ranks when they divide them; with
  // fewer key/value heads than ranks (tp a multiple of them), each rank holds the one its query
  // heads read, and kv_replicas() ranks hold a copy of it.
  int kv_replicas() const { return kv_heads() < tp_size ? tp_size / kv_heads() : 1; }
  int local_kv_heads() const { return kv_heads() < tp_size ? 1 : kv_heads() / tp_size; }
  int kv_head_first() const { return tp_rank / kv_replicas() * local_kv_heads(); }
  // Width of this shard's q|k|v product: its query heads, then as many key and value heads.
  std::int64_t qkv_width() const {
    return static_cast<std::int64_t>(local_heads() + 2 * local_kv_heads()) * head_size();
  }

  int ffn() const;                                            // MLP width
  int local_ffn() const { return ffn() / tp_size; }          // MLP width of the shard
  int local_vocab() const { return padded_vocab / tp_size; }  // vocabulary rows of the shard
  int vocab_first() const { return tp_rank * local_vocab(); }
  // Model FLOPs of training per token (docs/training.md): 6 * (matmul parameters, the tied head
  // included) + 12 * C * (keys each query attends) per layer: about T/2 keys for dense causal
  // attention, the layout's own count for block-sparse layers.
  double flops_per_token(int seq_len) const;
};

}  // namespace kiln
