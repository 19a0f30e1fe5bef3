// CudaExecutor: the comm Executor (context.hpp) for device memory. weft's own
// schedules (Ring, Tree, ...) run unchanged over device buffers: their scratch
// comes from cudaMallocAsync, their copies are cudaMemcpyAsync and their
// combines and avg divisions are kernels, all queued on one stream, the
// stream NcclTransport moves the messages on, so a combine that follows a
// receive runs after it without any host wait. The element arithmetic
// (combine_element, divide_element) is WEFT_HD and follows reduce_op.hpp's
// host loops exactly (f16/bf16 in f32, integer sum/prod wrapping, integer
// avg truncating), so host and device reductions agree bit for bit.
// Opt-in: compile with nvcc.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>

#include "../core/config.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "context.hpp"
#include "error.hpp"
#include "reduce_op.hpp"

namespace weft::comm {

namespace detail {

// Every CUDA call of the comm layer is checked; the message names the call.
inline void cuda_ok(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw_error<TransportError>("CUDA error in ", what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
}

// Makes `device` current for a scope and restores the caller's: a
// communicator's progress thread starts on device 0 whatever its rank's GPU.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    if (device < 0 || cudaGetDevice(&prev_) != cudaSuccess || prev_ == device) return;
    cuda_ok(cudaSetDevice(device), "cudaSetDevice");
    restore_ = true;
  }
  ~DeviceScope() {
    if (restore_) cudaSetDevice(prev_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int prev_ = -1;
  bool restore_ = false;
};

// out = x (op) y for one element, as combine_loop computes it.
template <class T, ReduceOp Op>
WEFT_HD inline T combine_element(T x, T y) {
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
    const float a = static_cast<float>(x), b = static_cast<float>(y);
    float r;
    if constexpr (Op == ReduceOp::sum || Op == ReduceOp::avg) r = a + b;
    else if constexpr (Op == ReduceOp::prod) r = a * b;
    else if constexpr (Op == ReduceOp::min) r = b < a ? b : a;
    else r = b > a ? b : a;
    return T(r);
  } else if constexpr (std::is_integral_v<T>) {
    using U = wrap_t<T>;
    if constexpr (Op == ReduceOp::sum || Op == ReduceOp::avg)
      return static_cast<T>(static_cast<U>(static_cast<U>(x) + static_cast<U>(y)));
    else if constexpr (Op == ReduceOp::prod)
      return static_cast<T>(static_cast<U>(static_cast<U>(x) * static_cast<U>(y)));
    else if constexpr (Op == ReduceOp::min) return y < x ? y : x;
    else return y > x ? y : x;
  } else {
    if constexpr (Op == ReduceOp::sum || Op == ReduceOp::avg) return x + y;
    else if constexpr (Op == ReduceOp::prod) return x * y;
    else if constexpr (Op == ReduceOp::min) return y < x ? y : x;
    else return y > x ? y : x;
  }
}

// x / p, the last step of avg, as divide_by computes it.
template <class T>
WEFT_HD inline T divide_element(T x, int p) {
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>)
    return T(static_cast<float>(x) / static_cast<float>(p));
  else
    return static_cast<T>(x / static_cast<T>(p));
}

// Grid-stride loops: any n with a bounded grid. out may alias a or b
// (each element is read and written by the same thread).
template <class T, ReduceOp Op>
__global__ void combine_kernel(const T* a, const T* b, T* out, std::size_t n) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = combine_element<T, Op>(a[i], b[i]);
}

template <class T>
__global__ void divide_kernel(T* x, std::size_t n, int p) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i] = divide_element<T>(x[i], p);
}

inline constexpr unsigned executor_block = 256;
// Enough blocks to fill a large GPU several times over; the loops stride past it.
inline unsigned executor_grid(std::size_t n) {
  const std::size_t blocks = (n + executor_block - 1) / executor_block;
  return static_cast<unsigned>(blocks < 4096 ? blocks : 4096);
}

}  // namespace detail

// Device memory and kernels on `stream` of `device` (-1: the calling
// thread's current device, left as it is). Every operation is queued on the
// stream and returns at once; work after it on the same stream sees its result.
struct CudaExecutor {
  using device_type = weft::cuda;  // where the buffers it is given live
  cudaStream_t stream = nullptr;
  int device = -1;
  cudaStream_t queue() const { return stream; }

