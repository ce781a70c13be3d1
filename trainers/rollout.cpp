// Prompts, sampled responses and their scores (rollout.h).
#include "trainers/rollout.h"

#include <algorithm>
#include <filesystem>

#include "core/checkpoint/run_dir.h"
#include "core/checkpoint/safetensors.h"
#include "core/data/instruct.h"
#include "core/data/jsonl.h"
#include "core/eval/preference_world.h"
#include "core/rng.h"
#include "kernels/error.h"

namespace kiln {

std::vector<PromptRecord> load_prompts(const std::string& path, const Tokenizer& tokenizer, int seq_len,
                                       int max_new_tokens) {
  std::vector<InstructRecord> records;
  std::vector<PromptRecord> out;
  read_jsonl(path, JsonlOptions{}, [&](const nlohmann::json& json, const std::string& where) {
    KILN_CHECK(json.is_object() && (json.contains("prompt") || json.contains("instruction")), where,
               ": missing field 'prompt' (or 'instruction') of a prompt record");
    nlohmann::json with_response = json;  // parsed as an instruction record with an empty response
    with_response[json.contains("prompt") ? "completion" : "output"] = "";
    InstructRecord record = parse_instruct_record(with_response, where);
    PromptRecord p;
    p.where = where;
    if (json.contains("answer")) {
      KILN_CHECK(json["answer"].is_string(), where, ": field 'answer' must be a string");
      p.answer = json["answer"].get<std::string>();
      p.has_answer = true;
    }
    records.push_back(std::move(record));
    out.push_back(std::move(p));
  });
  KILN_CHECK(!out.empty(), path, " holds no prompt records");
  // The prompt as instruction tuning renders it: the record with an empty response.
  const InstructRenderer renderer(tokenizer, TemplateSet::builtin(), RenderOptions{});
  for (std::size_t i = 0; i < records.size(); ++i) {
    InstructRecord r = records[i];
    r.fields["output"] = r.fields["completion"] = "";
    const Example e = renderer.render({r}, 0);
    std::size_t prompt = 0;
    while (prompt < e.mask.size() && !e.mask[prompt]) ++prompt;
    out[i].ids.assign(e.ids.begin(), e.ids.begin() + static_cast<std::ptrdiff_t>(prompt));
    KILN_CHECK(!out[i].ids.empty(), out[i].where, ": the prompt renders to no tokens");
    KILN_CHECK(static_cast<int>(out[i].ids.size()) + max_new_tokens + 1 <= seq_len, out[i].where, ": the prompt is ",
               out[i].ids.size(), " tokens, which leaves no room for a response of ppo.max_new_tokens=", max_new_tokens,
               " and its end-of-text in train.seq_len=", seq_len, "; shorten the prompt, lower ppo.max_new_tokens or "
               "raise train.seq_len");
  }
  return out;
}

ScoreNorm read_score_norm(const std::string& source) {
  const SafetensorsFile file(resolve_checkpoint(source) + "/model.safetensors");
  ScoreNorm norm;
  const auto& meta = file.metadata();
  const auto mean = meta.find("kiln_score_mean"), sd = meta.find("kiln_score_std");
  if (mean == meta.end() || sd == meta.end()) return norm;
  norm.mean = std::stod(mean->second);
  norm.std = std::stod(sd->second);
  norm.stored = std::isfinite(norm.mean) && std::isfinite(norm.std) && norm.std > 0;
  if (!norm.stored) norm = {};
  return norm;
}

std::vector<double> last_token_scores(Gpt& model, ScalarHead& head, const std::vector<std::vector<std::int32_t>>& seqs,
                                      int seq_len, int rows) {
  std::vector<double> scores;
  for (std::size_t first = 0; first < seqs.size(); first += static_cast<std::size_t>(rows)) {
    const int n = static_cast<int>(std::min<std::size_t>(rows, seqs.size() - first));
    Batch b;
    b.batch = n;
    b.seq_len = seq_len;
    b.inputs.assign(static_cast<std::size_t>(n) * seq_len, 0);
    b.targets.assign(b.inputs.size(), 0);
    for (int r = 0; r < n; ++r) {
      const auto& s = seqs[first + r];
      KILN_CHECK(!s.empty() && static_cast<int>(s.size()) <= seq_len, "a sequence of ", s.size(),
                 " tokens to score in rows of ", seq_len);
      std::copy(s.begin(), s.end(), b.inputs.begin() + static_cast<std::ptrdiff_t>(r) * seq_len);
    }
    const std::vector<float> values = head.forward(model.trunk_forward(b));
    for (int r = 0; r < n; ++r)
      scores.push_back(values[static_cast<std::size_t>(r) * seq_len + seqs[first + r].size() - 1]);
  }
  return scores;
}

Responses sample_responses(Gpt& policy, const std::vector<std::vector<std::int32_t>>& prompts,
                           const SampleOptions& options, std::int32_t eot, const std::vector<std::uint64_t>& seeds) {
  Responses out;
  const std::size_t n = prompts.size();
  out.logprobs.assign(n, {});
  out.entropies.assign(n, {});
  out.ended.assign(n, false);
  const int vocab = policy.shape().vocab;
  Decoder decoder(policy);
  out.tokens = decoder.generate(prompts, options, eot, seeds, {}, [&](int i, std::int32_t token, const float* logits) {
    // log softmax(logits / T) at the chosen token, and the distribution's entropy, in double.
    const double t = options.temperature > 0 ? options.temperature : 1.0;
    double top = -1e300;
    for (int v = 0; v < vocab; ++v) top = std::max(top, logits[v] / t);
    double sum = 0.0, weighted = 0.0;
    for (int v = 0; v < vocab; ++v) {
      const double z = logits[v] / t - top, e = std::exp(z);
      sum += e;
      weighted += e * z;
    }
    const double lse = std::log(sum);
    out.logprobs[i].push_back(logits[token] / t - top - lse);
    out.entropies[i].push_back(lse - weighted / sum);
    if (token == eot) out.ended[i] = true;
  });
  return out;
}

std::map<std::string, double> PolicyScores::as_map() const {
  std::map<std::string, double> m = {{"length", length}, {"eot_rate", eot_rate}};
  if (!std::isnan(gold)) m["gold"] = gold;
  if (!std::isnan(correct)) m["correct"] = correct;
  if (!std::isnan(proxy)) m["proxy"] = proxy;
  if (!std::isnan(proxy_std)) m["proxy_std"] = proxy_std;
  return m;
}

Gpt& gathered_whole(Gpt& model, const ModelConfig& config, int vocab, std::unique_ptr<Gpt>& whole) {
  if (model.shape().tp_size == 1) return model;
  if (!whole) whole = std::make_unique<Gpt>(GptShape::from_config(config, vocab), model.device());
  std::vector<Parameter>& shards = model.parameters();
  std::vector<Parameter>& out = whole->parameters();
  KILN_ASSERT(shards.size() == out.size());
  for (std::size_t i = 0; i < shards.size(); ++i) {
    // The whole tensor (a collective over the tensor-parallel group); the vocabulary's padding
    // differs between layouts, and only its real rows, at the front, are copied.
    const Tensor full = model.gather_full(shards[i], shards[i].value.f32());
    KILN_ASSERT(shards[i].name == out[i].name);
    const std::int64_t n = std::min(full.numel(), out[i].value.numel());
    std::copy(full.f32(), full.f32() + n, out[i].value.f32());
  }
  whole->refresh_bf16_weights();
  return *whole;
}

PolicyScores score_policy(Gpt& policy, const Tokenizer& tokenizer, const std::vector<PromptRecord>& prompts,
                          int max_new_tokens, int seq_len, int rows, int replica, int replicas,
                          const std::function<void(double*, std::int64_t)>& sum_many, Gpt* reward, ScoreNorm norm,
                          float temperature, std::uint64_t seed) {
  std::vector<std::size_t> mine;
  for (std::size_t i = static_cast<std::size_t>(replica); i < prompts.size(); i += static_cast<std::size_t>(replicas))
    mine.push_back(i);
  // sums: n, gold n, gold, correct, length, ended, proxy, proxy squared
  double sums[8] = {};
  const std::int32_t eot = static_cast<std::int32_t>(tokenizer.eot());
  SampleOptions options;
  options.temperature = temperature;
  options.max_tokens = max_new_tokens;
  for (std::size_t first = 0; first < mine.size(); first += static_cast<std::size_t>(rows)) {
    const std::size_t n = std::min<std::size_t>(rows, mine.size() - first);
    std::vector<std::vector<std::int32_t>> batch;
    std::vector<std::uint64_t> seeds;
    for (std::size_t j = 0; j < n; ++j) {
      batch.push_back(prompts[mine[first + j]].ids);
      seeds.push_back(Rng(seed, 0x4556414c53414d50ull).u64(mine[first + j]));  // "EVALSAMP"
    }
    const Responses r = sample_responses(policy, batch, options, eot, seeds);
    std::vector<std::vector<std::int32_t>> whole;
    for (std::size_t j = 0; j < n; ++j) {
      const PromptRecord& p = prompts[mine[first + j]];
      sums[0] += 1;
      sums[4] += static_cast<double>(r.tokens[j].size());
      sums[5] += r.ended[j] ? 1.0 : 0.0;
      if (p.has_answer) {
        std::vector<std::uint32_t> ids(r.tokens[j].begin(), r.tokens[j].end());
        const std::string text = tokenizer.decode(ids);
        sums[1] += 1;
        sums[2] += gold_reward(p.answer, text);
        sums[3] += gold_correct(p.answer, text) ? 1.0 : 0.0;
      }
      std::vector<std::int32_t> s = batch[j];
      s.insert(s.end(), r.tokens[j].begin(), r.tokens[j].end());
      if (r.ended[j]) s.push_back(eot);
      whole.push_back(std::move(s));
    }
    if (reward) {
      ScalarHead head(*reward);
      for (double score : last_token_scores(*reward, head, whole, seq_len, rows)) {
        const double z = (score - norm.mean) / norm.std;
        sums[6] += z;
        sums[7] += z * z;
      }
    }
  }
  sum_many(sums, 8);
  PolicyScores out;
  if (sums[0] == 0) return out;
  out.length = sums[4] / sums[0];
  out.eot_rate = sums[5] / sums[0];
  if (sums[1] > 0) {
    out.gold = sums[2] / sums[1];
    out.correct = sums[3] / sums[1];
  }
  if (reward) {
    out.proxy = sums[6] / sums[0];
    out.proxy_std = std::sqrt(std::max(0.0, sums[7] / sums[0] - out.proxy * out.proxy));
  }
  return out;
}

}  // namespace kiln
