// Parameter<T>: a trainable tensor that owns its value and its gradient, with a
// name ("l1.weight") for registries, checkpoints and per-layer communication.
// Used in an expression (directly, or through nn layers) it is a leaf that
// accumulates its gradient during weft::backward, as a PyTorch leaf tensor with
// requires_grad does: call zero_grad() (optimizers do) between steps.
#pragma once

#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "node.hpp"

namespace weft {

template <class T = float>
struct Parameter {
  static_assert(std::is_floating_point_v<T>, "parameters are float or double");
  using value_type = T;
  std::string name;
  Tensor<T> value;
  Tensor<T> grad;
  int pending = 0;  // occurrences whose adjoint is still to come in the running backward

  Parameter() = default;
  Parameter(std::string n, const Shape& s) : name(std::move(n)), value(s, T(0)), grad(s, T(0)) {}

  const Shape& shape() const { return value.shape(); }
  index_t numel() const { return value.numel(); }
  void zero_grad() {
    if (grad.numel() > 0) std::memset(static_cast<void*>(grad.data()), 0, grad.bytes());
  }
};

// The bound leaf: reads the value; with Grad, adds its adjoint to the gradient.
template <class T, bool Grad>
struct BoundParam {
  using value_type = T;
  const T* p;
  T* g;
  Strides st;
  Shape shape;
  Strides own;
  Parameter<T>* param;

  struct Tape {
    value_type v;
  };
  template <class Ix>
  WEFT_HD WEFT_INLINE void fwd(const Ix& ix, Tape& t) const {
    t.v = p[offset(ix, st)];
  }
  template <class Ix, class S>
  WEFT_HD WEFT_INLINE void bwd(const Ix& ix, const Tape&, value_type adj, S&) const {
    if constexpr (Grad) g[offset(ix, st)] += adj;
  }
  template <class F>
  void visit(F&& f) const {
    f(LeafInfo{p, st, shape, own, sizeof(T), Grad ? param : nullptr, Grad});
  }
};

template <class T>
struct ParamLeaf : LeafNodeBase {
  using value_type = T;
  using device_type = cpu;
  Parameter<T>* p;

  explicit ParamLeaf(Parameter<T>& param) : p(&param) {}
  Shape shape() const { return p->value.shape(); }
  template <class W>
  State forward(W&) const {
    return {};
  }
  template <class G>
  BoundParam<T, G::active> bind(State&, const Shape& out, G&) const {
    const Shape& s = p->value.shape();
    Strides c = contiguous_strides(s);
    return {p->value.data(), G::active ? p->grad.data() : nullptr, aligned_strides(s, c, out), s, c, p};
  }
  template <class F>
  void for_each_param(F&& f) const {
    f(*p);
  }
};

template <class T>
struct contains_param<ParamLeaf<T>> : std::true_type {};

static_assert(Expression<ParamLeaf<float>>);

template <class T>
ParamLeaf<T> param(Parameter<T>& p) {
  return ParamLeaf<T>(p);
}

}  // namespace weft
