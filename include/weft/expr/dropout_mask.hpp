// The dropout mask as an expression leaf: mask = 1/(1-p) with probability
// 1-p, else 0 (inverted dropout, as PyTorch), drawn from a counter-based hash
// of (seed, element index): no memory, fused into the surrounding pass on CPU
// and GPU alike, reproducible for a seed, and the same in forward and in the
// backward pass that recomputes it. nn::Dropout (nn/dropout.hpp) is the layer
// that draws a fresh seed per call.
#pragma once

#include <cstdint>

#include "../core/random.hpp"
#include "node.hpp"

namespace weft {

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
  template <class F>
  void adjoints(F&&) {}
};

template <class T, class Device = cpu>
struct DropoutMask : LeafNodeBase {
  using value_type = T;
  using device_type = Device;
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

}  // namespace weft
