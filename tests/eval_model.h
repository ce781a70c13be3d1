// The small byte-level model the evaluator's tests score with (tests/core, tests/parallel).
#pragma once

#include "core/model/gpt.h"

namespace kiln::testing {

// 2 layers, 2 heads, 32 wide, 64 tokens of context, the vocabulary padded to a multiple of 64.
inline GptShape eval_test_shape(int vocab) {
  GptShape shape;
  shape.n_layer = 2;
  shape.n_head = 2;
  shape.n_embd = 32;
  shape.context = 64;
  shape.vocab = vocab;
  shape.padded_vocab = (vocab + 63) / 64 * 64;
  shape.attention_block = 16;
  return shape;
}

}  // namespace kiln::testing
