// HalvingDoubling (Rabenseifner): allreduce as reduce-scatter by recursive
// halving then allgather by recursive doubling: 2 lg p rounds moving
// 2(p-1)/p of the buffer. Non-powers of two fold the extra ranks into
// partners first and hand them the result last. reduce is halving
// reduce-scatter plus a gather to the root.
#pragma once

#include <cstddef>
#include <cstring>

#include "../algorithm.hpp"
#include "../detail/blocks.hpp"
#include "../detail/defaults.hpp"

namespace weft::comm {

struct HalvingDoubling {
  static constexpr const char* name = "halving_doubling";
  std::size_t chunk_bytes = std::size_t{1} << 20;

  template <class Ctx>
  void allreduce(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    detail::halving_doubling_allreduce(ctx, in, out, n, chunk_bytes);
  }
  template <class Ctx>
  void reduce_scatter(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    if (detail::pow2(ctx.size()))
      detail::halving_reduce_scatter(ctx, in, out, n, chunk_bytes);
    else
      detail::ring_reduce_scatter(ctx, in, out, n, chunk_bytes);
  }
  template <class Ctx>
  void allgather(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    detail::doubling_allgather_or_ring(ctx, in, out, n, chunk_bytes);
  }
  template <class Ctx>
  void reduce(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    const int p = ctx.size(), r = ctx.rank();
    const std::size_t es = dtype_size(ctx.call.type);
    if (!detail::pow2(p) || p == 1) {
      detail::default_reduce(ctx, in, out, n, root, chunk_bytes);
      return;
    }
    std::byte* ws = ctx.workspace(n * es);
    ctx.copy(ws, in, n * es);
    detail::Segments seg{n, p};
    detail::halving_steps(ctx, ws, seg, r, detail::Fold(p), chunk_bytes);
    if (ctx.call.reduce == ReduceOp::avg) ctx.divide(ws + seg.off(r) * es, seg.len(r), p);
    detail::linear_gatherv(ctx, ws + seg.off(r) * es, out, seg, root);
  }

  static double cost(Collective op, std::size_t bytes, int p, const CostModel& m) {
    const double S = static_cast<double>(bytes), L = detail::lg(p), f = detail::frac(p);
    const double fold = detail::pow2(p) ? 0.0 : 2 * (m.alpha + S * m.beta) + S * m.gamma;
    switch (op) {
      case Collective::allreduce: return 2 * L * m.alpha + 2 * f * S * m.beta + f * S * m.gamma + fold;
      case Collective::reduce_scatter:
        return detail::pow2(p) ? L * m.alpha + f * S * m.beta + f * S * m.gamma
                               : (p - 1) * m.alpha + f * S * m.beta + f * S * m.gamma;
      case Collective::allgather: return (detail::pow2(p) ? L : p - 1) * m.alpha + f * S * m.beta;
      case Collective::reduce:
        return detail::pow2(p) ? L * m.alpha + f * S * (m.beta + m.gamma) + (p - 1) * m.alpha + f * S * m.beta
                               : detail::default_cost(op, bytes, p, m);
      default: return detail::default_cost(op, bytes, p, m);
    }
  }
};

static_assert(Algorithm<HalvingDoubling>);

}  // namespace weft::comm
