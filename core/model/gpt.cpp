// GPT forward and backward, layer by layer. Shapes: B batch, T sequence, C width, NH heads,
// N = B*T rows, Vp padded vocabulary. Every buffer's shape is given where it is made.
#include "core/model/gpt.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/rng.h"
#include "kernels/device.h"

namespace kiln {

Gpt::Gpt(const GptShape& shape, Device device, TensorParallel* tp)
    : shape_(shape), device_(device), kernels_(&kernels_for(device)), tp_(shape.tp_size > 1 ? tp : nullptr),
      table_(shape, device) {
  KILN_CHECK(shape.n_layer >= 1 && shape.n_head >= 1 && shape.n_embd >= 1 && shape.context >= 1,
             "model shape must have at least one layer, head, channel and position");
  KILN_CHECK(shape.n_embd % shape.n_head == 0, "model.n_embd=", shape.n_embd,
             " is not divisible by model.n_head=", shape.n_head);
  KILN_CHECK(shape.tp_size == 1 || (tp != nullptr && tp->size() == shape.tp_size && tp->rank() == shape.tp_rank),
             "a tensor-parallel model needs the tensor-parallel group it is sharded over");
  KILN_CHECK(shape.padded_vocab % shape.tp_size == 0 && shape.n_head % shape.tp_size == 0 &&
                 (shape.kv_heads() % shape.tp_size == 0 || shape.tp_size % shape.kv_heads() == 0) &&
                 shape.n_head % shape.kv_heads() == 0,
             "model shape does not split over ", shape.tp_size, " tensor-parallel ranks");
  KILN_CHECK(!shape.bf16 || (kernels_->has_bf16_activations() && !shape.post_norm && shape.tp_size == 1),
             "model.dtype=bf16 (bf16 activations) trains a pre-LN model on one GPU; this model is",
             shape.post_norm ? " post-LN" : "", kernels_->has_bf16_activations() ? "" : " on the cpu",
             shape.tp_size > 1 ? " tensor-parallel" : "", "; use model.dtype=f32 (model.matmul=bf16 "
             "gives bf16 products with fp32 activations)");
  KILN_CHECK(device == Device::cpu || shape.tp_size == 1,
             "tensor parallelism (parallel.tp=", shape.tp_size, ") runs on the cpu only in this "
             "version; its reductions on cuda need the NCCL path, which is not wired in yet: set "
             "parallel.tp=1 or train.device=cpu");
  make_bf16_weights();
  if (shape.rope) {
    const std::int64_t half = shape.head_size() / 2;
    Tensor cos = Tensor::empty({shape.context, half}), sin = Tensor::empty({shape.context, half});
    rope_tables(cos.f32(), sin.f32(), shape.context, shape.head_size(), shape.rope_theta, shape.rope_scaling);
    rope_cos_ = cos.to(device);
    rope_sin_ = sin.to(device);
  }
}

void Gpt::make_bf16_weights() {
  if (shape_.bf16) weights16_ = Tensor::zeros(table_.values().shape(), DType::bf16, device_);
}

Tensor Gpt::gather_full(const Parameter& p, const float* local) const {
  Tensor full = Tensor::zeros(p.full_shape);  // host memory, like `local`
  float* out = full.f32();
  for (std::int64_t i = 0; i < p.value.numel(); ++i)
    if (!table_.is_copy(p, i)) out[full_index(p, i)] = local[i];
  // Shards are disjoint (of replicated key/value heads one rank contributes), so a sum over
  // the ranks assembles the whole tensor.
  if (p.split != Split::none) tp_sum(out, full.numel());
  return full;
}

void Gpt::take_shard(const Parameter& p, const Tensor& full, float* local) const {
  KILN_ASSERT(full.numel() == shape_numel(p.full_shape));
  const float* in = full.f32();
  for (std::int64_t i = 0; i < p.value.numel(); ++i) local[i] = in[full_index(p, i)];
}

void Gpt::tp_sum(float* data, std::int64_t n) const {
  if (tp_) tp_->all_reduce_sum(data, n);
}

const Parameter& Gpt::parameter(const std::string& name) const { return table_.by_name(name); }

void Gpt::init_weights(std::uint64_t seed, float std) {
  // Drawn on the host, then copied to the device (the same weights on every device).
  Tensor& values = table_.values();
  Tensor host = device_ == Device::cpu ? values : Tensor::empty(values.shape());
  const float* base = values.f32();
  for (std::size_t p = 0; p < table_.all().size(); ++p) {
    Parameter& param = table_.all()[p];
    float* w = host.f32() + (param.value.f32() - base);
    const std::int64_t n = param.value.numel();
    if (param.init_std == 0.0f) {
      for (std::int64_t i = 0; i < n; ++i) w[i] = param.init_value;
      continue;
    }
    // Element i is drawn by its index in the whole tensor, so every sharding of the model
    // starts from the same weights. Padded vocabulary rows stay zero: they are never a target
    // and get no gradient.
    const std::int64_t real = param.role == Role::token_embedding || param.role == Role::lm_head
                                  ? static_cast<std::int64_t>(shape_.vocab) * shape_.n_embd
                                  : shape_numel(param.full_shape);
    const Rng rng(seed, p);
    const float s = std * param.init_std;
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t g = full_index(param, i);
      w[i] = g < real ? s * rng.normal(static_cast<std::uint64_t>(g)) : 0.0f;
    }
  }
  if (device_ != Device::cpu) values.copy_from(host);
  refresh_bf16_weights();
}

