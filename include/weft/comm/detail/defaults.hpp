// Collectives most policies share: binomial broadcast and reduce, linear
// gather and scatter, pairwise alltoall, dissemination barrier. A policy
// inherits these and hides the ones it does its own way (plain name hiding,
// no virtual calls).
#pragma once

#include <cstddef>

#include "../../core/dtype.hpp"
#include "../cost_model.hpp"
#include "../collective.hpp"
#include "blocks.hpp"

namespace weft::comm::detail {

struct DefaultCollectives {
  template <class Ctx>
  void broadcast(Ctx& ctx, void* buf, std::size_t n, int root) const {
    binomial_broadcast(ctx, buf, n * dtype_size(ctx.call.type), root);
  }
  template <class Ctx>
  void reduce(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    void* acc = ctx.rank() == root ? out : ctx.workspace(n * dtype_size(ctx.call.type));
    binomial_reduce(ctx, in, acc, n, root, 0);
  }
  template <class Ctx>
  void gather(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    linear_gatherv(ctx, in, out, Segments{n * static_cast<std::size_t>(ctx.size()), ctx.size()}, root);
  }
  template <class Ctx>
  void scatter(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    linear_scatter(ctx, in, out, n, root);
  }
  template <class Ctx>
  void alltoall(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    pairwise_alltoall(ctx, in, out, n);
  }
  template <class Ctx>
  void barrier(Ctx& ctx) const {
    dissemination_barrier(ctx);
  }

  // Costs of the shared implementations (S as in cost_model.hpp).
  static double default_cost(Collective op, std::size_t bytes, int p, const CostModel& m) {
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
};

}  // namespace weft::comm::detail
