// Tests for core/data/gpt2_bpe: exact id parity with tiktoken's GPT-2 encoding (fixture written
// by tests/reference/make_bpe_fixture.py), decode round trips, special-token handling,
// encode_batch == sequential encode, and the errors for missing or garbled vocabulary files.
// The vocabulary is read from ../shared/data/gpt2-bpe beside the checkout; without it these
// tests fail (they never skip), since they are the only check of the GPT-2 tokenizer.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/data/gpt2_bpe.h"
#include "core/data/tokenizer.h"
#include "error_of.h"
#include "kernels/error.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

const std::string kBpeDir = KILN_SOURCE_DIR "/../shared/data/gpt2-bpe";

std::string missing_vocab_message() {
  return "the GPT-2 vocabulary is missing: expected encoder.json and vocab.bpe in " + kBpeDir +
         " (the shared data folder beside the checkout; see its README.md)";
}

// One tokenizer for all tests (loading takes a fraction of a second).
const Gpt2Bpe* shared_tokenizer() {
  static std::unique_ptr<Gpt2Bpe> tokenizer = [] {
    if (!fs::exists(kBpeDir + "/encoder.json") || !fs::exists(kBpeDir + "/vocab.bpe"))
      return std::unique_ptr<Gpt2Bpe>();
    return std::make_unique<Gpt2Bpe>(kBpeDir);
  }();
  return tokenizer.get();
}

nlohmann::json fixture() {
  std::ifstream in(KILN_SOURCE_DIR "/tests/data/bpe/fixture.json");
  EXPECT_TRUE(in) << "tests/data/bpe/fixture.json is missing; run tests/reference/make_bpe_fixture.py";
  return nlohmann::json::parse(in);
}

std::vector<std::uint32_t> ids_of(const nlohmann::json& j) {
  return j.get<std::vector<std::uint32_t>>();
}

using kiln::testing::error_of;

// A scratch folder holding copies (or damaged versions) of the vocabulary files.
struct ScratchDir {
  fs::path path;
  ScratchDir() {
    path = fs::temp_directory_path() / ("kiln_bpe_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(reinterpret_cast<std::uintptr_t>(this)));
    fs::create_directories(path);
  }
  ~ScratchDir() { fs::remove_all(path); }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name, std::ios::binary) << text;
  }
  void copy(const std::string& name) const { fs::copy_file(kBpeDir + "/" + name, path / name); }
};

TEST(Gpt2Bpe, VocabularyFolderIsPresent) {
  ASSERT_NE(shared_tokenizer(), nullptr) << missing_vocab_message();
  const Gpt2Bpe& tok = *shared_tokenizer();
  EXPECT_EQ(tok.name(), "gpt2");
  EXPECT_EQ(tok.vocab_size(), 50257);
  EXPECT_EQ(tok.eot(), 50256u);
}

TEST(Gpt2Bpe, MatchesTiktokenExactly) {
  ASSERT_NE(shared_tokenizer(), nullptr) << missing_vocab_message();
  const Gpt2Bpe& tok = *shared_tokenizer();
  const nlohmann::json cases = fixture()["ordinary"];
  ASSERT_GE(cases.size(), 30u);
  for (const auto& c : cases) {
    const std::string text = c["text"].get<std::string>();
    const std::vector<std::uint32_t> ids = tok.encode(text);
    EXPECT_EQ(ids, ids_of(c["ids"])) << "text: '" << text << "'";
    EXPECT_EQ(tok.decode(ids), text);
    // A second encode hits the piece cache and must not change anything.
    EXPECT_EQ(tok.encode(text), ids);
  }
}

TEST(Gpt2Bpe, KnownIds) {
  ASSERT_NE(shared_tokenizer(), nullptr) << missing_vocab_message();
  const Gpt2Bpe& tok = *shared_tokenizer();
  EXPECT_EQ(tok.encode("Hello world"), (std::vector<std::uint32_t>{15496, 995}));
  EXPECT_EQ(tok.decode({50256}), "<|endoftext|>");
  EXPECT_TRUE(tok.encode("").empty());
}

TEST(Gpt2Bpe, SpecialTokenOnlyWhenAllowed) {
  ASSERT_NE(shared_tokenizer(), nullptr) << missing_vocab_message();
  const Gpt2Bpe& tok = *shared_tokenizer();
  for (const auto& c : fixture()["special"]) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_EQ(tok.encode_with_special(text), ids_of(c["ids"])) << "text: '" << text << "'";
    EXPECT_EQ(tok.decode(tok.encode_with_special(text)), text);
  }
  // encode() never produces the special id from text.
  const std::vector<std::uint32_t> plain = tok.encode("a<|endoftext|>b");
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 50256u), 0);
  EXPECT_GT(plain.size(), 3u);
  EXPECT_EQ(tok.decode(plain), "a<|endoftext|>b");
  EXPECT_EQ(tok.encode_with_special("<|endoftext|>"), (std::vector<std::uint32_t>{50256}));
}

TEST(Gpt2Bpe, InvalidUtf8RoundTrips) {
  ASSERT_NE(shared_tokenizer(), nullptr) << missing_vocab_message();
  const Gpt2Bpe& tok = *shared_tokenizer();
  const std::string text = std::string("ok \xFF\xFE bad \xC3 cut \x80") + std::string(1, '\0') + " end";
  const std::vector<std::uint32_t> ids = tok.encode(text);
  for (std::uint32_t id : ids) EXPECT_LT(id, 50256u);
  EXPECT_EQ(tok.decode(ids), text);
}