void Gpt::refresh_bf16_weights() {
  if (!shape_.bf16) return;
  kernels_->bf16->convert(static_cast<bf16*>(weights16_.raw()), table_.values().f32(), table_.values().numel());
}

void Gpt::ensure_activations(int batch, int seq_len, bool keep) {
  if (batch == act_batch_ && seq_len == act_seq_ && keep == act_keep_) return;
  // Local (this shard's) widths: attention cl, heads nh, MLP fl, vocabulary vp.
  const std::int64_t n = static_cast<std::int64_t>(batch) * seq_len, c = shape_.n_embd;
  const std::int64_t cl = shape_.local_width(), nh = shape_.local_heads();
  const std::int64_t fl = shape_.local_ffn(), vp = shape_.local_vocab();
  // The activation table: every buffer and its shape, laid out in one arena.
  std::vector<std::pair<Tensor*, Shape>> table;
  acts_.assign(shape_.n_layer, LayerActs{});
  for (int l = 0; l < shape_.n_layer; ++l) {
    LayerActs& a = acts_[l];
    if (l > 0 && !keep) continue;  // forward only: every block rewrites layer 0's buffers
    if (l > 0 && shape_.recompute) {
      // Recomputation: only the block's output (res3; ln2 for a post-LN block) is kept per
      // layer; the rest is layer 0's buffers, rewritten by each block in turn.
      table.push_back({shape_.post_norm ? &a.ln2 : &a.res3, {n, c}});
      continue;
    }
    table.insert(table.end(), {{&a.ln1, {n, c}}, {&a.ln1_mean, {n}}, {&a.ln1_rstd, {n}},
                               {&a.qkv, {n, shape_.qkv_width()}}, {&a.atty, {n, cl}}, {&a.lse, {batch, nh, seq_len}},
                               {&a.res2, {n, c}}, {&a.ln2, {n, c}}, {&a.ln2_mean, {n}},
                               {&a.ln2_rstd, {n}}, {&a.fch, {n, shape_.swiglu ? 2 * fl : fl}}, {&a.fch_gelu, {n, fl}},
                               {&a.res3, {n, c}}});
  }
  table.insert(table.end(), {{&encoded_, {n, c}}, {&lnf_, {n, c}}, {&lnf_mean_, {n}},
                             {&lnf_rstd_, {n}}, {&logits_, {batch, seq_len, vp}},
                             {&losses_, {batch, seq_len}}, {&row_max_, {n}}, {&row_sum_, {n}},
                             {&target_logit_, {n}}, {&scratch_, {n, c}}, {&dres_, {n, c}},
                             {&dtmp_, {n, c}}, {&dtmp2_, {n, c}}, {&dqkv_, {n, shape_.qkv_width()}},
                             {&dfch_, {n, fl}}, {&dgate_up_, {shape_.swiglu ? n : 0, 2 * fl}}});
  // Statistics and losses stay fp32; with model.dtype bf16 everything else is bf16, in a second
  // arena.
  std::vector<const Tensor*> stats = {&lnf_mean_, &lnf_rstd_, &losses_, &row_max_, &row_sum_, &target_logit_};
  for (const auto& a : acts_)
    stats.insert(stats.end(), {&a.ln1_mean, &a.ln1_rstd, &a.lse, &a.ln2_mean, &a.ln2_rstd});
  auto wide = [&](const Tensor* t) {
    return shape_.bf16 && std::find(stats.begin(), stats.end(), t) == stats.end();
  };
  std::int64_t total = 0, total16 = 0;
  for (auto& [tensor, shape] : table)
    (wide(tensor) ? total16 : total) += (shape_numel(shape) + 31) / 32 * 32;  // 64-byte aligned
  arena_ = Tensor();  // free the old arenas before making the new ones
  arena16_ = Tensor();
  arena_ = Tensor::empty({total}, DType::f32, device_);
  if (total16 > 0) arena16_ = Tensor::empty({total16}, DType::bf16, device_);
  std::int64_t offset = 0, offset16 = 0;
  for (auto& [tensor, shape] : table) {
    std::int64_t& at = wide(tensor) ? offset16 : offset;
    *tensor = (wide(tensor) ? arena16_ : arena_).view(at, shape);
    at += (shape_numel(shape) + 31) / 32 * 32;
  }
  for (int l = 1; (shape_.recompute || !keep) && l < shape_.n_layer; ++l) {
    const Tensor output = shape_.post_norm ? acts_[l].ln2 : acts_[l].res3;
    acts_[l] = acts_[0];
    // Without keep a block's output is also layer 0's: each block reads its input (the same
    // buffer) before it writes its output, the last thing it writes.
    if (keep) (shape_.post_norm ? acts_[l].ln2 : acts_[l].res3) = output;
  }
  positions_.resize(n);
  for (std::int64_t i = 0; i < n; ++i) positions_[i] = static_cast<std::int32_t>(i % seq_len);
  if (device_ != Device::cpu) stage(positions_, default_positions_);  // pageable: once per shape
  // One layout per distinct pattern (dense when the shape names none).
  layouts_.clear();
  layer_layout_.assign(shape_.n_layer, 0);
  std::vector<std::string> built;
  for (int l = 0; l < shape_.n_layer; ++l) {
    AttentionPattern p;
    if (shape_.attention.empty()) p.block = shape_.attention_block;
    else p = shape_.attention[l];
    const std::string key = p.describe();
    std::size_t i = 0;
    while (i < built.size() && built[i] != key) ++i;
    if (i == built.size()) {
      built.push_back(key);
      layouts_.push_back(build_layout(p, seq_len, shape_.n_head));
    }
    layer_layout_[l] = static_cast<int>(i);
  }
  device_layouts_.clear();
  if (device_ != Device::cpu) {
    // One int32 buffer per layout: row_ptr | cols | col_ptr | col_rows.
    for (const BlockLayout& layout : layouts_) {
      const std::size_t rows = layout.row_ptr.size(), nnz = layout.cols.size();
      std::vector<std::int32_t> packed(2 * (rows + nnz));
      std::copy(layout.row_ptr.begin(), layout.row_ptr.end(), packed.begin());
      std::copy(layout.cols.begin(), layout.cols.end(), packed.begin() + rows);
      cpu::transpose_block_layout(packed.data() + rows + nnz, packed.data() + 2 * rows + nnz,
                                  layout.row_ptr.data(), layout.cols.data(), layout.num_blocks,
                                  layout.num_layouts);
      DeviceLayout d;
      const std::int32_t* dev = stage(packed, d.storage);
      d.view = layout.view();
      d.view.row_ptr = dev;
      d.view.cols = dev + rows;
      d.view.col_ptr = dev + rows + nnz;
      d.view.col_rows = dev + 2 * rows + nnz;
      device_layouts_.push_back(std::move(d));
    }
  }
  act_batch_ = batch;
  act_seq_ = seq_len;
  act_keep_ = keep;
}

