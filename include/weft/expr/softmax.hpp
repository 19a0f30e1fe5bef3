// softmax and log_softmax over the last axis (materialisation points).
// Forward evaluates the child region once into a buffer and normalises each
// row with the max-subtraction trick; backward applies the row-wise Jacobian:
//   softmax:      dx = y * (dy - sum(dy * y))
//   log_softmax:  dx = dy - exp(y) * sum(dy)
#pragma once

#include "../core/math.hpp"
#include "../kernels/cpu/loops.hpp"
#include "node.hpp"

namespace weft {

template <class A, bool Log>
struct Softmax : OneChildNode<Softmax<A, Log>, A> {
  using value_type = typename A::value_type;
  using device_type = typename A::device_type;
  static constexpr int static_rank = A::static_rank;
  static_assert(A::static_rank != 0,
                "softmax/log_softmax work over the last axis, and this operand has rank 0 (a full reduction)");
  static_assert(is_floating_v<value_type>, "softmax of an integer expression: cast it with weft::cast<float>(x) first");

  A a;
  explicit Softmax(A child) : a(child) {
    if (a.shape().rank == 0) throw_error<ShapeError>(name(), ": needs rank >= 1, got a rank-0 operand");
  }
  static constexpr const char* name() { return Log ? "log_softmax" : "softmax"; }
  Shape shape() const { return a.shape(); }

  struct State {
    typename A::State a;
    TensorView<value_type> val;
    TensorView<value_type> adj;
  };

  template <class W>
  State forward(W& ws) const {
    State st{a.forward(ws), {}, {}};
    Shape s = a.shape();
    st.val = kernels::cpu::materialise(a, st.a, ws);
    const index_t cols = s.back(), rows = cols ? s.numel() / cols : 0;
    for (index_t r = 0; r < rows; ++r) {
      value_type* x = st.val.data + r * cols;
      value_type m = x[0];
      for (index_t c = 1; c < cols; ++c) m = x[c] > m ? x[c] : m;
      value_type z = 0;
      if constexpr (Log) {
        for (index_t c = 0; c < cols; ++c) z += math::exp(x[c] - m);
        value_type lse = m + math::log(z);
        for (index_t c = 0; c < cols; ++c) x[c] -= lse;
      } else {
        for (index_t c = 0; c < cols; ++c) z += (x[c] = math::exp(x[c] - m));
        value_type inv = value_type(1) / z;
        for (index_t c = 0; c < cols; ++c) x[c] *= inv;
      }
    }
    return st;
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return bind_materialised(st.val.data, st.adj, a.shape(), o, g);
  }

  template <class G>
  void backward_children(State& st, G& g) const {
    Shape s = a.shape();
    const index_t cols = s.back(), rows = cols ? s.numel() / cols : 0;
    auto dx = g.ws->template alloc<value_type>(s);
    for (index_t r = 0; r < rows; ++r) {
      const value_type* y = st.val.data + r * cols;
      const value_type* dy = st.adj.data + r * cols;
      value_type* d = dx.data + r * cols;
      value_type acc = 0;
      if constexpr (Log) {
        for (index_t c = 0; c < cols; ++c) acc += dy[c];
        for (index_t c = 0; c < cols; ++c) d[c] = dy[c] - math::exp(y[c]) * acc;
      } else {
        for (index_t c = 0; c < cols; ++c) acc += dy[c] * y[c];
        for (index_t c = 0; c < cols; ++c) d[c] = y[c] * (dy[c] - acc);
      }
    }
    g.run_region(a, st.a, s, kernels::cpu::BufferSeed<value_type>{dx.data, aligned_strides(s, contiguous_strides(s), s), value_type(1)});
  }

};

template <class A, bool Log>
struct contains_param<Softmax<A, Log>> : contains_param<A> {};

static_assert(Expression<Softmax<Leaf<float, cpu>, false>>);

template <Operand X> auto softmax(X&& x) { return Softmax<expr_t<X>, false>(as_expr(std::forward<X>(x))); }
template <Operand X> auto log_softmax(X&& x) { return Softmax<expr_t<X>, true>(as_expr(std::forward<X>(x))); }

}  // namespace weft
