// Durable files for checkpoints (POSIX): write to a temporary name, fsync,
// rename over the final name, fsync the directory, so a crash leaves either
// the old file or the new one, never a torn one; and positioned reads that
// name the file in every error. Ranks write different files; the temporary
// name carries the process id so two processes never share one.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>

#include "../../core/error.hpp"

namespace weft::io::checkpoint {

namespace detail {

inline std::string errno_text(int e) { return std::strerror(e); }

inline void fsync_dir(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw_error<IoError>("checkpoint: ", dir.string(), ": cannot open the directory to fsync it: ", errno_text(errno));
  const int rc = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  if (rc != 0) throw_error<IoError>("checkpoint: ", dir.string(), ": fsync of the directory failed: ", errno_text(e));
}

}  // namespace detail

// Writes a file through a temporary name; commit() makes it durable under its
// final name. Destroyed without commit() (an exception): the temporary is removed.
class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path path) : path_(std::move(path)) {
    tmp_ = path_;
    tmp_ += ".tmp." + std::to_string(::getpid());
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw_error<IoError>("checkpoint: ", tmp_.string(), ": cannot create: ", detail::errno_text(errno));
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }

  void write(const void* data, std::size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, std::min<std::size_t>(n, std::size_t(1) << 30));
      if (w < 0) {
        if (errno == EINTR) continue;
        throw_error<IoError>("checkpoint: ", tmp_.string(), ": write failed: ", detail::errno_text(errno));
      }
      p += w;
      n -= static_cast<std::size_t>(w);
      written_ += static_cast<std::uint64_t>(w);
    }
  }
  std::uint64_t written() const { return written_; }

  // fsync, close, rename to the final name, fsync the directory.
  void commit() {
    if (::fsync(fd_) != 0) throw_error<IoError>("checkpoint: ", tmp_.string(), ": fsync failed: ", detail::errno_text(errno));
    const int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) throw_error<IoError>("checkpoint: ", tmp_.string(), ": close failed: ", detail::errno_text(errno));
    if (::rename(tmp_.c_str(), path_.c_str()) != 0)
      throw_error<IoError>("checkpoint: cannot rename ", tmp_.string(), " to ", path_.string(), ": ", detail::errno_text(errno));
    committed_ = true;
    detail::fsync_dir(path_.has_parent_path() ? path_.parent_path() : std::filesystem::path("."));
  }

 private:
  std::filesystem::path path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
  std::uint64_t written_ = 0;
};

// A file opened for positioned reads; every error names it.
class ReadFile {
 public:
  explicit ReadFile(std::filesystem::path path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      const int e = errno;
      if (e == ENOENT) throw_error<IoError>(path_.string(), ": no such file");
      throw_error<IoError>(path_.string(), ": cannot open: ", detail::errno_text(e));
    }
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd_);
      throw_error<IoError>(path_.string(), ": not a regular file");
    }
    size_ = static_cast<std::uint64_t>(st.st_size);
  }
  ReadFile(const ReadFile&) = delete;
  ReadFile& operator=(const ReadFile&) = delete;
  ~ReadFile() {
    if (fd_ >= 0) ::close(fd_);
  }

  std::uint64_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

  // Exactly n bytes at offset `at`, or an IoError saying what was read.
  void read(void* dst, std::size_t n, std::uint64_t at, std::string_view what) const {
    char* p = static_cast<char*>(dst);
    std::size_t done = 0;
    while (done < n) {
      const ssize_t r = ::pread(fd_, p + done, std::min<std::size_t>(n - done, std::size_t(1) << 30),
                                static_cast<off_t>(at + done));
      if (r < 0) {
        if (errno == EINTR) continue;
        throw_error<IoError>(path_.string(), ": reading ", what, " failed: ", detail::errno_text(errno));
      }
      if (r == 0)
        throw_error<IoError>(path_.string(), ": ", what, ": file ends after ", at + done, " bytes (truncated?)");
      done += static_cast<std::size_t>(r);
    }
  }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

}  // namespace weft::io::checkpoint
