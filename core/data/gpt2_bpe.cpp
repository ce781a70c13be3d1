// GPT-2 byte-level BPE: file loading and checks (any vocabulary in GPT-2's format: the size and
// the end-of-text id come from encoder.json), pre-tokenisation with PCRE2 (also offered alone as
// Gpt2Pretokenizer, for the trainer), rank-ordered merges with a per-thread piece cache, and
// OpenMP batch encoding. The algorithm follows tiktoken (src/lib.rs, byte_pair_merge) so the ids
// are identical; tests/core/test_gpt2_bpe.cpp compares them with a fixture written by tiktoken
// (tests/reference/make_bpe_fixture.py).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "core/data/gpt2_bpe.h"

#include <pcre2.h>
#include <omp.h>

#include <array>
#include <atomic>
#include <queue>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "kernels/error.h"

namespace kiln {
namespace {

// GPT-2's regex with `\s` spelled out as Unicode White_Space (what tiktoken's Rust regex means
// by `\s`). PCRE2's own `\s` under UCP also matches U+180E, which tiktoken does not.
#define KILN_WS "\\x{09}-\\x{0D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}" \
                "\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
constexpr const char* kPattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" KILN_WS "\\p{L}\\p{N}]+"
    "|[" KILN_WS "]+(?![^" KILN_WS "])|[" KILN_WS "]+";
#undef KILN_WS

constexpr std::size_t kCacheEntries = 1 << 16;  // a thread's cache is cleared when this full
constexpr std::size_t kLargePiece = 256;  // longer pieces merge with a heap (n log n, not n^2)
constexpr std::uint32_t kNoRank = std::numeric_limits<std::uint32_t>::max();

std::string fix_hint() {
  return "; point data.tokenizer_dir (or --tokenizer-dir of kiln tokenize and kiln sample) at a "
         "folder holding OpenAI's GPT-2 encoder.json and vocab.bpe (or the two files written by "
         "`kiln tokenizer train`); the environment variable KILN_GPT2_BPE_DIR is read only when "
         "neither names a folder";
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KILN_CHECK(in, "gpt2 tokenizer: cannot open ", path, " (", std::strerror(errno), ")", fix_hint());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

bool is_printable_byte(int b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes
// map to U+0100.. in byte order. Returns codepoint -> byte (-1: not a byte's codepoint).
std::array<int, 324> unicode_to_byte_table() {
  std::array<int, 324> table;
  table.fill(-1);
  int next = 256;
  for (int b = 0; b < 256; ++b) table[is_printable_byte(b) ? b : next++] = b;
  return table;
}

// The inverse: byte -> codepoint.
std::array<std::uint16_t, 256> byte_to_unicode_table() {
  std::array<std::uint16_t, 256> table{};
  std::uint16_t next = 256;
  for (int b = 0; b < 256; ++b)
    table[b] = is_printable_byte(b) ? static_cast<std::uint16_t>(b) : next++;
  return table;
}

// A vocabulary string (UTF-8 of byte-to-unicode codepoints) back to the bytes it stands for;
// false when it is not such a string.
bool vocab_to_bytes(std::string_view text, const std::array<int, 324>& table, std::string& out) {
  out.clear();
  for (std::size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    std::uint32_t cp;
    if (c < 0x80) {
      cp = c;
      i += 1;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < text.size()) {
      cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(text[i + 1]) & 0x3Fu);
      i += 2;
    } else {
      return false;  // every byte's codepoint is below U+0144: at most two UTF-8 bytes
    }
    if (cp >= table.size() || table[cp] < 0) return false;
    out.push_back(static_cast<char>(table[cp]));
  }
  return !out.empty();
}

pcre2_code* compile_gpt2_regex() {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* regex =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPattern), PCRE2_ZERO_TERMINATED,
                    PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &offset, nullptr);
  if (regex == nullptr) {
    PCRE2_UCHAR text[256];
    pcre2_get_error_message(error, text, sizeof(text));
    throw Error(message("gpt2 tokenizer: PCRE2 rejected GPT-2's pattern at offset ", offset, ": ",
                        reinterpret_cast<const char*>(text), " (PCRE2 10.34 or newer is needed)"));
  }
  pcre2_jit_compile(regex, PCRE2_JIT_COMPLETE);  // without JIT support, matching interprets
  return regex;
}

