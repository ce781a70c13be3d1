// A GPT decoder (GPT-2/GPT-3 shape) with explicit forward and backward passes, no autograd tape.
//
//   x = wte[tokens] + wpe[positions]                         (B, T, C)
//   pre-LN block:  x = x + Attn(LN1(x));  x = x + MLP(LN2(x))
//   post-LN block: x = LN1(x + Attn(x));  x = LN2(x + MLP(x))  (no final LN)
//   logits = LN_f(x) @ W^T                                     (B, T, Vp), W = wte (tied) or lm_head
//
// The architecture is data (spec.h); the parameters are a table (params.h) in one fp32 buffer
// (and their gradients in another), named as in Hugging Face's GPT2LMHeadModel. The block is
// written once (block.cpp) for training and decoding (decode.h); the trunk's hidden states feed
// the LM head here or other heads (heads.h). Activations live in one arena sized for (B, T) by
// a single table (ensure_activations in gpt.cpp). docs/model.md draws it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/data/batch.h"
#include "core/kernel_table.h"
#include "core/model/attention_layout.h"
#include "core/model/params.h"
#include "core/model/spec.h"
#include "core/model/tensor_parallel.h"
#include "core/tensor.h"
#include "kernels/device.h"

namespace kiln {

class Gpt {
 public:
  // tp must be given (and outlive the model) when shape.tp_size > 1.
  explicit Gpt(const GptShape& shape, Device device = Device::cpu, TensorParallel* tp = nullptr);
  // On cuda, waits for queued work first: copies may still read or write the pinned buffers.
  ~Gpt();
  Gpt(const Gpt&) = delete;
  Gpt& operator=(const Gpt&) = delete;

  const GptShape& shape() const { return shape_; }
  // The parameter table (params.h): every parameter by role, name and group.
  const ParamTable& params() const { return table_; }
  ParamTable& params() { return table_; }
  std::vector<Parameter>& parameters() { return table_.all(); }
  const std::vector<Parameter>& parameters() const { return table_.all(); }
  const Parameter& parameter(const std::string& name) const;
  Tensor& parameter_buffer() { return table_.values(); }
  const Tensor& parameter_buffer() const { return table_.values(); }
  Tensor& gradient_buffer() { return table_.grads(); }

  // GPT-2 initialisation from a seed: N(0, 0.02) weights and embeddings, residual projections
  // scaled by 1/sqrt(2 * n_layer), zero biases, unit LayerNorm gains, zero padded vocab rows.
  // Element i of parameter p is drawn from Rng(seed, p).normal(i): thread-count independent.
  void init_weights(std::uint64_t seed, float std = 0.02f);

  // The offset in the whole tensor of element `local` of this rank's shard of p.
  std::int64_t full_index(const Parameter& p, std::int64_t local) const { return table_.full_index(p, local); }
  // The whole tensor from every rank's shard (collective over the tensor-parallel group: every
  // rank must call it for the same parameter). `local` is laid out like p.value.
  Tensor gather_full(const Parameter& p, const float* local) const;
  // This rank's shard of a whole tensor, written to `local` (laid out like p.value).
  void take_shard(const Parameter& p, const Tensor& full, float* local) const;

  // Forward only: returns the sum of per-token losses over counted tokens (each times its weight
  // when the batch has weights); logits() then holds the logits (B, T, Vp).
  double forward(const Batch& batch);
  // Forward, fused cross-entropy and backward; gradients are ACCUMULATED into the gradient
  // buffer with loss scaled by loss_scale (1 / tokens in the whole step). The loss is the sum over
  // counted tokens of weight * -log softmax(logits / temperature)[target] (weight 1 without
  // batch.weights). Queued on cuda: the host does not wait for the device, and the batch may be
  // reused as soon as this returns.
  void queue_forward_backward(const Batch& batch, float loss_scale, float temperature = 1.0f);
  // The unscaled sum of per-token losses of every queue_forward_backward since the last call,
  // summed micro-batch by micro-batch in queue order. Waits for the device. After an exception
  // thrown mid-step the queue is not reset: a Gpt is then only fit to be destroyed.
  double take_loss_sum();
  // Both of the above for one batch (with nothing queued before it).
  double forward_backward(const Batch& batch, float loss_scale, float temperature = 1.0f) {
    queue_forward_backward(batch, loss_scale, temperature);
    return take_loss_sum();
  }
  void zero_grad() { table_.grads().zero_(); }

