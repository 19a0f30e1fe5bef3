// GPU scaled dot-product attention: device_attention<weft::cuda> for
// kernels/dispatch.hpp (expr/attention.hpp's fused node on an
// Exec<weft::cuda>). The CPU version (kernels/cpu/attention.hpp) is the
// reference: same schedule, same masking, same dropout mask.
//
// Dimension legend: N0, N1 the batch axes (B, H), Tq queries, Tk keys, D the
// query/key width, Dv the value width (both at most 128); BR = 16 query rows
// and BC = 32 keys per tile; b = b0 N1 + b1 the flattened batch index.
//
// Forward: one block of 4 warps per (query tile, b1, b0). The query tile
// (BR, D) sits in shared memory; key and value tiles (BC, D+1) and (BC, Dv)
// are loaded in turn. Warp w owns rows w, w+4, w+8, w+12; for each, lane j
// computes the score of key j0 + j, the row's running maximum m and sum l are
// updated with warp shuffles (online softmax: the partial output is
// rescaled by exp(m_old - m_new)), and each lane accumulates Dv/32 output
// columns from the probabilities broadcast lane by lane. At the end O /= l
// and lse = m + log l. The (Tq, Tk) matrix never exists.
//
// Backward recomputes P = exp(s q k^T - lse) tile by tile, without atomics
// (so the same bits every run): Dr = rowsum(dO * O) first (one warp a row),
// then one kernel with a block per key tile that walks the query tiles and
// accumulates dK_j, dV_j in shared memory, and one with a block per query
// tile that walks the key tiles and accumulates dQ_i. Both compute the
// (BR, BC) tiles of P (dropped out) and dS = P * (dP z - Dr) with the same
// device function (attn_tile_grads), so S and dP are computed twice: the
// price of having no atomics.
//
// Causal masking is top-left aligned (key j visible to query i iff j <= i):
// key tiles past a query tile's last row are skipped. Dropout (inverted,
// rate p) multiplies P by keep / (1 - p) after the row statistics, keep
// drawn as hash_uniform(seed, element of the (N0, N1, Tq, Tk) matrix): the
// CPU's mask, bit for bit (core/random.hpp is WEFT_HD).
//
// What it reaches: a plain FP32 (or FP64) kernel on CUDA cores, no tensor
// cores, no pipelining of tile loads; correctness first. Not measured here
// (written on a machine without a GPU); expect a small fraction of
// FlashAttention-2's speed. Shared memory: forward (BR D + BC (D+1) + BC Dv)
// elements (41 KiB at D = Dv = 128, float), backward up to 86 KiB (float) /
// 173 KiB (double), above 48 KiB by opting in per kernel.
// Opt-in header: compile with nvcc.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "../../core/error.hpp"
#include "../../core/math.hpp"
#include "../../core/random.hpp"
#include "../dispatch.hpp"
#include "exec.cuh"
#include "memory.cuh"

namespace weft::kernels::cuda {

inline constexpr int attn_br = 16;                            // query rows per tile
inline constexpr int attn_bc = 32;                            // keys per tile: one per lane
inline constexpr int attn_warps = 4;
inline constexpr int attn_threads = 32 * attn_warps;
inline constexpr int attn_rows_per_warp = attn_br / attn_warps;  // rows w, w + 4, ...
inline constexpr int attn_max_d = 128;
inline constexpr int attn_cols_per_lane = attn_max_d / 32;      // output columns lane + 32 c
static_assert(attn_br % attn_warps == 0 && attn_bc == 32, "a warp owns whole rows; a lane owns one key of a tile");

// The inverted-dropout factor of element (row, col) of batch b's (Tq, Tk)
// matrix: kernels/cpu/attention.hpp's detail::keep_factor, same counter.
template <class T>
WEFT_HD WEFT_INLINE T attn_keep(const AttentionParams& p, index_t b, index_t row, index_t col, T inv_keep) {
  const auto idx = static_cast<std::uint64_t>((b * p.tq + row) * p.tk + col);
  return hash_uniform(p.seed, idx) >= p.dropout ? inv_keep : T(0);
}

template <class T>
__device__ WEFT_INLINE T attn_warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const T w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}
// Butterfly: every lane ends with the same bits (each pairwise add is commutative).
template <class T>
__device__ WEFT_INLINE T attn_warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ WEFT_INLINE index_t attn_min(index_t a, index_t b) { return a < b ? a : b; }

// ---------------------------------------------------------------- forward

