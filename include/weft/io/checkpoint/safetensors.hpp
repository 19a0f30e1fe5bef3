// safetensors files (https://github.com/huggingface/safetensors), read and
// written without third-party code:
//
//   [8 bytes: N, little-endian u64][N bytes: JSON header][data]
//   header: {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//            "__metadata__": {"key": "string value", ...}}
//
// Offsets are relative to the start of the data; the tensors tile the data
// exactly (sorted by offset, no overlap, no gap, ending at the end of the
// file), as the reference implementation requires. Data is little-endian,
// C order. The writer pads the header with spaces so the data starts 8-byte
// aligned, and stores a CRC-32 of each tensor in __metadata__ under
// "crc32:<name>" (8 hex digits); the reader checks it, so a flipped byte is an
// error naming the file and the tensor. Every check on a hostile file ends in
// IoError naming the file, the tensor and the problem.
// Opt-in: needs zlib (checksum.hpp) and POSIX files (file.hpp).
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../core/dtype.hpp"
#include "../../core/error.hpp"
#include "../json.hpp"
#include "checksum.hpp"
#include "file.hpp"

namespace weft::io::checkpoint {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian: a big-endian host would need byte swapping, which is not written yet");

// safetensors' element types.
enum class Dtype : std::uint8_t { BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2 };

inline constexpr std::pair<Dtype, std::string_view> kDtypeNames[] = {
    {Dtype::BOOL, "BOOL"}, {Dtype::U8, "U8"},   {Dtype::I8, "I8"},     {Dtype::I16, "I16"},         {Dtype::U16, "U16"},
    {Dtype::F16, "F16"},   {Dtype::BF16, "BF16"}, {Dtype::I32, "I32"}, {Dtype::U32, "U32"},         {Dtype::F32, "F32"},
    {Dtype::F64, "F64"},   {Dtype::I64, "I64"}, {Dtype::U64, "U64"},   {Dtype::F8_E4M3, "F8_E4M3"}, {Dtype::F8_E5M2, "F8_E5M2"}};

constexpr std::string_view dtype_name(Dtype d) {
  for (const auto& [k, n] : kDtypeNames)
    if (k == d) return n;
  return "?";
}

constexpr std::size_t dtype_size(Dtype d) {
  switch (d) {
    case Dtype::BOOL: case Dtype::U8: case Dtype::I8: case Dtype::F8_E4M3: case Dtype::F8_E5M2: return 1;
    case Dtype::I16: case Dtype::U16: case Dtype::F16: case Dtype::BF16: return 2;
    case Dtype::I32: case Dtype::U32: case Dtype::F32: return 4;
    case Dtype::F64: case Dtype::I64: case Dtype::U64: return 8;
  }
  return 0;
}

inline bool parse_dtype(std::string_view s, Dtype& out) {
  for (const auto& [k, n] : kDtypeNames)
    if (n == s) {
      out = k;
      return true;
    }
  return false;
}

template <class T>
struct dtype_for;  // the safetensors dtype of a C++ element type
template <> struct dtype_for<float> { static constexpr Dtype value = Dtype::F32; };
template <> struct dtype_for<double> { static constexpr Dtype value = Dtype::F64; };
template <> struct dtype_for<half> { static constexpr Dtype value = Dtype::F16; };
template <> struct dtype_for<bfloat16> { static constexpr Dtype value = Dtype::BF16; };
template <> struct dtype_for<std::int8_t> { static constexpr Dtype value = Dtype::I8; };
template <> struct dtype_for<std::uint8_t> { static constexpr Dtype value = Dtype::U8; };
template <> struct dtype_for<std::int16_t> { static constexpr Dtype value = Dtype::I16; };
template <> struct dtype_for<std::uint16_t> { static constexpr Dtype value = Dtype::U16; };
template <> struct dtype_for<std::int32_t> { static constexpr Dtype value = Dtype::I32; };
template <> struct dtype_for<std::uint32_t> { static constexpr Dtype value = Dtype::U32; };
template <> struct dtype_for<std::int64_t> { static constexpr Dtype value = Dtype::I64; };
template <> struct dtype_for<std::uint64_t> { static constexpr Dtype value = Dtype::U64; };
template <> struct dtype_for<bool> { static constexpr Dtype value = Dtype::BOOL; };
template <class T>
inline constexpr Dtype dtype_for_v = dtype_for<T>::value;

inline std::string shape_text(const std::vector<std::uint64_t>& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<std::uint64_t> shape;
  std::uint64_t begin = 0, end = 0;  // byte offsets in the data
  std::uint64_t numel() const {
    std::uint64_t n = 1;
    for (std::uint64_t d : shape) n *= d;
    return n;
  }
  std::uint64_t bytes() const { return end - begin; }
};

struct Header {
  std::vector<TensorInfo> tensors;  // in offset order
  std::vector<std::pair<std::string, std::string>> metadata;