Gpt::~Gpt() {
  if (device_ == Device::cpu) return;
  try {
    device::synchronize();
  } catch (...) {  // an earlier kernel error: it was reported where it happened
  }
}

std::int64_t Gpt::activation_bytes() const {
  std::int64_t bytes = arena_.defined() ? static_cast<std::int64_t>(arena_.nbytes()) : 0;
  if (arena16_.defined()) bytes += static_cast<std::int64_t>(arena16_.nbytes());
  for (const Tensor* t : {&staged_inputs_, &staged_targets_, &staged_positions_, &staged_mask_,
                          &staged_segments_, &staged_weights_, &default_positions_})
    if (t->defined()) bytes += static_cast<std::int64_t>(t->nbytes());
  for (const DeviceLayout& d : device_layouts_) bytes += static_cast<std::int64_t>(d.storage.nbytes());
  return bytes;
}

// Host vector -> device buffer (grown when too small; int32 and uint8 data kept in an f32
// tensor's bytes), on the stream. Through `pinned` when given (the bytes are copied there first
// and the copy returns at once); otherwise from pageable memory, where the driver may wait for
// the stream. On the cpu the vector itself is used.
template <class T>
const T* Gpt::stage(const std::vector<T>& host, Tensor& buffer, std::byte* pinned) {
  if (device_ == Device::cpu) return host.data();
  const auto bytes = static_cast<std::int64_t>(host.size() * sizeof(T));
  const std::int64_t words = std::max<std::int64_t>(1, (bytes + 3) / 4);
  if (!buffer.defined() || buffer.numel() < words) buffer = Tensor::empty({words}, DType::f32, device_);
  const void* src = host.data();
  if (pinned) {
    std::memcpy(pinned, host.data(), static_cast<std::size_t>(bytes));
    src = pinned;
  }
  device::copy_to_device(buffer.raw(), src, static_cast<std::size_t>(bytes));
  return static_cast<const T*>(buffer.raw());
}

