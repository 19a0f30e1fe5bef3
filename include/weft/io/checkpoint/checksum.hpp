// Per-tensor checksums for checkpoint files: CRC-32 (IEEE 802.3, the
// polynomial of zlib, gzip and PNG) from zlib. zlib rather than CRC32C or
// xxHash because it is already a weft dependency (the IDX reader's gzip
// support; consumers get it through weft::zlib) and Debian's zlib 1.2.13
// computes it with a braided, word-at-a-time loop (several GB/s, not the
// bottleneck next to fsync). The value is stored as 8 lower-case hex digits.
// Opt-in: needs zlib.h (not included by weft.hpp).
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

namespace weft::io::checkpoint {

// CRC-32 of n bytes, continuing from `crc` (0 to start).
inline std::uint32_t crc32(const void* data, std::size_t n, std::uint32_t crc = 0) {
  const auto* p = static_cast<const unsigned char*>(data);
  uLong c = crc;
  while (n > 0) {  // zlib takes uInt lengths: feed at most 1 GiB per call
    const std::size_t k = std::min<std::size_t>(n, std::size_t(1) << 30);
    c = ::crc32(c, p, static_cast<uInt>(k));
    p += k;
    n -= k;
  }
  return static_cast<std::uint32_t>(c);
}

inline std::string crc32_hex(std::uint32_t c) {
  static const char* hex = "0123456789abcdef";
  std::string s(8, '0');
  for (int i = 7; i >= 0; --i, c >>= 4) s[static_cast<std::size_t>(i)] = hex[c & 15];
  return s;
}

}  // namespace weft::io::checkpoint
