// The transformer block, written once: one forward and one backward per sub-layer (linear, norm,
// attention, MLP), the block that places them by the spec's norm placement, and the blocks of
// the trunk. Training runs them over the saved activations of N = B*T rows with attention over
// the layer's layout; recomputation runs a block again before its backward; decoding
// (core/model/decode.cpp) runs the same blocks over one row per sequence with attention over
// each sequence's KV cache: only the attention core (BlockPass::attend) differs.
//
// Dtype: the activation ops below take Tensors and call the fp32 or the bf16 twin of their kernel
// by the activations' dtype (bf16 with model.dtype=bf16, which the table's capability check
// allows only where bf16 kernels exist). That is the one place a dtype is chosen; the block is
// the same code for fp32 activations (fp32 or bf16 products, model.matmul) and bf16 activations.
// With bf16 activations the products read the bf16 copy of the weights (w16) and the norms the
// fp32 masters; statistics stay fp32.
//
// Every residual add is fused with the norm that reads its result: in a pre-LN block the MLP's
// residual add writes the next block's LN1 (or the final norm) in the same pass, so a block
// reads and writes the residual stream once. On the cpu the fused kernels are, bit for bit, the
// add and the norm run one after the other (kernels/layernorm.h).
//
// Weights are found by role in the parameter table. The tensor-parallel reductions follow from
// each weight's split (params.h): a column-parallel weight's output is this shard's columns; a
// row-parallel weight's output is a partial sum, completed over the tensor-parallel ranks, with
// the (replicated) bias added by one rank before the sum; in backward a column-parallel weight's
// input gradient is the partial sum. (bf16 activations run on one rank.)
#include "core/model/gpt.h"