// Splits text with the regex and calls piece(p) for each piece. Bytes the regex cannot match
// (invalid UTF-8) form pieces of their own, so the pieces always concatenate to the text.
template <class PieceFn>
void split_pieces(const pcre2_code* regex, std::string_view text, PieceFn&& piece) {
  if (text.empty()) return;
  pcre2_match_data* match = pcre2_match_data_create_from_pattern(regex, nullptr);
  KILN_CHECK(match != nullptr, "gpt2 tokenizer: out of memory for PCRE2 match data");
  struct FreeMatch {
    pcre2_match_data* match;
    ~FreeMatch() { pcre2_match_data_free(match); }
  } free_match{match};
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  std::size_t at = 0;
  while (at < text.size()) {
    const int rc = pcre2_match(regex, subject, text.size(), at, 0, match, nullptr);
    std::size_t begin = text.size(), end = text.size();
    if (rc >= 0) {
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
      begin = ovector[0];
      end = ovector[1];
    } else if (rc != PCRE2_ERROR_NOMATCH) {
      throw Error(message("gpt2 tokenizer: PCRE2 match failed with error ", rc, " at byte ", at));
    }
    if (begin > at) piece(text.substr(at, begin - at));
    if (end > begin) piece(text.substr(begin, end - begin));
    KILN_ASSERT(end > at || rc < 0);
    at = end;
  }
}

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using RankMap = std::unordered_map<std::string, std::uint32_t, StringHash, std::equal_to<>>;

// Pieces already merged by this thread, for one tokenizer instance at a time.
struct PieceCache {
  std::uint64_t owner = 0;
  std::unordered_map<std::string, std::vector<std::uint32_t>, StringHash, std::equal_to<>> pieces;
};
thread_local PieceCache t_cache;
std::atomic<std::uint64_t> g_next_instance{1};

}  // namespace

struct Gpt2Bpe::Impl {
  RankMap ranks;                         // token bytes -> id (= merge rank, as in tiktoken)
  std::vector<std::string> token_bytes;  // id -> bytes ("<|endoftext|>" for the eot id)
  std::uint32_t eot = 0;
  pcre2_code* regex = nullptr;
  std::uint64_t instance = g_next_instance.fetch_add(1);

  ~Impl() { pcre2_code_free(regex); }
  void load_encoder(const std::string& path, const std::array<int, 324>& table);
  void check_merges(const std::string& path, const std::array<int, 324>& table) const;
  void encode_piece(std::string_view piece, std::vector<std::uint32_t>& out) const;
  void byte_pair_merge(std::string_view piece, std::vector<std::uint32_t>& out) const;
  void byte_pair_merge_large(std::string_view piece, std::vector<std::uint32_t>& out) const;
  void encode_ordinary(std::string_view text, std::vector<std::uint32_t>& out) const;
};

// encoder.json: N token strings -> the ids 0..N-1, each once (the vocab size is N), one of them
// "<|endoftext|>" (the end-of-text id); every other string is a byte-level BPE string.
void Gpt2Bpe::Impl::load_encoder(const std::string& path, const std::array<int, 324>& table) {
  nlohmann::json encoder;
  try {
    encoder = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(message("gpt2 tokenizer: ", path, " is not valid JSON (", e.what(),
                        "); replace it with OpenAI's GPT-2 encoder.json", fix_hint()));
  }
  constexpr std::size_t kMinEntries = 257;  // the 256 bytes and <|endoftext|>
  KILN_CHECK(encoder.is_object() && encoder.size() >= kMinEntries, "gpt2 tokenizer: ", path,
             " should map at least ", kMinEntries, " token strings (the 256 bytes and ",
             kEotText, ") to ids but holds ", encoder.is_object() ? encoder.size() : 0,
             " entries; it is not a byte-level BPE encoder.json", fix_hint());
  const std::size_t n = encoder.size();
  KILN_CHECK(n <= std::numeric_limits<std::uint32_t>::max() / 2, "gpt2 tokenizer: ", path,
             " holds ", n, " entries, too many for 32-bit token ids", fix_hint());
  const auto eot_entry = encoder.find(std::string(kEotText));
  KILN_CHECK(eot_entry != encoder.end(), "gpt2 tokenizer: ", path, " has no \"", kEotText,
             "\" entry; the end-of-text token must be in the vocabulary", fix_hint());
  token_bytes.assign(n, std::string());
  std::vector<char> seen(n, 0);
  std::string bytes;
  for (const auto& [key, value] : encoder.items()) {
    KILN_CHECK(value.is_number_unsigned() && value.get<std::uint64_t>() < n, "gpt2 tokenizer: ",
               path, ": token '", key, "' has id ", value.dump(), ", but the ids must be the ",
               "integers 0..", n - 1, " (one per entry, dense)", fix_hint());
    const auto id = value.get<std::uint32_t>();
    KILN_CHECK(!seen[id], "gpt2 tokenizer: ", path, ": id ", id, " appears twice, but the ids ",
               "must be the integers 0..", n - 1, " (one per entry, dense)", fix_hint());
    seen[id] = 1;
    if (key == kEotText) {
      eot = id;
      token_bytes[id] = key;
      continue;
    }
    KILN_CHECK(vocab_to_bytes(key, table, bytes), "gpt2 tokenizer: ", path, ": token '", key,
               "' is not a byte-level BPE string", fix_hint());
    token_bytes[id] = bytes;
    ranks.emplace(bytes, id);
  }
  KILN_CHECK(ranks.size() == n - 1, "gpt2 tokenizer: ", path,
             " maps two tokens to the same bytes", fix_hint());
  for (int b = 0; b < 256; ++b)
    KILN_CHECK(ranks.count(std::string(1, static_cast<char>(b))), "gpt2 tokenizer: ", path,
               " lacks the token for byte ", b, fix_hint());
}

