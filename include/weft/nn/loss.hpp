// Losses: cross_entropy (fused log-softmax, in the expression layer) and mse.
#pragma once

#include "../expr/cross_entropy.hpp"
#include "../expr/elementwise.hpp"
#include "../expr/reduce.hpp"

namespace weft::nn {

using weft::cross_entropy;

// Mean squared error, mean over every element (PyTorch's default reduction).
template <Operand P, Operand Y>
auto mse(P&& pred, Y&& target) {
  return mean(square(std::forward<P>(pred) - std::forward<Y>(target)));
}

}  // namespace weft::nn