  const TensorInfo* find(std::string_view name) const {
    for (const TensorInfo& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
  const std::string* meta(std::string_view key) const {
    for (const auto& [k, v] : metadata)
      if (k == key) return &v;
    return nullptr;
  }
};

// The largest header accepted (the reference implementation's limit).
inline constexpr std::uint64_t kMaxHeaderBytes = std::uint64_t(100) << 20;

// Parses and checks a header against `data_bytes` of data; `file` names the
// file in errors.
inline Header parse_header(std::string_view text, std::uint64_t data_bytes, std::string_view file) {
  json::Value j;
  try {
    if (text.empty() || text[0] != '{') throw_error<json::Error>("the header does not start with '{'");
    j = json::parse(text);
  } catch (const json::Error& e) {
    throw_error<IoError>(file, ": safetensors header: ", e.what());
  }
  if (!j.is_object()) throw_error<IoError>(file, ": safetensors header: not a JSON object");
  Header h;
  for (const auto& member : j.members()) {
    const std::string& name = member.first;
    const json::Value& v = member.second;
    if (name == "__metadata__") {
      if (!v.is_object()) throw_error<IoError>(file, ": safetensors header: __metadata__ is ", json::Value::kind_name(v.kind()), ", not an object");
      for (const auto& [k, s] : v.members()) {
        if (!s.is_string())
          throw_error<IoError>(file, ": safetensors header: __metadata__ value \"", k, "\" is ", json::Value::kind_name(s.kind()),
                               ", not a string");
        h.metadata.emplace_back(k, s.as_string());
      }
      continue;
    }
    auto bad = [&](auto&&... a) { throw_error<IoError>(file, ": tensor '", name, "': ", a...); };
    if (!v.is_object()) bad("its entry is ", json::Value::kind_name(v.kind()), ", not an object");
    TensorInfo t;
    t.name = name;
    const json::Value *dt = nullptr, *sh = nullptr, *off = nullptr;
    for (const auto& [k, x] : v.members()) {
      if (k == "dtype") dt = &x;
      else if (k == "shape") sh = &x;
      else if (k == "data_offsets") off = &x;
      else bad("unknown key \"", k, "\" (expected dtype, shape, data_offsets)");
    }
    if (!dt || !sh || !off) bad("missing ", !dt ? "dtype" : !sh ? "shape" : "data_offsets");
    if (!dt->is_string() || !parse_dtype(dt->as_string(), t.dtype))
      bad("unknown dtype ", dt->is_string() ? "\"" + dt->as_string() + "\"" : std::string(json::Value::kind_name(dt->kind())));
    if (!sh->is_array()) bad("shape is ", json::Value::kind_name(sh->kind()), ", not an array");
    std::uint64_t numel = 1;
    for (const json::Value& d : sh->items()) {
      if (!d.is_uint()) bad("shape holds ", json::Value::kind_name(d.kind()), ", not a non-negative integer");
      t.shape.push_back(d.as_uint());
      if (__builtin_mul_overflow(numel, d.as_uint(), &numel)) bad("shape ", shape_text(t.shape), " overflows 64 bits");
    }
    if (!off->is_array() || off->items().size() != 2 || !off->items()[0].is_uint() || !off->items()[1].is_uint())
      bad("data_offsets is not two non-negative integers [begin, end]");
    t.begin = off->items()[0].as_uint();
    t.end = off->items()[1].as_uint();
    if (t.end < t.begin) bad("data_offsets [", t.begin, ", ", t.end, "] end before they begin");
    std::uint64_t bytes = 0;
    if (__builtin_mul_overflow(numel, dtype_size(t.dtype), &bytes))
      bad("shape ", shape_text(t.shape), " of ", dtype_name(t.dtype), " overflows 64 bits of bytes");
    if (bytes != t.end - t.begin)
      bad("shape ", shape_text(t.shape), " of ", dtype_name(t.dtype), " is ", bytes, " bytes, but data_offsets [", t.begin,
          ", ", t.end, "] span ", t.end - t.begin);
    if (t.end > data_bytes)
      bad("data_offsets [", t.begin, ", ", t.end, "] run past the end of the data (", data_bytes, " bytes; truncated file?)");
    h.tensors.push_back(std::move(t));
  }
  std::stable_sort(h.tensors.begin(), h.tensors.end(),
                   [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin || (a.begin == b.begin && a.end < b.end); });
  std::uint64_t at = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : h.tensors) {
    if (t.begin < at)
      throw_error<IoError>(file, ": tensor '", t.name, "': data_offsets [", t.begin, ", ", t.end, "] overlap tensor '",
                           prev->name, "' (which ends at ", at, ")");
    if (t.begin > at)
      throw_error<IoError>(file, ": tensor '", t.name, "': data_offsets begin at ", t.begin, ", leaving a gap after ",
                           prev ? "tensor '" + prev->name + "'" : std::string("the header"), " (which ends at ", at, ")");
    at = t.end;
    prev = &t;
  }
  if (at != data_bytes)
    throw_error<IoError>(file, ": the tensors end at byte ", at, " of the data, but the file holds ", data_bytes,
                         " bytes of data (", at < data_bytes ? "trailing bytes" : "truncated", ")");
  return h;
}

// Collects tensors (borrowed, not copied) and metadata, then writes one file.
class SafetensorsWriter {
 public:
  // `crc`: the data's CRC-32 when the caller has it (else computed on write).
  void add(std::string name, Dtype dtype, std::vector<std::uint64_t> shape, const void* data,
           std::optional<std::uint32_t> crc = {}) {
    if (name == "__metadata__") throw_error<ValueError>("safetensors: a tensor may not be named __metadata__");
    for (const Item& it : items_)
      if (it.info.name == name) throw_error<ValueError>("safetensors: tensor '", name, "' added twice");
    Item it;
    it.info.name = std::move(name);
    it.info.dtype = dtype;
    it.info.shape = std::move(shape);
    it.info.begin = at_;
    at_ += it.info.numel() * dtype_size(dtype);
    it.info.end = at_;
    it.data = data;
    it.crc = crc;
    items_.push_back(std::move(it));
  }
  template <class T>
  void add(std::string name, const T* data, std::vector<std::uint64_t> shape) {
    add(std::move(name), dtype_for_v<T>, std::move(shape), data);
  }
  void metadata(std::string key, std::string value) { meta_.emplace_back(std::move(key), std::move(value)); }