TEST(Gpt2Bpe, LongRunsOfOneCharacter) {
  ASSERT_NE(shared_tokenizer(), nullptr) << missing_vocab_message();
  const Gpt2Bpe& tok = *shared_tokenizer();
  for (const std::string& text : {std::string(100000, ' '), std::string(3000, 'x') + "\n",
                                  std::string(50000, '\n') + "y"}) {
    EXPECT_EQ(tok.decode(tok.encode(text)), text);
  }
}

TEST(Gpt2Bpe, EncodeBatchEqualsSequential) {
  ASSERT_NE(shared_tokenizer(), nullptr) << missing_vocab_message();
  const Gpt2Bpe& tok = *shared_tokenizer();
  const nlohmann::json cases = fixture()["ordinary"];
  std::vector<std::string> texts;
  for (int repeat = 0; repeat < 5; ++repeat)
    for (const auto& c : cases) texts.push_back(c["text"].get<std::string>() + std::to_string(repeat));
  std::vector<std::string_view> views(texts.begin(), texts.end());
  for (int threads : {1, 2, 4}) {
    const auto batch = tok.encode_batch(views, threads);
    ASSERT_EQ(batch.size(), texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i)
      EXPECT_EQ(batch[i], tok.encode(texts[i])) << "threads " << threads << " doc " << i;
  }
  EXPECT_TRUE(tok.encode_batch({}).empty());
}

TEST(Gpt2Bpe, DecodeRejectsOutOfRangeId) {
  ASSERT_NE(shared_tokenizer(), nullptr) << missing_vocab_message();
  const std::string what = error_of([] { shared_tokenizer()->decode({1, 50257}); });
  EXPECT_NE(what.find("50257"), std::string::npos) << what;
  EXPECT_NE(what.find("position 1"), std::string::npos) << what;
}

TEST(Gpt2Bpe, MissingFileNamesItAndTheFix) {
  ScratchDir dir;
  dir.copy("vocab.bpe");
  std::string what = error_of([&] { Gpt2Bpe tok(dir.path.string()); });
  EXPECT_NE(what.find((dir.path / "encoder.json").string()), std::string::npos) << what;
  EXPECT_NE(what.find("data.tokenizer_dir"), std::string::npos) << what;

  ScratchDir no_merges;
  no_merges.copy("encoder.json");
  what = error_of([&] { Gpt2Bpe tok(no_merges.path.string()); });
  EXPECT_NE(what.find((no_merges.path / "vocab.bpe").string()), std::string::npos) << what;
}

TEST(Gpt2Bpe, GarbledFilesAreErrors) {
  ScratchDir bad_json;
  bad_json.write("encoder.json", "{\"a\": 0, \"b\": ");
  bad_json.copy("vocab.bpe");
  std::string what = error_of([&] { Gpt2Bpe tok(bad_json.path.string()); });
  EXPECT_NE(what.find("encoder.json"), std::string::npos) << what;
  EXPECT_NE(what.find("not valid JSON"), std::string::npos) << what;

  ScratchDir small_json;
  small_json.write("encoder.json", "{\"a\": 0}");
  small_json.copy("vocab.bpe");
  what = error_of([&] { Gpt2Bpe tok(small_json.path.string()); });
  EXPECT_NE(what.find("at least 257"), std::string::npos) << what;

  ScratchDir bad_merges;
  bad_merges.copy("encoder.json");
  bad_merges.write("vocab.bpe", "#version: 0.2\n\xC4\xA0 t\nthis line is wrong\n");
  what = error_of([&] { Gpt2Bpe tok(bad_merges.path.string()); });
  EXPECT_NE(what.find("vocab.bpe:3"), std::string::npos) << what;

  ScratchDir no_version;
  no_version.copy("encoder.json");
  no_version.write("vocab.bpe", "\xC4\xA0 t\n");
  what = error_of([&] { Gpt2Bpe tok(no_version.path.string()); });
  EXPECT_NE(what.find("#version"), std::string::npos) << what;
}

TEST(Gpt2Bpe, FactoryFolderAndEnvironment) {
  ASSERT_NE(shared_tokenizer(), nullptr) << missing_vocab_message();
  EXPECT_EQ(make_tokenizer("gpt2", kBpeDir)->vocab_size(), 50257);
  const char* saved = std::getenv("KILN_GPT2_BPE_DIR");
  const std::string saved_value = saved ? saved : "";
  ::unsetenv("KILN_GPT2_BPE_DIR");
  const std::string what = error_of([] { make_tokenizer("gpt2"); });
  EXPECT_NE(what.find("data.tokenizer_dir"), std::string::npos) << what;
  EXPECT_NE(what.find("KILN_GPT2_BPE_DIR"), std::string::npos) << what;
  ::setenv("KILN_GPT2_BPE_DIR", kBpeDir.c_str(), 1);
  EXPECT_EQ(make_tokenizer("gpt2")->name(), "gpt2");
  if (saved) ::setenv("KILN_GPT2_BPE_DIR", saved_value.c_str(), 1);
  else ::unsetenv("KILN_GPT2_BPE_DIR");
}

}  // namespace
}  // namespace kiln
