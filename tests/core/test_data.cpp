// Tests for core/data: the byte tokenizer, token shard files (round trip and every corruption
// error), the TokenLoader's determinism and window rules, and tokenize_corpus end to end.
// Every file is written under a fresh folder in the system temp directory.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "core/data/loader.h"
#include "core/data/shard.h"
#include "core/data/tokenize.h"
#include "core/data/tokenizer.h"
#include "kernels/error.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

// A fresh folder under the temp directory, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            ("kiln_test_data_" + std::to_string(::getpid()) + "_" +
             std::to_string(counter++) + "_" + (info ? info->name() : "x"));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Expects fn to throw kiln::Error whose message contains every one of parts.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected kiln::Error containing '" << parts.front() << "'";
  } catch (const Error& e) {
    for (const std::string& part : parts) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
          << "message: " << e.what() << "\nmissing: " << part;
    }
  }
}

std::vector<std::uint32_t> iota_tokens(std::size_t n, std::uint32_t modulo) {
  std::vector<std::uint32_t> t(n);
  for (std::size_t i = 0; i < n; ++i) t[i] = static_cast<std::uint32_t>(i % modulo);
  return t;
}

// ---- tokenizer -------------------------------------------------------------------------------

TEST(DataTokenizer, ByteRoundTripWithUtf8AndEot) {
  auto tok = make_tokenizer("byte");
  EXPECT_EQ(tok->name(), "byte");
  EXPECT_EQ(tok->vocab_size(), 257);
  EXPECT_EQ(tok->eot(), 256u);
  const std::string text = "h\xC3\xA9llo, \xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\x94\xA5\n\t\x01";
  std::vector<std::uint32_t> ids = tok->encode(text);
  ASSERT_EQ(ids.size(), text.size());
  for (std::uint32_t id : ids) EXPECT_LT(id, 256u);
  EXPECT_EQ(ids[1], 0xC3u);
  EXPECT_EQ(tok->decode(ids), text);
  ids.push_back(tok->eot());
  EXPECT_EQ(tok->decode(ids), text + "<|endoftext|>");
  EXPECT_TRUE(tok->encode("").empty());
}

TEST(DataTokenizer, DecodeRejectsOutOfRangeId) {
  ByteTokenizer tok;
  expect_error([&] { tok.decode({65, 300}); }, {"300", "257"});
}

TEST(DataTokenizer, UnknownNameListsValidNames) {
  expect_error([] { make_tokenizer("nope"); }, {"'nope'", "byte"});
}

// ---- shards ----------------------------------------------------------------------------------

TEST(DataShard, RoundTripUint16) {
  TempDir dir;
  const std::string path = dir / "a.bin";
  std::vector<std::uint32_t> tokens = iota_tokens(1000, 257);
  write_shard(path, tokens, 257);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_EQ(fs::file_size(path), 64u + 2 * tokens.size());
  Shard shard(path);
  EXPECT_EQ(shard.size(), tokens.size());
  EXPECT_EQ(shard.vocab_size(), 257);
  EXPECT_EQ(shard.token_bytes(), 2);
  EXPECT_EQ(shard.path(), path);
  for (std::size_t i = 0; i < tokens.size(); ++i) ASSERT_EQ(shard[i], tokens[i]);
  std::vector<std::int32_t> out(10);
  shard.read(990, 10, out.data());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(out[i], static_cast<std::int32_t>(tokens[990 + i]));
  expect_error([&] { shard.read(995, 10, out.data()); }, {path, "995", "1000"});
  expect_error([&] { shard[1000]; }, {path, "1000"});
}

TEST(DataShard, RoundTripUint32AndHeaderBytes) {
  TempDir dir;
  const std::string path = dir / "b.bin";
  std::vector<std::uint32_t> tokens = {0, 65535, 65536, 69999, 12345};
  write_shard(path, tokens, 70000);
  const std::string bytes = read_bytes(path);
  ASSERT_EQ(bytes.size(), 64u + 4 * tokens.size());
  EXPECT_EQ(std::memcmp(bytes.data(), "KILNTOK\0", 8), 0);
  EXPECT_EQ(bytes[8], 1);    // version
  EXPECT_EQ(bytes[12], 4);   // token_bytes
  EXPECT_EQ(bytes[16], 5);   // num_tokens
  EXPECT_EQ(static_cast<unsigned char>(bytes[24]), 70000 & 0xFF);  // vocab_size
  EXPECT_EQ(bytes[28], 64);  // header_size
  Shard shard(path);
  EXPECT_EQ(shard.token_bytes(), 4);
  EXPECT_EQ(shard.vocab_size(), 70000);
  for (std::size_t i = 0; i < tokens.size(); ++i) EXPECT_EQ(shard[i], tokens[i]);
  Shard moved(std::move(shard));
  EXPECT_EQ(moved[2], 65536u);
}

