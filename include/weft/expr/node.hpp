// The expression protocol shared by every node, and the leaves.
//
// A node is a cheap-to-copy value: leaves reference tensors (pointer, shape,
// strides), inner nodes hold children by value, constructors only check shapes.
// Evaluation happens in three steps, each a member template of the node:
//
//   forward(ex)              materialises what must be materialised (reductions,
//                            matmul, softmax) into the executor's workspace -> State
//   bind(state, shape, g)    builds the *bound* evaluator: a device-copyable tree
//                            whose leaves carry strides aligned to the output shape
//                            (broadcasting = stride 0) and, when differentiating,
//                            where their adjoints go
//   backward_children(st,g)  after the fused backward of the elementwise region a
//                            node sits in, continues backward below materialised nodes
//
// forward and backward_children take an executor (core/exec.hpp) and reach
// kernels only through kernels/dispatch.hpp, keyed by its device. The bound
// evaluator protocol (fwd/bwd/visit, Index4, the bound leaves) is defined
// below both layers, in kernels/bound.hpp.
//
// Every node also states param_occurrences: how many Parameter leaves it holds,
// its children's included, derived from its children and never defaulted, so
// a node cannot silently leave its parameters without a gradient.
#pragma once

#include <concepts>
#include <cstddef>
#include <type_traits>
#include <utility>

#include "../core/config.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/exec.hpp"
#include "../core/shape.hpp"
#include "../tensor/tensor.hpp"
#include "../tensor/workspace.hpp"
#include "../kernels/bound.hpp"
#include "../kernels/cpu/kernels.hpp"
#include "../kernels/dispatch.hpp"