// vocab.bpe lists the merges in priority order after a "#version" line. tiktoken ranks the
// merged token of merge i as 256 + i and requires that to equal its id in encoder.json; so do
// we, which lets the ids serve as ranks.
void Gpt2Bpe::Impl::check_merges(const std::string& path, const std::array<int, 324>& table) const {
  std::istringstream in(read_file(path));
  std::string line, left, right;
  KILN_CHECK(std::getline(in, line) && line.rfind("#version", 0) == 0, "gpt2 tokenizer: ", path,
             " does not start with a '#version' line; it is not GPT-2's vocab.bpe", fix_hint());
  std::uint32_t rank = 256;
  int line_number = 1;
  while (std::getline(in, line)) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const auto space = line.find(' ');
    const bool ok = space != std::string::npos && line.find(' ', space + 1) == std::string::npos &&
                    vocab_to_bytes(std::string_view(line).substr(0, space), table, left) &&
                    vocab_to_bytes(std::string_view(line).substr(space + 1), table, right);
    KILN_CHECK(ok, "gpt2 tokenizer: ", path, ":", line_number, ": '", line,
               "' is not a merge of two byte-level BPE strings", fix_hint());
    const auto merged = ranks.find(left + right);
    KILN_CHECK(merged != ranks.end() && merged->second == rank, "gpt2 tokenizer: ", path, ":",
               line_number, ": merge '", line, "' does not match encoder.json (expected id ", rank,
               "); the two files come from different vocabularies", fix_hint());
    ++rank;
  }
  const std::size_t expected = token_bytes.size() - 257;  // all but the bytes and end-of-text
  KILN_CHECK(rank - 256 == expected, "gpt2 tokenizer: ", path, " holds ", rank - 256,
             " merges but encoder.json has ", expected, " tokens besides the 256 bytes and ",
             kEotText, " (GPT-2: 50000); the file is truncated or the two files come from ",
             "different vocabularies", fix_hint());
}

// tiktoken's byte_pair_merge: start from single bytes; repeatedly join the adjacent pair whose
// concatenation has the lowest rank (leftmost on ties) until no pair is a token.
void Gpt2Bpe::Impl::byte_pair_merge(std::string_view piece, std::vector<std::uint32_t>& out) const {
  struct Part {
    std::size_t start;
    std::uint32_t rank;  // rank of this part joined with the next one
  };
  auto rank_of = [&](std::size_t begin, std::size_t end) {
    const auto it = ranks.find(piece.substr(begin, end - begin));
    return it == ranks.end() ? kNoRank : it->second;
  };
  std::vector<Part> parts;
  parts.reserve(piece.size() + 1);
  for (std::size_t i = 0; i < piece.size(); ++i)
    parts.push_back({i, i + 2 <= piece.size() ? rank_of(i, i + 2) : kNoRank});
  parts.push_back({piece.size(), kNoRank});
  // parts[i].rank covers parts[i].start .. parts[i + 2].start.
  auto pair_rank = [&](std::size_t i) {
    return i + 3 < parts.size() ? rank_of(parts[i].start, parts[i + 3].start) : kNoRank;
  };
  while (parts.size() > 2) {
    std::size_t best = 0;
    std::uint32_t best_rank = kNoRank;
    for (std::size_t i = 0; i + 2 < parts.size(); ++i)
      if (parts[i].rank < best_rank) best_rank = parts[i].rank, best = i;
    if (best_rank == kNoRank) break;
    parts[best].rank = pair_rank(best);
    if (best > 0) parts[best - 1].rank = pair_rank(best - 1);
    parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
    const std::uint32_t id = rank_of(parts[i].start, parts[i + 1].start);
    KILN_ASSERT(id != kNoRank);
    out.push_back(id);
  }
}

