// Elementwise nodes: unary and binary operators with NumPy broadcasting and
// scalar operands. Each op is a struct of host/device functions: the value and
// its local derivative(s), written next to each other. A chain of these nodes is
// evaluated in one fused pass (kernels/cpu/loops.hpp, kernels/cuda/kernels.cuh),
// and so is its adjoint.
#pragma once

#include <type_traits>

#include "../core/math.hpp"
#include "node.hpp"

namespace weft {
namespace op {

// Unary ops: f(x) and df(x, y) with y = f(x) (whichever is cheaper to use).
struct Neg {
  static constexpr const char* name = "neg";
  template <class T> WEFT_HD WEFT_INLINE static T f(T x) { return -x; }
  template <class T> WEFT_HD WEFT_INLINE static T df(T, T) { return T(-1); }
};
struct Abs {
  static constexpr const char* name = "abs";
  template <class T> WEFT_HD WEFT_INLINE static T f(T x) { return x < T(0) ? -x : x; }
  template <class T> WEFT_HD WEFT_INLINE static T df(T x, T) { return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0)); }
};
struct Exp {
  static constexpr const char* name = "exp";
  template <class T> WEFT_HD WEFT_INLINE static T f(T x) { return math::exp(x); }
  template <class T> WEFT_HD WEFT_INLINE static T df(T, T y) { return y; }
};
struct Log {
  static constexpr const char* name = "log";
  template <class T> WEFT_HD WEFT_INLINE static T f(T x) { return math::log(x); }
  template <class T> WEFT_HD WEFT_INLINE static T df(T x, T) { return T(1) / x; }
};
struct Sqrt {
  static constexpr const char* name = "sqrt";
  template <class T> WEFT_HD WEFT_INLINE static T f(T x) { return math::sqrt(x); }
  template <class T> WEFT_HD WEFT_INLINE static T df(T, T y) { return T(0.5) / y; }
};
struct Square {
  static constexpr const char* name = "square";
  template <class T> WEFT_HD WEFT_INLINE static T f(T x) { return x * x; }
  template <class T> WEFT_HD WEFT_INLINE static T df(T x, T) { return T(2) * x; }
};
struct Tanh {
  static constexpr const char* name = "tanh";
  template <class T> WEFT_HD WEFT_INLINE static T f(T x) { return math::tanh(x); }
  template <class T> WEFT_HD WEFT_INLINE static T df(T, T y) { return T(1) - y * y; }
};
struct Sigmoid {
  static constexpr const char* name = "sigmoid";
  template <class T> WEFT_HD WEFT_INLINE static T f(T x) { return math::sigmoid(x); }
  template <class T> WEFT_HD WEFT_INLINE static T df(T, T y) { return y * (T(1) - y); }
};
struct Relu {
  static constexpr const char* name = "relu";
  template <class T> WEFT_HD WEFT_INLINE static T f(T x) { return x > T(0) ? x : T(0); }
  template <class T> WEFT_HD WEFT_INLINE static T df(T x, T) { return x > T(0) ? T(1) : T(0); }
};
// GELU, exact (erf) form as PyTorch's default: x * Phi(x).
struct Gelu {
  static constexpr const char* name = "gelu";
  template <class T> WEFT_HD WEFT_INLINE static T f(T x) {
    return T(0.5) * x * (T(1) + math::erf(x * T(0.70710678118654752440)));
  }
  template <class T> WEFT_HD WEFT_INLINE static T df(T x, T y) { return math::gelu_grad(x, y); }  // (Phi from y: no erf)
};
// erf(x); d/dx = 2/sqrt(pi) exp(-x^2).
struct Erf {
  static constexpr const char* name = "erf";
  template <class T> WEFT_HD WEFT_INLINE static T f(T x) { return math::erf(x); }
  template <class T> WEFT_HD WEFT_INLINE static T df(T x, T) { return T(1.12837916709551257390) * math::exp(-x * x); }
};
// GELU, tanh form (PyTorch's approximate='tanh', GPT-2's):
//   f = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   f' = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2),  t = tanh(u)
struct GeluTanh {
  static constexpr const char* name = "gelu_tanh";
  template <class T> WEFT_HD WEFT_INLINE static T f(T x) {
    return T(0.5) * x * (T(1) + math::tanh(T(0.79788456080286535588) * (x + T(0.044715) * x * x * x)));
  }
  template <class T> WEFT_HD WEFT_INLINE static T df(T x, T) {
    const T t = math::tanh(T(0.79788456080286535588) * (x + T(0.044715) * x * x * x));
    return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * T(0.79788456080286535588) * (T(1) + T(0.134145) * x * x);
  }
};
struct Sin {
  static constexpr const char* name = "sin";
  template <class T> WEFT_HD WEFT_INLINE static T f(T x) { return math::sin(x); }
  template <class T> WEFT_HD WEFT_INLINE static T df(T x, T) { return math::cos(x); }
};
struct Cos {
  static constexpr const char* name = "cos";
  template <class T> WEFT_HD WEFT_INLINE static T f(T x) { return math::cos(x); }
  template <class T> WEFT_HD WEFT_INLINE static T df(T x, T) { return -math::sin(x); }
};