namespace weft {

// The evaluation protocol, from the layer below (kernels/bound.hpp).
using kernels::BoundArg;
using kernels::BoundBuffer;
using kernels::BoundScalar;
using kernels::BoundTensor;
using kernels::Index4;
using kernels::LeafInfo;
using kernels::offset;
using kernels::value_at;

// Every expression node derives from this tag.
struct ExprTag {};

template <class E>
concept Expression = std::is_base_of_v<ExprTag, std::remove_cvref_t<E>> && requires(const E& e) {
  { e.shape() } -> std::same_as<Shape>;
  typename std::remove_cvref_t<E>::value_type;
  typename std::remove_cvref_t<E>::device_type;
};

// Binding context of a forward-only evaluation: nothing receives adjoints.
struct NoGrad {
  static constexpr bool active = false;
};

template <class T, class Device>
struct Parameter;
template <class T, class Device>
struct ParamLeaf;

// How many Parameter leaves node type E holds, its children's included. Every
// node states it (E::param_occurrences), derived from its children; a node that
// does not say is refused here rather than defaulted to "none".
template <class E>
constexpr int param_occurrences_of() {
  if constexpr (requires { E::param_occurrences; }) {
    return E::param_occurrences;
  } else {
    static_assert(dependent_false<E>,
                  "this expression node does not state param_occurrences (how many Parameter leaves it and its children "
                  "hold): add `static constexpr int param_occurrences = ...` derived from its children, or its "
                  "parameters would get no gradient");
    return 0;
  }
}

// Does an expression type contain a parameter leaf (so its backward has work)?
template <class E>
struct contains_param : std::bool_constant<(param_occurrences_of<E>() > 0)> {};

// Can an adjoint flowing into node type E reach anything? Only when the type
// proves that it cannot: leaves that feed no adjoint (tensors, scalars,
// masks), and nodes whose template arguments are all such leaves or plain
// values (arithmetic types, empty tags such as op:: functors and devices).
// A let() value's leaf (Shared) feeds its adjoint to the let's buffer, and a
// closure with captures or a node with non-type template arguments is not
// looked into, so those count as "may receive".
struct LeafNodeBase;
namespace detail {
template <class E>
struct provably_constant;
template <class X>
constexpr bool constant_arg() {
  if constexpr (std::is_base_of_v<ExprTag, X>) return provably_constant<X>::value;
  else return std::is_arithmetic_v<X> || std::is_empty_v<X>;
}
template <class E>
struct provably_constant : std::false_type {};
template <class E>
  requires std::is_base_of_v<LeafNodeBase, E>
struct provably_constant<E> : std::bool_constant<!E::feeds_adjoint> {};
template <template <class...> class N, class... A>
  requires(!std::is_base_of_v<LeafNodeBase, N<A...>>)
struct provably_constant<N<A...>> : std::bool_constant<(constant_arg<A>() && ...)> {};
}  // namespace detail

// Has a backward pass with context G any work below node type E (a
// parameter, a differentiated input, or a let() value it may feed)?
// Materialising nodes skip the backward of a child that has none.
template <class E, class G>
constexpr bool needs_grad() {
  if constexpr (std::is_base_of_v<LeafNodeBase, E>) {
    // A let() value's leaf knows whether its expression has anything to
    // differentiate (grad_through); other leaves say whether they feed one.
    if constexpr (requires { E::template grad_through<G>(); }) {
      if (E::template grad_through<G>()) return true;
    } else if constexpr (E::feeds_adjoint) {
      return true;
    }
  } else if constexpr (!detail::provably_constant<E>::value) {
    return true;
  }
  return contains_param<E>::value || []<std::size_t... I>(std::index_sequence<I...>) {
    return ((E::template slots_total<I>() > 0) || ...);
  }(std::make_index_sequence<G::slots>{});
}

// The bound leaf of a materialised node whose value buffer `val` is contiguous
// with shape s, read at output shape `out`. When differentiating, its adjoint
// goes to a zeroed workspace buffer of the same shape, returned through `adj`.
template <class T, class D, class G>
auto bind_materialised(const T* val, TensorView<T, D>& adj, const Shape& s, const Shape& out, G& g) {
  const Strides c = contiguous_strides(s);
  const Strides al = aligned_strides(s, c, out);
  if constexpr (G::active) {
    // Unwritten: the backward pass either stores every element once or
    // zeroes it first (BoundBuffer's Fresh).
    adj = kernels::alloc<T>(g.exec(), s);
    return BoundBuffer<T, true, true>{val, adj.data, al, s, c};
  } else {
    return BoundBuffer<T, false>{val, nullptr, al, s, c};
  }
}

// A node's value, evaluated once into new (contiguous) workspace memory of its
// shape: how materialising nodes read their child region.
template <class E, Executor X>
TensorView<typename E::value_type, device_of<X>> materialise(const E& e, typename E::State& st, const X& ex) {
  NoGrad ng;
  auto buf = kernels::alloc<typename E::value_type>(ex, e.shape());
  kernels::evaluate(ex, e.bind(st, e.shape(), ng), buf);
  return buf;
}

// Common part of a materialising node with one child `a` (reductions, softmax,
// cross-entropy, transpose, layer norm): every differentiated input lies below
// it, none in the elementwise region the node itself is a leaf of. (It does
// not state param_occurrences: a node that holds parameters itself must count
// them, so each node says it.)
template <class D, class A>
struct OneChildNode : ExprTag {
  template <class F>
  void for_each_param(F&& f) const {
    static_cast<const D&>(*this).a.for_each_param(f);
  }
  template <std::size_t I>
  static constexpr int slots_in_region() {
    return 0;
  }
  template <std::size_t I>
  static constexpr int slots_total() {
    return A::template slots_total<I>();
  }
};

// ---------------------------------------------------------------- leaf nodes

// Common part of nodes with no children to recurse into for backward.
struct LeafNodeBase : ExprTag {
  static constexpr int static_rank = -1;
  static constexpr bool feeds_adjoint = false;  // (let()'s Shared: true)
  struct State {};
  template <std::size_t I>
  static constexpr int slots_in_region() {
    return 0;
  }
  template <std::size_t I>
  static constexpr int slots_total() {
    return 0;
  }
  template <class G>
  void backward_children(State&, G&) const {}
  template <class F>
  void for_each_param(F&&) const {}
};

// A tensor (or view) read by an expression; never differentiated.
template <class T, class Device>
struct Leaf : LeafNodeBase {
  using value_type = compute_t<T>;
  using device_type = Device;
  static constexpr int param_occurrences = 0;
  TensorView<T, Device> v;

