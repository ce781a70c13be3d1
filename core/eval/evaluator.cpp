// The evaluator (core/eval/evaluator.h).
#include "core/eval/evaluator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <tuple>

#include "core/config.h"
#include "core/model/decode.h"
#include "core/rng.h"
#include "kernels/error.h"

namespace kiln {

namespace {

// The k exemplars of document `doc`: a seeded draw without replacement from the pool.
std::vector<std::size_t> exemplars(std::size_t pool, int k, std::uint64_t seed, std::size_t doc) {
  std::vector<std::size_t> idx(pool);
  std::iota(idx.begin(), idx.end(), std::size_t{0});
  const Rng rng(seed, doc);
  for (int j = 0; j < k; ++j) {
    const std::size_t r = j + rng.u64(static_cast<std::uint64_t>(j)) % (pool - j);
    std::swap(idx[j], idx[r]);
  }
  idx.resize(k);
  return idx;
}

std::string prompt_text(const EvalTask& task, const EvalTemplate& t, std::size_t doc, int k) {
  std::string out;
  for (std::size_t e : exemplars(task.fewshot.size(), k, task.fewshot_seed, doc))
    out += task.text(t, task.fewshot[e]) + task.target_delimiter + task.target_text(t, task.fewshot[e]) +
           task.fewshot_delimiter;
  return out + task.text(t, task.docs[doc]);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::vector<double> loglikelihoods(Gpt& model, const std::vector<LoglikelihoodRequest>& requests, int batch_rows,
                                   std::int64_t* truncated) {
  KILN_CHECK(batch_rows >= 1, "the evaluation batch must hold at least one row, got ", batch_rows);
  const int context = model.shape().context;
  // Each request as one row of tokens, its context cut from the left to fit, and where its
  // continuation starts.
  std::vector<std::vector<std::int32_t>> rows(requests.size());
  std::vector<std::size_t> starts(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const LoglikelihoodRequest& r = requests[i];
    KILN_CHECK(!r.context.empty() && !r.continuation.empty(), "a log-likelihood request needs a context and a continuation");
    KILN_CHECK(r.continuation.size() < static_cast<std::size_t>(context), "a continuation of ", r.continuation.size(),
               " tokens does not fit the model's context of ", context);
    const std::size_t keep = std::min(r.context.size(), static_cast<std::size_t>(context) - r.continuation.size());
    if (keep < r.context.size() && truncated) ++*truncated;
    rows[i].assign(r.context.end() - static_cast<std::ptrdiff_t>(keep), r.context.end());
    starts[i] = rows[i].size();
    rows[i].insert(rows[i].end(), r.continuation.begin(), r.continuation.end());
  }
  std::vector<std::size_t> order(requests.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return rows[a].size() > rows[b].size(); });
  std::vector<double> out(requests.size(), 0.0);
  for (std::size_t first = 0; first < order.size(); first += batch_rows) {
    const std::size_t n = std::min<std::size_t>(batch_rows, order.size() - first);
    Batch b;
    b.batch = static_cast<int>(n);
    b.seq_len = static_cast<int>(rows[order[first]].size()) - 1;  // the longest row of the pass
    const std::size_t cells = n * static_cast<std::size_t>(b.seq_len);
    b.inputs.assign(cells, 0);
    b.targets.assign(cells, 0);
    b.mask.assign(cells, 0);
    for (std::size_t r = 0; r < n; ++r) {
      const std::vector<std::int32_t>& row = rows[order[first + r]];
      for (std::size_t j = 0; j + 1 < row.size(); ++j) {
        b.inputs[r * b.seq_len + j] = row[j];
        b.targets[r * b.seq_len + j] = row[j + 1];
        b.mask[r * b.seq_len + j] = j + 1 >= starts[order[first + r]];
      }
    }
    const std::vector<float> logprobs = model.token_logprobs(b);
    for (std::size_t r = 0; r < n; ++r) {
      double sum = 0.0;
      for (int j = 0; j < b.seq_len; ++j) sum += logprobs[r * b.seq_len + j];
      out[order[first + r]] = sum;
    }
  }
  return out;
}

std::vector<LoglikelihoodRequest> rolling_requests(const std::vector<std::int32_t>& ids, std::int32_t eot,
                                                   int context) {
  KILN_CHECK(context >= 2, "rolling log-likelihood needs a model context of at least 2 tokens");
  const std::size_t window = static_cast<std::size_t>(context / 2);
  const std::size_t room = static_cast<std::size_t>(context) - window;  // context tokens a window sees
  std::vector<LoglikelihoodRequest> out;
  for (std::size_t start = 0; start < ids.size(); start += window) {
    LoglikelihoodRequest r;
    const std::size_t from = start + 1 <= room ? 0 : start - room;  // the text's start: after end-of-text
    if (from == 0 && start + 1 <= room) r.context.push_back(eot);
    r.context.insert(r.context.end(), ids.begin() + static_cast<std::ptrdiff_t>(from), ids.begin() + static_cast<std::ptrdiff_t>(start));
    r.continuation.assign(ids.begin() + static_cast<std::ptrdiff_t>(start),
                          ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), start + window)));
    out.push_back(std::move(r));
  }
  return out;
}

