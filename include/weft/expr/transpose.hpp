// transpose(x): swap the last two axes. Of a tensor, view or differentiated
// input it is free (a view with swapped strides, which matmul turns into a BLAS
// flag); of a computed expression it is a materialisation point.
#pragma once

#include "node.hpp"

namespace weft {

namespace detail {
inline Shape swap_last(Shape s) {
  if (s.rank >= 2) std::swap(s[s.rank - 1], s[s.rank - 2]);
  return s;
}
inline Strides swap_last(Strides st, int rank) {
  if (rank >= 2) std::swap(st[rank - 1], st[rank - 2]);
  return st;
}
}  // namespace detail

template <class A>
struct Transpose : OneChildNode<Transpose<A>, A> {
  using value_type = typename A::value_type;
  using device_type = typename A::device_type;
  static constexpr int static_rank = A::static_rank;
  static constexpr int param_occurrences = param_occurrences_of<A>();
  A a;
  explicit Transpose(A child) : a(child) {}
  Shape shape() const { return detail::swap_last(a.shape()); }

  struct State {
    typename A::State a;
    TensorView<value_type, device_type> val;  // the child's value, untransposed
    TensorView<value_type, device_type> adj;  // likewise
  };
  template <class X>
  State forward(const X& ex) const {
    State st{a.forward(ex), {}, {}};
    st.val = materialise(a, st.a, ex);
    return st;
  }
  // Read the child's buffer through swapped strides.
  Strides read_strides(const Shape& o) const {
    Shape s = a.shape();
    return aligned_strides(shape(), detail::swap_last(contiguous_strides(s), s.rank), o);
  }
  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    Shape s = a.shape();
    Strides own = detail::swap_last(contiguous_strides(s), s.rank);
    if constexpr (G::active) {
      st.adj = kernels::zeros<value_type>(g.exec(), s);
      return BoundBuffer<value_type, true>{st.val.data, st.adj.data, read_strides(o), shape(), own};
    } else {
      return BoundBuffer<value_type, false>{st.val.data, nullptr, read_strides(o), shape(), own};
    }
  }
  template <class G>
  void backward_children(State& st, G& g) const {
    Shape s = a.shape();
    g.run_region(a, st.a, s, kernels::BufferSeed<value_type>{st.adj.data, aligned_strides(s, contiguous_strides(s), s), value_type(1)});
  }
};

static_assert(Expression<Transpose<Leaf<float, cpu>>>);

template <Operand X>
auto transpose(X&& x) {
  using E = expr_t<X>;
  if constexpr (TensorLike<X>) {
    auto leaf = as_expr(std::forward<X>(x));
    return Leaf<typename decltype(leaf.v)::value_type, typename E::device_type>(leaf.v.transposed());
  } else if constexpr (requires { E::slot; }) {
    return Arg<E::slot, typename decltype(x.v)::value_type, typename E::device_type>(x.v.transposed());
  } else if constexpr (requires { x.v.transposed(); }) {
    return E(x.v.transposed());
  } else {
    return Transpose<E>(as_expr(std::forward<X>(x)));
  }
}

}  // namespace weft
