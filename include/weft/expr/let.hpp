// let(value, body): use one sub-expression several times, evaluated once.
//
// Expressions are values: `auto h = tanh(matmul(x, W)); auto y = h * h + h;`
// copies h into y's type three times, so its matmul runs three times and deep
// reuse makes the type (and compile time) grow exponentially. let shares it:
//
//   auto y = let(tanh(matmul(x, W)), [](auto h) { return h * h + h; });
//
// `value` is evaluated once into workspace memory (a materialisation point,
// like a reduction); `body` is called with a leaf that reads that memory, and
// its result is fused into the surrounding region as usual. In backward every
// occurrence of the leaf adds its adjoint to one buffer, which then seeds
// value's own backward once. body is called while the expression is built and
// again at each evaluation, so what it captures must outlive the evaluation
// (capture by reference as for any operand).
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

#include "node.hpp"

namespace weft {

// The leaf body receives: the shared value's buffer and, when differentiating,
// the buffer all its occurrences add their adjoints to. Src is the shared
// expression's type: an occurrence under a materialising node (matmul) must
// deliver its adjoint whenever Src has anything to differentiate.
template <class T, class Device, class Src = void>
struct Shared : LeafNodeBase {
  template <class G>
  static constexpr bool grad_through() {
    if constexpr (std::is_void_v<Src>)
      return false;
    else
      return needs_grad<Src, G>();
  }
  using value_type = T;
  using device_type = Device;
  static constexpr int param_occurrences = 0;
  static constexpr bool feeds_adjoint = true;  // backward adds into the let's buffer (needs_grad)
  Shape s;
  const T* val = nullptr;
  T* adj = nullptr;

  Shared(const Shape& shape, const T* value, T* adjoint) : s(shape), val(value), adj(adjoint) {}
  Shape shape() const { return s; }
  template <class X>
  State forward(const X&) const {
    return {};
  }
  template <class G>
  auto bind(State&, const Shape& out, G&) const {
    const Strides c = contiguous_strides(s);
    if constexpr (G::active)
      return BoundBuffer<T, true>{val, adj, aligned_strides(s, c, out), s, c};
    else
      return BoundBuffer<T, false>{val, nullptr, aligned_strides(s, c, out), s, c};
  }
};

template <class A, class Fn>
struct Let : ExprTag {
  using T = typename A::value_type;
  using Ref = Shared<T, typename A::device_type, A>;
  using Body = expr_t<std::invoke_result_t<const Fn&, Ref>>;
  using value_type = typename Body::value_type;
  using device_type = typename A::device_type;
  static constexpr int static_rank = Body::static_rank;
  static constexpr int param_occurrences = param_occurrences_of<A>() + param_occurrences_of<Body>();
  static_assert(std::is_same_v<typename Body::device_type, device_type>,
                "let: the body must compute on the shared value's device");

  A a;
  Fn fn;
  Body proto;  // the body over a placeholder: its shape and its parameters

  Let(A value, Fn body) : a(value), fn(std::move(body)), proto(make(nullptr, nullptr)) {}
  Shape shape() const { return proto.shape(); }

  Body make(const T* val, T* adj) const { return as_expr(fn(Ref(a.shape(), val, adj))); }

  struct State {
    typename A::State a;
    TensorView<T, device_type> val, adj;  // the shared value and its adjoint: a's shape
    Body body;
    typename Body::State b;
  };

  template <class X>
  State forward(const X& ex) const {
    auto sa = a.forward(ex);
    // A node whose value already lies in its state (a matmul, attention,
    // layer norm) is shared where it lies, not copied.
    TensorView<T, device_type> val;
    if constexpr (requires { requires A::value_in_state; })
      val = sa.val;
    else
      val = materialise(a, sa, ex);
    auto adj = kernels::alloc<T>(ex, a.shape());  // zeroed when a backward pass binds the body
    Body body = make(val.data, adj.data);
    auto sb = body.forward(ex);
    return State{std::move(sa), val, adj, std::move(body), std::move(sb)};
  }

  // A backward pass binds this node once, before any occurrence of the leaf
  // (here or below the body's materialised nodes) adds its adjoint.
  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    if constexpr (G::active) kernels::fill(g.exec(), st.adj, T(0));
    return st.body.bind(st.b, o, g);
  }

  // The body's regions first: once they are done every occurrence has added
  // its adjoint, which then seeds the shared value's region, once.
  template <class G>
  void backward_children(State& st, G& g) const {
    st.body.backward_children(st.b, g);
    if constexpr (needs_grad<A, G>()) {
      if constexpr (requires { requires A::value_in_state; }) {
        // The region of such a node is its value alone: its adjoint is the
        // let's buffer, as is (what run_region would zero a buffer for and copy into).
        st.a.adj = st.adj;
        a.backward_children(st.a, g);
      } else {
        const Shape s = a.shape();
        g.run_region(a, st.a, s, kernels::BufferSeed<T>{st.adj.data, aligned_strides(s, contiguous_strides(s), s), T(1)});
      }
    }
  }

  template <class F>
  void for_each_param(F&& f) const {
    a.for_each_param(f);
    proto.for_each_param(f);
  }
  template <std::size_t I>
  static constexpr int slots_in_region() {
    return Body::template slots_in_region<I>();
  }
  template <std::size_t I>
  static constexpr int slots_total() {
    return A::template slots_total<I>() + Body::template slots_total<I>();
  }
};

// let(value, body): body(shared) with `value` evaluated once (see the top of this file).
template <Operand X, class Fn>
auto let(X&& value, Fn&& body) {
  return Let<expr_t<X>, std::decay_t<Fn>>(as_expr(std::forward<X>(value)), std::forward<Fn>(body));
}

}  // namespace weft