namespace kiln {

namespace {
bool is_bf16(const Tensor& t) { return t.dtype() == DType::bf16; }
bf16* b16(const Tensor& t) { return static_cast<bf16*>(const_cast<void*>(t.raw())); }
}  // namespace

Gpt::BlockDims Gpt::block_dims() const {
  return {static_cast<std::int64_t>(act_batch_) * act_seq_, shape_.n_embd, shape_.local_width(),
          shape_.local_ffn(), shape_.bf16_matmul};
}

const bf16* Gpt::w16(const Tensor& value) const {
  return static_cast<const bf16*>(weights16_.raw()) + (value.f32() - table_.values().f32());
}

const bf16* Gpt::w16(Role role, int layer) const { return w16(table_.get(role, layer).value); }

// ---- The activation ops: each kernel's fp32 or bf16 twin, by the activations' dtype. ----

const float* Gpt::bias_of(Role bias, int l) const {
  return table_.has(bias, l) ? table_.get(bias, l).value.f32() : nullptr;
}

// out (n, out) = in (n, in) W + b.
void Gpt::linear_forward(Tensor& out, const Tensor& in, std::int64_t n, Role weight, Role bias, int l) {
  const Parameter& w = table_.get(weight, l);
  const std::int64_t in_dim = w.value.shape()[0], out_dim = w.value.shape()[1];
  if (is_bf16(out))
    return kernels_->bf16->linear_forward(b16(out), b16(in), w16(w.value), table_.has(bias, l) ? w16(bias, l) : nullptr, n, in_dim, out_dim);
  const bool row_parallel = w.split == Split::rows;
  const float* b = row_parallel && shape_.tp_rank != 0 ? nullptr : bias_of(bias, l);
  kernels_->linear_forward(out.f32(), in.f32(), w.value.f32(), b, n, in_dim, out_dim, shape_.bf16_matmul);
  if (row_parallel) tp_sum(out.f32(), n * out_dim);
}

// pre (n, out) = in W + b, out = GELU(pre). W is column-parallel (no reduction).
void Gpt::linear_gelu_forward(Tensor& out, Tensor& pre, const Tensor& in, std::int64_t n, Role weight, Role bias,
                              int l) {
  const Parameter& w = table_.get(weight, l);
  KILN_ASSERT(w.split != Split::rows);
  const std::int64_t in_dim = w.value.shape()[0], out_dim = w.value.shape()[1];
  if (is_bf16(out))
    return kernels_->bf16->linear_forward_gelu(b16(out), b16(pre), b16(in), w16(w.value), table_.has(bias, l) ? w16(bias, l) : nullptr, n, in_dim,
                                               out_dim);
  kernels_->linear_forward_gelu(out.f32(), pre.f32(), in.f32(), w.value.f32(), bias_of(bias, l), n, in_dim, out_dim,
                                shape_.bf16_matmul);
}

// dinp = dout W^T, dW += in^T dout, db += sums of dout (training rows).
void Gpt::linear_backward(Tensor& dinp, const Tensor& dout, const Tensor& in, Role weight, Role bias, int l) {
  Parameter& w = table_.get(weight, l);
  float* db = table_.has(bias, l) ? table_.get(bias, l).grad.f32() : nullptr;
  const std::int64_t n = block_dims().n, in_dim = w.value.shape()[0], out_dim = w.value.shape()[1];
  if (is_bf16(dinp))
    return kernels_->bf16->linear_backward(b16(dinp), w.grad.f32(), db, b16(dout), b16(in), w16(w.value), n, in_dim,
                                           out_dim);
  kernels_->linear_backward(dinp.f32(), w.grad.f32(), db, dout.f32(), in.f32(), w.value.f32(), n, in_dim, out_dim,
                            shape_.bf16_matmul);
  if (w.split != Split::rows) tp_sum(dinp.f32(), n * in_dim);
}

void Gpt::norm_forward(Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& in, std::int64_t n, NormRef norm) {
  const float* g = table_.get(norm.weight, norm.layer).value.f32();
  if (shape_.rms_norm && is_bf16(out))
    return kernels_->bf16->rmsnorm_forward(b16(out), rstd.f32(), b16(in), g, n, shape_.n_embd, shape_.norm_eps);
  if (shape_.rms_norm)
    return kernels_->rmsnorm_forward(out.f32(), rstd.f32(), in.f32(), g, n, shape_.n_embd, shape_.norm_eps);
  const float* b = table_.get(norm.bias, norm.layer).value.f32();
  if (is_bf16(out))
    return kernels_->bf16->layernorm_forward(b16(out), mean.f32(), rstd.f32(), b16(in), g, b, n, shape_.n_embd);
  kernels_->layernorm_forward(out.f32(), mean.f32(), rstd.f32(), in.f32(), g, b, n, shape_.n_embd);
}

// residual = in + delta (residual may be in), out = norm(residual).
void Gpt::residual_norm_forward(Tensor& residual, Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& in,
                                const Tensor& delta, std::int64_t n, NormRef norm) {
  const float* g = table_.get(norm.weight, norm.layer).value.f32();
  if (shape_.rms_norm && is_bf16(out))
    return kernels_->bf16->residual_rmsnorm_forward(b16(residual), b16(out), rstd.f32(), b16(in), b16(delta), g, n,
                                                    shape_.n_embd, shape_.norm_eps);
  if (shape_.rms_norm)
    return kernels_->residual_rmsnorm_forward(residual.f32(), out.f32(), rstd.f32(), in.f32(), delta.f32(), g, n,
                                              shape_.n_embd, shape_.norm_eps);
  const float* b = table_.get(norm.bias, norm.layer).value.f32();
  if (is_bf16(out))
    return kernels_->bf16->residual_layernorm_forward(b16(residual), b16(out), mean.f32(), rstd.f32(), b16(in),
                                                      b16(delta), g, b, n, shape_.n_embd);
  kernels_->residual_layernorm_forward(residual.f32(), out.f32(), mean.f32(), rstd.f32(), in.f32(), delta.f32(), g,
                                       b, n, shape_.n_embd);
}

// dinp += d norm(in) / d in given dout (the norm's backward accumulates into dinp).
void Gpt::norm_backward(Tensor& dinp, const Tensor& dout, const Tensor& in, const Tensor& mean, const Tensor& rstd,
                        NormRef norm) {
  Parameter& w = table_.get(norm.weight, norm.layer);
  const std::int64_t n = block_dims().n;
  if (shape_.rms_norm && is_bf16(dinp))
    return kernels_->bf16->rmsnorm_backward(b16(dinp), w.grad.f32(), b16(dout), b16(in), w.value.f32(), rstd.f32(), n,
                                            shape_.n_embd);
  if (shape_.rms_norm)
    return kernels_->rmsnorm_backward(dinp.f32(), w.grad.f32(), dout.f32(), in.f32(), w.value.f32(), rstd.f32(), n,
                                      shape_.n_embd);
  float* db = table_.get(norm.bias, norm.layer).grad.f32();
  if (is_bf16(dinp))
    return kernels_->bf16->layernorm_backward(b16(dinp), w.grad.f32(), db, b16(dout), b16(in), w.value.f32(),
                                              mean.f32(), rstd.f32(), n, shape_.n_embd);
  kernels_->layernorm_backward(dinp.f32(), w.grad.f32(), db, dout.f32(), in.f32(), w.value.f32(), mean.f32(),
                               rstd.f32(), n, shape_.n_embd);
}

// The training attention core: a.qkv (N, qkv_width) -> a.atty (N, cl) over the layer's layout,
// the key/value heads grouped (read by their query heads in the kernels, never repeated).
void Gpt::attention_core_forward(int l, LayerActs& a) {
  const std::int64_t cl = shape_.local_width(), nh = shape_.local_heads(), kv = shape_.local_kv_heads();
  if (is_bf16(a.qkv))
    return kernels_->bf16->attention_forward(b16(a.atty), a.lse.f32(), b16(a.qkv), act_batch_, act_seq_, cl, nh,
                                             layout_view(l), kv);
  kernels_->attention_forward(a.atty.f32(), a.lse.f32(), a.qkv.f32(), act_batch_, act_seq_, cl, nh, layout_view(l),
                              kv);
}

void Gpt::attention_core_backward(int l, Tensor& dqkv, const Tensor& dout, const LayerActs& a) {
  const std::int64_t cl = shape_.local_width(), nh = shape_.local_heads(), kv = shape_.local_kv_heads();
  if (is_bf16(dqkv))
    return kernels_->bf16->attention_backward(b16(dqkv), b16(dout), b16(a.qkv), b16(a.atty), a.lse.f32(), act_batch_,
                                              act_seq_, cl, nh, layout_view(l), kv);
  kernels_->attention_backward(dqkv.f32(), dout.f32(), a.qkv.f32(), a.atty.f32(), a.lse.f32(), act_batch_, act_seq_,
                               cl, nh, layout_view(l), kv);
}

// dinp = GELU'(pre) * dout (dinp may be dout).
void Gpt::gelu_backward(Tensor& dinp, const Tensor& pre, const Tensor& dout, std::int64_t n) {
  if (is_bf16(dinp)) return kernels_->bf16->gelu_backward(b16(dinp), b16(pre), b16(dout), n);
  kernels_->gelu_backward(dinp.f32(), pre.f32(), dout.f32(), n);
}

// Rotary embeddings on the q and k heads of n rows of q|k|v, in place (backward: their gradient).
void Gpt::rope(Tensor& qkv, const std::int32_t* positions, std::int64_t n, bool backward, std::int64_t kv_heads) {
  const std::int64_t heads = shape_.local_heads(), hd = shape_.head_size();
  if (is_bf16(qkv))
    return (backward ? kernels_->bf16->rope_backward : kernels_->bf16->rope_forward)(
        b16(qkv), rope_cos_.f32(), rope_sin_.f32(), positions, n, heads, kv_heads, hd);
  (backward ? kernels_->rope_backward : kernels_->rope_forward)(qkv.f32(), rope_cos_.f32(), rope_sin_.f32(), positions,
                                                                n, heads, kv_heads, hd);
}

// ---- The sub-layers and the block. ----

// pass.scratch (n, C) = Attn(in): the fused q|k|v product (rotary embeddings on q and k), the
// pass's attention core, the output projection.
void Gpt::attention_forward(int l, const Tensor& in, const BlockPass& pass) {
  LayerActs& a = pass.layer(l);
  linear_forward(a.qkv, in, pass.n, Role::qkv_weight, Role::qkv_bias, l);
  if (shape_.rope) rope(a.qkv, pass.positions, pass.n, false, shape_.local_kv_heads());
  pass.attend(l, a);
  linear_forward(pass.scratch, a.atty, pass.n, Role::attn_out_weight, Role::attn_out_bias, l);
}

// dinp (N, C) = d Attn(in) / d in given dout; dtmp_ is scratch.
void Gpt::attention_backward(int l, const Tensor& dout, const Tensor& in, Tensor& dinp) {
  const LayerActs& a = acts_[l];
  linear_backward(dtmp_, dout, a.atty, Role::attn_out_weight, Role::attn_out_bias, l);
  attention_core_backward(l, dqkv_, dtmp_, a);
  if (shape_.rope) rope(dqkv_, staged_.positions, block_dims().n, true, shape_.local_kv_heads());
  const bool replicated = tp_ && table_.kv_replicas() > 1;
  if (replicated) replicated_kv_grads(l, false);
  linear_backward(dinp, dqkv_, in, Role::qkv_weight, Role::qkv_bias, l);
  if (replicated) replicated_kv_grads(l, true);
}

// Key/value heads replicated over tensor-parallel ranks (fewer than the ranks): the gradient a
// rank's backward adds to its copy comes from its own query heads only. Before the q|k|v
// product's backward (finish false) the copies' accumulated gradients are set aside and zeroed;
// after it (finish true) the new parts are summed over the ranks, each rank placing its heads'
// columns in a whole-width buffer, and added back, so every copy holds the whole gradient and
// the copies stay equal. The input gradient needs nothing: the ranks' parts are summed with
// the rest of it. Tensor parallelism runs on the cpu, so this is host memory.
void Gpt::replicated_kv_grads(int l, bool finish) {
  std::size_t stash = 0;
  for (const Role role : {Role::qkv_weight, Role::qkv_bias}) {
    if (!table_.has(role, l)) continue;
    Parameter& p = table_.get(role, l);
    const auto [first, width] = table_.kv_columns(p);
    const std::int64_t cols = p.value.shape().back(), rows = p.value.numel() / cols;
    const std::int64_t full_cols = p.full_shape.back(), kv_full = full_cols - p.q_width;
    float* g = p.grad.f32();
    if (!finish) {
      kv_stash_.resize(stash + rows * width);
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t j = first; j < cols; ++j) {
          kv_stash_[stash++] = g[r * cols + j];
          g[r * cols + j] = 0.0f;
        }
      continue;
    }
    std::vector<float> whole(static_cast<std::size_t>(rows * kv_full), 0.0f);
    auto slot = [&](std::int64_t r, std::int64_t j) {
      return r * kv_full + full_index(p, r * cols + j) % full_cols - p.q_width;
    };
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = first; j < cols; ++j) whole[slot(r, j)] = g[r * cols + j];
    tp_sum(whole.data(), static_cast<std::int64_t>(whole.size()));
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = first; j < cols; ++j) g[r * cols + j] = whole[slot(r, j)] + kv_stash_[stash++];
  }
}

