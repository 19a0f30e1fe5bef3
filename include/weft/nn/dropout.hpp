// Dropout: y = x * mask, mask = 1/(1-p) with probability 1-p, else 0 (inverted
// dropout, as PyTorch). The mask is the leaf weft::DropoutMask
// (expr/dropout_mask.hpp), keyed by (seed, call): each call draws a fresh one.
#pragma once

#include <cstdint>

#include "../expr/dropout_mask.hpp"
#include "../expr/elementwise.hpp"
#include "rng.hpp"

namespace weft::nn {

// The mask node, under its old names here.
using weft::BoundDropoutMask;
using weft::DropoutMask;

struct Dropout {
  float p;
  std::uint64_t seed;
  std::uint64_t calls = 0;  // each call draws a fresh mask
  bool training = true;

  explicit Dropout(float prob, std::uint64_t s = 0) : p(prob), seed(s) {
    if (!(prob >= 0.0f && prob <= 1.0f)) throw_error<ValueError>("Dropout: probability ", prob, " is not in [0, 1]");
  }

  // In evaluation mode (training = false) the mask is all ones.
  template <Operand X>
  auto operator()(X&& x) {
    auto e = as_expr(std::forward<X>(x));
    using T = typename decltype(e)::value_type;
    DropoutMask<T, typename decltype(e)::device_type> mask;
    mask.s = e.shape();
    mask.seed = hash(seed, calls++);
    mask.p = training ? p : 0.0f;
    return make_binary<op::Mul>(e, mask);
  }

  template <class F>
  void for_each_parameter(F&&) {}
};

}  // namespace weft::nn