// grid (ceil(Tq / BR), N1, N0), attn_threads threads, attn_forward_smem bytes.
template <class T>
__global__ void __launch_bounds__(attn_threads)
    attention_forward_kernel(AttentionParams p, AttnOperand<const T> q, AttnOperand<const T> k, AttnOperand<const T> v, T* o,
                             T* lse) {
  extern __shared__ __align__(16) unsigned char attn_smem[];
  const index_t d = p.d, dv = p.dv;
  T* Qs = reinterpret_cast<T*>(attn_smem);  // (BR, D)
  T* Ks = Qs + attn_br * d;                 // (BC, D + 1): padded, lane j reads row j
  T* Vs = Ks + attn_bc * (d + 1);           // (BC, Dv)
  const index_t b1 = blockIdx.y, b0 = blockIdx.z, b = b0 * p.n1 + b1;
  const index_t i0 = static_cast<index_t>(blockIdx.x) * attn_br;
  const index_t br = attn_min(attn_br, p.tq - i0);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const T* Q = q.at(b0, b1);
  const T* K = k.at(b0, b1);
  const T* V = v.at(b0, b1);
  const T scale = static_cast<T>(p.scale);
  const T inv_keep = p.dropout > 0 ? T(1) / (T(1) - static_cast<T>(p.dropout)) : T(1);
  const T ninf = -std::numeric_limits<T>::infinity();

  for (index_t e = threadIdx.x; e < br * d; e += attn_threads) Qs[e] = Q[(i0 + e / d) * q.st + e % d];
  T acc[attn_rows_per_warp][attn_cols_per_lane];
  T m[attn_rows_per_warp], l[attn_rows_per_warp];
#pragma unroll
  for (int u = 0; u < attn_rows_per_warp; ++u) {
    m[u] = ninf;
    l[u] = T(0);
#pragma unroll
    for (int c = 0; c < attn_cols_per_lane; ++c) acc[u][c] = T(0);
  }

  const index_t kend = p.causal ? attn_min(p.tk, i0 + br) : p.tk;
  for (index_t j0 = 0; j0 < kend; j0 += attn_bc) {
    const index_t bc = attn_min(attn_bc, kend - j0);
    __syncthreads();  // the previous tiles are consumed (and Qs written, the first time)
    for (index_t e = threadIdx.x; e < bc * d; e += attn_threads) Ks[(e / d) * (d + 1) + e % d] = K[(j0 + e / d) * k.st + e % d];
    for (index_t e = threadIdx.x; e < bc * dv; e += attn_threads) Vs[e] = V[(j0 + e / dv) * v.st + e % dv];
    __syncthreads();
#pragma unroll
    for (int u = 0; u < attn_rows_per_warp; ++u) {
      const int r = warp + attn_warps * u;
      if (r >= br) continue;  // warp-uniform
      const index_t i = i0 + r, j = j0 + lane;
      const bool visible = lane < bc && (!p.causal || j <= i);
      T s = ninf;
      if (visible) {
        T dot = T(0);
        for (index_t c = 0; c < d; ++c) dot += Qs[r * d + c] * Ks[lane * (d + 1) + c];
        s = dot * scale;
      }
      const T mx = attn_warp_max(s);
      const T mnew = mx > m[u] ? mx : m[u];
      if (mnew == ninf) continue;  // nothing visible yet (uniform: the max is exact on every lane)
      const T corr = m[u] == ninf ? T(0) : math::exp(m[u] - mnew);
      T pr = visible ? math::exp(s - mnew) : T(0);
      l[u] = l[u] * corr + attn_warp_sum(pr);
      m[u] = mnew;
      if (p.dropout > 0 && visible) pr *= attn_keep(p, b, i, j, inv_keep);
#pragma unroll
      for (int c = 0; c < attn_cols_per_lane; ++c) acc[u][c] *= corr;
      for (int jj = 0; jj < bc; ++jj) {
        const T pj = __shfl_sync(0xffffffffu, pr, jj);
#pragma unroll
        for (int c = 0; c < attn_cols_per_lane; ++c) {
          const index_t col = lane + 32 * c;
          if (col < dv) acc[u][c] += pj * Vs[jj * dv + col];
        }
      }
    }
  }
#pragma unroll
  for (int u = 0; u < attn_rows_per_warp; ++u) {
    const int r = warp + attn_warps * u;
    if (r >= br) continue;
    const index_t row = b * p.tq + i0 + r;
    const T inv = l[u] > T(0) ? T(1) / l[u] : T(0);
#pragma unroll
    for (int c = 0; c < attn_cols_per_lane; ++c) {
      const index_t col = lane + 32 * c;
      if (col < dv) o[row * dv + col] = acc[u][c] * inv;
    }
    if (lane == 0) lse[row] = l[u] > T(0) ? m[u] + math::log(l[u]) : ninf;
  }
}

