// The CUDA kernels nvcc generates from weft's expression types, compared with
// the CPU evaluation of the same expressions: assign and value_and_grad are
// the host's functions given a CUDA executor. Without a GPU: exit 77 (skipped).
#include "check.hpp"
#include <cmath>
#include <cstdio>
#include <random>
#include <weft/kernels/cuda/kernels.cuh>
#include <weft/weft.hpp>

using namespace weft;

using cudatest::checks;
using cudatest::failures;

template <class T>
static double max_diff(const Tensor<T>& a, const Tensor<T>& b) {
  double m = 0;
  for (index_t i = 0; i < a.numel(); ++i) m = std::fmax(m, std::fabs(double(a.data()[i]) - double(b.data()[i])));
  return m;
}

// A rank-0 device view's value on the host, after the stream's work.
static float to_host_value(TensorView<float, weft::cuda> v, cudaStream_t stream) {
  float h = 0;
  cudaMemcpyAsync(&h, v.data, sizeof(float), cudaMemcpyDeviceToHost, stream);
  cudaStreamSynchronize(stream);
  return h;
}

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  const index_t n = 1 << 20;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  Tensor<float> x({n}), y({n}), bias({4, 1});
  for (index_t i = 0; i < n; ++i) {
    x.data()[i] = nd(rng);
    y.data()[i] = nd(rng);
  }
  for (index_t i = 0; i < 4; ++i) bias.data()[i] = nd(rng);
  auto dx = to_device(x), dy = to_device(y), db = to_device(bias);
  Workspace<weft::cuda> ws;
  cudaStream_t stream;
  cudaStreamCreate(&stream);
  Exec<weft::cuda> ex(ws, stream);

  // A non-trivial fused expression (views as arguments: a generic lambda taking
  // tensors by value would build its expression on copies).
  auto f = [](auto a, auto b) { return tanh(a * b + sin(a)) * exp(-b * b); };
  Tensor<float> cpu_val = eval(f(x.view(), y.view()));
  Tensor<float, weft::cuda> dout(Shape{n});
  assign(dout.view(), f(dx.view(), dy.view()), ex);
  cudaStreamSynchronize(stream);
  double d = max_diff(to_host(dout), cpu_val);
  EXPECT(d < 1e-5, "evaluate: max |gpu - cpu| = %g", d);

  // Broadcasting and a strided destination: (4, n/4) + (4, 1).
  auto x2 = x.reshape({4, n / 4});
  Tensor<float> cpu_b = eval(x2 * 2.0f + bias);
  Tensor<float, weft::cuda> dout2(Shape{4, n / 4});
  assign(dout2.view(), dx.reshape({4, n / 4}) * 2.0f + db, ex);
  cudaStreamSynchronize(stream);
  d = max_diff(to_host(dout2), cpu_b);
  EXPECT(d < 1e-6, "broadcast evaluate: max |gpu - cpu| = %g", d);

  // The fused gradient kernel: the same value_and_grad, on device tensors.
  auto loss = [](auto a, auto b) { return sum(tanh(a * b + sin(a)) * exp(-b * b)); };
  auto [v, gx, gy] = value_and_grad(loss, x, y);
  auto [dv, dgx_t, dgy_t] = value_and_grad(loss, dx, dy);
  const float gv = to_host(dv).item();
  EXPECT(std::fabs(gv - v.item()) < 1e-3 * (1 + std::fabs(v.item())), "value: gpu %g vs cpu %g", gv, v.item());
  double dgx = max_diff(to_host(dgx_t), gx), dgy = max_diff(to_host(dgy_t), gy);
  EXPECT(dgx < 1e-5, "d/dx: max |gpu - cpu| = %g", dgx);
  EXPECT(dgy < 1e-5, "d/dy: max |gpu - cpu| = %g", dgy);
  // Deterministic: the same bits twice, here through value_and_grad_into on
  // the executor's stream with preallocated gradients.
  Tensor<float, weft::cuda> g0(Shape{n}), g1(Shape{n});
  TensorView<float, weft::cuda> gviews[2] = {g0.view(), g1.view()};
  NoHook hook;
  const float gv2 = to_host_value(value_and_grad_into(loss, ex, gviews, hook, dx, dy), stream);
  EXPECT(gv2 == gv, "value not reproducible: %.9g vs %.9g", gv2, gv);
  EXPECT(max_diff(to_host(g0), gx) < 1e-5, "d/dx through value_and_grad_into differs from the cpu");

  // A device parameter: backward with the CUDA executor accumulates into its
  // own gradient, as the host's does.
  Parameter<float> wc("w", Shape{n});
  wc.value = x;
  Workspace<> host_ws;
  backward(sum(tanh(param(wc) * y)), host_ws);
  Parameter<float, weft::cuda> wd("w", Shape{n});
  wd.value = dx;
  kernels::fill(ex, wd.grad.view(), 0.0f);
  int hooks = 0;
  backward(sum(tanh(param(wd) * dy)), ex, [&](Parameter<float, weft::cuda>&) { ++hooks; });
  cudaStreamSynchronize(stream);
  double dgw = max_diff(to_host(wd.grad), wc.grad);
  EXPECT(dgw < 1e-5, "parameter gradient: max |gpu - cpu| = %g", dgw);
  EXPECT(hooks == 1, "parameter hook fired %d times, not once", hooks);
  cudaStreamDestroy(stream);

  std::printf("%s (%d failures)\n", failures ? "FAILED" : "passed", failures.load());
  return failures ? 1 : 0;
}
