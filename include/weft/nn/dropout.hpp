// Dropout: y = x * mask, mask = 1/(1-p) with probability 1-p, else 0 (inverted
// dropout, as PyTorch). The mask is a leaf computed from a counter-based hash of
// (seed, call, element index): no memory, fused into the surrounding pass on
// CPU and GPU alike, reproducible for a seed, and the same in forward and in
// the backward pass that recomputes it.
#pragma once

#include <cstdint>

#include "../expr/elementwise.hpp"
#include "../expr/node.hpp"
#include "rng.hpp"

namespace weft::nn {

template <class T>
struct BoundDropoutMask {
  using value_type = T;
  std::uint64_t seed;
  float p;
  T scale;
  Strides st;  // the mask's contiguous strides, aligned to the region
  Shape shape;

  struct Tape {
    value_type v;
  };
  template <class Ix>
  WEFT_HD WEFT_INLINE void fwd(const Ix& ix, Tape& t) const {
    float u = hash_uniform(seed, static_cast<std::uint64_t>(offset(ix, st)));
    t.v = u >= p ? scale : T(0);
  }
  template <class Ix, class S>
  WEFT_HD WEFT_INLINE void bwd(const Ix&, const Tape&, value_type, S&) const {}
  template <class F>
  void visit(F&& f) const {
    // Reads no memory; reported so the contiguous fast path checks its strides.
    f(LeafInfo{nullptr, st, shape, contiguous_strides(shape), sizeof(T)});
  }
};

template <class T>
struct DropoutMask : LeafNodeBase {
  using value_type = T;
  using device_type = cpu;
  static constexpr int param_occurrences = 0;
  Shape s;
  std::uint64_t seed;
  float p;

  Shape shape() const { return s; }
  template <class X>
  State forward(const X&) const {
    return {};
  }
  template <class G>
  BoundDropoutMask<T> bind(State&, const Shape& out, G&) const {
    T scale = p < 1.0f ? T(1) / (T(1) - static_cast<T>(p)) : T(0);
    return {seed, p, scale, aligned_strides(s, contiguous_strides(s), out), s};
  }
};

static_assert(Expression<DropoutMask<float>>);

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
    DropoutMask<T> mask;
    mask.s = e.shape();
    mask.seed = hash(seed, calls++);
    mask.p = training ? p : 0.0f;
    return make_binary<op::Mul>(e, mask);
  }

  template <class F>
  void for_each_parameter(F&&) {}
};

}  // namespace weft::nn