// ---------------------------------------------------------------- backward

// Dr (rows) = rowsum(dO * O), one warp a row.
template <class T>
__global__ void attention_dr_kernel(const T* o, const T* dout, T* dr, index_t rows, index_t dv) {
  const int lane = threadIdx.x % 32;
  const index_t warps = static_cast<index_t>(gridDim.x) * (blockDim.x / 32);
  for (index_t r = blockIdx.x * static_cast<index_t>(blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
    T s = T(0);
    for (index_t c = lane; c < dv; c += 32) s += dout[r * dv + c] * o[r * dv + c];
    s = attn_warp_sum(s);
    if (lane == 0) dr[r] = s;
  }
}

// The (BR, BC) tile of P with dropout applied (Ps) and of dS = P (dP z - Dr)
// (Ss), zero where not visible. Qs (BR, D), dOs (BR, Dv), Ks (BC, D+1),
// Vs (BC, Dv+1), Ls and Drs (BR) in shared memory; every thread calls it.
template <class T>
__device__ void attn_tile_grads(const AttentionParams& p, index_t b, index_t i0, index_t br, index_t j0, index_t bc,
                                const T* Qs, const T* dOs, const T* Ks, const T* Vs, const T* Ls, const T* Drs, T* Ps, T* Ss,
                                T scale, T inv_keep) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const index_t d = p.d, dv = p.dv;
#pragma unroll
  for (int u = 0; u < attn_rows_per_warp; ++u) {
    const int r = warp + attn_warps * u;
    const index_t i = i0 + r, j = j0 + lane;
    T pv = T(0), ds = T(0);
    if (r < br && lane < bc && (!p.causal || j <= i)) {
      T s = T(0), dp = T(0);
      for (index_t c = 0; c < d; ++c) s += Qs[r * d + c] * Ks[lane * (d + 1) + c];
      for (index_t c = 0; c < dv; ++c) dp += dOs[r * dv + c] * Vs[lane * (dv + 1) + c];
      const T pr = math::exp(s * scale - Ls[r]);
      const T z = p.dropout > 0 ? attn_keep(p, b, i, j, inv_keep) : T(1);
      ds = pr * (dp * z - Drs[r]);
      pv = pr * z;
    }
    Ps[r * attn_bc + lane] = pv;
    Ss[r * attn_bc + lane] = ds;
  }
}

// Loads query rows [i0, i0 + br) of Q, dO, lse and Dr into shared memory.
template <class T>
__device__ void attn_load_queries(const AttentionParams& p, index_t b, const T* Q, index_t qst, const T* dO, const T* L,
                                  const T* Dr, index_t i0, index_t br, T* Qs, T* dOs, T* Ls, T* Drs) {
  const index_t d = p.d, dv = p.dv;
  for (index_t e = threadIdx.x; e < br * d; e += attn_threads) Qs[e] = Q[(i0 + e / d) * qst + e % d];
  for (index_t e = threadIdx.x; e < br * dv; e += attn_threads) dOs[e] = dO[(b * p.tq + i0 + e / dv) * dv + e % dv];
  for (index_t e = threadIdx.x; e < br; e += attn_threads) {
    Ls[e] = L[b * p.tq + i0 + e];
    Drs[e] = Dr[b * p.tq + i0 + e];
  }
}
// Loads keys [j0, j0 + bc) of K and V into padded shared tiles.
template <class T>
__device__ void attn_load_keys(const AttentionParams& p, const T* K, index_t kst, const T* V, index_t vst, index_t j0,
                               index_t bc, T* Ks, T* Vs) {
  const index_t d = p.d, dv = p.dv;
  for (index_t e = threadIdx.x; e < bc * d; e += attn_threads) Ks[(e / d) * (d + 1) + e % d] = K[(j0 + e / d) * kst + e % d];
  for (index_t e = threadIdx.x; e < bc * dv; e += attn_threads)
    Vs[(e / dv) * (dv + 1) + e % dv] = V[(j0 + e / dv) * vst + e % dv];
}

