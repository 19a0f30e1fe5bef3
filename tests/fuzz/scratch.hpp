// Scratch file names for the fuzz targets: one per fuzzing process (its pid,
// so parallel fuzzers do not share a file), under $TMPDIR or /tmp.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <string>

namespace fuzz {

inline std::string scratch_name(const std::string& stem) {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + stem + "_" + std::to_string(::getpid());
}

}  // namespace fuzz
