// The CUDA primitive set (kernels/dispatch.hpp): device_kernels<weft::cuda>,
// the whole DeviceKernels concept. nvcc instantiates the same bound
// evaluators as the CPU loops (every node is WEFT_HD) inside these kernels, so
// an elementwise region and its adjoint each become one fused kernel, ordered
// on the executor's stream:
//   evaluate          dst = region (broadcasting through strides)
//   reduce_all        whole sum/max: fixed per-block partials, then combined
//                     pairwise in a fixed order
//   reduce_into       sum/max along any axes: a warp (or, for few long
//                     outputs, a block) per output when the last axis is
//                     reduced, else 32 outputs per block with the
//                     reduced elements split in fixed row chunks, the chunks'
//                     partials combined in order by a second kernel
//   fill, copy
//   backward_region   values, adjoints of every leaf and (Sum) the region's
//                     sum in one kernel; broadcast leaves write scratch of the
//                     region's shape, summed afterwards with reduce_into (the
//                     CPU's rule); a leaf read through two layouts is refused
//   softmax_rows(_backward), cross_entropy_rows, layer_norm_rows(_backward):
//                     a block per row (32 to 256 threads by row length), warp
//                     shuffles then a block combine; the per-element formulas
//                     are the CPU's (kernels/cpu/rows.hpp, WEFT_HD)
//   sum_rows, layer norm's dgamma/dbeta: the column reduction above
//   gather_rows       a bad index is recorded on the device and thrown on the
//                     host (the call waits for the stream), as the CPU's sentence
//   scatter_add_rows  a thread per column walks the indices in order
// Deterministic: no float atomics anywhere; every reduction's order depends on
// the shapes alone, so the same launch gives the same bits run to run (not the
// CPU's bits: its cascades group the terms differently).
// With it, weft::value_and_grad / value_and_grad_into / assign / backward run
// on the GPU given an Exec<weft::cuda>; gemm and attention are separate
// primitives (device_gemm, device_attention).
// Dimension legend: R rows, C columns (classes/features), N gathered indices,
// O outputs of a reduction, M elements reduced into each.
// Opt-in header: compile with nvcc.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <type_traits>

#include "../../core/error.hpp"
#include "../bound.hpp"
#include "../cpu/rows.hpp"
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
// and with Sum reduce the region's values per block. Active: bit k set when
// slot k's adjoint is stored (active_slots of the region's expression, as a
// mask: the expression type itself may hold host lambdas (let's), which nvcc
// refuses in a kernel's template arguments).
template <std::uint64_t Active, std::size_t K, bool Assign, bool Sum, class B, class Seed, class T>
__global__ void backward_kernel(B b, Seed seed, SlotMem<T, K> g, index_t n, T* partials) {
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
        if ((Active >> k) & 1u) {
          if constexpr (Assign)
            g.g[k][i] = acc.v[k];
          else
            g.g[k][i] += acc.v[k];
        }
    if constexpr (Sum) local += t.v;
  }
  if constexpr (Sum) block_reduce<SumOp>(local, partials);
}

// A whole backward region on the general path: every element by its padded
// 4-D index, adjoints added through each leaf's strides (the host checked that
// no two elements add into one address: broadcast leaves write scratch).
template <bool Sum, class B, class Seed, class T, std::size_t K>
__global__ void backward_general_kernel(B b, Seed seed, SlotMem<T, K> m, Shape padded_shape, index_t n, T* partials) {
  T local = 0;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const Index4 ix = unflatten(i, padded_shape);
    typename B::Tape t;
    b.fwd(ix, t);
    b.bwd(ix, t, seed(ix, t.v), m);
    if constexpr (Sum) local += t.v;
  }
  if constexpr (Sum) block_reduce<SumOp>(local, partials);
}

template <class T>
__global__ void add_kernel(T* target, const T* src, index_t n) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    target[i] += src[i];
}

// ---------------------------------------------------------------- warp and block combines
// Fixed trees: for a given block size the same bits every run.

// Lane 0 gets the R-combine of v over the warp.
template <class R, class T>
__device__ __forceinline__ T warp_reduce(T v) {
  for (int off = 16; off > 0; off /= 2) v = R::combine(v, __shfl_down_sync(0xffffffffu, v, off));
  return v;
}

