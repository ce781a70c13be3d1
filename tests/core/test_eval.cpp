// The evaluator: rank classification against a direct computation from the logits, scores that
// do not depend on the batch size, stop strings in generation, and task files whose mistakes are
// errors naming the file and the key.
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include "core/data/tokenize.h"
#include "core/data/tokenizer.h"
#include "core/eval/corpus_tasks.h"
#include "core/rng.h"
#include "kernels/error.h"
#include "core/eval/evaluator.h"
#include "core/eval/suite.h"
#include "core/data/instruct.h"
#include "core/model/decode.h"
#include "core/model/gpt.h"
#include "eval_model.h"

namespace fs = std::filesystem;

namespace {

class EvalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_eval_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream docs(dir_ / "docs.jsonl");
    docs << R"({"q": "2+2", "options": ["4", "five", "22"], "label": 0, "empty": ""})" << "\n"
         << R"({"q": "color of sky", "options": ["blue", "green"], "label": [0, 1], "empty": ""})" << "\n"
         << R"({"q": "first letter", "options": ["a", "b", "c", "d"], "label": "c", "empty": ""})" << "\n";
    std::ofstream shots(dir_ / "shots.jsonl");
    for (int i = 0; i < 5; ++i)
      shots << R"({"q": "q)" << i << R"(", "options": ["x", "y"], "label": 1, "empty": ""})" << "\n";
    shape_ = kiln::testing::eval_test_shape(tokenizer_->vocab_size());
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(dir_ / name) << text;
    return (dir_ / name).string();
  }
  std::string mc_task(const std::string& extra = "") const {
    return write("mc.yaml", "task: quiz\ncluster: trivia\noutput_type: multiple_choice\ndataset: docs.jsonl\n"
                            "fewshot_dataset: shots.jsonl\ndoc_to_choice: options\ndoc_to_target: label\n"
                            "templates:\n  - {name: plain, doc_to_text: \"{q}\"}\n"
                            "  - {name: qa, doc_to_text: \"Question: {q}\\nAnswer:\"}\n" + extra);
  }
  std::string error_of(const std::string& yaml) const {
    try {
      kiln::load_eval_tasks(write("bad.yaml", yaml));
    } catch (const kiln::Error& e) {
      return e.what();
    }
    return "no error";
  }

  fs::path dir_;
  std::unique_ptr<kiln::Tokenizer> tokenizer_ = kiln::make_tokenizer("byte", "");
  kiln::GptShape shape_;
};

}  // namespace

// Each option's score is the sum over its tokens of log softmax(logits)[token], read here from
// the logits of a plain forward pass over context + option; acc picks the best option, acc_norm
// the best per character, several gold options allowed.
TEST_F(EvalTest, RankClassificationEqualsADirectComputation) {
  kiln::Gpt model(shape_);
  model.init_weights(11, 0.5f);
  const auto tasks = kiln::load_eval_tasks(mc_task("num_fewshot: [0, 2]\n"));
  const kiln::EvalTask& task = tasks[0];
  double acc = 0, acc_norm = 0;
  const kiln::EvalTemplate& t = task.templates[1];
  for (std::size_t d = 0; d < task.docs.size(); ++d) {
    const std::string prompt = task.text(t, task.docs[d]);
    const auto options = task.choices(t, task.docs[d]);
    std::vector<double> direct;
    std::vector<kiln::LoglikelihoodRequest> requests;
    for (const std::string& option : options) {
      std::vector<std::int32_t> ctx, cont;
      for (auto id : tokenizer_->encode(prompt)) ctx.push_back(static_cast<std::int32_t>(id));
      for (auto id : tokenizer_->encode(" " + option)) cont.push_back(static_cast<std::int32_t>(id));
      requests.push_back({ctx, cont});
      std::vector<std::int32_t> row = ctx;
      row.insert(row.end(), cont.begin(), cont.end());
      kiln::Batch b;
      b.batch = 1;
      b.seq_len = static_cast<int>(row.size()) - 1;
      b.inputs.assign(row.begin(), row.end() - 1);
      b.targets.assign(row.begin() + 1, row.end());
      model.forward(b);
      const float* logits = model.logits().f32();
      double sum = 0;
      for (std::size_t j = ctx.size() - 1; j + 1 < row.size(); ++j) {
        const float* l = logits + j * shape_.padded_vocab;
        double z = 0, m = -1e300;
        for (int v = 0; v < shape_.vocab; ++v) m = std::max(m, static_cast<double>(l[v]));
        for (int v = 0; v < shape_.vocab; ++v) z += std::exp(l[v] - m);
        sum += l[row[j + 1]] - m - std::log(z);
      }
      direct.push_back(sum);
    }
    const std::vector<double> scored = kiln::loglikelihoods(model, requests, 2);
    for (std::size_t i = 0; i < options.size(); ++i) EXPECT_NEAR(scored[i], direct[i], 1e-4) << d << " " << i;
    const auto gold = task.gold(t, task.docs[d]);
    std::size_t best = 0, best_norm = 0;
    for (std::size_t i = 1; i < options.size(); ++i) {
      if (direct[i] > direct[best]) best = i;
      if (direct[i] / (options[i].size() + 1) > direct[best_norm] / (options[best_norm].size() + 1)) best_norm = i;
    }
    acc += std::count(gold.begin(), gold.end(), static_cast<int>(best)) > 0;
    acc_norm += std::count(gold.begin(), gold.end(), static_cast<int>(best_norm)) > 0;
  }
  const kiln::EvalReport report = kiln::evaluate(model, *tokenizer_, tasks, {});
  ASSERT_EQ(report.scores.size(), 4u);  // 2 templates x k in {0, 2}
  const kiln::EvalScore& qa0 = report.scores[2];
  EXPECT_EQ(qa0.template_name, "qa");
  EXPECT_EQ(qa0.k, 0);
  EXPECT_DOUBLE_EQ(qa0.metrics.at("acc"), acc / 3);
  EXPECT_DOUBLE_EQ(qa0.metrics.at("acc_norm"), acc_norm / 3);
  // The spread over the two templates, per metric and k.
  ASSERT_EQ(report.spreads.size(), 4u);
  for (const kiln::EvalSpread& s : report.spreads) {
    EXPECT_EQ(s.templates, 2);
    EXPECT_LE(s.min, s.mean);
    EXPECT_GE(s.max, s.mean);
    EXPECT_NEAR(s.std, (s.max - s.min) / 2, 1e-12);  // two values
  }
}