  // The header text (padded so the data starts 8-byte aligned), computing
  // the checksums when asked.
  std::string header(bool checksums) const {
    json::Value m = json::Value::make_object();
    for (const auto& [k, v] : meta_) m.set(k, json::Value::make_string(v));
    if (checksums)
      for (const Item& it : items_)
        m.set("crc32:" + it.info.name, json::Value::make_string(crc32_hex(it.crc ? *it.crc : crc32(it.data, it.info.bytes()))));
    json::Value h = json::Value::make_object();
    if (!m.members().empty()) h.set("__metadata__", std::move(m));
    for (const Item& it : items_) {
      json::Value e = json::Value::make_object();
      e.set("dtype", json::Value::make_string(std::string(dtype_name(it.info.dtype))));
      json::Value s = json::Value::make_array();
      for (std::uint64_t d : it.info.shape) s.push(json::Value::make_uint(d));
      e.set("shape", std::move(s));
      json::Value o = json::Value::make_array();
      o.push(json::Value::make_uint(it.info.begin));
      o.push(json::Value::make_uint(it.info.end));
      e.set("data_offsets", std::move(o));
      h.set(it.info.name, std::move(e));
    }
    std::string text = json::write(h);
    text.append((8 - (8 + text.size()) % 8) % 8, ' ');
    return text;
  }