// Every thread of the block gets the R-combine of v over the block.
// blockDim.x: a multiple of 32, at most 1024; sh: 33 elements of shared memory.
template <class R, class T>
__device__ __forceinline__ T block_allreduce(T v, T* sh) {
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const int warps = static_cast<int>(blockDim.x) >> 5;
  v = warp_reduce<R>(v);
  __syncthreads();  // the previous call's readers of sh are done
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < warps ? sh[lane] : R::template identity<T>();
    w = warp_reduce<R>(w);
    if (lane == 0) sh[32] = w;
  }
  __syncthreads();
  return sh[32];
}

// Threads per row for the row kernels: the row's length rounded up to a warp
// multiple (a power of two), at most 256.
inline int row_threads(index_t cols) { return cols <= 32 ? 32 : cols <= 64 ? 64 : cols <= 128 ? 128 : 256; }
inline int row_grid(index_t rows) { return static_cast<int>(rows < 65535 * 8 ? (rows > 0 ? rows : 1) : 65535 * 8); }

// ---------------------------------------------------------------- reductions along axes
// A reduction seen as a matrix: f(k, o) is element k (M) of output o (O).

// The region's element k of output o: q holds the outputs (reduced axes at
// 1), qr the reduced elements (kept axes at 1), both padded.
template <class B>
struct ReducedAt {
  B b;
  Shape q, qr;
  __device__ __forceinline__ typename B::value_type operator()(index_t k, index_t o) const {
    Index4 a = unflatten(o, q);
    const Index4 c = unflatten(k, qr);
    for (int d = 0; d < max_rank; ++d) a.i[d] += c.i[d];
    return value_at(b, a);
  }
};

// Element (r, j) of a contiguous (R, D) matrix.
template <class T>
struct RowsAt {
  const T* x;
  index_t d;
  __device__ __forceinline__ T operator()(index_t r, index_t j) const { return x[r * d + j]; }
};

// out[o] = v through the keep-dims strides of reduce_into.
template <class T>
struct StoreReduced {
  T* out;
  Strides st;
  Shape q;
  __device__ __forceinline__ void operator()(index_t o, T v) const { out[offset(unflatten(o, q), st)] = v; }
};

template <class T>
struct AddTo {
  T* out;
  __device__ __forceinline__ void operator()(index_t o, T v) const { out[o] += v; }
};

// Reductions along the last axis with at most this many outputs of at least
// this many elements take a block per output, others a warp per output.
inline constexpr index_t block_outputs_max = 4096;
inline constexpr index_t block_elements_min = 2048;

// A warp per output (the reduced elements lie along rows): lanes stride over
// the M elements, then a warp tree.
template <class R, class T, class F, class Out>
__global__ void warp_per_output_kernel(F f, index_t outs, index_t m, Out out) {
  const index_t warps = static_cast<index_t>(gridDim.x) * (blockDim.x / 32);
  const index_t lane = threadIdx.x & 31;
  for (index_t o = (blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x) / 32; o < outs; o += warps) {
    T acc = R::template identity<T>();
    for (index_t k = lane; k < m; k += 32) acc = R::combine(acc, f(k, o));
    acc = warp_reduce<R>(acc);
    if (lane == 0) out(o, acc);
  }
}

// A block per output, for few outputs of many elements each (a warp alone
// would walk them all): threads stride over the M elements, then
// block_allreduce.
template <class R, class T, class F, class Out>
__global__ void block_per_output_kernel(F f, index_t outs, index_t m, Out out) {
  __shared__ T sh[33];
  for (index_t o = blockIdx.x; o < outs; o += gridDim.x) {
    T acc = R::template identity<T>();
    for (index_t k = threadIdx.x; k < m; k += blockDim.x) acc = R::combine(acc, f(k, o));
    acc = block_allreduce<R>(acc, sh);
    if (threadIdx.x == 0) out(o, acc);
  }
}

// Column reductions: a block of (32 outputs) x (8 slices) over one chunk of
// rows; slice y takes rows k0 + y, k0 + y + 8, ... in order, the 8 slices are
// combined pairwise, and each (chunk, output) partial goes to partials
// (chunks, O). column_combine_kernel then combines the chunks in order.
inline constexpr int col_lanes = 32;
inline constexpr int col_slices = 8;
inline constexpr index_t col_rows_per_chunk = 256;
inline constexpr index_t col_max_chunks = 128;

inline index_t column_chunks(index_t rows) {
  const index_t c = (rows + col_rows_per_chunk - 1) / col_rows_per_chunk;
  return c < 1 ? 1 : c > col_max_chunks ? col_max_chunks : c;
}