  // Called during backward each time parameters [first, end) (indices into parameters()) hold
  // their final gradient for the current micro-batch, in the order backward produces them (the
  // last blocks first, the embeddings last). Data parallelism starts each gradient bucket's
  // all-reduce from here, overlapping the rest of backward; the model itself knows no more.
  using GradientReadyHook = std::function<void(std::size_t first, std::size_t end)>;
  void set_gradient_ready_hook(GradientReadyHook hook) { gradient_ready_ = std::move(hook); }

  // The trunk and its heads (docs/model.md): trunk_forward runs the embeddings, the blocks and
  // the final norm and returns the hidden states (B*T, C) that heads read (the LM head: logits
  // against the token embedding; a ScalarHead, core/model/heads.h). trunk_backward takes their
  // gradient and accumulates every trunk parameter's, as forward_backward does after the LM
  // head (the gradient-ready hook included). fp32 activations (not model.dtype=bf16).
  const Tensor& trunk_forward(const Batch& batch);
  void trunk_backward(const Tensor& dhidden);
  // The LM head's log-probability of each target, log softmax(logits / temperature)[target],
  // (B*T) on the host; 0 where the mask is 0 (batch.weights are not applied). Forward only: no
  // layer's activations are kept (the blocks share one layer's buffers).
  std::vector<float> token_logprobs(const Batch& batch, float temperature = 1.0f);

  // The LM head's weight (Vp, C), vocabulary-parallel: the token embedding when tied.
  Parameter& lm_head() { return table_.get(shape_.tied_head ? Role::token_embedding : Role::lm_head); }
  const Parameter& lm_head() const { return table_.get(shape_.tied_head ? Role::token_embedding : Role::lm_head); }
  const Tensor& logits() const { return logits_; }   // (B, T, Vp) after forward()
  const Tensor& losses() const { return losses_; }   // (B, T)
  Device device() const { return device_; }
  // model.dtype bf16: the bf16 copy of the parameter buffer that forward and backward read
  // (undefined otherwise). The optimizer's fused update rewrites it; whoever else writes the
  // fp32 parameters (initialisation, checkpoint loading) calls refresh_bf16_weights().
  const Tensor& bf16_weights() const { return weights16_; }
  void refresh_bf16_weights();
  // Allocates activations for (batch, seq_len) micro-batches now rather than at the first
  // forward pass (so a memory plan can be printed before step 1).
  void reserve_activations(int batch, int seq_len) { ensure_activations(batch, seq_len); }
  // Bytes held for activations and batch staging (after reserve_activations or a forward).
  std::int64_t activation_bytes() const;

 private:
  friend class Decoder;  // runs the block over its KV caches (core/model/decode.cpp)
  // One block's saved activations; shapes with N = B*T rows.
  struct LayerActs {
    Tensor ln1, ln1_mean, ln1_rstd;  // (N, C), (N), (N)
    Tensor qkv;                      // (N, 3C)
    Tensor atty;                     // (N, C)
    Tensor lse;                      // (B, NH, T)
    Tensor res2;                     // (N, C) residual after attention (post-LN: before LN1)
    Tensor ln2, ln2_mean, ln2_rstd;  // (N, C), (N), (N)
    Tensor fch, fch_gelu;            // (N, F) (fch: (N, 2F), gate|up, with SwiGLU), the activation
    Tensor res3;                     // (N, C) residual after MLP (post-LN: before LN2)
  };

