// PowerSGD (Vogels, Karimireddy, Jaggi 2019): a rank-r approximation of the
// summed gradient matrix from one step of subspace (power) iteration, with
// the previous step's Q as the starting point (warm start) and error
// feedback. Linear: both rounds allreduce (sum) a small factor.
//
// Legend: the buffer is a row-major matrix M (rows, cols); r = rank.
//   m_i   = x_i + e_i                                  (rows, cols)  error feedback
//   P     = sum_i m_i Q            allreduce, round 0  (rows, r)
//   P^    = orthonormal columns of P (Gram-Schmidt)    (rows, r)
//   Q_i   = m_i^T P^;  Q = sum_i Q_i  allreduce, round 1 (cols, r)
//   y     = P^ Q^T = P^ P^T sum_i m_i                  (rows, cols)  the result
//   e_i'  = m_i - P^ Q_i^T                             (rows, cols)  what was not sent
//   Q is kept for the next step (warm start).
// Bytes: (rows + cols) r values instead of rows cols.
// Exactness: if rank(sum_i m_i) <= r and Q is generic (a Gaussian start),
// span(P) = span(sum m_i), so y = sum_i m_i up to rounding.
// Error feedback: sum over ranks of (y_i's share + e_i') = sum m_i exactly,
// since P^ Q^T = sum_i P^ Q_i^T.
//
// Shape: `cols` names the matrix's trailing dimension (a Linear weight
// (out, in) has cols = in); 0 picks the squarest factorisation of n (the
// divisor of n closest to sqrt(n)). Buffers for which (rows + cols) r >= n
// (biases, tiny layers) are sent uncompressed in one allreduce, as PyTorch's
// PowerSGD hook does.
//
// Products: the three matrix products (P = m Q, Q_i = m^T P^, P^ Q^T) run
// through `gemm` when it is set, else through the plain loops below (the
// reference the tests compare with). comm/ needs no BLAS, so the CBLAS
// routine is an opt-in include: comm/codec/powersgd_blas.hpp sets it
// (`with_blas(PowerSGD{.rank = 4})`). Every rank must use the same products:
// they round differently, and P^ must be equal on every rank.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "codec.hpp"

namespace weft::comm {

// One row-major product C (m, n) = alpha op(A) op(B) + beta C, op(A) (m, k), op(B) (k, n);
// A is stored (k, m) when trans_a, B (n, k) when trans_b (cblas_sgemm's arguments).
struct PowerSGDGemm {
  bool trans_a = false, trans_b = false;
  std::size_t m = 0, n = 0, k = 0;
  float alpha = 1.0f;
  const float* a = nullptr;
  const float* b = nullptr;
  float beta = 0.0f;
  float* c = nullptr;
};

struct PowerSGD {
  static constexpr const char* name = "powersgd";
  static constexpr bool linear = true;
  using payload_type = float;

  int rank = 4;
  std::size_t cols = 0;  // trailing dimension of the matrix; 0 = squarest factorisation
  bool error_feedback = true;
  bool warm_start = true;
  std::uint64_t seed = 0x9564;  // the Gaussian start of Q; must be equal on every rank
  // The products' routine (powersgd_blas.hpp: cblas_sgemm); null: the loops.
  void (*gemm)(const PowerSGDGemm&) = nullptr;

  struct State {
    std::vector<float> residual;  // e, rows x cols
    std::vector<float> q;         // Q, cols x r (warm start)
    std::vector<float> p;         // P^, rows x r (orthonormal)
    std::vector<float> m;         // x + e this step (scratch)
    std::vector<float> q_local;   // Q_i this step (scratch)
    template <class F>
    void visit(F&& f) {
      f("residual", residual);
      f("q", q);
      f("p", p);
    }
  };

  struct Shape {
    std::size_t rows = 0, cols = 0;
    bool compressed = false;
  };

  Shape shape(std::size_t n, const CodecCall& k) const {
    if (rank < 1) k.fail("rank ", rank, " must be at least 1");
    Shape s;
    if (cols) {
      if (n % cols) k.fail("a buffer of ", n, " elements is not a matrix with ", cols, " columns (rows x cols = n)");
      s.cols = cols;
    } else {
      s.cols = 1;
      for (std::size_t d = 1; d * d <= n; ++d)
        if (n % d == 0) s.cols = d;
    }
    s.rows = n / s.cols;
    const std::size_t r = static_cast<std::size_t>(rank);
    s.compressed = (s.rows + s.cols) * r < n;
    return s;
  }

  void check(std::size_t n, const CodecCall& k) const { (void)shape(n, k); }
  int rounds(const State&, std::size_t n) const { return shape(n, CodecCall{}).compressed ? 2 : 1; }
  std::size_t payload_count(const State&, std::size_t n, int round) const {
    Shape s = shape(n, CodecCall{});
    if (!s.compressed) return n;
    return (round == 0 ? s.rows : s.cols) * static_cast<std::size_t>(rank);
  }

