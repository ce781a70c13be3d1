// Hugging Face folders made by transformers (scripts/make-hf-fixtures.py, kept in
// tests/fixtures/hf): kiln reads their config.json and weights and gives transformers' logits
// on the same token ids, and the same greedy continuations as `generate`.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/checkpoint/hugging_face.h"
#include "core/checkpoint/model_io.h"
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
  // Llama 3's scaling is read, and written back by export's config.json.
  std::ofstream(dir / "config.json") << llama + R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, )"
                                                R"("low_freq_factor": 1.0, "high_freq_factor": 4.0, )"
                                                R"("original_max_position_embeddings": 8192}})";
  const kiln::ModelConfig llama3 = kiln::hf_model_config(dir.string());
  EXPECT_EQ(llama3.rope_scaling, "llama3");
  EXPECT_EQ(llama3.rope_original_context, 8192);
  const nlohmann::json back = kiln::hf_config_json(kiln::GptShape::from_config(llama3, 10));
  EXPECT_EQ(back["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(back["rope_scaling"]["factor"], 8.0);
  EXPECT_EQ(back["rope_scaling"]["original_max_position_embeddings"], 8192);
  EXPECT_NE(error_for(llama + R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})").find("'low_freq_factor' is missing"),
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

// Import then save: kiln's model.safetensors of an imported Hugging Face model holds the same
// tensors, name for name and bit for bit, as the folder it came from (the LLaMA in Hugging
// Face's layout, GPT-2 in its own); loading it back gives the same parameters.
TEST(HfImport, ImportThenSaveIsTensorForTensorIdentical) {
  for (const std::string name : {"gpt2", "llama"}) {
    SCOPED_TRACE(name);
    const std::string dir = kFixtures + name;
    const kiln::ModelConfig config = kiln::hf_model_config(dir);
    const kiln::GptShape shape = kiln::GptShape::from_config(config, config.vocab_size);
    kiln::Gpt model(shape), again(shape);
    kiln::load_hf_weights(model, dir);
    const std::string path = ::testing::TempDir() + "kiln_hf_roundtrip_" + name + ".safetensors";
    kiln::save_model(model, path);
    const kiln::SafetensorsFile original(dir + "/model.safetensors"), saved(path);
    std::vector<std::string> expected_names;
    for (const std::string& n : original.names())
      if (n.find(".attn.bias") == std::string::npos && n.find(".attn.masked_bias") == std::string::npos)
        expected_names.push_back(n);
    std::vector<std::string> saved_names = saved.names(), want = expected_names;
    std::sort(saved_names.begin(), saved_names.end());
    std::sort(want.begin(), want.end());
    auto strip = [](std::string n) { return n.rfind("transformer.", 0) == 0 ? n.substr(12) : n; };
    for (std::string& n : saved_names) n = strip(n);
    for (std::string& n : want) n = strip(n);
    std::sort(saved_names.begin(), saved_names.end());
    std::sort(want.begin(), want.end());
    EXPECT_EQ(saved_names, want);
    for (const std::string& n : saved.names()) {
      const std::string in_original = original.contains(n) ? n : strip(n);
      ASSERT_TRUE(original.contains(in_original)) << n;
      const kiln::Tensor a = saved.load(n), b = original.load(in_original);
      ASSERT_EQ(a.shape(), b.shape()) << n;
      EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << n;
    }
    kiln::load_model(again, path);
    EXPECT_EQ(std::memcmp(model.parameter_buffer().f32(), again.parameter_buffer().f32(),
                          model.parameter_buffer().nbytes()), 0);
    std::remove(path.c_str());
  }
}

// The config.json kiln writes beside its weights names what transformers needs.
TEST(HfImport, ConfigJsonForBothArchitectures) {
  for (const std::string name : {"gpt2", "llama"}) {
    const kiln::ModelConfig config = kiln::hf_model_config(kFixtures + name);
    const nlohmann::json written = kiln::hf_config_json(kiln::GptShape::from_config(config, config.vocab_size));
    const nlohmann::json original = expected(name).is_null() ? nlohmann::json() : nlohmann::json::parse(
        std::ifstream(kFixtures + name + "/config.json"));
    for (const char* key : {"model_type", "vocab_size", "n_embd", "n_layer", "n_head", "n_positions", "hidden_size",
                            "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                            "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings"})
      if (original.contains(key)) EXPECT_EQ(written.at(key), original.at(key)) << name << " " << key;
  }
  kiln::GptShape post;
  post.n_layer = post.n_head = 1;
  post.n_embd = post.context = 8;
  post.vocab = post.padded_vocab = 8;
  post.post_norm = true;
  EXPECT_TRUE(kiln::hf_config_json(post).is_null());  // no Hugging Face counterpart
}

// Export with a small shard size: several files and an index, which import reads back to the
// same parameters; a model transformers has no counterpart for is refused.
TEST(HfImport, ShardedExportReadsBack) {
  namespace fs = std::filesystem;
  const std::string dir = kFixtures + "llama";
  const kiln::ModelConfig config = kiln::hf_model_config(dir);
  const kiln::GptShape shape = kiln::GptShape::from_config(config, config.vocab_size);
  kiln::Gpt model(shape), again(shape);
  kiln::load_hf_weights(model, dir);
  const fs::path out = fs::temp_directory_path() / "kiln_hf_export_test";
  fs::remove_all(out);
  const auto files = kiln::export_hf(model, out.string(), 2, 20000);
  EXPECT_GT(files.size(), 4u);
  EXPECT_TRUE(fs::exists(out / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
  EXPECT_EQ(kiln::hf_model_config(out.string()).n_kv_head, 2);
  kiln::load_hf_weights(again, out.string());
  EXPECT_EQ(std::memcmp(model.parameter_buffer().f32(), again.parameter_buffer().f32(),
                        model.parameter_buffer().nbytes()), 0);
  kiln::GptShape post = shape;
  post.post_norm = true;
  kiln::Gpt post_model(post);
  try {
    kiln::export_hf(post_model, out.string(), 2, 1 << 20);
    ADD_FAILURE() << "a post-norm model was exported";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no Hugging Face counterpart"), std::string::npos) << e.what();
  }
  fs::remove_all(out);
}
