// Hugging Face folders made by transformers (scripts/make-hf-fixtures.py, kept in
// tests/fixtures/hf): kiln reads their config.json and weights and gives transformers' logits
// on the same token ids, and the same greedy continuations as `generate`.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/checkpoint/hf_import.h"
#include "core/model/decode.h"

namespace {

const std::string kFixtures = std::string(KILN_SOURCE_DIR) + "/tests/fixtures/hf/";

nlohmann::json expected(const std::string& name) {
  std::ifstream in(kFixtures + name + "/expected.json");
  return nlohmann::json::parse(in);
}

void check_logits_and_greedy(const std::string& name) {
  const std::string dir = kFixtures + name;
  ASSERT_TRUE(kiln::is_hf_folder(dir));
  const kiln::ModelConfig config = kiln::hf_model_config(dir);
  kiln::Gpt model(kiln::GptShape::from_config(config, config.vocab_size));
  kiln::load_hf_weights(model, dir);
  const nlohmann::json want = expected(name);
  const auto ids = want["ids"].get<std::vector<std::vector<std::int32_t>>>();
  kiln::Batch batch;
  batch.batch = static_cast<int>(ids.size());
  batch.seq_len = static_cast<int>(ids[0].size());
  for (const auto& row : ids) {
    batch.inputs.insert(batch.inputs.end(), row.begin(), row.end());
    batch.targets.insert(batch.targets.end(), row.begin(), row.end());
  }
  model.forward(batch);
  const int vp = model.shape().padded_vocab, vocab = config.vocab_size;
  double worst = 0.0;
  for (int b = 0; b < batch.batch; ++b)
    for (int t = 0; t < batch.seq_len; ++t)
      for (int v = 0; v < vocab; ++v) {
        const double ref = want["logits"][b][t][v].get<double>();
        const double got = model.logits().f32()[(b * batch.seq_len + t) * vp + v];
        worst = std::max(worst, std::abs(got - ref));
        ASSERT_NEAR(got, ref, 1e-4 + 1e-4 * std::abs(ref)) << name << " sequence " << b << " position " << t << " token " << v;
      }
  ::testing::Test::RecordProperty("max_abs_logit_diff", std::to_string(worst));
  std::printf("%s: largest logit difference from transformers %.3g\n", name.c_str(), worst);
  kiln::SampleOptions greedy;
  greedy.temperature = 0.0f;
  greedy.max_tokens = static_cast<int>(want["greedy"][0].size());
  greedy.stop_at_eot = false;
  const auto tokens = kiln::Decoder(model).generate(ids, greedy, 0);
  EXPECT_EQ(tokens, want["greedy"].get<std::vector<std::vector<std::int32_t>>>());
}

}  // namespace

TEST(HfImport, Gpt2GivesTransformersLogitsAndGreedyTokens) { check_logits_and_greedy("gpt2"); }
TEST(HfImport, LlamaWithGroupedKvHeadsGivesTransformersLogitsAndGreedyTokens) { check_logits_and_greedy("llama"); }

TEST(HfImport, ConfigFieldsKilnDoesNotImplementAreNamed) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / "kiln_hf_config_test";
  fs::create_directories(dir);
  auto error_for = [&](const std::string& json) {
    std::ofstream(dir / "config.json") << json;
    try {
      kiln::hf_model_config(dir.string());
    } catch (const kiln::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string llama = R"({"model_type": "llama", "vocab_size": 10, "num_hidden_layers": 1, )"
                            R"("num_attention_heads": 2, "hidden_size": 8, "max_position_embeddings": 16, )"
                            R"("intermediate_size": 16)";
  EXPECT_NE(error_for(llama + R"(, "rope_scaling": {"type": "linear", "factor": 2.0}})").find("'rope_scaling'"),
            std::string::npos);
  EXPECT_NE(error_for(llama + R"(, "attention_bias": true})").find("'attention_bias'"), std::string::npos);
  EXPECT_NE(error_for(llama + R"(, "hidden_act": "gelu"})").find("hidden_act 'gelu'"), std::string::npos);
  EXPECT_NE(error_for(R"({"model_type": "mistral", "vocab_size": 10})").find("model_type 'mistral'"), std::string::npos);
  EXPECT_NE(error_for(R"({"model_type": "llama", "vocab_size": 10})").find("'num_hidden_layers' is missing"),
            std::string::npos);
  EXPECT_NE(error_for("{not json").find("not valid JSON"), std::string::npos);
  EXPECT_EQ(error_for(llama + "}"), "no error");
  fs::remove_all(dir);
}