// pass.scratch (n, C) = MLP(in) = GELU(in W_fc + b) W_proj + b, or with SwiGLU
// (silu(in W_gate) * (in W_up)) W_down (W_gate | W_up fused).
void Gpt::mlp_forward(int l, const Tensor& in, const BlockPass& pass) {
  LayerActs& a = pass.layer(l);
  if (shape_.swiglu) {
    linear_forward(a.fch, in, pass.n, Role::mlp_in_weight, Role::mlp_in_bias, l);
    if (is_bf16(a.fch))
      kernels_->bf16->swiglu_forward(b16(a.fch_gelu), b16(a.fch), pass.n, shape_.local_ffn());
    else
      kernels_->swiglu_forward(a.fch_gelu.f32(), a.fch.f32(), pass.n, shape_.local_ffn());
  } else {
    linear_gelu_forward(a.fch_gelu, a.fch, in, pass.n, Role::mlp_in_weight, Role::mlp_in_bias, l);
  }
  linear_forward(pass.scratch, a.fch_gelu, pass.n, Role::mlp_out_weight, Role::mlp_out_bias, l);
}

// dinp (N, C) = d MLP(in) / d in given dout.
void Gpt::mlp_backward(int l, const Tensor& dout, const Tensor& in, Tensor& dinp) {
  const LayerActs& a = acts_[l];
  linear_backward(dfch_, dout, a.fch_gelu, Role::mlp_out_weight, Role::mlp_out_bias, l);
  if (shape_.swiglu) {
    if (is_bf16(dgate_up_))
      kernels_->bf16->swiglu_backward(b16(dgate_up_), b16(a.fch), b16(dfch_), block_dims().n, shape_.local_ffn());
    else
      kernels_->swiglu_backward(dgate_up_.f32(), a.fch.f32(), dfch_.f32(), block_dims().n, shape_.local_ffn());
    return linear_backward(dinp, dgate_up_, in, Role::mlp_in_weight, Role::mlp_in_bias, l);
  }
  gelu_backward(dfch_, a.fch, dfch_, block_dims().n * shape_.local_ffn());
  linear_backward(dinp, dfch_, in, Role::mlp_in_weight, Role::mlp_in_bias, l);
}

