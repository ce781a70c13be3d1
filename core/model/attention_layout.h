// Block layouts for attention: for each query block, the key blocks it attends to, stored as
// compressed rows (one set of rows per head where heads differ). The kernel contract is in
// kernels/attention.h. Patterns (Child et al. 2019, "Generating Long Sequences with Sparse
// Transformers"; GPT-3's banded layers), all causal, at block granularity:
//   dense    every earlier block
//   local    the `window` most recent blocks (a band; GPT-3's locally banded layers)
//   strided  the `window` most recent blocks and every `stride`-th block before them
//   fixed    the blocks of the query's own chunk of `stride` blocks, plus the last `summary`
//            blocks of every earlier chunk (with per_head, each head uses other summary blocks)
// and any pattern can add `global` leading blocks that every query sees. A layout is built once
// per (pattern, sequence length) and holds O(active blocks) integers, never O(T^2).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/kernel_table.h"

namespace kiln {

struct AttentionPattern {
  std::string kind = "dense";  // dense | local | strided | fixed
  int block = 64;              // tokens per block: 16, 32, 64 or 128
  int window = 4;              // local/strided: recent blocks attended, the query's own included
  int stride = 4;              // strided: period; fixed: blocks per chunk
  int summary = 1;             // fixed: summary blocks at the end of each chunk
  int global = 0;              // leading blocks every query attends to
  bool per_head = false;       // fixed: heads take turns over the summary positions

  bool is_dense() const { return kind == "dense" && global == 0; }
  std::string describe() const;
};

struct BlockLayout {
  int block = 64;
  int num_blocks = 0;
  int num_layouts = 1;       // 1, or one per head
  std::vector<int> row_ptr;  // (num_layouts * (num_blocks + 1))
  std::vector<int> cols;     // ascending within each row

  BlockLayoutView view(int first_head = 0) const {
    BlockLayoutView v{block, num_blocks, row_ptr.data(), cols.data()};
    v.num_layouts = num_layouts;
    v.first_head = first_head;
    return v;
  }
  // Active blocks over the causal (lower-triangular) blocks, averaged over layouts.
  double density() const;
  bool allows(int head, int query_block, int key_block) const;
  // (query, key) token pairs with key <= query that the layout lets attend, in a sequence of t
  // tokens (the last block may be partial), averaged over layouts: t(t+1)/2 for dense causal.
  double attended_pairs(std::int64_t t) const;
};

// Every key block up to and including the query's own: full causal attention. t need not be a
// multiple of block (the last block is partial).
BlockLayout dense_causal_layout(std::int64_t t, int block);

// The layout of a pattern for sequences of t tokens and `heads` heads. Errors name the config
// key to change (t not a multiple of the block for a sparse pattern, a window longer than the
// sequence, summary > stride, ...).
BlockLayout build_layout(const AttentionPattern& pattern, std::int64_t t, int heads);

// model.attention as written in a config ("dense", "local", "strided", "fixed", "gpt3" = dense
// on even layers and local on odd ones, or a comma-separated list with one entry per layer)
// expanded to one kind per layer; throws naming the bad entry.
std::vector<std::string> attention_kinds(const std::string& spec, int n_layer);

}  // namespace kiln
