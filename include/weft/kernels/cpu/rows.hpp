// CPU row kernels: the loops of the materialising nodes that work row by row
// over the last axis (softmax, cross-entropy, layer norm) or gather/scatter
// whole rows (embedding). The nodes in expr/ hold the structure and the
// adjoint rules' shape; these hold the arithmetic. Reached through
// kernels/dispatch.hpp.
// The per-element and per-row formulas are WEFT_HD functions at the top
// (namespace weft::kernels), called by these loops and by the CUDA row
// kernels (kernels/cuda/kernels.cuh) alike, so the CPU tests check the
// arithmetic the GPU runs; only the order of the row sums differs.
// Dimension legend: R rows (all leading axes), C columns (classes/features),
// E table rows (embeddings), N gathered indices.
#pragma once

#include <cstddef>
#include <cstring>

#include "../../core/error.hpp"
#include "../../core/math.hpp"
#include "../../core/shape.hpp"
#include "cascade.hpp"

namespace weft::kernels {

// ---------------------------------------------------------------- row arithmetic (host and device)

// One element of log_softmax from its row's maximum m and log z = log sum
// exp(x - m): (x - m) - log z, never x - (m + log z), which rounds at the
// magnitude of the largest logit.
template <class T>
WEFT_HD WEFT_INLINE T log_softmax_at(T x, T m, T lz) {
  return (x - m) - lz;
}

// One element of the row-wise softmax Jacobian applied to dy, given the row's
// acc = sum(dy) (log_softmax) or sum(dy * y) (softmax):
//   softmax:      dx = y * (dy - acc)
//   log_softmax:  dx = dy - exp(y) * acc
template <bool Log, class T>
WEFT_HD WEFT_INLINE T softmax_grad_at(T y, T dy, T acc) {
  if constexpr (Log)
    return dy - math::exp(y) * acc;
  else
    return y * (dy - acc);
}

// One row's cross-entropy against labels smoothed by eps, from the row's
// maximum m, the logit at the label, log z and (used only when eps != 0) the
// row's sum of logits over its `cols` classes:
//   eps = 0:  (m - x[label]) + log z
//   else:     ((1 - eps)(m - x[label]) + eps (m - mean(x))) + log z
template <class T>
WEFT_HD WEFT_INLINE T cross_entropy_row_loss(T m, T x_label, T lz, T eps, T row_total, index_t cols) {
  const T hard = m - x_label;
  if (eps == T(0)) return hard + lz;
  const T mean = row_total / static_cast<T>(cols);
  return ((T(1) - eps) * hard + eps * (m - mean)) + lz;
}

// Layer norm's 1 / sqrt(var + eps) from the row's sum of squared deviations
// over d features (biased variance, as PyTorch).
template <class T>
WEFT_HD WEFT_INLINE T layer_norm_rstd(T sq_dev_sum, index_t d, T eps) {
  return T(1) / math::sqrt(sq_dev_sum / static_cast<T>(d) + eps);
}

// y = (x - mean) * rstd * gamma + beta.
template <class T>
WEFT_HD WEFT_INLINE T layer_norm_at(T x, T mu, T rs, T gamma, T beta) {
  return (x - mu) * rs * gamma + beta;
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma, from the
// row's means mg = mean(g) and mgx = mean(g * xhat).
template <class T>
WEFT_HD WEFT_INLINE T layer_norm_dx_at(T dy, T gamma, T xhat, T rs, T mg, T mgx) {
  return rs * (dy * gamma - mg - xhat * mgx);
}

}  // namespace weft::kernels

namespace weft::kernels::cpu {

// Row sums (softmax's normaliser, layer norm's moments, the batch mean of
// cross-entropy) run as cascades (cascade.hpp), so they stay accurate for
// long rows and large batches.
template <class T, class F>
WEFT_INLINE T row_sum(index_t n, F&& f) {
  return reduce_linear<SumOp, T>(n, f);
}

// In place, each row of x (R, C): softmax, or log_softmax with Log, using the
// max-subtraction trick. log_softmax is (x - m) - log z, never x - (m + log z):
// the latter rounds at the magnitude of the largest logit.
template <bool Log, class T>
void softmax_rows(T* xs, index_t rows, index_t cols) {
  for (index_t r = 0; r < rows; ++r) {
    T* x = xs + r * cols;
    T m = x[0];
    for (index_t c = 1; c < cols; ++c) m = x[c] > m ? x[c] : m;
    if constexpr (Log) {
      const T lz = math::log(row_sum<T>(cols, [&](index_t c) { return math::exp(x[c] - m); }));
      for (index_t c = 0; c < cols; ++c) x[c] = log_softmax_at(x[c], m, lz);
    } else {
      for (index_t c = 0; c < cols; ++c) x[c] = math::exp(x[c] - m);
      const T inv = T(1) / row_sum<T>(cols, [&](index_t c) { return x[c]; });
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
    if constexpr (Log) {
      const T acc = row_sum<T>(cols, [&](index_t c) { return dy[c]; });
      for (index_t c = 0; c < cols; ++c) d[c] = softmax_grad_at<true>(y[c], dy[c], acc);
    } else {
      const T acc = row_sum<T>(cols, [&](index_t c) { return dy[c] * y[c]; });
      for (index_t c = 0; c < cols; ++c) d[c] = softmax_grad_at<false>(y[c], dy[c], acc);
    }
  }
}

// Mean over rows of -log_softmax(logits)[label]. Per row the maximum m and
// log z = log sum exp(x - m) are kept apart in row_max and log_z (R,), and the
// row's loss is (m - x[label]) + log z: folding m + log z into one number would
// round at the magnitude of the largest logit. The loss is written to *loss.
// Labels are read with stride lab_st. With label smoothing eps the target is
// (1 - eps) one-hot + eps / cols everywhere, and the row's loss
// ((1 - eps)(m - x[label]) + eps (m - mean(x))) + log z.
template <class T, class L>
void cross_entropy_rows(const T* logits, const L* labels, index_t lab_st, index_t rows, index_t cols, T eps, T* row_max,
                        T* log_z, T* loss) {
  for (index_t r = 0; r < rows; ++r) {
    index_t y = static_cast<index_t>(labels[r * lab_st]);
    if (y < 0 || y >= cols)
      throw_error<ValueError>("cross_entropy: label ", y, " at row ", r, " is out of range for ", cols, " classes");
    const T* x = logits + r * cols;
    T m = x[0];
    for (index_t c = 1; c < cols; ++c) m = x[c] > m ? x[c] : m;
    row_max[r] = m;
    log_z[r] = math::log(row_sum<T>(cols, [&](index_t c) { return math::exp(x[c] - m); }));
  }
  const T total = row_sum<T>(rows, [&](index_t r) {
    const T* x = logits + r * cols;
    const T total_x = eps == T(0) ? T(0) : row_sum<T>(cols, [&](index_t c) { return x[c]; });
    return cross_entropy_row_loss(row_max[r], x[static_cast<index_t>(labels[r * lab_st])], log_z[r], eps, total_x, cols);
  });
  *loss = rows ? total / static_cast<T>(rows) : T(0);
}

// y = (x - mean) / sqrt(var + eps) * gamma + beta per row of x (R, D), biased
// variance; mean and rstd (R,) kept for backward.
template <class T>
void layer_norm_rows(const T* xs, const T* gamma, const T* beta, T eps, T* ys, T* mean, T* rstd, index_t rows, index_t d) {
  for (index_t r = 0; r < rows; ++r) {
    const T* x = xs + r * d;
    T* y = ys + r * d;
    const T mu = row_sum<T>(d, [&](index_t j) { return x[j]; }) / static_cast<T>(d);
    const T var = row_sum<T>(d, [&](index_t j) { return (x[j] - mu) * (x[j] - mu); });
    T rs = layer_norm_rstd(var, d, eps);
    // y never overlaps x, gamma or beta (the node's own buffer): vectorise without alias checks.
    WEFT_IVDEP
    for (index_t j = 0; j < d; ++j) y[j] = layer_norm_at(x[j], mu, rs, gamma[j], beta[j]);
    mean[r] = mu;
    rstd[r] = rs;
  }
}

// Levels a cascade over `blocks` blocks needs (floor(log2(blocks)) + 1).
inline int cascade_levels(index_t blocks) {
  int l = 1;
  while ((index_t(1) << l) <= blocks) ++l;
  return l;
}

// Scratch (elements) layer_norm_rows_backward needs for dgamma and dbeta.
inline index_t layer_norm_backward_scratch(index_t rows, index_t d) {
  constexpr index_t rows_per_block = 16;
  return (cascade_levels((rows + rows_per_block - 1) / rows_per_block) + 1) * 2 * d;
}

// One row of layer_norm_rows_backward: dx and the row's share of the dgamma
// and dbeta partials. A function of its own so that its pointers are
// restrict parameters (the partials, dx and the inputs never overlap): the
// loop vectorises, which it did not inline, with or without ivdep.
template <class T>
[[gnu::noinline]] void layer_norm_backward_row(const T* WEFT_RESTRICT x, const T* WEFT_RESTRICT dy,
                                               const T* WEFT_RESTRICT gamma, T* WEFT_RESTRICT out, T* WEFT_RESTRICT dg,
                                               T* WEFT_RESTRICT db, T mu, T rs, index_t d) {
  const T mg = row_sum<T>(d, [&](index_t j) { return dy[j] * gamma[j]; }) / static_cast<T>(d);
  const T mgx = row_sum<T>(d, [&](index_t j) { return dy[j] * gamma[j] * ((x[j] - mu) * rs); }) / static_cast<T>(d);
  for (index_t j = 0; j < d; ++j) {
    const T xhat = (x[j] - mu) * rs;
    dg[j] += dy[j] * xhat;
    db[j] += dy[j];
    out[j] = layer_norm_dx_at(dy[j], gamma[j], xhat, rs, mg, mgx);
  }
}

//   xhat = (x - mean) * rstd,  g = dy * gamma
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   dgamma += sum over rows of dy * xhat,  dbeta += sum over rows of dy
// The sums over rows run as a cascade of blocks of 16 rows (cascade.hpp's
// order, a row of 2D partials per level), in `scratch` of
// layer_norm_backward_scratch(rows, d) elements.
template <class T>
void layer_norm_rows_backward(const T* xs, const T* dys, const T* gamma, const T* mean, const T* rstd, T* dxs, T* dgamma,
                              T* dbeta, index_t rows, index_t d, T* scratch) {
  constexpr index_t rows_per_block = 16;
  const index_t w = 2 * d;  // [dgamma partials | dbeta partials]
  T* cur = scratch;
  T* level = scratch + w;  // level l at level + l * w
  index_t blocks = 0;
  for (index_t r0 = 0; r0 < rows; r0 += rows_per_block) {
    for (index_t j = 0; j < w; ++j) cur[j] = T(0);
    const index_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
    for (index_t r = r0; r < r1; ++r)
      layer_norm_backward_row(xs + r * d, dys + r * d, gamma, dxs + r * d, cur, cur + d, mean[r], rstd[r], d);
    int l = 0;
    for (index_t k = blocks; k & 1; k >>= 1, ++l)
      for (index_t j = 0; j < w; ++j) cur[j] += level[l * w + j];
    for (index_t j = 0; j < w; ++j) level[l * w + j] = cur[j];
    ++blocks;
  }
  for (index_t j = 0; j < w; ++j) cur[j] = T(0);
  int l = 0;
  for (index_t k = blocks; k; k >>= 1, ++l)
    if (k & 1)
      for (index_t j = 0; j < w; ++j) cur[j] = level[l * w + j] + cur[j];
  for (index_t j = 0; j < d; ++j) {
    dgamma[j] += cur[j];
    dbeta[j] += cur[d + j];
  }
}

// Scratch (elements) sum_rows needs.
inline index_t sum_rows_scratch(index_t rows, index_t d) {
  constexpr index_t rows_per_block = 16;
  return (cascade_levels((rows + rows_per_block - 1) / rows_per_block) + 1) * d;
}

// acc (D) = the sum of n rows of x (n, D), in order.
template <class T>
[[gnu::noinline]] void sum_row_block(const T* WEFT_RESTRICT x, index_t n, index_t d, T* WEFT_RESTRICT acc) {
  for (index_t j = 0; j < d; ++j) acc[j] = x[j];
  for (index_t r = 1; r < n; ++r)
    for (index_t j = 0; j < d; ++j) acc[j] += x[r * d + j];
}

// out (D) += the column sums of x (R, D) (expr/affine.hpp's bias gradient):
// blocks of 16 rows summed in order, the blocks combined as a cascade
// (cascade.hpp's order, a row of D partials per level), in `scratch` of
// sum_rows_scratch(rows, d) elements. Rows are read as rows, so the pass runs
// at memory speed; sum_rows_reference is the plain loop the tests compare with.
template <class T>
void sum_rows(const T* xs, index_t rows, index_t d, T* out, T* scratch) {
  constexpr index_t rows_per_block = 16;
  T* cur = scratch;
  T* level = scratch + d;  // level l at level + l * d
  index_t blocks = 0;
  for (index_t r0 = 0; r0 < rows; r0 += rows_per_block) {
    const index_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
    sum_row_block(xs + r0 * d, r1 - r0, d, cur);
    int l = 0;
    for (index_t k = blocks; k & 1; k >>= 1, ++l)
      for (index_t j = 0; j < d; ++j) cur[j] = level[l * d + j] + cur[j];
    for (index_t j = 0; j < d; ++j) level[l * d + j] = cur[j];
    ++blocks;
  }
  for (index_t j = 0; j < d; ++j) cur[j] = T(0);
  int l = 0;
  for (index_t k = blocks; k; k >>= 1, ++l)
    if (k & 1)
      for (index_t j = 0; j < d; ++j) cur[j] = level[l * d + j] + cur[j];
  for (index_t j = 0; j < d; ++j) out[j] += cur[j];
}

// The plain reference of sum_rows: one running sum per column, in double.
template <class T>
void sum_rows_reference(const T* xs, index_t rows, index_t d, T* out) {
  for (index_t j = 0; j < d; ++j) {
    double acc = 0;
    for (index_t r = 0; r < rows; ++r) acc += static_cast<double>(xs[r * d + j]);
    out[j] += static_cast<T>(acc);
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
