// Checkpoint folder protocol: begin (tmp folder) -> trainer writes -> commit (fsync, rename,
// latest, rotation). See run_dir.h for the steps and what survives a crash.
#include "core/checkpoint/run_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "core/checkpoint/atomic_file.h"
#include "kernels/error.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

fs::path checkpoints_dir(const std::string& run_dir) { return fs::path(run_dir) / "checkpoints"; }

// The step of a folder named step_<digits>, or nullopt for any other name.
std::optional<std::int64_t> parse_step(const std::string& name) {
  const std::string prefix = "step_";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return {};
  if (name.size() - prefix.size() > 18) return {};
  std::int64_t step = 0;
  for (std::size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return {};
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

void check_step(std::int64_t step) {
  KILN_CHECK(step >= 0, "checkpoint step must be >= 0, got ", step);
}

// fsyncs every regular file directly inside `dir`, then `dir` itself.
void fsync_folder_contents(const fs::path& dir) {
  for (const auto& item : fs::directory_iterator(dir)) {
    if (!item.is_regular_file()) continue;
    const std::string file = item.path().string();
    int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    KILN_CHECK(fd >= 0, "cannot open ", file, " to fsync it: ", std::strerror(errno));
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    KILN_CHECK(rc == 0, "fsync of ", file, " failed: ", std::strerror(err),
               "; check free disk space and the filesystem");
  }
  fsync_directory(dir.string());
}

void rename_or_throw(const fs::path& from, const fs::path& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0) {
    throw Error(message("cannot rename ", from.string(), " to ", to.string(), ": ",
                        std::strerror(errno), "; check write permission of ",
                        to.parent_path().string()));
  }
}

void remove_or_throw(const fs::path& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  KILN_CHECK(!ec, "cannot remove old checkpoint ", dir.string(), ": ", ec.message(),
             "; check permissions, or remove it by hand");
}

// Removes the oldest step_* folders beyond `keep`, never `just_written`.
void rotate(const std::string& run_dir, const fs::path& just_written, int keep) {
  if (keep == 0) return;
  std::vector<std::string> all = list_checkpoints(run_dir);
  std::size_t excess = all.size() > static_cast<std::size_t>(keep) ? all.size() - keep : 0;
  for (const auto& folder : all) {
    if (excess == 0) break;
    if (fs::path(folder).filename() == just_written.filename()) continue;
    remove_or_throw(folder);
    --excess;
  }
}

bool has_checkpoint_files(const fs::path& dir) {
  std::error_code ec;
  for (const auto& item : fs::directory_iterator(dir, ec)) {
    const std::string name = item.path().filename().string();
    if (name == "trainer_state.json") return true;
    if (name.size() > 12 && name.ends_with(".safetensors")) return true;
  }
  return false;
}

// ".step_XXXXXXXX<suffix>": hidden and ending in .tmp, so never listed as a checkpoint. Built
// with append (not "." + string) to dodge a GCC 12 -Wrestrict false positive.
std::string hidden_tmp_name(std::int64_t step, const char* suffix) {
  std::string name = ".";
  name.append(checkpoint_name(step)).append(suffix);
  return name;
}

std::string strip_trailing_slashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

}  // namespace

std::string checkpoint_name(std::int64_t step) {
  check_step(step);
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "step_%08lld", static_cast<long long>(step));
  return buffer;
}

std::string begin_checkpoint(const std::string& run_dir, std::int64_t step) {
  const fs::path dir = checkpoints_dir(run_dir);
  std::error_code ec;
  fs::create_directories(dir, ec);
  KILN_CHECK(!ec, "cannot create checkpoint folder ", dir.string(), ": ", ec.message(),
             "; check train.run_dir and its permissions");
  const fs::path tmp = dir / hidden_tmp_name(step, ".tmp");
  fs::remove_all(tmp, ec);
  KILN_CHECK(!ec, "cannot remove the leftover ", tmp.string(), ": ", ec.message(),
             "; remove it by hand");
  fs::create_directory(tmp, ec);
  KILN_CHECK(!ec, "cannot create ", tmp.string(), ": ", ec.message());
  return tmp.string();
}

std::string commit_checkpoint(const std::string& run_dir, std::int64_t step,
                              const std::string& tmp_dir, int keep) {
  KILN_CHECK(keep >= 0, "checkpoint.keep must be >= 0 (0 keeps all), got ", keep);
  KILN_CHECK(fs::is_directory(tmp_dir), "commit_checkpoint: ", tmp_dir,
             " is not a folder; call begin_checkpoint first and write the files into it");
  const fs::path dir = checkpoints_dir(run_dir);
  const std::string name = checkpoint_name(step);
  const fs::path final_dir = dir / name;
  fsync_folder_contents(tmp_dir);
  // A folder of the same step (a re-run from an earlier checkpoint) is moved aside first:
  // rename() cannot replace a non-empty folder. Its ".tmp" name keeps it out of listings.
  const fs::path aside = dir / hidden_tmp_name(step, ".old.tmp");
  const bool replacing = fs::exists(final_dir);
  if (replacing) {
    remove_or_throw(aside);
    rename_or_throw(final_dir, aside);
  }
  rename_or_throw(tmp_dir, final_dir);
  fsync_directory(dir.string());
  write_file_atomic((dir / "latest").string(), name + "\n");
  if (replacing) remove_or_throw(aside);
  rotate(run_dir, final_dir, keep);
  return final_dir.string();
}

