// Batched KV-cached decoding and sampling (decode.h).
#include "core/model/decode.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <numeric>

#include "core/rng.h"
#include "kernels/device.h"

namespace kiln {

namespace {

// The next token from one row of logits: the likeliest (temperature 0), or a draw from the
// softmax at `temperature` over the top_k likeliest, cut to the smallest prefix reaching top_p.
// Draw number `draw` of the sequence's seed decides it.
std::int32_t choose(const float* logits, int vocab, const SampleOptions& o, std::uint64_t seed, std::uint64_t draw) {
  if (o.temperature <= 0.0f) return static_cast<std::int32_t>(std::max_element(logits, logits + vocab) - logits);
  std::vector<int> ids(vocab);
  std::iota(ids.begin(), ids.end(), 0);
  std::sort(ids.begin(), ids.end(), [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  int keep = o.top_k > 0 ? std::min(o.top_k, vocab) : vocab;
  std::vector<double> probs(keep);
  double total = 0.0;
  for (int i = 0; i < keep; ++i) total += probs[i] = std::exp((logits[ids[i]] - logits[ids[0]]) / o.temperature);
  if (o.top_p < 1.0f) {
    double cumulative = 0.0;
    for (int i = 0; i < keep; ++i) {
      cumulative += probs[i] / total;
      if (cumulative >= o.top_p) {
        keep = i + 1;
        break;
      }
    }
    total = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  }
  const double u = Rng(seed, 0x73616d706c65ull).uniform(draw) * total;  // stream "sample"
  double cumulative = 0.0;
  for (int i = 0; i < keep; ++i) {
    cumulative += probs[i];
    if (u < cumulative) return ids[i];
  }
  return ids[keep - 1];
}

}  // namespace

Decoder::Decoder(Gpt& model) : model_(model), kernels_(&kernels_for(model.device())) {
  const GptShape& s = model.shape();
  KILN_CHECK(s.tp_size == 1, "decoding runs on one process; load the checkpoint into an unsharded model "
             "(kiln sample does)");
  for (const AttentionPattern& p : s.attention)
    layouts_.push_back(p.is_dense() ? nullptr : std::make_unique<BlockLayout>(build_layout(p, s.context, s.n_head)));
  layouts_.resize(s.n_layer);
}

Decoder::~Decoder() {
  if (model_.device() == Device::cpu) return;
  try {
    device::synchronize();  // queued copies may still read the host buffers
  } catch (...) {
  }
}

void Decoder::allocate(int batch) {
  if (batch <= capacity_) return;
  const GptShape& s = model_.shape();
  const Device d = model_.device();
  const std::int64_t b = batch, c = s.n_embd, f = s.local_ffn();
  // Activations in the model's dtype; statistics, the KV caches and the logits in fp32 (bf16
  // keys and values are exact in fp32; the attention core reads fp32).
  const DType act = s.bf16 ? DType::bf16 : DType::f32;
  // The caches hold the key/value heads only: grouped-query attention's saving.
  const std::int64_t ckv = static_cast<std::int64_t>(s.kv_heads()) * s.head_size();
  k_cache_ = Tensor::empty({s.n_layer, b, s.context, ckv}, DType::f32, d);
  v_cache_ = Tensor::empty({s.n_layer, b, s.context, ckv}, DType::f32, d);
  acts_.assign(1, Gpt::LayerActs{});
  Gpt::LayerActs& a = acts_[0];
  for (Tensor* t : {&a.ln1, &a.atty, &a.res2, &a.ln2, &a.res3, &x_, &scratch_, &lnf_}) *t = Tensor::empty({b, c}, act, d);
  for (Tensor* t : {&a.ln1_mean, &a.ln1_rstd, &a.ln2_mean, &a.ln2_rstd, &a.lse, &lnf_mean_, &lnf_rstd_})
    *t = Tensor::empty({b}, DType::f32, d);
  a.qkv = Tensor::empty({b, s.qkv_width()}, act, d);
  a.fch = Tensor::empty({b, s.swiglu ? 2 * f : f}, act, d);
  a.fch_gelu = Tensor::empty({b, f}, act, d);
  if (s.bf16) {
    qkv32_ = Tensor::empty({b, s.qkv_width()}, DType::f32, d);
    atty32_ = Tensor::empty({b, c}, DType::f32, d);
  }
  logits_ = Tensor::empty({b, s.local_vocab()}, DType::f32, d);
  ids_ = Tensor::empty({2 * b}, DType::f32, d);  // int32 token ids, then positions
  mask_ = Tensor::empty({(static_cast<std::int64_t>(s.n_head) * s.context + 3) / 4}, DType::f32, d);  // uint8 key masks
  capacity_ = batch;
}

void Decoder::reset(int batch) {
  KILN_CHECK(batch >= 1, "decoding needs at least one sequence, got ", batch);
  allocate(batch);
  batch_ = batch;
  lengths_.assign(batch, 0);
}

void Decoder::attend(int layer, Gpt::LayerActs& a) {
  const GptShape& s = model_.shape();
  const bool on_device = model_.device() != Device::cpu;
  const std::int64_t c = s.n_embd, n = static_cast<std::int64_t>(rows_sequence_.size());
  const std::int64_t ckv = static_cast<std::int64_t>(s.kv_heads()) * s.head_size(), width = s.qkv_width();
  // bf16 activations: q|k|v widened to fp32 for the cache and the core, the output rounded back.
  const bool widen = s.bf16;
  if (widen) kernels_->bf16->widen(qkv32_.f32(), static_cast<const bf16*>(a.qkv.raw()), n * width);
  const Tensor& qkv_rows = widen ? qkv32_ : a.qkv;
  float* out_rows = widen ? atty32_.f32() : a.atty.f32();
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t pos = rows_position_[i];
    const std::int64_t cache = (static_cast<std::int64_t>(layer) * capacity_ + rows_sequence_[i]) * s.context * ckv;
    float* keys = k_cache_.f32() + cache;
    float* values = v_cache_.f32() + cache;
    const std::int64_t row = i * width;  // [q | k | v]
    k_cache_.view(cache + pos * ckv, {ckv}).copy_from(qkv_rows.view(row + c, {ckv}));
    v_cache_.view(cache + pos * ckv, {ckv}).copy_from(qkv_rows.view(row + c + ckv, {ckv}));
    const float* qkv = qkv_rows.f32() + row;
    const std::uint8_t* mask = nullptr;
    if (const BlockLayout* layout = layouts_[layer].get()) {
      const std::int64_t keys_n = pos + 1, query_block = pos / layout->block;
      host_mask_.resize(static_cast<std::size_t>(s.n_head) * keys_n);
      for (int h = 0; h < s.n_head; ++h)
        for (std::int64_t j = 0; j < keys_n; ++j)
          host_mask_[h * keys_n + j] =
              layout->allows(h, static_cast<int>(query_block), static_cast<int>(j / layout->block));
      mask = host_mask_.data();
      if (on_device) {
        device::copy_to_device(mask_.raw(), host_mask_.data(), host_mask_.size());
        mask = static_cast<const std::uint8_t*>(mask_.raw());
      }
    }
    kernels_->attention_decode(out_rows + i * c, qkv, keys, values, pos + 1, c, s.n_head, mask, s.kv_heads());
  }
  if (widen) kernels_->bf16->convert(static_cast<bf16*>(a.atty.raw()), atty32_.f32(), n * c);
}

const float* Decoder::step(const std::vector<int>& sequences, const std::vector<std::int32_t>& tokens) {
  const GptShape& s = model_.shape();
  const auto n = static_cast<std::int64_t>(sequences.size());
  const std::int64_t c = s.n_embd, vp = s.local_vocab();
  KILN_CHECK(n >= 1 && n <= batch_ && tokens.size() == sequences.size(), "a decoding step feeds one token to each of 1..",
             batch_, " sequences; got ", tokens.size(), " token(s) for ", sequences.size(), " sequence(s)");
  std::vector<std::int32_t> ids(2 * n);
  rows_sequence_ = sequences;
  rows_position_.resize(n);
  for (std::int64_t i = 0; i < n; ++i) {
    const int seq = sequences[i];
    KILN_CHECK(seq >= 0 && seq < batch_, "sequence ", seq, " is not one of the ", batch_, " being decoded");
    KILN_CHECK(lengths_[seq] < s.context, "sequence ", seq, "'s KV cache is full (", s.context, " positions)");
    KILN_CHECK(tokens[i] >= 0 && tokens[i] < s.vocab, "token id ", tokens[i], " is outside the vocabulary of ", s.vocab);
    ids[i] = tokens[i];
    ids[n + i] = rows_position_[i] = lengths_[seq];
  }
  const bool on_device = model_.device() != Device::cpu;
  const std::int32_t* token_ids = ids.data();
  if (on_device) {
    device::copy_to_device(ids_.raw(), ids.data(), ids.size() * sizeof(std::int32_t));
    token_ids = static_cast<const std::int32_t*>(ids_.raw());
  }
  // The trunk's blocks, as in training, over one row per sequence; then the LM head.
  model_.embed(x_, token_ids, token_ids + n, n);
  const Gpt::BlockPass pass{acts_, n, scratch_, &lnf_, &lnf_mean_, &lnf_rstd_, token_ids + n,
                            [this](int layer, Gpt::LayerActs& a) { attend(layer, a); }, s.post_norm};
  model_.blocks_forward(x_, pass);
  const Tensor& hidden = s.post_norm ? pass.output(s.n_layer - 1) : lnf_;
  model_.product(logits_, hidden, model_.lm_head().value, n, vp, c, false, true, 0.0f);
  for (const int seq : sequences) ++lengths_[seq];
  if (!on_device) return logits_.f32();
  host_logits_.resize(static_cast<std::size_t>(n * vp));
  device::copy_to_host(host_logits_.data(), logits_.f32(), host_logits_.size() * sizeof(float));
  return host_logits_.data();
}

std::vector<std::vector<std::int32_t>> Decoder::generate(const std::vector<std::vector<std::int32_t>>& prompts,
                                                         const SampleOptions& options, std::int32_t eot,
                                                         const std::vector<std::uint64_t>& seeds,
                                                         const std::function<void(int, std::int32_t)>& on_token,
                                                         const std::function<void(int, std::int32_t, const float*)>& on_choice) {
  KILN_CHECK(!prompts.empty(), "nothing to decode: no prompt given");
  KILN_CHECK(seeds.empty() || seeds.size() == prompts.size(), seeds.size(), " seeds for ", prompts.size(), " prompts");
  KILN_CHECK(options.max_tokens >= 0, "--max-tokens ", options.max_tokens, " must be >= 0");
  KILN_CHECK(std::isfinite(options.temperature) && options.temperature >= 0.0f, "--temperature ",
             options.temperature, " must be a finite number >= 0 (0 picks the likeliest token)");
  KILN_CHECK(options.top_k >= 0, "--top-k ", options.top_k, " must be >= 0 (0 keeps every token)");
  KILN_CHECK(options.top_p > 0.0f && options.top_p <= 1.0f, "--top-p ", options.top_p,
             " must be in (0, 1] (1 keeps every token)");
  const int context = model_.shape().context, vocab = model_.shape().vocab, batch = static_cast<int>(prompts.size());
  const auto vp = static_cast<std::int64_t>(model_.shape().local_vocab());
  struct Sequence {
    std::vector<std::int32_t> all;       // prompt and tokens so far
    std::deque<std::int32_t> pending;    // still to be fed; the logits count after the last
    std::vector<std::int32_t> out;
    bool done = false;
  };
  std::vector<Sequence> seqs(batch);
  for (int i = 0; i < batch; ++i) {
    KILN_CHECK(!prompts[i].empty(), "prompt ", i, " is empty; give at least one token");
    const auto& p = prompts[i];
    seqs[i].all.assign(p.size() > static_cast<std::size_t>(context) ? p.end() - context : p.begin(), p.end());
    seqs[i].pending.assign(seqs[i].all.begin(), seqs[i].all.end());
    seqs[i].done = options.max_tokens == 0;
  }
  reset(batch);
  std::vector<int> rows;
  std::vector<std::int32_t> tokens;
  while (true) {
    rows.clear();
    tokens.clear();
    for (int i = 0; i < batch; ++i)
      if (!seqs[i].done) {
        rows.push_back(i);
        tokens.push_back(seqs[i].pending.front());
        seqs[i].pending.pop_front();
      }
    if (rows.empty()) break;
    const float* logits = step(rows, tokens);
    for (std::size_t r = 0; r < rows.size(); ++r) {
      Sequence& q = seqs[rows[r]];
      if (!q.pending.empty()) continue;  // still reading its prompt
      const std::uint64_t seed = seeds.empty() ? options.seed : seeds[rows[r]];
      const std::int32_t next = choose(logits + static_cast<std::int64_t>(r) * vp, vocab, options, seed, q.out.size());
      if (on_choice) on_choice(rows[r], next, logits + static_cast<std::int64_t>(r) * vp);
      if ((options.stop_at_eot && next == eot) ||
          std::find(options.stop_tokens.begin(), options.stop_tokens.end(), next) != options.stop_tokens.end()) {
        q.done = true;
        continue;
      }
      q.out.push_back(next);
      q.all.push_back(next);
      if (on_token) on_token(rows[r], next);
      if (static_cast<int>(q.out.size()) == options.max_tokens) {
        q.done = true;
        continue;
      }
      if (lengths_[rows[r]] == context) {
        // The cache is full: restart from (up to) the newest half, then the new token.
        lengths_[rows[r]] = 0;
        const int keep = std::min(context / 2, context - 1);
        q.pending.assign(q.all.end() - 1 - keep, q.all.end());
      } else {
        q.pending.push_back(next);
      }
    }
  }
  std::vector<std::vector<std::int32_t>> out;
  for (auto& q : seqs) out.push_back(std::move(q.out));
  return out;
}

}  // namespace kiln