Gpt::DeviceBatch Gpt::stage_batch(const Batch& batch) {
  // Pinned offsets, 64-byte aligned, for the parts this batch has (none on the cpu).
  constexpr int kParts = 6;
  std::size_t offsets[kParts] = {}, total = 0;
  const std::size_t sizes[kParts] = {batch.inputs.size() * sizeof(std::int32_t),
                                     batch.targets.size() * sizeof(std::int32_t),
                                     batch.positions.size() * sizeof(std::int32_t),
                                     batch.mask.size() * sizeof(std::uint8_t),
                                     batch.segments.size() * sizeof(std::int32_t),
                                     batch.weights.size() * sizeof(float)};
  std::byte* at[kParts] = {};
  if (device_ != Device::cpu) {
    for (int i = 0; i < kParts; ++i) {
      offsets[i] = total;
      total += (sizes[i] + 63) / 64 * 64;
    }
    staged_event_.wait();  // the device has copied the previous batch out of staging_
    staging_.reserve(total);
    for (int i = 0; i < kParts; ++i) at[i] = staging_.data() + offsets[i];
  }
  DeviceBatch d;
  d.inputs = stage(batch.inputs, staged_inputs_, at[0]);
  d.targets = stage(batch.targets, staged_targets_, at[1]);
  d.positions = batch.positions.empty()
                    ? (device_ == Device::cpu ? positions_.data()
                                              : static_cast<const std::int32_t*>(default_positions_.raw()))
                    : stage(batch.positions, staged_positions_, at[2]);
  d.mask = batch.mask.empty() ? nullptr : stage(batch.mask, staged_mask_, at[3]);
  d.segments = batch.segments.empty() ? nullptr : stage(batch.segments, staged_segments_, at[4]);
  d.weights = batch.weights.empty() ? nullptr : stage(batch.weights, staged_weights_, at[5]);
  if (device_ != Device::cpu) staged_event_.record();
  return d;
}