EvalReport evaluate(Gpt& model, const Tokenizer& tokenizer, const std::vector<EvalTask>& tasks,
                    const EvalOptions& options) {
  const auto t_start = std::chrono::steady_clock::now();
  const EvalRanks& ranks = options.ranks;
  KILN_CHECK(ranks.size >= 1 && ranks.rank >= 0 && ranks.rank < ranks.size && (ranks.size == 1 || ranks.sum),
             "evaluation ranks: rank ", ranks.rank, " of ", ranks.size, " (and a sum over ranks when there are several)");
  EvalReport report;
  std::unique_ptr<Decoder> decoder;
  const auto eot = static_cast<std::int32_t>(tokenizer.eot());
  for (const EvalTask& task : tasks) {
    const std::vector<int> ks = task.rolling()                ? std::vector<int>{0}
                                : options.num_fewshot.empty() ? task.num_fewshot
                                                              : options.num_fewshot;
    for (int k : ks)
      KILN_CHECK(k >= 0 && static_cast<std::size_t>(k) <= task.fewshot.size(), task.source, ": task ", task.name,
                 ": ", k, " shots, but fewshot_dataset holds ", task.fewshot.size(), " exemplars");
    const std::size_t docs = options.limit > 0 ? std::min<std::size_t>(options.limit, task.docs.size()) : task.docs.size();
    // This rank's documents.
    std::vector<std::size_t> mine;
    for (std::size_t d = static_cast<std::size_t>(ranks.rank); d < docs; d += static_cast<std::size_t>(ranks.size))
      mine.push_back(d);
    for (const EvalTemplate& t : task.templates)
      for (int k : ks) {
        EvalScore score{task.name, task.cluster, t.name, task.output_type, k, static_cast<std::int64_t>(docs), 0, {}};
        // Per-document results, `fields` per document, then this rank's count of truncated
        // prompts; summed over ranks, then reduced in document order.
        const std::size_t fields = task.rolling() || !task.multiple_choice() ? 3 : 2;
        std::vector<double> per_doc(docs * fields + 1, 0.0);
        double& truncated = per_doc.back();
        std::int64_t cut = 0;
        const auto t0 = std::chrono::steady_clock::now();
        if (task.rolling()) {
          // Fields: log-likelihood, tokens, bytes.
          std::vector<LoglikelihoodRequest> requests;
          std::vector<std::size_t> doc_of;
          for (std::size_t d : mine) {
            const std::string text = task.text(t, task.docs[d]);
            const std::vector<std::int32_t> ids = tokenizer.encode_ids(text);
            per_doc[d * fields + 1] = static_cast<double>(ids.size());
            per_doc[d * fields + 2] = static_cast<double>(text.size());
            for (auto& r : rolling_requests(ids, eot, model.shape().context)) {
              requests.push_back(std::move(r));
              doc_of.push_back(d);
            }
          }
          const std::vector<double> ll = loglikelihoods(model, requests, options.batch_rows, &cut);
          for (std::size_t i = 0; i < ll.size(); ++i) per_doc[doc_of[i] * fields] += ll[i];
        } else if (task.multiple_choice()) {
          // Fields: the best option is gold (acc), the best per character is (acc_norm).
          std::vector<LoglikelihoodRequest> requests;
          std::vector<std::size_t> first_option(1, 0);
          std::vector<double> chars;
          for (std::size_t d : mine) {
            const std::vector<std::int32_t> context = tokenizer.encode_ids(prompt_text(task, t, d, k));
            for (const std::string& option : task.choices(t, task.docs[d])) {
              const std::string continuation = task.target_delimiter + option;
              requests.push_back({context, tokenizer.encode_ids(continuation)});
              chars.push_back(static_cast<double>(std::max<std::size_t>(1, continuation.size())));
            }
            first_option.push_back(requests.size());
          }
          const std::vector<double> ll = loglikelihoods(model, requests, options.batch_rows, &cut);
          for (std::size_t m = 0; m < mine.size(); ++m) {
            const std::size_t d = mine[m];
            const std::vector<int> gold = task.gold(t, task.docs[d]);
            std::size_t best = first_option[m], best_norm = first_option[m];
            for (std::size_t i = first_option[m]; i < first_option[m + 1]; ++i) {
              if (ll[i] > ll[best]) best = i;
              if (ll[i] / chars[i] > ll[best_norm] / chars[best_norm]) best_norm = i;
            }
            auto is_gold = [&](std::size_t i) {
              return std::find(gold.begin(), gold.end(), static_cast<int>(i - first_option[m])) != gold.end();
            };
            per_doc[d * fields] = is_gold(best);
            per_doc[d * fields + 1] = is_gold(best_norm);
          }
        } else {
          // Fields: exact match, stopped at end-of-text, tokens generated.
          if (!decoder) decoder = std::make_unique<Decoder>(model);
          const std::size_t room = static_cast<std::size_t>(model.shape().context - task.max_gen_toks);
          KILN_CHECK(model.shape().context > task.max_gen_toks, task.source, ": task ", task.name, ": max_gen_toks ",
                     task.max_gen_toks, " leaves no room for a prompt in the model's context of ", model.shape().context);
          SampleOptions sample;
          sample.max_tokens = task.max_gen_toks;
          sample.temperature = 0.0f;
          for (std::size_t first = 0; first < mine.size(); first += options.batch_rows) {
            const std::size_t n = std::min<std::size_t>(options.batch_rows, mine.size() - first);
            std::vector<std::vector<std::int32_t>> prompts;
            for (std::size_t i = first; i < first + n; ++i) {
              std::vector<std::int32_t> ids = tokenizer.encode_ids(prompt_text(task, t, mine[i], k));
              if (ids.size() > room) {
                ids.erase(ids.begin(), ids.end() - static_cast<std::ptrdiff_t>(room));
                ++cut;
              }
              if (ids.empty()) ids.push_back(eot);
              prompts.push_back(std::move(ids));
            }
            const auto outputs = decoder->generate(prompts, sample, eot);
            for (std::size_t i = 0; i < n; ++i) {
              const std::size_t d = mine[first + i];
              std::vector<std::uint32_t> ids(outputs[i].begin(), outputs[i].end());
              std::string text = tokenizer.decode(ids);
              for (const std::string& stop : task.until) {
                const auto at = text.find(stop);
                if (!stop.empty() && at != std::string::npos) text.resize(at);
              }
              per_doc[d * fields] = trim(text) == trim(task.target_text(t, task.docs[d]));
              // Fewer tokens than allowed: the decoder met end-of-text (it is not emitted).
              per_doc[d * fields + 1] = ids.size() < static_cast<std::size_t>(task.max_gen_toks);
              per_doc[d * fields + 2] = static_cast<double>(ids.size());
            }
          }
        }
        truncated = static_cast<double>(cut);
        const double seconds = seconds_since(t0);
        if (ranks.size > 1) ranks.sum(per_doc.data(), static_cast<std::int64_t>(per_doc.size()));
        score.truncated = static_cast<std::int64_t>(truncated);
        // Totals in document order, whatever the ranks.
        std::vector<double> total(fields, 0.0);
        for (std::size_t d = 0; d < docs; ++d)
          for (std::size_t f = 0; f < fields; ++f) total[f] += per_doc[d * fields + f];
        const double n = static_cast<double>(docs);
        if (task.rolling()) {
          const double sum = total[0], tokens = total[1], bytes = total[2];
          score.metrics = {{"perplexity", tokens > 0 ? std::exp(-sum / tokens) : 0.0},
                           {"bits_per_byte", bytes > 0 ? -sum / (bytes * std::log(2.0)) : 0.0}};
          report.mc_seconds += seconds;
        } else if (task.multiple_choice()) {
          score.metrics = {{"acc", docs ? total[0] / n : 0.0}, {"acc_norm", docs ? total[1] / n : 0.0}};
          report.mc_docs += static_cast<std::int64_t>(docs);
          report.mc_seconds += seconds;
        } else {
          score.metrics = {{"exact_match", docs ? total[0] / n : 0.0}, {"stopped_at_eot", docs ? total[1] / n : 0.0}};
          report.generated_tokens += static_cast<std::int64_t>(total[2]);
          report.gen_seconds += seconds;
        }
        report.scores.push_back(std::move(score));
      }
  }
  // The spread over templates of each task, metric and k.
  std::map<std::tuple<std::string, std::string, int>, std::vector<double>> groups;
  for (const EvalScore& s : report.scores)
    for (const auto& [metric, value] : s.metrics) groups[{s.task, metric, s.k}].push_back(value);
  for (const auto& [key, values] : groups) {
    EvalSpread sp{std::get<0>(key), std::get<1>(key), std::get<2>(key), 0, 0, 0, 0, static_cast<int>(values.size())};
    sp.mean = std::accumulate(values.begin(), values.end(), 0.0) / values.size();
    double var = 0;
    for (double v : values) var += (v - sp.mean) * (v - sp.mean);
    sp.std = std::sqrt(var / values.size());
    sp.min = *std::min_element(values.begin(), values.end());
    sp.max = *std::max_element(values.begin(), values.end());
    report.spreads.push_back(sp);
  }
  report.seconds = seconds_since(t_start);
  return report;
}

