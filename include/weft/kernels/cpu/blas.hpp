// CBLAS (OpenBLAS) GEMM on strided matrix views. Opt-in header: it needs a
// CBLAS at link time (Meson's `blas` feature; pkg-config `openblas`).
#pragma once

// OpenBLAS's cblas.h declares C99 _Complex types, which clang flags in C++.
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wc99-extensions"
#endif
#include <cblas.h>
#if defined(__clang__)
#pragma clang diagnostic pop
#endif

#include "../../core/error.hpp"
#include "../../tensor/tensor.hpp"
#include "../dispatch.hpp"

namespace weft::kernels::cpu {

// A rank-2 view as BLAS sees it: row-major with a leading dimension, or the
// transpose of one. Returns false when neither stride is 1 (needs a copy).
template <class T>
bool blas_layout(const TensorView<T>& m, CBLAS_TRANSPOSE& trans, int& ld) {
  const index_t r = m.shape[0], c = m.shape[1];
  if (m.strides[1] == 1 || c == 1) {
    trans = CblasNoTrans;
    ld = static_cast<int>(std::max<index_t>({m.strides[0], c, 1}));
    return r <= 1 || m.strides[0] >= c;
  }
  if (m.strides[0] == 1 || r == 1) {
    trans = CblasTrans;
    ld = static_cast<int>(std::max<index_t>({m.strides[1], r, 1}));
    return c <= 1 || m.strides[1] >= r;
  }
  return false;
}

// C (m x n, contiguous) = alpha * A (m x k) * B (k x n) + beta * C. A and B are
// views in any BLAS layout (callers copy other layouts first).
template <class T>
void gemm(const TensorView<T>& a, const TensorView<T>& b, const TensorView<T>& c, T alpha, T beta) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "BLAS gemm handles float and double");
  const index_t m = a.shape[0], k = a.shape[1], n = b.shape[1];
  if (b.shape[0] != k || c.shape[0] != m || c.shape[1] != n)
    throw_error<ShapeError>("gemm: ", a.shape, " x ", b.shape, " -> ", c.shape, " do not fit");
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (index_t i = 0; i < m * n; ++i) c.data[i] = beta == T(0) ? T(0) : beta * c.data[i];
    return;
  }
  CBLAS_TRANSPOSE ta, tb;
  int lda, ldb;
  if (!blas_layout(a, ta, lda) || !blas_layout(b, tb, ldb))
    throw_error<ShapeError>("gemm: operand layout is not expressible in BLAS (internal error: copy first)");
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a.data, lda,
                b.data, ldb, beta, c.data, static_cast<int>(n));
  else
    cblas_dgemm(CblasRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a.data, lda,
                b.data, ldb, beta, c.data, static_cast<int>(n));
}

// The batched form of kernels::gemm_batched (dispatch.hpp): a, b, c rank-4,
// batch axes first (stride 0 = broadcast; in c: sum into it, beta once).
template <class T>
void gemm_batched(const TensorView<T>& a, const TensorView<T>& b, const TensorView<T>& c, T alpha, T beta) {
  if (a.rank() != 4 || b.rank() != 4 || c.rank() != 4)
    throw_error<ShapeError>("gemm_batched: operands must be rank-4 views, got ", a.shape, " x ", b.shape, " -> ", c.shape);
  const index_t b0 = c.shape[0], b1 = c.shape[1];
  for (int d = 0; d < 2; ++d)
    if (a.shape[d] != c.shape[d] || b.shape[d] != c.shape[d])
      throw_error<ShapeError>("gemm_batched: batch axes of ", a.shape, " x ", b.shape, " -> ", c.shape, " differ");
  if (c.strides[3] != 1 && c.shape[3] > 1)
    throw_error<ShapeError>("gemm_batched: the output's matrices must be contiguous (internal error)");
  auto mat = [](const TensorView<T>& v, index_t i0, index_t i1) {
    return TensorView<T>(v.data + i0 * v.strides[0] + i1 * v.strides[1], Shape{v.shape[2], v.shape[3]},
                         Strides{{v.strides[2], v.strides[3]}});
  };
  for (index_t i0 = 0; i0 < b0; ++i0)
    for (index_t i1 = 0; i1 < b1; ++i1) {
      const bool first = (c.strides[0] != 0 || i0 == 0) && (c.strides[1] != 0 || i1 == 0);
      TensorView<T> cm = mat(c, i0, i1);
      if (cm.shape[0] > 1 && cm.strides[0] != cm.shape[1])
        throw_error<ShapeError>("gemm_batched: the output's matrices must be contiguous (internal error)");
      cm.strides = contiguous_strides(cm.shape);
      gemm(mat(a, i0, i1), mat(b, i0, i1), cm, alpha, first ? beta : T(1));
    }
}

}  // namespace weft::kernels::cpu

namespace weft::kernels {

// The host's gemm for kernels/dispatch.hpp.
template <>
struct device_gemm<weft::cpu> {
  template <class Ex, class T>
  static void gemm(const Ex&, const TensorView<T>& a, const TensorView<T>& b, const TensorView<T>& c, T alpha, T beta) {
    cpu::gemm(a, b, c, alpha, beta);
  }
  template <class Ex, class T>
  static void gemm_batched(const Ex&, const TensorView<T>& a, const TensorView<T>& b, const TensorView<T>& c, T alpha,
                           T beta) {
    cpu::gemm_batched(a, b, c, alpha, beta);
  }
  template <class T>
  static bool reads_in_place(const TensorView<T>& m) {
    CBLAS_TRANSPOSE t;
    int ld;
    return cpu::blas_layout(m, t, ld);
  }
};
static_assert(DeviceGemm<weft::cpu>);

}  // namespace weft::kernels
