// Reductions: sum, mean, max over everything or over one axis (keepdim
// optional; see "building nodes" below for the argument rules). They are materialisation points: forward reduces the child's
// elementwise region in one pass into a workspace buffer; backward seeds the
// child's region with the (broadcast) adjoint.
#pragma once

#include <concepts>
#include <type_traits>
#include <utility>

#include "elementwise.hpp"
#include "node.hpp"

namespace weft {

enum class ReduceKind { sum, mean, max };


// The adjoint of max reaches the elements equal to the maximum (outside the
// node: see CrossEntropySeed in expr/cross_entropy.hpp).
template <class value_type>
struct ReduceMaxSeed {
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
      g.run_region(a, st.a, in, ReduceMaxSeed<value_type>{st.adj.data, st.val.data, s});
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


};

static_assert(Expression<Reduce<ReduceKind::sum, Leaf<float, cpu>, true>>);

template <class E>
struct is_full_sum : std::false_type {};
template <ReduceKind K, class A>
struct is_full_sum<Reduce<K, A, true>> : std::bool_constant<K != ReduceKind::max> {};

// ---------------------------------------------------------------- building nodes
// The axis and keep-dims arguments cannot be confused:
//   sum(x)                      everything, rank-0 result
//   sum(x, keepdim)             everything, every axis kept as 1 (the tag below)
//   sum(x, axis)                one axis: any integer type (int, index_t, size_t, unsigned)
//   sum(x, axis, keepdim)       keepdim a bool (or the tag)
// sum(x, true) would have reduced everything before, silently: a bool where
// the axis goes is refused at compile time with a sentence.

// The keep-dims tag: sum(x, weft::keepdim), sum(x, 1, weft::keepdim).
struct KeepDim {
  explicit constexpr KeepDim() = default;
};
inline constexpr KeepDim keepdim{};

// An axis argument: any integer type but bool.
template <class I>
concept AxisIndex = std::integral<I> && !std::same_as<std::remove_cvref_t<I>, bool>;

namespace detail {
// An integer axis as int, or a ValueError naming it (a size_t of 2^40 must not wrap).
template <AxisIndex I>
int axis_arg(const char* op, I axis) {
  bool ok;
  if constexpr (std::is_signed_v<I>)
    ok = static_cast<long long>(axis) >= -max_rank && static_cast<long long>(axis) <= max_rank;
  else
    ok = static_cast<unsigned long long>(axis) <= static_cast<unsigned long long>(max_rank);
  if (!ok) throw_error<ValueError>(op, ": axis ", +axis, " is out of range (weft tensors have rank <= ", max_rank, ")");
  return static_cast<int>(axis);
}
template <class B>
constexpr bool keepdim_arg(B k) {
  if constexpr (std::is_same_v<B, KeepDim>)
    return (void)k, true;
  else
    return k;
}
template <class B>
concept KeepDimArg = std::same_as<B, bool> || std::same_as<B, KeepDim>;
}  // namespace detail

#define WEFT_REDUCTION(fn, kind)                                                                                         \
  template <Operand X>                                                                                                 \
  auto fn(X&& x) {                                                                                                     \
    return Reduce<ReduceKind::kind, expr_t<X>, true>(as_expr(std::forward<X>(x)), 0, false);                           \
  }                                                                                                                    \
  template <Operand X>                                                                                                 \
  auto fn(X&& x, KeepDim) {                                                                                            \
    return Reduce<ReduceKind::kind, expr_t<X>, true>(as_expr(std::forward<X>(x)), 0, true);                            \
  }                                                                                                                    \
  template <Operand X, AxisIndex I>                                                                                    \
  auto fn(X&& x, I axis) {                                                                                             \
    return Reduce<ReduceKind::kind, expr_t<X>, false>(as_expr(std::forward<X>(x)), detail::axis_arg(#fn, axis), false); \
  }                                                                                                                    \
  template <Operand X, AxisIndex I, detail::KeepDimArg K>                                                              \
  auto fn(X&& x, I axis, K keep) {                                                                                     \
    return Reduce<ReduceKind::kind, expr_t<X>, false>(as_expr(std::forward<X>(x)), detail::axis_arg(#fn, axis),         \
                                                      detail::keepdim_arg(keep));                                      \
  }                                                                                                                    \
  template <Operand X, class B>                                                                                        \
    requires std::same_as<std::remove_cvref_t<B>, bool>                                                                \
  auto fn(X&& x, B) {                                                                                                  \
    static_assert(dependent_false<B>, #fn "(x, bool): a bool is not an axis; to keep the reduced axes write " #fn      \
                                          "(x, weft::keepdim), for one axis " #fn "(x, axis, keepdim)");             \
    return fn(std::forward<X>(x));                                                                                     \
  }

WEFT_REDUCTION(sum, sum)
WEFT_REDUCTION(mean, mean)
WEFT_REDUCTION(max, max)
#undef WEFT_REDUCTION

}  // namespace weft
