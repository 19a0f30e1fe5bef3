// Reductions: sum, mean, max over everything or over one axis (keepdim
// optional). They are materialisation points: forward reduces the child's
// elementwise region in one pass into a workspace buffer; backward seeds the
// child's region with the (broadcast) adjoint.
#pragma once

#include "elementwise.hpp"
#include "node.hpp"

namespace weft {

enum class ReduceKind { sum, mean, max };

template <ReduceKind Kind, class A, bool All>
struct Reduce : OneChildNode<Reduce<Kind, A, All>, A> {
  using value_type = typename A::value_type;
  using device_type = typename A::device_type;
  static constexpr int static_rank = All ? 0 : -1;
  static_assert(is_floating_v<value_type>, "sum/mean/max of an integer expression: cast it with weft::cast<float>(x) first");
  static constexpr int param_occurrences = param_occurrences_of<A>();

  A a;
  int axis = 0;       // normalised; unused when All
  Shape keep;         // the reduced shape with the axis kept as 1
  Shape out;          // the result's shape

  Reduce(A child, int ax, bool keepdim) : a(child) {
    Shape in = a.shape();
    if constexpr (All) {
      (void)ax;
      keep.rank = in.rank;
      for (int d = 0; d < in.rank; ++d) keep[d] = 1;
      out = keepdim ? keep : Shape{};
    } else {
      axis = normalize_axis(name(), ax, in.rank);
      keep = in;
      keep[axis] = 1;
      out.rank = 0;
      for (int d = 0; d < in.rank; ++d)
        if (d != axis || keepdim) out[out.rank++] = d == axis ? 1 : in[d];
    }
    if (Kind == ReduceKind::max && in.numel() == 0)
      throw_error<ShapeError>(name(), ": max of an empty tensor of shape ", in, " is undefined");
  }
  static constexpr const char* name() {
    return Kind == ReduceKind::sum ? "sum" : Kind == ReduceKind::mean ? "mean" : "max";
  }
  Shape shape() const { return out; }
  index_t count() const { return All ? a.shape().numel() : a.shape()[axis]; }

  struct State {
    typename A::State a;
    TensorView<value_type, device_type> val;  // keep-dims shape
    TensorView<value_type, device_type> adj;
  };

  template <class X>
  State forward(const X& ex) const {
    State st{a.forward(ex), {}, {}};
    NoGrad ng;
    Shape in = a.shape();
    auto b = a.bind(st.a, in, ng);
    st.val = kernels::alloc<value_type>(ex, keep);
    using R = std::conditional_t<Kind == ReduceKind::max, kernels::MaxOp, kernels::SumOp>;
    if constexpr (All)
      kernels::reduce_all<R>(ex, b, in, st.val.data);
    else
      kernels::reduce_into<R>(ex, b, in, st.val.data, aligned_strides(keep, contiguous_strides(keep), in), keep.numel());
    if constexpr (Kind == ReduceKind::mean) {
      value_type inv = value_type(1) / static_cast<value_type>(count());
      kernels::evaluate(ex, BoundBinary<op::Mul, BoundBuffer<value_type, false>, BoundScalar<value_type>>{buffer(st.val.data), {inv}}, st.val);
    }
    return st;
  }

  // A keep-dims buffer read at its own shape.
  BoundBuffer<value_type, false> buffer(const value_type* p) const {
    const Strides c = contiguous_strides(keep);
    return {p, nullptr, aligned_strides(keep, c, keep), keep, c};
  }

  // (The adjoint buffer has the result's shape; keep-dims code reads the same memory.)
  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return bind_materialised(st.val.data, st.adj, out, o, g);
  }

