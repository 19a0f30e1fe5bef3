// CPU evaluators: the loops that run bound expression trees. One pass per
// elementwise region, forward (evaluate, reduce) and backward (adjoints of
// every leaf of the region at once). A contiguous fast path walks a linear
// index in blocks of W lanes, which GCC and Clang vectorise; the general path
// walks a padded 4-D index with per-leaf strides (broadcasting, views).
// Reached through kernels/dispatch.hpp (device_kernels<cpu>, kernels.hpp).
#pragma once

#include <array>
#include <cstddef>
#include <limits>
#include <utility>

#include "../../tensor/tensor.hpp"
#include "../bound.hpp"

namespace weft::kernels::cpu {

inline constexpr int lanes = 16;

// Calls f(Index4) for every element of `shape` in row-major order.
template <class F>
WEFT_INLINE void for_each_index(const Shape& shape, F&& f) {
  Shape p = padded(shape);
  if (shape.numel() == 0) return;
  for (index_t a = 0; a < p[0]; ++a)
    for (index_t b = 0; b < p[1]; ++b)
      for (index_t c = 0; c < p[2]; ++c)
        for (index_t d = 0; d < p[3]; ++d) f(Index4{{a, b, c, d}});
}

// dst = bound expression (dst has the expression's shape).
template <class B, class T>
void evaluate(const B& bound, TensorView<T, weft::cpu> dst) {
  const B b = bound;  // a local copy: its pointers cannot alias the stores below
  const index_t n = dst.numel();
  if (dst.is_contiguous() && linear_ok(b, dst.shape)) {
    // Safe to vectorise without alias checks: assign() routes every overlap
    // other than same-element reads through scratch memory.
    T* out = dst.data;
    WEFT_SIMD_LOOP
    for (index_t i = 0; i < n; ++i) out[i] = from_compute<T>(value_at(b, i));
    return;
  }
  Strides ds = aligned_strides(dst.shape, dst.strides, dst.shape);
  for_each_index(dst.shape, [&](const Index4& ix) { dst.data[offset(ix, ds)] = from_compute<T>(value_at(b, ix)); });
}

// ---------------------------------------------------------------- reductions

// Reduce the whole region. The lane-blocked order is fixed for a given shape,
// so results are reproducible run to run.
template <class R, class B>
typename B::value_type reduce_all(const B& bound, const Shape& shape) {
  using T = typename B::value_type;
  const B b = bound;
  const index_t n = shape.numel();
  if (linear_ok(b, shape)) {
    T acc[lanes];
    for (int j = 0; j < lanes; ++j) acc[j] = R::template identity<T>();
    index_t i = 0;
    for (; i + lanes <= n; i += lanes)
      for (int j = 0; j < lanes; ++j) acc[j] = R::combine(acc[j], value_at(b, i + j));
    for (int j = 0; i < n; ++i, ++j) acc[j] = R::combine(acc[j], value_at(b, i));
    for (int w = lanes / 2; w > 0; w /= 2)
      for (int j = 0; j < w; ++j) acc[j] = R::combine(acc[j], acc[j + w]);
    return acc[0];
  }
  T acc = R::template identity<T>();
  for_each_index(shape, [&](const Index4& ix) { acc = R::combine(acc, value_at(b, ix)); });
  return acc;
}

// Reduce the region into `out` (contiguous, keep-dims shape), read through
// strides aligned to the region's shape (0 along reduced axes).
template <class R, class B>
void reduce_into(const B& bound, const Shape& shape, typename B::value_type* out, const Strides& out_st, index_t out_n) {
  using T = typename B::value_type;
  const B b = bound;
  for (index_t i = 0; i < out_n; ++i) out[i] = R::template identity<T>();
  for_each_index(shape, [&](const Index4& ix) {
    T& o = out[offset(ix, out_st)];
    o = R::combine(o, value_at(b, ix));
  });
}

// ---------------------------------------------------------------- backward

// Backward of one element on the contiguous path: values and local adjoints in
// registers, then each active slot's adjoint stored at index i.
template <class E, std::size_t K, bool Assign, class B, class Seed, class T>
WEFT_INLINE T backward_one(const B& b, const Seed& seed, const SlotMem<T, K>& g, index_t i) {
  typename B::Tape t;
  b.fwd(i, t);
  SlotAcc<T, K> acc;
  for (std::size_t k = 0; k < (K > 0 ? K : 1); ++k) acc.v[k] = T(0);
  b.bwd(i, t, seed(i, t.v), acc);
  [&]<std::size_t... k>(std::index_sequence<k...>) __attribute__((always_inline)) {
    (([&]() __attribute__((always_inline)) {
       if constexpr (E::template slots_in_region<k>() > 0) {
         if constexpr (Assign)
           g.g[k][i] = acc.v[k];
         else
           g.g[k][i] += acc.v[k];
       }
     }()),
     ...);
  }(std::make_index_sequence<K>{});
  return t.v;
}

// Everything by value: locals that no store in the loop can alias, so the
// compiler keeps pointers in registers and vectorises.
template <class E, std::size_t K, bool Assign, bool Sum, class B, class Seed, class T>
T backward_linear(const B b, const Seed seed, const SlotMem<T, K> g, index_t n) {
  T acc[lanes];
  for (int j = 0; j < lanes; ++j) acc[j] = T(0);
  index_t i = 0;
  for (; i + lanes <= n; i += lanes)
    // The lane loop maps onto SIMD lanes, each lane its own partial sum (no
    // reassociation needed). Gradient buffers never overlap what the region
    // reads (value_and_grad checks), so no alias versioning either.
    WEFT_SIMD_LOOP
    for (int j = 0; j < lanes; ++j) {
      T v = backward_one<E, K, Assign>(b, seed, g, i + j);
      if constexpr (Sum) acc[j] += v;
    }
  for (int j = 0; i < n; ++i, ++j) {
    T v = backward_one<E, K, Assign>(b, seed, g, i);
    if constexpr (Sum) acc[j] += v;
  }
  for (int w = lanes / 2; w > 0; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  return Sum ? acc[0] : T(0);
}

// One row (the last axis) of the general path. Independent = true: no store
// address repeats along the row, so the loop may be vectorised.
template <bool Independent, bool Sum, class B, class Seed, class T, std::size_t K>
T backward_row(const B b, const Seed seed, SlotMem<T, K> m, index_t i0, index_t i1, index_t i2, index_t n) {
  T total = 0;
  auto one = [&](index_t i3) __attribute__((always_inline)) {
    const Index4 ix{{i0, i1, i2, i3}};
    typename B::Tape t;
    b.fwd(ix, t);
    b.bwd(ix, t, seed(ix, t.v), m);
    if constexpr (Sum) total += t.v;
  };
  if constexpr (Independent) {
    WEFT_IVDEP
    for (index_t i3 = 0; i3 < n; ++i3) one(i3);
  } else {
    for (index_t i3 = 0; i3 < n; ++i3) one(i3);
  }
  return total;
}

// One fused pass over a region: recompute its values in registers, apply the
// adjoint rules, and write the adjoints of all its leaves. Contiguous path:
//   assign = true    first writer of every slot: g[i] = adjoint
//   assign = false   g[i] += adjoint (slot buffers zeroed beforehand by the caller)
// General path: always accumulates, through each occurrence's strides. With
// Sum = true it also returns the sum of the region's values (the fused
// value-and-gradient of sum(region) at the root).
template <class E, bool Sum, std::size_t K, class B, class Seed, class T>
T backward_region(const B& bound, const Shape& shape, const Seed& seed_in, const SlotMem<T, K>& sinks, bool linear,
                  bool assign) {
  const B b = bound;  // local copies: nothing the loop stores can alias them
  const Seed seed = seed_in;
  const SlotMem<T, K> mem = sinks;
  const index_t n = shape.numel();
  if (linear)
    return assign ? backward_linear<E, K, true, Sum>(b, seed, mem, n) : backward_linear<E, K, false, Sum>(b, seed, mem, n);
  if (shape.numel() == 0) return T(0);
  // Along the last axis every adjoint store goes to a distinct address unless
  // some leaf is broadcast along it: then the inner loop must stay in order.
  bool inner_independent = !Sum;
  b.visit([&](const LeafInfo& l) { inner_independent = inner_independent && (!l.writes || l.strides[3] != 0); });
  const Shape p = padded(shape);
  T total = 0;
  for (index_t i0 = 0; i0 < p[0]; ++i0)
    for (index_t i1 = 0; i1 < p[1]; ++i1)
      for (index_t i2 = 0; i2 < p[2]; ++i2)
        total += inner_independent ? backward_row<true, Sum>(b, seed, mem, i0, i1, i2, p[3])
                                   : backward_row<false, Sum>(b, seed, mem, i0, i1, i2, p[3]);
  return total;
}

}  // namespace weft::kernels::cpu