// One block; the spec's norm placement says where its two norms sit:
//   pre-LN:  res2 = x + Attn(LN1(x));      res3 = res2 + MLP(LN2(res2))       (output res3)
//   post-LN: ln1 = LN1(x + Attn(x)) (res2); ln2 = LN2(ln1 + MLP(ln1)) (res3)  (output ln2)
// A pre-LN block reads LN1(x) from its a.ln1, written by the norm before it (the previous
// block's last residual add, or blocks_forward for block 0), and its last residual add writes
// the next norm's output: the next block's LN1, or the final norm into pass.lnf. recompute (a
// block run again before its backward, its output kept): LN1 is made here and the next norm's
// output, another block's, is left alone.
void Gpt::block_forward(int l, const Tensor& in, const BlockPass& pass, bool recompute) {
  LayerActs& a = pass.layer(l);
  const std::int64_t n = pass.n;
  if (shape_.post_norm) {
    attention_forward(l, in, pass);
    residual_norm_forward(a.res2, a.ln1, a.ln1_mean, a.ln1_rstd, in, pass.scratch, n, norm1(l));
    mlp_forward(l, a.ln1, pass);
    residual_norm_forward(a.res3, a.ln2, a.ln2_mean, a.ln2_rstd, a.ln1, pass.scratch, n, norm2(l));
    return;
  }
  if (recompute) norm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, in, n, norm1(l));
  attention_forward(l, a.ln1, pass);
  residual_norm_forward(a.res2, a.ln2, a.ln2_mean, a.ln2_rstd, in, pass.scratch, n, norm2(l));
  mlp_forward(l, a.ln2, pass);
  if (recompute) return;
  if (l + 1 < shape_.n_layer) {
    LayerActs& next = pass.layer(l + 1);
    residual_norm_forward(a.res3, next.ln1, next.ln1_mean, next.ln1_rstd, a.res2, pass.scratch, n, norm1(l + 1));
  } else {
    residual_norm_forward(a.res3, *pass.lnf, *pass.lnf_mean, *pass.lnf_rstd, a.res2, pass.scratch, n, final_norm());
  }
}

