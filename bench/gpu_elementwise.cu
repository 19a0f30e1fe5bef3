// GPU: how close weft's generated elementwise kernels come to the device's
// memory bandwidth, measured against a device-to-device copy in the same run.
//   value        dst = tanh(a b + sin a) exp(-b^2)          reads 2n, writes n
//   value+grad   sum of the above, with d/da and d/db in one fused kernel:
//                reads 2n, writes 2n (the gradients), plus per-block partials
//   copy         cudaMemcpyAsync device to device of 2n floats: reads 2n, writes 2n
// GB/s counts bytes read plus bytes written, as nccl-tests and PyTorch's
// bandwidth tests do. Prints
//   gpu_elementwise_value_vs_copy: R       (value GB/s / copy GB/s)
//   gpu_elementwise_grad_vs_copy: R        (value+grad GB/s / copy GB/s; issue 20's target >= 0.8)
// usage: gpu_elementwise [n (default 2^26)] [repeats (default 20)]
// Without a GPU it prints why and exits 77.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <weft/kernels/cuda/kernels.cuh>
#include <weft/weft.hpp>

#include "gpu_timing.hpp"

using namespace weft;


int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  const index_t n = argc > 1 ? std::atol(argv[1]) : index_t(1) << 26;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 20;
  cudaDeviceProp prop{};
  cuda_check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::printf("device: %s, %d SMs; n = %lld floats per operand, %d repeats, medians\n", prop.name, prop.multiProcessorCount,
              static_cast<long long>(n), repeats);

  Tensor<float> hx({n}), hy({n});
  for (index_t i = 0; i < n; ++i) {
    hx.data()[i] = static_cast<float>((i * 7919) % 1000) * 1e-3f - 0.5f;
    hy.data()[i] = static_cast<float>((i * 104729) % 1000) * 1e-3f - 0.5f;
  }
  auto dx = to_device(hx), dy = to_device(hy);
  Tensor<float, weft::cuda> out(Shape{n}), gx(Shape{n}), gy(Shape{n}), copy_dst(Shape{2 * n}), copy_src(Shape{2 * n});
  Workspace<weft::cuda> ws;
  cudaStream_t stream;
  cuda_check(cudaStreamCreate(&stream), "cudaStreamCreate");
  Exec<weft::cuda> ex(ws, stream);

  auto f = [](auto a, auto b) { return tanh(a * b + sin(a)) * exp(-b * b); };
  auto loss = [](auto a, auto b) { return sum(tanh(a * b + sin(a)) * exp(-b * b)); };
  TensorView<float, weft::cuda> grads[2] = {gx.view(), gy.view()};
  NoHook hook;

  const double fb = sizeof(float) * static_cast<double>(n);
  const int iters = 5;
  double t_copy = 0, t_value = 0, t_grad = 0;
  // Interleaved: copy, value, value+grad, three rounds; the median round reported.
  std::vector<double> c, v, g;
  for (int round = 0; round < 3; ++round) {
    c.push_back(gpubench::median_ms(stream, repeats, iters, [&] {
      cuda_check(cudaMemcpyAsync(copy_dst.data(), copy_src.data(), 2 * n * sizeof(float), cudaMemcpyDeviceToDevice, stream),
                 "copy");
    }));
    v.push_back(gpubench::median_ms(stream, repeats, iters, [&] { assign(out.view(), f(dx.view(), dy.view()), ex); }));
    g.push_back(gpubench::median_ms(stream, repeats, iters, [&] { value_and_grad_into(loss, ex, grads, hook, dx, dy); }));
  }
  std::sort(c.begin(), c.end());
  std::sort(v.begin(), v.end());
  std::sort(g.begin(), g.end());
  t_copy = c[1];
  t_value = v[1];
  t_grad = g[1];
  const double bw_copy = 4 * fb / (t_copy * 1e6), bw_value = 3 * fb / (t_value * 1e6), bw_grad = 4 * fb / (t_grad * 1e6);
  std::printf("%-12s %10s %10s\n", "kernel", "ms", "GB/s");
  std::printf("%-12s %10.3f %10.1f\n", "copy", t_copy, bw_copy);
  std::printf("%-12s %10.3f %10.1f\n", "value", t_value, bw_value);
  std::printf("%-12s %10.3f %10.1f\n", "value+grad", t_grad, bw_grad);
  std::printf("gpu_elementwise_value_vs_copy: %.2f\n", bw_value / bw_copy);
  std::printf("gpu_elementwise_grad_vs_copy: %.2f\n", bw_grad / bw_copy);
  cudaStreamDestroy(stream);
  return 0;
}
