// CPU scaled dot-product attention: the fused kernels behind
// expr/attention.hpp (device_attention<cpu>, reached through
// kernels/dispatch.hpp), and the materialised reference the tests compare them
// with. Opt-in header: the block products go through CBLAS (blas.hpp).
//
// Dimension legend: N0, N1 the two batch axes (B, H), Tq queries, Tk keys,
// D the query/key width, Dv the value width; BR x BC one tile (query rows x
// key columns).
//
// Forward (FlashAttention-2's schedule, one query tile at a time): for each
// key tile, S = s Q_i K_j^T (one gemm into a BR x BC tile), the running row
// maximum m and sum l are updated (online softmax: earlier partial outputs
// are rescaled by exp(m_old - m_new)), and O_i += P V_j (one gemm). At the end
// O_i /= l and the row's log-sum-exp lse = m + log l is saved: N0 N1 Tq
// numbers, all that backward needs. The T x T matrix never exists; scratch
// is one BR x BC tile.
//
// Backward recomputes P = exp(s Q_i K_j^T - lse) tile by tile, key tile
// outer, query tile inner:
//   dV_j += P^T dO_i,  dP = dO_i V_j^T,  dS = P * (dP - Dr),  Dr = rowsum(dO * O)
//   dQ_i += s dS K_j,  dK_j += s dS^T Q_i
// Scratch: two tiles and Dr (N0 N1 Tq).
//
// Causal masking is top-left aligned (query i sees keys j <= i, as PyTorch's
// is_causal): key tiles past the diagonal are skipped, the diagonal tile's
// masked entries are zeroed after the exponential. Dropout (inverted, rate p)
// multiplies P by keep(u) / (1 - p) after the row statistics, with u drawn
// from hash_uniform(seed, element index of the (N0, N1, Tq, Tk) matrix), so
// backward redraws the same mask; Dr = rowsum(dO * O) still holds with it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../../core/error.hpp"
#include "../../core/math.hpp"
#include "../../core/random.hpp"
#include "../../core/shape.hpp"
#include "../dispatch.hpp"
#include "blas.hpp"