// Scores are the same whatever the batch size (each request in its own row).
TEST_F(EvalTest, ScoresDoNotDependOnTheBatchSize) {
  kiln::Gpt model(shape_);
  model.init_weights(12, 0.5f);
  const auto tasks = kiln::load_eval_tasks(mc_task("num_fewshot: [0, 3]\n"));
  std::vector<kiln::LoglikelihoodRequest> requests;
  for (int i = 0; i < 11; ++i) {
    std::vector<std::int32_t> ctx(3 + i * 3), cont(1 + i % 4);
    for (std::size_t j = 0; j < ctx.size(); ++j) ctx[j] = static_cast<std::int32_t>((i * 31 + j * 7) % 256);
    for (std::size_t j = 0; j < cont.size(); ++j) cont[j] = static_cast<std::int32_t>((i + j * 13) % 256);
    requests.push_back({ctx, cont});
  }
  const std::vector<double> one = kiln::loglikelihoods(model, requests, 1);
  for (int rows : {2, 5, 16}) {
    const std::vector<double> many = kiln::loglikelihoods(model, requests, rows);
    for (std::size_t i = 0; i < one.size(); ++i) EXPECT_NEAR(many[i], one[i], 1e-5 * std::abs(one[i])) << rows << " " << i;
  }
  kiln::EvalOptions a, b;
  a.batch_rows = 1;
  b.batch_rows = 7;
  const auto ra = kiln::evaluate(model, *tokenizer_, tasks, a).to_json()["scores"];
  const auto rb = kiln::evaluate(model, *tokenizer_, tasks, b).to_json()["scores"];
  EXPECT_EQ(ra, rb);
}