template <class R, class T, class F>
__global__ void column_partials_kernel(F f, index_t rows, index_t cols, index_t per_chunk, T* partials) {
  __shared__ T sh[col_slices][col_lanes + 1];
  const index_t o = blockIdx.x * static_cast<index_t>(col_lanes) + threadIdx.x;
  const index_t k0 = blockIdx.y * per_chunk;
  const index_t k1 = k0 + per_chunk < rows ? k0 + per_chunk : rows;
  T acc = R::template identity<T>();
  if (o < cols)
    for (index_t k = k0 + threadIdx.y; k < k1; k += col_slices) acc = R::combine(acc, f(k, o));
  sh[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && o < cols) {
    T v[col_slices];
    for (int y = 0; y < col_slices; ++y) v[y] = sh[y][threadIdx.x];
    for (int w = 1; w < col_slices; w *= 2)
      for (int y = 0; y + w < col_slices; y += 2 * w) v[y] = R::combine(v[y], v[y + w]);
    partials[blockIdx.y * cols + o] = v[0];
  }
}

template <class R, class T, class Out>
__global__ void column_combine_kernel(const T* partials, index_t chunks, index_t cols, Out out) {
  for (index_t o = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; o < cols;
       o += static_cast<index_t>(gridDim.x) * blockDim.x) {
    T v = partials[o];
    for (index_t c = 1; c < chunks; ++c) v = R::combine(v, partials[c * cols + o]);
    out(o, v);
  }
}

// ---------------------------------------------------------------- rows
// A block per row (rows grid-strided, block-uniform, so the barriers inside
// are reached by every thread); each row's sums and maxima are block_allreduce.

template <bool Log, class T>
__global__ void softmax_rows_kernel(T* xs, index_t rows, index_t cols) {
  __shared__ T sh[33];
  for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {
    T* x = xs + r * cols;
    T m = MaxOp::identity<T>();
    for (index_t c = threadIdx.x; c < cols; c += blockDim.x) m = MaxOp::combine(m, x[c]);
    m = block_allreduce<MaxOp>(m, sh);
    T s = 0;
    for (index_t c = threadIdx.x; c < cols; c += blockDim.x) s += math::exp(x[c] - m);
    s = block_allreduce<SumOp>(s, sh);
    if constexpr (Log) {
      const T lz = math::log(s);
      for (index_t c = threadIdx.x; c < cols; c += blockDim.x) x[c] = log_softmax_at(x[c], m, lz);
    } else {
      const T inv = T(1) / s;
      for (index_t c = threadIdx.x; c < cols; c += blockDim.x) x[c] = math::exp(x[c] - m) * inv;
    }
  }
}

template <bool Log, class T>
__global__ void softmax_rows_backward_kernel(const T* ys, const T* dys, T* dxs, index_t rows, index_t cols) {
  __shared__ T sh[33];
  for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* y = ys + r * cols;
    const T* dy = dys + r * cols;
    T* dx = dxs + r * cols;
    T acc = 0;
    for (index_t c = threadIdx.x; c < cols; c += blockDim.x) acc += Log ? dy[c] : dy[c] * y[c];
    acc = block_allreduce<SumOp>(acc, sh);
    for (index_t c = threadIdx.x; c < cols; c += blockDim.x) dx[c] = softmax_grad_at<Log>(y[c], dy[c], acc);
  }
}

// No row index is ever this large: the "no bad index" mark (atomicMin keeps
// the first bad row, whatever the order the blocks ran in).
inline constexpr unsigned long long no_bad_row = ~0ull;

// Per row: row_max, log_z and the row's loss (R,); a label out of [0, C)
// marks its row in *bad and gives a loss of 0 (the host then throws).
template <class T, class L>
__global__ void cross_entropy_rows_kernel(const T* logits, const L* labels, index_t lab_st, index_t rows, index_t cols, T eps,
                                          T* row_max, T* log_z, T* row_loss, unsigned long long* bad) {
  __shared__ T sh[33];
  for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* x = logits + r * cols;
    T m = MaxOp::identity<T>();
    for (index_t c = threadIdx.x; c < cols; c += blockDim.x) m = MaxOp::combine(m, x[c]);
    m = block_allreduce<MaxOp>(m, sh);
    T s = 0;
    for (index_t c = threadIdx.x; c < cols; c += blockDim.x) s += math::exp(x[c] - m);
    s = block_allreduce<SumOp>(s, sh);
    T total = 0;
    if (eps != T(0)) {  // (eps is the same for every thread: the barrier inside is safe)
      for (index_t c = threadIdx.x; c < cols; c += blockDim.x) total += x[c];
      total = block_allreduce<SumOp>(total, sh);
    }
    if (threadIdx.x == 0) {
      const T lz = math::log(s);
      row_max[r] = m;
      log_z[r] = lz;
      const index_t y = static_cast<index_t>(labels[r * lab_st]);
      if (y < 0 || y >= cols) {
        atomicMin(bad, static_cast<unsigned long long>(r));
        row_loss[r] = T(0);
      } else {
        row_loss[r] = cross_entropy_row_loss(m, x[y], lz, eps, total, cols);
      }
    }
  }
}

