// Writing and memory-mapping token shards (format in shard.h and docs/data-format.md).
// The header is encoded byte by byte so the file is little-endian whatever the host; token
// payloads are copied with memcpy, which is why the host must be little-endian (checked below).
#include "core/data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <utility>

#include "kernels/error.h"

namespace kiln {

static_assert(std::endian::native == std::endian::little,
              "kiln token shards are little-endian and are read with memcpy");

namespace {

// Header field offsets (see docs/data-format.md).
constexpr std::size_t kOffsetVersion = 8;
constexpr std::size_t kOffsetTokenBytes = 12;
constexpr std::size_t kOffsetNumTokens = 16;
constexpr std::size_t kOffsetVocabSize = 24;
constexpr std::size_t kOffsetHeaderSize = 28;
constexpr std::size_t kWriteChunkTokens = 1 << 20;

void put_u32(unsigned char* at, std::uint32_t value) {
  for (int i = 0; i < 4; ++i) at[i] = static_cast<unsigned char>(value >> (8 * i));
}
void put_u64(unsigned char* at, std::uint64_t value) {
  for (int i = 0; i < 8; ++i) at[i] = static_cast<unsigned char>(value >> (8 * i));
}
std::uint32_t get_u32(const unsigned char* at) {
  std::uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= static_cast<std::uint32_t>(at[i]) << (8 * i);
  return value;
}
std::uint64_t get_u64(const unsigned char* at) {
  std::uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value |= static_cast<std::uint64_t>(at[i]) << (8 * i);
  return value;
}

// Writes all of [data, data + bytes) to fd or throws naming the file.
void write_all(int fd, const void* data, std::size_t bytes, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    ssize_t n = ::write(fd, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    KILN_CHECK(n > 0, "cannot write token shard ", path, ": ", std::strerror(errno),
               "; check free disk space and permissions");
    p += n;
    bytes -= static_cast<std::size_t>(n);
  }
}

void fsync_directory_of(const std::string& path) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (parent.empty()) parent = ".";
  int dir = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir < 0) return;  // best effort: some filesystems do not allow opening directories
  ::fsync(dir);
  ::close(dir);
}

void encode_header(unsigned char* header, std::uint32_t token_bytes, std::uint64_t num_tokens,
                   std::uint32_t vocab_size) {
  std::memset(header, 0, kShardHeaderSize);
  std::memcpy(header, kShardMagic, sizeof(kShardMagic));
  put_u32(header + kOffsetVersion, kShardVersion);
  put_u32(header + kOffsetTokenBytes, token_bytes);
  put_u64(header + kOffsetNumTokens, num_tokens);
  put_u32(header + kOffsetVocabSize, vocab_size);
  put_u32(header + kOffsetHeaderSize, kShardHeaderSize);
}

}  // namespace

void write_shard(const std::string& path, const std::vector<std::uint32_t>& tokens,
                 int vocab_size) {
  KILN_CHECK(vocab_size > 0, "write_shard ", path, ": vocab_size is ", vocab_size,
             " but must be positive");
  const std::uint32_t token_bytes = vocab_size <= 65536 ? 2 : 4;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    KILN_CHECK(tokens[i] < static_cast<std::uint32_t>(vocab_size), "write_shard ", path,
               ": token ", i, " is ", tokens[i], ", not below vocab_size ", vocab_size,
               "; the tokens and the vocab size come from different tokenizers");
  }
  unsigned char header[kShardHeaderSize];
  encode_header(header, token_bytes, tokens.size(), static_cast<std::uint32_t>(vocab_size));

  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  KILN_CHECK(fd >= 0, "cannot create token shard ", tmp, ": ", std::strerror(errno),
             "; check that the folder exists and is writable");
  try {
    write_all(fd, header, sizeof(header), tmp);
    std::vector<unsigned char> chunk;
    for (std::size_t begin = 0; begin < tokens.size(); begin += kWriteChunkTokens) {
      std::size_t count = std::min(kWriteChunkTokens, tokens.size() - begin);
      chunk.resize(count * token_bytes);
      for (std::size_t i = 0; i < count; ++i) {
        std::uint32_t t = tokens[begin + i];
        if (token_bytes == 2) {
          std::uint16_t narrow = static_cast<std::uint16_t>(t);
          std::memcpy(chunk.data() + 2 * i, &narrow, 2);
        } else {
          std::memcpy(chunk.data() + 4 * i, &t, 4);
        }
      }
      write_all(fd, chunk.data(), chunk.size(), tmp);
    }
    KILN_CHECK(::fsync(fd) == 0, "cannot flush token shard ", tmp, ": ", std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw Error(message("cannot rename ", tmp, " to ", path, ": ", std::strerror(err)));
  }
  fsync_directory_of(path);
}