// The same merges as byte_pair_merge for long pieces (a run of 100 kB of letters would take
// minutes there): candidate pairs in a min-heap keyed (rank, start), so the lowest rank and then
// the leftmost pair is joined first, exactly as the linear scan does. A popped pair is stale
// when its left part has been absorbed or its rank changed (a longer span has another rank).
void Gpt2Bpe::Impl::byte_pair_merge_large(std::string_view piece,
                                          std::vector<std::uint32_t>& out) const {
  const std::size_t n = piece.size();
  constexpr std::size_t kNone = std::numeric_limits<std::size_t>::max();
  // Parts are named by their start byte; next/prev link the live ones.
  std::vector<std::size_t> next(n), prev(n);
  std::vector<std::uint32_t> rank(n, kNoRank);  // rank of the part joined with its next part
  std::vector<char> alive(n, 1);
  for (std::size_t i = 0; i < n; ++i) {
    next[i] = i + 1 < n ? i + 1 : kNone;
    prev[i] = i > 0 ? i - 1 : kNone;
  }
  auto end_of = [&](std::size_t part) { return next[part] == kNone ? n : next[part]; };
  auto rank_of = [&](std::size_t begin, std::size_t end) {
    const auto it = ranks.find(piece.substr(begin, end - begin));
    return it == ranks.end() ? kNoRank : it->second;
  };
  using Entry = std::pair<std::uint32_t, std::size_t>;  // (rank, start)
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> heap;
  auto update = [&](std::size_t part) {
    if (part == kNone || next[part] == kNone) return;
    rank[part] = rank_of(part, end_of(next[part]));
    if (rank[part] != kNoRank) heap.push({rank[part], part});
  };
  for (std::size_t i = 0; i + 1 < n; ++i) update(i);
  while (!heap.empty()) {
    const auto [r, part] = heap.top();
    heap.pop();
    if (!alive[part] || rank[part] != r || next[part] == kNone) continue;
    const std::size_t absorbed = next[part];
    alive[absorbed] = 0;
    next[part] = next[absorbed];
    if (next[part] != kNone) prev[next[part]] = part;
    rank[part] = kNoRank;
    update(part);
    update(prev[part]);
  }
  for (std::size_t part = 0; part != kNone; part = next[part]) {
    const std::uint32_t id = rank_of(part, end_of(part));
    KILN_ASSERT(id != kNoRank);
    out.push_back(id);
  }
}

void Gpt2Bpe::Impl::encode_piece(std::string_view piece, std::vector<std::uint32_t>& out) const {
  if (const auto it = ranks.find(piece); it != ranks.end()) {
    out.push_back(it->second);
    return;
  }
  PieceCache& cache = t_cache;
  if (cache.owner != instance) {
    cache.pieces.clear();
    cache.owner = instance;
  }
  if (const auto hit = cache.pieces.find(piece); hit != cache.pieces.end()) {
    out.insert(out.end(), hit->second.begin(), hit->second.end());
    return;
  }
  std::vector<std::uint32_t> ids;
  if (piece.size() > kLargePiece) byte_pair_merge_large(piece, ids);
  else byte_pair_merge(piece, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cache.pieces.size() >= kCacheEntries) cache.pieces.clear();
  cache.pieces.emplace(std::string(piece), std::move(ids));
}

// Splits text with the regex and merges each piece; since the pieces cover every byte, every
// input round-trips through decode().
void Gpt2Bpe::Impl::encode_ordinary(std::string_view text, std::vector<std::uint32_t>& out) const {
  split_pieces(regex, text, [&](std::string_view piece) { encode_piece(piece, out); });
}