TEST(DataShard, WriteRejectsTokenOutsideVocab) {
  TempDir dir;
  expect_error([&] { write_shard(dir / "c.bin", {1, 2, 257}, 257); }, {"257", "token 2"});
  EXPECT_FALSE(fs::exists(dir / "c.bin"));
}

TEST(DataShard, CorruptFilesGiveSpecificErrors) {
  TempDir dir;
  const std::string good = dir / "good.bin";
  write_shard(good, iota_tokens(100, 257), 257);
  const std::string bytes = read_bytes(good);

  const std::string empty = dir / "empty.bin";
  write_bytes(empty, "");
  expect_error([&] { Shard s(empty); }, {empty, "empty"});

  const std::string magic = dir / "magic.bin";
  write_bytes(magic, "GPT2TOK" + bytes.substr(7));
  expect_error([&] { Shard s(magic); }, {magic, "bad magic", "kiln tokenize"});

  const std::string text = dir / "text.bin";
  write_bytes(text, "hello");
  expect_error([&] { Shard s(text); }, {text, "bad magic"});

  const std::string truncated = dir / "truncated.bin";
  write_bytes(truncated, bytes.substr(0, 64 + 2 * 60));
  expect_error([&] { Shard s(truncated); },
               {truncated, "truncated", "header says 100 tokens but file holds 60"});

  const std::string short_header = dir / "short_header.bin";
  write_bytes(short_header, bytes.substr(0, 20));
  expect_error([&] { Shard s(short_header); }, {short_header, "truncated"});

  std::string newer_bytes = bytes;
  newer_bytes[8] = 7;
  const std::string newer = dir / "newer.bin";
  write_bytes(newer, newer_bytes);
  expect_error([&] { Shard s(newer); }, {newer, "version 7 is newer than this kiln (1)"});

  std::string width_bytes = bytes;
  width_bytes[12] = 3;
  const std::string width = dir / "width.bin";
  write_bytes(width, width_bytes);
  expect_error([&] { Shard s(width); }, {width, "token_bytes is 3"});

  const std::string trailing = dir / "trailing.bin";
  write_bytes(trailing, bytes + "xx");
  expect_error([&] { Shard s(trailing); }, {trailing, "2 bytes after its 100 tokens"});

  expect_error([&] { Shard s(dir / "missing.bin"); }, {"missing.bin", "kiln tokenize"});
}

// ---- loader ----------------------------------------------------------------------------------

// Two shards whose token at position i is (shard_base + i) so a window's origin is readable.
struct LoaderFixture {
  TempDir dir;
  LoaderFixture() {
    std::vector<std::uint32_t> a(500), b(300);
    for (std::uint32_t i = 0; i < a.size(); ++i) a[i] = i;
    for (std::uint32_t i = 0; i < b.size(); ++i) b[i] = 1000 + i;
    write_shard(dir / "train_000.bin", a, 2000);
    write_shard(dir / "train_001.bin", b, 2000);
    write_shard(dir / "val_000.bin", {1, 2, 3}, 2000);
  }
  std::string pattern() const { return dir / "train_*.bin"; }
};

using Batch = std::pair<std::vector<std::int32_t>, std::vector<std::int32_t>>;

Batch next(TokenLoader& loader) {
  Batch out{std::vector<std::int32_t>(loader.batch() * loader.seq_len()),
            std::vector<std::int32_t>(loader.batch() * loader.seq_len())};
  loader.next_batch(out.first.data(), out.second.data());
  return out;
}

Batch at(const TokenLoader& loader, std::uint64_t index) {
  Batch out{std::vector<std::int32_t>(loader.batch() * loader.seq_len()),
            std::vector<std::int32_t>(loader.batch() * loader.seq_len())};
  loader.batch_at(index, out.first.data(), out.second.data());
  return out;
}

