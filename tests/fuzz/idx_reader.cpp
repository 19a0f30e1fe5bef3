// libFuzzer target for io::read_idx: any bytes, plain or gzip-framed, must end
// in a tensor or in weft::IoError naming the file; never a crash, a hang, an
// unbounded allocation or another exception type. Built and run for a bounded
// time by tests/fuzz/run.sh (clang's -fsanitize=fuzzer,address,undefined).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <weft/io/idx.hpp>

#include "scratch.hpp"

namespace {

// One file per fuzzing process, rewritten for every input.
const std::string& scratch_path() {
  static const std::string path = fuzz::scratch_name("weft_fuzz_idx") + ".idx";
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string& path = scratch_path();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  try {
    const auto t = weft::io::read_idx(path);
    // A tensor is returned only when the whole payload was there.
    std::size_t n = 1;
    for (int d = 0; d < t.rank(); ++d) n *= static_cast<std::size_t>(t.size(d));
    if (n != static_cast<std::size_t>(t.numel())) std::abort();
  } catch (const weft::IoError& e) {
    if (std::string(e.what()).find(path) == std::string::npos) std::abort();  // the error names the file
  }
  return 0;
}