// The blocks of the trunk over x (the embedded tokens); the output is pass.output(n_layer - 1),
// normed into pass.lnf (pre-LN).
void Gpt::blocks_forward(const Tensor& x, const BlockPass& pass) {
  LayerActs& first = pass.layer(0);
  if (!shape_.post_norm) norm_forward(first.ln1, first.ln1_mean, first.ln1_rstd, x, pass.n, norm1(0));
  for (int l = 0; l < shape_.n_layer; ++l) block_forward(l, l == 0 ? x : pass.output(l - 1), pass);
}

// dres: the gradient of the block's output on entry, of its input on return (training rows).
void Gpt::block_backward(int l, const Tensor& in, Tensor& dres) {
  const LayerActs& a = acts_[l];
  if (!shape_.post_norm) {
    // res3 = res2 + MLP(LN2(res2)); norm backward adds into dres.
    mlp_backward(l, dres, a.ln2, dtmp_);
    norm_backward(dres, dtmp_, a.res2, a.ln2_mean, a.ln2_rstd, norm2(l));
    // res2 = in + Attn(LN1(in)).
    attention_backward(l, dres, a.ln1, dtmp2_);
    norm_backward(dres, dtmp2_, in, a.ln1_mean, a.ln1_rstd, norm1(l));
    return;
  }
  // output = LN2(res3), res3 = ln1 + MLP(ln1), ln1 = LN1(res2), res2 = in + Attn(in). fp32 only
  // (the model refuses bf16 activations with post-LN).
  const std::int64_t nc = block_dims().n * shape_.n_embd;
  dtmp_.zero_();
  norm_backward(dtmp_, dres, a.res3, a.ln2_mean, a.ln2_rstd, norm2(l));
  mlp_backward(l, dtmp_, a.ln1, dtmp2_);
  kernels_->accumulate(dtmp2_.f32(), dtmp_.f32(), nc);  // d ln1 through both paths
  dres.zero_();
  norm_backward(dres, dtmp2_, a.res2, a.ln1_mean, a.ln1_rstd, norm1(l));
  attention_backward(l, dres, in, dtmp2_);
  kernels_->accumulate(dres.f32(), dtmp2_.f32(), nc);
}

}  // namespace kiln