namespace weft::kernels::cpu {

// Tile sizes. Measured on this machine (AMD EPYC, AVX2, one thread, D = 64,
// T = 1024, bench/bench_attention.cpp): BR 64 x BC 128 keeps Q_i (32 KiB),
// K_j and V_j (32 KiB each) and the two tiles (32 KiB each) in L2.
inline constexpr index_t attention_br = 64;
inline constexpr index_t attention_bc = 128;

// Row-major gemm on raw pointers: C (m, n; ldc) = alpha op(A) op(B) + beta C.
template <class T>
void gemm_raw(bool ta, bool tb, index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
              T beta, T* c, index_t ldc) {
  if (m == 0 || n == 0) return;
  const auto at = ta ? CblasTrans : CblasNoTrans, bt = tb ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, at, bt, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
                static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
  else
    cblas_dgemm(CblasRowMajor, at, bt, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
                static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

namespace detail {

// Eight independent lanes, so the loops vectorise without reassociating.
template <class T>
WEFT_INLINE T lane_max(const T* x, index_t n) {
  T acc[8];
  for (int u = 0; u < 8; ++u) acc[u] = -std::numeric_limits<T>::infinity();
  const index_t n8 = n - n % 8;
  for (index_t c = 0; c < n8; c += 8)
    for (int u = 0; u < 8; ++u) acc[u] = x[c + u] > acc[u] ? x[c + u] : acc[u];
  T m = -std::numeric_limits<T>::infinity();
  for (index_t c = n8; c < n; ++c) m = x[c] > m ? x[c] : m;
  for (int u = 0; u < 8; ++u) m = acc[u] > m ? acc[u] : m;
  return m;
}

// x[c] = exp(x[c] - m) for c < n; returns their sum.
template <class T>
WEFT_INLINE T exp_sum(T* x, index_t n, T m) {
  for (index_t c = 0; c < n; ++c) x[c] = math::exp(x[c] - m);
  T acc[8] = {};
  const index_t n8 = n - n % 8;
  for (index_t c = 0; c < n8; c += 8)
    for (int u = 0; u < 8; ++u) acc[u] += x[c + u];
  T s = 0;
  for (index_t c = n8; c < n; ++c) s += x[c];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + s;
}

template <class T>
WEFT_INLINE T dot(const T* a, const T* b, index_t n) {
  T acc[8] = {};
  const index_t n8 = n - n % 8;
  for (index_t c = 0; c < n8; c += 8)
    for (int u = 0; u < 8; ++u) acc[u] += a[c + u] * b[c + u];
  T s = 0;
  for (index_t c = n8; c < n; ++c) s += a[c] * b[c];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + s;
}

// Inverted-dropout factor of element (row, col) of batch b's (Tq, Tk) matrix.
template <class T>
WEFT_INLINE T keep_factor(const AttentionParams& p, index_t b, index_t row, index_t col, T inv_keep) {
  const auto idx = static_cast<std::uint64_t>((b * p.tq + row) * p.tk + col);
  return hash_uniform(p.seed, idx) >= p.dropout ? inv_keep : T(0);
}

// Number of keys of tile [j0, j0 + bc) query `row` sees.
WEFT_INLINE index_t visible(const AttentionParams& p, index_t row, index_t j0, index_t bc) {
  if (!p.causal) return bc;
  const index_t lim = row - j0 + 1;
  return lim < 0 ? 0 : (lim > bc ? bc : lim);
}

}  // namespace detail

// Scratch elements attention_forward needs.
inline index_t attention_forward_scratch() { return attention_br * attention_bc + 2 * attention_br; }

// o (N0, N1, Tq, Dv) and lse (N0, N1, Tq), contiguous. scratch: attention_forward_scratch()
// (for other tile sizes BR x BC: BR BC + 2 BR).
template <class T, index_t BR = attention_br, index_t BC = attention_bc>
void attention_forward(const AttentionParams& p, AttnOperand<const T> q, AttnOperand<const T> k, AttnOperand<const T> v,
                       T* o, T* lse, T* scratch) {
  const T scale = static_cast<T>(p.scale);
  const T inv_keep = p.dropout > 0 ? T(1) / (T(1) - static_cast<T>(p.dropout)) : T(1);
  const T ninf = -std::numeric_limits<T>::infinity();
  T* s = scratch;  // (BR, BC)
  T* m = s + BR * BC;
  T* l = m + BR;
  for (index_t b0 = 0; b0 < p.n0; ++b0)
    for (index_t b1 = 0; b1 < p.n1; ++b1) {
      const index_t b = b0 * p.n1 + b1;
      const T* Q = q.at(b0, b1);
      const T* K = k.at(b0, b1);
      const T* V = v.at(b0, b1);
      T* O = o + b * p.tq * p.dv;
      for (index_t i0 = 0; i0 < p.tq; i0 += BR) {
        const index_t br = std::min(BR, p.tq - i0);
        T* Oi = O + i0 * p.dv;  // (br, Dv)
        for (index_t r = 0; r < br; ++r) {
          m[r] = ninf;
          l[r] = T(0);
        }
        std::fill(Oi, Oi + br * p.dv, T(0));
        const index_t kend = p.causal ? std::min(p.tk, i0 + br) : p.tk;
        for (index_t j0 = 0; j0 < kend; j0 += BC) {
          const index_t bc = std::min(BC, kend - j0);
          gemm_raw(false, true, br, bc, p.d, scale, Q + i0 * q.st, q.st, K + j0 * k.st, k.st, T(0), s, BC);  // S (br, bc)
          for (index_t r = 0; r < br; ++r) {
            T* row = s + r * BC;
            const index_t lim = detail::visible(p, i0 + r, j0, bc);
            if (lim == 0) {
              std::fill(row, row + bc, T(0));
              continue;
            }
            const T mx = detail::lane_max(row, lim);
            const T mnew = mx > m[r] ? mx : m[r];
            const T corr = m[r] == ninf ? T(0) : math::exp(m[r] - mnew);
            const T sum = detail::exp_sum(row, lim, mnew);
            std::fill(row + lim, row + bc, T(0));
            l[r] = l[r] * corr + sum;
            m[r] = mnew;
            if (corr != T(1)) {
              T* orow = Oi + r * p.dv;
              for (index_t c = 0; c < p.dv; ++c) orow[c] *= corr;
            }
            if (p.dropout > 0)
              for (index_t c = 0; c < lim; ++c) row[c] *= detail::keep_factor(p, b, i0 + r, j0 + c, inv_keep);
          }
          gemm_raw(false, false, br, p.dv, bc, T(1), s, BC, V + j0 * v.st, v.st, T(1), Oi, p.dv);  // O_i += P V_j
        }
        for (index_t r = 0; r < br; ++r) {
          const T inv = l[r] > T(0) ? T(1) / l[r] : T(0);
          T* orow = Oi + r * p.dv;
          for (index_t c = 0; c < p.dv; ++c) orow[c] *= inv;
          lse[b * p.tq + i0 + r] = l[r] > T(0) ? m[r] + math::log(l[r]) : ninf;
        }
      }
    }
}

// Scratch elements attention_backward needs.
inline index_t attention_backward_scratch(const AttentionParams& p) {
  return 2 * attention_br * attention_bc + p.n0 * p.n1 * p.tq;
}

// dq (N0, N1, Tq, D), dk (N0, N1, Tk, D), dv (N0, N1, Tk, Dv): contiguous,
// overwritten. o, dout (N0, N1, Tq, Dv) and lse (N0, N1, Tq) contiguous.
// scratch: attention_backward_scratch(p) (for other tiles: 2 BR BC + N0 N1 Tq).
template <class T, index_t BR = attention_br, index_t BC = attention_bc>
void attention_backward(const AttentionParams& p, AttnOperand<const T> q, AttnOperand<const T> k, AttnOperand<const T> v,
                        const T* o, const T* dout, const T* lse, T* dq, T* dk, T* dv, T* scratch) {
  const T scale = static_cast<T>(p.scale);
  const T inv_keep = p.dropout > 0 ? T(1) / (T(1) - static_cast<T>(p.dropout)) : T(1);
  T* pt = scratch;           // (BR, BC): P, then P with dropout applied
  T* ds = pt + BR * BC;      // (BR, BC): dP, then dS
  T* dr = ds + BR * BC;      // (N0 N1 Tq): rowsum(dO * O)
  const index_t rows = p.n0 * p.n1 * p.tq;
  for (index_t r = 0; r < rows; ++r) dr[r] = detail::dot(dout + r * p.dv, o + r * p.dv, p.dv);
  std::fill(dq, dq + rows * p.d, T(0));
  std::fill(dk, dk + p.n0 * p.n1 * p.tk * p.d, T(0));
  std::fill(dv, dv + p.n0 * p.n1 * p.tk * p.dv, T(0));
  for (index_t b0 = 0; b0 < p.n0; ++b0)
    for (index_t b1 = 0; b1 < p.n1; ++b1) {
      const index_t b = b0 * p.n1 + b1;
      const T* Q = q.at(b0, b1);
      const T* K = k.at(b0, b1);
      const T* V = v.at(b0, b1);
      const T* dO = dout + b * p.tq * p.dv;
      const T* L = lse + b * p.tq;
      const T* Dr = dr + b * p.tq;
      T* dQ = dq + b * p.tq * p.d;
      T* dK = dk + b * p.tk * p.d;
      T* dV = dv + b * p.tk * p.dv;
      for (index_t j0 = 0; j0 < p.tk; j0 += BC) {
        const index_t bc = std::min(BC, p.tk - j0);
        for (index_t i0 = p.causal ? std::min(j0, p.tq) : 0; i0 < p.tq; i0 += BR) {
          const index_t br = std::min(BR, p.tq - i0);
          gemm_raw(false, true, br, bc, p.d, scale, Q + i0 * q.st, q.st, K + j0 * k.st, k.st, T(0), pt, BC);    // S
          gemm_raw(false, true, br, bc, p.dv, T(1), dO + i0 * p.dv, p.dv, V + j0 * v.st, v.st, T(0), ds, BC);  // dP
          for (index_t r = 0; r < br; ++r) {
            T* prow = pt + r * BC;
            T* drow = ds + r * BC;
            const index_t lim = detail::visible(p, i0 + r, j0, bc);
            const T lr = L[i0 + r], d = Dr[i0 + r];
            for (index_t c = 0; c < lim; ++c) prow[c] = math::exp(prow[c] - lr);
            if (p.dropout > 0) {
              for (index_t c = 0; c < lim; ++c) {
                const T z = detail::keep_factor(p, b, i0 + r, j0 + c, inv_keep);
                drow[c] = prow[c] * (drow[c] * z - d);
                prow[c] *= z;
              }
            } else {
              for (index_t c = 0; c < lim; ++c) drow[c] = prow[c] * (drow[c] - d);
            }
            std::fill(prow + lim, prow + bc, T(0));
            std::fill(drow + lim, drow + bc, T(0));
          }
          gemm_raw(true, false, bc, p.dv, br, T(1), pt, BC, dO + i0 * p.dv, p.dv, T(1), dV + j0 * p.dv, p.dv);  // dV_j
          gemm_raw(false, false, br, p.d, bc, scale, ds, BC, K + j0 * k.st, k.st, T(1), dQ + i0 * p.d, p.d);     // dQ_i
          gemm_raw(true, false, bc, p.d, br, scale, ds, BC, Q + i0 * q.st, q.st, T(1), dK + j0 * p.d, p.d);      // dK_j
        }
      }
    }
}

// ---------------------------------------------------------------- reference
// The materialised computation, plain loops, for the tests: per batch the
// whole (Tq, Tk) matrix P = softmax(s Q K^T) (masked, dropped out) is
// computed, then O = P V. Backward from the same matrix. scratch: 2 Tq Tk.

template <class T>
void attention_reference_forward(const AttentionParams& p, AttnOperand<const T> q, AttnOperand<const T> k,
                                 AttnOperand<const T> v, T* o, T* scratch) {
  const T inv_keep = p.dropout > 0 ? T(1) / (T(1) - static_cast<T>(p.dropout)) : T(1);
  T* P = scratch;
  for (index_t b0 = 0; b0 < p.n0; ++b0)
    for (index_t b1 = 0; b1 < p.n1; ++b1) {
      const index_t b = b0 * p.n1 + b1;
      for (index_t i = 0; i < p.tq; ++i) {
        T mx = -std::numeric_limits<T>::infinity();
        for (index_t j = 0; j < p.tk; ++j) {
          T acc = 0;
          for (index_t c = 0; c < p.d; ++c) acc += q.at(b0, b1)[i * q.st + c] * k.at(b0, b1)[j * k.st + c];
          P[i * p.tk + j] = (p.causal && j > i) ? -std::numeric_limits<T>::infinity() : acc * static_cast<T>(p.scale);
          mx = std::max(mx, P[i * p.tk + j]);
        }
        T z = 0;
        for (index_t j = 0; j < p.tk; ++j) z += (P[i * p.tk + j] = (p.causal && j > i) ? T(0) : std::exp(P[i * p.tk + j] - mx));
        for (index_t j = 0; j < p.tk; ++j) {
          P[i * p.tk + j] /= z;
          if (p.dropout > 0) P[i * p.tk + j] *= detail::keep_factor(p, b, i, j, inv_keep);
        }
        for (index_t c = 0; c < p.dv; ++c) {
          T acc = 0;
          for (index_t j = 0; j < p.tk; ++j) acc += P[i * p.tk + j] * v.at(b0, b1)[j * v.st + c];
          o[(b * p.tq + i) * p.dv + c] = acc;
        }
      }
    }
}

template <class T>
void attention_reference_backward(const AttentionParams& p, AttnOperand<const T> q, AttnOperand<const T> k,
                                  AttnOperand<const T> v, const T* dout, T* dq, T* dk, T* dv, T* scratch) {
  const T inv_keep = p.dropout > 0 ? T(1) / (T(1) - static_cast<T>(p.dropout)) : T(1);
  const T s = static_cast<T>(p.scale);
  T* P = scratch;             // softmax, before dropout
  T* G = scratch + p.tq * p.tk;  // dP with respect to the softmax
  for (index_t b0 = 0; b0 < p.n0; ++b0)
    for (index_t b1 = 0; b1 < p.n1; ++b1) {
      const index_t b = b0 * p.n1 + b1;
      const T *Q = q.at(b0, b1), *K = k.at(b0, b1), *V = v.at(b0, b1), *dO = dout + b * p.tq * p.dv;
      T *dQ = dq + b * p.tq * p.d, *dK = dk + b * p.tk * p.d, *dV = dv + b * p.tk * p.dv;
      for (index_t i = 0; i < p.tq; ++i) {
        T mx = -std::numeric_limits<T>::infinity();
        for (index_t j = 0; j < p.tk; ++j) {
          T acc = 0;
          for (index_t c = 0; c < p.d; ++c) acc += Q[i * q.st + c] * K[j * k.st + c];
          P[i * p.tk + j] = (p.causal && j > i) ? -std::numeric_limits<T>::infinity() : acc * s;
          mx = std::max(mx, P[i * p.tk + j]);
        }
        T z = 0;
        for (index_t j = 0; j < p.tk; ++j) z += (P[i * p.tk + j] = (p.causal && j > i) ? T(0) : std::exp(P[i * p.tk + j] - mx));
        for (index_t j = 0; j < p.tk; ++j) P[i * p.tk + j] /= z;
      }
      std::fill(dV, dV + p.tk * p.dv, T(0));
      std::fill(dQ, dQ + p.tq * p.d, T(0));
      std::fill(dK, dK + p.tk * p.d, T(0));
      for (index_t i = 0; i < p.tq; ++i) {
        T dot = 0;
        for (index_t j = 0; j < p.tk; ++j) {
          const T z = p.dropout > 0 ? detail::keep_factor(p, b, i, j, inv_keep) : T(1);
          T acc = 0;
          for (index_t c = 0; c < p.dv; ++c) {
            acc += dO[i * p.dv + c] * V[j * v.st + c];
            dV[j * p.dv + c] += P[i * p.tk + j] * z * dO[i * p.dv + c];
          }
          G[i * p.tk + j] = acc * z;
          dot += G[i * p.tk + j] * P[i * p.tk + j];
        }
        for (index_t j = 0; j < p.tk; ++j) {
          const T dsij = P[i * p.tk + j] * (G[i * p.tk + j] - dot) * s;
          for (index_t c = 0; c < p.d; ++c) {
            dQ[i * p.d + c] += dsij * K[j * k.st + c];
            dK[j * p.d + c] += dsij * Q[i * q.st + c];
          }
        }
      }
    }
}

}  // namespace weft::kernels::cpu

namespace weft::kernels {

// The host's attention for kernels/dispatch.hpp; scratch from the executor's workspace.
template <>
struct device_attention<weft::cpu> {
  template <class Ex, class T>
  static void forward(const Ex& ex, const AttentionParams& p, AttnOperand<const T> q, AttnOperand<const T> k,
                      AttnOperand<const T> v, T* o, T* lse) {
    T* scratch = ex.workspace().template alloc<T>(Shape{cpu::attention_forward_scratch()}).data;
    cpu::attention_forward(p, q, k, v, o, lse, scratch);
  }
  template <class Ex, class T>
  static void backward(const Ex& ex, const AttentionParams& p, AttnOperand<const T> q, AttnOperand<const T> k,
                       AttnOperand<const T> v, const T* o, const T* dout, const T* lse, T* dq, T* dk, T* dv) {
    T* scratch = ex.workspace().template alloc<T>(Shape{cpu::attention_backward_scratch(p)}).data;
    cpu::attention_backward(p, q, k, v, o, dout, lse, dq, dk, dv, scratch);
  }
};
static_assert(DeviceAttention<weft::cpu>);

}  // namespace weft::kernels
