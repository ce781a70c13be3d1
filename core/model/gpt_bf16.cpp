// GPT forward and backward in mixed precision (model.dtype: bf16, on cuda): the same pre-LN
// model as block.cpp, with activations and the weights the products read in bf16, and fp32 where
// precision is lost otherwise: master weights and their gradients (the optimizer's), LayerNorm
// statistics, attention's log-sum-exp and the losses. Shapes as in gpt.cpp (N = B*T rows).
// This is the one block still written a second time (its fused kernels cross block boundaries);
// folding it into block.cpp is the next step of the model core (docs/model.md).
//
// Each block ends with one fused residual-add + LayerNorm that writes the residual stream and
// the next LayerNorm's output in one pass (the next block's LN1, or the final LN after the last
// block), so a block reads and writes the residual stream once:
//
//   ln1 = LN1(x)                               (by the previous block's fused kernel)
//   qkv = ln1 W_qkv + b;  y = attn(qkv);  a = y W_proj + b
//   res2, ln2 = x + a, LN2(x + a)              (fused)
//   h = gelu(ln2 W_fc + b)                      (GELU in the matmul's epilogue where it wins)
//   m = h W_fcproj + b
//   res3, next_ln = res2 + m, LN(res2 + m)     (fused)
#include "core/model/gpt.h"