nlohmann::json EvalReport::to_json() const {
  nlohmann::json j;
  j["scores"] = nlohmann::json::array();
  for (const EvalScore& s : scores)
    j["scores"].push_back({{"task", s.task}, {"cluster", s.cluster}, {"template", s.template_name},
                           {"output_type", s.output_type}, {"k", s.k}, {"docs", s.docs},
                           {"truncated", s.truncated}, {"metrics", s.metrics}});
  j["spreads"] = nlohmann::json::array();
  for (const EvalSpread& s : spreads)
    j["spreads"].push_back({{"task", s.task}, {"metric", s.metric}, {"k", s.k}, {"templates", s.templates},
                            {"mean", s.mean}, {"std", s.std}, {"min", s.min}, {"max", s.max}});
  j["throughput"] = {{"seconds", seconds},
                     {"multiple_choice_examples_per_s", mc_seconds > 0 ? mc_docs / mc_seconds : 0.0},
                     {"generated_tokens_per_s", gen_seconds > 0 ? generated_tokens / gen_seconds : 0.0}};
  return j;
}

std::string EvalReport::table() const {
  std::string out = message("| task | template | k | docs | metric | value |\n|---|---|---|---|---|---|\n");
  char value[32];
  for (const EvalScore& s : scores)
    for (const auto& [metric, v] : s.metrics) {
      std::snprintf(value, sizeof value, "%.4f", v);
      out += message("| ", s.task, " | ", s.template_name, " | ", s.k, " | ", s.docs, " | ", metric, " | ", value, " |\n");
    }
  out += "\n| task | metric | k | templates | mean | std | min | max |\n|---|---|---|---|---|---|---|---|\n";
  for (const EvalSpread& s : spreads) {
    char row[128];
    std::snprintf(row, sizeof row, "%.4f | %.4f | %.4f | %.4f", s.mean, s.std, s.min, s.max);
    out += message("| ", s.task, " | ", s.metric, " | ", s.k, " | ", s.templates, " | ", row, " |\n");
  }
  return out;
}

}  // namespace kiln
