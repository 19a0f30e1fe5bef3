// nn::LayerNorm: the layer that owns gamma (ones) and beta (zeros) and applies
// weft::layer_norm over the last axis (the node and its adjoint live in
// expr/layer_norm.hpp).
#pragma once

#include "../expr/layer_norm.hpp"

namespace weft::nn {

// The node, under its old name here.
using weft::LayerNormNode;

template <class T = float>
struct LayerNorm {
  Parameter<T> gamma;  // (D,), ones
  Parameter<T> beta;   // (D,), zeros
  T eps;

  explicit LayerNorm(index_t features, T epsilon = T(1e-5))
      : gamma("weight", Shape{features}), beta("bias", Shape{features}), eps(epsilon) {
    gamma.value.fill(T(1));
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