// dK, dV of one key tile: grid (ceil(Tk / BC), N1, N0).
template <class T>
__global__ void __launch_bounds__(attn_threads)
    attention_dkdv_kernel(AttentionParams p, AttnOperand<const T> q, AttnOperand<const T> k, AttnOperand<const T> v,
                          const T* dout, const T* lse, const T* dr, T* dk, T* dv_out) {
  extern __shared__ __align__(16) unsigned char attn_smem[];
  const index_t d = p.d, dv = p.dv;
  T* Ks = reinterpret_cast<T*>(attn_smem);  // (BC, D + 1)
  T* Vs = Ks + attn_bc * (d + 1);           // (BC, Dv + 1)
  T* dKs = Vs + attn_bc * (dv + 1);         // (BC, D)
  T* dVs = dKs + attn_bc * d;               // (BC, Dv)
  T* Qs = dVs + attn_bc * dv;               // (BR, D)
  T* dOs = Qs + attn_br * d;                // (BR, Dv)
  T* Ps = dOs + attn_br * dv;               // (BR, BC)
  T* Ss = Ps + attn_br * attn_bc;           // (BR, BC)
  T* Ls = Ss + attn_br * attn_bc;           // (BR)
  T* Drs = Ls + attn_br;                    // (BR)
  const index_t b1 = blockIdx.y, b0 = blockIdx.z, b = b0 * p.n1 + b1;
  const index_t j0 = static_cast<index_t>(blockIdx.x) * attn_bc;
  const index_t bc = attn_min(attn_bc, p.tk - j0);
  const T scale = static_cast<T>(p.scale);
  const T inv_keep = p.dropout > 0 ? T(1) / (T(1) - static_cast<T>(p.dropout)) : T(1);

  attn_load_keys(p, k.at(b0, b1), k.st, v.at(b0, b1), v.st, j0, bc, Ks, Vs);
  for (index_t e = threadIdx.x; e < attn_bc * d; e += attn_threads) dKs[e] = T(0);
  for (index_t e = threadIdx.x; e < attn_bc * dv; e += attn_threads) dVs[e] = T(0);
  // Causal: query rows before j0 see no key of this tile.
  for (index_t i0 = p.causal ? j0 : 0; i0 < p.tq; i0 += attn_br) {
    const index_t br = attn_min(attn_br, p.tq - i0);
    __syncthreads();  // the previous query tile is consumed (and the key tiles loaded, the first time)
    attn_load_queries(p, b, q.at(b0, b1), q.st, dout, lse, dr, i0, br, Qs, dOs, Ls, Drs);
    __syncthreads();
    attn_tile_grads(p, b, i0, br, j0, bc, Qs, dOs, Ks, Vs, Ls, Drs, Ps, Ss, scale, inv_keep);
    __syncthreads();
    // dV_j += P^T dO_i,  dK_j += s dS^T Q_i: each element owned by one thread.
    for (index_t e = threadIdx.x; e < bc * dv; e += attn_threads) {
      const index_t j = e / dv, c = e % dv;
      T a = T(0);
      for (index_t r = 0; r < br; ++r) a += Ps[r * attn_bc + j] * dOs[r * dv + c];
      dVs[e] += a;
    }
    for (index_t e = threadIdx.x; e < bc * d; e += attn_threads) {
      const index_t j = e / d, c = e % d;
      T a = T(0);
      for (index_t r = 0; r < br; ++r) a += Ss[r * attn_bc + j] * Qs[r * d + c];
      dKs[e] += scale * a;
    }
  }
  __syncthreads();
  for (index_t e = threadIdx.x; e < bc * d; e += attn_threads) dk[(b * p.tk + j0) * d + e] = dKs[e];
  for (index_t e = threadIdx.x; e < bc * dv; e += attn_threads) dv_out[(b * p.tk + j0) * dv + e] = dVs[e];
}

