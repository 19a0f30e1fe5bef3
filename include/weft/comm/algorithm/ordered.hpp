// Ordered<Inner>: deterministic mode as a policy. Every reduction (allreduce,
// reduce_scatter, reduce) combines in rank order, ((x0 + x1) + x2) + ..., so
// its result is bitwise the same whatever the inner algorithm, its chunk
// size, the number of chunks or the run, for a given rank count (the
// rank-order fold a test can compute locally). Data movement is Inner's.
//
// Schedule of the reductions: each rank owns one segment of the buffer
// (Segments: p nearly equal pieces); every rank sends its piece of segment k
// to rank k, which folds the p pieces in rank order (the sends are posted at
// once, the folds happen in order as pieces arrive); allreduce then gathers
// the segments with the ring allgather, reduce with a linear gather to the
// root. Costs (p - 1) alpha more per reduce-scatter than the ring, in exchange
// for results that do not depend on the schedule.
//
//   Communicator<Ordered<Ring>, ThreadTransport> c{t};     // always ordered
//   CommOptions o; o.deterministic = true;                 // or, for any policy:
//   Communicator<Auto, ThreadTransport> d{t, Auto{}, o};   // reductions via Ordered's
#pragma once

#include <cstddef>
#include <type_traits>

#include "../algorithm.hpp"
#include "../collective.hpp"
#include "../tuning/cost_model.hpp"
#include "../detail/blocks.hpp"
#include "ring.hpp"

namespace weft::comm {

template <Algorithm Inner = Ring>
struct Ordered {
  static_assert(!requires { Inner::compresses; },
                "comm::Ordered reduces uncompressed, in rank order, so a compressed inner policy would be bypassed: "
                "use Ordered over a plain algorithm (the gather codecs, top-k, int8 and sign, already give bitwise "
                "the same result on every rank)");

  static constexpr const char* name = "ordered";
  Inner inner{};

  // One-time setup of the inner policy (Hierarchical's node and rail groups),
  // run when the Communicator is built.
  template <Transport T, Executor E>
    requires requires(Inner& a, Context<T, E>& c, Deadline d) { a.prepare(c, d); }
  void prepare(Context<T, E>& ctx, Deadline dl) {
    inner.prepare(ctx, dl);
  }

  // Runs reduction D in rank order and returns true; false (nothing done)
  // when D moves data without combining or there is a single rank, for the
  // caller to run Inner's. Static, so Communicator's deterministic option
  // routes its reductions here without holding a second policy.
  template <class D, class Ctx>
  static bool in_rank_order(D, Ctx& ctx, const Args& x) {
    const int p = ctx.size(), r = ctx.rank();
    if constexpr (!D::reduces) {
      return false;
    } else {
      if (p == 1) return false;
      const std::size_t es = dtype_size(ctx.call.type);
      if constexpr (std::is_same_v<D, collectives::Allreduce>) {
        detail::Segments seg{x.count, p};
        detail::ordered_reduce_scatter(ctx, x.in, 0, seg, detail::at(x.out, seg.off(r), es));
        detail::ring_allgatherv(ctx, x.out, seg, std::size_t{1} << 20);
      } else if constexpr (std::is_same_v<D, collectives::ReduceScatter>) {
        detail::ordered_reduce_scatter(ctx, x.in, 0, detail::Segments{x.count * static_cast<std::size_t>(p), p},
                                       x.out);
      } else {
        static_assert(std::is_same_v<D, collectives::Reduce>, "comm::Ordered: a reduction it has no schedule for");
        detail::Segments seg{x.count, p};
        // slot 1: ordered_reduce_scatter keeps an in-place contribution in slot 0
        void* dst = r == x.root ? static_cast<void*>(detail::at(x.out, seg.off(r), es))
                                : static_cast<void*>(ctx.workspace(seg.len(r) * es, 1));
        detail::ordered_reduce_scatter(ctx, x.in, 0, seg, dst);
        detail::linear_gatherv(ctx, dst, x.out, seg, x.root);
      }
      return true;
    }
  }

  template <class D, class Ctx>
  void run(D d, Ctx& ctx, const Args& x) const {
    if (!in_rank_order(d, ctx, x)) run_collective<D>(inner, ctx, x);
  }

  static double cost(Collective op, std::size_t bytes, int p, const CostModel& m) {
    const double S = static_cast<double>(bytes), f = detail::frac(p);
    const double rs = (p - 1) * m.alpha + f * S * (m.beta + m.gamma);  // every piece sent at once, folded in order
    switch (op) {
      case Collective::allreduce: return rs + (p - 1) * m.alpha + f * S * m.beta;
      case Collective::reduce_scatter: return rs;
      case Collective::reduce: return rs + (p - 1) * m.alpha + f * S * m.beta;
      default: return Inner::cost(op, bytes, p, m);
    }
  }
};

static_assert(Algorithm<Ordered<>>);

namespace detail {
template <class A>
inline constexpr bool is_ordered_v = false;
template <class I>
inline constexpr bool is_ordered_v<Ordered<I>> = true;
}  // namespace detail

}  // namespace weft::comm
