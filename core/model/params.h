// The model's parameters as a table. Each parameter is declared once, in declare_parameters
// (params.cpp): its Hugging Face name, its role in the architecture, its whole shape, how tensor
// parallelism splits it, whether AdamW decays it and how it is initialised. Everything else
// reads the table: the model finds a block's weights by role, the gradient-ready hook and the
// gradient buckets by the ranges of groups (embeddings, each block, the final norm), the
// optimizer by decay, checkpoints by name, and the sharding math by split. The values live in
// one fp32 buffer and the gradients in another, in table order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/model/spec.h"
#include "core/tensor.h"

namespace kiln {

// How a parameter's shard sits in the whole tensor under tensor parallelism (the sharding plan,
// per parameter). A matmul weight split by cols is column-parallel (its output is sharded); by
// rows, row-parallel (its output is a partial sum over the ranks).
enum class Split {
  none,  // replicated: every rank holds all of it
  rows,  // dimension 0 cut in tp_size equal runs (wte by vocabulary, row-parallel weights)
  cols,  // the last dimension cut in equal runs (column-parallel weights and biases)
  qkv,   // the last dimension is [q | k | v], each cut by heads (c_attn)
  gate_up,  // the last dimension is [gate | up] (SwiGLU), each cut in equal runs
};

// How many equal parts a split's last dimension holds, each cut across the ranks.
inline int split_parts(Split s) { return s == Split::qkv ? 3 : s == Split::gate_up ? 2 : 1; }

// What a parameter is in the architecture. Code asks for (role, layer), never for a name or a
// position in the buffer.
enum class Role {
  token_embedding,     // (Vp, C); also the LM head when it is tied
  position_embedding,  // (context, C)
  norm1_weight, norm1_bias,        // the norm before attention (pre-LN), after it (post-LN)
  qkv_weight, qkv_bias,            // (C, 3C), (3C)
  attn_out_weight, attn_out_bias,  // (C, C), (C)
  norm2_weight, norm2_bias,        // the norm before the MLP (pre-LN), after it (post-LN)
  mlp_in_weight, mlp_in_bias,      // (C, F), (F)
  mlp_out_weight, mlp_out_bias,    // (F, C), (C)
  final_norm_weight, final_norm_bias,  // pre-LN only
  lm_head,             // (Vp, C): the untied LM head (spec.tied_head false)
  score_weight,        // (1, C): a scalar head on the trunk (reward, value), when the spec has one
};
constexpr int kRoles = static_cast<int>(Role::score_weight) + 1;
constexpr int kBlockRoles = 12;  // norm1_weight .. mlp_out_bias: a GPT-2 block

struct ParamSpec {
  std::string name;  // Hugging Face GPT-2 name, e.g. "transformer.h.0.attn.c_attn.weight"
  Role role;
  int layer;         // the block, or -1
  Shape full_shape;  // of the whole tensor
  Split split;
  bool decay;        // AdamW weight decay applies (matmul weights only)
  float init_std;    // times the init std (0: constant init_value)
  float init_value;
  // Split::qkv: the whole width of the q part; the k and v parts share the rest equally (grouped
  // KV heads make them narrower). 0: three equal parts.
  std::int64_t q_width = 0;
};

// The table of an architecture, in buffer order: embeddings, then each block, then the final
// norm, then the heads other than the (tied) LM head.
std::vector<ParamSpec> declare_parameters(const GptShape& shape);

struct Parameter : ParamSpec {
  Tensor value;  // view into the parameter buffer (this rank's shard)
  Tensor grad;   // view into the gradient buffer
};

// [first, end) indices into the table.
struct ParamRange {
  std::size_t first = 0, end = 0;
};

class ParamTable {
 public:
  // Buffers on `device` for this rank's shards, zero-filled.
  ParamTable(const GptShape& shape, Device device);

  std::vector<Parameter>& all() { return params_; }
  const std::vector<Parameter>& all() const { return params_; }
  const Parameter& get(Role role, int layer = -1) const { return params_[index(role, layer)]; }
  Parameter& get(Role role, int layer = -1) { return params_[index(role, layer)]; }
  const Parameter& by_name(const std::string& name) const;
  bool has(Role role, int layer = -1) const;

  ParamRange embeddings() const { return {0, first_block_}; }
  ParamRange block(int layer) const;
  ParamRange final_norm() const { return {blocks_end_, heads_first_}; }
  ParamRange heads() const { return {heads_first_, params_.size()}; }

  Tensor& values() { return values_; }
  const Tensor& values() const { return values_; }
  Tensor& grads() { return grads_; }

  // The offset in the whole tensor of element `local` of this rank's shard of p.
  std::int64_t full_index(const Parameter& p, std::int64_t local) const;
  // Whether element `local` of p is a copy of a replicated key/value head that another rank
  // (the first of its replicas) also holds: it counts once in gathers and gradient norms.
  bool is_copy(const Parameter& p, std::int64_t local) const;
  // Ranks holding each key/value head: 1, or tp / n_kv_head with fewer key/value heads than ranks.
  int kv_replicas() const { return kv_replicas_; }
  // Split::qkv: the first column of this rank's k|v part and its width (its last dimension).
  std::pair<std::int64_t, std::int64_t> kv_columns(const Parameter& p) const;

 private:
  std::size_t index(Role role, int layer) const;

  int tp_size_, tp_rank_;
  int kv_replicas_;  // ranks holding each key/value head (GptShape::kv_replicas)
  std::vector<Parameter> params_;
  Tensor values_, grads_;
  std::size_t first_block_ = 0, blocks_end_ = 0, heads_first_ = 0;
  std::vector<ParamRange> blocks_;  // each layer's parameters (adjacent in the table)
  std::vector<std::vector<std::size_t>> by_role_;  // [role][layer + 1] -> index, or npos
};

}  // namespace kiln