// Generation stops at a stop string: with the first character the model generates as the stop
// string, the answer is empty and matches an empty gold answer; without it, it does not.
TEST_F(EvalTest, GenerationCutsAtStopStringsAndTrims) {
  // A random model (the first seed whose greedy answer to "2+2" starts with a letter or digit).
  kiln::Gpt model(shape_);
  kiln::SampleOptions greedy;
  greedy.temperature = 0.0f;
  greedy.max_tokens = 4;
  std::vector<std::int32_t> prompt;
  for (auto id : tokenizer_->encode("2+2")) prompt.push_back(static_cast<std::int32_t>(id));
  std::string first;
  std::size_t generated = 0;
  for (std::uint64_t seed = 13; seed < 400 && first.empty(); ++seed) {
    model.init_weights(seed, 0.5f);
    kiln::Decoder decoder(model);
    const auto out = decoder.generate({prompt}, greedy, static_cast<std::int32_t>(tokenizer_->eot()));
    if (!out[0].empty() && out[0][0] < 128 && std::isalnum(out[0][0])) {
      first = std::string(1, static_cast<char>(out[0][0]));
      generated = out[0].size();
    }
  }
  ASSERT_FALSE(first.empty());
  nlohmann::json stop = nlohmann::json::array({first});
  const std::string gen = "task: g\noutput_type: generate_until\ndataset: docs.jsonl\ndoc_to_text: \"{q}\"\n"
                          "doc_to_target: \"{empty}\"\ngeneration: {max_gen_toks: 4";
  auto metrics = [&](const std::string& yaml) {
    kiln::EvalOptions o;
    o.limit = 1;
    return kiln::evaluate(model, *tokenizer_, kiln::load_eval_tasks(write("gen.yaml", yaml)), o).scores[0].metrics;
  };
  EXPECT_EQ(metrics(gen + ", until: " + stop.dump() + "}\n").at("exact_match"), 1.0);
  const auto plain = metrics(gen + "}\n");
  EXPECT_EQ(plain.at("exact_match"), 0.0);
  // stopped_at_eot: the decoder met end-of-text before max_gen_toks (4).
  EXPECT_EQ(plain.at("stopped_at_eot"), generated < 4 ? 1.0 : 0.0);
}

TEST_F(EvalTest, BadTaskFilesNameTheFileAndTheKey) {
  const std::string ok = "task: quiz\noutput_type: multiple_choice\ndataset: docs.jsonl\ndoc_to_choice: options\n"
                         "doc_to_target: label\ndoc_to_text: \"{q}\"\n";
  EXPECT_EQ(error_of(ok), "no error");
  std::string e = error_of(ok + "shots: 2\n");
  EXPECT_NE(e.find("bad.yaml:7"), std::string::npos) << e;
  EXPECT_NE(e.find("no field 'shots'"), std::string::npos) << e;
  e = error_of("task: quiz\noutput_type: multiple_choice\ndataset: docs.jsonl\ndoc_to_choice: options\n"
               "doc_to_target: label\ndoc_to_text: \"{question}\"\n");
  EXPECT_NE(e.find("docs.jsonl:1"), std::string::npos) << e;
  EXPECT_NE(e.find("'question'"), std::string::npos) << e;
  e = error_of(ok + "fewshot_dataset: shots.jsonl\nnum_fewshot: [0, 6]\n");
  EXPECT_NE(e.find("num_fewshot 6 is larger than the 5 exemplars"), std::string::npos) << e;
  e = error_of("task: quiz\noutput_type: multiple_choice\ndataset: docs.jsonl\ndoc_to_choice: choices\n"
               "doc_to_target: label\ndoc_to_text: \"{q}\"\n");
  EXPECT_NE(e.find("'choices'"), std::string::npos) << e;
  e = error_of("task: quiz\noutput_type: ranking\ndataset: docs.jsonl\ndoc_to_text: \"{q}\"\n");
  EXPECT_NE(e.find("output_type 'ranking'"), std::string::npos) << e;
  e = error_of("task: quiz\noutput_type: multiple_choice\ndataset: nowhere.jsonl\n");
  EXPECT_NE(e.find("nowhere.jsonl does not exist"), std::string::npos) << e;
}