TEST(DataLoader, GlobFindsShardsAndReadsHeaders) {
  LoaderFixture f;
  TokenLoader loader(f.pattern(), 4, 16, 1);
  EXPECT_EQ(loader.shards().size(), 2u);
  EXPECT_EQ(loader.num_tokens(), 800u);
  EXPECT_EQ(loader.vocab_size(), 2000);
  EXPECT_EQ(loader.batch(), 4);
  EXPECT_EQ(loader.seq_len(), 16);
  EXPECT_EQ(loader.num_windows(), (500u - 16) + (300u - 16));
  EXPECT_EQ(loader.position(), 0u);
  TokenLoader single(f.dir / "train_001.bin", 1, 8, 1);
  EXPECT_EQ(single.num_tokens(), 300u);
  TokenLoader folder(f.dir.str(), 1, 2, 1);  // a folder: every *.bin, val_000.bin included
  EXPECT_EQ(folder.shards().size(), 3u);
}

TEST(DataLoader, SameSeedSameBatchesAndResumeFromPosition) {
  LoaderFixture f;
  TokenLoader a(f.pattern(), 4, 16, 42), b(f.pattern(), 4, 16, 42), c(f.pattern(), 4, 16, 43);
  std::vector<Batch> seq;
  for (int i = 0; i < 6; ++i) {
    seq.push_back(next(a));
    EXPECT_EQ(seq.back(), next(b));
  }
  EXPECT_EQ(a.position(), 6u);
  bool differs = false;
  for (int i = 0; i < 6; ++i) differs |= next(c) != seq[i];
  EXPECT_TRUE(differs);

  TokenLoader resumed(f.pattern(), 4, 16, 42);
  resumed.set_position(3);
  EXPECT_EQ(resumed.position(), 3u);
  for (int i = 3; i < 6; ++i) EXPECT_EQ(next(resumed), seq[i]);
}

TEST(DataLoader, TargetsAreShiftedInputsAndWindowsStayInOneShard) {
  LoaderFixture f;
  const int seq_len = 32;
  TokenLoader loader(f.pattern(), 8, seq_len, 7);
  std::set<std::int32_t> first_tokens;
  bool saw_a = false, saw_b = false;
  for (int step = 0; step < 200; ++step) {
    auto [in, tg] = next(loader);
    for (int b = 0; b < 8; ++b) {
      const std::int32_t* x = in.data() + b * seq_len;
      const std::int32_t* y = tg.data() + b * seq_len;
      for (int t = 0; t < seq_len; ++t) {
        // Consecutive values mean the window is contiguous inside one shard.
        ASSERT_EQ(y[t], x[t] + 1);
        if (t + 1 < seq_len) {
          ASSERT_EQ(x[t + 1], y[t]);
        }
      }
      const std::int32_t last = y[seq_len - 1];
      ASSERT_TRUE(last < 500 || (last >= 1000 && last < 1300)) << last;
      saw_a |= x[0] < 500;
      saw_b |= x[0] >= 1000;
      first_tokens.insert(x[0]);
    }
  }
  EXPECT_TRUE(saw_a && saw_b);
  EXPECT_GT(first_tokens.size(), 400u);  // 1600 draws over 752 starts cover most of them
  EXPECT_TRUE(first_tokens.count(0) || first_tokens.count(1000));
}

TEST(DataLoader, BatchAtIsSequentialStableAndWraps) {
  LoaderFixture f;
  TokenLoader loader(f.pattern(), 2, 100, 1);
  // Shard a: (500-1)/100 = 4 windows, shard b: (300-1)/100 = 2 windows.
  EXPECT_EQ(loader.num_sequential(), 6u);
  const std::vector<std::int32_t> expected_starts = {0, 100, 200, 300, 1000, 1100};
  for (std::uint64_t index = 0; index < 6; ++index) {
    auto [in, tg] = at(loader, index);
    for (int b = 0; b < 2; ++b) {
      EXPECT_EQ(in[b * 100], expected_starts[(index * 2 + b) % 6]);
      EXPECT_EQ(tg[b * 100 + 99], in[b * 100 + 99] + 1);
    }
  }
  next(loader);  // training draws do not move the validation pass
  EXPECT_EQ(at(loader, 1), at(loader, 4));  // 6 windows, batch 2: period 3
  TokenLoader other(f.pattern(), 2, 100, 999);
  EXPECT_EQ(at(loader, 2), at(other, 2));
}

