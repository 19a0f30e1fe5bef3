// Fused attention, forward + backward, one thread: time per call and the
// scratch memory of one pass against the materialised composition
// softmax(q k^T s) v written with matmul and softmax nodes (which keeps the
// (T, T) matrices of every head for backward).
//   usage: bench_attention [reps = 5] [T ...]   (default T = 256 1024 4096; B = 1, H = 4, D = 64)
// Prints per T:  weft_attention T=<T> causal=<c> ms: <median> (min <min>) loss: <value>
// and            memory T=<T> fused_extra_bytes: F materialised_extra_bytes: M
// "extra" = the workspace bytes of one value_and_grad pass minus the output
// and the three gradients it holds (inputs live outside it).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
#include <weft/expr/attention.hpp>
#include <weft/expr/matmul.hpp>
#include <weft/weft.hpp>

using namespace weft;

namespace {

Tensor<float> randn(const Shape& s, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Tensor<float> t(s);
  for (index_t i = 0; i < t.numel(); ++i) t.data()[i] = nd(rng);
  return t;
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 5;
  std::vector<index_t> ts;
  for (int i = 2; i < argc; ++i) ts.push_back(std::atol(argv[i]));
  if (ts.empty()) ts = {256, 1024, 4096};
  const index_t B = 1, H = 4, D = 64;
  std::printf("config: B=%ld H=%ld D=%ld float32, one thread, loss = sum(attention(q, k, v) * w)\n", long(B), long(H), long(D));
  for (index_t T : ts) {
    // Inputs (B, H, T, D) from seeded normals; the bench's peers read the same
    // sizes (their own random values: losses are compared at the test's sizes).
    auto q = randn({B, H, T, D}, 1), k = randn({B, H, T, D}, 2), v = randn({B, H, T, D}, 3), w = randn({B, H, T, D}, 4);
    Tensor<float> gq({B, H, T, D}), gk({B, H, T, D}), gv({B, H, T, D});
    TensorView<float> grads[3] = {gq.view(), gk.view(), gv.view()};
    NoHook hook;
    const std::size_t io = static_cast<std::size_t>(4 * B * H * T * D) * sizeof(float);
    std::size_t fused_extra = 0;
    for (bool causal : {false, true}) {
      Workspace<> ws;
      auto f = [&](auto a, auto b, auto c) {
        return sum(scaled_dot_product_attention(a, b, c, {.causal = causal}) * w);
      };
      std::vector<double> times;
      float loss = 0;
      for (int r = 0; r < reps + 1; ++r) {
        const double t0 = now_ms();
        loss = value_and_grad_into(f, ws, grads, hook, q, k, v).data[0];
        if (r > 0) times.push_back(now_ms() - t0);  // the first call warms the workspace
      }
      if (!causal) fused_extra = ws.used() - io;
      std::sort(times.begin(), times.end());
      std::printf("weft_attention T=%ld causal=%d ms: %.3f (min %.3f) loss: %.6g\n", long(T), int(causal),
                  times[times.size() / 2], times[0], double(loss));
    }
    // The materialised composition, head by head with 2-D matmuls (all four
    // heads' matrices alive at once, as one batched expression would keep them).
    {
      std::vector<Tensor<float>> hq, hk, hv, hw, hg;
      for (index_t h = 0; h < H; ++h) {
        hq.push_back(randn({T, D}, 10 + unsigned(h)));
        hk.push_back(randn({T, D}, 20 + unsigned(h)));
        hv.push_back(randn({T, D}, 30 + unsigned(h)));
        hw.push_back(randn({T, D}, 40 + unsigned(h)));
      }
      for (int i = 0; i < 3 * H; ++i) hg.emplace_back(Shape{T, D});
      std::vector<TensorView<float>> gv2;
      for (auto& g : hg) gv2.push_back(g.view());
      const float s = 1.0f / std::sqrt(float(D));
      auto head = [&](auto a, auto b, auto c, const Tensor<float>& ww) {
        return sum(matmul(softmax(matmul(a, transpose(b)) * s), c) * ww);
      };
      auto f = [&](auto q0, auto k0, auto v0, auto q1, auto k1, auto v1, auto q2, auto k2, auto v2, auto q3, auto k3, auto v3) {
        return head(q0, k0, v0, hw[0]) + head(q1, k1, v1, hw[1]) + head(q2, k2, v2, hw[2]) + head(q3, k3, v3, hw[3]);
      };
      Workspace<> ws;
      const double t0 = now_ms();
      value_and_grad_into(f, ws, gv2.data(), hook, hq[0], hk[0], hv[0], hq[1], hk[1], hv[1], hq[2], hk[2], hv[2], hq[3], hk[3],
                          hv[3]);
      const double ms = now_ms() - t0;
      const std::size_t mat_extra = ws.used() > io ? ws.used() - io : 0;
      std::printf("materialised T=%ld causal=0 ms: %.3f (one cold call)\n", long(T), ms);
      std::printf("memory T=%ld fused_extra_bytes: %zu materialised_extra_bytes: %zu ratio: %.6f\n", long(T), fused_extra,
                  mat_extra, double(fused_extra) / double(mat_extra));
    }
  }
  return 0;
}
