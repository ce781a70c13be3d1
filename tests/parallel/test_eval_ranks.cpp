// Evaluation scores do not depend on the number of ranks: the ranks of this mpirun share the
// documents (kiln eval under mpirun, train.eval_tasks with several ranks), and every rank ends with
// exactly the scores one process computes alone, for generation, multiple choice and rolling
// log-likelihood, zero- and one-shot, over document counts that do not divide evenly.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/data/tokenizer.h"
#include "core/eval/evaluator.h"
#include "core/eval/suite.h"
#include "core/model/gpt.h"
#include "eval_model.h"
#include "test_world.h"

namespace fs = std::filesystem;
using kiln::testing::world;

TEST(EvalRanks, ScoresEqualOneProcessAlone) {
  // Each rank writes its own copy of the (seeded, so identical) task files.
  const fs::path dir = fs::temp_directory_path() / ("kiln_eval_ranks_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  kiln::write_task_suite(dir.string(), 3, {16, 2, 9});
  std::ofstream(dir / "text.jsonl") << R"({"text": "the quick brown fox jumps over the lazy dog"})" << "\n"
                                    << R"({"text": "pack my box with five dozen liquor jugs"})" << "\n"
                                    << R"({"text": "how vexingly quick daft zebras jump"})" << "\n";
  std::ofstream(dir / "text.yaml") << "task: text\noutput_type: loglikelihood_rolling\ndataset: text.jsonl\n"
                                      "doc_to_text: \"{text}\"\n";
  std::vector<kiln::EvalTask> tasks;
  for (const char* file : {"reverse.eval.yaml", "add.eval.yaml", "parity.eval.yaml", "text.yaml"})
    for (kiln::EvalTask& t : kiln::load_eval_tasks((dir / file).string())) tasks.push_back(std::move(t));

  const auto tokenizer = kiln::make_tokenizer("byte", "");
  kiln::Gpt model(kiln::testing::eval_test_shape(tokenizer->vocab_size()));
  model.init_weights(21, 1.0f);

  kiln::EvalOptions options;
  options.batch_rows = 4;
  options.num_fewshot = {0, 1};
  const kiln::EvalReport alone = kiln::evaluate(model, *tokenizer, tasks, options);
  options.ranks = {world().rank(), world().size(), [](double* v, std::int64_t n) { world().sum(v, n); }};
  const kiln::EvalReport shared = kiln::evaluate(model, *tokenizer, tasks, options);

  ASSERT_EQ(shared.scores.size(), alone.scores.size());
  int varied = 0;  // scores strictly between 0 and 1: per-document results that differ
  for (std::size_t i = 0; i < alone.scores.size(); ++i) {
    const kiln::EvalScore &a = alone.scores[i], &s = shared.scores[i];
    SCOPED_TRACE(a.task + " " + a.template_name + " k=" + std::to_string(a.k));
    EXPECT_EQ(s.docs, a.docs);
    EXPECT_EQ(s.truncated, a.truncated);
    EXPECT_EQ(s.metrics, a.metrics);  // bit for bit
    for (const auto& [metric, value] : a.metrics) varied += value > 0 && value < 1 && metric != "perplexity";
  }
  EXPECT_GT(varied, 0) << "every score is 0 or 1: the test would not see documents dropped or counted twice";
  EXPECT_EQ(shared.mc_docs, alone.mc_docs);
  EXPECT_EQ(shared.generated_tokens, alone.generated_tokens);
  fs::remove_all(dir);
}