// Binary ops: f(a, b), da(a, b, y), db(a, b, y).
struct Add {
  static constexpr const char* name = "add";
  template <class T> WEFT_HD WEFT_INLINE static T f(T a, T b) { return a + b; }
  template <class T> WEFT_HD WEFT_INLINE static T da(T, T, T) { return T(1); }
  template <class T> WEFT_HD WEFT_INLINE static T db(T, T, T) { return T(1); }
};
struct Sub {
  static constexpr const char* name = "sub";
  template <class T> WEFT_HD WEFT_INLINE static T f(T a, T b) { return a - b; }
  template <class T> WEFT_HD WEFT_INLINE static T da(T, T, T) { return T(1); }
  template <class T> WEFT_HD WEFT_INLINE static T db(T, T, T) { return T(-1); }
};
struct Mul {
  static constexpr const char* name = "mul";
  template <class T> WEFT_HD WEFT_INLINE static T f(T a, T b) { return a * b; }
  template <class T> WEFT_HD WEFT_INLINE static T da(T, T b, T) { return b; }
  template <class T> WEFT_HD WEFT_INLINE static T db(T a, T, T) { return a; }
};
struct Div {
  static constexpr const char* name = "div";
  template <class T> WEFT_HD WEFT_INLINE static T f(T a, T b) { return a / b; }
  template <class T> WEFT_HD WEFT_INLINE static T da(T, T b, T) { return T(1) / b; }
  template <class T> WEFT_HD WEFT_INLINE static T db(T, T b, T y) { return -y / b; }
};
// pow(a, b); d/db uses log(a), defined as 0 where a <= 0 (as for integer powers of negatives).
struct Pow {
  static constexpr const char* name = "pow";
  template <class T> WEFT_HD WEFT_INLINE static T f(T a, T b) { return math::pow(a, b); }
  template <class T> WEFT_HD WEFT_INLINE static T da(T a, T b, T) { return b * math::pow(a, b - T(1)); }
  template <class T> WEFT_HD WEFT_INLINE static T db(T a, T, T y) { return a > T(0) ? y * math::log(a) : T(0); }
};
// Ties split the adjoint evenly between the operands (as PyTorch does).
struct Maximum {
  static constexpr const char* name = "maximum";
  template <class T> WEFT_HD WEFT_INLINE static T f(T a, T b) { return a > b ? a : b; }
  template <class T> WEFT_HD WEFT_INLINE static T da(T a, T b, T) { return a > b ? T(1) : (a == b ? T(0.5) : T(0)); }
  template <class T> WEFT_HD WEFT_INLINE static T db(T a, T b, T) { return b > a ? T(1) : (a == b ? T(0.5) : T(0)); }
};
struct Minimum {
  static constexpr const char* name = "minimum";
  template <class T> WEFT_HD WEFT_INLINE static T f(T a, T b) { return a < b ? a : b; }
  template <class T> WEFT_HD WEFT_INLINE static T da(T a, T b, T) { return a < b ? T(1) : (a == b ? T(0.5) : T(0)); }
  template <class T> WEFT_HD WEFT_INLINE static T db(T a, T b, T) { return b < a ? T(1) : (a == b ? T(0.5) : T(0)); }
};

