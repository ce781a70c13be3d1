// safetensors writer and validating reader (format described in safetensors.h). The header is
// checked completely in the constructor so that a corrupt checkpoint fails when opened, with a
// message naming the file and tensor, rather than in the middle of loading a model.
#include "core/checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "core/checkpoint/atomic_file.h"

namespace kiln {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; kiln reads it in place on little-endian hosts");

using OrderedJson = nlohmann::ordered_json;
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;  // the limit of the reference reader
constexpr const char* kMetadataKey = "__metadata__";

const char* safetensors_dtype(DType dtype) { return dtype == DType::f32 ? "F32" : "BF16"; }

// Builds the padded JSON header for `tensors` laid out back to back in the order given.
std::string build_header(const std::string& path, const std::vector<NamedTensor>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  OrderedJson header = OrderedJson::object();
  if (!metadata.empty()) {
    OrderedJson meta = OrderedJson::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header[kMetadataKey] = meta;
  }
  std::set<std::string> seen;
  std::uint64_t offset = 0;
  for (const auto& named : tensors) {
    const Tensor& t = named.tensor;
    KILN_CHECK(!named.name.empty(), "write_safetensors(", path, "): a tensor has an empty name");
    KILN_CHECK(named.name != kMetadataKey, "write_safetensors(", path,
               "): \"__metadata__\" is reserved; rename that tensor");
    KILN_CHECK(seen.insert(named.name).second, "write_safetensors(", path,
               "): tensor name '", named.name, "' appears twice; names must be unique");
    KILN_CHECK(t.defined(), "write_safetensors(", path, "): tensor '", named.name,
               "' is undefined (empty Tensor)");
    KILN_CHECK(t.device() == Device::cpu, "write_safetensors(", path, "): tensor '", named.name,
               "' is on ", device_name(t.device()), "; copy it to cpu before saving");
    OrderedJson info = OrderedJson::object();
    info["dtype"] = safetensors_dtype(t.dtype());
    info["shape"] = t.shape();
    info["data_offsets"] = {offset, offset + t.nbytes()};
    header[named.name] = info;
    offset += t.nbytes();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw Error(message("write_safetensors(", path, "): cannot encode the header (", e.what(),
                        "); tensor names and metadata must be valid UTF-8"));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

DType parse_dtype(const std::string& dtype, const std::string& path, const std::string& name) {
  if (dtype == "F32") return DType::f32;
  if (dtype == "BF16" || dtype == "F16") return DType::bf16;  // two bytes each; F16 is marked apart
  throw Error(message(path, ": tensor '", name, "' has dtype ", dtype,
                      "; kiln reads F32, BF16 and F16 only. Convert it first, e.g. in Python: "
                      "save_file({k: v.float() for k, v in load_file(path).items()}, path)"));
}

std::uint64_t json_uint(const OrderedJson& value, const std::string& path,
                        const std::string& name, const char* field) {
  KILN_CHECK(value.is_number_unsigned() || (value.is_number_integer() && value.get<long long>() >= 0),
             path, ": tensor '", name, "' has a bad ", field, " entry ", value.dump(),
             " (expected a non-negative integer); the file is corrupt");
  return value.get<std::uint64_t>();
}

// Bytes a tensor of `shape` and `dtype` occupies; throws if the count overflows 64 bits.
std::uint64_t shape_bytes(const Shape& shape, DType dtype, const std::string& path,
                          const std::string& name) {
  std::uint64_t bytes = dtype_size(dtype);
  for (auto d : shape) {
    KILN_CHECK(!__builtin_mul_overflow(bytes, static_cast<std::uint64_t>(d), &bytes), path,
               ": tensor '", name, "' has an impossibly large shape ", shape_string(shape));
  }
  return bytes;
}

void pread_all(int fd, void* dst, std::uint64_t size, std::uint64_t offset,
               const std::string& path, const std::string& what) {
  char* out = static_cast<char*>(dst);
  while (size > 0) {
    ssize_t n = ::pread(fd, out, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      throw Error(message("reading ", what, " from ", path, " failed: ", std::strerror(errno)));
    }
    KILN_CHECK(n > 0, path, " ended before ", what,
               " was fully read; the file was truncated after it was opened");
    out += n;
    size -= static_cast<std::uint64_t>(n);
    offset += static_cast<std::uint64_t>(n);
  }
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string header = build_header(path, tensors, metadata);
  write_file_atomic(path, [&](std::FILE* file) {
    unsigned char length[8];
    std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(n >> (8 * i));
    std::fwrite(length, 1, 8, file);
    std::fwrite(header.data(), 1, header.size(), file);
    for (const auto& named : tensors) {
      if (named.tensor.nbytes() > 0) {
        std::fwrite(named.tensor.raw(), 1, named.tensor.nbytes(), file);
      }
    }
  });
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw Error(message("cannot open safetensors file ", path, ": ", std::strerror(errno),
                        "; check the path"));
  }
  fd_ = std::shared_ptr<int>(new int(fd), [](int* p) {
    ::close(*p);
    delete p;
  });
  struct stat info {};
  KILN_CHECK(::fstat(fd, &info) == 0, "cannot stat ", path, ": ", std::strerror(errno));
  const auto file_size = static_cast<std::uint64_t>(info.st_size);
  KILN_CHECK(file_size >= 8, path, " is ", file_size,
             " bytes, shorter than the 8-byte safetensors header length; the file is truncated "
             "or not a safetensors file");
  unsigned char length[8];
  pread_all(fd, length, 8, 0, path, "the header length");
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(length[i]) << (8 * i);
  KILN_CHECK(n <= file_size - 8, path, ": header length ", n, " is beyond the file size (",
             file_size, " bytes); the file is truncated or not a safetensors file");
  KILN_CHECK(n <= kMaxHeaderBytes, path, ": header length ", n, " exceeds ", kMaxHeaderBytes,
             " bytes; the file is corrupt or not a safetensors file");
  std::string header(n, '\0');
  pread_all(fd, header.data(), n, 8, path, "the header");
  parse_header(header, 8 + n, file_size - 8 - n);
}

void SafetensorsFile::parse_header(const std::string& header, std::uint64_t data_start,
                                   std::uint64_t data_size) {
  OrderedJson json;
  try {
    json = OrderedJson::parse(header);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(message(path_, ": the safetensors header is not valid JSON (", e.what(),
                        "); the file is corrupt or not a safetensors file"));
  }
  KILN_CHECK(json.is_object(), path_, ": the safetensors header is not a JSON object");
  std::vector<std::pair<std::string, Entry>> found;
  for (const auto& [name, value] : json.items()) {
    if (name == kMetadataKey) {
      KILN_CHECK(value.is_object(), path_, ": __metadata__ must be an object of strings");
      for (const auto& [key, text] : value.items()) {
        KILN_CHECK(text.is_string(), path_, ": __metadata__ entry '", key,
                   "' is not a string");
        metadata_[key] = text.get<std::string>();
      }
      continue;
    }
    KILN_CHECK(value.is_object() && value.contains("dtype") && value["dtype"].is_string() &&
                   value.contains("shape") && value["shape"].is_array() &&
                   value.contains("data_offsets") && value["data_offsets"].is_array() &&
                   value["data_offsets"].size() == 2,
               path_, ": tensor '", name, "' needs dtype, shape and data_offsets [begin, end]; ",
               "found ", value.dump());
    Entry entry{};
    entry.dtype = parse_dtype(value["dtype"].get<std::string>(), path_, name);
    entry.half = value["dtype"].get<std::string>() == "F16";
    for (const auto& d : value["shape"]) {
      entry.shape.push_back(static_cast<std::int64_t>(json_uint(d, path_, name, "shape")));
    }
    const std::uint64_t begin = json_uint(value["data_offsets"][0], path_, name, "data_offsets");
    const std::uint64_t end = json_uint(value["data_offsets"][1], path_, name, "data_offsets");
    KILN_CHECK(begin <= end && end <= data_size, path_, ": tensor '", name, "' data_offsets [",
               begin, ", ", end, "] lie outside the data (", data_size,
               " bytes); the file is truncated or corrupt");
    const std::uint64_t expected = shape_bytes(entry.shape, entry.dtype, path_, name);
    KILN_CHECK(end - begin == expected, path_, ": tensor '", name, "' data_offsets [", begin,
               ", ", end, "] hold ", end - begin, " bytes but shape ", shape_string(entry.shape),
               " ", dtype_name(entry.dtype), " needs ", expected, "; the file is corrupt");
    entry.begin = data_start + begin;
    entry.end = data_start + end;
    found.emplace_back(name, entry);
  }
  std::stable_sort(found.begin(), found.end(),
                   [](const auto& a, const auto& b) { return a.second.begin < b.second.begin; });
  // The format's rule: the tensors index the whole data, in some order, with no holes and no
  // bytes after the last (a file with trailing bytes was cut from, or glued to, something else).
  std::uint64_t covered = data_start;
  for (std::size_t i = 0; i < found.size(); ++i) {
    if (i > 0) {
      const auto& prev = found[i - 1];
      KILN_CHECK(prev.second.end <= found[i].second.begin, path_, ": tensors '", prev.first,
                 "' and '", found[i].first, "' overlap in the data; the file is corrupt");
    }
    KILN_CHECK(found[i].second.begin == covered, path_, ": ", found[i].second.begin - covered, " bytes before tensor '",
               found[i].first, "' belong to no tensor; the file is corrupt");
    covered = found[i].second.end;
    order_.push_back(found[i].first);
    entries_.emplace(found[i].first, found[i].second);
  }
  KILN_CHECK(covered == data_start + data_size, path_, ": ", data_start + data_size - covered,
             " bytes after the last tensor's data belong to no tensor; the file is corrupt or has something "
             "appended to it");
}

std::vector<std::string> SafetensorsFile::names() const { return order_; }

bool SafetensorsFile::contains(const std::string& name) const {
  return entries_.count(name) != 0;
}

const SafetensorsFile::Entry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it != entries_.end()) return it->second;
  std::string some;
  const std::size_t shown = std::min<std::size_t>(order_.size(), 6);
  for (std::size_t i = 0; i < shown; ++i) some += (i ? ", " : "") + order_[i];
  if (shown < order_.size()) some += ", ...";
  throw Error(message("no tensor '", name, "' in ", path_, "; it holds ", order_.size(),
                      " tensors: ", order_.empty() ? "(none)" : some,
                      ". Check that the checkpoint matches the model config"));
}