double Gpt::loss_sum(std::int64_t n) const {
  std::vector<float> host;
  const float* losses = losses_.f32();
  if (device_ != Device::cpu) {
    host.resize(static_cast<std::size_t>(n));
    device::copy_to_host(host.data(), losses, static_cast<std::size_t>(n) * sizeof(float));
    losses = host.data();
  }
  double sum = 0.0;
  for (std::int64_t i = 0; i < n; ++i) sum += losses[i];
  return sum;
}

void Gpt::check_batch(const Batch& batch) const {
  const std::size_t n = static_cast<std::size_t>(batch.batch) * batch.seq_len;
  KILN_CHECK(batch.batch >= 1 && batch.seq_len >= 1, "empty batch (", batch.batch, " x ",
             batch.seq_len, ")");
  KILN_CHECK(batch.seq_len <= shape_.context, "sequence length ", batch.seq_len,
             " exceeds model.context=", shape_.context, "; lower train.seq_len or raise model.context");
  KILN_CHECK(batch.inputs.size() == n && batch.targets.size() == n, "batch holds ",
             batch.inputs.size(), " inputs and ", batch.targets.size(), " targets, expected ", n);
  KILN_CHECK(batch.positions.empty() || batch.positions.size() == n, "batch.positions has ",
             batch.positions.size(), " entries, expected ", n);
  KILN_CHECK(batch.mask.empty() || batch.mask.size() == n, "batch.mask has ", batch.mask.size(),
             " entries, expected ", n);
  KILN_CHECK(batch.segments.empty() || batch.segments.size() == n, "batch.segments has ",
             batch.segments.size(), " entries, expected ", n);
  KILN_CHECK(batch.weights.empty() || batch.weights.size() == n, "batch.weights has ", batch.weights.size(),
             " entries, expected ", n);
  for (std::size_t i = 0; i < batch.weights.size(); ++i)
    KILN_CHECK(std::isfinite(batch.weights[i]), "batch.weights[", i, "] is ", batch.weights[i],
               "; per-token loss weights must be finite");
  for (std::size_t i = 1; i < batch.segments.size(); ++i)
    KILN_CHECK(i % batch.seq_len == 0 || batch.segments[i] >= batch.segments[i - 1],
               "batch.segments must not decrease along a row (documents are packed in order); "
               "row ", i / batch.seq_len, " goes from ", batch.segments[i - 1], " to ", batch.segments[i]);
  for (std::size_t i = 0; i < n; ++i) {
    KILN_CHECK(batch.inputs[i] >= 0 && batch.inputs[i] < shape_.vocab && batch.targets[i] >= 0 &&
                   batch.targets[i] < shape_.vocab,
               "token id ", batch.inputs[i] < 0 || batch.inputs[i] >= shape_.vocab ? batch.inputs[i] : batch.targets[i],
               " at batch position ", i, " is outside the model's vocabulary of ", shape_.vocab,
               "; was the data tokenized with another tokenizer?");
    if (!batch.positions.empty())
      KILN_CHECK(batch.positions[i] >= 0 && batch.positions[i] < shape_.context, "position ",
                 batch.positions[i], " is outside model.context=", shape_.context);
  }
}

