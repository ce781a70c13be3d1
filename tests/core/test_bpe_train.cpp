// Tests for core/data/bpe_train (the BPE learner) and for Gpt2Bpe reading any vocabulary in
// GPT-2's format: merges worked out by hand, the files written, round trips through Gpt2Bpe
// on text the learner never saw, compression, determinism over runs, batches and threads,
// merge for merge agreement with a naive learner that recounts every pair at each step,
// agreement between the learner's segmentation and both encoder algorithms (OpenAI's pair ranks
// and tiktoken's token ranks), and the errors for malformed vocabularies.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/data/bpe_train.h"
#include "core/data/gpt2_bpe.h"
#include "error_of.h"
#include "kernels/error.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

using kiln::testing::error_of;

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

struct ScratchDir {
  fs::path path;
  ScratchDir() {
    path = fs::temp_directory_path() / ("kiln_bpe_train_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(reinterpret_cast<std::uintptr_t>(this)));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~ScratchDir() { fs::remove_all(path); }
  std::string str() const { return path.string(); }
};

// id of a printable ASCII byte in GPT-2's order: '!' is 0.
std::uint32_t ascii_id(char c) { return static_cast<std::uint32_t>(c - '!'); }

// The classic example (Hugging Face's course): hug x10, pug x5, pun x12, bun x4, hugs x5.
// Pair counts ug 20, hu 15, pu 17, un 16, bu 4, gs 5. Merges, most frequent first:
//   u+g (20); u+n (16); h+ug (15); p+un (12); then hug+s and p+ug tie at 5 and "hug" < "p"
//   puts hug+s first; b+un (4); then every piece is one token.
BpePieceCounts hug_counts() {
  BpePieceCounts counts;
  counts.add_piece("hug", 10);
  counts.add_piece("pug", 5);
  counts.add_piece("pun", 12);
  counts.add_piece("bun", 4);
  counts.add_piece("hugs", 5);
  return counts;
}

TEST(BpeTrain, HandCheckedMergesAndIds) {
  BpeTrainOptions options;
  const BpeVocabulary vocab = train_bpe(hug_counts(), 400, options);
  const std::vector<std::string> expected = {"ug", "un", "hug", "pun", "hugs", "pug", "bun"};
  ASSERT_EQ(vocab.tokens.size(), 256 + expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(vocab.tokens[256 + i], expected[i]);
  using Merge = std::pair<std::uint32_t, std::uint32_t>;
  const std::vector<Merge> merges = {{ascii_id('u'), ascii_id('g')}, {ascii_id('u'), ascii_id('n')},
                                     {ascii_id('h'), 256},           {ascii_id('p'), 257},
                                     {258, ascii_id('s')},           {ascii_id('p'), 256},
                                     {ascii_id('b'), 257}};
  EXPECT_EQ(vocab.merges, merges);
  EXPECT_EQ(vocab.stop, BpeVocabulary::Stop::kNoPairs);
  EXPECT_EQ(vocab.vocab_size(), 264);
  EXPECT_EQ(vocab.eot(), 263u);
  // The single bytes follow GPT-2's encoder.json: printable bytes first, then the rest.
  EXPECT_EQ(vocab.tokens[0], "!");
  EXPECT_EQ(vocab.tokens[220], " ");

  const BpeVocabulary small = train_bpe(hug_counts(), 260);  // 256 + 3 merges + eot
  EXPECT_EQ(small.merges.size(), 3u);
  EXPECT_EQ(small.stop, BpeVocabulary::Stop::kVocabSize);
  EXPECT_EQ(small.eot(), 259u);

  options.min_frequency = 13;  // p+un (12) is the first pair below it
  const BpeVocabulary early = train_bpe(hug_counts(), 400, options);
  EXPECT_EQ(early.merges.size(), 3u);
  EXPECT_EQ(early.stop, BpeVocabulary::Stop::kMinFrequency);
}

// "aaab aaab aaab": the regex gives "aaab" once and " aaab" twice. a+a (6); then a+b and aa+a
// tie at 3 and "a" < "aa" puts a+b first; aa+ab (3); " "+aaab (2).
TEST(BpeTrain, DocumentsArePreTokenisedLikeGpt2) {
  const BpeVocabulary vocab = train_bpe(std::vector<std::string_view>{"aaab aaab aaab"}, 300);
  const std::vector<std::string> expected = {"aa", "ab", "aaab", " aaab"};
  ASSERT_EQ(vocab.tokens.size(), 256 + expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(vocab.tokens[256 + i], expected[i]);

  ScratchDir dir;
  const std::vector<std::string> paths = write_bpe_files(vocab, dir.str() + "/out");
  ASSERT_EQ(paths.size(), 2u);
  EXPECT_EQ(read_text(dir.path / "out" / "vocab.bpe"),
            "#version: 0.2\na a\na b\naa ab\n\xC4\xA0 aaab\n");
  const std::string encoder = read_text(dir.path / "out" / "encoder.json");
  EXPECT_EQ(encoder.substr(0, 25), "{\"!\": 0, \"\\\"\": 1, \"#\": 2,");
  EXPECT_NE(encoder.find("\"\\u0120\": 220"), std::string::npos);
  EXPECT_NE(encoder.find("\"\\u0120aaab\": 259, \"<|endoftext|>\": 260}"), std::string::npos);
}

TEST(BpeTrain, WrittenFilesLoadInGpt2Bpe) {
  ScratchDir dir;
  write_bpe_files(train_bpe(hug_counts(), 400), dir.str());
  EXPECT_EQ(read_text(dir.path / "vocab.bpe"),
            "#version: 0.2\nu g\nu n\nh ug\np un\nhug s\np ug\nb un\n");
  const Gpt2Bpe tok(dir.str());
  EXPECT_EQ(tok.vocab_size(), 264);
  EXPECT_EQ(tok.eot(), 263u);
  EXPECT_EQ(tok.encode("hugs"), (std::vector<std::uint32_t>{260}));
  EXPECT_EQ(tok.encode("bun pug"), (std::vector<std::uint32_t>{262, 220, 261}));
  EXPECT_EQ(tok.encode_with_special("hug<|endoftext|>"), (std::vector<std::uint32_t>{258, 263}));
  EXPECT_EQ(tok.decode({263}), "<|endoftext|>");
  const std::string what = error_of([&] { tok.decode({264}); });
  EXPECT_NE(what.find("vocab_size 264"), std::string::npos) << what;
}

// Training text: fortune files when installed (about 370 kB), else generated sentences.
std::string training_text() {
  std::string text;
  for (const char* name : {"computers", "science"}) {
    const fs::path path = fs::path("/usr/share/games/fortunes") / name;
    if (fs::is_regular_file(path)) text += read_text(path);
  }
  if (text.size() > 100000) return text;
  const char* words[] = {"the", "model", "learns", "tokens", "from", "text", "and", "data",
                         "training", "is", "slow", "fast", "a", "of", "to", "in", "language"};
  std::uint64_t state = 12345;
  for (int i = 0; i < 60000; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    text += words[(state >> 33) % 17];
    text += (i % 11 == 10) ? ".\n" : " ";
  }
  return text;
}

std::vector<std::string_view> paragraphs(const std::string& text) {
  std::vector<std::string_view> docs;
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t end = text.find("\n%\n", at);
    if (end == std::string::npos) end = text.size();
    docs.push_back(std::string_view(text).substr(at, end - at));
    at = end + 3;
  }
  return docs;
}

// A 2000-token vocabulary learned from training_text(), written to a scratch folder; shared by
// the tests below (the folder is removed at exit).
struct Trained {
  std::string text = training_text();
  BpeVocabulary vocab = train_bpe(paragraphs(text), 2000);
  ScratchDir dir;
  Trained() { write_bpe_files(vocab, dir.str()); }
};

const Trained& trained_2000() {
  static const Trained trained;
  return trained;
}

TEST(BpeTrain, RoundTripsUnseenTextAndCompresses) {
  const Trained& t = trained_2000();
  ASSERT_EQ(t.vocab.vocab_size(), 2000);
  const Gpt2Bpe tok(t.dir.str());
  EXPECT_EQ(tok.vocab_size(), 2000);
  EXPECT_EQ(tok.eot(), 1999u);
  std::string all_bytes;
  for (int b = 0; b < 256; ++b) all_bytes.push_back(static_cast<char>(b));
  const std::vector<std::string> texts = {
      "Grüße aus Köln! Ça va? naïve café",
      "中文分词测试：你好，世界。日本語のテキスト、한국어 텍스트",
      "emoji \xF0\x9F\x99\x82\xF0\x9F\x9A\x80 and ZWJ \xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x92\xBB",
      std::string("invalid \xFF\xFE \xC3 cut \x80 nul ") + std::string(1, '\0') + " end",
      all_bytes,
      "   leading spaces\t\ttabs\r\n\r\nand <|endoftext|> as text   ",
      std::string(5000, 'z') + std::string(3000, ' ') + "x"};
  for (const std::string& text : texts) {
    const std::vector<std::uint32_t> ids = tok.encode(text);
    for (std::uint32_t id : ids) EXPECT_LT(id, tok.eot());
    EXPECT_EQ(tok.decode(ids), text);
  }
  const std::vector<std::uint32_t> ids = tok.encode(t.text);
  EXPECT_EQ(tok.decode(ids), t.text);
  EXPECT_LE(ids.size() * 2, t.text.size())
      << ids.size() << " tokens for " << t.text.size() << " bytes of training text";
}

// OpenAI's encoder.py bpe(): repeatedly join the adjacent pair with the lowest merge index.
using MergeRanks = std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint32_t>;

std::vector<std::uint32_t> openai_bpe(std::string_view piece,
                                      const std::vector<std::uint32_t>& byte_id,
                                      const MergeRanks& rank) {
  std::vector<std::uint32_t> parts;
  for (char c : piece) parts.push_back(byte_id[static_cast<unsigned char>(c)]);
  while (parts.size() > 1) {
    std::uint32_t best = UINT32_MAX;
    for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
      const auto it = rank.find({parts[i], parts[i + 1]});
      if (it != rank.end()) best = std::min(best, it->second);
    }
    if (best == UINT32_MAX) break;
    std::vector<std::uint32_t> next;
    for (std::size_t i = 0; i < parts.size(); ++i) {
      const auto it = i + 1 < parts.size() ? rank.find({parts[i], parts[i + 1]}) : rank.end();
      if (it != rank.end() && it->second == best) {
        next.push_back(256 + best);
        ++i;
      } else {
        next.push_back(parts[i]);
      }
    }
    parts.swap(next);
  }
  return parts;
}

// Every distinct training piece: OpenAI's pair-rank algorithm (which replays the learner's
// merges) and Gpt2Bpe (tiktoken's token ranks) give the same tokens; a piece the learner fully
// merged is one token.
TEST(BpeTrain, EncoderAgreesWithTheLearner) {
  const Trained& t = trained_2000();
  const Gpt2Bpe tok(t.dir.str());
  std::vector<std::uint32_t> byte_id(256);
  for (std::uint32_t id = 0; id < 256; ++id)
    byte_id[static_cast<unsigned char>(t.vocab.tokens[id][0])] = id;
  MergeRanks rank;
  for (std::uint32_t i = 0; i < t.vocab.merges.size(); ++i) rank[t.vocab.merges[i]] = i;
  BpePieceCounts counts;
  counts.add(paragraphs(t.text), 1);
  std::size_t single = 0, checked = 0;
  for (const auto& [piece, count] : counts.pieces()) {
    const std::vector<std::uint32_t> expected = openai_bpe(piece, byte_id, rank);
    ASSERT_EQ(tok.encode(piece), expected) << "piece '" << piece << "' seen " << count << " times";
    single += expected.size() == 1 && piece.size() > 1;
    ++checked;
  }
  EXPECT_GT(single, 500u) << checked << " pieces checked";
  const auto the = std::find(t.vocab.tokens.begin(), t.vocab.tokens.end(), " the");
  ASSERT_NE(the, t.vocab.tokens.end());
  EXPECT_EQ(tok.encode(" the"),
            (std::vector<std::uint32_t>{static_cast<std::uint32_t>(the - t.vocab.tokens.begin())}));
}

// The reference learner: recount every pair of every word before each merge, take the most
// frequent (smallest bytes on ties), merge it everywhere. Slow, and obviously right.
std::vector<std::string> naive_merges(const BpePieceCounts& counts, int merges) {
  std::vector<std::pair<std::vector<std::string>, std::uint64_t>> words;
  for (const auto& [piece, count] : counts.pieces()) {
    std::vector<std::string> symbols;
    for (char c : piece) symbols.emplace_back(1, c);
    words.emplace_back(symbols, count);
  }
  std::vector<std::string> learned;
  while (static_cast<int>(learned.size()) < merges) {
    std::map<std::pair<std::string, std::string>, std::uint64_t> pairs;
    for (const auto& [symbols, count] : words)
      for (std::size_t i = 0; i + 1 < symbols.size(); ++i)
        pairs[{symbols[i], symbols[i + 1]}] += count;
    if (pairs.empty()) break;
    auto best = pairs.begin();  // std::map order: smallest bytes first among equal counts
    for (auto it = pairs.begin(); it != pairs.end(); ++it)
      if (it->second > best->second) best = it;
    if (best->second < 2) break;
    const auto [left, right] = best->first;
    learned.push_back(left + " " + right);
    for (auto& [symbols, count] : words) {
      std::vector<std::string> merged;
      for (std::size_t i = 0; i < symbols.size(); ++i) {
        if (i + 1 < symbols.size() && symbols[i] == left && symbols[i + 1] == right) {
          merged.push_back(left + right);
          ++i;
        } else {
          merged.push_back(symbols[i]);
        }
      }
      symbols.swap(merged);
    }
  }
  return learned;
}

TEST(BpeTrain, SameMergesAsANaiveLearner) {
  const std::string text = training_text().substr(0, 15000);
  BpePieceCounts counts;
  counts.add(paragraphs(text), 2);
  const std::vector<std::string> expected = naive_merges(counts, 200);
  ASSERT_EQ(expected.size(), 200u);
  const BpeVocabulary vocab = train_bpe(counts, 256 + 200 + 1);
  ASSERT_EQ(vocab.merges.size(), 200u);
  for (std::size_t i = 0; i < expected.size(); ++i)
    ASSERT_EQ(vocab.tokens[vocab.merges[i].first] + " " + vocab.tokens[vocab.merges[i].second],
              expected[i]) << "merge " << i;
}

TEST(BpeTrain, DeterministicOverRunsBatchesAndThreads) {
  const std::string text = training_text().substr(0, 150000);
  const std::vector<std::string_view> docs = paragraphs(text);
  BpeTrainOptions one_thread;
  one_thread.threads = 1;
  const BpeVocabulary reference = train_bpe(docs, 800, one_thread);
  ASSERT_EQ(reference.vocab_size(), 800);
  for (int threads : {2, 3, 8}) {
    BpeTrainOptions options;
    options.threads = threads;
    const BpeVocabulary again = train_bpe(docs, 800, options);
    EXPECT_EQ(again.merges, reference.merges) << threads << " threads";
    EXPECT_EQ(again.tokens, reference.tokens) << threads << " threads";
  }
  BpePieceCounts batched;
  const std::size_t half = docs.size() / 2;
  batched.add({docs.begin(), docs.begin() + static_cast<std::ptrdiff_t>(half)}, 2);
  batched.add({docs.begin() + static_cast<std::ptrdiff_t>(half), docs.end()}, 1);
  EXPECT_EQ(batched.documents(), docs.size());
  EXPECT_EQ(train_bpe(batched, 800).merges, reference.merges);

  ScratchDir a, b;
  write_bpe_files(reference, a.str());
  write_bpe_files(train_bpe(docs, 800), b.str());
  for (const char* name : {"encoder.json", "vocab.bpe"}) {
    const std::string first = read_text(a.path / name);
    EXPECT_FALSE(first.empty());
    EXPECT_EQ(first, read_text(b.path / name)) << name;
  }
}

TEST(BpeTrain, CorpusReadingAndErrors) {
  std::string what = error_of([] { train_bpe(hug_counts(), 257); });
  EXPECT_NE(what.find("258"), std::string::npos) << what;

  ScratchDir dir;
  std::ofstream(dir.path / "fortunes.txt") << "hug pug\n%\npun bun\n%\n  \n%\nhugs hug\n";
  std::ofstream(dir.path / "blank.txt") << " \n\t\n";
  CorpusOptions corpus;
  corpus.inputs = {(dir.path / "fortunes.txt").string()};
  corpus.separator = "%";
  corpus.command = "tokenizer train";
  const BpeCorpusCounts counted = count_corpus_pieces(corpus, 2);
  EXPECT_EQ(counted.counts.documents(), 3u);  // the blank one is left out
  EXPECT_EQ(counted.counts.pieces().at(" hug"), 1u);
  EXPECT_EQ(counted.counts.pieces().at("hug"), 1u);
  EXPECT_EQ(counted.counts.pieces().at("\n"), 3u);

  corpus.inputs = {(dir.path / "blank.txt").string()};
  what = error_of([&] { count_corpus_pieces(corpus); });
  EXPECT_NE(what.find("blank.txt"), std::string::npos) << what;
  EXPECT_NE(what.find("no text"), std::string::npos) << what;
  corpus.inputs = {(dir.path / "missing.txt").string()};
  what = error_of([&] { count_corpus_pieces(corpus); });
  EXPECT_NE(what.find("tokenizer train: input path"), std::string::npos) << what;
}

// Gpt2Bpe reads any vocabulary in GPT-2's format but says which file is wrong, and how.
TEST(BpeTrain, Gpt2BpeRejectsMalformedVocabularies) {
  ScratchDir dir;
  write_bpe_files(train_bpe(hug_counts(), 400), dir.str());
  const nlohmann::json good = nlohmann::json::parse(read_text(dir.path / "encoder.json"));
  const std::string encoder_path = (dir.path / "encoder.json").string();
  const auto load_with = [&](const nlohmann::json& encoder) {
    std::ofstream(encoder_path, std::ios::trunc) << encoder.dump();
    return error_of([&] { Gpt2Bpe tok(dir.str()); });
  };

  nlohmann::json no_eot = good;
  no_eot.erase("<|endoftext|>");
  no_eot["hugz"] = 263;
  std::string what = load_with(no_eot);
  EXPECT_NE(what.find(encoder_path), std::string::npos) << what;
  EXPECT_NE(what.find("<|endoftext|>"), std::string::npos) << what;

  nlohmann::json gap = good;
  gap["<|endoftext|>"] = 300;  // ids 0..262 and 300: not dense
  what = load_with(gap);
  EXPECT_NE(what.find(encoder_path), std::string::npos) << what;
  EXPECT_NE(what.find("0..263"), std::string::npos) << what;

  nlohmann::json twice = good;
  twice["<|endoftext|>"] = 5;
  what = load_with(twice);
  EXPECT_NE(what.find("appears twice"), std::string::npos) << what;

  nlohmann::json few = nlohmann::json::object();
  few["a"] = 0;
  few["<|endoftext|>"] = 1;
  what = load_with(few);
  EXPECT_NE(what.find("at least 257"), std::string::npos) << what;

  load_with(good);
  ASSERT_EQ(error_of([&] { Gpt2Bpe tok(dir.str()); }), "(no error)");
  std::ofstream(dir.path / "vocab.bpe", std::ios::trunc) << "#version: 0.2\nu g\nu n\nh ug\n";
  what = error_of([&] { Gpt2Bpe tok(dir.str()); });
  EXPECT_NE(what.find("vocab.bpe holds 3 merges"), std::string::npos) << what;
  EXPECT_NE(what.find("has 7 tokens"), std::string::npos) << what;
}

}  // namespace
}  // namespace kiln
