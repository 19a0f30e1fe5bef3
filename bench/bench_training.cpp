// Training-step throughput of the Fashion-MNIST MLP (784-256-256-10, ReLU,
// cross-entropy, Adam lr 1e-3) on one thread, at batch 128 and 512, with the
// fraction of this machine's single-thread OpenBLAS sgemm peak (measured in the
// same run) that a step reaches.
//   usage: bench_training [seconds per batch size = 3]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <weft/nn/nn.hpp>
#include <weft/weft.hpp>

#include "mlp.hpp"

using namespace weft;
using clk = std::chrono::steady_clock;

static double since(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }

// Single-thread sgemm GFLOP/s on large square matrices: the machine's limit.
static double sgemm_peak() {
  const index_t n = 1024;
  Tensor<float> a({n, n}, 0.5f), b({n, n}, 0.25f), c({n, n});
  double best = 0;
  for (int r = 0; r < 5; ++r) {
    auto t0 = clk::now();
    kernels::cpu::gemm(a.view(), b.view(), c.view(), 1.0f, 0.0f);
    best = std::max(best, 2.0 * n * n * n / since(t0) / 1e9);
  }
  return best;
}

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? std::atof(argv[1]) : 3.0;
  openblas_set_num_threads(1);
  const double peak = sgemm_peak();
  std::printf("sgemm_peak_GFLOPs: %.1f  (1024^3, one thread, OpenBLAS %s kernels)\n", peak, openblas_get_corename());

  const benchmlp::RandomData data(8192, nn::Rng(7));
  for (index_t batch : {index_t(128), index_t(512)}) {
    benchmlp::Mlp m;
    nn::Adam<float> opt(m.params, {.lr = 1e-3f});
    benchmlp::Batches b(data, batch);
    Workspace<> ws;
    auto step = [&] {
      b.next();
      opt.zero_grad();
      float l = backward(m.loss(b.x, b.y), ws).item();
      opt.step();
      return l;
    };
    for (int w = 0; w < 10; ++w) step();
    long steps = 0;
    float last = 0;
    auto t0 = clk::now();
    while (since(t0) < seconds) {
      last = step();
      ++steps;
    }
    const double t = since(t0);
    // FLOPs per step: forward x@W per layer, backward dW per layer, dX for layers 2 and 3.
    const double fwd = 2.0 * batch * (784 * 256 + 256 * 256 + 256 * 10);
    const double flops = 2 * fwd + 2.0 * batch * (256 * 256 + 256 * 10);
    const double sps = static_cast<double>(steps * batch) / t;
    std::printf("weft batch %lld: %.0f samples/s  (%.3f ms/step, loss %.3f)  %.1f GFLOP/s = %.2f of sgemm peak\n",
                static_cast<long long>(batch), sps, 1e3 * t / static_cast<double>(steps), static_cast<double>(last),
                flops * static_cast<double>(steps) / t / 1e9, flops * static_cast<double>(steps) / t / 1e9 / peak);
    std::printf("weft_samples_per_s_batch%lld: %.0f\n", static_cast<long long>(batch), sps);
  }
  return 0;
}
