// Dropout on a slice of a tensor whose mask is the slice of the unsharded
// tensor's mask: sequence parallelism (Korthikanti et al. 2022) runs the
// residual dropout on each rank's tokens only, and a model must give the same
// function (and, in training, draw the same masks) at any tensor-parallel
// degree.
//
// weft's mask (expr/dropout_mask.hpp) is a counter-based hash of (seed,
// element index), so no RNG state has to be split or advanced per rank: the
// rank's stream is the full tensor's stream read at the rank's elements.
// ShardDropoutMask draws hash_uniform(seed, base + offset(ix, full strides)):
// for a shard (N, T/p, C) of (N, T, C) starting at token r T/p, element
// (n, t, c) draws the counter n T C + (r T/p + t) C + c, exactly what
// nn::Dropout's mask draws for element (n, r T/p + t, c) of the full tensor.
// ShardDropout is the layer (nn::Dropout's seed-per-call rule: call k draws
// with hash(seed, k)); with first = 0 and the full extent it is nn::Dropout.
//
// Dimension legend: s the shard's shape, full = s with the split axis
// multiplied by p, base = first * full_strides[axis].
#pragma once

#include <cstdint>

#include "../../core/random.hpp"
#include "../../expr/elementwise.hpp"
#include "../../expr/node.hpp"

namespace weft::parallel::tensor_parallel {

template <class T>
struct BoundShardDropoutMask {
  using value_type = T;
  std::uint64_t seed;
  float p;
  T scale;
  index_t base;  // the shard's first element in the full tensor
  Strides st;    // the full tensor's strides, aligned to the region
  Shape shape;   // the shard's shape
  Strides full;  // the full tensor's strides

  struct Tape {
    value_type v;
  };
  // The flat (linear) path passes the element number of the region: it is
  // taken only when st is the region's contiguous strides, and then the
  // shard is one contiguous run of the full tensor from base.
  template <class Ix>
  WEFT_HD WEFT_INLINE void fwd(const Ix& ix, Tape& t) const {
    const float u = hash_uniform(seed, static_cast<std::uint64_t>(base + kernels::offset(ix, st)));
    t.v = u >= p ? scale : T(0);
  }
  template <class Ix, class S>
  WEFT_HD WEFT_INLINE void bwd(const Ix&, const Tape&, value_type, S&) const {}
  template <class F>
  void visit(F&& f) const {
    f(LeafInfo{nullptr, st, shape, full, sizeof(T)});  // reads no memory; its strides decide the fast path
  }
  template <class F>
  void adjoints(F&&) {}
};

template <class T>
struct ShardDropoutMask : LeafNodeBase {
  using value_type = T;
  using device_type = cpu;
  static constexpr int param_occurrences = 0;
  Shape s;         // the shard's shape
  Strides full{};  // the full tensor's contiguous strides
  index_t base = 0;
  std::uint64_t seed = 0;
  float p = 0;

  Shape shape() const { return s; }
  template <class X>
  State forward(const X&) const {
    return {};
  }
  template <class G>
  BoundShardDropoutMask<T> bind(State&, const Shape& out, G&) const {
    const T scale = p < 1.0f ? T(1) / (T(1) - static_cast<T>(p)) : T(0);
    return {seed, p, scale, base, aligned_strides(s, full, out), s, full};
  }
};

static_assert(Expression<ShardDropoutMask<float>>);

struct ShardDropout {
  float p;
  std::uint64_t seed;
  std::uint64_t calls = 0;  // each call draws a fresh mask, as nn::Dropout
  bool training = true;

  explicit ShardDropout(float prob, std::uint64_t s = 0) : p(prob), seed(s) {
    if (!(prob >= 0.0f && prob < 1.0f)) throw_error<ValueError>("ShardDropout: probability ", prob, " is not in [0, 1)");
  }

  // The key of the next call's mask (nn::Dropout's rule: call k draws with
  // hash(seed, k)). A layer that builds its expression inside let bodies
  // (called more than once per build) draws the key once, outside them.
  std::uint64_t next_key() { return hash(seed, calls++); }

  // x: the slice [first, first + s[axis]) along `axis` of a tensor whose
  // extent there is `extent` (the other axes are x's own), masked with key.
  template <Operand X>
  auto apply(X&& x, std::uint64_t key, int axis, index_t first, index_t extent) const {
    auto e = as_expr(std::forward<X>(x));
    using T = typename decltype(e)::value_type;
    ShardDropoutMask<T> mask;
    mask.s = e.shape();
    if (axis < 0 || axis >= mask.s.rank || first < 0 || first + mask.s[axis] > extent)
      throw_error<ShapeError>("ShardDropout: a slice from ", first, " along axis ", axis, " of shape ", mask.s,
                              " does not fit an extent of ", extent);
    Shape f = mask.s;
    f[axis] = extent;
    mask.full = contiguous_strides(f);
    mask.base = first * mask.full[axis];
    mask.seed = key;
    mask.p = training ? p : 0.0f;
    return make_binary<op::Mul>(e, mask);
  }
  template <Operand X>
  auto operator()(X&& x, int axis, index_t first, index_t extent) {
    return apply(std::forward<X>(x), next_key(), axis, first, extent);
  }
};

}  // namespace weft::parallel::tensor_parallel