// dQ of one query tile: grid (ceil(Tq / BR), N1, N0).
template <class T>
__global__ void __launch_bounds__(attn_threads)
    attention_dq_kernel(AttentionParams p, AttnOperand<const T> q, AttnOperand<const T> k, AttnOperand<const T> v,
                        const T* dout, const T* lse, const T* dr, T* dq) {
  extern __shared__ __align__(16) unsigned char attn_smem[];
  const index_t d = p.d, dv = p.dv;
  T* Qs = reinterpret_cast<T*>(attn_smem);  // (BR, D)
  T* dOs = Qs + attn_br * d;                // (BR, Dv)
  T* Ls = dOs + attn_br * dv;               // (BR)
  T* Drs = Ls + attn_br;                    // (BR)
  T* Ks = Drs + attn_br;                    // (BC, D + 1)
  T* Vs = Ks + attn_bc * (d + 1);           // (BC, Dv + 1)
  T* Ps = Vs + attn_bc * (dv + 1);          // (BR, BC)
  T* Ss = Ps + attn_br * attn_bc;           // (BR, BC)
  T* dQs = Ss + attn_br * attn_bc;          // (BR, D)
  const index_t b1 = blockIdx.y, b0 = blockIdx.z, b = b0 * p.n1 + b1;
  const index_t i0 = static_cast<index_t>(blockIdx.x) * attn_br;
  const index_t br = attn_min(attn_br, p.tq - i0);
  const T scale = static_cast<T>(p.scale);
  const T inv_keep = p.dropout > 0 ? T(1) / (T(1) - static_cast<T>(p.dropout)) : T(1);

  attn_load_queries(p, b, q.at(b0, b1), q.st, dout, lse, dr, i0, br, Qs, dOs, Ls, Drs);
  for (index_t e = threadIdx.x; e < attn_br * d; e += attn_threads) dQs[e] = T(0);
  const index_t kend = p.causal ? attn_min(p.tk, i0 + br) : p.tk;
  for (index_t j0 = 0; j0 < kend; j0 += attn_bc) {
    const index_t bc = attn_min(attn_bc, kend - j0);
    __syncthreads();
    attn_load_keys(p, k.at(b0, b1), k.st, v.at(b0, b1), v.st, j0, bc, Ks, Vs);
    __syncthreads();
    attn_tile_grads(p, b, i0, br, j0, bc, Qs, dOs, Ks, Vs, Ls, Drs, Ps, Ss, scale, inv_keep);
    __syncthreads();
    // dQ_i += s dS K_j
    for (index_t e = threadIdx.x; e < br * d; e += attn_threads) {
      const index_t r = e / d, c = e % d;
      T a = T(0);
      for (index_t j = 0; j < bc; ++j) a += Ss[r * attn_bc + j] * Ks[j * (d + 1) + c];
      dQs[e] += scale * a;
    }
  }
  __syncthreads();
  for (index_t e = threadIdx.x; e < br * d; e += attn_threads) dq[(b * p.tq + i0) * d + e] = dQs[e];
}

// ---------------------------------------------------------------- host side

inline void check_attention(const AttentionParams& p, const char* op) {
  if (p.d < 1 || p.d > attn_max_d || p.dv < 1 || p.dv > attn_max_d)
    throw_error<ShapeError>(op, ": the CUDA attention handles widths D and Dv from 1 to ", attn_max_d, ", got D = ", p.d,
                            ", Dv = ", p.dv);
  if (p.n0 > 65535 || p.n1 > 65535)
    throw_error<ShapeError>(op, ": batch axes (", p.n0, ", ", p.n1, ") exceed the CUDA grid's 65535 per axis");
  if (!(p.dropout >= 0 && p.dropout < 1)) throw_error<ValueError>(op, ": dropout ", p.dropout, " is not in [0, 1)");
}

// Opts a kernel into more than 48 KiB of dynamic shared memory when it needs it.
template <class K>
void attn_smem_opt_in(K kernel, std::size_t bytes, const char* what) {
  if (bytes > 48 * 1024)
    cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), what);
}

template <class T>
std::size_t attention_forward_smem(const AttentionParams& p) {
  return static_cast<std::size_t>(attn_br * p.d + attn_bc * (p.d + 1) + attn_bc * p.dv) * sizeof(T);
}
template <class T>
std::size_t attention_dkdv_smem(const AttentionParams& p) {
  return static_cast<std::size_t>(attn_bc * (p.d + 1) + attn_bc * (p.dv + 1) + attn_bc * p.d + attn_bc * p.dv + attn_br * p.d +
                                  attn_br * p.dv + 2 * attn_br * attn_bc + 2 * attn_br) *
         sizeof(T);
}
template <class T>
std::size_t attention_dq_smem(const AttentionParams& p) {
  return static_cast<std::size_t>(attn_br * p.d + attn_br * p.dv + 2 * attn_br + attn_bc * (p.d + 1) + attn_bc * (p.dv + 1) +
                                  2 * attn_br * attn_bc + attn_br * p.d) *
         sizeof(T);
}

inline dim3 attn_grid(index_t tiles, const AttentionParams& p) {
  return dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(p.n1), static_cast<unsigned>(p.n0));
}