  // Writes the file atomically (file.hpp); returns its size in bytes.
  std::uint64_t write(const std::filesystem::path& path, bool checksums = true) const {
    const std::string text = header(checksums);
    AtomicFile f(path);
    const std::uint64_t n = text.size();
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
    f.write(len, 8);
    f.write(text.data(), text.size());
    for (const Item& it : items_) f.write(it.data, it.info.bytes());
    const std::uint64_t total = f.written();
    f.commit();
    return total;
  }

 private:
  struct Item {
    TensorInfo info;
    const void* data = nullptr;
    std::optional<std::uint32_t> crc;
  };
  std::vector<Item> items_;
  std::vector<std::pair<std::string, std::string>> meta_;
  std::uint64_t at_ = 0;
};

// Opens a file and checks its whole header; reads tensors on demand and
// checks each against its stored checksum.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::filesystem::path& path) : file_(std::make_unique<ReadFile>(path)) {
    const std::string name = path.string();
    if (file_->size() < 8)
      throw_error<IoError>(name, ": ", file_->size(), " bytes, too short for a safetensors file (8-byte header length; truncated?)");
    unsigned char len[8];
    file_->read(len, 8, 0, "the header length");
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
    if (n > kMaxHeaderBytes) throw_error<IoError>(name, ": header length ", n, " is over the ", kMaxHeaderBytes, "-byte limit (not a safetensors file?)");
    if (n > file_->size() - 8)
      throw_error<IoError>(name, ": header length ", n, " runs past the end of the file (", file_->size(), " bytes; truncated?)");
    std::string text(static_cast<std::size_t>(n), '\0');
    file_->read(text.data(), text.size(), 8, "the header");
    data_at_ = 8 + n;
    header_ = parse_header(text, file_->size() - data_at_, name);
  }

  const Header& header() const { return header_; }
  const std::filesystem::path& path() const { return file_->path(); }
  std::uint64_t file_bytes() const { return file_->size(); }

  const TensorInfo& info(std::string_view tensor) const {
    const TensorInfo* t = header_.find(tensor);
    if (!t) throw_error<IoError>(path().string(), ": tensor '", tensor, "': not in the file");
    return *t;
  }

  // The tensor's bytes into dst (exactly its size), checked against its
  // checksum when the file has one (or throws when `require_checksum`).
  void read(std::string_view tensor, void* dst, std::size_t bytes, bool require_checksum = false) const {
    const TensorInfo& t = info(tensor);
    if (bytes != t.bytes())
      throw_error<IoError>(path().string(), ": tensor '", tensor, "': holds ", t.bytes(), " bytes, the caller expects ", bytes);
    file_->read(dst, bytes, data_at_ + t.begin, "tensor '" + t.name + "'");
    const std::string* want = header_.meta("crc32:" + t.name);
    if (!want) {
      if (require_checksum) throw_error<IoError>(path().string(), ": tensor '", tensor, "': no checksum (crc32:", tensor, ") in __metadata__");
      return;
    }
    const std::string got = crc32_hex(crc32(dst, bytes));
    if (got != *want)
      throw_error<IoError>(path().string(), ": tensor '", tensor, "': checksum mismatch (stored crc32 ", *want, ", data has ", got,
                           "): the file is corrupt");
  }

  std::vector<unsigned char> read(std::string_view tensor, bool require_checksum = false) const {
    std::vector<unsigned char> out(static_cast<std::size_t>(info(tensor).bytes()));
    read(tensor, out.data(), out.size(), require_checksum);
    return out;
  }

 private:
  std::unique_ptr<ReadFile> file_;
  std::uint64_t data_at_ = 0;
  Header header_;
};

}  // namespace weft::io::checkpoint
