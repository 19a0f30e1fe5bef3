// Ring: allreduce as reduce-scatter then allgather around the ring, each step
// pipelined in chunks (bandwidth optimal: every rank sends 2(p-1)/p of the
// buffer). Broadcast/reduce use binomial trees (a ring is latency-bound there).
#pragma once

#include <cstddef>
#include <cstring>

#include "../algorithm.hpp"
#include "../detail/blocks.hpp"
#include "../detail/defaults.hpp"

namespace weft::comm {

struct Ring {
  static constexpr const char* name = "ring";
  std::size_t chunk_bytes = std::size_t{1} << 20;  // pipeline unit per ring step (0: whole segments)

  template <class Ctx>
  void allreduce(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    detail::ring_allreduce(ctx, in, out, n, chunk_bytes);
  }
  template <class Ctx>
  void reduce_scatter(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    detail::ring_reduce_scatter(ctx, in, out, n, chunk_bytes);
  }
  template <class Ctx>
  void allgather(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    const std::size_t es = dtype_size(ctx.call.type);
    void* own = detail::at(out, static_cast<std::size_t>(ctx.rank()) * n, es);
    if (own != in && n) std::memmove(own, in, n * es);
    detail::ring_allgatherv(ctx, out, detail::Segments{n * static_cast<std::size_t>(ctx.size()), ctx.size()},
                            chunk_bytes);
  }

  template <class Ctx>
  void broadcast(Ctx& ctx, void* buf, std::size_t n, int root) const {
    detail::default_broadcast(ctx, buf, n, root);
  }
  template <class Ctx>
  void reduce(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    detail::default_reduce(ctx, in, out, n, root, chunk_bytes);
  }
  // Shared schedules (detail/defaults.hpp).
  template <class Ctx>
  void gather(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    detail::default_gather(ctx, in, out, n, root);
  }
  template <class Ctx>
  void scatter(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    detail::linear_scatter(ctx, in, out, n, root);
  }
  template <class Ctx>
  void alltoall(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    detail::pairwise_alltoall(ctx, in, out, n);
  }
  template <class Ctx>
  void barrier(Ctx& ctx) const {
    detail::dissemination_barrier(ctx);
  }

  static double cost(Collective op, std::size_t bytes, int p, const CostModel& m) {
    const double S = static_cast<double>(bytes), f = detail::frac(p);
    switch (op) {
      case Collective::allreduce: return 2 * (p - 1) * m.alpha + 2 * f * S * m.beta + f * S * m.gamma;
      case Collective::reduce_scatter: return (p - 1) * m.alpha + f * S * m.beta + f * S * m.gamma;
      case Collective::allgather: return (p - 1) * m.alpha + f * S * m.beta;
      default: return detail::default_cost(op, bytes, p, m);
    }
  }
};

static_assert(Algorithm<Ring>);

}  // namespace weft::comm
