// Activations as layers (for Sequential); as functions they are the
// expression layer's relu, gelu, tanh, sigmoid. Layers without parameters.
#pragma once

#include "../expr/elementwise.hpp"

namespace weft::nn {

#define WEFT_ACTIVATION_LAYER(Name, fn)          \
  struct Name {                                  \
    template <Operand X>                         \
    auto operator()(X&& x) const {               \
      return weft::fn(std::forward<X>(x));       \
    }                                            \
    template <class F>                           \
    void for_each_parameter(F&&) {}              \
  };

WEFT_ACTIVATION_LAYER(ReLU, relu)
WEFT_ACTIVATION_LAYER(GELU, gelu)
WEFT_ACTIVATION_LAYER(Tanh, tanh)
WEFT_ACTIVATION_LAYER(Sigmoid, sigmoid)

#undef WEFT_ACTIVATION_LAYER

}  // namespace weft::nn