// Conversion to another element type; the adjoint converts back.
template <class U>
struct Cast {
  static constexpr const char* name = "cast";
  using result = U;
  template <class T> WEFT_HD WEFT_INLINE static U f(T x) { return static_cast<U>(x); }
  template <class T> WEFT_HD WEFT_INLINE static U df(T, U) { return U(1); }
};

// The element type an op yields for operand type T: T, except for casts.
template <class Op, class T>
struct result {
  using type = T;
};
template <class U, class T>
struct result<Cast<U>, T> {
  using type = U;
};
template <class Op>
inline constexpr bool is_cast_v = false;
template <class U>
inline constexpr bool is_cast_v<Cast<U>> = true;

}  // namespace op

// ---------------------------------------------------------------- bound nodes

template <class Op, class A>
struct BoundUnary {
  using value_type = typename op::result<Op, typename A::value_type>::type;
  A a;
  struct Tape {
    value_type v;
    typename A::Tape a;
  };
  template <class Ix>
  WEFT_HD WEFT_INLINE void fwd(const Ix& ix, Tape& t) const {
    a.fwd(ix, t.a);
    t.v = Op::f(t.a.v);
  }
  template <class Ix, class S>
  WEFT_HD WEFT_INLINE void bwd(const Ix& ix, const Tape& t, value_type g, S& s) const {
    a.bwd(ix, t.a, static_cast<typename A::value_type>(g * Op::df(t.a.v, t.v)), s);
  }
  template <class F>
  void visit(F&& f) const {
    a.visit(f);
  }
  template <class F>
  void adjoints(F&& f) {
    a.adjoints(f);
  }
};

template <class Op, class A, class B>
struct BoundBinary {
  using value_type = std::common_type_t<typename A::value_type, typename B::value_type>;
  A a;
  B b;
  struct Tape {
    value_type v;
    typename A::Tape a;
    typename B::Tape b;
  };
  template <class Ix>
  WEFT_HD WEFT_INLINE void fwd(const Ix& ix, Tape& t) const {
    a.fwd(ix, t.a);
    b.fwd(ix, t.b);
    t.v = Op::f(static_cast<value_type>(t.a.v), static_cast<value_type>(t.b.v));
  }
  template <class Ix, class S>
  WEFT_HD WEFT_INLINE void bwd(const Ix& ix, const Tape& t, value_type g, S& s) const {
    value_type av = static_cast<value_type>(t.a.v), bv = static_cast<value_type>(t.b.v);
    a.bwd(ix, t.a, static_cast<typename A::value_type>(g * Op::da(av, bv, t.v)), s);
    b.bwd(ix, t.b, static_cast<typename B::value_type>(g * Op::db(av, bv, t.v)), s);
  }
  template <class F>
  void visit(F&& f) const {
    a.visit(f);
    b.visit(f);
  }
  template <class F>
  void adjoints(F&& f) {
    a.adjoints(f);
    b.adjoints(f);
  }
};

// ---------------------------------------------------------------- nodes

template <class Op, class A>
struct Unary : ExprTag {
  using value_type = typename op::result<Op, typename A::value_type>::type;
  using device_type = typename A::device_type;
  static constexpr int static_rank = A::static_rank;
  static constexpr int param_occurrences = param_occurrences_of<A>();
  A a;

  explicit Unary(A child) : a(child) {
    static_assert(is_floating_v<value_type> || std::is_same_v<Op, op::Neg> || std::is_same_v<Op, op::Abs> ||
                      std::is_same_v<Op, op::Square> || op::is_cast_v<Op>,
                  "this elementwise function needs a floating-point operand: cast integer tensors with weft::cast<float>(x)");
  }
  Shape shape() const { return a.shape(); }

