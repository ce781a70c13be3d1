// Builders for attention block layouts.
#include "core/model/attention_layout.h"

#include <algorithm>
#include <sstream>

#include "kernels/error.h"

namespace kiln {

namespace {

void check_block(int block) {
  KILN_CHECK(block == 16 || block == 32 || block == 64 || block == 128,
             "model.attention_block=", block, " is not supported; use 16, 32, 64 or 128");
}

// Whether query block q of `head` sees key block k (k <= q) under the pattern.
bool pattern_allows(const AttentionPattern& p, int head, int q, int k) {
  if (k < p.global) return true;
  if (p.kind == "dense") return true;
  if (p.kind == "local") return q - k < p.window;
  if (p.kind == "strided") return q - k < p.window || (q - k) % p.stride == 0;
  // fixed: own chunk, or a summary block of an earlier chunk.
  if (k / p.stride == q / p.stride) return true;
  const int groups = p.per_head ? p.stride / p.summary : 1;
  const int shift = p.per_head ? (head % groups) * p.summary : 0;
  const int pos = k % p.stride;
  return pos >= p.stride - p.summary - shift && pos < p.stride - shift;
}

}  // namespace

std::string AttentionPattern::describe() const {
  std::ostringstream out;
  out << kind;
  if (kind == "local" || kind == "strided") out << " window " << window;
  if (kind == "strided" || kind == "fixed") out << " stride " << stride;
  if (kind == "fixed") out << " summary " << summary << (per_head ? " per head" : "");
  if (global > 0) out << " global " << global;
  out << ", blocks of " << block;
  return out.str();
}

double BlockLayout::density() const {
  const double causal = 0.5 * num_blocks * (num_blocks + 1.0) * num_layouts;
  return causal > 0 ? static_cast<double>(cols.size()) / causal : 0.0;
}

double BlockLayout::attended_pairs(std::int64_t t) const {
  auto tokens_in = [&](int b) { return static_cast<double>(std::min<std::int64_t>(block, t - std::int64_t{b} * block)); };
  double pairs = 0.0;
  for (int layout = 0; layout < num_layouts; ++layout) {
    const int* rows = row_ptr.data() + layout * (num_blocks + 1);
    for (int q = 0; q < num_blocks; ++q)
      for (int i = rows[q]; i < rows[q + 1]; ++i) {
        const double n = tokens_in(q);
        pairs += cols[i] == q ? n * (n + 1) / 2 : n * tokens_in(cols[i]);
      }
  }
  return pairs / num_layouts;
}

bool BlockLayout::allows(int head, int query_block, int key_block) const {
  const int* rows = row_ptr.data() + (num_layouts > 1 ? head * (num_blocks + 1) : 0);
  for (int i = rows[query_block]; i < rows[query_block + 1]; ++i)
    if (cols[i] == key_block) return true;
  return false;
}

BlockLayout dense_causal_layout(std::int64_t t, int block) {
  AttentionPattern dense;
  dense.block = block;
  return build_layout(dense, t, 1);
}

BlockLayout build_layout(const AttentionPattern& p, std::int64_t t, int heads) {
  check_block(p.block);
  KILN_CHECK(t >= 1, "sequence length must be at least 1, got ", t);
  const std::int64_t blocks = (t + p.block - 1) / p.block;
  KILN_CHECK(blocks * (blocks + 1) / 2 * (p.per_head ? heads : 1) < (std::int64_t{1} << 31),
             "a causal layout of ", t, " tokens in blocks of ", p.block,
             " has more than 2^31 blocks; use a larger model.attention_block or a shorter sequence");
  KILN_CHECK(p.kind == "dense" || p.kind == "local" || p.kind == "strided" || p.kind == "fixed",
             "model.attention: unknown pattern '", p.kind, "'; use dense, local, strided or fixed");
  if (!p.is_dense()) {
    KILN_CHECK(t % p.block == 0, "sparse attention needs the sequence length (", t,
               ") to be a multiple of model.attention_block=", p.block,
               "; change train.seq_len or model.attention_block");
    KILN_CHECK(p.global >= 0 && p.global <= blocks, "model.attention_global=", p.global,
               " blocks is longer than the sequence (", blocks, " blocks of ", p.block, ")");
  }
  if (p.kind == "local" || p.kind == "strided")
    KILN_CHECK(p.window >= 1 && p.window <= blocks, "model.attention_window=", p.window,
               " blocks must be between 1 and the sequence's ", blocks, " blocks of ", p.block,
               " tokens; lower it (or use dense attention)");
  if (p.kind == "strided" || p.kind == "fixed")
    KILN_CHECK(p.stride >= 1 && p.stride <= blocks, "model.attention_stride=", p.stride,
               " blocks must be between 1 and the sequence's ", blocks, " blocks");
  if (p.kind == "fixed")
    KILN_CHECK(p.summary >= 1 && p.summary <= p.stride && (!p.per_head || p.stride % p.summary == 0),
               "model.attention_summary=", p.summary, " must be between 1 and model.attention_stride=",
               p.stride, p.per_head ? " and divide it (per-head summaries take turns)" : "");
  BlockLayout layout;
  layout.block = p.block;
  layout.num_blocks = static_cast<int>(blocks);
  layout.num_layouts = p.kind == "fixed" && p.per_head ? heads : 1;
  for (int h = 0; h < layout.num_layouts; ++h) {
    layout.row_ptr.push_back(static_cast<int>(layout.cols.size()));
    for (int q = 0; q < layout.num_blocks; ++q) {
      for (int k = 0; k <= q; ++k)
        if (pattern_allows(p, h, q, k)) layout.cols.push_back(k);
      layout.row_ptr.push_back(static_cast<int>(layout.cols.size()));
    }
    // Every row holds at least the query's own block (all patterns keep it).
  }
  return layout;
}

std::vector<std::string> attention_kinds(const std::string& spec, int n_layer) {
  std::vector<std::string> kinds;
  if (spec == "gpt3") {
    for (int l = 0; l < n_layer; ++l) kinds.push_back(l % 2 == 0 ? "dense" : "local");
    return kinds;
  }
  std::stringstream in(spec);
  for (std::string item; std::getline(in, item, ',');) {
    KILN_CHECK(item == "dense" || item == "local" || item == "strided" || item == "fixed",
               "model.attention: '", item, "' is not a pattern; use dense, local, strided, fixed, "
               "gpt3, or a comma-separated list of patterns, one per layer");
    kinds.push_back(item);
  }
  KILN_CHECK(!kinds.empty(), "model.attention is empty; use dense, local, strided, fixed or gpt3");
  if (kinds.size() == 1) kinds.assign(n_layer, kinds.front());
  KILN_CHECK(static_cast<int>(kinds.size()) == n_layer, "model.attention lists ", kinds.size(),
             " patterns for ", n_layer, " layers (model.n_layer); give one per layer or a single one");
  return kinds;
}

}  // namespace kiln