Shard::Shard(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  KILN_CHECK(fd >= 0, "cannot open token shard ", path, ": ", std::strerror(errno),
             "; check the path, or make shards with `kiln tokenize`");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(message("token shard ", path, " is not a regular file; pass a shard file, a ",
                        "folder of shards or a glob such as data/x/train_*.bin"));
  }
  const std::size_t file_bytes = static_cast<std::size_t>(st.st_size);
  if (file_bytes == 0) {
    ::close(fd);
    throw Error(message("token shard ", path, " is empty (0 bytes); it was not written ",
                        "completely, re-run `kiln tokenize`"));
  }
  void* map = ::mmap(nullptr, file_bytes, PROT_READ, MAP_SHARED, fd, 0);
  int map_errno = errno;
  ::close(fd);
  KILN_CHECK(map != MAP_FAILED, "cannot memory-map token shard ", path, ": ",
             std::strerror(map_errno));
  map_ = static_cast<const unsigned char*>(map);
  map_bytes_ = file_bytes;
  try {
    const bool magic_ok = file_bytes >= sizeof(kShardMagic) &&
                          std::memcmp(map_, kShardMagic, sizeof(kShardMagic)) == 0;
    KILN_CHECK(magic_ok, path, " is not a kiln token shard (bad magic); make it with ",
               "`kiln tokenize`");
    KILN_CHECK(file_bytes >= kShardHeaderSize, "token shard ", path, " is truncated: ",
               file_bytes, " bytes cannot hold the ", kShardHeaderSize,
               "-byte header; re-run `kiln tokenize`");
    const std::uint32_t version = get_u32(map_ + kOffsetVersion);
    KILN_CHECK(version <= kShardVersion, "token shard ", path, ": version ", version,
               " is newer than this kiln (", kShardVersion, "); update kiln");
    KILN_CHECK(version >= 1, "token shard ", path, ": version 0 is not a valid version; ",
               "the file is corrupt, re-run `kiln tokenize`");
    const std::uint32_t token_bytes = get_u32(map_ + kOffsetTokenBytes);
    KILN_CHECK(token_bytes == 2 || token_bytes == 4, "token shard ", path, ": token_bytes is ",
               token_bytes, " but must be 2 or 4; the file is corrupt, re-run `kiln tokenize`");
    const std::uint32_t header_size = get_u32(map_ + kOffsetHeaderSize);
    KILN_CHECK(header_size == kShardHeaderSize, "token shard ", path, ": header_size is ",
               header_size, " but version ", version, " uses ", kShardHeaderSize,
               "; the file is corrupt, re-run `kiln tokenize`");
    const std::uint32_t vocab = get_u32(map_ + kOffsetVocabSize);
    KILN_CHECK(vocab > 0 && vocab <= static_cast<std::uint32_t>(INT_MAX) &&
                   (token_bytes == 4 || vocab <= 65536),
               "token shard ", path, ": vocab_size ", vocab, " is invalid for ", token_bytes,
               "-byte tokens; the file is corrupt, re-run `kiln tokenize`");
    const std::uint64_t num_tokens = get_u64(map_ + kOffsetNumTokens);
    const std::uint64_t held = (file_bytes - kShardHeaderSize) / token_bytes;
    KILN_CHECK(held >= num_tokens, "token shard ", path, " is truncated: header says ",
               num_tokens, " tokens but file holds ", held, "; re-run `kiln tokenize`");
    const std::uint64_t expected = kShardHeaderSize + num_tokens * token_bytes;
    KILN_CHECK(file_bytes == expected, "token shard ", path, " has ", file_bytes - expected,
               " bytes after its ", num_tokens, " tokens; the file is corrupt, re-run ",
               "`kiln tokenize`");
    num_tokens_ = num_tokens;
    token_bytes_ = static_cast<int>(token_bytes);
    vocab_size_ = static_cast<int>(vocab);
    check_ids();
  } catch (...) {
    release();
    throw;
  }
}

Shard::~Shard() { release(); }