Shape SafetensorsFile::shape(const std::string& name) const { return entry(name).shape; }

DType SafetensorsFile::dtype(const std::string& name) const { return entry(name).dtype; }

void SafetensorsFile::read_bytes(const Entry& e, void* dst, const std::string& name) const {
  pread_all(*fd_, dst, e.end - e.begin, e.begin, path_, "tensor '" + name + "'");
}

Tensor SafetensorsFile::load(const std::string& name) const {
  const Entry& e = entry(name);
  KILN_CHECK(!e.half, path_, ": tensor '", name, "' is F16, which kiln reads widened to fp32 only (load_f32)");
  Tensor out = Tensor::empty(e.shape, e.dtype);
  read_bytes(e, out.raw(), name);
  return out;
}

void SafetensorsFile::load_into(const std::string& name, Tensor& out) const {
  const Entry& e = entry(name);
  KILN_CHECK(!e.half, path_, ": tensor '", name, "' is F16; kiln keeps weights in F32 or BF16 (convert it with "
             "load_f32, as kiln import does)");
  KILN_CHECK(out.defined() && out.device() == Device::cpu, "load_into('", name, "' from ",
             path_, "): the destination must be a defined cpu tensor");
  KILN_CHECK(out.shape() == e.shape && out.dtype() == e.dtype, "load_into: tensor '", name,
             "': expected shape ", shape_string(out.shape()), " ", dtype_name(out.dtype()),
             " but ", path_, " holds shape ", shape_string(e.shape), " ", dtype_name(e.dtype),
             "; the checkpoint was written for a different model config");
  read_bytes(e, out.raw(), name);
}

namespace {
// IEEE binary16 -> binary32, exactly (subnormals, infinities and NaNs included).
float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu, bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, NaN
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);  // 127 - 15 = 112
  } else if (mantissa == 0) {
    bits = sign;  // zero
  } else {  // subnormal: normalise
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}
}  // namespace

Tensor SafetensorsFile::load_f32(const std::string& name) const {
  const Entry& e = entry(name);
  if (e.dtype == DType::f32) return load(name);
  Tensor raw = Tensor::empty(e.shape, DType::bf16);  // two bytes per element either way
  read_bytes(e, raw.raw(), name);
  Tensor out = Tensor::empty(e.shape);
  const auto* in = static_cast<const std::uint16_t*>(raw.raw());
  for (std::int64_t i = 0; i < out.numel(); ++i) {
    if (e.half) {
      out.f32()[i] = half_to_float(in[i]);
    } else {
      const std::uint32_t bits = static_cast<std::uint32_t>(in[i]) << 16;
      std::memcpy(out.f32() + i, &bits, sizeof(float));
    }
  }
  return out;
}

}  // namespace kiln