  // Stream-ordered: the memory is usable by work queued after this on the
  // stream, and returned to the pool once the stream passes deallocate.
  std::byte* allocate(std::size_t bytes) const {
    detail::DeviceScope on(device);
    void* p = nullptr;
    if (cudaMallocAsync(&p, bytes, stream) != cudaSuccess || !p) {
      cudaGetLastError();
      throw std::bad_alloc();
    }
    return static_cast<std::byte*>(p);  // 256-byte aligned
  }
  void deallocate(std::byte* p) const noexcept {
    if (!p) return;
    int prev = -1;
    const bool switched = device >= 0 && cudaGetDevice(&prev) == cudaSuccess && prev != device &&
                          cudaSetDevice(device) == cudaSuccess;
    cudaFreeAsync(p, stream);
    if (switched) cudaSetDevice(prev);
  }
  void copy(void* dst, const void* src, std::size_t bytes) const {
    if (!bytes || dst == src) return;
    detail::DeviceScope on(device);
    detail::cuda_ok(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream), "CudaExecutor::copy (cudaMemcpyAsync)");
  }
  // Overlapping ranges go through a stream-ordered temporary: one
  // cudaMemcpyAsync over overlapping ranges is undefined.
  void move(void* dst, const void* src, std::size_t bytes) const {
    if (!bytes || dst == src) return;
    const auto* d = static_cast<const std::byte*>(dst);
    const auto* s = static_cast<const std::byte*>(src);
    if (d + bytes <= s || s + bytes <= d) return copy(dst, src, bytes);
    std::byte* tmp = allocate(bytes);
    try {
      copy(tmp, src, bytes);
      copy(dst, tmp, bytes);
    } catch (...) {
      deallocate(tmp);
      throw;
    }
    deallocate(tmp);
  }
  // Staging through the host (StagingExecutor, for comm::Compressed's host
  // codecs): queued after the stream's earlier work, complete on return. The
  // stream's pending work is local (a transport call returns once its
  // messages completed), so the wait cannot hang on a peer.
  void download(void* host, const void* dev, std::size_t bytes) const {
    if (!bytes) return;
    detail::DeviceScope on(device);
    detail::cuda_ok(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, stream), "CudaExecutor::download (cudaMemcpyAsync)");
    detail::cuda_ok(cudaStreamSynchronize(stream), "CudaExecutor::download (cudaStreamSynchronize)");
  }
  void upload(void* dev, const void* host, std::size_t bytes) const {
    if (!bytes) return;
    detail::DeviceScope on(device);
    detail::cuda_ok(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, stream), "CudaExecutor::upload (cudaMemcpyAsync)");
    detail::cuda_ok(cudaStreamSynchronize(stream), "CudaExecutor::upload (cudaStreamSynchronize)");
  }
  void combine(dtype d, ReduceOp op, const void* a, const void* b, void* out, std::size_t n) const {
    if (!n) return;
    detail::DeviceScope on(device);
    detail::visit_dtype(d, [&](auto tag) {
      using T = decltype(tag);
      const T* pa = static_cast<const T*>(a);
      const T* pb = static_cast<const T*>(b);
      T* po = static_cast<T*>(out);
      const unsigned g = detail::executor_grid(n);
      constexpr unsigned blk = detail::executor_block;
      switch (op) {
        case ReduceOp::sum:
        case ReduceOp::avg: detail::combine_kernel<T, ReduceOp::sum><<<g, blk, 0, stream>>>(pa, pb, po, n); break;
        case ReduceOp::prod: detail::combine_kernel<T, ReduceOp::prod><<<g, blk, 0, stream>>>(pa, pb, po, n); break;
        case ReduceOp::min: detail::combine_kernel<T, ReduceOp::min><<<g, blk, 0, stream>>>(pa, pb, po, n); break;
        case ReduceOp::max: detail::combine_kernel<T, ReduceOp::max><<<g, blk, 0, stream>>>(pa, pb, po, n); break;
      }
    });
    detail::cuda_ok(cudaGetLastError(), "CudaExecutor::combine (kernel launch)");
  }
  void divide(dtype d, void* buf, std::size_t n, int k) const {
    if (!n || k == 1) return;
    detail::DeviceScope on(device);
    detail::visit_dtype(d, [&](auto tag) {
      using T = decltype(tag);
      detail::divide_kernel<T><<<detail::executor_grid(n), detail::executor_block, 0, stream>>>(static_cast<T*>(buf), n, k);
    });
    detail::cuda_ok(cudaGetLastError(), "CudaExecutor::divide (kernel launch)");
  }
};
static_assert(StagingExecutor<CudaExecutor>);

}  // namespace weft::comm
