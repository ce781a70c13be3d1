// Block layouts for attention: for each query block, the key blocks it attends to, stored as
// compressed rows. The kernel contract is documented in kernels/attention.h. Dense causal
// attention is the layout whose row i lists key blocks 0..i; sparse patterns (strided, fixed,
// local windows, document masks) are further builders over this same type.
#pragma once

#include <cstdint>
#include <vector>

#include "core/kernel_table.h"

namespace kiln {

struct BlockLayout {
  int block = 64;
  int num_blocks = 0;
  std::vector<int> row_ptr;  // (num_blocks + 1)
  std::vector<int> cols;     // ascending within each row

  BlockLayoutView view() const { return {block, num_blocks, row_ptr.data(), cols.data()}; }
  // Fraction of the causal (lower-triangular) blocks that are active.
  double density() const;
};

// Every key block up to and including the query's own: full causal attention. t need not be a
// multiple of block (the last block is partial).
BlockLayout dense_causal_layout(std::int64_t t, int block);

}  // namespace kiln
