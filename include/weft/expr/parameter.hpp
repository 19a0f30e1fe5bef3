// Parameter<T, Device>: a trainable tensor that owns its value and its
// gradient, with a name ("l1.weight") for registries, checkpoints and
// per-layer communication. Used in an expression (directly, or through nn
// layers) it is a leaf that accumulates its gradient during weft::backward, as
// a PyTorch leaf tensor with requires_grad does: call zero_grad() (optimizers
// do) between steps. It holds no backward state: which occurrences are still
// to come is counted by the backward pass (autodiff/value_and_grad.hpp), so
// several passes over one parameter can be in flight.
#pragma once

#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "node.hpp"

namespace weft {

template <class T = float, class Device = cpu>
struct Parameter {
  static_assert(std::is_floating_point_v<T>, "parameters are float or double");
  using value_type = T;
  using device_type = Device;
  std::string name;
  Tensor<T, Device> value;
  Tensor<T, Device> grad;

  Parameter() = default;
  // Host parameters start at zero; device ones are uninitialised until written.
  Parameter(std::string n, const Shape& s) : name(std::move(n)), value(s), grad(s) {
    if constexpr (std::is_same_v<Device, cpu>) {
      value.fill(T(0));
      grad.fill(T(0));
    }
  }

  const Shape& shape() const { return value.shape(); }
  index_t numel() const { return value.numel(); }
  void zero_grad() {
    static_assert(std::is_same_v<Device, cpu>,
                  "zero_grad() is host-only: zero a device parameter's gradient with weft::kernels::fill(exec, p.grad.view(), T(0))");
    if (grad.numel() > 0) std::memset(static_cast<void*>(grad.data()), 0, grad.bytes());
  }
};

// The bound leaf is a BoundBuffer (kernels/bound.hpp): it reads the value and,
// with Grad, adds its adjoint to the gradient buffer the backward pass chose
// for this parameter, reporting the parameter in LeafInfo::param.
template <class T, bool Grad>
using BoundParam = BoundBuffer<T, Grad>;

template <class T, class Device = cpu>
struct ParamLeaf : LeafNodeBase {
  using value_type = T;
  using device_type = Device;
  static constexpr int param_occurrences = 1;
  Parameter<T, Device>* p;

  explicit ParamLeaf(Parameter<T, Device>& param) : p(&param) {}
  Shape shape() const { return p->value.shape(); }
  template <class X>
  State forward(const X&) const {
    return {};
  }
  template <class G>
  BoundParam<T, G::active> bind(State&, const Shape& out, G& g) const {
    const Shape& s = p->value.shape();
    Strides c = contiguous_strides(s);
    if constexpr (G::active)
      return BoundParam<T, true>{p->value.data(), g.grad_of(*p).data, aligned_strides(s, c, out), s, c, p};
    else
      return BoundParam<T, false>{p->value.data(), nullptr, aligned_strides(s, c, out), s, c};
  }
  template <class F>
  void for_each_param(F&& f) const {
    f(*p);
  }
};

static_assert(Expression<ParamLeaf<float>>);

template <class T, class Device>
ParamLeaf<T, Device> param(Parameter<T, Device>& p) {
  return ParamLeaf<T, Device>(p);
}

}  // namespace weft
