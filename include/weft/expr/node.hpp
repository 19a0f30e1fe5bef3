// The expression protocol shared by every node, and the leaves.
//
// A node is a cheap-to-copy value: leaves reference tensors (pointer, shape,
// strides), inner nodes hold children by value, constructors only check shapes.
// Evaluation happens in three steps, each a member template of the node:
//
//   forward(ws)              materialises what must be materialised (reductions,
//                            matmul, softmax) into workspace buffers -> State
//   bind(state, shape, g)    builds the *bound* evaluator: a device-copyable tree
//                            whose leaves carry strides aligned to the output shape
//                            (broadcasting = stride 0) and, when differentiating,
//                            where their adjoints go
//   backward_children(st,g)  after the fused backward of the elementwise region a
//                            node sits in, continues backward below materialised nodes
//
// A bound evaluator is evaluated per element through fwd(ix, tape), which fills
// a Tape (the values its adjoint rule needs, a struct decided by the type: no
// runtime tape), and bwd(ix, tape, adjoint, slots). Tapes are filled in place,
// never copied whole, so the compiler keeps every field in a register. ix is a linear index (contiguous fast path) or
// an Index4 (padded 4-D index, general strided/broadcast path).
#pragma once

#include <concepts>
#include <cstddef>
#include <type_traits>
#include <utility>

#include "../core/config.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/shape.hpp"
#include "../tensor/tensor.hpp"
#include "../tensor/workspace.hpp"

namespace weft {

// Padded 4-D element index (leading dims are padding for lower ranks).
struct Index4 {
  index_t i[max_rank];
};

WEFT_HD WEFT_INLINE index_t offset(index_t i, const Strides&) { return i; }
WEFT_HD WEFT_INLINE index_t offset(const Index4& ix, const Strides& st) {
  return ix.i[0] * st.s[0] + ix.i[1] * st.s[1] + ix.i[2] * st.s[2] + ix.i[3] * st.s[3];
}

// The value of bound evaluator b at element ix.
template <class B, class Ix>
WEFT_HD WEFT_INLINE typename B::value_type value_at(const B& b, const Ix& ix) {
  typename B::Tape t;
  b.fwd(ix, t);
  return t.v;
}

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

// Description of one leaf of a bound tree, for fast-path and aliasing decisions.
struct LeafInfo {
  const void* base;
  Strides strides;  // aligned to the output shape
  Shape shape;      // the leaf's own shape (extent of memory it reads)
  Strides own_strides;
  std::size_t elem_size;
  void* param = nullptr;  // the Parameter<T> whose gradient this leaf feeds, if any
  bool writes = false;    // backward stores adjoints through these strides
};

template <class T>
struct Parameter;
template <class T>
struct ParamLeaf;

// Does an expression type contain a parameter leaf (so its backward has work)?
template <class E>
struct contains_param : std::false_type {};

// ---------------------------------------------------------------- bound leaves

// A tensor read as a constant (no adjoint).
template <class T>
struct BoundTensor {
  using value_type = compute_t<T>;
  const T* p;
  Strides st;
  Shape shape;
  Strides own;

  struct Tape {
    value_type v;
  };
  template <class Ix>
  WEFT_HD WEFT_INLINE void fwd(const Ix& ix, Tape& t) const {
    t.v = to_compute(p[offset(ix, st)]);
  }
  template <class Ix, class S>
  WEFT_HD WEFT_INLINE void bwd(const Ix&, const Tape&, value_type, S&) const {}
  template <class F>
  void visit(F&& f) const {
    f(LeafInfo{p, st, shape, own, sizeof(T)});
  }
};

// The input of value_and_grad numbered I: its adjoint goes to slot I.
template <std::size_t I, class T>
struct BoundArg {
  using value_type = compute_t<T>;
  const T* p;
  Strides st;
  Shape shape;
  Strides own;

  struct Tape {
    value_type v;
  };
  template <class Ix>
  WEFT_HD WEFT_INLINE void fwd(const Ix& ix, Tape& t) const {
    t.v = to_compute(p[offset(ix, st)]);
  }
  template <class Ix, class S>
  WEFT_HD WEFT_INLINE void bwd(const Ix& ix, const Tape&, value_type g, S& slots) const {
    slots.template add<I>(ix, st, g);
  }
  template <class F>
  void visit(F&& f) const {
    f(LeafInfo{p, st, shape, own, sizeof(T), nullptr, true});
  }
};

// A materialised intermediate (workspace buffer); when differentiating, its
// adjoint accumulates into a workspace buffer of the same shape.
template <class T, bool Grad>
struct BoundBuffer {
  using value_type = T;
  const T* p;
  T* adj;  // nullptr unless Grad
  Strides st;
  Shape shape;
  Strides own;

  struct Tape {
    value_type v;
  };
  template <class Ix>
  WEFT_HD WEFT_INLINE void fwd(const Ix& ix, Tape& t) const {
    t.v = p[offset(ix, st)];
  }
  template <class Ix, class S>
  WEFT_HD WEFT_INLINE void bwd(const Ix& ix, const Tape&, value_type g, S&) const {
    if constexpr (Grad) adj[offset(ix, st)] += g;
  }
  template <class F>
  void visit(F&& f) const {
    f(LeafInfo{p, st, shape, own, sizeof(T), nullptr, Grad});
  }
};

// The bound leaf of a materialised node whose value buffer `val` is contiguous
// with shape s, read at output shape `out`. When differentiating, its adjoint
// goes to a zeroed workspace buffer of the same shape, returned through `adj`.
template <class T, class G>
auto bind_materialised(const T* val, TensorView<T>& adj, const Shape& s, const Shape& out, G& g) {
  const Strides c = contiguous_strides(s);
  const Strides al = aligned_strides(s, c, out);
  if constexpr (G::active) {
    adj = g.ws->template zeros<T>(s);
    return BoundBuffer<T, true>{val, adj.data, al, s, c};
  } else {
    return BoundBuffer<T, false>{val, nullptr, al, s, c};
  }
}

template <class T>
struct BoundScalar {
  using value_type = T;
  T c;
  struct Tape {
    value_type v;
  };
  template <class Ix>
  WEFT_HD WEFT_INLINE void fwd(const Ix&, Tape& t) const {
    t.v = c;
  }
  template <class Ix, class S>
  WEFT_HD WEFT_INLINE void bwd(const Ix&, const Tape&, value_type, S&) const {}
  template <class F>
  void visit(F&&) const {}
};

// Common part of a materialising node with one child `a` (reductions, softmax,
// cross-entropy, transpose, layer norm): every differentiated input lies below
// it, none in the elementwise region the node itself is a leaf of.
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
  TensorView<T, Device> v;

  explicit Leaf(TensorView<T, Device> view) : v(view) {}
  Shape shape() const { return v.shape; }
  template <class W>
  State forward(W&) const {
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
  static constexpr std::size_t slot = I;
  TensorView<T, Device> v;

  explicit Arg(TensorView<T, Device> view) : v(view) {}
  Shape shape() const { return v.shape; }
  struct State {};
  template <class W>
  State forward(W&) const {
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
  static constexpr int static_rank = 0;
  T c;
  explicit Scalar(T value) : c(value) {}
  Shape shape() const { return Shape{}; }
  template <class W>
  State forward(W&) const {
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
template <class T>
struct is_parameter<Parameter<T>> : std::true_type {};

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
    return ParamLeaf<typename D::value_type>(x);
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
