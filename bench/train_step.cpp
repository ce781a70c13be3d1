// Training-step benchmark, kiln's half of bench/train_vs_pytorch.sh. Builds a GPT, initialises
// it (seed 1234), saves the initial weights and the exact batches it will train on, trains N
// AdamW steps timing each one, and writes the per-step losses and times. train_vs_pytorch.py
// then trains the PyTorch reference from the same files and compares speed and loss curves.
//
//   train_step --n_layer L --n_head H --n_embd C --vocab V --context CTX --seq T --batch B
//              --steps N --out DIR [--arch gpt2|llama] [--n_kv_head K] [--bf16] [--threads 2]
//              [--lr 3e-4] [--phases] [--profile]
//
// --arch takes model.arch's preset (core/config.cpp set_arch): llama is RMSNorm, RoPE, a SwiGLU
// MLP of LLaMA's width rule, no biases and an untied head; --n_kv_head is model.n_kv_head
// (grouped-query attention). The shape is built by GptShape::from_config as `kiln train` does.
//
// Writes DIR/init.safetensors (kiln::save_model: HF names, wte without padding),
// DIR/batches.bin (int32, N x B x (T+1): inputs are [:-1] of each row, targets [1:]) and
// DIR/kiln.json (losses, step seconds, tokens/s = median over steps 2..N, MFU).
// --phases adds a timing of forward, backward and optimizer separately (after training);
// --profile a per-kernel breakdown of one step: every kernel the model calls, timed alone at the
// model's shapes (median of 3) and summed per kind (kiln's library is not instrumented).
//
// Data with structure to learn: a fixed random subset of 512 token ids (every id when the
// vocabulary is smaller); each row repeats a random pattern of 4..32 tokens drawn from that
// subset. The loss falls from ln(V) towards ln(512) as the unigram statistics are
// learnt, and further once the model copies patterns. Everything comes from kiln::Rng, so the
// data depends only on the arguments.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/checkpoint/model_io.h"
#include "core/config.h"
#include "core/kernel_table.h"
#include "core/model/attention_layout.h"
#include "core/model/gpt.h"
#include "core/optim/adamw.h"
#include "core/rng.h"
#include "kernels/peak.h"

namespace {

constexpr std::uint64_t kInitSeed = 1234;
constexpr std::uint64_t kDataSeed = 4321;

struct Options {
  kiln::GptShape shape;
  std::string arch = "gpt2";
  int seq = 256, batch = 8, steps = 10, threads = 2;
  float lr = 3e-4f;
  bool phases = false;
  bool profile = false;
  std::string out;
};

[[noreturn]] void usage(const std::string& problem) {
  throw std::runtime_error(problem +
                           "\nusage: train_step --n_layer L --n_head H --n_embd C --vocab V --context CTX"
                           " --seq T --batch B --steps N --out DIR [--arch gpt2|llama] [--n_kv_head K]"
                           " [--bf16] [--threads 2] [--lr 3e-4] [--phases] [--profile]");
}

Options parse_args(int argc, char** argv) {
  Options o;
  o.shape.n_layer = o.shape.n_head = o.shape.n_embd = o.shape.context = o.shape.vocab = 0;
  std::map<std::string, std::string> values;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--bf16") {
      o.shape.bf16_matmul = true;
    } else if (arg == "--phases") {
      o.phases = true;
    } else if (arg == "--profile") {
      o.profile = true;
    } else if (arg.rfind("--", 0) == 0 && i + 1 < argc) {
      values[arg.substr(2)] = argv[++i];
    } else {
      usage("unexpected argument '" + arg + "'");
    }
  }
  kiln::ModelConfig m;
  auto take_int = [&](const char* key, int& dst) {
    auto it = values.find(key);
    if (it == values.end()) return;
    dst = std::stoi(it->second);
    values.erase(it);
  };
  m.n_layer = m.n_head = m.n_embd = m.context = 0;
  take_int("n_layer", m.n_layer);
  take_int("n_head", m.n_head);
  take_int("n_embd", m.n_embd);
  take_int("vocab", m.vocab_size);
  take_int("context", m.context);
  take_int("n_kv_head", m.n_kv_head);
  take_int("seq", o.seq);
  take_int("batch", o.batch);
  take_int("steps", o.steps);
  take_int("threads", o.threads);
  if (auto it = values.find("lr"); it != values.end()) {
    o.lr = std::stof(it->second);
    values.erase(it);
  }
  if (auto it = values.find("out"); it != values.end()) {
    o.out = it->second;
    values.erase(it);
  }
  if (auto it = values.find("arch"); it != values.end()) {
    o.arch = it->second;
    values.erase(it);
  }
  if (!values.empty()) usage("unknown option --" + values.begin()->first);
  if (m.n_layer <= 0 || m.n_head <= 0 || m.n_embd <= 0 || m.vocab_size <= 0 || m.context <= 0 || o.out.empty())
    usage("--n_layer, --n_head, --n_embd, --vocab, --context and --out are required");
  if (o.seq > m.context || o.steps < 2 || o.batch < 1) usage("need seq <= context, steps >= 2, batch >= 1");
  if (o.arch != "gpt2" && o.arch != "llama") usage("--arch is gpt2 or llama, not '" + o.arch + "'");
  if (o.profile && o.arch != "gpt2") usage("--profile times GPT-2's kernels; use it with --arch gpt2");
  kiln::set_arch(m, o.arch, {});
  m.vocab_multiple = 64;
  m.attention_block = 64;
  const bool bf16 = o.shape.bf16_matmul;
  o.shape = kiln::GptShape::from_config(m, m.vocab_size);
  o.shape.bf16_matmul = bf16;
  return o;
}

