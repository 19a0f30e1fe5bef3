// The CUDA primitive set (kernels/dispatch.hpp): device_kernels<weft::cuda>.
// nvcc instantiates the same bound evaluators as the CPU loops (every node is
// WEFT_HD) inside these kernels, so an elementwise region and its adjoint each
// become one fused kernel, ordered on the executor's stream:
//   evaluate          dst = region (broadcasting through strides)
//   reduce_all        whole sum/max, deterministic: fixed per-block partials,
//                     then combined pairwise in a fixed order (same bits run to run)
//   fill, copy
//   backward_region   values, adjoints of every leaf and (Sum) the region's
//                     sum in one kernel; contiguous regions only so far
// With it, weft::value_and_grad / value_and_grad_into / assign run on the GPU
// given an Exec<weft::cuda>. Reductions along axes, softmax, cross-entropy,
// layer norm, embedding and gemm are not written for CUDA yet: using them
// stops compilation with a sentence (kernels/dispatch.hpp).
// Opt-in header: compile with nvcc.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <type_traits>

#include "../../core/error.hpp"
#include "../bound.hpp"
#include "../dispatch.hpp"
#include "exec.cuh"
#include "memory.cuh"

namespace weft::kernels::cuda {

inline constexpr int block = 256;
inline constexpr int max_reduce_blocks = 1024;  // partials summed in order by one thread

WEFT_HD inline Index4 unflatten(index_t i, const Shape& p) {
  Index4 ix;
  for (int d = max_rank - 1; d >= 0; --d) {
    ix.i[d] = i % p.dims[d];
    i /= p.dims[d];
  }
  return ix;
}

inline int grid_for(index_t n, int threads) {
  index_t g = (n + threads - 1) / threads;
  return static_cast<int>(g < 65535 * 8 ? (g > 0 ? g : 1) : 65535 * 8);
}
inline int reduce_grid(index_t n) {
  int g = grid_for(n, block);
  return g < max_reduce_blocks ? g : max_reduce_blocks;
}

// Linear: every leaf is read with the element's linear index.
template <bool Linear, class B>
__device__ WEFT_INLINE typename B::value_type value_of(const B& b, index_t i, const Shape& padded_shape) {
  if constexpr (Linear)
    return value_at(b, i);
  else
    return value_at(b, unflatten(i, padded_shape));
}

template <class B, class T>
__global__ void evaluate_linear_kernel(B b, T* out, index_t n) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    out[i] = from_compute<T>(value_at(b, i));
}

template <class B, class T>
__global__ void evaluate_strided_kernel(B b, T* out, Strides out_st, Shape padded_shape, index_t n) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    Index4 ix = unflatten(i, padded_shape);
    out[offset(ix, out_st)] = from_compute<T>(value_at(b, ix));
  }
}

// Per-block tree reduction of the grid-stride partial combines into partials[blockIdx.x].
template <class R, class T>
__device__ void block_reduce(T local, T* partials) {
  __shared__ T red[block];
  red[threadIdx.x] = local;
  __syncthreads();
  for (int w = block / 2; w > 0; w /= 2) {
    if (static_cast<int>(threadIdx.x) < w) red[threadIdx.x] = R::combine(red[threadIdx.x], red[threadIdx.x + w]);
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.x] = red[0];
}

template <class R, bool Linear, class B, class T>
__global__ void reduce_kernel(B b, Shape padded_shape, index_t n, T* partials) {
  T local = R::template identity<T>();
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    local = R::combine(local, value_of<Linear>(b, i, padded_shape));
  block_reduce<R>(local, partials);
}

// The per-block partials combined pairwise in a fixed order (in place: they
// are scratch), so a float32 sum's rounding grows with log2 of the block count.
template <class R, class T>
__global__ void ordered_reduce_kernel(T* partials, int count, T* out) {
  for (int w = 1; w < count; w *= 2)
    for (int i = 0; i + w < count; i += 2 * w) partials[i] = R::combine(partials[i], partials[i + w]);
  *out = count > 0 ? partials[0] : R::template identity<T>();
}

template <class T>
__global__ void fill_kernel(T* p, index_t n, T v) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    p[i] = v;
}

// The fused backward of a contiguous region: recompute, apply the adjoint
// rules in registers, store each active slot's adjoint (Assign: = else +=),
// and with Sum reduce the region's values per block.
template <class E, std::size_t K, bool Assign, bool Sum, class B, class Seed, class T>
__global__ void backward_kernel(B b, Seed seed, SlotMem<T, K> g, index_t n, T* partials) {
  constexpr std::array<bool, K> active = active_slots<E, K>();
  T local = 0;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    typename B::Tape t;
    b.fwd(i, t);
    SlotAcc<T, K> acc;
    for (std::size_t k = 0; k < (K > 0 ? K : 1); ++k) acc.v[k] = T(0);
    b.bwd(i, t, seed(i, t.v), acc);
    if constexpr (K > 0)  // (a backward over parameters only has no input slots)
      for (std::size_t k = 0; k < K; ++k)
        if (active[k]) {
          if constexpr (Assign)
            g.g[k][i] = acc.v[k];
          else
            g.g[k][i] += acc.v[k];
        }
    if constexpr (Sum) local += t.v;
  }
  if constexpr (Sum) block_reduce<SumOp>(local, partials);
}

}  // namespace weft::kernels::cuda

