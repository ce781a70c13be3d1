// Checkpoint folders in a run directory, committed so that a crash at any moment leaves either
// the previous complete checkpoint or the new complete one, never a half-written one in use.
//
// A checkpoint is the folder <run_dir>/checkpoints/step_<8 digits>/ holding any files the
// trainer writes. Protocol:
//   1. begin_checkpoint creates a fresh temporary folder <run_dir>/checkpoints/.step_XXXXXXXX.tmp
//      (removed first if left from a crash) and returns its path;
//   2. the trainer writes its files into it (each already atomic, see atomic_file.h);
//   3. commit_checkpoint fsyncs the files, renames the folder to step_XXXXXXXX (replacing an
//      existing folder of the same step), fsyncs checkpoints/, atomically writes
//      checkpoints/latest holding the folder name ("step_XXXXXXXX\n"), then removes the oldest
//      step_* folders beyond `keep` (0 keeps all; never the one just written).
// Folders whose names start with '.' or end in ".tmp" are never treated as checkpoints.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kiln {

// "step_00001234" for step 1234 (at least 8 digits).
std::string checkpoint_name(std::int64_t step);

std::string begin_checkpoint(const std::string& run_dir, std::int64_t step);
// Returns the final folder path, <run_dir>/checkpoints/step_XXXXXXXX.
std::string commit_checkpoint(const std::string& run_dir, std::int64_t step,
                              const std::string& tmp_dir, int keep);

// The newest complete checkpoint folder: the one named in checkpoints/latest if that folder
// exists, else the highest step_* folder; std::nullopt if there is none.
std::optional<std::string> find_latest_checkpoint(const std::string& run_dir);

// Full paths of all step_* folders under <run_dir>/checkpoints, sorted by step (empty if none).
std::vector<std::string> list_checkpoints(const std::string& run_dir);

// Accepts a checkpoint folder (holding *.safetensors or trainer_state.json, or named step_*),
// a run dir (then its latest checkpoint) or a run dir's checkpoints/ folder. Throws kiln::Error
// saying what was found and what to pass otherwise.
std::string resolve_checkpoint(const std::string& path);

// Ownership of a run folder: <run_dir>/.lock, held with flock(2) for as long as this object
// lives, records the holder (pid, host, start time). A second holder is refused with a message
// naming the first; the kernel drops the lock when its holder exits or dies, so a crashed run
// leaves nothing to clean up. The folder is created if missing.
class RunDirLock {
 public:
  explicit RunDirLock(const std::string& run_dir);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace kiln
