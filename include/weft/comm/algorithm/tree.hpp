// Tree: binomial trees. reduce and broadcast take lg p rounds; allreduce is
// reduce to rank 0 then broadcast (latency-friendly for small messages, every
// round moves the whole buffer). reduce_scatter = reduce + scatter, allgather
// = gather + broadcast. reduce (binomial, chunk_bytes per edge), broadcast,
// gather, scatter, alltoall and barrier are the defaults (detail/defaults.hpp).
#pragma once

#include <cstddef>
#include <cstring>

#include "../algorithm.hpp"
#include "../detail/blocks.hpp"
#include "../detail/defaults.hpp"

namespace weft::comm {

struct Tree {
  static constexpr const char* name = "tree";
  std::size_t chunk_bytes = std::size_t{1} << 20;  // pipeline unit of each tree edge

  template <class Ctx>
  void allreduce(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    detail::binomial_reduce(ctx, in, out, n, 0, chunk_bytes);  // out is scratch off the root
    detail::binomial_broadcast(ctx, out, n * dtype_size(ctx.call.type), 0);
  }
  template <class Ctx>
  void reduce_scatter(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    const std::size_t total = n * static_cast<std::size_t>(ctx.size()), es = dtype_size(ctx.call.type);
    std::byte* acc = ctx.workspace(total * es);
    detail::binomial_reduce(ctx, in, acc, total, 0, chunk_bytes);
    detail::linear_scatter(ctx, acc, out, n, 0);
  }
  template <class Ctx>
  void allgather(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    const std::size_t total = n * static_cast<std::size_t>(ctx.size());
    detail::linear_gatherv(ctx, in, out, detail::Segments{total, ctx.size()}, 0);
    detail::binomial_broadcast(ctx, out, total * dtype_size(ctx.call.type), 0);
  }

  static double cost(Collective op, std::size_t bytes, int p, const CostModel& m) {
    const double S = static_cast<double>(bytes), L = detail::lg(p);
    switch (op) {
      case Collective::allreduce: return 2 * L * m.alpha + 2 * S * L * m.beta + S * L * m.gamma;
      case Collective::reduce_scatter: return L * (m.alpha + S * m.beta + S * m.gamma) + (p - 1) * m.alpha + detail::frac(p) * S * m.beta;
      case Collective::allgather: return (p - 1) * m.alpha + detail::frac(p) * S * m.beta + L * (m.alpha + S * m.beta);
      default: return detail::default_cost(op, bytes, p, m);
    }
  }
};

static_assert(Algorithm<Tree>);

}  // namespace weft::comm
