// Packs rendered Examples into fixed-length rows for training (SFT, reward modelling, DPO).
// Examples are placed in order, several per row (next-fit: a new row starts when the next
// example does not fit). In each row:
//   inputs    the example's tokens, then padding
//   targets   the next token of the same example; an example's last token has no target
//             inside the example, so its target is the pad id and its mask 0
//   positions restart at 0 for each example (and for the padding run)
//   segments  the example's index within the row; the padding run has a segment of its own
//   mask      1 where the target is a response token of the example (its Example::mask)
// With segments the model's attention stays inside an example, so each example's loss in a
// packed row equals its loss when run alone.
#pragma once

#include <cstdint>
#include <vector>

#include "core/data/instruct.h"
#include "core/data/batch.h"

namespace kiln {

// What to do with an example longer than seq_len.
enum class Overflow {
  error,     // throw an Error naming the example and its length (the default)
  truncate,  // keep its first seq_len tokens (the tail of the response, and its eot, is lost)
};

struct PackOptions {
  int seq_len = 0;
  std::uint32_t pad_id = 0;             // fills rows; must differ from eot_id
  std::uint32_t eot_id = 0;             // the tokenizer's end-of-text (checked against pad_id)
  Overflow overflow = Overflow::error;
};

// Where one example landed: row of the packed batch, first column, tokens kept.
struct Placement {
  std::size_t example = 0;
  int row = 0;
  int offset = 0;
  int length = 0;
};

struct Packed {
  Batch batch;                        // batch.batch rows of seq_len
  std::vector<Placement> placements;  // one per example, in input order
  std::int64_t truncated = 0;         // examples cut to seq_len (Overflow::truncate)
  std::int64_t pad_tokens = 0;
};

// Packs all examples into as many rows as they need (rounded up to a multiple of
// rows_multiple with rows of padding, e.g. the micro-batch size).
Packed pack_examples(const std::vector<Example>& examples, const PackOptions& options, int rows_multiple = 1);

// Rows [first, first + count) of a packed batch as a batch of their own.
Batch slice_rows(const Batch& batch, int first, int count);

}  // namespace kiln
