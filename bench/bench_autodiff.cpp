// Value and gradient of f(x, y) = sum(tanh(x*y + sin(x)) * exp(-y*y)) for
// n = 2^24 floats on one thread: the fused forward+backward pass reads x, y and
// writes dx, dy (16n bytes). Prints ms and effective GB/s, and this machine's
// memcpy bandwidth measured in the same run, for the fraction of it reached.
//   usage: bench_autodiff [log2 n = 24] [repeats = 10]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>
#include <weft/weft.hpp>

using clk = std::chrono::steady_clock;

static double seconds_since(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }

int main(int argc, char** argv) {
  const int log2n = argc > 1 ? std::atoi(argv[1]) : 24;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 10;
  const weft::index_t n = weft::index_t(1) << log2n;

  weft::Tensor<float> x({n}), y({n}), gx({n}), gy({n});
  std::mt19937 rng(42);
  std::normal_distribution<float> nd;
  for (weft::index_t i = 0; i < n; ++i) {
    x.data()[i] = nd(rng);
    y.data()[i] = nd(rng);
  }
  auto f = [](auto a, auto b) { return sum(tanh(a * b + sin(a)) * exp(-b * b)); };

  weft::Workspace<> ws;
  weft::TensorView<float> grads[2] = {gx.view(), gy.view()};
  weft::NoHook hook;
  float value = 0;
  std::vector<double> times;
  for (int r = 0; r < reps + 2; ++r) {
    auto t0 = clk::now();
    value = weft::value_and_grad_into(f, ws, grads, hook, x, y).item();
    if (r >= 2) times.push_back(seconds_since(t0));
  }
  std::sort(times.begin(), times.end());
  const double t_med = times[times.size() / 2], t_min = times.front();
  const double bytes = 16.0 * static_cast<double>(n);

  // memcpy of the same traffic: copy 8n bytes (8n read + 8n written).
  std::vector<char> src(static_cast<std::size_t>(8 * n), 1), dst(static_cast<std::size_t>(8 * n), 0);
  std::vector<double> mt;
  for (int r = 0; r < reps + 2; ++r) {
    auto t0 = clk::now();
    std::memcpy(dst.data(), src.data(), src.size());
    if (r >= 2) mt.push_back(seconds_since(t0));
    src[static_cast<std::size_t>(r)] ^= dst[static_cast<std::size_t>(r) + 1];  // keep the copies observable
  }
  std::sort(mt.begin(), mt.end());
  const double memcpy_gbs = bytes / mt[mt.size() / 2] / 1e9;  // read + write traffic per second

  std::printf("weft value_and_grad  n=2^%d  value=%.6g  gx[0]=%.6g  gy[0]=%.6g\n", log2n, value, gx.data()[0], gy.data()[0]);
  std::printf("weft_ms: %.3f  (min %.3f)\n", t_med * 1e3, t_min * 1e3);
  std::printf("weft_effective_GBps: %.2f  (16n bytes / median time)\n", bytes / t_med / 1e9);
  std::printf("memcpy_GBps: %.2f  (read+write traffic; %.2f GB/s copied)\n", memcpy_gbs, memcpy_gbs / 2);
  std::printf("fraction_of_memcpy: %.3f\n", bytes / t_med / 1e9 / memcpy_gbs);
  return 0;
}
