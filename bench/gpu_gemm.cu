// GPU: what a fused epilogue costs, against cuBLAS's plain GEMM in the same run.
//   gemm             cublasSgemm, C = A B (FP32, no TF32), the reference
//   weft gemm        kernels::gemm through cuBLASLt (weft's matmul path)
//   bias+GELU        kernels::cuda::gemm_bias_gelu: C = gelu_tanh(A B + b),
//                    one cuBLASLt call with the GELU_BIAS epilogue
//   bias+GELU, aux   the same, also saving A B + b for GELU's backward
//   unfused          weft gemm, then a bias and a GELU pass (what the
//                    epilogue saves)
// Shapes (M, K, N): an MLP layer at batch 256 and transformer-sized ones.
// Prints per shape ms and TFLOP/s, and
//   gpu_gemm_bias_gelu_vs_gemm_<M>x<K>x<N>: R   (cuBLAS gemm time / fused time; 1.0 = the epilogue is free)
// Without a GPU it prints why and exits 77.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include <weft/kernels/cuda/gemm.cuh>
#include <weft/kernels/cuda/kernels.cuh>
#include <weft/weft.hpp>

#include "gpu_timing.hpp"

using namespace weft;

namespace {

__global__ void bias_gelu_kernel(float* c, const float* bias, index_t m, index_t n) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < m * n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const float z = c[i] + bias[i % n];
    c[i] = 0.5f * z * (1.0f + tanhf(0.7978845608f * (z + 0.044715f * z * z * z)));
  }
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  cudaDeviceProp prop{};
  cuda_check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::printf("device: %s; FP32 (no TF32), medians of 15 timings of 20 calls\n", prop.name);
  cudaStream_t stream;
  cuda_check(cudaStreamCreate(&stream), "cudaStreamCreate");
  cublasHandle_t blas;
  if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) throw_error<Error>("gpu_gemm: cublasCreate failed");
  cublasSetStream(blas, stream);
  cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH);  // FP32 without TF32, as weft
  Workspace<weft::cuda> ws(stream);
  Exec<weft::cuda> ex(ws, stream);

  const index_t shapes[][3] = {{256, 784, 256}, {8192, 64, 128}, {4096, 1024, 4096}, {8192, 4096, 4096}};
  std::printf("%-18s %10s %10s %10s %10s %10s  %s\n", "M x K x N", "cublas", "weft", "bias+gelu", "+aux", "unfused",
              "(ms; TFLOP/s of cublas)");
  for (const auto& sh : shapes) {
    const index_t m = sh[0], k = sh[1], n = sh[2];
    Tensor<float> ha({m, k}), hb({k, n}), hbias({n});
    for (index_t i = 0; i < ha.numel(); ++i) ha.data()[i] = static_cast<float>((i * 37) % 101) * 0.01f - 0.5f;
    for (index_t i = 0; i < hb.numel(); ++i) hb.data()[i] = static_cast<float>((i * 53) % 97) * 0.01f - 0.5f;
    for (index_t i = 0; i < n; ++i) hbias.data()[i] = static_cast<float>(i % 7) * 0.1f;
    auto a = to_device(ha, stream), b = to_device(hb, stream), bias = to_device(hbias, stream);
    Tensor<float, weft::cuda> c(Shape{m, n}, stream), pre(Shape{m, n}, stream);
    const float one = 1, zero = 0;
    // Row-major C = A B is column-major C^T = B^T A^T.
    const double t_blas = gpubench::median_ms(stream, 15, 20, [&] {
      cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &one,
                  b.data(), static_cast<int>(n), a.data(), static_cast<int>(k), &zero, c.data(), static_cast<int>(n));
    });
    const double t_weft = gpubench::median_ms(stream, 15, 20, [&] { kernels::gemm(ex, a.view(), b.view(), c.view(), 1.0f, 0.0f); });
    const double t_fused =
        gpubench::median_ms(stream, 15, 20, [&] { kernels::cuda::gemm_bias_gelu(ex, a.view(), b.view(), bias.data(), c.view()); });
    const double t_aux =
        gpubench::median_ms(stream, 15, 20, [&] { kernels::cuda::gemm_bias_gelu(ex, a.view(), b.view(), bias.data(), c.view(), pre.data()); });
    const double t_unfused = gpubench::median_ms(stream, 15, 20, [&] {
      kernels::gemm(ex, a.view(), b.view(), c.view(), 1.0f, 0.0f);
      bias_gelu_kernel<<<1024, 256, 0, stream>>>(c.data(), bias.data(), m, n);
    });
    char name[64];
    std::snprintf(name, sizeof name, "%lldx%lldx%lld", static_cast<long long>(m), static_cast<long long>(k),
                  static_cast<long long>(n));
    std::printf("%-18s %10.4f %10.4f %10.4f %10.4f %10.4f  %.1f\n", name, t_blas, t_weft, t_fused, t_aux, t_unfused,
                2.0 * m * n * k / (t_blas * 1e9));
    std::printf("gpu_gemm_bias_gelu_vs_gemm_%s: %.2f\n", name, t_blas / t_fused);
    std::printf("gpu_gemm_weft_vs_cublas_%s: %.2f\n", name, t_blas / t_weft);
  }
  cublasDestroy(blas);
  cudaStreamDestroy(stream);
  return 0;
}