// The built-in suite: 12 tasks in 4 clusters, 5 templates each (4 seen, 1 unseen), every
// evaluation file and mixture loads (so every template fits every record), the same seed writes
// the same files, and holding a cluster out leaves its 3 tasks out of training.
TEST_F(EvalTest, TaskSuiteLoadsAndIsSeeded) {
  const std::string a = (dir_ / "a").string(), b = (dir_ / "b").string(), c = (dir_ / "c").string();
  const auto files = kiln::write_task_suite(a, 7, {20, 5, 10});
  kiln::write_task_suite(b, 7, {20, 5, 10});
  kiln::write_task_suite(c, 8, {20, 5, 10});
  auto read = [](const fs::path& p) {
    std::ifstream in(p);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  std::set<std::string> clusters;
  int tasks = 0, different = 0;
  for (const std::string& f : files) {
    const fs::path p(f);
    EXPECT_EQ(read(p), read(fs::path(b) / p.filename())) << f;
    different += read(p) != read(fs::path(c) / p.filename());
    if (f.find(".eval.yaml") == std::string::npos) continue;
    for (const kiln::EvalTask& t : kiln::load_eval_tasks(f)) {
      ++tasks;
      clusters.insert(t.cluster);
      // 3 cues x 4 frames, one pair held out of tuning, and 3 in the novel frame.
      EXPECT_EQ(t.templates.size(), 15u) << t.name;
      EXPECT_EQ(t.docs.size(), 10u);
      int unseen = 0, novel = 0;
      const std::string tuning = read(fs::path(a) / (t.name + ".templates.yaml"));
      for (const kiln::EvalTemplate& tt : t.templates) {
        const bool held = tt.name.rfind("unseen_", 0) == 0, new_frame = tt.name.rfind("novel_", 0) == 0;
        unseen += held;
        novel += new_frame;
        // The tuning set holds every template but these (an unseen one under its plain name too).
        const bool in_tuning = tuning.find("{name: " + (held ? tt.name.substr(7) : tt.name) + ",") != std::string::npos;
        EXPECT_EQ(in_tuning, !held && !new_frame) << t.name << " " << tt.name;
      }
      EXPECT_EQ(unseen, 1) << t.name;
      EXPECT_EQ(novel, 3) << t.name;
    }
  }
  EXPECT_EQ(tasks, 12);
  EXPECT_EQ(clusters.size(), 4u);
  EXPECT_GT(different, 12);  // another seed, other records
  auto tok = kiln::make_tokenizer("byte", "");
  const kiln::MixtureConfig all = kiln::MixtureConfig::load(a + "/mixture_train.yaml");
  EXPECT_EQ(all.tasks.size(), 12u);
  EXPECT_EQ(kiln::InstructMixture(all, *tok).size(), 240u);
  const kiln::MixtureConfig without = kiln::MixtureConfig::load(a + "/mixture_train_without_rules.yaml");
  EXPECT_EQ(without.tasks.size(), 9u);
  EXPECT_EQ(without.held_out.size(), 3u);
}

// Rolling log-likelihood: windows cover every token once, each within the model's context; a
// text shorter than the context scores as one pass after end-of-text; perplexity and bits per
// byte follow from the sum.
TEST_F(EvalTest, RollingLoglikelihoodCoversEveryTokenOnce) {
  std::vector<std::int32_t> ids(150);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>((i * 37) % 256);
  const auto requests = kiln::rolling_requests(ids, 256, 64);
  std::vector<std::int32_t> covered;
  for (const auto& r : requests) {
    EXPECT_LE(r.context.size() + r.continuation.size(), 64u);
    covered.insert(covered.end(), r.continuation.begin(), r.continuation.end());
  }
  EXPECT_EQ(covered, ids);
  EXPECT_EQ(requests[0].context, std::vector<std::int32_t>{256});
  EXPECT_EQ(requests[1].context.size(), 32u);  // after the first window: the 32 tokens before it, no eot
  kiln::Gpt model(shape_);
  model.init_weights(14, 0.5f);
  std::ofstream(dir_ / "text.jsonl") << R"({"text": "the quick brown fox"})" << "\n"
                                     << R"({"text": "jumps over the lazy dog"})" << "\n";
  const auto tasks = kiln::load_eval_tasks(
      write("ppl.yaml", "task: text\noutput_type: loglikelihood_rolling\ndataset: text.jsonl\ndoc_to_text: \"{text}\"\n"));
  const kiln::EvalReport report = kiln::evaluate(model, *tokenizer_, tasks, {});
  double sum = 0, tokens = 0;
  for (const std::string text : {"the quick brown fox", "jumps over the lazy dog"}) {
    std::vector<std::int32_t> t;
    for (auto id : tokenizer_->encode(text)) t.push_back(static_cast<std::int32_t>(id));
    sum += kiln::loglikelihoods(model, {{{static_cast<std::int32_t>(tokenizer_->eot())}, t}}, 1)[0];
    tokens += static_cast<double>(t.size());  // bytes: one token each
  }
  ASSERT_EQ(report.scores.size(), 1u);
  EXPECT_NEAR(report.scores[0].metrics.at("perplexity"), std::exp(-sum / tokens), 1e-9 * std::exp(-sum / tokens));
  EXPECT_NEAR(report.scores[0].metrics.at("bits_per_byte"), -sum / (tokens * std::log(2.0)), 1e-9);
  EXPECT_EQ(report.scores[0].truncated, 0);
}

// A corpus of 400 documents of 12 words each from a 30-word vocabulary ("%" between documents).
static std::vector<std::string> probe_corpus(const fs::path& file) {
  const std::vector<std::string> vocab = {
      "anchor", "balloon", "candle", "dragon", "empire", "forest", "garden", "harbor", "island", "jungle",
      "kettle", "lantern", "meadow", "needle", "orange", "pepper", "quartz", "ribbon", "saddle", "tunnel",
      "valley", "walnut", "window", "yellow", "zipper", "the", "and", "was", "for", "its"};
  std::vector<std::string> docs;
  std::string text;
  kiln::Rng rng(5, 5);
  for (int d = 0; d < 400; ++d) {
    std::string doc;
    for (int w = 0; w < 12; ++w) doc += (w ? " " : "") + vocab[rng.u64(d * 12 + w) % vocab.size()];
    docs.push_back(doc);
    text += doc + "\n%\n";
  }
  std::ofstream(file) << text;
  return docs;
}

// kiln tasks --corpus: both probes load with 4 templates and k = 0, 1, 2, 4, 8; every record has
// 4 distinct options with the gold among them; word_end completes a word of the scored half and
// its exemplars use the other half; next_word's scored fragments come from validation documents
// and its exemplars from training documents, as the training split draws them; seeded.
TEST_F(EvalTest, CorpusProbesFollowTheTrainingSplit) {
  const fs::path corpus = dir_ / "corpus.txt";
  const std::vector<std::string> docs = probe_corpus(corpus);
  kiln::CorpusTaskOptions o;
  o.inputs = {corpus.string()};
  o.separator = "%";
  o.train = 50;
  o.test = 40;
  const auto files = kiln::write_corpus_tasks((dir_ / "a").string(), o);
  EXPECT_EQ(files.size(), 6u);
  kiln::write_corpus_tasks((dir_ / "b").string(), o);
  o.seed = 99;
  kiln::write_corpus_tasks((dir_ / "c").string(), o);
  auto read = [](const fs::path& p) {
    std::ifstream in(p);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  for (const std::string& f : files) {
    EXPECT_EQ(read(f), read(dir_ / "b" / fs::path(f).filename())) << f;
    if (f.find(".yaml") == std::string::npos) EXPECT_NE(read(f), read(dir_ / "c" / fs::path(f).filename())) << f;
  }
  kiln::TokenizeOptions split;
  const std::vector<bool> is_val = kiln::validation_documents(split, docs.size());
  auto in_split = [&](const std::string& fragment, bool val) {
    for (std::size_t i = 0; i < docs.size(); ++i)
      if (is_val[i] == val && docs[i].find(fragment) != std::string::npos) return true;
    return false;
  };
  std::set<std::string> scored_words, exemplar_words;
  for (const char* name : {"word_end", "next_word"}) {
    const std::vector<kiln::EvalTask> tasks = kiln::load_eval_tasks((dir_ / "a" / (std::string(name) + ".eval.yaml")).string());
    ASSERT_EQ(tasks.size(), 1u);
    const kiln::EvalTask& t = tasks[0];
    EXPECT_TRUE(t.multiple_choice());
    EXPECT_EQ(t.templates.size(), 4u);
    EXPECT_EQ(t.num_fewshot, (std::vector<int>{0, 1, 2, 4, 8}));
    EXPECT_EQ(t.docs.size(), 40u);
    EXPECT_EQ(t.fewshot.size(), 50u);
    for (int split_index = 0; split_index < 2; ++split_index)
      for (const kiln::EvalDoc& d : split_index ? t.fewshot : t.docs) {
        const auto options = d.record["options"].get<std::vector<std::string>>();
        const std::string x = d.record["x"], gold = d.record["output"];
        ASSERT_EQ(options.size(), 4u) << d.where;
        EXPECT_EQ(std::set<std::string>(options.begin(), options.end()).size(), 4u) << d.where;
        EXPECT_EQ(options[d.record["label"].get<int>()], gold) << d.where;
        if (std::string(name) == "word_end") {
          (split_index ? exemplar_words : scored_words).insert(x + gold);
          EXPECT_GE(x.size(), 3u);
          EXPECT_GE(gold.size(), 3u);
          for (const std::string& option : options) EXPECT_EQ(option.size(), gold.size()) << d.where;
        } else {
          EXPECT_TRUE(in_split(x + " " + gold, split_index == 0)) << d.where << ": " << x << " " << gold;
        }
      }
  }
  for (const std::string& w : scored_words) EXPECT_EQ(exemplar_words.count(w), 0u) << w;
  EXPECT_GE(scored_words.size(), 5u);
  // Too small a corpus is refused, naming it and the need.
  std::ofstream(dir_ / "small.txt") << "one small document\n%\nand another\n";
  o.inputs = {(dir_ / "small.txt").string()};
  try {
    kiln::write_corpus_tasks((dir_ / "d").string(), o);
    FAIL() << "a corpus without common words was accepted";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("small.txt: 0 common words"), std::string::npos) << e.what();
  }
}
