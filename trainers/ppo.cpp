// PPO stage (ppo.h).
#include "trainers/ppo.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/eval/preference_world.h"
#include "core/rng.h"
#include "kernels/error.h"

namespace kiln {

namespace {

// A seeded permutation of n items.
std::vector<std::size_t> permutation(std::size_t n, const Rng& rng) {
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  shuffle(order, rng);
  return order;
}

constexpr std::uint64_t kPromptStream = 0x50504f50524f4d50ull;  // "PPOPROMP"
constexpr std::uint64_t kSampleStream = 0x50504f53414d504cull;  // "PPOSAMPL"
constexpr std::uint64_t kEpochStream = 0x50504f45504f4348ull;   // "PPOEPOCH"

}  // namespace

PpoStage::PpoStage(const ExperimentConfig& config, int replica, int replicas)
    : config_(config),
      tokenizer_(make_tokenizer(config.data.tokenizer, config.data.tokenizer_dir)),
      replica_(replica),
      replicas_(replicas) {
  const PpoConfig& o = config.ppo;
  KILN_CHECK(o.rollout_prompts % replicas == 0, "ppo.rollout_prompts=", o.rollout_prompts, " must be a multiple of "
             "the ", replicas, " data-parallel ranks that share each rollout");
  KILN_CHECK((o.rollout_prompts / replicas) % o.minibatches == 0, "ppo.rollout_prompts=", o.rollout_prompts, " gives ",
             o.rollout_prompts / replicas, " sequences per rank, which ppo.minibatches=", o.minibatches,
             " must divide; choose rollout_prompts as a multiple of minibatches x data-parallel ranks");
  prompts_ = load_prompts(config.data.prompts, *tokenizer_, config.train.seq_len, o.max_new_tokens);
  if (!config.data.val_prompts.empty())
    val_prompts_ = load_prompts(config.data.val_prompts, *tokenizer_, config.train.seq_len, o.max_new_tokens);
  kl_.coef = o.kl_coef;
  kl_.target = o.kl_target;
  kl_.horizon = o.kl_horizon;
  norm_ = o.reward_normalize ? read_score_norm(config.roles.reward) : ScoreNorm{};
  if (o.ptx_coef > 0) ptx_ = std::make_unique<SftStage>(config, replica, replicas);
}

std::vector<RoleRequest> PpoStage::roles() const {
  const RolesConfig& r = config_.roles;
  return {{"reference", r.reference.empty() ? config_.train.init_from : r.reference, false, false, 0.0f},
          {"reward", r.reward, false, true, 0.0f},
          {"value", r.value.empty() ? r.reward : r.value, true, true, config_.ppo.value_lr}};
}

void PpoStage::attach(const std::map<std::string, Gpt*>& roles) {
  reference_ = roles.at("reference");
  reward_ = roles.at("reward");
  value_ = roles.at("value");
  reward_head_ = std::make_unique<ScalarHead>(*reward_);
  value_head_ = std::make_unique<ScalarHead>(*value_);
}

Batch PpoStage::rows(const std::vector<std::size_t>& ids) const {
  const int t = config_.train.seq_len;
  Batch b;
  b.batch = static_cast<int>(ids.size());
  b.seq_len = t;
  b.inputs.assign(ids.size() * t, 0);
  b.targets.assign(ids.size() * t, 0);
  b.mask.assign(ids.size() * t, 0);
  for (std::size_t r = 0; r < ids.size(); ++r) {
    const Sequence& s = rollout_[ids[r]];
    const std::size_t at = r * t, n = s.tokens.size();
    for (std::size_t p = 0; p < n; ++p) b.inputs[at + p] = s.tokens[p];
    for (std::size_t p = 0; p + 1 < n; ++p) {
      b.targets[at + p] = s.tokens[p + 1];
      b.mask[at + p] = p + 1 >= static_cast<std::size_t>(s.prompt) ? 1 : 0;
    }
  }
  return b;
}

void PpoStage::make_rollout(Gpt& policy, StepContext& ctx) {
  const PpoConfig& o = config_.ppo;
  const int local = o.rollout_prompts / replicas_, micro = config_.train.micro_batch;
  // This replica's prompts: positions [replica * local, +local) of the rollout's R global ones.
  std::vector<std::vector<std::int32_t>> prompts;
  std::vector<std::uint64_t> seeds;
  std::vector<const PromptRecord*> records;
  const std::size_t n = prompts_.size();
  std::vector<std::size_t> order;
  std::uint64_t order_pass = ~0ull;
  for (int j = 0; j < local; ++j) {
    const std::uint64_t g = rollouts_ * o.rollout_prompts + static_cast<std::uint64_t>(replica_ * local + j);
    if (g / n != order_pass) {
      order_pass = g / n;
      order = permutation(n, Rng(config_.train.seed, kPromptStream + order_pass));
    }
    records.push_back(&prompts_[order[g % n]]);
    prompts.push_back(records.back()->ids);
    seeds.push_back(Rng(config_.train.seed, kSampleStream).u64(g));
  }
  SampleOptions sample;
  sample.temperature = o.temperature;
  sample.max_tokens = o.max_new_tokens;
  const std::int32_t eot = static_cast<std::int32_t>(tokenizer_->eot());
  Gpt& decoding = gathered_whole(policy, config_.model, tokenizer_->vocab_size(), whole_);
  const Responses responses = sample_responses(decoding, prompts, sample, eot, seeds);

  rollout_.assign(local, {});
  std::vector<std::vector<std::int32_t>> whole;
  for (int j = 0; j < local; ++j) {
    Sequence& s = rollout_[j];
    s.tokens = prompts[j];
    s.prompt = static_cast<int>(prompts[j].size());
    s.tokens.insert(s.tokens.end(), responses.tokens[j].begin(), responses.tokens[j].end());
    s.ended = responses.ended[j];
    if (s.ended) s.tokens.push_back(eot);
    whole.push_back(s.tokens);
  }
  // The policy's and the reference's log-probabilities of every response token, and the value
  // model's values of the states before them, micro-batch by micro-batch.
  double decode_diff = 0.0;
  for (int first = 0; first < local; first += micro) {
    std::vector<std::size_t> ids;
    for (int j = first; j < std::min(local, first + micro); ++j) ids.push_back(static_cast<std::size_t>(j));
    const Batch b = rows(ids);
    const std::vector<float> lp = policy.token_logprobs(b, o.temperature);
    const std::vector<float> ref = reference_->token_logprobs(b, o.temperature);
    const std::vector<float> v = value_head_->forward(value_->trunk_forward(b));
    each_response_token(ids, [&](std::size_t j, std::size_t t, std::size_t p) {
      Sequence& s = rollout_[j];
      s.logprobs.push_back(lp[p]);
      s.ref_logprobs.push_back(ref[p]);
      s.values.push_back(v[p]);
      if (t < responses.logprobs[j].size())
        decode_diff = std::max(decode_diff, std::abs(responses.logprobs[j][t] - static_cast<double>(lp[p])));
    });
  }
  // Rewards: the reward model's score of each whole sequence at its last token.
  const std::vector<double> raw = last_token_scores(*reward_, *reward_head_, whole, config_.train.seq_len, micro);
  // sums: 0 n, 1 reward, 2 proxy, 3 gold n, 4 gold, 5 correct, 6 kl, 7 entropy, 8 entropy tokens,
  //       9 length, 10 ended, 11 tokens, 12 adv, 13 adv^2, 14 ret, 15 ret^2, 16 err, 17 err^2
  double sums[18] = {};
  std::vector<std::vector<double>> rewards(local);
  for (int j = 0; j < local; ++j) {
    Sequence& s = rollout_[j];
    double score = (raw[j] - norm_.mean) / norm_.std;
    sums[2] += score;
    if (!s.ended) score += o.missing_eot_penalty;
    if (o.reward_clip > 0) score = std::clamp(score, -static_cast<double>(o.reward_clip), static_cast<double>(o.reward_clip));
    s.score = score;
    sums[0] += 1;
    sums[1] += score;
    const PromptRecord& p = *records[j];
    if (p.has_answer) {
      std::vector<std::uint32_t> ids(responses.tokens[j].begin(), responses.tokens[j].end());
      const std::string text = tokenizer_->decode(ids);
      sums[3] += 1;
      sums[4] += gold_reward(p.answer, text);
      sums[5] += gold_correct(p.answer, text) ? 1.0 : 0.0;
    }
    const std::size_t len = s.logprobs.size();
    std::vector<double> r(len), values(s.values.begin(), s.values.end());
    double kl = 0.0;
    for (std::size_t t = 0; t < len; ++t) {
      kl += s.logprobs[t] - s.ref_logprobs[t];
      r[t] = -kl_.coef * kl_estimate(s.logprobs[t], s.ref_logprobs[t], o.kl_estimator);
    }
    if (len > 0) r[len - 1] += score;
    sums[6] += kl;
    for (double e : responses.entropies[j]) sums[7] += e;
    sums[8] += static_cast<double>(responses.entropies[j].size());
    sums[9] += static_cast<double>(responses.tokens[j].size());
    sums[10] += s.ended ? 1.0 : 0.0;
    std::vector<double> adv, ret;
    gae(r, values, o.gamma, o.lam, adv, ret);
    s.advantages.assign(adv.begin(), adv.end());
    s.returns.assign(ret.begin(), ret.end());
    for (std::size_t t = 0; t < len; ++t) {
      sums[11] += 1;
      sums[12] += adv[t];
      sums[13] += adv[t] * adv[t];
      sums[14] += ret[t];
      sums[15] += ret[t] * ret[t];
      const double err = ret[t] - values[t];
      sums[16] += err;
      sums[17] += err * err;
    }
  }
  ctx.sum_many(sums, 18);
  // Whitened advantages over the whole rollout (every replica's tokens).
  const double mean = sums[12] / sums[11];
  const double sd = std::sqrt(std::max(0.0, sums[13] / sums[11] - mean * mean));
  for (Sequence& s : rollout_)
    for (float& a : s.advantages) a = static_cast<float>((a - mean) / (sd + 1e-8));
  const double var_ret = sums[15] / sums[11] - std::pow(sums[14] / sums[11], 2);
  const double var_err = sums[17] / sums[11] - std::pow(sums[16] / sums[11], 2);
  const double kl_mean = sums[6] / sums[0];
  rollout_metrics_ = {{"reward", sums[1] / sums[0]},
                      {"proxy", sums[2] / sums[0]},
                      {"kl", kl_mean},
                      {"kl_coef", kl_.coef},
                      {"entropy", sums[8] > 0 ? sums[7] / sums[8] : 0.0},
                      {"length", sums[9] / sums[0]},
                      {"eot_rate", sums[10] / sums[0]},
                      {"value_explained_var", var_ret > 0 ? 1.0 - var_err / var_ret : 0.0},
                      {"logprob_decode_diff", ctx.max_over_replicas(decode_diff)}};
  if (sums[3] > 0) {
    rollout_metrics_["gold"] = sums[4] / sums[3];
    rollout_metrics_["correct"] = sums[5] / sums[3];
  }
  kl_.update(kl_mean, o.rollout_prompts);
  ++rollouts_;
  next_update_ = 0;
}

std::vector<std::size_t> PpoStage::minibatch(std::int64_t index) const {
  // A permutation of the rollout's global sequences (the same whatever the layout) cut into
  // minibatches; this replica trains on its own sequences of the minibatch, so every layout
  // sums the same sequences into each step (a replica may hold more of one minibatch than another).
  const PpoConfig& o = config_.ppo;
  const std::size_t global = static_cast<std::size_t>(o.rollout_prompts), size = global / o.minibatches;
  const std::size_t local = rollout_.size(), first_local = static_cast<std::size_t>(replica_) * local;
  const std::int64_t epoch = index / o.minibatches, m = index % o.minibatches;
  const std::vector<std::size_t> order =
      permutation(global, Rng(config_.train.seed, kEpochStream + (rollouts_ << 16) + static_cast<std::uint64_t>(epoch)));
  std::vector<std::size_t> mine;
  for (std::size_t k = static_cast<std::size_t>(m) * size; k < static_cast<std::size_t>(m + 1) * size; ++k)
    if (order[k] >= first_local && order[k] < first_local + local) mine.push_back(order[k] - first_local);
  return mine;
}

StepLoss PpoStage::accumulate_gradients(Gpt& model, StepContext& ctx) {
  KILN_CHECK(value_ != nullptr, "ppo: roles not attached");
  const PpoConfig& o = config_.ppo;
  if (rollout_.empty() || next_update_ >= static_cast<std::int64_t>(o.epochs) * o.minibatches)
    make_rollout(model, ctx);
  std::vector<std::size_t> ids = minibatch(next_update_);
  // A replica with none of the minibatch's sequences still runs one row, with zero weights, so
  // that its gradient sync (armed before the last backward) takes part in the collectives.
  const bool idle = ids.empty();
  if (idle) ids.push_back(0);
  const int micro = config_.train.micro_batch;
  // Every micro-batch's current log-probabilities and values first (forward only), then the
  // gradients of both losses.
  std::vector<Batch> batches;
  std::vector<std::vector<std::size_t>> groups;
  double tokens = 0.0;
  for (std::size_t first = 0; first < ids.size(); first += static_cast<std::size_t>(micro)) {
    groups.emplace_back(ids.begin() + static_cast<std::ptrdiff_t>(first),
                        ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), first + micro)));
    batches.push_back(rows(groups.back()));
    if (!idle)
      for (std::size_t i : groups.back()) tokens += static_cast<double>(rollout_[i].logprobs.size());
  }
  const double total = ctx.sum_over_replicas(tokens);
  const float scale = total > 0 ? static_cast<float>(1.0 / total) : 0.0f;
  // sums: policy loss, clipped, approx kl, value loss, value clipped
  double sums[5] = {};
  double logprob_diff = 0.0;
  StepLoss step;
  for (std::size_t g = 0; g < batches.size(); ++g) {
    Batch& b = batches[g];
    const std::vector<float> lp = model.token_logprobs(b, o.temperature);
    b.weights.assign(b.inputs.size(), 0.0f);
    each_response_token(groups[g], [&](std::size_t j, std::size_t t, std::size_t p) {
      if (idle) return;
      const Sequence& s = rollout_[j];
      const PolicyTerms pt = ppo_policy_loss(lp[p], s.logprobs[t], s.advantages[t], o.clip_ratio);
      b.weights[p] = static_cast<float>(-pt.d_logp);  // forward_backward's loss is w * (-log p)
      sums[0] += pt.loss;
      sums[1] += pt.clipped ? 1.0 : 0.0;
      const double log_ratio = static_cast<double>(lp[p]) - s.logprobs[t];
      sums[2] += std::expm1(log_ratio) - log_ratio;
      logprob_diff = std::max(logprob_diff, std::abs(log_ratio));
    });
    step.processed += static_cast<std::int64_t>(b.batch) * b.seq_len;
  }
  for (std::size_t g = 0; g < batches.size(); ++g) {
    if (g + 1 == batches.size() && !ptx_) ctx.before_last_backward();
    model.queue_forward_backward(batches[g], scale, o.temperature);
  }
  model.take_loss_sum();
  // PPO-ptx: ptx_coef times the SFT loss of a micro-batch of the SFT data.
  double ptx_loss = 0.0;
  if (ptx_) {
    const Packed& sft = ptx_->train_rows();
    const Batch b = slice_rows(sft.batch, static_cast<int>(ptx_row_) + replica_ * micro, micro);
    const double n = ctx.sum_over_replicas(static_cast<double>(b.loss_tokens()));
    ctx.before_last_backward();
    model.queue_forward_backward(b, n > 0 ? static_cast<float>(o.ptx_coef / n) : 0.0f);
    ptx_loss = ctx.sum_over_replicas(model.take_loss_sum()) / std::max(n, 1.0);
    ptx_row_ += static_cast<std::uint64_t>(micro) * replicas_;
    if (ptx_row_ >= static_cast<std::uint64_t>(sft.batch.batch)) {
      ptx_row_ = 0;
      ptx_->start_pass(++ptx_pass_);
    }
  }
  // The value model: the clipped value loss over the same tokens.
  const std::int64_t c = value_->shape().n_embd;
  for (std::size_t g = 0; g < batches.size(); ++g) {
    Batch b = batches[g];
    b.weights.clear();
    const Tensor& hidden = value_->trunk_forward(b);
    const std::vector<float> v = value_head_->forward(hidden);
    std::vector<float> dv(v.size(), 0.0f);
    each_response_token(groups[g], [&](std::size_t j, std::size_t t, std::size_t p) {
      if (idle) return;
      const Sequence& s = rollout_[j];
      const ValueTerms vt = ppo_value_loss(v[p], s.values[t], s.returns[t], o.value_clip);
      dv[p] = static_cast<float>(vt.d_value * scale);
      sums[3] += vt.loss;
      sums[4] += vt.clipped ? 1.0 : 0.0;
    });
    Tensor dhidden = Tensor::zeros({hidden.numel() / c, c}, DType::f32, value_->device());
    value_head_->backward(hidden, dv, dhidden);
    if (g + 1 == batches.size()) ctx.before_last_backward_of("value");
    value_->trunk_backward(dhidden);
  }
  step.loss_sum = sums[0];
  step.tokens = static_cast<std::int64_t>(tokens);
  ctx.sum_many(sums, 5);
  update_metrics_ = {{"clipfrac", sums[1] / total},
                     {"approx_kl", sums[2] / total},
                     {"value_loss", sums[3] / total},
                     {"value_clipfrac", sums[4] / total},
                     {"logprob_diff", ctx.max_over_replicas(logprob_diff)}};
  if (ptx_) update_metrics_["ptx_loss"] = ptx_loss;
  ++next_update_;
  return step;
}