template <class T>
__global__ void mean_of_total_kernel(T* loss, index_t rows) {
  *loss = rows ? *loss / static_cast<T>(rows) : T(0);
}

template <class T>
__global__ void layer_norm_rows_kernel(const T* xs, const T* gamma, const T* beta, T eps, T* ys, T* mean, T* rstd, index_t rows,
                                       index_t d) {
  __shared__ T sh[33];
  for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* x = xs + r * d;
    T* y = ys + r * d;
    T s = 0;
    for (index_t j = threadIdx.x; j < d; j += blockDim.x) s += x[j];
    const T mu = block_allreduce<SumOp>(s, sh) / static_cast<T>(d);
    T v = 0;
    for (index_t j = threadIdx.x; j < d; j += blockDim.x) v += (x[j] - mu) * (x[j] - mu);
    const T rs = layer_norm_rstd(block_allreduce<SumOp>(v, sh), d, eps);
    for (index_t j = threadIdx.x; j < d; j += blockDim.x) y[j] = layer_norm_at(x[j], mu, rs, gamma[j], beta[j]);
    if (threadIdx.x == 0) {
      mean[r] = mu;
      rstd[r] = rs;
    }
  }
}

// dx per row; dgamma and dbeta are column reductions (LayerNormDgamma, RowsAt).
template <class T>
__global__ void layer_norm_rows_backward_kernel(const T* xs, const T* dys, const T* gamma, const T* mean, const T* rstd, T* dxs,
                                                index_t rows, index_t d) {
  __shared__ T sh[33];
  for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* x = xs + r * d;
    const T* dy = dys + r * d;
    T* dx = dxs + r * d;
    const T mu = mean[r], rs = rstd[r];
    T a = 0, b = 0;
    for (index_t j = threadIdx.x; j < d; j += blockDim.x) {
      const T g = dy[j] * gamma[j];
      a += g;
      b += g * ((x[j] - mu) * rs);
    }
    const T mg = block_allreduce<SumOp>(a, sh) / static_cast<T>(d);
    const T mgx = block_allreduce<SumOp>(b, sh) / static_cast<T>(d);
    for (index_t j = threadIdx.x; j < d; j += blockDim.x)
      dx[j] = layer_norm_dx_at(dy[j], gamma[j], (x[j] - mu) * rs, rs, mg, mgx);
  }
}

// dy * xhat at (r, j): the terms of dgamma's column sums.
template <class T>
struct LayerNormDgamma {
  const T *x, *dy, *mean, *rstd;
  index_t d;
  __device__ __forceinline__ T operator()(index_t r, index_t j) const {
    return dy[r * d + j] * ((x[r * d + j] - mean[r]) * rstd[r]);
  }
};

// ---------------------------------------------------------------- gather / scatter rows

template <class T, class I>
__global__ void gather_rows_kernel(const T* table, index_t table_rows, const I* idx, index_t n, index_t d, T* out,
                                   unsigned long long* bad) {
  const index_t total = n * d;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t r = i / d, j = i - r * d;
    const index_t k = static_cast<index_t>(idx[r]);
    if (k < 0 || k >= table_rows) {
      if (j == 0) atomicMin(bad, static_cast<unsigned long long>(r));
      out[i] = T(0);
    } else {
      out[i] = table[k * d + j];
    }
  }
}