BlockLayoutView Gpt::layout_view(int l) const {
  // Heads of a tensor-parallel shard are global heads tp_rank * local_heads ...
  BlockLayoutView view = device_layouts_.empty()
                             ? layouts_[layer_layout_[l]].view(shape_.tp_rank * shape_.local_heads())
                             : device_layouts_[layer_layout_[l]].view;
  view.segments = segments_;
  return view;
}

// Checks the batch, sizes the activations for it and stages it on the model's device.
void Gpt::begin_pass(const Batch& batch, bool keep) {
  check_batch(batch);
  ensure_activations(batch.batch, batch.seq_len, keep);
  staged_ = stage_batch(batch);
  segments_ = staged_.segments;
}

namespace {
bool is_bf16(const Tensor& t) { return t.dtype() == DType::bf16; }
bf16* b16(const Tensor& t) { return static_cast<bf16*>(const_cast<void*>(t.raw())); }
}  // namespace

void Gpt::embed(Tensor& out, const std::int32_t* tokens, const std::int32_t* positions, std::int64_t n) {
  const std::int64_t c = shape_.n_embd;
  const Parameter& wte = table_.get(Role::token_embedding);
  const bool learned = table_.has(Role::position_embedding);  // not with rotary embeddings
  const Parameter* wpe = learned ? &table_.get(Role::position_embedding) : nullptr;
  if (is_bf16(out))
    return kernels_->bf16->embedding_forward(b16(out), tokens, positions, w16(wte.value),
                                             wpe ? w16(wpe->value) : nullptr, n, c, 0, shape_.local_vocab());
  // Vocabulary-parallel: each rank embeds the tokens of its shard (one rank adds positions), and
  // the sum over ranks is the embedding.
  kernels_->embedding_forward(out.f32(), tokens, positions, wte.value.f32(),
                              shape_.tp_rank == 0 && wpe ? wpe->value.f32() : nullptr, n, c, shape_.vocab_first(),
                              shape_.local_vocab());
  tp_sum(out.f32(), n * c);
}

void Gpt::embed_backward(const Tensor& dout) {
  const std::int64_t n = block_dims().n, c = shape_.n_embd;
  float* dwte = table_.get(Role::token_embedding).grad.f32();
  float* dwpe = table_.has(Role::position_embedding) ? table_.get(Role::position_embedding).grad.f32() : nullptr;
  if (is_bf16(dout))
    return kernels_->bf16->embedding_backward(dwte, dwpe, b16(dout), staged_.inputs, staged_.positions, n, c,
                                              shape_.vocab_first(), shape_.local_vocab());
  kernels_->embedding_backward(dwte, dwpe, dout.f32(), staged_.inputs, staged_.positions, n, c, shape_.vocab_first(),
                               shape_.local_vocab());
}

void Gpt::product(Tensor& c, const Tensor& a, const Tensor& b, std::int64_t m, std::int64_t n, std::int64_t k,
                  bool trans_a, bool trans_b, float beta) {
  if (is_bf16(a))
    return kernels_->bf16->matmul(c.raw(), is_bf16(c), b16(a), is_bf16(b) ? b16(b) : w16(b), m, n, k, trans_a,
                                  trans_b, beta);
  if (shape_.bf16_matmul)
    kernels_->matmul_bf16(c.f32(), a.f32(), b.f32(), m, n, k, trans_a, trans_b, beta);
  else
    kernels_->matmul(c.f32(), a.f32(), b.f32(), m, n, k, trans_a, trans_b, 1.0f, beta);
}

Gpt::BlockPass Gpt::training_pass() {
  return {acts_, block_dims().n, scratch_, &lnf_, &lnf_mean_, &lnf_rstd_, staged_.positions,
          [this](int layer, LayerActs& a) { attention_core_forward(layer, a); }, shape_.post_norm};
}