// o (N0, N1, Tq, Dv) and lse (N0, N1, Tq), contiguous.
template <class Ex, class T>
void attention_forward(const Ex& ex, const AttentionParams& p, AttnOperand<const T> q, AttnOperand<const T> k,
                       AttnOperand<const T> v, T* o, T* lse) {
  check_attention(p, "attention_forward");
  if (p.n0 == 0 || p.n1 == 0 || p.tq == 0) return;
  const std::size_t smem = attention_forward_smem<T>(p);
  attn_smem_opt_in(attention_forward_kernel<T>, smem, "attention_forward shared-memory opt-in");
  attention_forward_kernel<T><<<attn_grid((p.tq + attn_br - 1) / attn_br, p), attn_threads, smem, ex.queue()>>>(p, q, k, v,
                                                                                                              o, lse);
  cuda_check(cudaGetLastError(), "attention_forward kernel launch");
}

// dq (N0, N1, Tq, D), dk (N0, N1, Tk, D), dv (N0, N1, Tk, Dv): contiguous,
// overwritten; o, dout (N0, N1, Tq, Dv) and lse (N0, N1, Tq) contiguous.
// Scratch: Dr (N0 N1 Tq) from the executor's workspace.
template <class Ex, class T>
void attention_backward(const Ex& ex, const AttentionParams& p, AttnOperand<const T> q, AttnOperand<const T> k,
                        AttnOperand<const T> v, const T* o, const T* dout, const T* lse, T* dq, T* dk, T* dv) {
  check_attention(p, "attention_backward");
  if (p.n0 == 0 || p.n1 == 0) return;
  const index_t rows = p.n0 * p.n1 * p.tq;
  T* dr = ex.workspace().template alloc<T>(Shape{rows}).data;
  if (rows > 0) {
    const int warps_per_block = 8;
    const index_t blocks = (rows + warps_per_block - 1) / warps_per_block;
    attention_dr_kernel<T><<<static_cast<unsigned>(blocks < 65535 * 8 ? blocks : 65535 * 8), 32 * warps_per_block, 0,
                             ex.queue()>>>(o, dout, dr, rows, p.dv);
    cuda_check(cudaGetLastError(), "attention_backward Dr kernel launch");
  }
  if (p.tk > 0) {
    const std::size_t smem = attention_dkdv_smem<T>(p);
    attn_smem_opt_in(attention_dkdv_kernel<T>, smem, "attention_backward dK/dV shared-memory opt-in");
    attention_dkdv_kernel<T><<<attn_grid((p.tk + attn_bc - 1) / attn_bc, p), attn_threads, smem, ex.queue()>>>(
        p, q, k, v, dout, lse, dr, dk, dv);
    cuda_check(cudaGetLastError(), "attention_backward dK/dV kernel launch");
  }
  if (p.tq > 0) {
    const std::size_t smem = attention_dq_smem<T>(p);
    attn_smem_opt_in(attention_dq_kernel<T>, smem, "attention_backward dQ shared-memory opt-in");
    attention_dq_kernel<T><<<attn_grid((p.tq + attn_br - 1) / attn_br, p), attn_threads, smem, ex.queue()>>>(p, q, k, v, dout,
                                                                                                          lse, dr, dq);
    cuda_check(cudaGetLastError(), "attention_backward dQ kernel launch");
  }
}

}  // namespace weft::kernels::cuda

namespace weft::kernels {

// The GPU's attention for kernels/dispatch.hpp; scratch from the executor's workspace.
template <>
struct device_attention<weft::cuda> {
  template <class Ex, class T>
  static void forward(const Ex& ex, const AttentionParams& p, AttnOperand<const T> q, AttnOperand<const T> k,
                      AttnOperand<const T> v, T* o, T* lse) {
    cuda::attention_forward(ex, p, q, k, v, o, lse);
  }
  template <class Ex, class T>
  static void backward(const Ex& ex, const AttentionParams& p, AttnOperand<const T> q, AttnOperand<const T> k,
                       AttnOperand<const T> v, const T* o, const T* dout, const T* lse, T* dq, T* dk, T* dv) {
    cuda::attention_backward(ex, p, q, k, v, o, dout, lse, dq, dk, dv);
  }
};
static_assert(DeviceAttention<weft::cuda>, "the CUDA attention must satisfy DeviceAttention of kernels/dispatch.hpp");

}  // namespace weft::kernels
