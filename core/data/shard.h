// Token shard files: the on-disk form of tokenized text that training reads.
// A shard is a 64-byte little-endian header followed by the token ids, packed as uint16 when
// the vocabulary fits (vocab_size <= 65536) and uint32 otherwise. Readers memory-map the file,
// so a multi-gigabyte corpus costs no load time and is shared between processes on a node.
// The byte-by-byte layout is in docs/data-format.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

inline constexpr char kShardMagic[8] = {'K', 'I', 'L', 'N', 'T', 'O', 'K', '\0'};
inline constexpr std::uint32_t kShardVersion = 1;
inline constexpr std::uint32_t kShardHeaderSize = 64;

// Writes atomically: <path>.tmp, fsync, rename, fsync the directory, so a crash leaves either
// the old file or the complete new one. Uses uint16 tokens when vocab_size <= 65536.
// Every token must be < vocab_size.
void write_shard(const std::string& path, const std::vector<std::uint32_t>& tokens,
                 int vocab_size);

// A read-only, memory-mapped shard. The constructor validates the header and the file size;
// errors name the path, what is wrong and how to fix it.
class Shard {
 public:
  explicit Shard(const std::string& path);
  ~Shard();
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
  Shard(Shard&& other) noexcept;
  Shard& operator=(Shard&& other) noexcept;

  std::uint64_t size() const { return num_tokens_; }
  int vocab_size() const { return vocab_size_; }
  int token_bytes() const { return token_bytes_; }
  // Token i, bounds-checked.
  std::uint32_t operator[](std::uint64_t i) const;
  // Copies tokens [start, start + count) to out; bounds-checked, and every id is checked
  // against vocab_size so a corrupt shard cannot index past an embedding table.
  void read(std::uint64_t start, std::uint64_t count, std::int32_t* out) const;
  const std::string& path() const { return path_; }

 private:
  void release();
  void check_ids() const;

  std::string path_;
  const unsigned char* map_ = nullptr;  // the whole file, header included
  std::size_t map_bytes_ = 0;
  std::uint64_t num_tokens_ = 0;
  int token_bytes_ = 0;
  int vocab_size_ = 0;
};

}  // namespace kiln