namespace kiln {

namespace {
bf16* b16(const Tensor& t) { return static_cast<bf16*>(const_cast<void*>(t.raw())); }
}  // namespace

const bf16* Gpt::w16(const Tensor& value) const {
  return static_cast<const bf16*>(weights16_.raw()) + (value.f32() - table_.values().f32());
}

const bf16* Gpt::w16(Role role, int layer) const { return w16(table_.get(role, layer).value); }

const float* Gpt::w32(Role role, int layer) const { return table_.get(role, layer).value.f32(); }

void Gpt::run_forward_bf16() {
  const Bf16Kernels& k = *kernels_->bf16;
  const std::int64_t n = static_cast<std::int64_t>(act_batch_) * act_seq_, c = shape_.n_embd;
  const Parameter& wte = table_.get(Role::token_embedding);
  const Parameter& wpe = table_.get(Role::position_embedding);
  k.embedding_forward(b16(encoded_), staged_.inputs, staged_.positions, w16(wte.value), w16(wpe.value),
                      n, c, 0, shape_.local_vocab());
  LayerActs& a0 = acts_[0];
  k.layernorm_forward(b16(a0.ln1), a0.ln1_mean.f32(), a0.ln1_rstd.f32(), b16(encoded_),
                      w32(Role::norm1_weight, 0), w32(Role::norm1_bias, 0), n, c);
  for (int l = 0; l < shape_.n_layer; ++l) block_forward_bf16(l, l == 0 ? b16(encoded_) : b16(acts_[l - 1].res3));
  // logits (N, Vp) bf16 = lnf (N, C) @ wte^T (C, Vp)
  k.matmul(logits_.raw(), true, b16(lnf_), w16(wte.value), n, shape_.padded_vocab, c, false, true, 0.0f);
}

void Gpt::block_forward_bf16(int l, const bf16* in, bool write_output) {
  const Bf16Kernels& k = *kernels_->bf16;
  LayerActs& a = acts_[l];
  [[maybe_unused]] const auto [n, c, cl, fl, bf16_matmul] = block_dims();
  const std::int64_t nh = shape_.local_heads();
  k.linear_forward(b16(a.qkv), b16(a.ln1), w16(Role::qkv_weight, l), w16(Role::qkv_bias, l), n, c, 3 * cl);
  k.attention_forward(b16(a.atty), a.lse.f32(), b16(a.qkv), act_batch_, act_seq_, cl, nh, layout_view(l));
  k.linear_forward(b16(scratch_), b16(a.atty), w16(Role::attn_out_weight, l), w16(Role::attn_out_bias, l), n, cl, c);
  k.residual_layernorm_forward(b16(a.res2), b16(a.ln2), a.ln2_mean.f32(), a.ln2_rstd.f32(), in,
                               b16(scratch_), w32(Role::norm2_weight, l), w32(Role::norm2_bias, l), n, c);
  k.linear_forward_gelu(b16(a.fch_gelu), b16(a.fch), b16(a.ln2), w16(Role::mlp_in_weight, l),
                        w16(Role::mlp_in_bias, l), n, c, fl);
  k.linear_forward(b16(scratch_), b16(a.fch_gelu), w16(Role::mlp_out_weight, l), w16(Role::mlp_out_bias, l), n, fl, c);
  // The residual stream after this block, and the LayerNorm that reads it next (not when
  // recomputing for backward: res3 is kept, and the next LN1 would overwrite this block's).
  if (!write_output) return;
  if (l + 1 < shape_.n_layer) {
    LayerActs& an = acts_[l + 1];
    k.residual_layernorm_forward(b16(a.res3), b16(an.ln1), an.ln1_mean.f32(), an.ln1_rstd.f32(),
                                 b16(a.res2), b16(scratch_), w32(Role::norm1_weight, l + 1),
                                 w32(Role::norm1_bias, l + 1), n, c);
  } else {
    const Parameter& w = table_.get(Role::final_norm_weight);
    const Parameter& b = table_.get(Role::final_norm_bias);
    k.residual_layernorm_forward(b16(a.res3), b16(lnf_), lnf_mean_.f32(), lnf_rstd_.f32(),
                                 b16(a.res2), b16(scratch_), w.value.f32(), b.value.f32(), n, c);
  }
}

void Gpt::cross_entropy_bf16(float loss_scale) {
  const std::int64_t n = static_cast<std::int64_t>(act_batch_) * act_seq_;
  kernels_->bf16->softmax_cross_entropy(losses_.f32(), b16(logits_), staged_.targets, staged_.mask, n,
                                        shape_.vocab, shape_.padded_vocab, loss_scale);
}

void Gpt::run_backward_bf16() {
  const Bf16Kernels& k = *kernels_->bf16;
  const std::int64_t n = static_cast<std::int64_t>(act_batch_) * act_seq_, c = shape_.n_embd;
  const std::int64_t vp = shape_.padded_vocab;
  Parameter& wte = table_.get(Role::token_embedding);
  Parameter& wpe = table_.get(Role::position_embedding);
  // logits = lnf @ wte^T: d lnf (N, C) = dlogits @ wte (bf16), dwte (Vp, C) += dlogits^T @ lnf.
  k.matmul(dtmp_.raw(), true, b16(logits_), w16(wte.value), n, c, vp, false, false, 0.0f);
  k.matmul(wte.grad.f32(), false, b16(logits_), b16(lnf_), vp, c, n, true, false, 1.0f);
  Parameter& w = table_.get(Role::final_norm_weight);
  Parameter& b = table_.get(Role::final_norm_bias);
  dres_.zero_();
  k.layernorm_backward(b16(dres_), w.grad.f32(), b.grad.f32(), b16(dtmp_), b16(acts_.back().res3),
                       w.value.f32(), lnf_mean_.f32(), lnf_rstd_.f32(), n, c);
  ready(table_.final_norm());
  for (int l = shape_.n_layer - 1; l >= 0; --l) {
    const bf16* in = l == 0 ? b16(encoded_) : b16(acts_[l - 1].res3);
    if (shape_.recompute && l + 1 < shape_.n_layer) {
      // The shared buffers hold the last block's activations: this block's LN1 (made by the
      // previous block's fused kernel in the forward pass) and then the block again.
      LayerActs& a = acts_[l];
      k.layernorm_forward(b16(a.ln1), a.ln1_mean.f32(), a.ln1_rstd.f32(), in, w32(Role::norm1_weight, l),
                          w32(Role::norm1_bias, l), n, c);
      block_forward_bf16(l, in, false);
    }
    block_backward_bf16(l, in, b16(dres_));
    ready(table_.block(l));
  }
  k.embedding_backward(wte.grad.f32(), wpe.grad.f32(), b16(dres_), staged_.inputs, staged_.positions,
                       n, c, 0, shape_.local_vocab());
  ready(table_.embeddings());
  ready(table_.heads());
}

void Gpt::block_backward_bf16(int l, const bf16* in, bf16* dres) {
  const Bf16Kernels& k = *kernels_->bf16;
  const LayerActs& a = acts_[l];
  [[maybe_unused]] const auto [n, c, cl, fl, bf16_matmul] = block_dims();
  auto g = [&](Role role) { return table_.get(role, l).grad.f32(); };
  auto w = [&](Role role) { return w16(role, l); };
  const std::int64_t nh = shape_.local_heads();
  // dres: gradient of res3 = res2 + MLP(LN2(res2)); LayerNorm backward adds into it.
  k.linear_backward(b16(dfch_), g(Role::mlp_out_weight), g(Role::mlp_out_bias), dres, b16(a.fch_gelu),
                    w(Role::mlp_out_weight), n, fl, c);
  k.gelu_backward(b16(dfch_), b16(a.fch), b16(dfch_), n * fl);
  k.linear_backward(b16(dtmp_), g(Role::mlp_in_weight), g(Role::mlp_in_bias), b16(dfch_), b16(a.ln2),
                    w(Role::mlp_in_weight), n, c, fl);
  k.layernorm_backward(dres, g(Role::norm2_weight), g(Role::norm2_bias), b16(dtmp_), b16(a.res2),
                       w32(Role::norm2_weight, l), a.ln2_mean.f32(), a.ln2_rstd.f32(), n, c);
  // dres: gradient of res2 = in + Attn(LN1(in)).
  k.linear_backward(b16(dtmp_), g(Role::attn_out_weight), g(Role::attn_out_bias), dres, b16(a.atty),
                    w(Role::attn_out_weight), n, cl, c);
  k.attention_backward(b16(dqkv_), b16(dtmp_), b16(a.qkv), b16(a.atty), a.lse.f32(), act_batch_, act_seq_,
                       cl, nh, layout_view(l));
  k.linear_backward(b16(dtmp2_), g(Role::qkv_weight), g(Role::qkv_bias), b16(dqkv_), b16(a.ln1),
                    w(Role::qkv_weight), n, c, 3 * cl);
  k.layernorm_backward(dres, g(Role::norm1_weight), g(Role::norm1_bias), b16(dtmp2_), in,
                       w32(Role::norm1_weight, l), a.ln1_mean.f32(), a.ln1_rstd.f32(), n, c);
}

}  // namespace kiln
