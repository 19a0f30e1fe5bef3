// IDX reader (the MNIST / Fashion-MNIST file format), gzip-compressed or plain,
// plus a loader for Debian's `dataset-fashion-mnist` package.
//
// IDX layout (all integers big-endian):
//   bytes 0-1   zero
//   byte  2     element type code (0x08 = unsigned byte; the only one read here)
//   byte  3     number of dimensions d (1..weft::max_rank)
//   4*d bytes   dimension sizes, uint32 each
//   payload     prod(dims) elements, row-major
//
// Dimension legend: N samples, H x W image rows/cols (28 x 28 for MNIST).
//
// Every failure (missing file, truncated payload, bad magic, corrupt gzip
// stream, unsupported type or rank) throws weft::IoError naming the path and
// the problem; a tensor is returned only when the whole payload was read.
#pragma once

#include <zlib.h>

#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <new>
#include <string>
#include <system_error>
#include <vector>

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../core/shape.hpp"
#include "../tensor/tensor.hpp"

namespace weft::io {

namespace detail {

// Owns a gzFile so every error path closes it.
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path) {
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (ec && ec != std::errc::no_such_file_or_directory)  // e.g. a symlink loop (ELOOP), no permission on a folder
      throw_error<IoError>("read_idx: ", path, ": cannot open: ", ec.message());
    if (!std::filesystem::exists(status)) {
      std::error_code lec;
      if (std::filesystem::is_symlink(std::filesystem::symlink_status(path, lec)))
        throw_error<IoError>("read_idx: ", path, ": is a symbolic link to ",
                             std::filesystem::read_symlink(path, lec).string(), ", which does not exist");
      throw_error<IoError>("read_idx: ", path, ": no such file");
    }
    if (std::filesystem::is_directory(status))
      throw_error<IoError>("read_idx: ", path, ": is a directory, not an IDX file");
    errno = 0;
    file_ = gzopen(path.c_str(), "rb");
    if (!file_) {
      const int err = errno;
      throw_error<IoError>("read_idx: ", path, ": cannot open: ", err ? std::strerror(err) : "out of memory in zlib");
    }
    // A large buffer keeps the number of read() system calls low; the payload
    // itself is inflated straight into the caller's storage by gzread.
    gzbuffer(file_, 1u << 20);
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;
  ~GzReader() {
    if (file_) gzclose_r(file_);
  }

  // Reads up to n bytes into dst in large chunks; returns how many were read.
  // Fewer than n means the data ended early: cleanly, or (cut_off() true)
  // because the gzip stream itself was cut off. A corrupt stream throws.
  std::size_t read(void* dst, std::size_t n, const char* what) {
    auto* out = static_cast<unsigned char*>(dst);
    std::size_t got = 0;
    constexpr std::size_t chunk = std::size_t{1} << 30;  // gzread takes an unsigned and returns an int
    while (got < n) {
      const auto want = static_cast<unsigned>(n - got < chunk ? n - got : chunk);
      const int r = gzread(file_, out + got, want);
      if (r <= 0) break;
      got += static_cast<std::size_t>(r);
    }
    if (got < n) {
      // gzread reports errors through gzerror, also after a partial read.
      int errnum = Z_OK;
      const char* msg = gzerror(file_, &errnum);
      if (errnum == Z_BUF_ERROR) {
        cut_off_ = true;  // "unexpected end of file": the caller reports the counts
      } else if (errnum == Z_ERRNO) {
        throw_error<IoError>("read_idx: ", path_, ": read error in the ", what, ": ", std::strerror(errno));
      } else if (errnum != Z_OK) {
        // zlib prefixes its message with the path; keep only the reason.
        std::string reason = msg ? msg : "unknown error";
        if (reason.rfind(path_ + ": ", 0) == 0) reason.erase(0, path_.size() + 2);
        throw_error<IoError>("read_idx: ", path_, ": corrupt gzip stream (zlib: ", reason, ")");
      }
    }
    return got;
  }

  bool cut_off() const { return cut_off_; }

  // True when the file is stored without gzip compression.
  bool direct() { return gzdirect(file_) != 0; }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  gzFile file_ = nullptr;
  bool cut_off_ = false;
};

inline const char* idx_type_name(unsigned code) {
  switch (code) {
    case 0x08: return "unsigned byte";
    case 0x09: return "signed byte";
    case 0x0B: return "int16";
    case 0x0C: return "int32";
    case 0x0D: return "float32";
    case 0x0E: return "float64";
    default: return "not an IDX type";
  }
}

inline std::string hex_bytes(const unsigned char* p, std::size_t n) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    if (i) s += ' ';
    s += digits[p[i] >> 4];
    s += digits[p[i] & 0xF];
  }
  return s;
}

