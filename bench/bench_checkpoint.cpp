// Checkpoint save and load speed (bench/compare_checkpoint.sh runs it beside
// dd and Python's safetensors): a model of MIB MiB in 16 MiB f32 tensors,
// saved by one rank with io::checkpoint::save (CRC-32, fsync, rename) and
// loaded back into the same tensors (checksums checked; the file is usually
// still in the page cache, so load measures CRC + copy, not the disk).
//   bench_checkpoint MIB DIR    prints bytes:, save_s:, save_GBps:, load_s:, load_GBps:
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>
#include <weft/io/checkpoint/checkpoint.hpp>
#include <weft/weft.hpp>

namespace ck = weft::io::checkpoint;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: bench_checkpoint MIB DIR\n");
    return 2;
  }
  const long mib = std::atol(argv[1]);
  const std::filesystem::path dir = argv[2];
  constexpr weft::index_t kElems = (16 << 20) / sizeof(float);  // 16 MiB per tensor
  const long n = std::max(1L, mib / 16);
  std::vector<weft::Tensor<float>> ts;
  for (long i = 0; i < n; ++i) {
    ts.emplace_back(weft::Shape{kElems});
    float* p = ts.back().data();
    for (weft::index_t j = 0; j < kElems; ++j) p[j] = static_cast<float>((j * 2654435761u + static_cast<unsigned>(i)) % 1000003u) * 1e-3f;
  }
  std::vector<std::string> names;
  for (long i = 0; i < n; ++i) names.push_back(std::string("w").append(std::to_string(i)));
  auto state = [&](auto& v) {
    for (std::size_t i = 0; i < names.size(); ++i) v(std::string_view(names[i]), ts[i].view());
  };
  const double bytes = static_cast<double>(n) * static_cast<double>(kElems) * sizeof(float);
  using clock = std::chrono::steady_clock;
  std::filesystem::remove_all(dir);
  auto t0 = clock::now();
  ck::save(dir, state, {.step = 1});
  const double save_s = std::chrono::duration<double>(clock::now() - t0).count();
  t0 = clock::now();
  ck::load(dir, state);
  const double load_s = std::chrono::duration<double>(clock::now() - t0).count();
  std::printf("bytes: %.0f\nsave_s: %.3f\nsave_GBps: %.3f\nload_s: %.3f\nload_GBps: %.3f\n", bytes, save_s, bytes / save_s / 1e9, load_s,
              bytes / load_s / 1e9);
  return 0;
}