void Gpt::run_forward(const Batch& batch, bool keep) {
  begin_pass(batch, keep);
  run_trunk();
  // logits (N, Vp) = hidden (N, C) @ wte^T (C, Vp); a shard's columns with tensor parallelism
  product(logits_, hidden(), lm_head().value, block_dims().n, shape_.local_vocab(), shape_.n_embd, false, true,
          0.0f);
}

// The trunk over the staged batch: embeddings, the blocks, the final norm (pre-LN).
void Gpt::run_trunk() {
  embed(encoded_, staged_.inputs, staged_.positions, block_dims().n);
  blocks_forward(encoded_, training_pass());
}

const Tensor& Gpt::hidden() const { return shape_.post_norm ? acts_.back().ln2 : lnf_; }

const Tensor& Gpt::trunk_forward(const Batch& batch) {
  KILN_CHECK(!shape_.bf16, "the trunk's hidden states are fp32 activations for heads other than the LM head; "
             "this model has model.dtype=bf16");
  begin_pass(batch, true);
  run_trunk();
  return hidden();
}

std::vector<float> Gpt::token_logprobs(const Batch& batch, float temperature) {
  run_forward(batch, /*keep=*/false);  // no activations kept for a backward
  cross_entropy(0.0f, temperature, /*weighted=*/false);
  const Tensor losses = losses_.to(Device::cpu);
  std::vector<float> out(losses.f32(), losses.f32() + losses.numel());
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = batch.mask.empty() || batch.mask[i] ? -out[i] : 0.0f;
  return out;
}

void Gpt::cross_entropy(float loss_scale, float temperature, bool weighted) {
  KILN_CHECK(std::isfinite(temperature) && temperature > 0.0f, "the LM head's temperature must be a finite number "
             "> 0, got ", temperature);
  const KernelTable& k = *kernels_;
  const std::int64_t n = block_dims().n;
  const std::uint8_t* mask = staged_.mask;
  const float* weights = weighted ? staged_.weights : nullptr;
  const float it = 1.0f / temperature;
  if (is_bf16(logits_))
    return k.bf16->softmax_cross_entropy(losses_.f32(), b16(logits_), staged_.targets, mask, n, shape_.vocab,
                                         shape_.padded_vocab, loss_scale, weights, it);
  if (!tp_) {
    k.softmax_cross_entropy(losses_.f32(), logits_.f32(), staged_.targets, mask, n,
                            shape_.vocab, shape_.padded_vocab, loss_scale, weights, it);
    return;
  }
  // Vocabulary-parallel: the max and the sum of exponentials are reduced over the ranks; the
  // full logits are never gathered.
  const std::int64_t cols = shape_.local_vocab(), first = shape_.vocab_first();
  const std::int64_t real = std::clamp<std::int64_t>(shape_.vocab - first, 0, cols);
  k.cross_entropy_local_max(row_max_.f32(), logits_.f32(), n, real, cols, it);
  tp_->all_reduce_max(row_max_.f32(), n);
  k.cross_entropy_local_sums(row_sum_.f32(), target_logit_.f32(), logits_.f32(), row_max_.f32(),
                             staged_.targets, n, real, cols, first, it);
  tp_->all_reduce_sum(row_sum_.f32(), n);
  tp_->all_reduce_sum(target_logit_.f32(), n);
  float* losses = losses_.f32();
  for (std::int64_t i = 0; i < n; ++i) {
    const float w = weights ? weights[i] : 1.0f;
    losses[i] = (mask && !mask[i]) || w == 0.0f
                    ? 0.0f
                    : (std::log(row_sum_.f32()[i]) + row_max_.f32()[i] - target_logit_.f32()[i]) * w;
  }
  if (loss_scale != 0.0f)
    k.cross_entropy_local_grad(logits_.f32(), row_max_.f32(), row_sum_.f32(), staged_.targets,
                               mask, n, real, cols, first, loss_scale, weights, it);
}

double Gpt::forward(const Batch& batch) {
  run_forward(batch);
  cross_entropy(0.0f, 1.0f);
  return loss_sum(block_dims().n);
}

