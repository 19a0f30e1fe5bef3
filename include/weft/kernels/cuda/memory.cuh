// CUDA device memory for Tensor<T, weft::cuda> and Workspace<weft::cuda>, and
// host <-> device copies. Opt-in: include this (and compile with nvcc) to use
// weft::cuda tensors.
//
// Two ways to allocate (core/device.hpp states the contract):
//   synchronous    cudaMalloc / cudaFree; copies with cudaMemcpy. Tensor(shape),
//                  Workspace<cuda>(), to_device(h), to_host(d).
//   stream-ordered cudaMallocAsync / cudaFreeAsync on a stream, from the memory
//                  pool of the stream's device, whose release threshold weft
//                  raises to "never" the first time it allocates there: freed
//                  blocks stay in the pool, so a step that frees and reallocates
//                  the same sizes is served from it without a new cudaMalloc.
//                  Tensor(shape, stream), Workspace<cuda>(stream),
//                  to_device(h, stream), to_host(d, stream), copy_*_async.
// Memory pools are per device and process-wide (the driver's, not weft's):
// cuda_pool_stats(device) reads the pool's own counters, and
// device_memory<cuda>::stats() counts weft's allocation calls, process-wide
// because device_memory is the static allocator every device tensor draws
// from (there is no allocator object to hang a counter on). Tests read both
// to show that a repeated training step allocates nothing.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "../../core/device.hpp"
#include "../../core/error.hpp"
#include "../../tensor/tensor.hpp"

namespace weft {

// Every CUDA call is checked; the message names the call site's operation.
inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw_error<Error>("CUDA error in ", what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
}

// weft's calls into the CUDA allocator since the process started (all devices).
struct DeviceMemoryStats {
  std::uint64_t allocations = 0;          // cudaMalloc + cudaMallocAsync calls
  std::uint64_t ordered_allocations = 0;  // of which cudaMallocAsync
  std::uint64_t frees = 0;                // cudaFree + cudaFreeAsync calls
};

// The pool's view of a device's stream-ordered memory (cudaMemPoolGetAttribute).
struct CudaPoolStats {
  std::uint64_t reserved = 0;       // bytes of device memory the pool holds now
  std::uint64_t reserved_high = 0;  // most it has held (grows only when cudaMallocAsync had to get memory)
  std::uint64_t used = 0;           // bytes handed out and not yet freed
};

namespace detail {

struct CudaAllocCounters {
  std::atomic<std::uint64_t> allocations{0}, ordered{0}, frees{0};
};
inline CudaAllocCounters& cuda_alloc_counters() {
  static CudaAllocCounters c;
  return c;
}

// The pool cudaMallocAsync on a stream of `device` draws from (its current
// pool), with the release threshold set to the maximum once per device: with
// the default (0) the pool returns every freed byte to the driver at the next
// synchronisation and the next step's cudaMallocAsync would map it again.
inline cudaMemPool_t cuda_pool(int device) {
  constexpr int max_devices = 64;
  static std::atomic<bool> configured[max_devices] = {};
  cudaMemPool_t pool;
  cuda_check(cudaDeviceGetMemPool(&pool, device), "cudaDeviceGetMemPool");
  if (device >= 0 && device < max_devices && !configured[device].load(std::memory_order_acquire)) {
    std::uint64_t keep = UINT64_MAX;
    cuda_check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep),
               "cudaMemPoolSetAttribute(release threshold)");
    configured[device].store(true, std::memory_order_release);
  }
  return pool;
}

// The device a stream belongs to; the special handles (0, cudaStreamLegacy,
// cudaStreamPerThread) are the current device's. Asked only of real streams,
// so that no call here fails and leaves an error for cudaGetLastError to
// report at the next kernel launch's check.
inline int cuda_device_of(cudaStream_t stream) {
  int device = 0;
  if (stream == nullptr || stream == cudaStreamLegacy || stream == cudaStreamPerThread)
    cuda_check(cudaGetDevice(&device), "cudaGetDevice");
  else
    cuda_check(cudaStreamGetDevice(stream, &device), "cudaStreamGetDevice");
  return device;
}

}  // namespace detail

