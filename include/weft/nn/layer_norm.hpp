// nn::LayerNorm: the layer that owns gamma (ones) and beta (zeros) and applies
// weft::layer_norm over the last axis (the node and its adjoint live in
// expr/layer_norm.hpp).
#pragma once

#include "../expr/layer_norm.hpp"
#include "init.hpp"

namespace weft::nn {

// The node, under its old name here.
using weft::LayerNormNode;

template <class T = float, class Device = cpu>
struct LayerNorm {
  Parameter<T, Device> gamma;  // (D,), ones
  Parameter<T, Device> beta;   // (D,), zeros
  T eps;

  explicit LayerNorm(index_t features, T epsilon = T(1e-5))
      : gamma("weight", Shape{features}), beta("bias", Shape{features}), eps(epsilon) {
    init_on_host(gamma, [](Parameter<T>& g) { g.value.fill(T(1)); });
    init_on_host(beta, [](Parameter<T>&) {});
  }

  template <Operand X>
  auto operator()(X&& x) {
    return weft::layer_norm(std::forward<X>(x), gamma, beta, eps);
  }

  template <class F>
  void for_each_parameter(F&& f) {
    f("weight", gamma);
    f("bias", beta);
  }
};

}  // namespace weft::nn
