// BPE learning: piece counting over OpenMP threads, then the merge loop. The loop never
// recounts all pairs: it keeps the count of every adjacent pair, an index from each pair to the
// words (distinct pieces) that contain it, and a max-heap of (count, pair) with lazy deletion.
// A merge rewrites only the words listed for its pair and turns the pairs it touched into count
// deltas; pairs whose count grew get a fresh heap entry, and a popped entry whose count is
// stale is pushed again with the current count (or dropped). Every pair therefore has an entry
// at least as large as its count, so the first current entry popped is the true maximum.
#include "core/data/bpe_train.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/checkpoint/atomic_file.h"
#include "core/data/gpt2_bpe.h"
#include "kernels/error.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t kBatchBytes = std::size_t{64} << 20;  // text held at once while counting

using PairKey = std::uint64_t;  // (left id << 32) | right id
PairKey pair_key(std::uint32_t left, std::uint32_t right) {
  return (static_cast<PairKey>(left) << 32) | right;
}
std::uint32_t left_of(PairKey pair) { return static_cast<std::uint32_t>(pair >> 32); }
std::uint32_t right_of(PairKey pair) { return static_cast<std::uint32_t>(pair); }

struct Word {
  std::vector<std::uint32_t> symbols;  // token ids
  std::uint64_t count = 0;             // occurrences of the piece in the corpus
};

struct HeapEntry {
  std::uint64_t count;
  PairKey pair;
};

class Learner {
 public:
  Learner(const BpePieceCounts& counts, const BpeTrainOptions& options);
  BpeVocabulary run(int vocab_size);

 private:
  // true when a is popped after b: fewer occurrences, or as many and larger bytes.
  bool lower(const HeapEntry& a, const HeapEntry& b) const;
  void push(std::uint64_t count, PairKey pair);
  void merge(PairKey pair, std::uint32_t id);
  void merge_word(std::uint32_t w, std::uint32_t left, std::uint32_t right, std::uint32_t id);
  void change(PairKey pair, std::int64_t delta) { deltas_[pair] += delta; }

  BpeTrainOptions options_;
  std::vector<std::string> tokens_;  // id -> bytes
  std::unordered_map<std::string, std::uint32_t> token_ids_;  // to check that tokens are new
  std::vector<Word> words_;
  std::unordered_map<PairKey, std::uint64_t> pair_counts_;
  std::unordered_map<PairKey, std::vector<std::uint32_t>> where_;  // may hold stale words
  std::vector<HeapEntry> heap_;
  // Scratch of one merge.
  std::unordered_map<PairKey, std::int64_t> deltas_;
  std::vector<std::uint32_t> merged_;
  std::vector<char> is_new_, touched_;
};

Learner::Learner(const BpePieceCounts& counts, const BpeTrainOptions& options)
    : options_(options) {
  const std::array<std::uint8_t, 256> order = gpt2_byte_order();
  std::array<std::uint32_t, 256> byte_id{};
  for (std::uint32_t id = 0; id < 256; ++id) {
    byte_id[order[id]] = id;
    tokens_.emplace_back(1, static_cast<char>(order[id]));
    token_ids_.emplace(tokens_.back(), id);
  }
  // Words in byte order, so nothing below depends on the hash map's iteration order.
  std::vector<std::pair<std::string_view, std::uint64_t>> pieces;
  pieces.reserve(counts.pieces().size());
  for (const auto& [piece, count] : counts.pieces())
    if (piece.size() >= 2) pieces.emplace_back(piece, count);
  std::sort(pieces.begin(), pieces.end());
  words_.reserve(pieces.size());
  for (const auto& [piece, count] : pieces) {
    Word word;
    word.count = count;
    for (char c : piece) word.symbols.push_back(byte_id[static_cast<unsigned char>(c)]);
    words_.push_back(std::move(word));
  }
  for (std::uint32_t w = 0; w < words_.size(); ++w) {
    const Word& word = words_[w];
    for (std::size_t i = 0; i + 1 < word.symbols.size(); ++i) {
      const PairKey pair = pair_key(word.symbols[i], word.symbols[i + 1]);
      pair_counts_[pair] += word.count;
      std::vector<std::uint32_t>& list = where_[pair];
      if (list.empty() || list.back() != w) list.push_back(w);
    }
  }
  heap_.reserve(pair_counts_.size());
  for (const auto& [pair, count] : pair_counts_) heap_.push_back({count, pair});
  std::make_heap(heap_.begin(), heap_.end(),
                 [this](const HeapEntry& a, const HeapEntry& b) { return lower(a, b); });
}

bool Learner::lower(const HeapEntry& a, const HeapEntry& b) const {
  if (a.count != b.count) return a.count < b.count;
  const int left = tokens_[left_of(a.pair)].compare(tokens_[left_of(b.pair)]);
  if (left != 0) return left > 0;
  return tokens_[right_of(a.pair)].compare(tokens_[right_of(b.pair)]) > 0;
}