// The memory pool stream-ordered allocations on `device` come from, configured
// as above. Users who allocate from it themselves (cudaMallocAsync) share it.
inline cudaMemPool_t cuda_memory_pool(int device) { return detail::cuda_pool(device); }

inline CudaPoolStats cuda_pool_stats(int device) {
  cudaMemPool_t pool = detail::cuda_pool(device);
  CudaPoolStats s;
  std::uint64_t v = 0;
  cuda_check(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &v), "cudaMemPoolGetAttribute(reserved)");
  s.reserved = v;
  cuda_check(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &v), "cudaMemPoolGetAttribute(reserved high)");
  s.reserved_high = v;
  cuda_check(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &v), "cudaMemPoolGetAttribute(used)");
  s.used = v;
  return s;
}

// Give the pool's unused memory back to the driver, keeping min_bytes (between
// phases of a program; a training loop should not need it).
inline void trim_cuda_pool(int device, std::size_t min_bytes = 0) {
  cuda_check(cudaMemPoolTrimTo(detail::cuda_pool(device), min_bytes), "cudaMemPoolTrimTo");
}

template <>
struct device_memory<cuda> {
  // cudaMalloc's guarantee; cudaMallocAsync's blocks are at least as aligned
  // (checked by tests/cuda/test_cuda_optim.cu).
  static constexpr std::size_t alignment = 256;
  using queue_type = cudaStream_t;

  static void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    void* p = nullptr;
    cuda_check(cudaMalloc(&p, bytes), "cudaMalloc");
    detail::cuda_alloc_counters().allocations.fetch_add(1, std::memory_order_relaxed);
    return p;
  }
  static void deallocate(void* p) noexcept {
    if (!p) return;
    cudaFree(p);
    detail::cuda_alloc_counters().frees.fetch_add(1, std::memory_order_relaxed);
  }
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

  // Stream-ordered: the block may be used by work enqueued on `stream` after
  // this call (or on another stream once it waits for an event recorded after it).
  static void* allocate(std::size_t bytes, cudaStream_t stream) {
    if (bytes == 0) return nullptr;
    detail::cuda_pool(detail::cuda_device_of(stream));
    void* p = nullptr;
    cuda_check(cudaMallocAsync(&p, bytes, stream), "cudaMallocAsync");
    auto& c = detail::cuda_alloc_counters();
    c.allocations.fetch_add(1, std::memory_order_relaxed);
    c.ordered.fetch_add(1, std::memory_order_relaxed);
    return p;
  }
  // The block returns to the pool once the work enqueued on `stream` before
  // this call has run; work on other streams that uses it must be ordered before.
  static void deallocate(void* p, cudaStream_t stream) noexcept {
    if (!p) return;
    cudaFreeAsync(p, stream);
    detail::cuda_alloc_counters().frees.fetch_add(1, std::memory_order_relaxed);
  }
  static void copy(void* dst, const void* src, std::size_t bytes, cudaStream_t stream) {
    cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream), "device-to-device copy (stream-ordered)");
  }
  static void synchronize(cudaStream_t stream) { cuda_check(cudaStreamSynchronize(stream), "cudaStreamSynchronize"); }

  static DeviceMemoryStats stats() {
    auto& c = detail::cuda_alloc_counters();
    return {c.allocations.load(std::memory_order_relaxed), c.ordered.load(std::memory_order_relaxed),
            c.frees.load(std::memory_order_relaxed)};
  }
};

