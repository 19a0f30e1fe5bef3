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
#include "../../tensor/workspace.hpp"
#include "../bound.hpp"
#include "cascade.hpp"

// A hinted loop (WEFT_SIMD_LOOP, WEFT_IVDEP) that clang cannot vectorise for
// some expression runs as the plain loop, which is right; clang would still
// warn (-Wpass-failed) in every user's build. The loop functions are out of
// line under clang (WEFT_LOOP_FN), so the report lands here, where it is off.
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wpass-failed"
#endif

namespace weft::kernels::cpu {

inline constexpr int lanes = cascade_lanes;

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
WEFT_LOOP_FN void evaluate(const B& bound, TensorView<T, weft::cpu> dst) {
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
  if (dst.is_contiguous()) {
    // Row by row (a broadcast operand, such as a bias written into every row
    // of a product's output): the loop over the last axis vectorises (no
    // ivdep: GCC turns some of these loops into memset/memcpy and then warns
    // that it ignored the annotation).
    const Shape p = padded(dst.shape);
    for (index_t i0 = 0; i0 < p[0]; ++i0)
      for (index_t i1 = 0; i1 < p[1]; ++i1)
        for (index_t i2 = 0; i2 < p[2]; ++i2) {
          T* row = dst.data + ((i0 * p[1] + i1) * p[2] + i2) * p[3];
          for (index_t i3 = 0; i3 < p[3]; ++i3) row[i3] = from_compute<T>(value_at(b, Index4{{i0, i1, i2, i3}}));
        }
    return;
  }
  Strides ds = aligned_strides(dst.shape, dst.strides, dst.shape);
  for_each_index(dst.shape, [&](const Index4& ix) { dst.data[offset(ix, ds)] = from_compute<T>(value_at(b, ix)); });
}

// ---------------------------------------------------------------- reductions
// Every reduction runs as a cascade (cascade.hpp): float32 sums of 2^24
// elements stay near 1e-7 relative error instead of growing with length.

// Reduce the whole region. The blocked order is fixed for a given shape, so
// results are reproducible run to run.
template <class R, class B>
typename B::value_type reduce_all(const B& bound, const Shape& shape) {
  using T = typename B::value_type;
  const B b = bound;
  const index_t n = shape.numel();
  if (linear_ok(b, shape)) return reduce_linear<R, T>(n, [&](index_t i) __attribute__((always_inline)) { return value_at(b, i); });
  ScalarCascade<R, T> acc;
  for_each_index(shape, [&](const Index4& ix) { acc.add(value_at(b, ix)); });
  return acc.total();
}

// Reduce the region (padded shape p) along axis r into out, read through
// out_st (0 at r), as a cascade per output: along the last axis, lanes walk
// the row; along an outer axis, lanes walk 16 neighbouring outputs of the last
// axis, so memory is still read in rows.
template <class R, class B>
void reduce_axis(const B& b, const Shape& p, int r, typename B::value_type* out, const Strides& out_st) {
  using T = typename B::value_type;
  constexpr int W = cascade_lanes;
  constexpr index_t rows_per_block = 16;
  Shape q = p;  // the outputs: every index with axis r at 0
  q[r] = 1;
  if (r == max_rank - 1) {
    for (index_t a = 0; a < q[0]; ++a)
      for (index_t c = 0; c < q[1]; ++c)
        for (index_t d = 0; d < q[2]; ++d)
          out[offset(Index4{{a, c, d, 0}}, out_st)] =
              reduce_linear<R, T>(p[3], [&](index_t i) __attribute__((always_inline)) { return value_at(b, Index4{{a, c, d, i}}); });
    return;
  }
  // Along an outer axis: up to `group` neighbouring lane blocks of outputs at
  // once, so each row block is read as rows of group * W values (a bias
  // gradient over (R, N) walks memory in rows rather than a column of 64-byte
  // pieces, one page apart). Each output's order of additions is the same as
  // one block at a time: 16 rows per block, blocks as a cascade.
  constexpr int group = 8;
  for (index_t a = 0; a < q[0]; ++a)
    for (index_t c = 0; c < q[1]; ++c)
      for (index_t d = 0; d < q[2]; ++d)
        for (index_t g0 = 0; g0 < p[3]; g0 += group * W) {
          const index_t g1 = p[3] - g0 < group * W ? p[3] : g0 + group * W;
          const int nb = static_cast<int>((g1 - g0 + W - 1) / W);
          Cascade<R, T, W> cas[group];
          for (index_t k0 = 0; k0 < p[r]; k0 += rows_per_block) {
            const index_t k1 = k0 + rows_per_block < p[r] ? k0 + rows_per_block : p[r];
            for (int bi = 0; bi < nb; ++bi) {
              const index_t e0 = g0 + bi * W;
              const int w = static_cast<int>(p[3] - e0 < W ? p[3] - e0 : W);
              T acc[W];
              for (int j = 0; j < W; ++j) acc[j] = R::template identity<T>();
              for (index_t k = k0; k < k1; ++k) {
                Index4 ix{{a, c, d, e0}};
                ix.i[r] = k;
                for (int j = 0; j < w; ++j, ++ix.i[3]) acc[j] = R::combine(acc[j], value_at(b, ix));
              }
              cas[bi].push(acc);
            }
          }
          for (int bi = 0; bi < nb; ++bi) {
            const index_t e0 = g0 + bi * W;
            const int w = static_cast<int>(p[3] - e0 < W ? p[3] - e0 : W);
            T res[W];
            cas[bi].lanes(res);
            Index4 ix{{a, c, d, e0}};
            for (int j = 0; j < w; ++j, ++ix.i[3]) out[offset(ix, out_st)] = res[j];
          }
        }
}

// Reduce the region into `out` (contiguous, keep-dims shape), read through
// strides aligned to the region's shape (0 along reduced axes). One axis runs
// as one cascade (reduce_axis); several run one at a time, innermost first,
// through workspace buffers, so each output is still a tree of cascades.
template <class R, class B>
void reduce_into(Workspace<weft::cpu>& ws, const B& bound, const Shape& shape, typename B::value_type* out,
                 const Strides& out_st, index_t out_n) {
  using T = typename B::value_type;
  const B b = bound;
  const Shape p = padded(shape);
  int axes[max_rank];
  int nr = 0;
  for (int d = 0; d < max_rank; ++d)
    if (out_st[d] == 0 && p[d] > 1) axes[nr++] = d;
  if (shape.numel() == 0 || nr == 0) {  // nothing to reduce: each output is one element (or none)
    for (index_t i = 0; i < out_n; ++i) out[i] = R::template identity<T>();
    for_each_index(shape, [&](const Index4& ix) {
      T& o = out[offset(ix, out_st)];
      o = R::combine(o, value_at(b, ix));
    });
    return;
  }
  if (nr == 1) return reduce_axis<R>(b, p, axes[0], out, out_st);
  Shape cur = p;
  cur[axes[nr - 1]] = 1;
  TensorView<T, weft::cpu> tmp = ws.template alloc<T>(cur);
  Strides tst = contiguous_strides(cur);
  tst[axes[nr - 1]] = 0;
  reduce_axis<R>(b, p, axes[nr - 1], tmp.data, tst);
  for (int k = nr - 2; k >= 0; --k) {
    const Strides c = contiguous_strides(cur);
    const BoundTensor<T> src{tmp.data, c, cur, c};
    if (k == 0) return reduce_axis<R>(src, cur, axes[0], out, out_st);
    Shape next = cur;
    next[axes[k]] = 1;
    TensorView<T, weft::cpu> t2 = ws.template alloc<T>(next);
    Strides nst = contiguous_strides(next);
    nst[axes[k]] = 0;
    reduce_axis<R>(src, cur, axes[k], t2.data, nst);
    tmp = t2;
    cur = next;
  }
}

// target (n elements) += scratch (the region's padded shape p, contiguous)
// summed over the axes where target's aligned strides tst are 0.
template <class T>
void add_reduced(Workspace<weft::cpu>& ws, const T* scratch, const Shape& p, T* target, const Strides& tst, index_t n) {
  TensorView<T, weft::cpu> tmp = ws.template alloc<T>(Shape{n});
  const Strides c = contiguous_strides(p);
  reduce_into<SumOp>(ws, BoundTensor<T>{scratch, c, p, c}, p, tmp.data, tst, n);
  for (index_t i = 0; i < n; ++i) target[i] += tmp.data[i];
}

// ---------------------------------------------------------------- backward

// Backward of one element on the contiguous path: values and local adjoints in
// registers, then each active slot's adjoint stored at index i.
template <class E, std::size_t K, bool Assign, class B, class Seed, class T>
WEFT_INLINE T backward_one(const B& b, const Seed& seed, const SlotMem<T, K>& g, index_t i) {
  typename B::Tape t;
  b.fwd(i, t);
  HostLinearAcc<T, K> acc;
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
// compiler keeps pointers in registers and vectorises. With Sum, the region's
// values are summed as a cascade: lane partials per block of cascade_block
// elements, blocks combined pairwise.
template <class E, std::size_t K, bool Assign, bool Sum, class B, class Seed, class T>
WEFT_LOOP_FN T backward_linear(const B b, const Seed seed, const SlotMem<T, K> g, index_t n) {
  Cascade<SumOp, T, lanes> cas;
  const index_t block = Sum ? cascade_block : n;
  for (index_t i0 = 0; i0 < n; i0 += block) {
    const index_t i1 = n - i0 > block ? i0 + block : n;
    T acc[lanes];
    for (int j = 0; j < lanes; ++j) acc[j] = T(0);
    index_t i = i0;
    for (; i + lanes <= i1; i += lanes)
      // The lane loop maps onto SIMD lanes, each lane its own partial sum (no
      // reassociation needed). Gradient buffers never overlap what the region
      // reads (value_and_grad checks), so no alias versioning either.
      WEFT_SIMD_LOOP
      for (int j = 0; j < lanes; ++j) {
        T v = backward_one<E, K, Assign>(b, seed, g, i + j);
        if constexpr (Sum) acc[j] += v;
      }
    for (int j = 0; i < i1; ++i, ++j) {
      T v = backward_one<E, K, Assign>(b, seed, g, i);
      if constexpr (Sum) acc[j] += v;
    }
    if constexpr (Sum) cas.push(acc);
  }
  if constexpr (Sum)
    return cas.total();
  else
    return T(0);
}

// One row (the last axis) of the general path. Independent = true: no store
// address repeats along the row, so the loop may be vectorised. With Sum the
// row's values go on the pass's cascade.
template <bool Independent, bool Sum, class B, class Seed, class T, std::size_t K>
WEFT_LOOP_FN void backward_row(const B b, const Seed seed, SlotMem<T, K> m, index_t i0, index_t i1, index_t i2, index_t n,
                  ScalarCascade<SumOp, T>& total) {
  auto one = [&](index_t i3) __attribute__((always_inline)) {
    const Index4 ix{{i0, i1, i2, i3}};
    typename B::Tape t;
    b.fwd(ix, t);
    b.bwd(ix, t, seed(ix, t.v), m);
    if constexpr (Sum) total.add(t.v);
  };
  if constexpr (Independent) {
    WEFT_IVDEP
    for (index_t i3 = 0; i3 < n; ++i3) one(i3);
  } else {
    for (index_t i3 = 0; i3 < n; ++i3) one(i3);
  }
}

// One fused pass over a region: recompute its values in registers, apply the
// adjoint rules, and write the adjoints of all its leaves. Contiguous path:
//   assign = true    first writer of every slot: g[i] = adjoint
//   assign = false   g[i] += adjoint (slot buffers zeroed beforehand by the caller)
// General path: always accumulates, through each occurrence's strides. A leaf
// broadcast along some axis (a bias, a keep-dims reduction) would add many
// adjoints into each of its elements one after another; it writes into
// scratch memory of the region's shape instead (one element each), summed
// into its buffer afterwards as cascades (reduce_into), as JAX transposes a
// broadcast into a reduce_sum. With Sum = true it also returns the sum of the
// region's values (the fused value-and-gradient of sum(region) at the root),
// as a cascade.
template <class E, bool Sum, std::size_t K, class B, class Seed, class T>
WEFT_LOOP_FN T backward_region(Workspace<weft::cpu>& ws, const B& bound, const Shape& shape, const Seed& seed_in,
                  const SlotMem<T, K>& sinks, bool linear, bool assign) {
  const Seed seed = seed_in;  // local copies: nothing the loop stores can alias them
  const index_t n = shape.numel();
  if (linear) {
    const B b = bound;
    const SlotMem<T, K> mem = sinks;
    return assign ? backward_linear<E, K, true, Sum>(b, seed, mem, n) : backward_linear<E, K, false, Sum>(b, seed, mem, n);
  }
  if (n == 0) return T(0);
  const Shape p = padded(shape);
  const Strides rst = contiguous_strides(p);
  auto broadcast = [&](const Strides& st) { return broadcast_along(st, p); };
  B b = bound;
  SlotMem<T, K> mem = sinks;
  mem.rst = rst;
  // Broadcast buffer leaves (parameters, materialised values) write scratch.
  struct Moved {
    T* adj;
    Strides ast;
    index_t n;
    T* scratch;
  };
  constexpr int max_moved = 8;  // beyond that, the rest keep their chain of additions
  Moved moved[max_moved];
  int n_moved = 0;
  b.adjoints([&]<class U>(U*& adj, Strides& ast, const Shape& own) {
    if constexpr (std::is_same_v<U, T>) {
      if (n_moved == max_moved || !broadcast(ast)) return;
      T* scratch = ws.template zeros<T>(p).data;
      moved[n_moved++] = Moved{adj, ast, own.numel(), scratch};
      adj = scratch;
      ast = rst;
    }
  });
  // Inputs' slots likewise, when all their occurrences here are broadcast alike.
  const SlotLayouts<K> slots = slot_layouts<K>(b);
  if constexpr (K > 0)
    for (std::size_t k = 0; k < K; ++k)
      if (slots.count[k] > 0 && slots.alike[k] && broadcast(slots.st[k])) mem.scratch[k] = ws.template zeros<T>(p).data;
  // Along the last axis every adjoint store goes to a distinct address unless
  // some leaf is broadcast along it: then the inner loop must stay in order.
  bool inner_independent = !Sum;
  b.visit([&](const LeafInfo& l) {
    const bool to_scratch = l.slot >= 0 && mem.scratch[static_cast<std::size_t>(l.slot)];
    if (l.writes && !to_scratch && l.adj_strides[3] == 0) inner_independent = false;
  });
  ScalarCascade<SumOp, T> total;
  for (index_t i0 = 0; i0 < p[0]; ++i0)
    for (index_t i1 = 0; i1 < p[1]; ++i1)
      for (index_t i2 = 0; i2 < p[2]; ++i2)
        if (inner_independent)
          backward_row<true, Sum>(b, seed, mem, i0, i1, i2, p[3], total);
        else
          backward_row<false, Sum>(b, seed, mem, i0, i1, i2, p[3], total);
  for (int m = 0; m < n_moved; ++m) add_reduced(ws, moved[m].scratch, p, moved[m].adj, moved[m].ast, moved[m].n);
  if constexpr (K > 0)
    for (std::size_t k = 0; k < K; ++k)
      if (mem.scratch[k]) add_reduced(ws, mem.scratch[k], p, sinks.g[k], slots.st[k], slots.n[k]);
  if constexpr (Sum)
    return total.total();
  else
    return T(0);
}

}  // namespace weft::kernels::cpu

#if defined(__clang__)
#pragma clang diagnostic pop
#endif