inline std::uint32_t load_be32(const unsigned char* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]};
}

}  // namespace detail

// Reads an IDX file of unsigned bytes (gzip-compressed or not) into a tensor
// of the file's shape, e.g. (60000, 28, 28) for images or (60000,) for labels.
inline Tensor<std::uint8_t> read_idx(const std::string& path) {
  detail::GzReader in(path);

  unsigned char magic[4];
  const std::size_t got_magic = in.read(magic, 4, "header");
  if (got_magic < 4)
    throw_error<IoError>("read_idx: ", path, ": truncated header: expected 4 magic bytes, found ", got_magic,
                         got_magic ? " (" + detail::hex_bytes(magic, got_magic) + ")" : std::string(),
                         in.cut_off() ? " (the gzip stream ends early)" : "");
  if (magic[0] != 0 || magic[1] != 0)
    throw_error<IoError>("read_idx: ", path, ": not an IDX file: bad magic bytes ", detail::hex_bytes(magic, 4),
                         " (expected 00 00 <type> <rank>)");
  const unsigned type = magic[2];
  const int rank = magic[3];
  if (type != 0x08) {
    char code[8];
    std::snprintf(code, sizeof code, "0x%02X", type);
    throw_error<IoError>("read_idx: ", path, ": unsupported IDX type code ", code, " (", detail::idx_type_name(type),
                         "); only 0x08 (unsigned byte) is supported");
  }
  if (rank < 1 || rank > max_rank)
    throw_error<IoError>("read_idx: ", path, ": unsupported rank ", rank, " in the IDX header; weft reads ranks 1..", max_rank);

  unsigned char dims[4 * max_rank];
  const std::size_t dim_bytes = 4 * static_cast<std::size_t>(rank);
  const std::size_t got_dims = in.read(dims, dim_bytes, "header");
  if (got_dims < dim_bytes)
    throw_error<IoError>("read_idx: ", path, ": truncated header: expected ", dim_bytes, " bytes of dimension sizes for rank ",
                         rank, ", found ", got_dims, in.cut_off() ? " (the gzip stream ends early)" : "");

  Shape shape;
  shape.rank = rank;
  // Each dimension is below 2^32, so the running product overflows only past
  // 2^62; such a header can only be corrupt.
  constexpr index_t limit = index_t{1} << 62;
  index_t numel = 1;
  for (int d = 0; d < rank; ++d) shape[d] = static_cast<index_t>(detail::load_be32(dims + 4 * d));
  for (int d = 0; d < rank; ++d) {
    if (shape[d] != 0 && numel > limit / shape[d])
      throw_error<IoError>("read_idx: ", path, ": corrupt IDX header: dimensions ", shape, " are too large");
    numel *= shape[d];
  }
  const auto payload = static_cast<std::size_t>(numel);
  const std::size_t header = 4 + dim_bytes;

  // Check the claimed size against the file before allocating, so a corrupt
  // header cannot ask for terabytes. Deflate expands at most ~1032:1.
  std::error_code ec;
  const auto file_bytes = static_cast<std::size_t>(std::filesystem::file_size(path, ec));
  if (!ec) {
    if (in.direct() && header + payload > file_bytes)
      throw_error<IoError>("read_idx: ", path, ": truncated file: shape ", shape, " needs ", payload, " data bytes after the ",
                           header, "-byte header, found ", file_bytes - header);
    if (!in.direct() && payload / 1100 > file_bytes)
      throw_error<IoError>("read_idx: ", path, ": truncated or corrupt file: shape ", shape, " needs ", payload,
                           " data bytes, more than a ", file_bytes, "-byte gzip file can hold");
  }

  Tensor<std::uint8_t> out;
  try {
    out.resize(shape);
  } catch (const std::bad_alloc&) {
    throw_error<IoError>("read_idx: ", path, ": cannot allocate ", payload, " bytes for shape ", shape);
  }
  const std::size_t got = in.read(out.data(), payload, "data");
  if (got < payload)
    throw_error<IoError>("read_idx: ", path, ": truncated file: shape ", shape, " needs ", payload, " data bytes, found ", got,
                         in.cut_off() ? " (the gzip stream ends early)" : "");

  // Reading past the payload makes zlib verify the gzip CRC and length
  // trailer, and catches files whose header understates their size.
  unsigned char extra[64];
  const std::size_t trailing = in.read(extra, sizeof extra, "end of file");
  if (in.cut_off())
    throw_error<IoError>("read_idx: ", path, ": truncated gzip stream: all ", payload,
                         " data bytes are present but the gzip trailer (CRC and length) is missing");
  if (trailing > 0)
    throw_error<IoError>("read_idx: ", path, ": ", trailing == sizeof extra ? "at least " : "", trailing,
                         " unexpected bytes after the ", payload, " data bytes of shape ", shape);
  return out;
}