void Learner::push(std::uint64_t count, PairKey pair) {
  heap_.push_back({count, pair});
  std::push_heap(heap_.begin(), heap_.end(),
                 [this](const HeapEntry& a, const HeapEntry& b) { return lower(a, b); });
}

BpeVocabulary Learner::run(int vocab_size) {
  BpeVocabulary vocab;
  const auto cmp = [this](const HeapEntry& a, const HeapEntry& b) { return lower(a, b); };
  while (static_cast<int>(tokens_.size()) + 1 < vocab_size) {
    if (heap_.empty()) {
      vocab.stop = BpeVocabulary::Stop::kNoPairs;
      break;
    }
    std::pop_heap(heap_.begin(), heap_.end(), cmp);
    const HeapEntry top = heap_.back();
    heap_.pop_back();
    const auto found = pair_counts_.find(top.pair);
    const std::uint64_t current = found == pair_counts_.end() ? 0 : found->second;
    if (current != top.count) {  // stale: the pair was seen more often when this was pushed
      if (current > 0 && current < top.count) push(current, top.pair);
      continue;
    }
    if (current < options_.min_frequency) {
      vocab.stop = BpeVocabulary::Stop::kMinFrequency;
      break;
    }
    // A merge never makes a token that exists: where a token's bytes are whole tokens of a word,
    // they were merged there exactly as in the token alone (no merge crosses a boundary that
    // survives), so once T = x + y exists, T never again lies in a word as two other tokens.
    const std::uint32_t left = left_of(top.pair), right = right_of(top.pair);
    const auto id = static_cast<std::uint32_t>(tokens_.size());
    const bool added = token_ids_.emplace(tokens_[left] + tokens_[right], id).second;
    KILN_ASSERT(added);
    tokens_.push_back(tokens_[left] + tokens_[right]);
    vocab.merges.emplace_back(left, right);
    merge(top.pair, id);
  }
  vocab.tokens = std::move(tokens_);
  return vocab;
}

// Joins every occurrence of pair into id, in all words that hold it, and updates the counts.
void Learner::merge(PairKey pair, std::uint32_t id) {
  std::vector<std::uint32_t> words;
  if (auto node = where_.extract(pair)) words = std::move(node.mapped());
  std::sort(words.begin(), words.end());
  words.erase(std::unique(words.begin(), words.end()), words.end());
  deltas_.clear();
  for (std::uint32_t w : words) merge_word(w, left_of(pair), right_of(pair), id);
  pair_counts_.erase(pair);
  for (const auto& [changed, delta] : deltas_) {
    if (changed == pair || delta == 0) continue;  // the merged pair is gone from every word
    std::uint64_t& count = pair_counts_[changed];
    KILN_ASSERT(delta > 0 || count >= static_cast<std::uint64_t>(-delta));
    count += static_cast<std::uint64_t>(delta);
    if (count == 0) {
      pair_counts_.erase(changed);
      where_.erase(changed);
    } else if (delta > 0) {
      push(count, changed);
    }
  }
}

// Rewrites one word. The pairs that change are those with a side in a merged occurrence: they
// leave with the old symbols and come back, with the new id, from the new ones; every other
// pair is the same in both (adjacent untouched symbols stay adjacent), so it is not counted.
void Learner::merge_word(std::uint32_t w, std::uint32_t left, std::uint32_t right,
                         std::uint32_t id) {
  Word& word = words_[w];
  const std::vector<std::uint32_t>& old = word.symbols;
  const std::size_t n = old.size();
  merged_.clear();
  is_new_.clear();
  touched_.assign(n, 0);
  bool any = false;
  for (std::size_t i = 0; i < n;) {
    if (i + 1 < n && old[i] == left && old[i + 1] == right) {
      merged_.push_back(id);
      is_new_.push_back(1);
      touched_[i] = touched_[i + 1] = 1;
      any = true;
      i += 2;
    } else {
      merged_.push_back(old[i]);
      is_new_.push_back(0);
      i += 1;
    }
  }
  if (!any) return;  // a stale entry of the index
  const auto count = static_cast<std::int64_t>(word.count);
  for (std::size_t i = 0; i + 1 < n; ++i)
    if (touched_[i] || touched_[i + 1]) change(pair_key(old[i], old[i + 1]), -count);
  for (std::size_t j = 0; j + 1 < merged_.size(); ++j) {
    if (!is_new_[j] && !is_new_[j + 1]) continue;
    const PairKey pair = pair_key(merged_[j], merged_[j + 1]);
    change(pair, count);
    std::vector<std::uint32_t>& list = where_[pair];
    if (list.empty() || list.back() != w) list.push_back(w);
  }
  word.symbols.swap(merged_);
}

void write_encoder(const BpeVocabulary& vocab, const std::string& path) {
  std::string text = "{";
  for (std::size_t id = 0; id < vocab.tokens.size(); ++id) {
    text += nlohmann::json(gpt2_token_text(vocab.tokens[id])).dump(-1, ' ', true);
    text += ": " + std::to_string(id) + ", ";
  }
  text += nlohmann::json(std::string(kEotText)).dump() + ": " + std::to_string(vocab.eot()) + "}";
  write_file_atomic(path, text);
}