std::vector<std::string> list_checkpoints(const std::string& run_dir) {
  const fs::path dir = checkpoints_dir(run_dir);
  std::vector<std::pair<std::int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  for (const auto& item : fs::directory_iterator(dir, ec)) {
    if (!item.is_directory()) continue;
    auto step = parse_step(item.path().filename().string());
    if (step) found.emplace_back(*step, item.path().string());
  }
  KILN_CHECK(!ec, "cannot list ", dir.string(), ": ", ec.message());
  std::sort(found.begin(), found.end());
  std::vector<std::string> paths;
  for (auto& [step, path] : found) paths.push_back(std::move(path));
  return paths;
}

std::optional<std::string> find_latest_checkpoint(const std::string& run_dir) {
  const fs::path dir = checkpoints_dir(run_dir);
  std::error_code ec;
  if (fs::is_regular_file(dir / "latest", ec)) {
    std::string name = read_file((dir / "latest").string());
    while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) {
      name.pop_back();
    }
    if (parse_step(name) && fs::is_directory(dir / name, ec)) return (dir / name).string();
  }
  std::vector<std::string> all = list_checkpoints(run_dir);
  if (all.empty()) return std::nullopt;
  return all.back();
}

std::string resolve_checkpoint(const std::string& path_in) {
  const std::string path = strip_trailing_slashes(path_in);
  std::error_code ec;
  KILN_CHECK(fs::exists(path, ec), "checkpoint path ", path,
             " does not exist; pass a run directory or one of its checkpoints/step_* folders");
  KILN_CHECK(fs::is_directory(path, ec), "checkpoint path ", path,
             " is a file; pass the checkpoint folder that holds it (",
             fs::path(path).parent_path().string(), ") or the run directory");
  const fs::path p(path);
  // A run's checkpoints/ folder itself: resolve through its run directory.
  if (p.filename() == "checkpoints" && !has_checkpoint_files(p)) {
    return resolve_checkpoint(p.parent_path().empty() ? "." : p.parent_path().string());
  }
  if (fs::is_directory(p / "checkpoints", ec)) {
    auto latest = find_latest_checkpoint(path);
    KILN_CHECK(latest.has_value(), "run directory ", path, " has no complete checkpoint in ",
               (p / "checkpoints").string(),
               " yet; train with checkpoint.every > 0 first, or pass a checkpoint folder");
    return *latest;
  }
  if (has_checkpoint_files(p) || parse_step(p.filename().string())) return path;
  throw Error(message(path, " is neither a checkpoint folder (holding model.safetensors or ",
                      "trainer_state.json) nor a run directory (holding checkpoints/); pass ",
                      "<run_dir> or <run_dir>/checkpoints/step_XXXXXXXX"));
}

RunDirLock::RunDirLock(const std::string& run_dir) {
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  KILN_CHECK(!ec && std::filesystem::is_directory(run_dir), "cannot create train.run_dir=", run_dir, ": ",
             ec ? ec.message() : "a file of that name exists", "; choose another train.run_dir");
  const std::string path = run_dir + "/.lock";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  KILN_CHECK(fd_ >= 0, "cannot open ", path, ": ", std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char holder[512] = {};
    const ssize_t n = ::pread(fd_, holder, sizeof(holder) - 1, 0);
    ::close(fd_);
    fd_ = -1;
    std::string who = n > 0 ? std::string(holder, static_cast<std::size_t>(n)) : std::string("an unknown process");
    while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
    KILN_CHECK(err != EWOULDBLOCK, "train.run_dir=", run_dir, " is in use by another run (", who, "); wait for it to "
               "end or stop it, or choose another train.run_dir. Two runs writing one folder would mix their "
               "checkpoints and metrics");
    throw Error(message("cannot lock ", path, ": ", std::strerror(err)));
  }
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  const std::time_t now = std::time(nullptr);
  char when[64] = {};
  std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  const std::string text = message("pid ", ::getpid(), " on ", host, " since ", when, "\n");
  // Best effort: the lock itself is what guards the folder; the text only names the holder.
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size()))
    std::fprintf(stderr, "kiln: warning: cannot record the holder in %s: %s\n", path.c_str(), std::strerror(errno));
}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) ::close(fd_);  // closing drops the flock
}

}  // namespace kiln
