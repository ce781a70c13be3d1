// A host stand-in for cub::DeviceRadixSort::SortPairs with CUB's semantics: a stable sort of the
// pairs by the key bits [begin_bit, end_bit) (other bits do not order), full keys written out;
// a null temp_storage only asks for the scratch size. Not CUB's algorithm: only its result.
#pragma once

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <vector>

#include "cuda_emu.h"

namespace cub {

struct DeviceRadixSort {
  template <class Key, class Value, class Count>
  static cudaError_t SortPairs(void* temp_storage, std::size_t& temp_storage_bytes, const Key* keys_in,
                               Key* keys_out, const Value* values_in, Value* values_out, Count count,
                               int begin_bit = 0, int end_bit = sizeof(Key) * 8, cudaStream_t stream = nullptr) {
    if (temp_storage == nullptr) {
      temp_storage_bytes = 256;
      return cudaSuccess;
    }
    if (begin_bit < 0 || end_bit > static_cast<int>(sizeof(Key) * 8) || begin_bit > end_bit)
      return cudaErrorInvalidValue;
    // Queued on the stream like the kernels it stands for (cuda_emu.h).
    kiln::emu::enqueue(stream, [=] {
      const int bits = end_bit - begin_bit;
      const Key mask = bits == static_cast<int>(sizeof(Key) * 8) ? ~Key{0} : static_cast<Key>((Key{1} << bits) - 1);
      auto sort_key = [&](std::size_t i) { return static_cast<Key>(keys_in[i] >> begin_bit) & mask; };
      std::vector<std::size_t> order(static_cast<std::size_t>(count));
      std::iota(order.begin(), order.end(), std::size_t{0});
      std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return sort_key(a) < sort_key(b); });
      std::vector<Key> keys(order.size());
      std::vector<Value> values(order.size());
      for (std::size_t i = 0; i < order.size(); ++i) {
        keys[i] = keys_in[order[i]];
        values[i] = values_in[order[i]];
      }
      std::copy(keys.begin(), keys.end(), keys_out);
      std::copy(values.begin(), values.end(), values_out);
    });
    return cudaSuccess;
  }
};

}  // namespace cub