std::map<std::string, double> PpoStage::step_metrics() const {
  std::map<std::string, double> m = rollout_metrics_;
  m.insert(update_metrics_.begin(), update_metrics_.end());
  return m;
}

std::optional<double> PpoStage::validation_loss(Gpt& model, StepContext& ctx) {
  if (val_prompts_.empty()) return std::nullopt;
  Gpt& whole = gathered_whole(model, config_.model, tokenizer_->vocab_size(), whole_);
  const PolicyScores s = score_policy(whole, *tokenizer_, val_prompts_, config_.ppo.max_new_tokens,
                                      config_.train.seq_len, config_.train.micro_batch, replica_, replicas_,
                                      ctx.sum_many, reward_, norm_, config_.ppo.temperature, config_.train.seed);
  val_metrics_ = s.as_map();
  return -s.proxy;  // ppo's validation loss: the negated mean reward-model score of the sampled responses
}

nlohmann::json PpoStage::state() const {
  nlohmann::json seqs = nlohmann::json::array();
  for (const Sequence& s : rollout_)
    seqs.push_back({{"tokens", s.tokens}, {"prompt", s.prompt}, {"ended", s.ended}, {"logprobs", s.logprobs},
                    {"ref_logprobs", s.ref_logprobs}, {"values", s.values}, {"advantages", s.advantages},
                    {"returns", s.returns}, {"score", s.score}});
  return {{"rollouts", rollouts_}, {"next_update", next_update_}, {"kl_coef", kl_.coef}, {"rollout", seqs},
          {"rollout_metrics", rollout_metrics_}, {"ptx_row", ptx_row_}, {"ptx_pass", ptx_pass_}};
}