// N x B x (T+1) tokens: each row repeats a random pattern over a fixed random token subset.
std::vector<std::int32_t> make_batches(const Options& o) {
  const int vocab = o.shape.vocab;
  const int subset_size = std::min(vocab, 512);
  const kiln::Rng subset_rng(kDataSeed, 0), row_rng(kDataSeed, 1);
  std::vector<std::int32_t> subset(subset_size);
  for (int i = 0; i < subset_size; ++i)
    subset[i] = subset_size == vocab ? i : static_cast<std::int32_t>(subset_rng.u64(i) % vocab);
  const std::int64_t row_len = o.seq + 1, rows = static_cast<std::int64_t>(o.steps) * o.batch;
  std::vector<std::int32_t> tokens(rows * row_len);
  std::vector<std::int32_t> pattern;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::uint64_t base = static_cast<std::uint64_t>(r) * 64;
    const int period = 4 + static_cast<int>(row_rng.u64(base) % 29);
    pattern.resize(period);
    for (int j = 0; j < period; ++j) pattern[j] = subset[row_rng.u64(base + 1 + j) % subset_size];
    for (std::int64_t t = 0; t < row_len; ++t) tokens[r * row_len + t] = pattern[t % period];
  }
  return tokens;
}

kiln::Batch batch_at(const Options& o, const std::vector<std::int32_t>& tokens, int step) {
  kiln::Batch b;
  b.batch = o.batch;
  b.seq_len = o.seq;
  const std::int64_t row_len = o.seq + 1;
  for (int r = 0; r < o.batch; ++r) {
    const std::int32_t* row = tokens.data() + (static_cast<std::int64_t>(step) * o.batch + r) * row_len;
    b.inputs.insert(b.inputs.end(), row, row + o.seq);
    b.targets.insert(b.targets.end(), row + 1, row + 1 + o.seq);
  }
  return b;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median seconds of forward only, forward+backward, and the optimizer step (3 repeats each).
nlohmann::json time_phases(kiln::Gpt& model, kiln::AdamW& optimizer, const kiln::Batch& batch, float lr) {
  std::vector<double> fwd, fwd_bwd, opt;
  const float scale = 1.0f / static_cast<float>(batch.loss_tokens());
  for (int rep = 0; rep < 3; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    model.forward(batch);
    fwd.push_back(seconds_since(t0));
    model.zero_grad();
    t0 = std::chrono::steady_clock::now();
    model.forward_backward(batch, scale);
    fwd_bwd.push_back(seconds_since(t0));
    t0 = std::chrono::steady_clock::now();
    optimizer.step(lr);
    opt.push_back(seconds_since(t0));
  }
  const double f = median(fwd), fb = median(fwd_bwd), o = median(opt);
  return {{"forward_s", f}, {"backward_s", fb - f}, {"optimizer_s", o}, {"forward_backward_s", fb}};
}

// Seconds of fn(), median of 3 after one warm-up call.
template <typename Fn>
double time_call(Fn&& fn) {
  fn();
  std::vector<double> s;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    s.push_back(seconds_since(t0));
  }
  return median(s);
}

