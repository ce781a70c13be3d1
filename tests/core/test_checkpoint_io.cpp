// Tests for core/checkpoint: safetensors round trips and byte layout (checked against the
// format rules the Hugging Face reader applies), every corrupt-file error, atomic writes, and
// the checkpoint folder protocol (rotation, leftover tmp folders, resolve_checkpoint).
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/checkpoint/atomic_file.h"
#include "core/checkpoint/run_dir.h"
#include "core/checkpoint/safetensors.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

// A fresh folder under the system temp folder, removed with everything in it at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    std::random_device random;
    path = fs::temp_directory_path() /
           ("kiln_ckpt_test_" + std::to_string(::getpid()) + "_" +
            std::to_string(counter++) + "_" + std::to_string(random()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

Tensor filled_f32(const Shape& shape, float start) {
  Tensor t = Tensor::empty(shape, DType::f32);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = start + 0.5f * static_cast<float>(i);
  return t;
}

Tensor filled_bf16(const Shape& shape, std::uint16_t start) {
  Tensor t = Tensor::empty(shape, DType::bf16);
  auto* data = static_cast<std::uint16_t*>(t.raw());
  for (std::int64_t i = 0; i < t.numel(); ++i) data[i] = static_cast<std::uint16_t>(start + i);
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// A safetensors file built by hand: header length, header text as given, then `data`.
std::string raw_safetensors(const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return bytes + header + data;
}

std::uint64_t header_length(const std::string& bytes) {
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  return n;
}

// Runs `body`, expects a kiln::Error and returns its message.
template <class Body>
std::string error_of(Body body) {
  try {
    body();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a kiln::Error";
  return "";
}

std::vector<std::string> tmp_files_in(const fs::path& dir) {
  std::vector<std::string> found;
  for (const auto& item : fs::directory_iterator(dir)) {
    if (item.path().filename().string().find(".tmp") != std::string::npos) {
      found.push_back(item.path().string());
    }
  }
  return found;
}

std::vector<NamedTensor> sample_tensors() {
  Tensor big = filled_f32({6, 4}, 10.0f);
  return {{"scalarish", filled_f32({1}, 3.0f)},
          {"matrix", filled_f32({3, 4}, -1.0f)},
          {"cube_bf16", filled_bf16({2, 3, 4}, 0x3f80)},
          {"cube", filled_f32({2, 2, 5}, 7.0f)},
          {"view_of_rows", big.view(8, {2, 4})},  // rows 2..3 of a larger buffer
          {"vector_bf16", filled_bf16({5}, 0x4000)}};
}

TEST(CheckpointIo, SafetensorsRoundTripF32AndBf16) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  auto tensors = sample_tensors();
  std::map<std::string, std::string> metadata{{"format", "pt"}, {"kiln.step", "42"}};
  write_safetensors(path, tensors, metadata);

  SafetensorsFile file(path);
  std::vector<std::string> expected_names;
  for (const auto& t : tensors) expected_names.push_back(t.name);
  EXPECT_EQ(file.names(), expected_names);
  EXPECT_EQ(file.metadata(), metadata);
  EXPECT_EQ(file.path(), path);
  EXPECT_FALSE(file.contains("absent"));
  for (const auto& t : tensors) {
    ASSERT_TRUE(file.contains(t.name));
    EXPECT_EQ(file.shape(t.name), t.tensor.shape()) << t.name;
    EXPECT_EQ(file.dtype(t.name), t.tensor.dtype()) << t.name;
    Tensor loaded = file.load(t.name);
    EXPECT_EQ(loaded.shape(), t.tensor.shape());
    EXPECT_TRUE(same_bytes(loaded, t.tensor)) << t.name;
    Tensor into = Tensor::zeros(t.tensor.shape(), t.tensor.dtype());
    file.load_into(t.name, into);
    EXPECT_TRUE(same_bytes(into, t.tensor)) << t.name;
  }
}

TEST(CheckpointIo, SafetensorsWithoutMetadataOrTensors) {
  TempDir dir;
  const std::string path = dir.file("empty.safetensors");
  write_safetensors(path, {});
  SafetensorsFile file(path);
  EXPECT_TRUE(file.names().empty());
  EXPECT_TRUE(file.metadata().empty());
  const std::string bytes = read_file(path);
  EXPECT_EQ(bytes, raw_safetensors("{}      ", ""));
}

// The header obeys the rules the Hugging Face reader checks: 8-byte aligned length, a JSON
// object starting with '{', offsets contiguous from 0 to the end of the file.
TEST(CheckpointIo, SafetensorsHeaderIsValidJsonWithContiguousOffsets) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  auto tensors = sample_tensors();
  write_safetensors(path, tensors, {{"format", "pt"}});
  const std::string bytes = read_file(path);
  ASSERT_GE(bytes.size(), 8u);
  const std::uint64_t n = header_length(bytes);
  EXPECT_EQ(n % 8, 0u);
  ASSERT_LE(8 + n, bytes.size());
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.front(), '{');
  auto json = nlohmann::ordered_json::parse(header);  // throws on invalid JSON
  ASSERT_TRUE(json.is_object());
  EXPECT_EQ(json.begin().key(), "__metadata__");
  EXPECT_EQ(json["__metadata__"]["format"], "pt");
  std::uint64_t offset = 0;
  std::size_t index = 0;
  for (const auto& [name, info] : json.items()) {
    if (name == "__metadata__") continue;
    ASSERT_LT(index, tensors.size());
    EXPECT_EQ(name, tensors[index].name);
    const Tensor& t = tensors[index].tensor;
    EXPECT_EQ(info["dtype"], t.dtype() == DType::f32 ? "F32" : "BF16");
    EXPECT_EQ(info["shape"].get<Shape>(), t.shape());
    EXPECT_EQ(info["data_offsets"][0].get<std::uint64_t>(), offset);
    offset += t.nbytes();
    EXPECT_EQ(info["data_offsets"][1].get<std::uint64_t>(), offset);
    ++index;
  }
  EXPECT_EQ(index, tensors.size());
  EXPECT_EQ(8 + n + offset, bytes.size());
}

// The exact bytes Python's safetensors writes for {"w": float32 [1.0, 2.0]} with
// metadata {"format": "pt"}: compact JSON, __metadata__ first, fields dtype/shape/data_offsets,
// space padding to a multiple of 8.
TEST(CheckpointIo, SafetensorsBytesMatchReferenceWriter) {
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  Tensor w = Tensor::empty({2}, DType::f32);
  w.f32()[0] = 1.0f;
  w.f32()[1] = 2.0f;
  write_safetensors(path, {{"w", w}}, {{"format", "pt"}});
  const std::string json =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string padded = json + std::string((8 - json.size() % 8) % 8, ' ');
  const std::string data("\x00\x00\x80\x3f\x00\x00\x00\x40", 8);
  EXPECT_EQ(read_file(path), raw_safetensors(padded, data));
}

TEST(CheckpointIo, SafetensorsRejectsBadNamesAndTensors) {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  auto message = error_of([&] {
    write_safetensors(path, {{"a", filled_f32({2}, 0)}, {"a", filled_f32({3}, 0)}});
  });
  EXPECT_NE(message.find("'a' appears twice"), std::string::npos) << message;
  message = error_of([&] { write_safetensors(path, {{"__metadata__", filled_f32({2}, 0)}}); });
  EXPECT_NE(message.find("reserved"), std::string::npos) << message;
  message = error_of([&] { write_safetensors(path, {{"undefined", Tensor()}}); });
  EXPECT_NE(message.find("undefined"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(tmp_files_in(dir.path).empty());
}

TEST(CheckpointIo, CorruptFilesGiveErrorsNamingPathAndTensor) {
  TempDir dir;
  const std::string good = dir.file("good.safetensors");
  write_safetensors(good, {{"first", filled_f32({4}, 0)}, {"last", filled_f32({2, 3}, 1)}});
  const std::string bytes = read_file(good);
  const std::string path = dir.file("corrupt.safetensors");
  auto open_error = [&](const std::string& content) {
    write_file_atomic(path, content);
    return error_of([&] { SafetensorsFile file(path); });
  };

  std::string message = error_of([&] { SafetensorsFile file(dir.file("missing.safetensors")); });
  EXPECT_NE(message.find("missing.safetensors"), std::string::npos) << message;

  message = open_error(bytes.substr(0, bytes.size() - 4));  // truncated data
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("'last'"), std::string::npos) << message;
  EXPECT_NE(message.find("truncated"), std::string::npos) << message;

  message = open_error(bytes.substr(0, 5));  // shorter than the length field
  EXPECT_NE(message.find("shorter than the 8-byte"), std::string::npos) << message;

  std::string huge = bytes;
  huge[6] = '\x01';  // header length ~2^48
  message = open_error(huge);
  EXPECT_NE(message.find("beyond the file size"), std::string::npos) << message;

  message = open_error(raw_safetensors("{\"a\": [1, 2,   ", ""));
  EXPECT_NE(message.find("not valid JSON"), std::string::npos) << message;
  EXPECT_NE(message.find(path), std::string::npos) << message;

  message = open_error(raw_safetensors(
      R"({"wide":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})", std::string(16, '\0')));
  EXPECT_NE(message.find("F64"), std::string::npos) << message;
  EXPECT_NE(message.find("'wide'"), std::string::npos) << message;
  EXPECT_NE(message.find("F32, BF16 and F16"), std::string::npos) << message;

  message = open_error(raw_safetensors(
      R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')));
  EXPECT_NE(message.find("'w'"), std::string::npos) << message;
  EXPECT_NE(message.find("needs 12"), std::string::npos) << message;

  message = open_error(raw_safetensors(
      R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      std::string(12, '\0')));
  EXPECT_NE(message.find("overlap"), std::string::npos) << message;
}

TEST(CheckpointIo, MissingTensorListsAvailableNames) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  write_safetensors(path, sample_tensors());
  SafetensorsFile file(path);
  std::string message = error_of([&] { file.load("transformer.wte.weight"); });
  EXPECT_NE(message.find("'transformer.wte.weight'"), std::string::npos) << message;
  EXPECT_NE(message.find("scalarish"), std::string::npos) << message;
  EXPECT_NE(message.find("matrix"), std::string::npos) << message;
  EXPECT_NE(message.find(path), std::string::npos) << message;
}

TEST(CheckpointIo, LoadIntoMismatchNamesTensorAndShapes) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  write_safetensors(path, {{"matrix", filled_f32({3, 4}, 0)}});
  SafetensorsFile file(path);
  Tensor wrong_shape = Tensor::zeros({4, 3});
  std::string message = error_of([&] { file.load_into("matrix", wrong_shape); });
  EXPECT_NE(message.find("'matrix'"), std::string::npos) << message;
  EXPECT_NE(message.find("expected shape (4, 3)"), std::string::npos) << message;
  EXPECT_NE(message.find("holds shape (3, 4)"), std::string::npos) << message;
  Tensor wrong_dtype = Tensor::zeros({3, 4}, DType::bf16);
  message = error_of([&] { file.load_into("matrix", wrong_dtype); });
  EXPECT_NE(message.find("bf16"), std::string::npos) << message;
}

TEST(CheckpointIo, WriteFileAtomicReplacesAndLeavesNoTmp) {
  TempDir dir;
  const std::string path = dir.file("state.json");
  write_file_atomic(path, "old content");
  EXPECT_EQ(read_file(path), "old content");
  write_file_atomic(path, std::string_view("new"));
  EXPECT_EQ(read_file(path), "new");
  write_file_atomic(path, [](std::FILE* file) { std::fputs("streamed", file); });
  EXPECT_EQ(read_file(path), "streamed");
  write_file_atomic(path, "");
  EXPECT_EQ(read_file(path), "");
  EXPECT_TRUE(tmp_files_in(dir.path).empty());
  std::string message = error_of([&] { read_file(dir.file("nope.txt")); });
  EXPECT_NE(message.find("nope.txt"), std::string::npos) << message;
  message = error_of([&] { write_file_atomic(dir.file("no_such_dir/x"), "x"); });
  EXPECT_NE(message.find("no_such_dir"), std::string::npos) << message;
}

TEST(CheckpointIo, FailingWriterKeepsOldFileAndLeavesNoTmp) {
  TempDir dir;
  const std::string path = dir.file("weights.bin");
  write_file_atomic(path, "precious");
  EXPECT_THROW(write_file_atomic(path,
                                 [](std::FILE* file) {
                                   std::fputs("half written", file);
                                   throw Error("simulated failure while writing");
                                 }),
               Error);
  EXPECT_EQ(read_file(path), "precious");
  EXPECT_TRUE(tmp_files_in(dir.path).empty());
}

// Writes a small fake checkpoint (one safetensors file and a state file) for `step`.
std::string save_fake_checkpoint(const std::string& run_dir, std::int64_t step, int keep) {
  std::string tmp = begin_checkpoint(run_dir, step);
  write_safetensors((fs::path(tmp) / "model.safetensors").string(),
                    {{"w", filled_f32({2}, static_cast<float>(step))}});
  write_file_atomic((fs::path(tmp) / "trainer_state.json").string(),
                    "{\"step\": " + std::to_string(step) + "}");
  return commit_checkpoint(run_dir, step, tmp, keep);
}

TEST(CheckpointIo, RotationKeepsNewestAndLatestPointsToNewest) {
  TempDir dir;
  const std::string run = dir.path.string();
  EXPECT_FALSE(find_latest_checkpoint(run).has_value());
  EXPECT_TRUE(list_checkpoints(run).empty());
  std::string last;
  for (std::int64_t step : {100, 200, 300, 400}) last = save_fake_checkpoint(run, step, 2);
  const fs::path ckpts = dir.path / "checkpoints";
  EXPECT_EQ(last, (ckpts / "step_00000400").string());
  EXPECT_EQ(list_checkpoints(run), (std::vector<std::string>{(ckpts / "step_00000300").string(),
                                                             (ckpts / "step_00000400").string()}));
  EXPECT_EQ(read_file((ckpts / "latest").string()), "step_00000400\n");
  EXPECT_EQ(find_latest_checkpoint(run), last);
  EXPECT_TRUE(tmp_files_in(ckpts).empty());
  SafetensorsFile model((fs::path(last) / "model.safetensors").string());
  EXPECT_EQ(model.load("w").f32()[0], 400.0f);
}

TEST(CheckpointIo, KeepZeroKeepsAllAndSameStepIsReplaced) {
  TempDir dir;
  const std::string run = dir.path.string();
  for (std::int64_t step : {1, 2, 3}) save_fake_checkpoint(run, step, 0);
  EXPECT_EQ(list_checkpoints(run).size(), 3u);
  // Re-committing step 2 (a re-run from an earlier checkpoint) replaces its folder.
  std::string tmp = begin_checkpoint(run, 2);
  write_file_atomic((fs::path(tmp) / "marker").string(), "second");
  std::string final_dir = commit_checkpoint(run, 2, tmp, 0);
  EXPECT_EQ(read_file((fs::path(final_dir) / "marker").string()), "second");
  EXPECT_FALSE(fs::exists(fs::path(final_dir) / "model.safetensors"));
  EXPECT_EQ(find_latest_checkpoint(run), final_dir);  // `latest` names the one just written
  EXPECT_EQ(list_checkpoints(run).size(), 3u);
  EXPECT_TRUE(tmp_files_in(dir.path / "checkpoints").empty());
  // The just-written folder survives rotation even when it is not the highest step.
  save_fake_checkpoint(run, 1, 1);
  EXPECT_EQ(list_checkpoints(run),
            (std::vector<std::string>{(dir.path / "checkpoints" / "step_00000001").string()}));
}

TEST(CheckpointIo, LeftoverTmpFolderIgnoredAndReplaced) {
  TempDir dir;
  const std::string run = dir.path.string();
  const std::string first = save_fake_checkpoint(run, 10, 0);
  // A crash during step 20's save leaves its tmp folder behind.
  const fs::path stale = dir.path / "checkpoints" / ".step_00000020.tmp";
  fs::create_directories(stale);
  write_file_atomic((stale / "model.safetensors").string(), "half written garbage");
  EXPECT_EQ(find_latest_checkpoint(run), first);
  EXPECT_EQ(list_checkpoints(run), std::vector<std::string>{first});
  // Without `latest`, the highest complete step_* folder is still found, not the tmp one.
  fs::remove(dir.path / "checkpoints" / "latest");
  EXPECT_EQ(find_latest_checkpoint(run), first);

  std::string tmp = begin_checkpoint(run, 20);
  EXPECT_EQ(tmp, stale.string());
  EXPECT_TRUE(fs::is_empty(tmp));
  std::string second = commit_checkpoint(run, 20, tmp, 0);
  EXPECT_EQ(find_latest_checkpoint(run), second);
  EXPECT_FALSE(fs::exists(stale));
}

TEST(CheckpointIo, ResolveCheckpointAcceptsRunDirAndCheckpointDir) {
  TempDir dir;
  const std::string run = (dir.path / "run").string();
  save_fake_checkpoint(run, 5, 0);
  const std::string newest = save_fake_checkpoint(run, 7, 0);
  EXPECT_EQ(resolve_checkpoint(run), newest);
  EXPECT_EQ(resolve_checkpoint(run + "/"), newest);
  EXPECT_EQ(resolve_checkpoint(run + "/checkpoints"), newest);
  const std::string older = (fs::path(run) / "checkpoints" / "step_00000005").string();
  EXPECT_EQ(resolve_checkpoint(older), older);
  EXPECT_EQ(resolve_checkpoint(older + "/"), older);

  // A checkpoint folder copied elsewhere under any name still resolves to itself.
  const fs::path copy = dir.path / "my_export";
  fs::copy(older, copy);
  EXPECT_EQ(resolve_checkpoint(copy.string()), copy.string());

  fs::create_directories(dir.path / "empty_run" / "checkpoints");
  std::string message = error_of([&] { resolve_checkpoint((dir.path / "empty_run").string()); });
  EXPECT_NE(message.find("no complete checkpoint"), std::string::npos) << message;
  fs::create_directories(dir.path / "unrelated");
  message = error_of([&] { resolve_checkpoint((dir.path / "unrelated").string()); });
  EXPECT_NE(message.find("neither a checkpoint folder"), std::string::npos) << message;
  message = error_of([&] { resolve_checkpoint((dir.path / "absent").string()); });
  EXPECT_NE(message.find("does not exist"), std::string::npos) << message;
  message = error_of([&] { resolve_checkpoint(older + "/model.safetensors"); });
  EXPECT_NE(message.find("is a file"), std::string::npos) << message;
}

}  // namespace
}  // namespace kiln

// F16 tensors (Hugging Face checkpoints are often saved in half precision) are read widened to
// fp32, exactly: normal, negative, the largest half, a subnormal and infinity.
TEST(Safetensors, F16IsReadWidenedExactly) {
  const std::string header = R"({"x":{"dtype":"F16","shape":[5],"data_offsets":[0,10]}})";
  std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
  const std::uint16_t halves[5] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00};
  const std::string path = ::testing::TempDir() + "kiln_f16.safetensors";
  {
    std::ofstream out(path, std::ios::binary);
    const std::uint64_t n = padded.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << padded;
    out.write(reinterpret_cast<const char*>(halves), sizeof halves);
  }
  const kiln::SafetensorsFile file(path);
  const kiln::Tensor x = file.load_f32("x");
  EXPECT_EQ(x.f32()[0], 1.0f);
  EXPECT_EQ(x.f32()[1], -2.0f);
  EXPECT_EQ(x.f32()[2], 65504.0f);
  EXPECT_EQ(x.f32()[3], std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(x.f32()[4]));
  EXPECT_THROW(file.load("x"), kiln::Error);  // kiln's own tensors are F32 or BF16
  std::remove(path.c_str());
}
