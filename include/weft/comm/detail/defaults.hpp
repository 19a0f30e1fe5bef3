// The default schedule of each collective: what a policy runs for a
// collective it has no schedule of its own for (algorithm.hpp picks between
// the two with `if constexpr`). Ring allreduce / reduce-scatter / allgather,
// binomial broadcast and reduce, linear gather and scatter, pairwise
// alltoall, dissemination barrier. A policy's `chunk_bytes`, when it has one,
// is the pipeline unit of the defaults too (policies stay plain aggregates,
// so `Ring{.chunk_bytes = n}` works).
#pragma once

#include <cstddef>
#include <cstring>

#include "../../core/dtype.hpp"
#include "../collective.hpp"
#include "../tuning/cost_model.hpp"
#include "blocks.hpp"

namespace weft::comm::detail {

// The policy's pipeline unit, 0 (whole messages) for policies without one.
template <class A>
std::size_t chunk_of(const A& a) {
  if constexpr (requires { a.chunk_bytes; })
    return a.chunk_bytes;
  else
    return 0;
}

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
// An allgather's first step: this rank's block of n into its place in `out`
// (nothing to do in place).
template <class Ctx>
void place_own_block(Ctx& ctx, const void* in, void* out, std::size_t n) {
  const std::size_t es = dtype_size(ctx.call.type);
  void* own = at(out, static_cast<std::size_t>(ctx.rank()) * n, es);
  if (own != in && n) ctx.move(own, in, n * es);
}
// Copies this rank's block into place, then the ring gathers the others.
template <class Ctx>
void default_allgather(Ctx& ctx, const void* in, void* out, std::size_t n, std::size_t chunk) {
  place_own_block(ctx, in, out, n);
  ring_allgatherv(ctx, out, Segments{n * static_cast<std::size_t>(ctx.size()), ctx.size()}, chunk);
}
// Recursive doubling on powers of two, else the ring (HalvingDoubling's and RecursiveDoubling's allgather).
template <class Ctx>
void doubling_allgather_or_ring(Ctx& ctx, const void* in, void* out, std::size_t n, std::size_t chunk) {
  if (!pow2(ctx.size())) {
    default_allgather(ctx, in, out, n, chunk);
    return;
  }
  place_own_block(ctx, in, out, n);
  doubling_allgather(ctx, out, n, chunk);
}

// One overload per collective, chosen by its descriptor.
template <class A, class Ctx>
void default_schedule(collectives::Allreduce, const A& a, Ctx& ctx, const Args& x) {
  ring_allreduce(ctx, x.in, x.out, x.count, chunk_of(a));
}
template <class A, class Ctx>
void default_schedule(collectives::ReduceScatter, const A& a, Ctx& ctx, const Args& x) {
  ring_reduce_scatter(ctx, x.in, x.out, x.count, chunk_of(a));
}
template <class A, class Ctx>
void default_schedule(collectives::Allgather, const A& a, Ctx& ctx, const Args& x) {
  default_allgather(ctx, x.in, x.out, x.count, chunk_of(a));
}
template <class A, class Ctx>
void default_schedule(collectives::Broadcast, const A&, Ctx& ctx, const Args& x) {
  default_broadcast(ctx, x.out, x.count, x.root);
}
template <class A, class Ctx>
void default_schedule(collectives::Reduce, const A& a, Ctx& ctx, const Args& x) {
  default_reduce(ctx, x.in, x.out, x.count, x.root, chunk_of(a));
}
template <class A, class Ctx>
void default_schedule(collectives::Gather, const A&, Ctx& ctx, const Args& x) {
  default_gather(ctx, x.in, x.out, x.count, x.root);
}
template <class A, class Ctx>
void default_schedule(collectives::Scatter, const A&, Ctx& ctx, const Args& x) {
  linear_scatter(ctx, x.in, x.out, x.count, x.root);
}
template <class A, class Ctx>
void default_schedule(collectives::Alltoall, const A&, Ctx& ctx, const Args& x) {
  pairwise_alltoall(ctx, x.in, x.out, x.count);
}
template <class A, class Ctx>
void default_schedule(collectives::Barrier, const A&, Ctx& ctx, const Args&) {
  dissemination_barrier(ctx);
}

// Costs of the default schedules (S as in cost_model.hpp).
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
