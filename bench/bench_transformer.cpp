// One training step (forward, backward, AdamW) of a pre-LN transformer block
// stack, one thread: the weft side of bench/compare_transformer.sh.
//   bench_transformer [steps = 20]   time `steps` steps, print the median
//   bench_transformer --serve        answer "steps K" lines on stdin with
//                                    "ms t1 .. tK loss" (transformer_peers.py
//                                    interleaves it with its peers); "quit" ends;
//                                    "roofline" answers "roofline FLOPS MEDIAN BEST"
//   bench_transformer --roofline     print the roofline lines alone
// The roofline: FLOPS, the matrix products one step needs at the least
// (forward and backward, causal attention counted over its lower triangle,
// no recomputation), and one core's fused multiply-add rate measured here
// (12 independent chains of vector FMAs, the widest the build targets), the
// median and the best of 9 runs. FLOPS / BEST is the step's time if every
// product ran at the best FMA rate and nothing else took any time: no
// implementation on this core is faster.
// Model and initial values: see bench/transformer_peers.py (the same formula).
#include <algorithm>
#include <chrono>
#if defined(__AVX512F__) || defined(__FMA__)
#include <immintrin.h>
#endif
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <utility>
#include <vector>
#include <weft/nn/nn.hpp>
#include <weft/nn/transformer.hpp>
#include <weft/weft.hpp>

using namespace weft;

namespace {

constexpr index_t B = 32, T = 64, C = 128, H = 4;

bool ends_with(const std::string& s, const char* suffix) {
  const std::size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

// The initial value formula of transformer_peers.py, parameter p in registration order.
void init_like_peers(nn::Registry<float>& reg) {
  for (std::size_t p = 0; p < reg.size(); ++p) {
    Parameter<float>& w = reg[p];
    const std::string& name = w.name;
    const bool ln = name.find(".ln") != std::string::npos || name.rfind("ln", 0) == 0;
    float* v = w.value.data();
    for (index_t i = 0; i < w.numel(); ++i) {
      const double di = static_cast<double>(i);
      if (ln)
        v[i] = ends_with(name, "weight") ? 1.0f : 0.0f;
      else if (ends_with(name, "weight"))
        v[i] = static_cast<float>(std::sin(0.37 * di + 1.1 * static_cast<double>(p)) /
                                  std::sqrt(static_cast<double>(w.shape()[0])));
      else
        v[i] = static_cast<float>(0.01 * std::sin(0.11 * di + static_cast<double>(p)));
    }
  }
}

// Matrix-product FLOPs of one step, the least any implementation needs:
// per block, four (N x C) by (C x k) products forward (qkv 3C, proj C, fc1 4C,
// fc2 from 4C back to C: 12 N C^2 multiply-adds), twice that backward (the
// input's and the weight's gradients), and attention's six T x T x D products
// (QK^T and PV forward; dV, dP, dQ, dK backward) over the causal triangle.
double step_flops(int blocks) {
  const double n = double(B) * double(T), c = double(C), d = double(C / H);
  const double dense = 3 * 2 * n * 12 * c * c;
  const double attention = 6 * 2 * double(B) * double(H) * d * (double(T) * double(T + 1) / 2);
  return blocks * (dense + attention);
}

// One core's fused multiply-add rate in FLOP/s over 9 runs of ~10 ms:
// {median, best}. The best is the highest rate seen (turbo included), so the
// floor it gives is the lowest.
std::pair<double, double> fma_peak() {
#if defined(__AVX512F__)
  using V = __m512;
  constexpr int lanes = 16;
  auto fma = [](V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); };
  auto set = [](float x) { return _mm512_set1_ps(x); };
  auto store = [](float* o, V v) { _mm512_storeu_ps(o, v); };
#elif defined(__FMA__)
  using V = __m256;
  constexpr int lanes = 8;
  auto fma = [](V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); };
  auto set = [](float x) { return _mm256_set1_ps(x); };
  auto store = [](float* o, V v) { _mm256_storeu_ps(o, v); };
#else
  using V = float;
  constexpr int lanes = 1;
  auto fma = [](V a, V b, V c) { return a * b + c; };
  auto set = [](float x) { return x; };
  auto store = [](float* o, V v) { *o = v; };
#endif
  auto sum = [&](V v) {
    float o[lanes];
    store(o, v);
    float t = 0;
    for (float x : o) t += x;
    return t;
  };
  constexpr int chains = 12;
  constexpr long iters = 1 << 22;
  std::vector<double> rates;
  volatile float sink = 0;
  for (int run = 0; run < 9; ++run) {
    V acc[chains];
    for (int i = 0; i < chains; ++i) acc[i] = set(float(i));
    const V mul = set(sink + 0.999999f), add = set(sink + 1e-7f);
    const auto t0 = std::chrono::steady_clock::now();
    for (long k = 0; k < iters; ++k)
      for (int i = 0; i < chains; ++i) acc[i] = fma(acc[i], mul, add);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    float total = 0;
    for (int i = 0; i < chains; ++i) total += sum(acc[i]);
    sink = total;
    rates.push_back(2.0 * lanes * chains * double(iters) / s);
  }
  std::sort(rates.begin(), rates.end());
  return {rates[rates.size() / 2], rates.back()};
}

}  // namespace

