// Builders for attention block layouts.
#include "core/model/attention_layout.h"

#include "core/error.h"

namespace kiln {

double BlockLayout::density() const {
  const double causal = 0.5 * num_blocks * (num_blocks + 1.0);
  return causal > 0 ? static_cast<double>(cols.size()) / causal : 0.0;
}

BlockLayout dense_causal_layout(std::int64_t t, int block) {
  KILN_CHECK(block == 16 || block == 32 || block == 64 || block == 128,
             "model.attention_block=", block, " is not supported; use 16, 32, 64 or 128");
  KILN_CHECK(t >= 1, "sequence length must be at least 1, got ", t);
  BlockLayout layout;
  layout.block = block;
  const std::int64_t blocks = (t + block - 1) / block;
  KILN_CHECK(blocks * (blocks + 1) / 2 < (std::int64_t{1} << 31), "a causal layout of ", t,
             " tokens in blocks of ", block, " has more than 2^31 blocks; use a larger "
             "model.attention_block or a shorter sequence");
  layout.num_blocks = static_cast<int>(blocks);
  layout.row_ptr.reserve(layout.num_blocks + 1);
  layout.row_ptr.push_back(0);
  for (int q = 0; q < layout.num_blocks; ++q) {
    for (int k = 0; k <= q; ++k) layout.cols.push_back(k);
    layout.row_ptr.push_back(static_cast<int>(layout.cols.size()));
  }
  return layout;
}

}  // namespace kiln
