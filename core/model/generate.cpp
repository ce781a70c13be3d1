// KV-cached decoding and sampling.
#include "core/model/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/rng.h"

namespace kiln {

Generator::Generator(const Gpt& model)
    : model_(model), kernels_(&kernels_for(model.parameter_buffer().device())) {
  KILN_CHECK(model.device() == Device::cpu, "generation runs on the cpu; load the model there "
             "(kiln sample does)");
  KILN_CHECK(model.shape().tp_size == 1, "generation runs on one process; load the checkpoint "
             "into an unsharded model (kiln sample does)");
  const GptShape& s = model.shape();
  const std::size_t c = s.n_embd;
  k_cache_.resize(static_cast<std::size_t>(s.n_layer) * s.context * c);
  v_cache_.resize(k_cache_.size());
  for (auto* v : {&x_, &ln_, &att_, &tmp_}) v->resize(c);
  qkv_.resize(3 * c);
  fc_.resize(s.ffn());
  fc_gelu_.resize(s.ffn());
  mean_.resize(1);
  rstd_.resize(1);
  logits_.resize(s.padded_vocab);
  for (const AttentionPattern& p : s.attention)
    layouts_.push_back(p.is_dense() ? nullptr : std::make_unique<BlockLayout>(build_layout(p, s.context, s.n_head)));
  layouts_.resize(s.n_layer);
  key_mask_.resize(static_cast<std::size_t>(s.n_head) * s.context);
}

const float* Generator::step(std::int32_t token) {
  const GptShape& s = model_.shape();
  const KernelTable& k = *kernels_;
  const std::int64_t c = s.n_embd;
  KILN_CHECK(length_ < s.context, "the KV cache is full (", s.context, " positions)");
  KILN_CHECK(token >= 0 && token < s.vocab, "token id ", token, " is outside the vocabulary of ", s.vocab);
  auto w = [&](const std::string& name) { return model_.parameter(name).value.f32(); };
  const std::int32_t pos = length_;
  k.embedding_forward(x_.data(), &token, &pos, w("transformer.wte.weight"), w("transformer.wpe.weight"), 1, c, 0, s.padded_vocab);
  for (int l = 0; l < s.n_layer; ++l) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    float* kc = k_cache_.data() + static_cast<std::size_t>(l) * s.context * c;
    float* vc = v_cache_.data() + static_cast<std::size_t>(l) * s.context * c;
    // Attention input: LN1(x) for pre-LN, x itself for post-LN.
    const float* attn_in = x_.data();
    if (!s.post_norm) {
      k.layernorm_forward(ln_.data(), mean_.data(), rstd_.data(), x_.data(), w(p + "ln_1.weight"), w(p + "ln_1.bias"), 1, c);
      attn_in = ln_.data();
    }
    k.linear_forward(qkv_.data(), attn_in, w(p + "attn.c_attn.weight"), w(p + "attn.c_attn.bias"), 1, c, 3 * c, false);
    std::copy(qkv_.begin() + c, qkv_.begin() + 2 * c, kc + pos * c);
    std::copy(qkv_.begin() + 2 * c, qkv_.begin() + 3 * c, vc + pos * c);
    const std::uint8_t* mask = nullptr;
    if (const BlockLayout* layout = layouts_[l].get()) {
      const int n = pos + 1, qb = pos / layout->block;
      for (int h = 0; h < s.n_head; ++h)
        for (int j = 0; j < n; ++j) key_mask_[static_cast<std::size_t>(h) * n + j] = layout->allows(h, qb, j / layout->block);
      mask = key_mask_.data();
    }
    k.attention_decode(att_.data(), qkv_.data(), kc, vc, pos + 1, c, s.n_head, mask);
    k.linear_forward(tmp_.data(), att_.data(), w(p + "attn.c_proj.weight"), w(p + "attn.c_proj.bias"), 1, c, c, false);
    k.accumulate(x_.data(), tmp_.data(), c);
    const float* mlp_in = x_.data();
    if (s.post_norm) {
      k.layernorm_forward(x_.data(), mean_.data(), rstd_.data(), x_.data(), w(p + "ln_1.weight"), w(p + "ln_1.bias"), 1, c);
    } else {
      k.layernorm_forward(ln_.data(), mean_.data(), rstd_.data(), x_.data(), w(p + "ln_2.weight"), w(p + "ln_2.bias"), 1, c);
      mlp_in = ln_.data();
    }
    const std::int64_t f = s.ffn();
    k.linear_forward(fc_.data(), mlp_in, w(p + "mlp.c_fc.weight"), w(p + "mlp.c_fc.bias"), 1, c, f, false);
    k.gelu_forward(fc_gelu_.data(), fc_.data(), f);
    k.linear_forward(tmp_.data(), fc_gelu_.data(), w(p + "mlp.c_proj.weight"), w(p + "mlp.c_proj.bias"), 1, f, c, false);
    k.accumulate(x_.data(), tmp_.data(), c);
    if (s.post_norm)
      k.layernorm_forward(x_.data(), mean_.data(), rstd_.data(), x_.data(), w(p + "ln_2.weight"), w(p + "ln_2.bias"), 1, c);
  }
  const float* final_x = x_.data();
  if (!s.post_norm) {
    k.layernorm_forward(ln_.data(), mean_.data(), rstd_.data(), x_.data(), w("transformer.ln_f.weight"), w("transformer.ln_f.bias"), 1, c);
    final_x = ln_.data();
  }
  k.matmul(logits_.data(), final_x, w("transformer.wte.weight"), 1, s.padded_vocab, c, false, true, 1.0f, 0.0f);
  ++length_;
  return logits_.data();
}