void Gpt::queue_forward_backward(const Batch& batch, float loss_scale, float temperature) {
  KILN_CHECK(loss_scale > 0.0f, "forward_backward needs a positive loss scale, got ", loss_scale);
  run_forward(batch);
  cross_entropy(loss_scale, temperature);  // fused: losses, and dlogits written over the logits
  run_backward();
  queue_losses(block_dims().n);  // backward leaves the losses alone
}

void Gpt::queue_losses(std::int64_t n) {
  if (device_ == Device::cpu) {
    loss_sums_.push_back(loss_sum(n));
    return;
  }
  const auto bytes = static_cast<std::size_t>(n) * sizeof(float);
  if ((static_cast<std::size_t>(loss_queued_) + static_cast<std::size_t>(n)) * sizeof(float) > loss_host_.size()) {
    drain_losses();  // waits: only while the buffer grows to the step's size
    loss_host_.reserve(std::max(bytes, 2 * loss_host_.size()));
  }
  device::copy_to_host_async(loss_host_.data() + loss_queued_ * sizeof(float), losses_.raw(), bytes);
  loss_counts_.push_back(n);
  loss_queued_ += n;
}

void Gpt::drain_losses() {
  if (loss_counts_.empty()) return;
  device::synchronize();
  const auto* losses = reinterpret_cast<const float*>(loss_host_.data());
  for (const std::int64_t n : loss_counts_) {
    double sum = 0.0;
    for (std::int64_t i = 0; i < n; ++i) sum += losses[i];
    loss_sums_.push_back(sum);
    losses += n;
  }
  loss_counts_.clear();
  loss_queued_ = 0;
}

double Gpt::take_loss_sum() {
  drain_losses();
  double total = 0.0;
  for (const double s : loss_sums_) total += s;
  loss_sums_.clear();
  return total;
}

void Gpt::run_backward() {
  const std::int64_t n = block_dims().n, c = shape_.n_embd, vp = shape_.local_vocab();
  Parameter& head = lm_head();
  // logits = hidden @ W^T: dhidden (N, C) = dlogits @ W, dW (Vp, C) += dlogits^T @ hidden.
  Tensor& dx = shape_.post_norm ? dres_ : dtmp_;
  product(dx, logits_, head.value, n, c, vp, false, false, 0.0f);
  if (tp_) tp_sum(dx.f32(), n * c);  // vocabulary shards each give part of dx
  product(head.grad, logits_, hidden(), vp, c, n, true, false, 1.0f);
  backward_trunk(dx);
}

void Gpt::trunk_backward(const Tensor& dhidden) {
  KILN_CHECK(!shape_.bf16, "the trunk's backward runs fp32 activations for heads other than the LM head; this "
             "model has model.dtype=bf16");
  backward_trunk(dhidden);
}

void Gpt::backward_trunk(const Tensor& dhidden) {
  const BlockPass pass = training_pass();
  const int last = shape_.n_layer - 1;
  if (!shape_.post_norm) {
    dres_.zero_();
    norm_backward(dres_, dhidden, pass.output(last), lnf_mean_, lnf_rstd_, final_norm());
    ready(table_.final_norm());
  } else if (dhidden.raw() != dres_.raw()) {
    dres_.copy_from(dhidden);
  }
  for (int l = last; l >= 0; --l) {
    const Tensor& in = l == 0 ? encoded_ : pass.output(l - 1);
    // With recomputation the shared buffers hold the last block's activations: run this block's
    // forward again.
    if (shape_.recompute && l < last) block_forward(l, in, pass, /*recompute=*/true);
    block_backward(l, in, dres_);
    ready(table_.block(l));
  }
  embed_backward(dres_);
  ready(table_.embeddings());  // wte (also the head when tied) and wpe
  ready(table_.heads());       // an untied LM head's and the scalar head's came before the trunk's, or are zero
}

}  // namespace kiln
