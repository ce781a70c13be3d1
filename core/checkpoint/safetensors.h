// Reading and writing the Hugging Face safetensors format, kiln's format for weights and
// optimizer state, so that checkpoints load directly in Python (safetensors, transformers).
// Layout: 8-byte little-endian header length N, then N bytes of JSON
//   {"__metadata__": {str: str}, "name": {"dtype": "F32"|"BF16", "shape": [...],
//    "data_offsets": [begin, end]}, ...}
// padded with spaces so that N is a multiple of 8, then the raw little-endian data; offsets are
// relative to the data start. kiln writes the tensors contiguously in the order given and reads
// F32 and BF16 (and F16 through load_f32; other dtypes are rejected with an error naming them).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace kiln {

struct NamedTensor {
  std::string name;
  Tensor tensor;  // cpu, contiguous (a view is fine)
};

// Writes `tensors` (unique, non-empty names; not "__metadata__") atomically to `path` via
// write_file_atomic, streaming each tensor's bytes without building the file in memory.
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// An opened safetensors file. The constructor reads and validates the header; tensor data is
// read on demand with pread from a descriptor kept open (so a file replaced by a later
// checkpoint's rename stays readable). Copies share the descriptor.
class SafetensorsFile {
 public:
  // Throws kiln::Error naming the path (and the tensor, where one is at fault) for: a missing
  // file, a file shorter than 8 bytes, a header length beyond the file size, unparsable JSON,
  // an unsupported dtype, or data_offsets outside the data, overlapping, or not matching
  // shape * dtype size.
  explicit SafetensorsFile(const std::string& path);

  std::vector<std::string> names() const;  // in file order (by data offset)
  bool contains(const std::string& name) const;
  Shape shape(const std::string& name) const;
  DType dtype(const std::string& name) const;
  // A new cpu tensor holding the named tensor. Throws naming it and a few available names.
  Tensor load(const std::string& name) const;
  // Copies the named tensor into `out` (cpu, same shape and dtype; a view is fine). Throws
  // naming the tensor with the expected and found shapes/dtypes on a mismatch.
  void load_into(const std::string& name, Tensor& out) const;
  // The named tensor as a new fp32 cpu tensor: F32 as stored, BF16 and F16 (IEEE half, which
  // Hugging Face checkpoints often use) widened exactly.
  Tensor load_f32(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  struct Entry {
    DType dtype;        // bf16 for F16 tensors too (same size); `half` tells them apart
    bool half = false;  // IEEE fp16 (F16): readable through load_f32 only
    Shape shape;
    std::uint64_t begin;  // absolute file offsets
    std::uint64_t end;
  };
  const Entry& entry(const std::string& name) const;
  void parse_header(const std::string& header, std::uint64_t data_start,
                    std::uint64_t data_size);
  void read_bytes(const Entry& entry, void* dst, const std::string& name) const;

  std::string path_;
  std::shared_ptr<int> fd_;  // closed when the last copy goes away
  std::map<std::string, Entry> entries_;
  std::vector<std::string> order_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace kiln
