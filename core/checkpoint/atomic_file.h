// Crash-safe file writes. A checkpoint must never be half-written: a reader sees either the old
// file or the complete new one. Each write goes to "<path>.tmp.<pid>", is flushed and fsynced,
// renamed over <path> (atomic on POSIX) and the parent folder is fsynced so the rename itself
// survives a power cut. On any failure the tmp file is removed and the old file is untouched.
#pragma once

#include <cstdio>
#include <functional>
#include <string>
#include <string_view>

namespace kiln {

// Writes `bytes` to `path` atomically (see above). Throws kiln::Error naming the path and the
// errno text on failure; the parent folder must exist.
void write_file_atomic(const std::string& path, std::string_view bytes);

// The same, streaming: `writer` gets a FILE* opened for binary writing on the tmp file and
// writes with fwrite/fprintf (no fclose, no fseek needed). Write errors are detected after the
// callback returns (ferror, fflush, fsync). If the callback throws, the tmp file is removed,
// the old file is left intact and the exception propagates unchanged.
void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& writer);

// The whole file as bytes. Throws kiln::Error naming the path if it is missing or unreadable.
std::string read_file(const std::string& path);

// Replaces folder `to` with the complete folder `from` beside it (same parent): atomically where
// the filesystem can exchange two names (renameat2 RENAME_EXCHANGE), else by two renames; the
// old folder is deleted. A reader sees the old folder or the new one, never a mix of their files.
void replace_folder(const std::string& from, const std::string& to);

// fsyncs a folder so that renames and new entries in it are durable. Filesystems that do not
// support fsync on folders (EINVAL) are accepted silently.
void fsync_directory(const std::string& dir);

}  // namespace kiln