namespace weft::kernels {

template <>
struct device_kernels<weft::cuda> {
  template <class Ex, class B, class T>
  static void evaluate(const Ex& ex, const B& b, TensorView<T, weft::cuda> dst) {
    const index_t n = dst.numel();
    if (n == 0) return;
    if (dst.is_contiguous() && linear_ok(b, dst.shape))
      cuda::evaluate_linear_kernel<<<cuda::grid_for(n, cuda::block), cuda::block, 0, ex.queue()>>>(b, dst.data, n);
    else
      cuda::evaluate_strided_kernel<<<cuda::grid_for(n, cuda::block), cuda::block, 0, ex.queue()>>>(
          b, dst.data, aligned_strides(dst.shape, dst.strides, dst.shape), padded(dst.shape), n);
    cuda_check(cudaGetLastError(), "evaluate kernel launch");
  }

  // *out (device memory) = the region reduced with R, in a fixed order.
  template <class R, class Ex, class B>
  static void reduce_all(const Ex& ex, const B& b, const Shape& shape, typename B::value_type* out) {
    using T = typename B::value_type;
    const index_t n = shape.numel();
    const int grid = cuda::reduce_grid(n);
    auto partials = ex.workspace().template alloc<T>(Shape{grid});
    if (linear_ok(b, shape))
      cuda::reduce_kernel<R, true><<<grid, cuda::block, 0, ex.queue()>>>(b, padded(shape), n, partials.data);
    else
      cuda::reduce_kernel<R, false><<<grid, cuda::block, 0, ex.queue()>>>(b, padded(shape), n, partials.data);
    cuda_check(cudaGetLastError(), "reduce kernel launch");
    cuda::ordered_reduce_kernel<R><<<1, 1, 0, ex.queue()>>>(partials.data, grid, out);
    cuda_check(cudaGetLastError(), "ordered reduce kernel launch");
  }

  template <class Ex, class T>
  static void fill(const Ex& ex, TensorView<T, weft::cuda> dst, T value) {
    const index_t n = dst.numel();
    if (n == 0) return;
    if (dst.is_contiguous()) {
      cuda::fill_kernel<<<cuda::grid_for(n, cuda::block), cuda::block, 0, ex.queue()>>>(dst.data, n, value);
      cuda_check(cudaGetLastError(), "fill kernel launch");
    } else {
      evaluate(ex, BoundScalar<T>{value}, dst);
    }
  }

  template <class Ex, class T>
  static void copy(const Ex& ex, TensorView<T, weft::cuda> dst, TensorView<T, weft::cuda> src) {
    if (dst.numel() > 0)
      cuda_check(cudaMemcpyAsync(dst.data, src.data, static_cast<std::size_t>(dst.numel()) * sizeof(T), cudaMemcpyDeviceToDevice,
                                 ex.queue()),
                 "device-to-device copy");
  }

  // Returns the region's sum on the host (with Sum; it waits for the stream).
  template <class E, bool Sum, std::size_t K, class Ex, class B, class Seed, class T>
  static T backward_region(const Ex& ex, const B& b, const Shape& shape, const Seed& seed, const SlotMem<T, K>& sinks,
                           bool linear, bool assign) {
    if (!linear)
      throw_error<ValueError>("cuda backward: a differentiated region of shape ", shape,
                              " reads a broadcast or strided operand; on the GPU every operand must have the region's "
                              "shape so far (broadcast inputs are CPU-only)");
    const index_t n = shape.numel();
    const int grid = cuda::reduce_grid(n);
    T* partials = nullptr;
    if constexpr (Sum) partials = ex.workspace().template alloc<T>(Shape{grid}).data;
    if (assign)
      cuda::backward_kernel<E, K, true, Sum><<<grid, cuda::block, 0, ex.queue()>>>(b, seed, sinks, n, partials);
    else
      cuda::backward_kernel<E, K, false, Sum><<<grid, cuda::block, 0, ex.queue()>>>(b, seed, sinks, n, partials);
    cuda_check(cudaGetLastError(), "backward kernel launch");
    if constexpr (!Sum) {
      return T(0);
    } else {
      auto total = ex.workspace().template alloc<T>(Shape{});
      cuda::ordered_reduce_kernel<SumOp><<<1, 1, 0, ex.queue()>>>(partials, grid, total.data);
      cuda_check(cudaGetLastError(), "ordered sum kernel launch");
      T host = 0;
      cuda_check(cudaMemcpyAsync(&host, total.data, sizeof(T), cudaMemcpyDeviceToHost, ex.queue()), "sum to host");
      cuda_check(cudaStreamSynchronize(ex.queue()), "stream synchronize");
      return host;
    }
  }
};

static_assert(ElementwiseKernels<weft::cuda>, "the CUDA kernels must provide the elementwise primitive set of kernels/dispatch.hpp");

}  // namespace weft::kernels