  struct State {
    typename A::State a;
  };
  template <class X>
  State forward(const X& ex) const {
    return {a.forward(ex)};
  }
  template <class G>
  auto bind(State& st, const Shape& out, G& g) const {
    return BoundUnary<Op, decltype(a.bind(st.a, out, g))>{a.bind(st.a, out, g)};
  }
  template <class G>
  void backward_children(State& st, G& g) const {
    a.backward_children(st.a, g);
  }
  template <class F>
  void for_each_param(F&& f) const {
    a.for_each_param(f);
  }
  template <std::size_t I>
  static constexpr int slots_in_region() {
    return A::template slots_in_region<I>();
  }
  template <std::size_t I>
  static constexpr int slots_total() {
    return A::template slots_total<I>();
  }
};

template <class Op, class A, class B>
struct Binary : ExprTag {
  using value_type = std::common_type_t<typename A::value_type, typename B::value_type>;
  using device_type = typename A::device_type;
  static constexpr int static_rank =
      (A::static_rank < 0 || B::static_rank < 0) ? -1 : (A::static_rank > B::static_rank ? A::static_rank : B::static_rank);
  static constexpr int param_occurrences = param_occurrences_of<A>() + param_occurrences_of<B>();
  A a;
  B b;
  Shape out;

  Binary(A lhs, B rhs) : a(lhs), b(rhs), out(broadcast_or_throw(Op::name, lhs.shape(), rhs.shape())) {
    static_assert(std::is_same_v<typename A::device_type, typename B::device_type>,
                  "an expression cannot mix tensors of different devices: copy one operand first");
    static_assert(is_floating_v<typename A::value_type> == is_floating_v<typename B::value_type>,
                  "an expression cannot mix integer and floating-point operands: convert with weft::cast<float>(x)");
  }
  Shape shape() const { return out; }

  struct State {
    typename A::State a;
    typename B::State b;
  };
  template <class X>
  State forward(const X& ex) const {
    return {a.forward(ex), b.forward(ex)};
  }
  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    auto ba = a.bind(st.a, o, g);
    auto bb = b.bind(st.b, o, g);
    return BoundBinary<Op, decltype(ba), decltype(bb)>{ba, bb};
  }
  template <class G>
  void backward_children(State& st, G& g) const {
    a.backward_children(st.a, g);
    b.backward_children(st.b, g);
  }
  template <class F>
  void for_each_param(F&& f) const {
    a.for_each_param(f);
    b.for_each_param(f);
  }
  template <std::size_t I>
  static constexpr int slots_in_region() {
    return A::template slots_in_region<I>() + B::template slots_in_region<I>();
  }
  template <std::size_t I>
  static constexpr int slots_total() {
    return A::template slots_total<I>() + B::template slots_total<I>();
  }
};

static_assert(Expression<Unary<op::Tanh, Leaf<float, cpu>>> && Expression<Binary<op::Mul, Leaf<float, cpu>, Scalar<float>>>);

// ---------------------------------------------------------------- building nodes

template <class Op, class X>
auto make_unary(X&& x) {
  using A = expr_t<X>;
  return Unary<Op, A>(as_expr(std::forward<X>(x)));
}

// A scalar operand takes the element type of the other operand.
template <class Op, class X, class Y>
auto make_binary(X&& x, Y&& y) {
  if constexpr (std::is_arithmetic_v<std::remove_cvref_t<X>>) {
    using B = expr_t<Y>;
    using S = Scalar<typename B::value_type, typename B::device_type>;
    return Binary<Op, S, B>(S(static_cast<typename B::value_type>(x)), as_expr(std::forward<Y>(y)));
  } else if constexpr (std::is_arithmetic_v<std::remove_cvref_t<Y>>) {
    using A = expr_t<X>;
    using S = Scalar<typename A::value_type, typename A::device_type>;
    return Binary<Op, A, S>(as_expr(std::forward<X>(x)), S(static_cast<typename A::value_type>(y)));
  } else {
    using A = expr_t<X>;
    using B = expr_t<Y>;
    return Binary<Op, A, B>(as_expr(std::forward<X>(x)), as_expr(std::forward<Y>(y)));
  }
}