  template <class G>
  void backward_children(State& st, G& g) const {
    Shape in = a.shape();
    Strides s = aligned_strides(keep, contiguous_strides(keep), in);
    const auto& ex = g.exec();
    if constexpr (Kind == ReduceKind::max) {
      // Ties share the adjoint evenly (PyTorch's amax rule): count them first.
      auto ties = kernels::alloc<value_type>(ex, keep);
      NoGrad ng;
      kernels::reduce_into<kernels::SumOp>(ex, TieCount<decltype(a.bind(st.a, in, ng))>{a.bind(st.a, in, ng), st.val.data, s}, in,
                                           ties.data, s, keep.numel());
      TensorView<value_type, device_type> adj(st.adj.data, keep);
      kernels::evaluate(ex, BoundBinary<op::Div, BoundBuffer<value_type, false>, BoundBuffer<value_type, false>>{buffer(adj.data), buffer(ties.data)}, adj);
      g.run_region(a, st.a, in, MaxSeed{st.adj.data, st.val.data, s});
    } else {
      value_type scale = Kind == ReduceKind::mean ? value_type(1) / static_cast<value_type>(count()) : value_type(1);
      g.run_region(a, st.a, in, kernels::BufferSeed<value_type>{st.adj.data, s, scale});
    }
  }

  // 1 where the child's value equals the maximum of its group, else 0.
  template <class B>
  struct TieCount {
    using value_type = typename B::value_type;
    B b;
    const value_type* mx;
    Strides st;
    struct Tape {
      value_type v;
    };
    template <class Ix>
    WEFT_HD WEFT_INLINE void fwd(const Ix& ix, Tape& t) const {
      t.v = value_at(b, ix) == mx[offset(ix, st)] ? value_type(1) : value_type(0);
    }
    template <class Ix, class S>
    WEFT_HD WEFT_INLINE void bwd(const Ix&, const Tape&, value_type, S&) const {}
    template <class F>
    void visit(F&& f) const {
      b.visit(f);
    }
    template <class F>
    void adjoints(F&&) {}  // (forward only)
  };

  // The adjoint of max reaches the elements equal to the maximum.
  struct MaxSeed {
    const value_type* adj;
    const value_type* mx;
    Strides st;
    template <class Ix>
    WEFT_HD WEFT_INLINE value_type operator()(const Ix& ix, value_type v) const {
      index_t o = offset(ix, st);
      return v == mx[o] ? adj[o] : value_type(0);
    }
    bool linear(const Shape& sh) const { return kernels::strides_linear(st, sh); }
  };

};

static_assert(Expression<Reduce<ReduceKind::sum, Leaf<float, cpu>, true>>);

template <class E>
struct is_full_sum : std::false_type {};
template <ReduceKind K, class A>
struct is_full_sum<Reduce<K, A, true>> : std::bool_constant<K != ReduceKind::max> {};

template <Operand X> auto sum(X&& x, bool keepdim = false) {
  return Reduce<ReduceKind::sum, expr_t<X>, true>(as_expr(std::forward<X>(x)), 0, keepdim);
}
template <Operand X> auto mean(X&& x, bool keepdim = false) {
  return Reduce<ReduceKind::mean, expr_t<X>, true>(as_expr(std::forward<X>(x)), 0, keepdim);
}
template <Operand X> auto max(X&& x, bool keepdim = false) {
  return Reduce<ReduceKind::max, expr_t<X>, true>(as_expr(std::forward<X>(x)), 0, keepdim);
}
template <Operand X> auto sum(X&& x, int axis, bool keepdim = false) {
  return Reduce<ReduceKind::sum, expr_t<X>, false>(as_expr(std::forward<X>(x)), axis, keepdim);
}
template <Operand X> auto mean(X&& x, int axis, bool keepdim = false) {
  return Reduce<ReduceKind::mean, expr_t<X>, false>(as_expr(std::forward<X>(x)), axis, keepdim);
}
template <Operand X> auto max(X&& x, int axis, bool keepdim = false) {
  return Reduce<ReduceKind::max, expr_t<X>, false>(as_expr(std::forward<X>(x)), axis, keepdim);
}

}  // namespace weft
