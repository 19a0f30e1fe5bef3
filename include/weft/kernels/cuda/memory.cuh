// CUDA device memory for Tensor<T, weft::cuda>, and host <-> device copies.
// Opt-in: include this (and compile with nvcc) to use weft::cuda tensors.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "../../core/device.hpp"
#include "../../core/error.hpp"
#include "../../tensor/tensor.hpp"

namespace weft {

// Every CUDA call is checked; the message names the call site's operation.
inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw_error<Error>("CUDA error in ", what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
}

template <>
struct device_memory<cuda> {
  static constexpr std::size_t alignment = 256;  // cudaMalloc's guarantee
  static void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    void* p = nullptr;
    cuda_check(cudaMalloc(&p, bytes), "cudaMalloc");
    return p;
  }
  static void deallocate(void* p) noexcept { cudaFree(p); }
  static void copy(void* dst, const void* src, std::size_t bytes) {
    cuda_check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "device-to-device copy");
  }
  // Synchronous: layers copy their host-drawn initial values once (nn/init.hpp).
  static void copy_from_host(void* dst, const void* src, std::size_t bytes) {
    if (bytes > 0) cuda_check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "host-to-device copy");
  }
  static void copy_to_host(void* dst, const void* src, std::size_t bytes) {
    if (bytes > 0) cuda_check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "device-to-host copy");
  }
};

namespace cuda_copy {

template <class T>
Tensor<T, cuda> to_device(const Tensor<T, cpu>& h) {
  Tensor<T, cuda> d(h.shape());
  if (h.numel() > 0) cuda_check(cudaMemcpy(d.data(), h.data(), h.bytes(), cudaMemcpyHostToDevice), "to_device");
  return d;
}

template <class T>
Tensor<T, cpu> to_host(const Tensor<T, cuda>& d) {
  Tensor<T, cpu> h(d.shape());
  if (d.numel() > 0) cuda_check(cudaMemcpy(h.data(), d.data(), d.bytes(), cudaMemcpyDeviceToHost), "to_host");
  return h;
}

}  // namespace cuda_copy

using cuda_copy::to_device;
using cuda_copy::to_host;

}  // namespace weft