TEST(DataLoader, ErrorsNameThePatternAndNumbers) {
  LoaderFixture f;
  expect_error([&] { TokenLoader l(f.dir / "nothing_*.bin", 1, 8, 1); },
               {"nothing_*.bin", "kiln tokenize"});
  expect_error([&] { TokenLoader l(f.dir / "val_*.bin", 1, 8, 1); },
               {"seq_len 8", "needs 9 tokens", "holds 3"});
  write_shard(f.dir / "other_000.bin", iota_tokens(50, 257), 257);
  expect_error([&] { TokenLoader l(f.dir.str(), 1, 8, 1); },
               {"vocab_size", "other_000.bin", "train_000.bin", "257", "2000"});
}

// ---- tokenize_corpus -------------------------------------------------------------------------

// A corpus folder in fortune style: text files with "%" lines, plus a binary index and a link.
std::string make_corpus(const TempDir& dir) {
  const std::string corpus = dir / "corpus";
  fs::create_directories(corpus);
  std::string a, b;
  for (int i = 0; i < 30; ++i) a += "fortune number " + std::to_string(i) + "\nline two\n%\n";
  a += "%\n   \n%\n";  // an empty and a blank document: both skipped
  for (int i = 0; i < 20; ++i) b += "second file " + std::to_string(i) + "\r\n%\r\n";
  b += "last one without separator\n";
  write_bytes(corpus + "/a", a);
  write_bytes(corpus + "/b", b);
  write_bytes(corpus + "/a.dat", std::string("\0\0\0\2index", 10));
  fs::create_symlink(corpus + "/a", corpus + "/a.u8");
  return corpus;
}

TEST(DataTokenize, SplitsDocumentsIntoShardsAndManifest) {
  TempDir dir;
  TokenizeOptions options;
  options.inputs = {make_corpus(dir)};
  options.out_dir = dir / "out";
  options.separator = "%";
  options.val_fraction = 0.2;
  TokenizeReport report = tokenize_corpus(options);
  EXPECT_EQ(report.documents, 51u);
  ASSERT_EQ(report.shards.size(), 2u);
  EXPECT_EQ(report.shards[0], dir / "out/train_000.bin");
  EXPECT_EQ(report.shards[1], dir / "out/val_000.bin");

  Shard train(report.shards[0]), val(report.shards[1]);
  EXPECT_EQ(train.size(), report.train_tokens);
  EXPECT_EQ(val.size(), report.val_tokens);
  EXPECT_EQ(train.vocab_size(), 257);
  EXPECT_EQ(train[train.size() - 1], 256u);
  EXPECT_EQ(val[val.size() - 1], 256u);
  std::uint64_t eots = 0;
  std::string text;
  for (const Shard* s : {&train, &val}) {
    for (std::uint64_t i = 0; i < s->size(); ++i) {
      eots += (*s)[i] == 256u;
      if ((*s)[i] < 256u) text.push_back(static_cast<char>((*s)[i]));
    }
  }
  EXPECT_EQ(eots, report.documents);  // exactly one eot closes each document
  EXPECT_EQ(text.find('%'), std::string::npos);
  EXPECT_EQ(text.find("index"), std::string::npos);  // a.dat (NUL bytes) skipped
  EXPECT_NE(text.find("fortune number 7\nline two\n"), std::string::npos);
  EXPECT_NE(text.find("last one without separator\n"), std::string::npos);
  EXPECT_NE(text.find("second file 3\r\n"), std::string::npos);

  auto manifest = nlohmann::json::parse(read_bytes(dir / "out/manifest.json"));
  EXPECT_EQ(manifest["tokenizer"], "byte");
  EXPECT_EQ(manifest["vocab_size"], 257);
  EXPECT_EQ(manifest["documents"], 51);
  EXPECT_EQ(manifest["separator"], "%");
  EXPECT_EQ(manifest["train_tokens"].get<std::uint64_t>() +
                manifest["val_tokens"].get<std::uint64_t>(),
            report.train_tokens + report.val_tokens);
  EXPECT_EQ(manifest["files"].size(), 2u);
  EXPECT_EQ(manifest["skipped"].size(), 2u);  // a.dat and the a.u8 link
  EXPECT_EQ(manifest["shards"].size(), 2u);
}