  // Sizes every block function uses: rows n, width c, this shard's attention width cl and MLP
  // width fl, bf16 matmuls.
  struct BlockDims {
    std::int64_t n, c, cl, fl;
    bool bf16;
  };
  BlockDims block_dims() const;
  void make_bf16_weights();
  // Tells the gradient-ready hook that these parameters hold their final gradient.
  void ready(ParamRange range) const {
    if (gradient_ready_ && range.end > range.first) gradient_ready_(range.first, range.end);
  }
  // keep false: forward only, every block shares layer 0's buffers (no backward may follow).
  void ensure_activations(int batch, int seq_len, bool keep = true);
  void check_batch(const Batch& batch) const;
  void begin_pass(const Batch& batch, bool keep);
  void run_forward(const Batch& batch, bool keep = true);
  void run_trunk();
  const Tensor& hidden() const;  // the trunk's output: the final norm's (pre-LN) or the last block's
  void run_backward();
  void backward_trunk(const Tensor& dhidden);
  // The block, written once (core/model/block.cpp): each sub-layer's forward and backward over
  // the activation ops, and the block that places them by the spec's norm placement. A forward
  // pass runs over n rows of some buffers with some attention core: the saved activations and
  // the layer's layout in training, one row per sequence and its KV cache in decoding.
  using Attend = std::function<void(int layer, LayerActs& a)>;  // a.qkv (n, 3C) -> a.atty (n, C)
  struct BlockPass {
    std::vector<LayerActs>& acts;  // one per layer, or one that every layer shares
    std::int64_t n;
    Tensor& scratch;                        // (n, C)
    Tensor *lnf, *lnf_mean, *lnf_rstd;      // the final norm's output and statistics (pre-LN)
    const std::int32_t* positions;          // (n): each row's position (rotary embeddings)
    Attend attend;
    LayerActs& layer(int l) const { return acts[acts.size() == 1 ? 0 : l]; }
    bool post_norm;
    // Block l's output: res3 (pre-LN) or ln2 (post-LN).
    const Tensor& output(int l) const { return post_norm ? layer(l).ln2 : layer(l).res3; }
  };
  BlockPass training_pass();
  void blocks_forward(const Tensor& x, const BlockPass& pass);
  void block_forward(int l, const Tensor& in, const BlockPass& pass, bool recompute = false);
  void block_backward(int l, const Tensor& in, Tensor& dres);
  void attention_forward(int l, const Tensor& in, const BlockPass& pass);
  void attention_backward(int l, const Tensor& dout, const Tensor& in, Tensor& dinp);
  void mlp_forward(int l, const Tensor& in, const BlockPass& pass);
  void mlp_backward(int l, const Tensor& dout, const Tensor& in, Tensor& dinp);
  // The activation ops (block.cpp): each calls its kernel's fp32 or bf16 twin by the dtype of
  // the activations it is given, the one place where the block's dtype is chosen.
  struct NormRef {
    Role weight, bias;
    int layer;
  };
  static NormRef norm1(int l) { return {Role::norm1_weight, Role::norm1_bias, l}; }
  static NormRef norm2(int l) { return {Role::norm2_weight, Role::norm2_bias, l}; }
  static NormRef final_norm() { return {Role::final_norm_weight, Role::final_norm_bias, -1}; }
  void linear_forward(Tensor& out, const Tensor& in, std::int64_t n, Role weight, Role bias, int l);
  void linear_gelu_forward(Tensor& out, Tensor& pre, const Tensor& in, std::int64_t n, Role weight, Role bias, int l);
  void linear_backward(Tensor& dinp, const Tensor& dout, const Tensor& in, Role weight, Role bias, int l);
  void norm_forward(Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& in, std::int64_t n, NormRef norm);
  void residual_norm_forward(Tensor& residual, Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& in,
                             const Tensor& delta, std::int64_t n, NormRef norm);
  void norm_backward(Tensor& dinp, const Tensor& dout, const Tensor& in, const Tensor& mean, const Tensor& rstd,
                     NormRef norm);
  void attention_core_forward(int l, LayerActs& a);
  void attention_core_backward(int l, Tensor& dqkv, const Tensor& dout, const LayerActs& a);
  void gelu_backward(Tensor& dinp, const Tensor& pre, const Tensor& dout, std::int64_t n);
  void rope(Tensor& qkv, const std::int32_t* positions, std::int64_t n, bool backward, std::int64_t kv_heads);
  void replicated_kv_grads(int l, bool finish);
  const float* bias_of(Role bias, int l) const;  // null when the spec has no such bias
  // The trunk's ends (gpt.cpp), by dtype as well: the embeddings (summed over the
  // tensor-parallel ranks) and their backward, and c (m, n) = op(a) op(b) (+ beta c) for the LM
  // head, where an fp32 operand beside bf16 activations is a parameter and its bf16 copy is read.
  void embed(Tensor& out, const std::int32_t* tokens, const std::int32_t* positions, std::int64_t n);
  void embed_backward(const Tensor& dout);
  void product(Tensor& c, const Tensor& a, const Tensor& b, std::int64_t m, std::int64_t n, std::int64_t k,
               bool trans_a, bool trans_b, float beta);
  const bf16* w16(const Tensor& value) const;  // the bf16 copy of a parameter (a view's offset)
  const bf16* w16(Role role, int layer) const;   // the bf16 copy of a block's weight
  Tensor weights16_;
  // Sums a partial result over the tensor-parallel ranks (no-op with one rank).
  void tp_sum(float* data, std::int64_t n) const;
  // Per-token losses (and, with loss_scale != 0, dlogits in place) over a possibly sharded
  // vocabulary, from fp32 or bf16 logits; the batch's weights unless `weighted` is false.
  void cross_entropy(float loss_scale, float temperature, bool weighted = true);