// Every kernel one training step calls, timed alone at the model's shapes on buffers of small
// random values, summed per kind: {kind: {"seconds": s, "flops": matmul FLOPs or 0}}.
nlohmann::json profile_kernels(const Options& o, const kiln::Gpt& model) {
  const kiln::KernelTable& k = kiln::kernels_for(kiln::Device::cpu);
  const std::int64_t b = o.batch, t = o.seq, c = o.shape.n_embd, nh = o.shape.n_head;
  const std::int64_t n = b * t, vp = o.shape.padded_vocab, v = o.shape.vocab;
  const double layers = o.shape.n_layer;
  const bool bf16 = o.shape.bf16_matmul;
  const kiln::Rng rng(99, 0);
  auto buffer = [&](std::int64_t size) {
    std::vector<float> values(size);
    for (std::int64_t i = 0; i < size; ++i) values[i] = 0.1f * (rng.uniform(i) - 0.5f);
    return values;
  };
  // Inputs and outputs of up to (N, 4C); weights up to (4C, C); attention (N, 3C) and (N, C).
  std::vector<float> x = buffer(n * 4 * c), y = buffer(n * 4 * c), dy = buffer(n * 4 * c);
  std::vector<float> w = buffer(4 * c * c), dw = buffer(4 * c * c);
  std::vector<float> bias = buffer(4 * c), dbias = buffer(4 * c), gamma = buffer(c), beta = buffer(c);
  std::vector<float> qkv = buffer(n * 3 * c), dqkv = buffer(n * 3 * c), att = buffer(n * c);
  std::vector<float> lse(b * nh * t), mean(n), rstd(n), losses(n);
  std::vector<float> logits = buffer(n * vp), dwte(vp * c), dwpe(o.shape.context * c);
  std::vector<std::int32_t> tokens(n), positions(n);
  for (std::int64_t i = 0; i < n; ++i) {
    tokens[i] = static_cast<std::int32_t>(rng.u64(i) % v);
    positions[i] = static_cast<std::int32_t>(i % t);
  }
  const float* wte = model.parameter("transformer.wte.weight").value.f32();
  const kiln::BlockLayout layout = kiln::dense_causal_layout(t, o.shape.attention_block);
  const kiln::BlockLayoutView lv = layout.view();

  nlohmann::json kinds;
  auto add = [&](const std::string& kind, double seconds, double flops) {
    if (!kinds.contains(kind)) kinds[kind] = {{"seconds", 0.0}, {"flops", 0.0}};
    kinds[kind]["seconds"] = kinds[kind]["seconds"].get<double>() + seconds;
    kinds[kind]["flops"] = kinds[kind]["flops"].get<double>() + flops;
  };
  // The four linear layers of a block, (in, out), forward and backward, once per layer.
  for (auto [in, out] : {std::pair{c, 3 * c}, {c, c}, {c, 4 * c}, {4 * c, c}}) {
    const double fwd = time_call([&] {
      k.linear_forward(y.data(), x.data(), w.data(), bias.data(), n, in, out, bf16);
    });
    const double bwd = time_call([&] {
      k.linear_backward(dy.data(), dw.data(), dbias.data(), y.data(), x.data(), w.data(), n, in, out, bf16);
    });
    add("linear forward", layers * fwd, layers * 2.0 * n * in * out);
    add("linear backward", layers * bwd, layers * 4.0 * n * in * out);
  }
  // The tied head: logits = x wte^T; dx = dlogits wte; dwte += dlogits^T x.
  auto head = [&](float* dst, const float* lhs, const float* rhs, std::int64_t rows,
                  std::int64_t cols, std::int64_t inner, bool trans_a, bool trans_b, float beta_c) {
    if (bf16)
      k.matmul_bf16(dst, lhs, rhs, rows, cols, inner, trans_a, trans_b, beta_c);
    else
      k.matmul(dst, lhs, rhs, rows, cols, inner, trans_a, trans_b, 1.0f, beta_c);
  };
  add("head matmul forward",
      time_call([&] { head(logits.data(), x.data(), wte, n, vp, c, false, true, 0.0f); }),
      2.0 * n * vp * c);
  add("head matmul backward",
      time_call([&] { head(y.data(), logits.data(), wte, n, c, vp, false, false, 0.0f); }) +
          time_call([&] { head(dwte.data(), logits.data(), x.data(), vp, c, n, true, false, 1.0f); }),
      4.0 * n * vp * c);
  add("cross-entropy", time_call([&] {
        k.softmax_cross_entropy(losses.data(), logits.data(), tokens.data(), nullptr, n, v, vp, 1e-3f, nullptr, 1.0f);
      }), 0);
  add("attention forward", layers * time_call([&] {
        k.attention_forward(att.data(), lse.data(), qkv.data(), b, t, c, nh, lv, nh);
      }), 0);
  add("attention backward", layers * time_call([&] {
        k.attention_backward(dqkv.data(), y.data(), qkv.data(), att.data(), lse.data(), b, t, c, nh, lv, nh);
      }), 0);
  // LayerNorm: two per block and the final one.
  const double ln = time_call([&] {
    k.layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(), n, c);
  }) + time_call([&] {
    k.layernorm_backward(dy.data(), dw.data(), dbias.data(), y.data(), x.data(), gamma.data(),
                         mean.data(), rstd.data(), n, c);
  });
  add("layernorm", (2 * layers + 1) * ln, 0);
  const double gelu = time_call([&] { k.gelu_forward(y.data(), x.data(), n * 4 * c); }) +
                      time_call([&] { k.gelu_backward(dy.data(), x.data(), y.data(), n * 4 * c); });
  add("gelu", layers * gelu, 0);
  add("residual add", 2 * layers * time_call([&] { k.add(y.data(), x.data(), dy.data(), n * c); }), 0);
  const double embedding = time_call([&] {
    k.embedding_forward(y.data(), tokens.data(), positions.data(), wte, wte, n, c, 0, v);
  }) + time_call([&] {
    k.embedding_backward(dwte.data(), dwpe.data(), dy.data(), tokens.data(), positions.data(), n, c, 0, v);
  });
  add("embedding", embedding, 0);
  return kinds;
}