  explicit Leaf(TensorView<T, Device> view) : v(view) {}
  Shape shape() const { return v.shape; }
  template <class X>
  State forward(const X&) const {
    return {};
  }
  template <class G>
  BoundTensor<T> bind(State&, const Shape& out, G&) const {
    return {v.data, aligned_strides(v.shape, v.strides, out), v.shape, v.strides};
  }
};

// Input I of value_and_grad: the expression is built by calling the user's
// function with these, so which leaves are differentiated is known from the type.
template <std::size_t I, class T, class Device>
struct Arg : ExprTag {
  using value_type = compute_t<T>;
  using device_type = Device;
  static constexpr int static_rank = -1;
  static constexpr int param_occurrences = 0;
  static constexpr std::size_t slot = I;
  TensorView<T, Device> v;

  explicit Arg(TensorView<T, Device> view) : v(view) {}
  Shape shape() const { return v.shape; }
  struct State {};
  template <class X>
  State forward(const X&) const {
    return {};
  }
  template <class G>
  BoundArg<I, T> bind(State&, const Shape& out, G&) const {
    return {v.data, aligned_strides(v.shape, v.strides, out), v.shape, v.strides};
  }
  template <class G>
  void backward_children(State&, G&) const {}
  template <class F>
  void for_each_param(F&&) const {}
  template <std::size_t J>
  static constexpr int slots_in_region() {
    return J == I ? 1 : 0;
  }
  template <std::size_t J>
  static constexpr int slots_total() {
    return J == I ? 1 : 0;
  }
};

template <class T, class Device = cpu>
struct Scalar : LeafNodeBase {
  using value_type = T;
  using device_type = Device;
  static constexpr int param_occurrences = 0;
  static constexpr int static_rank = 0;
  T c;
  explicit Scalar(T value) : c(value) {}
  Shape shape() const { return Shape{}; }
  template <class X>
  State forward(const X&) const {
    return {};
  }
  template <class G>
  BoundScalar<T> bind(State&, const Shape&, G&) const {
    return {c};
  }
};
static_assert(Expression<Leaf<float, cpu>> && Expression<Arg<0, double, cpu>> && Expression<Scalar<float>>);

// ---------------------------------------------------------------- capture rule

// Operands become nodes by one rule: tensors (lvalues) and views are referenced,
// expressions are held by value. A temporary Tensor would dangle, so it is refused.
template <class X>
struct is_tensor : std::false_type {};
template <class T, class D>
struct is_tensor<Tensor<T, D>> : std::true_type {};
template <class X>
struct is_view : std::false_type {};
template <class T, class D>
struct is_view<TensorView<T, D>> : std::true_type {};

template <class X>
struct is_parameter : std::false_type {};
template <class T, class D>
struct is_parameter<Parameter<T, D>> : std::true_type {};

template <class X>
concept TensorLike = is_tensor<std::remove_cvref_t<X>>::value || is_view<std::remove_cvref_t<X>>::value;
template <class X>
concept Operand = Expression<X> || TensorLike<X> || is_parameter<std::remove_cvref_t<X>>::value;

template <class X>
decltype(auto) as_expr(X&& x) {
  using D = std::remove_cvref_t<X>;
  if constexpr (Expression<D>) {
    return D(x);
  } else if constexpr (is_parameter<D>::value) {
    static_assert(std::is_lvalue_reference_v<X>, "an expression cannot hold a temporary Parameter");
    return ParamLeaf<typename D::value_type, typename D::device_type>(x);
  } else if constexpr (is_view<D>::value) {
    return Leaf<typename D::value_type, typename D::device_type>(x);
  } else if constexpr (is_tensor<D>::value) {
    static_assert(std::is_lvalue_reference_v<X>,
                  "an expression cannot hold a temporary Tensor (it would dangle when the statement ends): "
                  "store the tensor in a variable first");
    return Leaf<typename D::value_type, typename D::device_type>(x.view());
  } else {
    static_assert(dependent_false<D>, "not an expression operand: use a weft::Tensor, a TensorView or an expression");
  }
}

template <class X>
using expr_t = std::remove_cvref_t<decltype(as_expr(std::declval<X>()))>;

}  // namespace weft