void write_merges(const BpeVocabulary& vocab, const std::string& path) {
  std::string text = "#version: 0.2\n";
  for (const auto& [left, right] : vocab.merges)
    text += gpt2_token_text(vocab.tokens[left]) + " " + gpt2_token_text(vocab.tokens[right]) + "\n";
  write_file_atomic(path, text);
}

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const std::string& part : parts) out += (out.empty() ? "" : " ") + part;
  return out;
}

}  // namespace

void BpePieceCounts::add(const std::vector<std::string_view>& documents, int threads) {
  static const Gpt2Pretokenizer pretokenizer;
  const int n = std::max(1, std::min<int>(threads > 0 ? threads : omp_get_max_threads(),
                                          static_cast<int>(documents.size())));
  std::vector<Map> local(static_cast<std::size_t>(n));
  std::atomic<bool> failed{false};
  std::string failure;
#pragma omp parallel num_threads(n)
  {
    Map& mine = local[static_cast<std::size_t>(omp_get_thread_num())];
#pragma omp for schedule(dynamic, 16)
    for (std::size_t i = 0; i < documents.size(); ++i) {
      if (failed.load(std::memory_order_relaxed)) continue;
      try {
        pretokenizer.split(documents[i], [&](std::string_view piece) {
          if (const auto it = mine.find(piece); it != mine.end()) ++it->second;
          else mine.emplace(std::string(piece), 1);
        });
      } catch (const std::exception& e) {
#pragma omp critical(kiln_bpe_count_failure)
        if (!failed.exchange(true)) failure = e.what();
      }
    }
  }
  KILN_CHECK(!failed, failure);
  for (Map& counts : local) {
    while (!counts.empty()) {
      auto node = counts.extract(counts.begin());
      const auto it = pieces_.find(node.key());
      if (it != pieces_.end()) it->second += node.mapped();
      else pieces_.insert(std::move(node));
    }
  }
  documents_ += documents.size();
  for (std::string_view doc : documents) bytes_ += doc.size();
}

void BpePieceCounts::add_piece(std::string_view piece, std::uint64_t count) {
  if (piece.empty() || count == 0) return;
  if (const auto it = pieces_.find(piece); it != pieces_.end()) it->second += count;
  else pieces_.emplace(std::string(piece), count);
  bytes_ += piece.size() * count;
}

void check_bpe_vocab_size(int vocab_size) {
  KILN_CHECK(vocab_size >= kMinBpeVocabSize, "tokenizer train: vocab size ", vocab_size,
             " is too small; the minimum is ", kMinBpeVocabSize,
             " (256 byte tokens, at least one merge and ", kEotText, ")");
}

BpeVocabulary train_bpe(const BpePieceCounts& counts, int vocab_size,
                        const BpeTrainOptions& options) {
  check_bpe_vocab_size(vocab_size);
  Learner learner(counts, options);
  return learner.run(vocab_size);
}

BpeVocabulary train_bpe(const std::vector<std::string_view>& documents, int vocab_size,
                        const BpeTrainOptions& options) {
  check_bpe_vocab_size(vocab_size);
  BpePieceCounts counts;
  counts.add(documents, options.threads);
  return train_bpe(counts, vocab_size, options);
}

BpeCorpusCounts count_corpus_pieces(const CorpusOptions& corpus, int threads) {
  BpeCorpusCounts result;
  result.files = list_corpus_files(corpus, result.skipped);
  std::vector<std::string> batch;
  std::size_t batch_bytes = 0;
  const auto flush = [&] {
    result.counts.add(std::vector<std::string_view>(batch.begin(), batch.end()), threads);
    batch.clear();
    batch_bytes = 0;
  };
  for_each_corpus_document(result.files, corpus, &result.skipped, &result.skipped_records,
                           [&](std::string_view doc) {
                             batch.emplace_back(doc);
                             batch_bytes += doc.size();
                             if (batch_bytes >= kBatchBytes) flush();
                           });
  if (!batch.empty()) flush();
  std::sort(result.skipped.begin(), result.skipped.end());
  KILN_CHECK(result.counts.documents() > 0, corpus.command, ": the inputs (", join(corpus.inputs),
             ") hold no text: ", result.files.size(), " files read, ", result.skipped.size(),
             " skipped as links or binary; check --input");
  return result;
}

std::vector<std::string> write_bpe_files(const BpeVocabulary& vocab, const std::string& dir) {
  KILN_CHECK(vocab.tokens.size() >= 256,
             "tokenizer train: the vocabulary lacks the 256 byte tokens");
  try {
    fs::create_directories(dir);
  } catch (const fs::filesystem_error& e) {
    throw Error(message("tokenizer train: cannot create the output folder ", dir, ": ", e.what(),
                        "; choose a writable --out"));
  }
  const std::string encoder = (fs::path(dir) / "encoder.json").string();
  const std::string merges = (fs::path(dir) / "vocab.bpe").string();
  write_merges(vocab, merges);
  write_encoder(vocab, encoder);
  return {encoder, merges};
}

}  // namespace kiln
