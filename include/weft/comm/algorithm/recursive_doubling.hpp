// RecursiveDoubling: lg p rounds of full-buffer exchanges with partner
// rank ^ 2^k (non-powers of two fold the extra ranks first, as MPICH does).
// Fewest rounds, so best for small messages (MPICH uses it up to 2 KiB).
// allgather doubles the gathered block each round (powers of two; others use
// the ring); barrier is the dissemination barrier.
#pragma once

#include <cstddef>
#include <cstring>

#include "../algorithm.hpp"
#include "../detail/blocks.hpp"
#include "../detail/defaults.hpp"

namespace weft::comm {

struct RecursiveDoubling {
  static constexpr const char* name = "recursive_doubling";

  template <class Ctx>
  void allreduce(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    detail::recursive_doubling_allreduce(ctx, in, out, n);
  }
  // Allreduce the whole input, keep block r.
  template <class Ctx>
  void reduce_scatter(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    const std::size_t total = n * static_cast<std::size_t>(ctx.size()), es = dtype_size(ctx.call.type);
    std::byte* acc = ctx.workspace(total * es);
    detail::recursive_doubling_allreduce(ctx, in, acc, total);
    ctx.move(out, acc + static_cast<std::size_t>(ctx.rank()) * n * es, n * es);
  }
  template <class Ctx>
  void allgather(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    detail::doubling_allgather_or_ring(ctx, in, out, n, 0);
  }

  static double cost(Collective op, std::size_t bytes, int p, const CostModel& m) {
    const double S = static_cast<double>(bytes), L = detail::lg(p);
    const double fold = detail::pow2(p) ? 0.0 : 2 * (m.alpha + S * m.beta);
    switch (op) {
      case Collective::allreduce: return L * (m.alpha + S * m.beta + S * m.gamma) + fold;
      case Collective::reduce_scatter: return L * (m.alpha + S * m.beta + S * m.gamma) + fold;
      case Collective::allgather: return L * m.alpha + detail::frac(p) * S * m.beta;
      default: return detail::default_cost(op, bytes, p, m);
    }
  }
};

static_assert(Algorithm<RecursiveDoubling>);

}  // namespace weft::comm