void Shard::release() {
  if (map_ != nullptr) ::munmap(const_cast<unsigned char*>(map_), map_bytes_);
  map_ = nullptr;
  map_bytes_ = 0;
}

Shard::Shard(Shard&& other) noexcept
    : path_(std::move(other.path_)),
      map_(std::exchange(other.map_, nullptr)),
      map_bytes_(std::exchange(other.map_bytes_, 0)),
      num_tokens_(std::exchange(other.num_tokens_, 0)),
      token_bytes_(std::exchange(other.token_bytes_, 0)),
      vocab_size_(std::exchange(other.vocab_size_, 0)) {}

Shard& Shard::operator=(Shard&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    map_bytes_ = std::exchange(other.map_bytes_, 0);
    num_tokens_ = std::exchange(other.num_tokens_, 0);
    token_bytes_ = std::exchange(other.token_bytes_, 0);
    vocab_size_ = std::exchange(other.vocab_size_, 0);
  }
  return *this;
}

std::uint32_t Shard::operator[](std::uint64_t i) const {
  KILN_CHECK(i < num_tokens_, "token shard ", path_, ": index ", i, " is past its ",
             num_tokens_, " tokens");
  const unsigned char* at = map_ + kShardHeaderSize + i * token_bytes_;
  if (token_bytes_ == 2) {
    std::uint16_t t;
    std::memcpy(&t, at, 2);
    return t;
  }
  std::uint32_t t;
  std::memcpy(&t, at, 4);
  return t;
}

// Every id below vocab_size, checked once when the shard is opened (one pass over the mapped
// tokens, about a second per GB): a corrupt id is found before step 1, not when a window that
// holds it is read hours into the run.
void Shard::check_ids() const {
  const unsigned char* base = map_ + kShardHeaderSize;
  const auto vocab = static_cast<std::uint32_t>(vocab_size_);
  std::uint32_t largest = 0;
  if (token_bytes_ == 2) {
    std::uint16_t m = 0;
    for (std::uint64_t i = 0; i < num_tokens_; ++i) {
      std::uint16_t t;
      std::memcpy(&t, base + 2 * i, 2);
      m = std::max(m, t);
    }
    largest = m;
  } else {
    for (std::uint64_t i = 0; i < num_tokens_; ++i) {
      std::uint32_t t;
      std::memcpy(&t, base + 4 * i, 4);
      largest = std::max(largest, t);
    }
  }
  if (largest < vocab) return;
  for (std::uint64_t i = 0; i < num_tokens_; ++i)
    KILN_CHECK((*this)[i] < vocab, "token shard ", path_, ": token ", i, " is ", (*this)[i],
               ", not below the header's vocab_size ", vocab_size_, "; the shard is corrupt or was written for "
               "another tokenizer: re-run `kiln tokenize`");
}

void Shard::read(std::uint64_t start, std::uint64_t count, std::int32_t* out) const {
  KILN_CHECK(start <= num_tokens_ && count <= num_tokens_ - start, "token shard ", path_,
             ": cannot read ", count, " tokens from ", start, "; it holds ", num_tokens_);
  const unsigned char* at = map_ + kShardHeaderSize + start * token_bytes_;
  std::uint32_t bad = 0;  // OR of out-of-range flags, checked once after the copy
  const auto vocab = static_cast<std::uint32_t>(vocab_size_);
  if (token_bytes_ == 2) {
    for (std::uint64_t i = 0; i < count; ++i) {
      std::uint16_t t;
      std::memcpy(&t, at + 2 * i, 2);
      bad |= static_cast<std::uint32_t>(t >= vocab);
      out[i] = t;
    }
  } else {
    for (std::uint64_t i = 0; i < count; ++i) {
      std::uint32_t t;
      std::memcpy(&t, at + 4 * i, 4);
      bad |= static_cast<std::uint32_t>(t >= vocab);
      out[i] = static_cast<std::int32_t>(t);
    }
  }
  if (bad != 0) {
    for (std::uint64_t i = 0; i < count; ++i) {
      KILN_CHECK(static_cast<std::uint32_t>(out[i]) < vocab, "token shard ", path_,
                 ": token ", start + i, " is ", static_cast<std::uint32_t>(out[i]),
                 ", not below the header's vocab_size ", vocab_size_,
                 "; the file is corrupt, re-run `kiln tokenize`");
    }
  }
}

}  // namespace kiln
