// where(mask, a, b): a where mask is true, else b, elementwise with NumPy
// broadcasting of all three (torch.where). Fused into the region around it:
//   forward   y = mask ? a : b
//   backward  da = mask ? dy : 0,  db = mask ? 0 : dy   (the mask gets none)
// The mask is a bool or integer expression (a Tensor<bool> or <uint8_t>, or
// causal_mask); a floating-point mask is refused at compile time. Either of a
// and b may be a number (where(mask, scores, -inf)).
//
// causal_mask(t, s, diagonal = 0): the (t, s) bool mask that keeps key j for
// query i when j <= i + diagonal (torch.ones(t, s).tril(diagonal)). It reads
// no memory: each element is computed from its index where it is used.
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <utility>

#include "elementwise.hpp"
#include "node.hpp"

namespace weft {

// ---------------------------------------------------------------- bound nodes

template <class M, class A, class B>
struct BoundWhere {
  using value_type = std::common_type_t<typename A::value_type, typename B::value_type>;
  M m;
  A a;
  B b;
  struct Tape {
    value_type v;
    typename M::Tape m;
    typename A::Tape a;
    typename B::Tape b;
  };
  template <class Ix>
  WEFT_HD WEFT_INLINE void fwd(const Ix& ix, Tape& t) const {
    m.fwd(ix, t.m);
    a.fwd(ix, t.a);
    b.fwd(ix, t.b);
    t.v = t.m.v != typename M::value_type(0) ? static_cast<value_type>(t.a.v) : static_cast<value_type>(t.b.v);
  }
  template <class Ix, class S>
  WEFT_HD WEFT_INLINE void bwd(const Ix& ix, const Tape& t, value_type g, S& s) const {
    const bool keep = t.m.v != typename M::value_type(0);
    a.bwd(ix, t.a, static_cast<typename A::value_type>(keep ? g : value_type(0)), s);
    b.bwd(ix, t.b, static_cast<typename B::value_type>(keep ? value_type(0) : g), s);
  }
  template <class F>
  void visit(F&& f) const {
    m.visit(f);
    a.visit(f);
    b.visit(f);
  }
  template <class F>
  void adjoints(F&& f) {
    m.adjoints(f);
    a.adjoints(f);
    b.adjoints(f);
  }
};

// The causal mask at one element: its offset in the (t, s) mask (read through
// strides aligned to the region, 0 where broadcast) gives its row and column.
struct BoundCausal {
  using value_type = bool;
  Strides st;
  Shape shape;
  index_t s;
  index_t diagonal;
  struct Tape {
    value_type v;
  };
  template <class Ix>
  WEFT_HD WEFT_INLINE void fwd(const Ix& ix, Tape& t) const {
    const index_t off = offset(ix, st);
    t.v = off % s <= off / s + diagonal;
  }
  template <class Ix, class S>
  WEFT_HD WEFT_INLINE void bwd(const Ix&, const Tape&, value_type, S&) const {}
  // Reported as a leaf that reads no memory, so that the contiguous fast path
  // is taken only where the linear index is the mask's own offset.
  template <class F>
  void visit(F&& f) const {
    f(LeafInfo{nullptr, st, shape, contiguous_strides(shape), 0});
  }
  template <class F>
  void adjoints(F&&) {}
};

// ---------------------------------------------------------------- nodes

template <class Device = cpu>
struct CausalMask : LeafNodeBase {
  using value_type = bool;
  using device_type = Device;
  static constexpr int param_occurrences = 0;
  static constexpr int static_rank = 2;
  index_t t, s, diagonal;
  CausalMask(index_t rows, index_t cols, index_t diag) : t(rows), s(cols), diagonal(diag) {
    if (rows < 0 || cols < 0) throw_error<ShapeError>("causal_mask: negative size (", rows, ", ", cols, ")");
  }
  Shape shape() const { return Shape{t, s}; }
  template <class X>
  State forward(const X&) const {
    return {};
  }
  template <class G>
  BoundCausal bind(State&, const Shape& out, G&) const {
    const Shape sh = shape();
    return {aligned_strides(sh, contiguous_strides(sh), out), sh, s > 0 ? s : 1, diagonal};
  }
};

template <class M, class A, class B>
struct Where : ExprTag {
  using value_type = std::common_type_t<typename A::value_type, typename B::value_type>;
  using device_type = typename A::device_type;
  static constexpr int static_rank = (M::static_rank < 0 || A::static_rank < 0 || B::static_rank < 0)
                                         ? -1
                                         : std::max({M::static_rank, A::static_rank, B::static_rank});
  static constexpr int param_occurrences = param_occurrences_of<M>() + param_occurrences_of<A>() + param_occurrences_of<B>();
  static_assert(!is_floating_v<typename M::value_type>,
                "where: the mask must be a bool or integer expression (a Tensor<bool> or Tensor<std::uint8_t>, or "
                "causal_mask), not floating point: convert it with weft::cast<bool>(x)");
  static_assert(std::is_same_v<typename M::device_type, device_type> && std::is_same_v<typename B::device_type, device_type>,
                "an expression cannot mix tensors of different devices: copy one operand first");
  static_assert(is_floating_v<typename A::value_type> == is_floating_v<typename B::value_type>,
                "where: the two value operands must both be floating point or both integer: convert with weft::cast<float>(x)");
  M m;
  A a;
  B b;
  Shape out;