int main(int argc, char** argv) {
  openblas_set_num_threads(1);
  const bool serve = argc > 1 && std::strcmp(argv[1], "--serve") == 0;
  if (argc > 1 && std::strcmp(argv[1], "--roofline") == 0) {
    const double f = step_flops(2);
    const auto [median, best] = fma_peak();
    std::printf("step_matmul_gflop: %.3f\ncore_fma_gflops: %.1f median, %.1f best\nstep_floor_ms: %.2f\n", f / 1e9,
                median / 1e9, best / 1e9, 1e3 * f / best);
    return 0;
  }
  const int steps = !serve && argc > 1 ? std::atoi(argv[1]) : 20;

  const nn::BlockConfig cfg{.dim = C, .heads = H, .mlp = 4 * C, .causal = true};
  nn::TransformerBlock<float> b1(cfg, 1), b2(cfg, 2);
  nn::Registry<float> reg;
  reg.add("block1", b1).add("block2", b2);
  init_like_peers(reg);
  nn::AdamW<float> opt(reg, {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f});

  Tensor<float> x({B, T, C}), y({B, T, C});
  for (index_t i = 0; i < x.numel(); ++i) {
    x.data()[i] = static_cast<float>(std::sin(0.013 * static_cast<double>(i)));
    y.data()[i] = static_cast<float>(std::cos(0.017 * static_cast<double>(i)));
  }
  Workspace<> ws;
  auto step = [&] {
    opt.zero_grad();
    const float loss = backward(mean(square(b2(b1(x)) - y)), ws).item();
    opt.step();
    return loss;
  };
  auto now = [] { return std::chrono::steady_clock::now(); };

  if (serve) {
    std::string cmd;
    int k = 0;
    while (std::cin >> cmd) {
      if (cmd == "quit") break;
      if (cmd == "roofline") {
        const auto [median, best] = fma_peak();
        std::printf("roofline %.9g %.9g %.9g\n", step_flops(2), median, best);
        std::fflush(stdout);
        continue;
      }
      if (cmd != "steps" || !(std::cin >> k) || k <= 0) {
        std::fprintf(stderr, "bench_transformer --serve: expected 'steps K' or 'quit', got '%s'\n", cmd.c_str());
        return 2;
      }
      std::string line = "ms";
      float loss = 0;
      for (int i = 0; i < k; ++i) {
        const auto t0 = now();
        loss = step();
        char buf[32];
        std::snprintf(buf, sizeof buf, " %.4f", std::chrono::duration<double, std::milli>(now() - t0).count());
        line += buf;
      }
      std::printf("%s %.9g\n", line.c_str(), double(loss));
      std::fflush(stdout);
    }
    return 0;
  }
  std::printf("config: B=%ld T=%ld C=%ld heads=%ld blocks=2 MLP=%ld causal, float32, AdamW, one thread; %ld parameters\n",
              long(B), long(T), long(C), long(H), long(4 * C), long(reg.numel()));
  std::vector<double> ts;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = now();
    const float loss = step();
    ts.push_back(std::chrono::duration<double, std::milli>(now() - t0).count());
    if (i < 3) std::printf("step %d loss %.6f\n", i + 1, double(loss));
  }
  std::sort(ts.begin(), ts.end());
  std::printf("weft_step_ms: %.3f (min %.3f)\n", ts[ts.size() / 2], ts[0]);
  return 0;
}