  void encode(State& st, const float* x, std::size_t n, float* out, int round, const CodecCall& k) const {
    const Shape s = shape(n, k);
    const std::size_t R = static_cast<std::size_t>(rank), rows = s.rows, cl = s.cols;
    if (!s.compressed) {
      std::copy(x, x + n, out);
      return;
    }
    if (round == 0) {
      detail::feedback_input(st.m, st.residual, x, n, error_feedback, k);
      if (!st.q.empty() && st.q.size() != cl * R)
        k.fail("its q holds ", st.q.size(), " values but this buffer needs ", cl * R, " (", cl, " x ", R,
               "; restored from a different model?)");
      if (st.q.empty() || !warm_start) {
        st.q.resize(cl * R);
        const std::uint64_t stream = detail::mix64(seed, warm_start ? 0 : k.seq + 1);
        for (std::size_t i = 0; i < cl * R; ++i) st.q[i] = detail::gaussian(stream, i);
      }
      // P = m Q  (rows, r)
      if (gemm) {
        gemm({.m = rows, .n = R, .k = cl, .a = st.m.data(), .b = st.q.data(), .c = out});
        return;
      }
      std::fill(out, out + rows * R, 0.0f);
      for (std::size_t i = 0; i < rows; ++i) {
        const float* mi = st.m.data() + i * cl;
        float* pi = out + i * R;
        for (std::size_t j = 0; j < cl; ++j) {
          const float v = mi[j];
          const float* qj = st.q.data() + j * R;
          for (std::size_t c = 0; c < R; ++c) pi[c] += v * qj[c];
        }
      }
      return;
    }
    // Q_i = m^T P^  (cols, r)
    st.q_local.assign(cl * R, 0.0f);
    if (gemm) gemm({.trans_a = true, .m = cl, .n = R, .k = rows, .a = st.m.data(), .b = st.p.data(), .c = st.q_local.data()});
    for (std::size_t i = 0; i < rows && !gemm; ++i) {
      const float* mi = st.m.data() + i * cl;
      const float* pi = st.p.data() + i * R;
      for (std::size_t j = 0; j < cl; ++j) {
        float* qj = st.q_local.data() + j * R;
        for (std::size_t c = 0; c < R; ++c) qj[c] += mi[j] * pi[c];
      }
    }
    std::copy(st.q_local.begin(), st.q_local.end(), out);
    if (error_feedback) low_rank(st.p.data(), st.q_local.data(), rows, cl, R, st.m.data(), st.residual.data(), gemm);
  }

  void decode(State& st, const float* in, float* y, std::size_t n, int round, const CodecCall& k) const {
    const Shape s = shape(n, k);
    const std::size_t R = static_cast<std::size_t>(rank);
    if (!s.compressed) {
      std::copy(in, in + n, y);
      return;
    }
    if (round == 0) {
      st.p.assign(in, in + s.rows * R);
      orthonormalise(st.p.data(), s.rows, R);
      return;
    }
    st.q.assign(in, in + s.cols * R);  // the summed Q: next step's start
    for (std::size_t i = 0; i < n; ++i) y[i] = 0.0f;
    low_rank(st.p.data(), st.q.data(), s.rows, s.cols, R, nullptr, y, gemm);
  }

  // dst = base - P Q^T (base given) or dst = P Q^T (base null); P (rows, r), Q (cols, r).
  static void low_rank(const float* p, const float* q, std::size_t rows, std::size_t cols, std::size_t r,
                       const float* base, float* dst, void (*gemm)(const PowerSGDGemm&) = nullptr) {
    if (gemm) {
      if (base) std::copy(base, base + rows * cols, dst);
      gemm({.trans_b = true, .m = rows, .n = cols, .k = r, .alpha = base ? -1.0f : 1.0f, .a = p, .b = q,
            .beta = base ? 1.0f : 0.0f, .c = dst});
      return;
    }
    for (std::size_t i = 0; i < rows; ++i) {
      const float* pi = p + i * r;
      for (std::size_t j = 0; j < cols; ++j) {
        const float* qj = q + j * r;
        float acc = 0.0f;
        for (std::size_t c = 0; c < r; ++c) acc += pi[c] * qj[c];
        dst[i * cols + j] = base ? base[i * cols + j] - acc : acc;
      }
    }
  }

  // Modified Gram-Schmidt on the r columns of P (rows, r), in double. A column
  // that is (numerically) a combination of the earlier ones carries nothing
  // new and is set to zero rather than blown up from rounding noise.
  static void orthonormalise(float* p, std::size_t rows, std::size_t r) {
    for (std::size_t c = 0; c < r; ++c) {
      double before = 0;
      for (std::size_t i = 0; i < rows; ++i) before += static_cast<double>(p[i * r + c]) * p[i * r + c];
      for (std::size_t b = 0; b < c; ++b) {
        double dot = 0;
        for (std::size_t i = 0; i < rows; ++i) dot += static_cast<double>(p[i * r + c]) * p[i * r + b];
        for (std::size_t i = 0; i < rows; ++i) p[i * r + c] = static_cast<float>(p[i * r + c] - dot * p[i * r + b]);
      }
      double after = 0;
      for (std::size_t i = 0; i < rows; ++i) after += static_cast<double>(p[i * r + c]) * p[i * r + c];
      const bool independent = std::isfinite(after) && after > 1e-10 * before && after > 0;
      const double inv = independent ? 1.0 / std::sqrt(after) : 0.0;
      for (std::size_t i = 0; i < rows; ++i) p[i * r + c] = static_cast<float>(p[i * r + c] * inv);
      if (!std::isfinite(before)) // NaN/inf in the gradient: let it show in the result
        for (std::size_t i = 0; i < rows; ++i) p[i * r + c] = std::numeric_limits<float>::quiet_NaN();
    }
  }
};

static_assert(LinearCodec<PowerSGD>);

}  // namespace weft::comm
