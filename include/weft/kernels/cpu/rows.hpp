// CPU row kernels: the loops of the materialising nodes that work row by row
// over the last axis (softmax, cross-entropy, layer norm) or gather/scatter
// whole rows (embedding). The nodes in expr/ hold the structure and the
// adjoint rules' shape; these hold the arithmetic. Reached through
// kernels/dispatch.hpp.
// Dimension legend: R rows (all leading axes), C columns (classes/features),
// E table rows (embeddings), N gathered indices.
#pragma once

#include <cstddef>
#include <cstring>

#include "../../core/error.hpp"
#include "../../core/math.hpp"
#include "../../core/shape.hpp"

namespace weft::kernels::cpu {

// In place, each row of x (R, C): softmax, or log_softmax with Log, using the
// max-subtraction trick.
template <bool Log, class T>
void softmax_rows(T* xs, index_t rows, index_t cols) {
  for (index_t r = 0; r < rows; ++r) {
    T* x = xs + r * cols;
    T m = x[0];
    for (index_t c = 1; c < cols; ++c) m = x[c] > m ? x[c] : m;
    T z = 0;
    if constexpr (Log) {
      for (index_t c = 0; c < cols; ++c) z += math::exp(x[c] - m);
      T lse = m + math::log(z);
      for (index_t c = 0; c < cols; ++c) x[c] -= lse;
    } else {
      for (index_t c = 0; c < cols; ++c) z += (x[c] = math::exp(x[c] - m));
      T inv = T(1) / z;
      for (index_t c = 0; c < cols; ++c) x[c] *= inv;
    }
  }
}

// The row-wise Jacobian of softmax rows y (R, C) applied to dy, into dx:
//   softmax:      dx = y * (dy - sum(dy * y))
//   log_softmax:  dx = dy - exp(y) * sum(dy)
template <bool Log, class T>
void softmax_rows_backward(const T* ys, const T* dys, T* dxs, index_t rows, index_t cols) {
  for (index_t r = 0; r < rows; ++r) {
    const T* y = ys + r * cols;
    const T* dy = dys + r * cols;
    T* d = dxs + r * cols;
    T acc = 0;
    if constexpr (Log) {
      for (index_t c = 0; c < cols; ++c) acc += dy[c];
      for (index_t c = 0; c < cols; ++c) d[c] = dy[c] - math::exp(y[c]) * acc;
    } else {
      for (index_t c = 0; c < cols; ++c) acc += dy[c] * y[c];
      for (index_t c = 0; c < cols; ++c) d[c] = y[c] * (dy[c] - acc);
    }
  }
}

// Mean over rows of -log_softmax(logits)[label]: one log-sum-exp per row kept
// in lse (R,), the loss written to *loss. Labels are read with stride lab_st.
template <class T, class L>
void cross_entropy_rows(const T* logits, const L* labels, index_t lab_st, index_t rows, index_t cols, T* lse, T* loss) {
  T total = 0;
  for (index_t r = 0; r < rows; ++r) {
    index_t y = static_cast<index_t>(labels[r * lab_st]);
    if (y < 0 || y >= cols)
      throw_error<ValueError>("cross_entropy: label ", y, " at row ", r, " is out of range for ", cols, " classes");
    const T* x = logits + r * cols;
    T m = x[0];
    for (index_t c = 1; c < cols; ++c) m = x[c] > m ? x[c] : m;
    T z = 0;
    for (index_t c = 0; c < cols; ++c) z += math::exp(x[c] - m);
    T l = m + math::log(z);
    lse[r] = l;
    total += l - x[y];
  }
  *loss = rows ? total / static_cast<T>(rows) : T(0);
}

// y = (x - mean) / sqrt(var + eps) * gamma + beta per row of x (R, D), biased
// variance; mean and rstd (R,) kept for backward.
template <class T>
void layer_norm_rows(const T* xs, const T* gamma, const T* beta, T eps, T* ys, T* mean, T* rstd, index_t rows, index_t d) {
  for (index_t r = 0; r < rows; ++r) {
    const T* x = xs + r * d;
    T* y = ys + r * d;
    T mu = 0, var = 0;
    for (index_t j = 0; j < d; ++j) mu += x[j];
    mu /= static_cast<T>(d);
    for (index_t j = 0; j < d; ++j) var += (x[j] - mu) * (x[j] - mu);
    T rs = T(1) / math::sqrt(var / static_cast<T>(d) + eps);
    for (index_t j = 0; j < d; ++j) y[j] = (x[j] - mu) * rs * gamma[j] + beta[j];
    mean[r] = mu;
    rstd[r] = rs;
  }
}

//   xhat = (x - mean) * rstd,  g = dy * gamma
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   dgamma += sum over rows of dy * xhat,  dbeta += sum over rows of dy
template <class T>
void layer_norm_rows_backward(const T* xs, const T* dys, const T* gamma, const T* mean, const T* rstd, T* dxs, T* dgamma,
                              T* dbeta, index_t rows, index_t d) {
  for (index_t r = 0; r < rows; ++r) {
    const T* x = xs + r * d;
    const T* dy = dys + r * d;
    T* out = dxs + r * d;
    const T mu = mean[r], rs = rstd[r];
    T mg = 0, mgx = 0;
    for (index_t j = 0; j < d; ++j) {
      T xhat = (x[j] - mu) * rs;
      T gj = dy[j] * gamma[j];
      mg += gj;
      mgx += gj * xhat;
      dgamma[j] += dy[j] * xhat;
      dbeta[j] += dy[j];
    }
    mg /= static_cast<T>(d);
    mgx /= static_cast<T>(d);
    for (index_t j = 0; j < d; ++j) out[j] = rs * (dy[j] * gamma[j] - mg - (x[j] - mu) * rs * mgx);
  }
}

// out (N, D) = rows idx (N,) of table (E, D). `what` names the table in errors.
template <class T, class I>
void gather_rows(const T* table, index_t table_rows, const I* idx, index_t n, index_t d, T* out, const char* what) {
  for (index_t r = 0; r < n; ++r) {
    index_t k = static_cast<index_t>(idx[r]);
    if (k < 0 || k >= table_rows)
      throw_error<ValueError>("embedding ", what, ": index ", k, " at position ", r, " is out of range for ", table_rows,
                              " embeddings");
    std::memcpy(out + r * d, table + k * d, static_cast<std::size_t>(d) * sizeof(T));
  }
}

// table (E, D) rows idx (N,) += src (N, D): the adjoint of gather_rows.
template <class T, class I>
void scatter_add_rows(const T* src, const I* idx, index_t n, index_t d, T* table) {
  for (index_t r = 0; r < n; ++r) {
    T* dst = table + static_cast<index_t>(idx[r]) * d;
    const T* s = src + r * d;
    for (index_t j = 0; j < d; ++j) dst[j] += s[j];
  }
}

}  // namespace weft::kernels::cpu