Gpt2Bpe::Gpt2Bpe(const std::string& dir) : impl_(std::make_unique<Impl>()) {
  const auto table = unicode_to_byte_table();
  impl_->load_encoder(dir + "/encoder.json", table);
  impl_->check_merges(dir + "/vocab.bpe", table);
  impl_->regex = compile_gpt2_regex();
  vocab_size_ = static_cast<int>(impl_->token_bytes.size());
  eot_ = impl_->eot;
}

Gpt2Bpe::~Gpt2Bpe() = default;

std::vector<std::uint32_t> Gpt2Bpe::encode(std::string_view text) const {
  std::vector<std::uint32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  impl_->encode_ordinary(text, ids);
  return ids;
}

std::vector<std::uint32_t> Gpt2Bpe::encode_with_special(std::string_view text) const {
  std::vector<std::uint32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  std::size_t at = 0;
  while (true) {
    const std::size_t found = text.find(kEotText, at);
    impl_->encode_ordinary(text.substr(at, found == std::string_view::npos ? found : found - at), ids);
    if (found == std::string_view::npos) break;
    ids.push_back(eot_);
    at = found + kEotText.size();
  }
  return ids;
}

std::vector<std::vector<std::uint32_t>> Gpt2Bpe::encode_batch(
    const std::vector<std::string_view>& docs, int threads) const {
  std::vector<std::vector<std::uint32_t>> ids(docs.size());
  const int n = threads > 0 ? threads : omp_get_max_threads();
  std::atomic<bool> failed{false};
  std::string failure;
#pragma omp parallel for schedule(dynamic, 8) num_threads(n)
  for (std::size_t i = 0; i < docs.size(); ++i) {
    if (failed.load(std::memory_order_relaxed)) continue;
    try {
      ids[i] = encode(docs[i]);
    } catch (const std::exception& e) {
#pragma omp critical(kiln_gpt2_failure)
      if (!failed.exchange(true)) failure = e.what();
    }
  }
  KILN_CHECK(!failed, failure);
  return ids;
}

std::string Gpt2Bpe::decode(const std::vector<std::uint32_t>& ids) const {
  std::string text;
  text.reserve(ids.size() * 4);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    KILN_CHECK(ids[i] < static_cast<std::uint32_t>(vocab_size_), "gpt2 tokenizer: token id ",
               ids[i], " at position ", i, " is out of range (vocab_size ", vocab_size_,
               "); the ids were probably made by a different tokenizer");
    text.append(impl_->token_bytes[ids[i]]);
  }
  return text;
}

struct Gpt2Pretokenizer::Regex {
  pcre2_code* code = compile_gpt2_regex();
  ~Regex() { pcre2_code_free(code); }
};

Gpt2Pretokenizer::Gpt2Pretokenizer() : regex_(std::make_unique<Regex>()) {}
Gpt2Pretokenizer::~Gpt2Pretokenizer() = default;

void Gpt2Pretokenizer::split(std::string_view text,
                             const std::function<void(std::string_view)>& piece) const {
  split_pieces(regex_->code, text, piece);
}

std::array<std::uint8_t, 256> gpt2_byte_order() {
  std::array<std::uint8_t, 256> order{};
  int id = 0;
  for (int b = 0; b < 256; ++b)
    if (is_printable_byte(b)) order[id++] = static_cast<std::uint8_t>(b);
  for (int b = 0; b < 256; ++b)
    if (!is_printable_byte(b)) order[id++] = static_cast<std::uint8_t>(b);
  return order;
}

std::string gpt2_token_text(std::string_view bytes) {
  static const std::array<std::uint16_t, 256> table = byte_to_unicode_table();
  std::string text;
  text.reserve(bytes.size() * 2);
  for (char c : bytes) {
    const std::uint16_t cp = table[static_cast<unsigned char>(c)];
    if (cp < 0x80) {
      text.push_back(static_cast<char>(cp));
    } else {  // every codepoint is below U+0144: two UTF-8 bytes
      text.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      text.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  return text;
}

std::string gpt2_bpe_dir(const std::string& dir) {
  if (!dir.empty()) return dir;
  const char* env = std::getenv("KILN_GPT2_BPE_DIR");
  if (env != nullptr && *env != '\0') return env;
  throw Error("gpt2 tokenizer: no vocabulary folder given; set data.tokenizer_dir (kiln tokenize "
              "and kiln sample: --tokenizer-dir) or the environment variable KILN_GPT2_BPE_DIR to "
              "the folder holding encoder.json and vocab.bpe");
}

}  // namespace kiln