namespace detail {
template <class T, class D>
void check_copy_contiguous(const char* op, const TensorView<T, D>& v, const char* which) {
  if (!v.is_contiguous())
    throw_error<ValueError>(op, ": the ", which, " view of shape ", v.shape,
                            " is strided: copy between contiguous tensors (evaluate the view into one first)");
}
template <class T, class A, class B>
void check_copy_same_size(const char* op, const TensorView<T, A>& src, const TensorView<T, B>& dst) {
  if (src.numel() != dst.numel())
    throw_error<ShapeError>(op, ": source of shape ", src.shape, " (", src.numel(), " elements) and destination of shape ",
                            dst.shape, " (", dst.numel(), " elements)");
}
}  // namespace detail

namespace cuda_copy {

// Synchronous: the copy has finished (and the device was idle for it, as
// cudaMemcpy waits for the legacy default stream) when these return.
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

// Stream-ordered: a tensor allocated on `stream` (from the pool) and filled
// by a copy enqueued there. The host tensor may be reused or destroyed on
// return (pageable memory is staged by the driver before cudaMemcpyAsync returns).
template <class T>
Tensor<T, cuda> to_device(const Tensor<T, cpu>& h, cudaStream_t stream) {
  Tensor<T, cuda> d(h.shape(), stream);
  if (h.numel() > 0)
    cuda_check(cudaMemcpyAsync(d.data(), h.data(), h.bytes(), cudaMemcpyHostToDevice, stream), "to_device(stream)");
  return d;
}

// The values after the work already enqueued on `stream`: waits for that
// stream only (not the whole device).
template <class T>
Tensor<T, cpu> to_host(const TensorView<T, cuda>& d, cudaStream_t stream) {
  weft::detail::check_copy_contiguous("to_host(stream)", d, "device");
  Tensor<T, cpu> h(d.shape);
  if (d.numel() > 0) {
    cuda_check(cudaMemcpyAsync(h.data(), d.data, static_cast<std::size_t>(d.numel()) * sizeof(T), cudaMemcpyDeviceToHost, stream),
               "to_host(stream)");
    cuda_check(cudaStreamSynchronize(stream), "to_host(stream): cudaStreamSynchronize");
  }
  return h;
}
template <class T>
Tensor<T, cpu> to_host(const Tensor<T, cuda>& d, cudaStream_t stream) {
  return to_host(d.view(), stream);
}

// Enqueue a copy into the caller's host buffer and return at once: `host` is
// written when the stream reaches the copy (cudaStreamSynchronize or an event
// before reading it). Asynchronous only for page-locked host memory
// (cudaHostAlloc / cudaHostRegister); from pageable memory CUDA copies
// synchronously with respect to the host.
template <class T>
void copy_to_host_async(const TensorView<T, cuda>& dev, const TensorView<T, cpu>& host, cudaStream_t stream) {
  weft::detail::check_copy_contiguous("copy_to_host_async", dev, "device");
  weft::detail::check_copy_contiguous("copy_to_host_async", host, "host");
  weft::detail::check_copy_same_size("copy_to_host_async", dev, host);
  if (dev.numel() > 0)
    cuda_check(cudaMemcpyAsync(host.data, dev.data, static_cast<std::size_t>(dev.numel()) * sizeof(T), cudaMemcpyDeviceToHost, stream),
               "copy_to_host_async");
}

// Enqueue a copy from the caller's host buffer into an existing device tensor.
template <class T>
void copy_to_device_async(const TensorView<T, cpu>& host, const TensorView<T, cuda>& dev, cudaStream_t stream) {
  weft::detail::check_copy_contiguous("copy_to_device_async", host, "host");
  weft::detail::check_copy_contiguous("copy_to_device_async", dev, "device");
  weft::detail::check_copy_same_size("copy_to_device_async", host, dev);
  if (dev.numel() > 0)
    cuda_check(cudaMemcpyAsync(dev.data, host.data, static_cast<std::size_t>(dev.numel()) * sizeof(T), cudaMemcpyHostToDevice, stream),
               "copy_to_device_async");
}

}  // namespace cuda_copy

using cuda_copy::copy_to_device_async;
using cuda_copy::copy_to_host_async;
using cuda_copy::to_device;
using cuda_copy::to_host;

}  // namespace weft
