// The transformer block, written once: one forward and one backward per sub-layer (linear, norm,
// attention, MLP) and the block that places them by the spec's norm placement. Training runs it
// over the saved activations of N = B*T rows with attention over the layer's layout; decoding
// (core/model/decode.cpp) runs the same forward over one row per sequence with attention over
// each sequence's KV cache: only the attention core (BlockPass::attend) differs.
//
// Weights are found by role in the parameter table. The tensor-parallel reductions follow from
// each weight's split (params.h): a column-parallel weight's output is this shard's columns; a
// row-parallel weight's output is a partial sum, completed over the tensor-parallel ranks, with
// the (replicated) bias added by one rank before the sum; in backward a column-parallel weight's
// input gradient is the partial sum.
#include "core/model/gpt.h"

namespace kiln {

Gpt::BlockDims Gpt::block_dims() const {
  return {static_cast<std::int64_t>(act_batch_) * act_seq_, shape_.n_embd, shape_.local_width(),
          shape_.local_ffn(), shape_.bf16_matmul};
}

Gpt::BlockPass Gpt::training_pass(int l) {
  return {acts_[l], block_dims().n, scratch_.f32(), [this](int layer, LayerActs& a) {
            kernels_->attention_forward(a.atty.f32(), a.lse.f32(), a.qkv.f32(), act_batch_, act_seq_,
                                        shape_.local_width(), shape_.local_heads(), layout_view(layer));
          }};
}

// out (n, out) = in (n, in) W + b.
void Gpt::linear_forward(float* out, const float* in, std::int64_t n, Role weight, Role bias, int l) {
  const Parameter& w = table_.get(weight, l);
  const bool row_parallel = w.split == Split::rows;
  const float* b = row_parallel && shape_.tp_rank != 0 ? nullptr : table_.get(bias, l).value.f32();
  const std::int64_t in_dim = w.value.shape()[0], out_dim = w.value.shape()[1];
  kernels_->linear_forward(out, in, w.value.f32(), b, n, in_dim, out_dim, shape_.bf16_matmul);
  if (row_parallel) tp_sum(out, n * out_dim);
}

// dinp = dout W^T, dW += in^T dout, db += sums of dout (training rows).
void Gpt::linear_backward(float* dinp, const float* dout, const float* in, Role weight, Role bias, int l) {
  Parameter& w = table_.get(weight, l);
  const std::int64_t n = block_dims().n, in_dim = w.value.shape()[0], out_dim = w.value.shape()[1];
  kernels_->linear_backward(dinp, w.grad.f32(), table_.get(bias, l).grad.f32(), dout, in, w.value.f32(), n,
                            in_dim, out_dim, shape_.bf16_matmul);
  if (w.split != Split::rows && dinp != nullptr) tp_sum(dinp, n * in_dim);
}

void Gpt::norm_forward(float* out, float* mean, float* rstd, const float* in, std::int64_t n, Role weight,
                       Role bias, int l) {
  kernels_->layernorm_forward(out, mean, rstd, in, table_.get(weight, l).value.f32(),
                              table_.get(bias, l).value.f32(), n, shape_.n_embd);
}

// dinp += d norm(in) / d in given dout (LayerNorm backward accumulates into dinp).
void Gpt::norm_backward(float* dinp, const float* dout, const float* in, const float* mean, const float* rstd,
                        Role weight, Role bias, int l) {
  Parameter& w = table_.get(weight, l);
  kernels_->layernorm_backward(dinp, w.grad.f32(), table_.get(bias, l).grad.f32(), dout, in, w.value.f32(), mean,
                               rstd, block_dims().n, shape_.n_embd);
}

// pass.scratch (n, C) = Attn(in): the fused q|k|v product, the pass's attention core, the output
// projection.
void Gpt::attention_forward(int l, const float* in, const BlockPass& pass) {
  LayerActs& a = pass.a;
  linear_forward(a.qkv.f32(), in, pass.n, Role::qkv_weight, Role::qkv_bias, l);
  pass.attend(l, a);
  linear_forward(pass.scratch, a.atty.f32(), pass.n, Role::attn_out_weight, Role::attn_out_bias, l);
}

// dinp (N, C) = d Attn(in) / d in given dout; dtmp_ is scratch.
void Gpt::attention_backward(int l, const float* dout, const float* in, float* dinp) {
  const LayerActs& a = acts_[l];
  linear_backward(dtmp_.f32(), dout, a.atty.f32(), Role::attn_out_weight, Role::attn_out_bias, l);
  kernels_->attention_backward(dqkv_.f32(), dtmp_.f32(), a.qkv.f32(), a.atty.f32(), a.lse.f32(), act_batch_,
                               act_seq_, shape_.local_width(), shape_.local_heads(), layout_view(l));
  linear_backward(dinp, dqkv_.f32(), in, Role::qkv_weight, Role::qkv_bias, l);
}

// pass.scratch (n, C) = MLP(in) = GELU(in W_fc + b) W_proj + b.
void Gpt::mlp_forward(int l, const float* in, const BlockPass& pass) {
  LayerActs& a = pass.a;
  linear_forward(a.fch.f32(), in, pass.n, Role::mlp_in_weight, Role::mlp_in_bias, l);
  kernels_->gelu_forward(a.fch_gelu.f32(), a.fch.f32(), pass.n * shape_.local_ffn());
  linear_forward(pass.scratch, a.fch_gelu.f32(), pass.n, Role::mlp_out_weight, Role::mlp_out_bias, l);
}

// dinp (N, C) = d MLP(in) / d in given dout.
void Gpt::mlp_backward(int l, const float* dout, const float* in, float* dinp) {
  const LayerActs& a = acts_[l];
  linear_backward(dfch_.f32(), dout, a.fch_gelu.f32(), Role::mlp_out_weight, Role::mlp_out_bias, l);
  kernels_->gelu_backward(dfch_.f32(), a.fch.f32(), dfch_.f32(), block_dims().n * shape_.local_ffn());
  linear_backward(dinp, dfch_.f32(), in, Role::mlp_in_weight, Role::mlp_in_bias, l);
}

// One block; the spec's norm placement says where its two norms sit:
//   pre-LN:  res2 = x + Attn(LN1(x));      res3 = res2 + MLP(LN2(res2))       (output res3)
//   post-LN: ln1 = LN1(x + Attn(x)) (res2); ln2 = LN2(ln1 + MLP(ln1)) (res3)  (output ln2)
void Gpt::block_forward(int l, const float* in, const BlockPass& pass) {
  LayerActs& a = pass.a;
  const std::int64_t n = pass.n, nc = n * shape_.n_embd;
  const bool post = shape_.post_norm;
  if (!post) norm_forward(a.ln1.f32(), a.ln1_mean.f32(), a.ln1_rstd.f32(), in, n, Role::norm1_weight, Role::norm1_bias, l);
  attention_forward(l, post ? in : a.ln1.f32(), pass);
  kernels_->add(a.res2.f32(), in, pass.scratch, nc);
  // The MLP reads LN1's output (post) or LN2's (pre).
  Tensor& mlp_in = post ? a.ln1 : a.ln2;
  Tensor& mean = post ? a.ln1_mean : a.ln2_mean;
  Tensor& rstd = post ? a.ln1_rstd : a.ln2_rstd;
  norm_forward(mlp_in.f32(), mean.f32(), rstd.f32(), a.res2.f32(), n, post ? Role::norm1_weight : Role::norm2_weight,
               post ? Role::norm1_bias : Role::norm2_bias, l);
  mlp_forward(l, mlp_in.f32(), pass);
  kernels_->add(a.res3.f32(), post ? a.ln1.f32() : a.res2.f32(), pass.scratch, nc);
  if (post)
    norm_forward(a.ln2.f32(), a.ln2_mean.f32(), a.ln2_rstd.f32(), a.res3.f32(), n, Role::norm2_weight, Role::norm2_bias, l);
}

// dres: the gradient of the block's output on entry, of its input on return (training rows).
void Gpt::block_backward(int l, const float* in, float* dres) {
  const LayerActs& a = acts_[l];
  const std::int64_t nc = block_dims().n * shape_.n_embd;
  if (!shape_.post_norm) {
    // res3 = res2 + MLP(LN2(res2)); norm backward adds into dres.
    mlp_backward(l, dres, a.ln2.f32(), dtmp_.f32());
    norm_backward(dres, dtmp_.f32(), a.res2.f32(), a.ln2_mean.f32(), a.ln2_rstd.f32(), Role::norm2_weight, Role::norm2_bias, l);
    // res2 = in + Attn(LN1(in)).
    attention_backward(l, dres, a.ln1.f32(), dtmp2_.f32());
    norm_backward(dres, dtmp2_.f32(), in, a.ln1_mean.f32(), a.ln1_rstd.f32(), Role::norm1_weight, Role::norm1_bias, l);
    return;
  }
  // output = LN2(res3), res3 = ln1 + MLP(ln1), ln1 = LN1(res2), res2 = in + Attn(in).
  dtmp_.zero_();
  norm_backward(dtmp_.f32(), dres, a.res3.f32(), a.ln2_mean.f32(), a.ln2_rstd.f32(), Role::norm2_weight, Role::norm2_bias, l);
  mlp_backward(l, dtmp_.f32(), a.ln1.f32(), dtmp2_.f32());
  kernels_->accumulate(dtmp2_.f32(), dtmp_.f32(), nc);  // d ln1 through both paths
  KILN_ASSERT(dres == dres_.f32());
  dres_.zero_();
  norm_backward(dres, dtmp2_.f32(), a.res2.f32(), a.ln1_mean.f32(), a.ln1_rstd.f32(), Role::norm1_weight, Role::norm1_bias, l);
  attention_backward(l, dres, in, dtmp2_.f32());
  kernels_->accumulate(dres, dtmp2_.f32(), nc);
}

}  // namespace kiln
