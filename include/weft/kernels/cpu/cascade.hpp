// Cascade (pairwise) reduction, the order NumPy's pairwise sum and XLA's tree
// reductions use: values are combined into W lane partials in blocks, and the
// finished blocks are combined as a binary counter (block j merges with the
// partial of the blocks before it while j's low bits are set), so every result
// is a balanced tree of blocks. A float32 sum of n values then has a rounding
// error that grows with block + log2(n / block), not with n: one running sum
// per output loses ~3e-2 at 2^24 elements, a cascade keeps ~1e-7. The order
// depends on n alone, so results are reproducible run to run.
// Used by every CPU reduction (loops.hpp, rows.hpp).
#pragma once

#include "../../core/shape.hpp"
#include "../bound.hpp"

namespace weft::kernels::cpu {

// W lane partials per level; level l holds the partial of 2^l blocks.
template <class R, class T, int W>
struct Cascade {
  T level[64][W];
  index_t blocks = 0;

  // Add one finished block (its W lane partials); blk is left unspecified.
  WEFT_INLINE void push(T (&blk)[W]) {
    int l = 0;
    for (index_t j = blocks; j & 1; j >>= 1, ++l)
      for (int w = 0; w < W; ++w) blk[w] = R::combine(level[l][w], blk[w]);
    for (int w = 0; w < W; ++w) level[l][w] = blk[w];
    ++blocks;
  }

  // The combined partial of every block, lane by lane.
  WEFT_INLINE void lanes(T (&out)[W]) const {
    for (int w = 0; w < W; ++w) out[w] = R::template identity<T>();
    int l = 0;
    for (index_t j = blocks; j; j >>= 1, ++l)
      if (j & 1)
        for (int w = 0; w < W; ++w) out[w] = R::combine(level[l][w], out[w]);
  }

  // Everything combined: the levels, then the lanes pairwise.
  WEFT_INLINE T total() const {
    T out[W];
    lanes(out);
    for (int w = W / 2; w > 0; w /= 2)
      for (int j = 0; j < w; ++j) out[j] = R::combine(out[j], out[j + w]);
    return out[0];
  }
};

// One value at a time (general strided paths): blocks of 64 values in order.
template <class R, class T>
struct ScalarCascade {
  static constexpr int block = 64;
  Cascade<R, T, 1> c;
  T acc[1] = {R::template identity<T>()};
  int k = 0;

  WEFT_INLINE void add(T v) {
    acc[0] = R::combine(acc[0], v);
    if (++k == block) {
      c.push(acc);
      acc[0] = R::template identity<T>();
      k = 0;
    }
  }
  WEFT_INLINE T total() {
    if (k) {
      c.push(acc);
      acc[0] = R::template identity<T>();
      k = 0;
    }
    return c.total();
  }
};

// Values per block on the lane paths: each lane adds 16 in order.
inline constexpr int cascade_lanes = 16;
inline constexpr index_t cascade_block = cascade_lanes * 16;

// R-combine of f(i) for i in [0, n): lanes over a linear index, blocked and
// combined as a cascade. f must be cheap to call twice per index (inlined).
template <class R, class T, class F>
WEFT_INLINE T reduce_linear(index_t n, F&& f) {
  constexpr int W = cascade_lanes;
  Cascade<R, T, W> c;
  for (index_t i0 = 0; i0 < n; i0 += cascade_block) {
    const index_t i1 = i0 + cascade_block < n ? i0 + cascade_block : n;
    T acc[W];
    for (int j = 0; j < W; ++j) acc[j] = R::template identity<T>();
    index_t i = i0;
    for (; i + W <= i1; i += W)
      for (int j = 0; j < W; ++j) acc[j] = R::combine(acc[j], f(i + j));
    for (int j = 0; i < i1; ++i, ++j) acc[j] = R::combine(acc[j], f(i));
    c.push(acc);
  }
  return c.total();
}

}  // namespace weft::kernels::cpu
