// Ring: allreduce as reduce-scatter then allgather around the ring, each step
// pipelined in chunks (bandwidth optimal: every rank sends 2(p-1)/p of the
// buffer). The schedules themselves (ring_reduce_scatter, ring_allgatherv,
// ring_allreduce) are in detail/blocks.hpp, shared with the defaults; the
// collectives Ring has no schedule of its own for (broadcast and reduce:
// binomial trees, where a ring is latency-bound; gather, scatter, alltoall,
// barrier) fall back to detail/defaults.hpp.
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
    detail::default_allgather(ctx, in, out, n, chunk_bytes);
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
