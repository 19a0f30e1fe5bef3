// vocab_parallel_cross_entropy(logits, labels, comm): the mean cross-entropy
// of logits split by class across the communicator's ranks, without ever
// gathering the full logits (Megatron's vocab-parallel cross-entropy).
//
// Dimension legend: N rows, C classes, p ranks; rank r holds classes
// [r C/p, (r + 1) C/p) of every row: logits (N, C/p), labels (N,) global.
//
//   m_i   = max over ranks of the local row maxima          allreduce(max), N
//   z_i   = sum over ranks of sum_j exp(x_ij - m_i)         } one allreduce(sum), 2N
//   t_i   = x_i,label on the rank holding the label, else 0 }
//   loss  = mean_i ((m_i - t_i) + log z_i)
//   dx_ij = dloss / N * (exp(x_ij - m_i - log z_i) - [j == label_i - r C/p])
//
// Backward needs no communication: every rank keeps m and log z. The split
// (m - t) + log z follows expr/cross_entropy.hpp (folding m + log z would
// round at the largest logit's magnitude).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "../../comm/reduce_op.hpp"
#include "../../core/error.hpp"
#include "../../expr/node.hpp"

namespace weft::parallel::tensor_parallel {

template <class A, class L, class Comm>
struct VocabParallelCrossEntropy : OneChildNode<VocabParallelCrossEntropy<A, L, Comm>, A> {
  using value_type = typename A::value_type;
  using device_type = typename A::device_type;
  using T = value_type;
  using View = TensorView<T, device_type>;
  static constexpr int static_rank = 0;
  static constexpr int param_occurrences = param_occurrences_of<A>();
  static_assert(std::is_same_v<device_type, cpu>, "vocab_parallel_cross_entropy runs on host tensors");
  static_assert(std::is_integral_v<L>, "vocab_parallel_cross_entropy: labels must be an integer tensor (int32 or int64)");
  static_assert(std::is_floating_point_v<T>, "vocab_parallel_cross_entropy: logits must be float or double");

  A a;
  TensorView<L, cpu> labels;
  Comm* comm;
  index_t classes = 0;  // C, all ranks together
  index_t first = 0;    // r C/p

  VocabParallelCrossEntropy(A logits, TensorView<L, cpu> y, Comm& c) : a(logits), labels(y), comm(&c) {
    const Shape s = a.shape();
    if (s.rank != 2)
      throw_error<ShapeError>("vocab_parallel_cross_entropy: logits must be (batch, classes / ranks), got ", s, " on rank ", c.rank());
    if (y.shape.rank != 1 || y.shape[0] != s[0])
      throw_error<ShapeError>("vocab_parallel_cross_entropy: logits ", s, " need labels of shape (", s[0], ",), got ", y.shape,
                              " on rank ", c.rank());
    if (!y.is_contiguous()) throw_error<ValueError>("vocab_parallel_cross_entropy: labels must be contiguous");
    classes = s[1] * c.size();
    first = s[1] * c.rank();
  }
  Shape shape() const { return Shape{}; }

  struct State {
    typename A::State a;
    View x;             // (N, C/p) logits
    View m, logz;       // (N,)
    View val, adj;      // () loss and its adjoint
  };

  template <class X>
  State forward(const X& ex) const {
    State st{a.forward(ex), {}, {}, {}, {}, {}};
    st.x = materialise(a, st.a, ex);
    const Shape s = a.shape();
    const index_t n = s[0], k = s[1];
    st.m = kernels::alloc<T>(ex, Shape{n});
    st.logz = kernels::alloc<T>(ex, Shape{n});
    auto zt = kernels::alloc<T>(ex, Shape{2 * n});  // (z_1..z_N, t_1..t_N)
    auto mloc = kernels::alloc<T>(ex, Shape{n});
    for (index_t i = 0; i < n; ++i) {
      const T* row = st.x.data + i * k;
      T mx = row[0];
      for (index_t j = 1; j < k; ++j) mx = row[j] > mx ? row[j] : mx;
      mloc.data[i] = mx;
    }
    comm->allreduce(mloc.data, st.m.data, static_cast<std::size_t>(n), comm::ReduceOp::max);
    for (index_t i = 0; i < n; ++i) {
      const T* row = st.x.data + i * k;
      double z = 0;
      for (index_t j = 0; j < k; ++j) z += std::exp(static_cast<double>(row[j] - st.m.data[i]));
      zt.data[i] = static_cast<T>(z);
      const auto lab = static_cast<index_t>(labels.data[i]);
      if (lab < 0 || lab >= classes)
        throw_error<ValueError>("vocab_parallel_cross_entropy: label ", lab, " of row ", i, " is outside [0, ", classes, ") on rank ",
                                comm->rank());
      zt.data[n + i] = lab >= first && lab < first + k ? row[lab - first] : T(0);
    }
    comm->allreduce(zt.data, zt.data, static_cast<std::size_t>(2 * n), comm::ReduceOp::sum);
    double total = 0;
    for (index_t i = 0; i < n; ++i) {
      st.logz.data[i] = std::log(zt.data[i]);
      total += static_cast<double>((st.m.data[i] - zt.data[n + i]) + st.logz.data[i]);
    }
    st.val = kernels::alloc<T>(ex, Shape{});
    st.val.data[0] = n ? static_cast<T>(total / static_cast<double>(n)) : T(0);
    return st;
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return bind_materialised(st.val.data, st.adj, Shape{}, o, g);
  }

  template <class G>
  void backward_children(State& st, G& g) const {
    if constexpr (needs_grad<A, G>()) {
      const Shape s = a.shape();
      const index_t n = s[0], k = s[1];
      auto dx = kernels::alloc<T>(g.exec(), s);
      const T scale = n ? st.adj.data[0] / static_cast<T>(n) : T(0);
      for (index_t i = 0; i < n; ++i) {
        const T* row = st.x.data + i * k;
        T* d = dx.data + i * k;
        for (index_t j = 0; j < k; ++j) d[j] = scale * std::exp((row[j] - st.m.data[i]) - st.logz.data[i]);
        const auto lab = static_cast<index_t>(labels.data[i]);
        if (lab >= first && lab < first + k) d[lab - first] -= scale;
      }
      g.run_region(a, st.a, s, kernels::BufferSeed<T>{dx.data, aligned_strides(s, contiguous_strides(s), s), T(1)});
    }
  }
};

// The mean cross-entropy of class-split logits (see the top of this file).
template <Operand X, TensorLike Y, class Comm>
auto vocab_parallel_cross_entropy(X&& logits, Y&& labels, Comm& c) {
  auto lv = as_expr(std::forward<Y>(labels)).v;
  using L = typename decltype(lv)::value_type;
  return VocabParallelCrossEntropy<expr_t<X>, L, Comm>(as_expr(std::forward<X>(logits)), lv, c);
}

}  // namespace weft::parallel::tensor_parallel