TEST(DataTokenize, DeterministicAndShardsRollOver) {
  TempDir dir;
  TokenizeOptions options;
  options.inputs = {make_corpus(dir)};
  options.separator = "%";
  options.shard_tokens = 256;
  options.out_dir = dir / "one";
  TokenizeReport one = tokenize_corpus(options);
  options.out_dir = dir / "two";
  TokenizeReport two = tokenize_corpus(options);
  EXPECT_GT(one.shards.size(), 3u);
  ASSERT_EQ(one.shards.size(), two.shards.size());
  for (std::size_t i = 0; i < one.shards.size(); ++i) {
    EXPECT_EQ(read_bytes(one.shards[i]), read_bytes(two.shards[i])) << one.shards[i];
    EXPECT_LE(Shard(one.shards[i]).size(), 256u);
  }
  EXPECT_EQ(read_bytes(dir / "one/manifest.json"), read_bytes(dir / "two/manifest.json"));
  // Fewer, larger shards on a re-run into the same folder leave no stale shards behind.
  options.shard_tokens = 1'000'000;
  TokenizeReport big = tokenize_corpus(options);
  EXPECT_EQ(big.shards.size(), 2u);
  EXPECT_FALSE(fs::exists(dir / "two/train_001.bin"));
  EXPECT_EQ(big.train_tokens + big.val_tokens, one.train_tokens + one.val_tokens);
}

TEST(DataTokenize, TinyInputsStillGetValidation) {
  TempDir dir;
  write_bytes(dir / "two.txt", "first\n%\nsecond\n");
  TokenizeOptions options;
  options.inputs = {dir / "two.txt"};
  options.separator = "%";
  options.val_fraction = 0.01;
  options.out_dir = dir / "out2";
  TokenizeReport report = tokenize_corpus(options);
  EXPECT_EQ(report.documents, 2u);
  EXPECT_GT(report.train_tokens, 0u);
  EXPECT_GT(report.val_tokens, 0u);

  // A single document (no separator) is split by tokens: its tail becomes validation.
  write_bytes(dir / "one.txt", std::string(1000, 'x'));
  options.inputs = {dir / "one.txt"};
  options.separator = "";
  options.val_fraction = 0.1;
  options.out_dir = dir / "out1";
  report = tokenize_corpus(options);
  EXPECT_EQ(report.documents, 1u);
  EXPECT_EQ(report.train_tokens, 901u);
  EXPECT_EQ(report.val_tokens, 101u);

  options.val_fraction = 0.0;
  options.out_dir = dir / "out0";
  report = tokenize_corpus(options);
  EXPECT_EQ(report.val_tokens, 0u);
  EXPECT_EQ(report.shards.size(), 1u);
}

TEST(DataTokenize, ErrorsNameTheInput) {
  TempDir dir;
  TokenizeOptions options;
  options.inputs = {dir / "does_not_exist.txt"};
  options.out_dir = dir / "out";
  expect_error([&] { tokenize_corpus(options); }, {"does_not_exist.txt", "does not exist"});
  write_bytes(dir / "binary", std::string("ab\0cd", 5));
  options.inputs = {dir / "binary"};
  expect_error([&] { tokenize_corpus(options); }, {"binary", "NUL"});
  write_bytes(dir / "blank.txt", "  \n\n");
  options.inputs = {dir / "blank.txt"};
  expect_error([&] { tokenize_corpus(options); }, {"no text"});
  write_bytes(dir / "ok.txt", "hello");
  options.inputs = {dir / "ok.txt"};
  options.val_fraction = 1.0;
  expect_error([&] { tokenize_corpus(options); }, {"val_fraction", "[0, 1)"});
  options.val_fraction = 0.05;
  options.tokenizer = "nope";
  expect_error([&] { tokenize_corpus(options); }, {"nope", "byte"});
}