  GptShape shape_;
  Device device_;
  const KernelTable* kernels_;
  TensorParallel* tp_;  // null with one rank
  ParamTable table_;
  GradientReadyHook gradient_ready_;

  // Activations for the current (batch, seq_len), all views into one arena.
  int act_batch_ = 0, act_seq_ = 0;
  bool act_keep_ = true;
  Tensor arena_, arena16_;  // fp32 (everything, or statistics only) and bf16 activations
  std::vector<LayerActs> acts_;
  Tensor encoded_, lnf_, lnf_mean_, lnf_rstd_, logits_, losses_;
  Tensor row_max_, row_sum_, target_logit_;  // (N) vocabulary-parallel cross-entropy
  Tensor scratch_, dres_, dtmp_, dtmp2_, dqkv_, dfch_;  // (N, C) x4, (N, 3C), (N, F)
  Tensor dgate_up_;  // (N, 2F): SwiGLU's input gradient
  std::vector<float> kv_stash_;  // replicated key/value heads' gradients during a backward (replicated_kv_grads)
  Tensor rope_cos_, rope_sin_;  // (context, head size / 2): rotary tables (position=rope)
  std::vector<std::int32_t> positions_;
  // Layouts for the current sequence length: one per distinct pattern, and each layer's.
  std::vector<BlockLayout> layouts_;
  std::vector<int> layer_layout_;
  const std::int32_t* segments_ = nullptr;  // of the batch in flight (device memory on cuda)
  BlockLayoutView layout_view(int l) const;

  // On cuda the batch's token ids, targets, positions, mask and segments are copied into device
  // buffers before the forward pass (stream-ordered, no wait); on the cpu the kernels read the
  // Batch's vectors directly. Layouts are copied once per sequence length, with the key-major
  // (transposed) index the GPU backward walks.
  struct DeviceBatch {
    const std::int32_t* inputs = nullptr;
    const std::int32_t* targets = nullptr;
    const std::int32_t* positions = nullptr;
    const std::uint8_t* mask = nullptr;
    const std::int32_t* segments = nullptr;
    const float* weights = nullptr;
  };
  // A batch is copied through one pinned buffer, reused once the device has read the last batch
  // from it (staged_event_), so the host never waits on pageable copies.
  DeviceBatch stage_batch(const Batch& batch);
  template <class T>
  const T* stage(const std::vector<T>& host, Tensor& buffer, std::byte* pinned = nullptr);
  DeviceBatch staged_;
  device::PinnedBuffer staging_;
  device::Event staged_event_;
  Tensor staged_inputs_, staged_targets_, staged_positions_, staged_mask_, staged_segments_, staged_weights_,
      default_positions_;
  struct DeviceLayout {
    Tensor storage;  // row_ptr | cols | col_ptr | col_rows as int32
    BlockLayoutView view;
  };
  std::vector<DeviceLayout> device_layouts_;
  // Sum of losses_ over n tokens (a copy to the host on cuda: the logged loss).
  double loss_sum(std::int64_t n) const;
  // Queued losses: on cuda each micro-batch's losses_ are copied into loss_host_ without waiting
  // (loss_counts_ holds their lengths); drain_losses() waits once and sums them into loss_sums_.
  void queue_losses(std::int64_t n);
  void drain_losses();
  device::PinnedBuffer loss_host_;
  std::vector<std::int64_t> loss_counts_;
  std::int64_t loss_queued_ = 0;  // floats in loss_host_
  std::vector<double> loss_sums_;
};

}  // namespace kiln