std::int32_t Generator::choose(const float* logits, const SampleOptions& o, std::uint64_t draw) const {
  const int vocab = model_.shape().vocab;
  if (o.temperature <= 0.0f) return static_cast<std::int32_t>(std::max_element(logits, logits + vocab) - logits);
  std::vector<int> ids(vocab);
  std::iota(ids.begin(), ids.end(), 0);
  std::sort(ids.begin(), ids.end(), [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  int keep = o.top_k > 0 ? std::min(o.top_k, vocab) : vocab;
  std::vector<double> probs(keep);
  double total = 0.0;
  for (int i = 0; i < keep; ++i) total += probs[i] = std::exp((logits[ids[i]] - logits[ids[0]]) / o.temperature);
  if (o.top_p < 1.0f) {  // smallest prefix whose probability reaches top_p
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
  const double u = Rng(o.seed, 0x73616d706c65ull).uniform(draw) * total;  // stream "sample"
  double cumulative = 0.0;
  for (int i = 0; i < keep; ++i) {
    cumulative += probs[i];
    if (u < cumulative) return ids[i];
  }
  return ids[keep - 1];
}

std::vector<std::int32_t> Generator::generate(const std::vector<std::int32_t>& prompt,
                                              const SampleOptions& options, std::int32_t eot,
                                              const std::function<void(std::int32_t)>& on_token) {
  KILN_CHECK(!prompt.empty(), "the prompt is empty; give at least one token");
  KILN_CHECK(options.max_tokens >= 0, "--max-tokens ", options.max_tokens, " must be >= 0");
  KILN_CHECK(std::isfinite(options.temperature) && options.temperature >= 0.0f, "--temperature ",
             options.temperature, " must be a finite number >= 0 (0 picks the likeliest token)");
  KILN_CHECK(options.top_k >= 0, "--top-k ", options.top_k, " must be >= 0 (0 keeps every token)");
  KILN_CHECK(options.top_p > 0.0f && options.top_p <= 1.0f, "--top-p ", options.top_p,
             " must be in (0, 1] (1 keeps every token)");
  const int context = model_.shape().context;
  std::vector<std::int32_t> all = prompt;
  if (static_cast<int>(all.size()) > context) all.erase(all.begin(), all.end() - context);
  reset();
  const float* logits = nullptr;
  for (auto t : all) logits = step(t);
  std::vector<std::int32_t> out;
  for (int i = 0; i < options.max_tokens; ++i) {
    const std::int32_t next = choose(logits, options, static_cast<std::uint64_t>(i));
    if (options.stop_at_eot && next == eot) break;
    out.push_back(next);
    all.push_back(next);
    if (on_token) on_token(next);
    if (i + 1 == options.max_tokens) break;
    if (length_ == context) {  // slide: refill the cache with (up to) the newest half
      reset();
      const int keep = std::min(context / 2, context - 1);  // tokens before `next`
      for (auto it = all.end() - 1 - keep; it != all.end() - 1; ++it) step(*it);
    }
    logits = step(next);
  }
  return out;
}

}  // namespace kiln
