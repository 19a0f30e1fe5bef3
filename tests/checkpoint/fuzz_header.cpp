// libFuzzer target for the safetensors header parser and reader
// (io/checkpoint/safetensors.hpp) and a checkpoint's checkpoint.json
// (io/checkpoint/checkpoint.hpp): the input is a header's JSON text, framed
// as a file (its length, the text, 64 bytes of data), and the same text as
// checkpoint.json of a directory holding that file. Any input must end in a
// parsed header whose tensors read back, a load, or weft::IoError naming the
// file; never a crash, a hang, an out-of-bounds read or another exception.
// Built and run for a bounded time by tests/fuzz/run.sh (ASan + UBSan).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include <filesystem>
#include <weft/io/checkpoint/checkpoint.hpp>
#include <weft/io/checkpoint/safetensors.hpp>

#include "../fuzz/scratch.hpp"

namespace {

const std::string& scratch_path() {
  static const std::string path = fuzz::scratch_name("weft_fuzz_st") + ".safetensors";
  return path;
}

// A checkpoint directory whose rank-00000.safetensors is a valid one-tensor file.
const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    std::filesystem::path p = fuzz::scratch_name("weft_fuzz_ck");
    std::filesystem::create_directories(p);
    static const float w[4] = {1, 2, 3, 4};
    weft::io::checkpoint::SafetensorsWriter wr;
    wr.add("w", w, {4});
    wr.write(p / weft::io::checkpoint::rank_file_name(0));
    return p;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace ck = weft::io::checkpoint;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const ck::Header h = ck::parse_header(text, 64, "fuzz");
    for (const ck::TensorInfo& t : h.tensors)
      if (t.end > 64 || t.begin > t.end) std::abort();  // the checks let a bad offset through
  } catch (const weft::IoError&) {
  }
  const std::string& path = scratch_path();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(std::uint64_t(size) >> (8 * i));
  std::fwrite(len, 1, 8, f);
  std::fwrite(data, 1, size, f);
  static const unsigned char zeros[64] = {};
  std::fwrite(zeros, 1, sizeof zeros, f);
  std::fclose(f);
  try {
    ck::SafetensorsReader r(path);
    for (const ck::TensorInfo& t : r.header().tensors) (void)r.read(t.name);
  } catch (const weft::IoError&) {
  }
  // The same text as checkpoint.json; a model with one tensor "w" of 4 floats.
  const std::filesystem::path& dir = scratch_dir();
  f = std::fopen((dir / "checkpoint.json").c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  float w[4] = {};
  auto state = [&](auto& v) { v(std::string_view("w"), weft::TensorView<float>(w, weft::Shape{4})); };
  try {
    ck::load(dir, state, {.strict = false});
  } catch (const weft::IoError&) {
  } catch (const weft::ValueError&) {
  }
  return 0;
}