// A thread per column walks the N indices in order: each table element's
// additions happen in index order, with no atomics.
template <class T, class I>
__global__ void scatter_add_rows_kernel(const T* src, const I* idx, index_t n, index_t d, T* table) {
  for (index_t j = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; j < d;
       j += static_cast<index_t>(gridDim.x) * blockDim.x)
    for (index_t r = 0; r < n; ++r) table[static_cast<index_t>(idx[r]) * d + j] += src[r * d + j];
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
  // Contiguous regions run backward_kernel on linear indices (assign: the
  // first writer of every slot stores); others run backward_general_kernel,
  // which always adds (the caller zeroed the slots). There each element's
  // adjoints must land on addresses no other element writes: a leaf broadcast
  // along an axis writes scratch of the region's shape instead, reduced into
  // its buffer afterwards (the CPU's rule, kernels/cpu/loops.hpp); a leaf read
  // through two layouts at once (x + transpose(x)) is refused with a sentence.
  template <class E, bool Sum, std::size_t K, class Ex, class B, class Seed, class T>
  static T backward_region(const Ex& ex, const B& b, const Shape& shape, const Seed& seed, const SlotMem<T, K>& sinks,
                           bool linear, bool assign) {
    const index_t n = shape.numel();
    const int grid = cuda::reduce_grid(n);
    T* partials = nullptr;
    if constexpr (Sum) partials = ex.workspace().template alloc<T>(Shape{grid}).data;
    if (linear) {
      static_assert(K <= 64, "cuda backward: at most 64 differentiated inputs in one region");
      constexpr std::uint64_t active = [] {
        constexpr std::array<bool, K> a = active_slots<E, K>();
        std::uint64_t m = 0;
        for (std::size_t k = 0; k != K; ++k)  // (!=: no "k < 0" warning when K is 0)
          if (a[k]) m |= std::uint64_t(1) << k;
        return m;
      }();
      if (assign)
        cuda::backward_kernel<active, K, true, Sum><<<grid, cuda::block, 0, ex.queue()>>>(b, seed, sinks, n, partials);
      else
        cuda::backward_kernel<active, K, false, Sum><<<grid, cuda::block, 0, ex.queue()>>>(b, seed, sinks, n, partials);
      cuda_check(cudaGetLastError(), "backward kernel launch");
    } else if (n > 0) {
      backward_general<Sum>(ex, b, shape, seed, sinks, grid, partials);
    } else if constexpr (Sum) {
      fill(ex, TensorView<T, weft::cuda>(partials, Shape{grid}), T(0));
    }
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

  // The region reduced with R into out (O = out_n, contiguous keep-dims
  // shape), read through out_st (aligned to the region, 0 along reduced axes).
  template <class R, class Ex, class B>
  static void reduce_into(const Ex& ex, const B& b, const Shape& shape, typename B::value_type* out, const Strides& out_st,
                          index_t out_n) {
    using T = typename B::value_type;
    if (out_n == 0) return;
    const Shape p = padded(shape);
    Shape q = p, qr = p;  // the outputs, the elements of one output
    bool inner = false;   // the last axis is reduced
    for (int d = 0; d < max_rank; ++d)
      if (out_st[d] == 0 && p[d] > 1) {
        q[d] = 1;
        inner = inner || d == max_rank - 1;
      } else {
        qr[d] = 1;
      }
    const index_t m = shape.numel() == 0 ? 0 : qr.numel();
    if (m == 0) {  // an empty region: every output is R's identity (as the CPU's)
      fill(ex, TensorView<T, weft::cuda>(out, Shape{out_n}), R::template identity<T>());
      return;
    }
    const cuda::ReducedAt<B> f{b, q, qr};
    const cuda::StoreReduced<T> store{out, out_st, q};
    // (A choice made from the shapes alone, so the order stays fixed.)
    if (inner && out_n <= cuda::block_outputs_max && m >= cuda::block_elements_min)
      cuda::block_per_output_kernel<R, T><<<cuda::row_grid(out_n), cuda::block, 0, ex.queue()>>>(f, out_n, m, store);
    else if (inner)
      cuda::warp_per_output_kernel<R, T><<<cuda::grid_for(out_n * 32, cuda::block), cuda::block, 0, ex.queue()>>>(f, out_n, m,
                                                                                                                  store);
    else
      columns<R, T>(ex, f, m, out_n, store, "reduce_into");
    cuda_check(cudaGetLastError(), "reduce_into kernel launch");
  }

  template <bool Log, class Ex, class T>
  static void softmax_rows(const Ex& ex, T* x, index_t rows, index_t cols) {
    if (rows == 0 || cols == 0) return;
    cuda::softmax_rows_kernel<Log><<<cuda::row_grid(rows), cuda::row_threads(cols), 0, ex.queue()>>>(x, rows, cols);
    cuda_check(cudaGetLastError(), Log ? "log_softmax rows kernel launch" : "softmax rows kernel launch");
  }

  template <bool Log, class Ex, class T>
  static void softmax_rows_backward(const Ex& ex, const T* y, const T* dy, T* dx, index_t rows, index_t cols) {
    if (rows == 0 || cols == 0) return;
    cuda::softmax_rows_backward_kernel<Log><<<cuda::row_grid(rows), cuda::row_threads(cols), 0, ex.queue()>>>(y, dy, dx, rows, cols);
    cuda_check(cudaGetLastError(), Log ? "log_softmax backward kernel launch" : "softmax backward kernel launch");
  }

  // row_max, log_z (R,) and *loss = the mean of the rows' losses, summed in a
  // fixed order (reduce_all). Waits for the stream to check the labels: a
  // label out of range throws the CPU's sentence.
  template <class Ex, class T, class L>
  static void cross_entropy_rows(const Ex& ex, const T* logits, const L* labels, index_t lab_st, index_t rows, index_t cols,
                                 T eps, T* row_max, T* log_z, T* loss) {
    if (rows == 0) {
      fill(ex, TensorView<T, weft::cuda>(loss, Shape{}), T(0));
      return;
    }
    auto row_loss = ex.workspace().template alloc<T>(Shape{rows});  // (R,)
    unsigned long long* bad = bad_mark(ex);
    cuda::cross_entropy_rows_kernel<<<cuda::row_grid(rows), cuda::row_threads(cols), 0, ex.queue()>>>(
        logits, labels, lab_st, rows, cols, eps, row_max, log_z, row_loss.data, bad);
    cuda_check(cudaGetLastError(), "cross_entropy rows kernel launch");
    const Strides c = contiguous_strides(Shape{rows});
    reduce_all<SumOp>(ex, BoundTensor<T>{row_loss.data, c, Shape{rows}, c}, Shape{rows}, loss);
    cuda::mean_of_total_kernel<<<1, 1, 0, ex.queue()>>>(loss, rows);
    cuda_check(cudaGetLastError(), "cross_entropy mean kernel launch");
    const index_t r = first_bad(ex, bad, "cross_entropy label check");
    if (r >= 0)
      throw_error<ValueError>("cross_entropy: label ", read_index(ex, labels + r * lab_st), " at row ", r,
                              " is out of range for ", cols, " classes");
  }

  template <class Ex, class T>
  static void layer_norm_rows(const Ex& ex, const T* x, const T* gamma, const T* beta, T eps, T* y, T* mean, T* rstd,
                              index_t rows, index_t d) {
    if (rows == 0 || d == 0) return;
    cuda::layer_norm_rows_kernel<<<cuda::row_grid(rows), cuda::row_threads(d), 0, ex.queue()>>>(x, gamma, beta, eps, y, mean,
                                                                                                  rstd, rows, d);
    cuda_check(cudaGetLastError(), "layer_norm rows kernel launch");
  }

  // dx per row; dgamma and dbeta += their column sums over the rows (columns()).
  template <class Ex, class T>
  static void layer_norm_rows_backward(const Ex& ex, const T* x, const T* dy, const T* gamma, const T* mean, const T* rstd,
                                       T* dx, T* dgamma, T* dbeta, index_t rows, index_t d) {
    if (rows == 0 || d == 0) return;
    cuda::layer_norm_rows_backward_kernel<<<cuda::row_grid(rows), cuda::row_threads(d), 0, ex.queue()>>>(x, dy, gamma, mean, rstd,
                                                                                                           dx, rows, d);
    cuda_check(cudaGetLastError(), "layer_norm backward kernel launch");
    columns<SumOp, T>(ex, cuda::LayerNormDgamma<T>{x, dy, mean, rstd, d}, rows, d, cuda::AddTo<T>{dgamma}, "layer_norm dgamma");
    columns<SumOp, T>(ex, cuda::RowsAt<T>{dy, d}, rows, d, cuda::AddTo<T>{dbeta}, "layer_norm dbeta");
  }

  // out (D) += the column sums of x (R, D).
  template <class Ex, class T>
  static void sum_rows(const Ex& ex, const T* x, index_t rows, index_t d, T* out) {
    if (rows == 0 || d == 0) return;
    columns<SumOp, T>(ex, cuda::RowsAt<T>{x, d}, rows, d, cuda::AddTo<T>{out}, "sum_rows");
  }

  // out (N, D) = rows idx (N,) of table (E, D). Waits for the stream to check
  // the indices: one out of range throws the CPU's sentence naming `what`.
  template <class Ex, class T, class I>
  static void gather_rows(const Ex& ex, const T* table, index_t table_rows, const I* idx, index_t n, index_t d, T* out,
                          const char* what) {
    if (n == 0 || d == 0) return;
    unsigned long long* bad = bad_mark(ex);
    cuda::gather_rows_kernel<<<cuda::grid_for(n * d, cuda::block), cuda::block, 0, ex.queue()>>>(table, table_rows, idx, n, d,
                                                                                                  out, bad);
    cuda_check(cudaGetLastError(), "gather_rows kernel launch");
    const index_t r = first_bad(ex, bad, "embedding index check");
    if (r >= 0)
      throw_error<ValueError>("embedding ", what, ": index ", read_index(ex, idx + r), " at position ", r,
                              " is out of range for ", table_rows, " embeddings");
  }

  // table (E, D) rows idx (N,) += src (N, D), in index order. The indices are
  // not checked here (the signature carries no E): they are the forward
  // gather's, which checked them.
  template <class Ex, class T, class I>
  static void scatter_add_rows(const Ex& ex, const T* src, const I* idx, index_t n, index_t d, T* table) {
    if (n == 0 || d == 0) return;
    cuda::scatter_add_rows_kernel<<<cuda::grid_for(d, cuda::block), cuda::block, 0, ex.queue()>>>(src, idx, n, d, table);
    cuda_check(cudaGetLastError(), "scatter_add_rows kernel launch");
  }

 private:
  // out(o, v) for v = the R-combine over k of f(k, o), k < rows, o < cols:
  // partials per chunk of rows, then the chunks combined in order.
  template <class R, class T, class Ex, class F, class Out>
  static void columns(const Ex& ex, const F& f, index_t rows, index_t cols, const Out& out, const char* what) {
    const index_t chunks = cuda::column_chunks(rows);
    const index_t per_chunk = (rows + chunks - 1) / chunks;
    auto partials = ex.workspace().template alloc<T>(Shape{chunks, cols});  // (chunks, O)
    const dim3 grid(static_cast<unsigned>((cols + cuda::col_lanes - 1) / cuda::col_lanes), static_cast<unsigned>(chunks));
    const dim3 threads(cuda::col_lanes, cuda::col_slices);
    cuda::column_partials_kernel<R, T><<<grid, threads, 0, ex.queue()>>>(f, rows, cols, per_chunk, partials.data);
    cuda_check(cudaGetLastError(), what);
    cuda::column_combine_kernel<R><<<cuda::grid_for(cols, cuda::block), cuda::block, 0, ex.queue()>>>(partials.data, chunks, cols,
                                                                                                        out);
    cuda_check(cudaGetLastError(), what);
  }

  template <bool Sum, class Ex, class B, class Seed, class T, std::size_t K>
  static void backward_general(const Ex& ex, const B& bound, const Shape& shape, const Seed& seed, const SlotMem<T, K>& sinks,
                               int grid, T* partials) {
    const index_t n = shape.numel();
    const Shape p = padded(shape);
    const Strides rst = contiguous_strides(p);
    auto broadcast = [&](const Strides& st) { return broadcast_along(st, p); };
    auto scratch = [&]() {
      auto v = ex.workspace().template alloc<T>(p);
      fill(ex, v, T(0));
      return v.data;
    };
    B b = bound;
    SlotMem<T, K> mem = sinks;
    mem.rst = rst;
    // Buffer leaves (parameters, materialised values) broadcast along an axis.
    struct Moved {
      T* adj;
      Strides ast;
      index_t n;
      T* scratch;
    };
    constexpr int max_moved = 16;
    Moved moved[max_moved];
    int n_moved = 0;
    bool overflow = false;
    b.adjoints([&]<class U>(U*& adj, Strides& ast, const Shape& own) {
      if constexpr (std::is_same_v<U, T>) {
        if (!broadcast(ast)) return;
        if (n_moved == max_moved) {
          overflow = true;
          return;
        }
        moved[n_moved++] = Moved{adj, ast, own.numel(), scratch()};
        adj = moved[n_moved - 1].scratch;
        ast = rst;
      }
    });
    if (overflow)
      throw_error<ValueError>("cuda backward: a differentiated region of shape ", shape, " has more than ", max_moved,
                              " broadcast buffer leaves; split the expression (let()) so each region has fewer");
    // One buffer read through two layouts would have two elements add into one address.
    bool clash = false;
    {
      const void* seen[64];
      Strides seen_st[64];
      int n_seen = 0;
      b.adjoints([&]<class U>(U*& adj, Strides& ast, const Shape&) {
        for (int i = 0; i < n_seen; ++i)
          if (seen[i] == adj)
            for (int d = 0; d < max_rank; ++d) clash = clash || seen_st[i][d] != ast[d];
        if (n_seen < 64) {
          seen[n_seen] = adj;
          seen_st[n_seen++] = ast;
        }
      });
    }
    // Inputs' slots: all occurrences alike; scratch when they are broadcast.
    const SlotLayouts<K> slots = slot_layouts<K>(b);
    if constexpr (K > 0)
      for (std::size_t k = 0; k < K; ++k) {
        if (slots.count[k] == 0) continue;
        if (!slots.alike[k]) clash = true;
        else if (broadcast(slots.st[k])) mem.scratch[k] = scratch();
      }
    if (clash)
      throw_error<ValueError>("cuda backward: a differentiated region of shape ", shape,
                              " reads one tensor through two layouts (such as x + transpose(x)); on the GPU their adjoints "
                              "would race: materialise one of the reads (let()) so the region reads each tensor one way");
    cuda::backward_general_kernel<Sum><<<grid, cuda::block, 0, ex.queue()>>>(b, seed, mem, p, n, partials);
    cuda_check(cudaGetLastError(), "backward (general) kernel launch");
    for (int i = 0; i < n_moved; ++i) add_reduced(ex, moved[i].scratch, p, moved[i].adj, moved[i].ast, moved[i].n);
    if constexpr (K > 0)
      for (std::size_t k = 0; k < K; ++k)
        if (mem.scratch[k]) add_reduced(ex, mem.scratch[k], p, sinks.g[k], slots.st[k], slots.n[k]);
  }

  // target (n elements) += scratch (the region's padded shape p, contiguous)
  // summed over the axes where target's aligned strides tst are 0.
  template <class Ex, class T>
  static void add_reduced(const Ex& ex, const T* scratch, const Shape& p, T* target, const Strides& tst, index_t n) {
    auto tmp = ex.workspace().template alloc<T>(Shape{n});
    const Strides c = contiguous_strides(p);
    reduce_into<SumOp>(ex, BoundTensor<T>{scratch, c, p, c}, p, tmp.data, tst, n);
    cuda::add_kernel<<<cuda::grid_for(n, cuda::block), cuda::block, 0, ex.queue()>>>(target, tmp.data, n);
    cuda_check(cudaGetLastError(), "adjoint add kernel launch");
  }

  // A device word for a kernel's first bad row, set to "none".
  template <class Ex>
  static unsigned long long* bad_mark(const Ex& ex) {
    unsigned long long* bad = ex.workspace().template alloc<unsigned long long>(Shape{}).data;
    cuda_check(cudaMemsetAsync(bad, 0xff, sizeof(unsigned long long), ex.queue()), "bad-index mark reset");
    return bad;
  }

  // The first bad row a kernel marked, or -1; waits for the stream.
  template <class Ex>
  static index_t first_bad(const Ex& ex, const unsigned long long* bad, const char* what) {
    unsigned long long h = cuda::no_bad_row;
    cuda_check(cudaMemcpyAsync(&h, bad, sizeof h, cudaMemcpyDeviceToHost, ex.queue()), what);
    cuda_check(cudaStreamSynchronize(ex.queue()), what);
    return h == cuda::no_bad_row ? index_t(-1) : static_cast<index_t>(h);
  }

  // One integer from device memory, for an error message.
  template <class Ex, class I>
  static long long read_index(const Ex& ex, const I* p) {
    I v{};
    cuda_check(cudaMemcpyAsync(&v, p, sizeof v, cudaMemcpyDeviceToHost, ex.queue()), "bad index read");
    cuda_check(cudaStreamSynchronize(ex.queue()), "bad index read");
    return static_cast<long long>(v);
  }
};

static_assert(DeviceKernels<weft::cuda>, "the CUDA kernels must provide the whole primitive set of kernels/dispatch.hpp");

}  // namespace weft::kernels