void PpoStage::restore(const nlohmann::json& state) {
  KILN_CHECK(state.contains("rollouts") && state.contains("next_update") && state.contains("rollout") &&
                 state["rollout"].is_array(),
             "trainer_state.json: stage_state is not a ppo state; it is damaged or from another stage");
  rollouts_ = state["rollouts"].get<std::uint64_t>();
  next_update_ = state["next_update"].get<std::int64_t>();
  kl_.coef = state["kl_coef"].get<double>();
  rollout_.clear();
  for (const auto& j : state["rollout"]) {
    Sequence s;
    s.tokens = j["tokens"].get<std::vector<std::int32_t>>();
    s.prompt = j["prompt"].get<int>();
    s.ended = j["ended"].get<bool>();
    s.logprobs = j["logprobs"].get<std::vector<float>>();
    s.ref_logprobs = j["ref_logprobs"].get<std::vector<float>>();
    s.values = j["values"].get<std::vector<float>>();
    s.advantages = j["advantages"].get<std::vector<float>>();
    s.returns = j["returns"].get<std::vector<float>>();
    s.score = j["score"].get<double>();
    rollout_.push_back(std::move(s));
  }
  rollout_metrics_ = state.value("rollout_metrics", std::map<std::string, double>{});
  ptx_row_ = state.value("ptx_row", std::uint64_t{0});
  const std::uint64_t pass = state.value("ptx_pass", std::uint64_t{0});
  if (ptx_ && pass != ptx_pass_) ptx_->start_pass(pass);
  ptx_pass_ = pass;
}

std::string PpoStage::describe() const {
  const PpoConfig& o = config_.ppo;
  return message("ppo: ", prompts_.size(), " prompts from ", config_.data.prompts, "; rollouts of ", o.rollout_prompts,
                 " x up to ", o.max_new_tokens, " tokens at temperature ", o.temperature, ", ", o.epochs, " epoch(s) x ",
                 o.minibatches, " minibatch(es); KL ", o.kl_estimator, " coef ", o.kl_coef,
                 o.kl_target > 0 ? message(" adaptive to ", o.kl_target) : std::string(" fixed"),
                 "; rewards ", norm_.stored ? message("normalised (mean ", norm_.mean, ", std ", norm_.std, ")")
                                            : std::string("as scored"),
                 o.ptx_coef > 0 ? message("; ptx ", o.ptx_coef) : std::string(),
                 val_prompts_.empty() ? std::string() : message("; validation: ", val_prompts_.size(), " prompts"));
}

}  // namespace kiln
