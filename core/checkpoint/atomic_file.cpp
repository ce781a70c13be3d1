// Atomic file writes: tmp file + fsync + rename + fsync of the parent folder. See atomic_file.h.
#include "core/checkpoint/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stdio.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "kernels/error.h"

namespace kiln {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

std::string parent_folder(const std::string& path) {
  std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

// Closes `file` (if open) and removes `tmp`, keeping the caller's errno-free state.
void discard_tmp(std::FILE* file, const std::string& tmp) {
  if (file != nullptr) std::fclose(file);
  ::unlink(tmp.c_str());
}

// Flushes, fsyncs and closes `file`; throws naming `path` on any failure (the file is closed
// either way; the caller removes the tmp file).
void finish_file(std::FILE* file, const std::string& path, const std::string& tmp) {
  if (std::ferror(file) != 0) {
    int err = errno;
    discard_tmp(file, tmp);
    throw Error(message("writing ", path, " failed: ", errno_text(err),
                        "; check free disk space and write permission of the folder"));
  }
  if (std::fflush(file) != 0 || ::fsync(::fileno(file)) != 0) {
    int err = errno;
    discard_tmp(file, tmp);
    throw Error(message("flushing ", path, " to disk failed: ", errno_text(err),
                        "; check free disk space and the filesystem"));
  }
  if (std::fclose(file) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw Error(message("closing ", tmp, " failed: ", errno_text(err),
                        "; check free disk space and the filesystem"));
  }
}

}  // namespace

void write_file_atomic(const std::string& path, std::string_view bytes) {
  write_file_atomic(path, [&](std::FILE* file) {
    if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), file);
  });
}

void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& writer) {
  KILN_CHECK(!path.empty(), "write_file_atomic: empty path");
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    int err = errno;
    throw Error(message("cannot create ", tmp, " (to write ", path, "): ", errno_text(err),
                        "; check that the folder ", parent_folder(path),
                        " exists and is writable"));
  }
  std::FILE* file = ::fdopen(fd, "wb");
  if (file == nullptr) {
    int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    throw Error(message("cannot open a stream on ", tmp, ": ", errno_text(err)));
  }
  std::setvbuf(file, nullptr, _IOFBF, 1 << 20);
  try {
    writer(file);
  } catch (...) {
    discard_tmp(file, tmp);
    throw;
  }
  finish_file(file, path, tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw Error(message("cannot rename ", tmp, " to ", path, ": ", errno_text(err),
                        "; check that ", path, " is not a folder and the folder is writable"));
  }
  fsync_directory(parent_folder(path));
}

std::string read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    throw Error(message("cannot read ", path, ": ", errno_text(err), "; check the path"));
  }
  std::string bytes;
  char buffer[1 << 16];
  while (true) {
    ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      throw Error(message("reading ", path, " failed: ", errno_text(err)));
    }
    if (n == 0) break;
    bytes.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return bytes;
}

void replace_folder(const std::string& from, const std::string& to) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(to, ec)) {
    fs::rename(from, to, ec);
    KILN_CHECK(!ec, "cannot move ", from, " to ", to, ": ", ec.message());
    return;
  }
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE) == 0) {
    fs::remove_all(from, ec);  // now the previous folder
    return;
  }
  const std::string old = to + ".old-" + std::to_string(::getpid());
  fs::rename(to, old, ec);
  KILN_CHECK(!ec, "cannot move the previous ", to, " aside: ", ec.message());
  fs::rename(from, to, ec);
  KILN_CHECK(!ec, "cannot move ", from, " to ", to, ": ", ec.message(), "; the previous one is in ", old);
  fs::remove_all(old, ec);
}

void fsync_directory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    throw Error(message("cannot open folder ", dir, " to fsync it: ", errno_text(err),
                        "; check that it exists"));
  }
  if (::fsync(fd) != 0 && errno != EINVAL) {
    int err = errno;
    ::close(fd);
    throw Error(message("fsync of folder ", dir, " failed: ", errno_text(err)));
  }
  ::close(fd);
}

}  // namespace kiln
