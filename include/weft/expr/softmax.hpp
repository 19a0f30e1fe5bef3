// softmax and log_softmax over the last axis (materialisation points).
// Forward evaluates the child region once into a buffer and normalises each
// row (kernels' softmax_rows); backward applies the row-wise Jacobian
// (softmax_rows_backward) and seeds the child's region with it:
//   softmax:      dx = y * (dy - sum(dy * y))
//   log_softmax:  dx = dy - exp(y) * sum(dy)
#pragma once

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
  static constexpr int param_occurrences = param_occurrences_of<A>();

  A a;
  explicit Softmax(A child) : a(child) {
    if (a.shape().rank == 0) throw_error<ShapeError>(name(), ": needs rank >= 1, got a rank-0 operand");
  }
  static constexpr const char* name() { return Log ? "log_softmax" : "softmax"; }
  Shape shape() const { return a.shape(); }

  struct State {
    typename A::State a;
    TensorView<value_type, device_type> val;
    TensorView<value_type, device_type> adj;
  };

  template <class X>
  State forward(const X& ex) const {
    State st{a.forward(ex), {}, {}};
    Shape s = a.shape();
    st.val = materialise(a, st.a, ex);
    const index_t cols = s.back(), rows = cols ? s.numel() / cols : 0;
    kernels::softmax_rows<Log>(ex, st.val.data, rows, cols);
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
    auto dx = kernels::alloc<value_type>(g.exec(), s);
    kernels::softmax_rows_backward<Log>(g.exec(), st.val.data, st.adj.data, dx.data, rows, cols);
    g.run_region(a, st.a, s, kernels::BufferSeed<value_type>{dx.data, aligned_strides(s, contiguous_strides(s), s), value_type(1)});
  }
};

static_assert(Expression<Softmax<Leaf<float, cpu>, false>>);

template <Operand X> auto softmax(X&& x) { return Softmax<expr_t<X>, false>(as_expr(std::forward<X>(x))); }
template <Operand X> auto log_softmax(X&& x) { return Softmax<expr_t<X>, true>(as_expr(std::forward<X>(x))); }

}  // namespace weft