TEST(DataTokenize, OutputFeedsTheLoader) {
  TempDir dir;
  TokenizeOptions options;
  options.inputs = {make_corpus(dir)};
  options.separator = "%";
  options.out_dir = dir / "out";
  tokenize_corpus(options);
  TokenLoader train(dir / "out/train_*.bin", 2, 16, 1);
  TokenLoader val(dir / "out/val_*.bin", 2, 8, 1);
  EXPECT_EQ(train.vocab_size(), 257);
  auto [in, tg] = next(train);
  for (std::int32_t id : in) EXPECT_LT(id, 257);
  auto [vin, vtg] = at(val, 0);
  EXPECT_EQ(vin.size(), 16u);
}

}  // namespace
}  // namespace kiln

TEST(DataTokenize, JsonlRecordsAndGlobs) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("kiln_jsonl_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "in");
  std::ofstream(dir / "in" / "a.jsonl") << "{\"text\": \"first document\", \"id\": 1}\n\n"
                                          "{\"text\": \"second document\"}\n";
  std::ofstream(dir / "in" / "b.txt") << "a plain text document";
  std::ofstream(dir / "in" / "c.md") << "not matched by the glob";
  kiln::TokenizeOptions options;
  options.inputs = {(dir / "in" / "*.jsonl").string(), (dir / "in" / "*.txt").string()};
  options.out_dir = (dir / "out").string();
  options.val_fraction = 0.0;
  const kiln::TokenizeReport report = kiln::tokenize_corpus(options);
  EXPECT_EQ(report.documents, 3u);
  // Bytes of the three documents plus one end-of-text each.
  EXPECT_EQ(report.train_tokens, std::string("first document").size() + std::string("second document").size() +
                                      std::string("a plain text document").size() + 3);
  // A malformed record names file:line, unless skipped (and counted).
  std::ofstream(dir / "in" / "bad.jsonl") << "{\"text\": \"ok\"}\n{\"text\": 5}\nnot json\n";
  options.inputs = {(dir / "in" / "bad.jsonl").string()};
  try {
    kiln::tokenize_corpus(options);
    FAIL() << "expected an error";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:2"), std::string::npos) << e.what();
  }
  options.skip_bad_records = true;
  const kiln::TokenizeReport skipped = kiln::tokenize_corpus(options);
  EXPECT_EQ(skipped.documents, 1u);
  EXPECT_EQ(skipped.skipped_records, 2u);
  options.inputs = {(dir / "in" / "*.nothing").string()};
  EXPECT_THROW(kiln::tokenize_corpus(options), kiln::Error);
  fs::remove_all(dir);
}

TEST(DataLoader, BlendsDatasetsByWeight) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("kiln_blend_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  // Source a holds only token 1, source b only token 2 (both within vocab 10).
  kiln::write_shard((dir / "a.bin").string(), std::vector<std::uint32_t>(5000, 1), 10);
  kiln::write_shard((dir / "b.bin").string(), std::vector<std::uint32_t>(500, 2), 10);
  const std::string blend = (dir / "a.bin").string() + "@3," + (dir / "b.bin").string() + "@1";
  kiln::TokenLoader loader(blend, 8, 4, 7);
  std::vector<std::int32_t> in(32), tg(32);
  int from_a = 0, rows = 0;
  for (int i = 0; i < 500; ++i) {
    loader.next_batch(in.data(), tg.data());
    for (int b = 0; b < 8; ++b, ++rows) from_a += in[b * 4] == 1;
  }
  // 3:1 weights, whatever the sources' sizes (a is 10x larger): about 75% from a.
  EXPECT_NEAR(static_cast<double>(from_a) / rows, 0.75, 0.02);
  // Deterministic, and a partition of the blend sees exactly the rows of the whole.
  kiln::TokenLoader again(blend, 8, 4, 7), half(blend, 4, 4, 7);
  half.set_partition(1, 2);
  std::vector<std::int32_t> in2(32), tg2(32), in3(16), tg3(16);
  again.next_batch(in2.data(), tg2.data());
  half.next_batch(in3.data(), tg3.data());
  kiln::TokenLoader first(blend, 8, 4, 7);
  first.next_batch(in.data(), tg.data());
  EXPECT_EQ(in, in2);
  EXPECT_TRUE(std::equal(in3.begin(), in3.end(), in.begin() + 16));
  try {
    kiln::TokenLoader bad((dir / "a.bin").string() + "@zero", 8, 4, 7);
    FAIL() << "expected an error";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a positive weight"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}