void print_profile(const nlohmann::json& kinds, const nlohmann::json& phases) {
  double total = 0.0;
  for (auto& [kind, v] : kinds.items()) total += v["seconds"].get<double>();
  std::printf("per-kernel profile of one step (kernels timed alone, median of 3):\n");
  for (auto& [kind, v] : kinds.items()) {
    const double s = v["seconds"], f = v["flops"];
    std::printf("  %-22s %8.1f ms  %5.1f%%", kind.c_str(), 1e3 * s, 100.0 * s / total);
    if (f > 0) std::printf("  %6.1f GFLOP/s", f / s / 1e9);
    std::printf("\n");
  }
  std::printf("  %-22s %8.1f ms (kernels, without the optimizer)\n", "sum", 1e3 * total);
  if (!phases.is_null())
    std::printf("  whole model: forward %.1f ms, backward %.1f ms, optimizer %.1f ms\n",
                1e3 * phases["forward_s"].get<double>(), 1e3 * phases["backward_s"].get<double>(),
                1e3 * phases["optimizer_s"].get<double>());
}

void write_file(const std::string& path, const void* data, std::size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  if (!out) throw std::runtime_error("cannot write " + path);
}

int run(const Options& o) {
  omp_set_num_threads(o.threads);
  std::filesystem::create_directories(o.out);
  kiln::Gpt model(o.shape);
  model.init_weights(kInitSeed);
  kiln::save_model(model, o.out + "/init.safetensors");
  const std::vector<std::int32_t> tokens = make_batches(o);
  write_file(o.out + "/batches.bin", tokens.data(), tokens.size() * sizeof(std::int32_t));

  kiln::OptimConfig optim;
  optim.lr = o.lr;
  optim.schedule = "constant";
  optim.warmup_steps = 0;
  optim.beta1 = 0.9f;
  optim.beta2 = 0.95f;
  optim.eps = 1e-8f;
  optim.weight_decay = 0.1f;
  optim.grad_clip = 1.0f;
  kiln::AdamW optimizer(optim, model);

  std::vector<double> losses, seconds, tokens_per_s, grad_norms;
  const double step_tokens = static_cast<double>(o.batch) * o.seq;
  for (int step = 0; step < o.steps; ++step) {
    const kiln::Batch batch = batch_at(o, tokens, step);  // built outside the timed region
    const auto t0 = std::chrono::steady_clock::now();
    model.zero_grad();
    const double loss_sum = model.forward_backward(batch, static_cast<float>(1.0 / batch.loss_tokens()));
    const auto stats = optimizer.step(kiln::learning_rate(optim, step + 1, o.steps));
    const double s = seconds_since(t0);
    losses.push_back(loss_sum / static_cast<double>(batch.loss_tokens()));
    seconds.push_back(s);
    grad_norms.push_back(stats.grad_norm);
    if (step > 0) tokens_per_s.push_back(step_tokens / s);
    std::printf("kiln step %2d  loss %.6f  %.3f s  %.0f tokens/s\n", step + 1, losses.back(), s,
                step_tokens / s);
    std::fflush(stdout);
  }
  const double tps = median(tokens_per_s);
  const double flops_per_token = o.shape.flops_per_token(o.seq);
  // MFU against this machine's peak in the matmuls' precision, measured now (kernels/peak.h);
  // the fp32 peak too, for the fp32 PyTorch reference.
  const kiln::PeakFlops peak = kiln::cpu::peak_flops(o.shape.bf16_matmul);
  const kiln::PeakFlops peak_fp32 = o.shape.bf16_matmul ? kiln::cpu::peak_flops(false) : peak;
  std::printf("peak %.3g FLOP/s (%s)\n", peak.flops_per_s, peak.how.c_str());
  nlohmann::json j = {
      {"format", "kiln-train-step-bench"}, {"version", 1},
      {"model", {{"arch", o.arch}, {"n_layer", o.shape.n_layer}, {"n_head", o.shape.n_head},
                 {"n_kv_head", o.shape.kv_heads()}, {"n_embd", o.shape.n_embd}, {"ffn", o.shape.ffn()},
                 {"context", o.shape.context}, {"vocab", o.shape.vocab},
                 {"padded_vocab", o.shape.padded_vocab}, {"norm", "pre"}, {"norm_eps", o.shape.norm_eps},
                 {"rope_theta", o.shape.rope_theta}, {"tied_head", o.shape.tied_head},
                 {"num_params", o.shape.num_params()}}},
      {"matmul", o.shape.bf16_matmul ? "bf16" : "f32"},
      {"seq", o.seq}, {"batch", o.batch}, {"steps", o.steps}, {"threads", omp_get_max_threads()},
      {"optim", {{"lr", o.lr}, {"beta1", 0.9}, {"beta2", 0.95}, {"eps", 1e-8},
                 {"weight_decay", 0.1}, {"grad_clip", 1.0}, {"schedule", "constant"}}},
      {"init_seed", kInitSeed}, {"data_seed", kDataSeed},
      {"losses", losses}, {"step_seconds", seconds}, {"grad_norms", grad_norms},
      {"tokens_per_s", tps}, {"flops_per_token", flops_per_token},
      {"peak_flops", peak.flops_per_s}, {"peak_how", peak.how}, {"peak_flops_fp32", peak_fp32.flops_per_s},
      {"mfu", tps * flops_per_token / peak.flops_per_s},
      {"mfu_note", o.shape.bf16_matmul ? "against the bf16 peak" : "against the fp32 peak"}};
  if (o.phases || o.profile) j["phases"] = time_phases(model, optimizer, batch_at(o, tokens, 0), o.lr);
  if (o.profile) {
    j["profile"] = profile_kernels(o, model);
    print_profile(j["profile"], j["phases"]);
  }
  std::ofstream(o.out + "/kiln.json") << j.dump(1) << "\n";
  std::printf("kiln: %.0f tokens/s (median of steps 2..%d), MFU %.1f%%\n", tps, o.steps,
              100.0 * tps * flops_per_token / peak.flops_per_s);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_step: %s\n", e.what());
    return 1;
  }
}