  Where(M mask, A lhs, B rhs) : m(mask), a(lhs), b(rhs) {
    Shape ab;
    if (!broadcast_shapes(a.shape(), b.shape(), ab) || !broadcast_shapes(m.shape(), ab, out))
      throw_error<ShapeError>("where: the mask ", m.shape(), " and the operands ", a.shape(), " and ", b.shape(),
                              " do not broadcast (trailing dimensions must be equal or 1)");
  }
  Shape shape() const { return out; }

  struct State {
    typename M::State m;
    typename A::State a;
    typename B::State b;
  };
  template <class X>
  State forward(const X& ex) const {
    return {m.forward(ex), a.forward(ex), b.forward(ex)};
  }
  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    auto bm = m.bind(st.m, o, g);
    auto ba = a.bind(st.a, o, g);
    auto bb = b.bind(st.b, o, g);
    return BoundWhere<decltype(bm), decltype(ba), decltype(bb)>{bm, ba, bb};
  }
  template <class G>
  void backward_children(State& st, G& g) const {
    m.backward_children(st.m, g);
    a.backward_children(st.a, g);
    b.backward_children(st.b, g);
  }
  template <class F>
  void for_each_param(F&& f) const {
    m.for_each_param(f);
    a.for_each_param(f);
    b.for_each_param(f);
  }
  template <std::size_t I>
  static constexpr int slots_in_region() {
    return M::template slots_in_region<I>() + A::template slots_in_region<I>() + B::template slots_in_region<I>();
  }
  template <std::size_t I>
  static constexpr int slots_total() {
    return M::template slots_total<I>() + A::template slots_total<I>() + B::template slots_total<I>();
  }
};

static_assert(Expression<Where<CausalMask<>, Leaf<float, cpu>, Scalar<float>>>);

// The (t, s) causal mask: key j is visible from query i when j <= i + diagonal.
template <class Device = cpu>
CausalMask<Device> causal_mask(index_t t, index_t s, index_t diagonal = 0) {
  return CausalMask<Device>(t, s, diagonal);
}

// where(mask, a, b); a or b may be a number, which takes the other's element type.
template <Operand Mk, class X, class Y>
  requires(BinaryOperands<X, Y>)
auto where(Mk&& mask, X&& x, Y&& y) {
  using M = expr_t<Mk>;
  if constexpr (std::is_arithmetic_v<std::remove_cvref_t<X>>) {
    using B = expr_t<Y>;
    using S = Scalar<typename B::value_type, typename B::device_type>;
    return Where<M, S, B>(as_expr(std::forward<Mk>(mask)), S(static_cast<typename B::value_type>(x)), as_expr(std::forward<Y>(y)));
  } else if constexpr (std::is_arithmetic_v<std::remove_cvref_t<Y>>) {
    using A = expr_t<X>;
    using S = Scalar<typename A::value_type, typename A::device_type>;
    return Where<M, A, S>(as_expr(std::forward<Mk>(mask)), as_expr(std::forward<X>(x)), S(static_cast<typename A::value_type>(y)));
  } else {
    return Where<M, expr_t<X>, expr_t<Y>>(as_expr(std::forward<Mk>(mask)), as_expr(std::forward<X>(x)), as_expr(std::forward<Y>(y)));
  }
}

}  // namespace weft