template <class X, class Y>
concept BinaryOperands = (Operand<X> && Operand<Y>) || (Operand<X> && std::is_arithmetic_v<std::remove_cvref_t<Y>>) ||
                         (std::is_arithmetic_v<std::remove_cvref_t<X>> && Operand<Y>);

template <class X, class Y> requires BinaryOperands<X, Y>
auto operator+(X&& x, Y&& y) { return make_binary<op::Add>(std::forward<X>(x), std::forward<Y>(y)); }
template <class X, class Y> requires BinaryOperands<X, Y>
auto operator-(X&& x, Y&& y) { return make_binary<op::Sub>(std::forward<X>(x), std::forward<Y>(y)); }
template <class X, class Y> requires BinaryOperands<X, Y>
auto operator*(X&& x, Y&& y) { return make_binary<op::Mul>(std::forward<X>(x), std::forward<Y>(y)); }
template <class X, class Y> requires BinaryOperands<X, Y>
auto operator/(X&& x, Y&& y) { return make_binary<op::Div>(std::forward<X>(x), std::forward<Y>(y)); }
template <class X, class Y> requires BinaryOperands<X, Y>
auto pow(X&& x, Y&& y) { return make_binary<op::Pow>(std::forward<X>(x), std::forward<Y>(y)); }
// Elementwise max/min (NumPy's maximum/minimum); max(x)/max(x, axis) are reductions.
template <class X, class Y> requires BinaryOperands<X, Y>
auto maximum(X&& x, Y&& y) { return make_binary<op::Maximum>(std::forward<X>(x), std::forward<Y>(y)); }
template <class X, class Y> requires BinaryOperands<X, Y>
auto minimum(X&& x, Y&& y) { return make_binary<op::Minimum>(std::forward<X>(x), std::forward<Y>(y)); }

template <Operand X> auto operator-(X&& x) { return make_unary<op::Neg>(std::forward<X>(x)); }
template <Operand X> auto neg(X&& x) { return make_unary<op::Neg>(std::forward<X>(x)); }
template <Operand X> auto abs(X&& x) { return make_unary<op::Abs>(std::forward<X>(x)); }
template <Operand X> auto exp(X&& x) { return make_unary<op::Exp>(std::forward<X>(x)); }
template <Operand X> auto log(X&& x) { return make_unary<op::Log>(std::forward<X>(x)); }
template <Operand X> auto sqrt(X&& x) { return make_unary<op::Sqrt>(std::forward<X>(x)); }
template <Operand X> auto square(X&& x) { return make_unary<op::Square>(std::forward<X>(x)); }
template <Operand X> auto tanh(X&& x) { return make_unary<op::Tanh>(std::forward<X>(x)); }
template <Operand X> auto sigmoid(X&& x) { return make_unary<op::Sigmoid>(std::forward<X>(x)); }
template <Operand X> auto relu(X&& x) { return make_unary<op::Relu>(std::forward<X>(x)); }
template <Operand X> auto gelu(X&& x) { return make_unary<op::Gelu>(std::forward<X>(x)); }
template <Operand X> auto erf(X&& x) { return make_unary<op::Erf>(std::forward<X>(x)); }
template <Operand X> auto gelu_tanh(X&& x) { return make_unary<op::GeluTanh>(std::forward<X>(x)); }
template <Operand X> auto sin(X&& x) { return make_unary<op::Sin>(std::forward<X>(x)); }
template <Operand X> auto cos(X&& x) { return make_unary<op::Cos>(std::forward<X>(x)); }
template <class U, Operand X> auto cast(X&& x) { return make_unary<op::Cast<U>>(std::forward<X>(x)); }

}  // namespace weft