// Fashion-MNIST as Debian's `dataset-fashion-mnist` package installs it.
struct Dataset {
  Tensor<float> images;         // (N, 784) row-major 28x28 pixels, scaled to [0, 1]
  Tensor<std::int32_t> labels;  // (N,) class ids in 0..9
};

// One mini-batch: rows order[first], order[first + 1], ... of the dataset
// into x (B, D) and y (B,), B = x.size(0): what a training loop does with a
// sampler's epoch permutation each step. Copies rows; allocates nothing.
inline void gather_batch(const Dataset& data, const std::vector<index_t>& order, index_t first, Tensor<float>& x,
                         Tensor<std::int32_t>& y) {
  const index_t b = x.shape().rank == 2 ? x.size(0) : -1, d = data.images.size(1), n = data.labels.numel();
  if (b < 0 || x.size(1) != d || y.shape() != Shape{b})
    throw_error<ShapeError>("gather_batch: x has shape ", x.shape(), " and y ", y.shape(), "; expected (B, ", d,
                            ") and (B,) for the dataset's ", d, " features");
  if (first < 0 || first + b > static_cast<index_t>(order.size()))
    throw_error<ValueError>("gather_batch: rows ", first, "..", first + b, " of an order of ", order.size(),
                            " indices");
  for (index_t r = 0; r < b; ++r) {
    const index_t src = order[static_cast<std::size_t>(first + r)];
    if (src < 0 || src >= n)
      throw_error<ValueError>("gather_batch: index ", src, " at position ", first + r, " is outside the dataset's ", n,
                              " samples");
    std::memcpy(x.data() + r * d, data.images.data() + src * d, static_cast<std::size_t>(d) * sizeof(float));
    y.data()[r] = data.labels.data()[src];
  }
}

// split: "train" (60000 samples) or "test" (10000 samples).
inline Dataset load_fashion_mnist(const std::string& split, const std::string& dir = "/usr/share/datasets/fashion-mnist") {
  std::string prefix;
  if (split == "train")
    prefix = "train";
  else if (split == "test")
    prefix = "t10k";
  else
    throw_error<ValueError>("load_fashion_mnist: unknown split \"", split, "\": use \"train\" or \"test\"");

  const std::string image_path = (std::filesystem::path(dir) / (prefix + "-images-idx3-ubyte.gz")).string();
  const std::string label_path = (std::filesystem::path(dir) / (prefix + "-labels-idx1-ubyte.gz")).string();
  for (const std::string* p : {&image_path, &label_path}) {
    std::error_code ec;
    if (!std::filesystem::exists(*p, ec))
      throw_error<IoError>("load_fashion_mnist: ", *p,
                           ": no such file; the Fashion-MNIST files come from the Debian package dataset-fashion-mnist "
                           "(apt-get install dataset-fashion-mnist)");
  }

  const Tensor<std::uint8_t> raw_images = read_idx(image_path);  // (N, H, W)
  const Tensor<std::uint8_t> raw_labels = read_idx(label_path);  // (N,)
  if (raw_images.rank() != 3)
    throw_error<IoError>("load_fashion_mnist: ", image_path, ": expected images of shape (N, H, W), found ", raw_images.shape());
  if (raw_labels.rank() != 1)
    throw_error<IoError>("load_fashion_mnist: ", label_path, ": expected labels of shape (N,), found ", raw_labels.shape());
  const index_t n = raw_images.size(0);
  if (raw_labels.size(0) != n)
    throw_error<IoError>("load_fashion_mnist: ", image_path, " holds ", n, " images but ", label_path, " holds ",
                         raw_labels.size(0), " labels");
  const index_t pixels = raw_images.size(1) * raw_images.size(2);

  Dataset ds{Tensor<float>({n, pixels}), Tensor<std::int32_t>({n})};
  const std::uint8_t* src = raw_images.data();
  float* img = ds.images.data();
  for (index_t i = 0; i < n * pixels; ++i) img[i] = static_cast<float>(src[i]) / 255.0f;
  const std::uint8_t* lab = raw_labels.data();
  std::int32_t* dst = ds.labels.data();
  for (index_t i = 0; i < n; ++i) {
    if (lab[i] > 9)
      throw_error<IoError>("load_fashion_mnist: ", label_path, ": label ", int{lab[i]}, " at index ", i, " is outside 0..9");
    dst[i] = lab[i];
  }
  return ds;
}

}  // namespace weft::io
