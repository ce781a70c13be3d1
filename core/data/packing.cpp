// Next-fit packing of Examples into rows with per-example positions, segments and loss masks.
#include "core/data/packing.h"

#include "kernels/error.h"

namespace kiln {
namespace {

// Appends `count` padding tokens to the open row: masked, positions from 0, segment `segment`.
void append_padding(Batch& b, int count, std::int32_t pad, std::int32_t segment) {
  for (int i = 0; i < count; ++i) {
    b.inputs.push_back(pad);
    b.targets.push_back(pad);
    b.positions.push_back(i);
    b.mask.push_back(0);
    b.segments.push_back(segment);
  }
}

}  // namespace

Packed pack_examples(const std::vector<Example>& examples, const PackOptions& options, int rows_multiple) {
  const int t = options.seq_len;
  KILN_CHECK(t >= 1, "packing: seq_len=", t, " must be >= 1");
  KILN_CHECK(rows_multiple >= 1, "packing: rows_multiple=", rows_multiple, " must be >= 1");
  KILN_CHECK(options.pad_id != options.eot_id, "packing: pad_id=", options.pad_id,
             " equals the end-of-text id; padding must be distinguishable from a trained eot");
  const auto pad = static_cast<std::int32_t>(options.pad_id);
  Packed out;
  Batch& b = out.batch;
  b.seq_len = t;
  int used = 0;        // tokens in the open row
  int in_row = 0;      // examples in the open row
  auto close_row = [&] {
    append_padding(b, t - used, pad, in_row);
    out.pad_tokens += t - used;
    ++b.batch;
    used = in_row = 0;
  };
  for (std::size_t e = 0; e < examples.size(); ++e) {
    const Example& ex = examples[e];
    KILN_CHECK(ex.ids.size() == ex.mask.size(), "packing: example ", e, " has ", ex.ids.size(),
               " ids but ", ex.mask.size(), " mask entries");
    KILN_CHECK(!ex.ids.empty(), "packing: example ", e, " is empty");
    int n = static_cast<int>(ex.ids.size());
    if (n > t) {
      KILN_CHECK(options.overflow == Overflow::truncate, "packing: example ", e, " has ", n,
                 " tokens, more than seq_len=", t, "; raise seq_len, shorten the data, or set overflow to truncate");
      n = t;
      ++out.truncated;
    }
    if (used + n > t) close_row();
    out.placements.push_back({e, b.batch, used, n});
    for (int i = 0; i < n; ++i) {
      const bool last = i + 1 == n;
      b.inputs.push_back(static_cast<std::int32_t>(ex.ids[i]));
      b.targets.push_back(last ? pad : static_cast<std::int32_t>(ex.ids[i + 1]));
      b.mask.push_back(last ? 0 : ex.mask[i + 1]);
      b.positions.push_back(i);
      b.segments.push_back(in_row);
    }
    used += n;
    ++in_row;
  }
  if (used > 0) close_row();
  while (b.batch % rows_multiple != 0 || b.batch == 0) {
    append_padding(b, t, pad, 0);
    out.pad_tokens += t;
    ++b.batch;
  }
  return out;
}

Batch slice_rows(const Batch& batch, int first, int count) {
  KILN_CHECK(first >= 0 && count >= 1 && first + count <= batch.batch, "slice_rows: rows [", first, ", ",
             first + count, ") outside a batch of ", batch.batch);
  const std::size_t t = batch.seq_len, a = first * t, z = (first + count) * t;
  auto cut = [&](const auto& v) { return v.empty() ? std::decay_t<decltype(v)>{} : std::decay_t<decltype(v)>(v.begin() + a, v.begin() + z); };
  Batch out;
  out.batch = count;
  out.seq_len = batch.seq_len;
  out.inputs = cut(batch.inputs);
  out.targets = cut(batch.targets);
  out.positions = cut(batch.positions);
  out.mask = cut(batch.mask);
  out.segments = cut(batch.segments);
  return out;
}

}  // namespace kiln
