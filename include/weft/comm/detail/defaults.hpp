// Collectives most policies share: binomial broadcast and reduce, linear
// gather and scatter, pairwise alltoall, dissemination barrier. Policies
// forward to these for the operations they do not do their own way (policies
// stay plain aggregates, so `Ring{.chunk_bytes = n}` works).
#pragma once

#include <cstddef>

#include "../../core/dtype.hpp"
#include "../tuning/cost_model.hpp"
#include "../collective.hpp"
#include "blocks.hpp"

namespace weft::comm::detail {

template <class Ctx>
void default_broadcast(Ctx& ctx, void* buf, std::size_t n, int root) {
  binomial_broadcast(ctx, buf, n * dtype_size(ctx.call.type), root);
}
template <class Ctx>
void default_reduce(Ctx& ctx, const void* in, void* out, std::size_t n, int root, std::size_t chunk) {
  void* acc = ctx.rank() == root ? out : ctx.workspace(n * dtype_size(ctx.call.type));
  binomial_reduce(ctx, in, acc, n, root, chunk);
}
template <class Ctx>
void default_gather(Ctx& ctx, const void* in, void* out, std::size_t n, int root) {
  linear_gatherv(ctx, in, out, Segments{n * static_cast<std::size_t>(ctx.size()), ctx.size()}, root);
}

// Costs of the shared implementations (S as in cost_model.hpp).
inline double default_cost(Collective op, std::size_t bytes, int p, const CostModel& m) {
    const double S = static_cast<double>(bytes), a = m.alpha, b = m.beta, g = m.gamma;
    switch (op) {
      case Collective::broadcast: return lg(p) * (a + S * b);
      case Collective::reduce: return lg(p) * (a + S * b + S * g);
      case Collective::gather:
      case Collective::scatter: return (p - 1) * a + frac(p) * S * b;
      case Collective::alltoall: return (p - 1) * a + frac(p) * S * b;
      case Collective::barrier: return lg(p) * a;
      case Collective::allreduce: return 2 * lg(p) * a + 2 * S * lg(p) * b + S * lg(p) * g;
      case Collective::reduce_scatter: return lg(p) * a + S * lg(p) * b + S * lg(p) * g + (p - 1) * a;
      case Collective::allgather: return (p - 1) * a + frac(p) * S * b + lg(p) * (a + S * b);
      default: return a + S * b;
    }
}

}  // namespace weft::comm::detail
