// Hierarchical<Intra, Inter>: two-level collectives for machines of several
// nodes. allreduce = node-local reduce-scatter (Intra), allreduce of each
// shard across nodes among ranks with the same local index (Inter), node-local
// allgather (Intra); only 1/ranks_per_node of the buffer crosses the slow
// links per rank. Nodes come from the transport's node() (one machine can
// emulate several: WEFT_RANKS_PER_NODE for run_local and MPI). When nodes hold
// different numbers of ranks, or the count does not split evenly, it falls
// back to node-local reduce, leaders' allreduce, node-local broadcast.
// broadcast/reduce/barrier are two-level too; allgather, reduce_scatter,
// gather, scatter and alltoall use Inter over all ranks.
#pragma once

#include <cstddef>

#include "../algorithm.hpp"
#include "../cost_model.hpp"
#include "../detail/blocks.hpp"
#include "ring.hpp"

namespace weft::comm {

template <Algorithm Intra = Ring, Algorithm Inter = Ring>
struct Hierarchical {
  static constexpr const char* name = "hierarchical";
  Intra intra{};
  Inter inter{};

  template <class Ctx>
  void allreduce(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    auto& lv = ctx.levels();
    auto& node = *lv.node;
    auto& rail = *lv.rail;
    const int L = node.size();
    const std::size_t es = dtype_size(ctx.call.type);
    ReduceOp op = ctx.call.reduce;
    ctx.call.reduce = op == ReduceOp::avg ? ReduceOp::sum : op;  // divide once, at the end
    if (lv.uniform && n % static_cast<std::size_t>(L) == 0) {
      const std::size_t shard = n / static_cast<std::size_t>(L);
      void* mine = detail::at(out, static_cast<std::size_t>(node.rank()) * shard, es);
      run_collective<collectives::ReduceScatter>(intra, ctx.with_call(node, shard), {in, mine, shard});
      run_collective<collectives::Allreduce>(inter, ctx.with_call(rail, shard), {mine, mine, shard});
      run_collective<collectives::Allgather>(intra, ctx.with_call(node, shard), {mine, out, shard});
    } else {
      run_collective<collectives::Reduce>(intra, ctx.with_call(node, n), {in, out, n, 0});
      if (node.rank() == 0) run_collective<collectives::Allreduce>(inter, ctx.with_call(rail, n), {out, out, n});
      run_collective<collectives::Broadcast>(intra, ctx.with_call(node, n), {out, out, n, 0});
    }
    ctx.call.reduce = op;
    if (op == ReduceOp::avg) detail::divide_by(ctx.call.type, out, n, ctx.size());
  }

  template <class Ctx>
  void broadcast(Ctx& ctx, void* buf, std::size_t n, int root) const {
    auto& lv = ctx.levels();
    if (!lv.uniform) {
      run_collective<collectives::Broadcast>(inter, ctx, {buf, buf, n, root});
      return;
    }
    const int lr = lv.local_index[static_cast<std::size_t>(root)];
    if (lv.local_index[static_cast<std::size_t>(ctx.rank())] == lr)
      run_collective<collectives::Broadcast>(inter, ctx.with_call(*lv.rail, n), {buf, buf, n, rail_rank(lv, root)});
    run_collective<collectives::Broadcast>(intra, ctx.with_call(*lv.node, n), {buf, buf, n, lr});
  }

  template <class Ctx>
  void reduce(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    auto& lv = ctx.levels();
    if (!lv.uniform) {
      run_collective<collectives::Reduce>(inter, ctx, {in, out, n, root});
      return;
    }
    const int lr = lv.local_index[static_cast<std::size_t>(root)];
    ReduceOp op = ctx.call.reduce;
    ctx.call.reduce = op == ReduceOp::avg ? ReduceOp::sum : op;
    const bool on_rail = lv.local_index[static_cast<std::size_t>(ctx.rank())] == lr;
    void* acc = ctx.rank() == root ? out : ctx.workspace(n * dtype_size(ctx.call.type));
    run_collective<collectives::Reduce>(intra, ctx.with_call(*lv.node, n), {in, acc, n, lr});
    if (on_rail) run_collective<collectives::Reduce>(inter, ctx.with_call(*lv.rail, n), {acc, acc, n, rail_rank(lv, root)});
    ctx.call.reduce = op;
    if (op == ReduceOp::avg && ctx.rank() == root) detail::divide_by(ctx.call.type, out, n, ctx.size());
  }

  template <class Ctx>
  void barrier(Ctx& ctx) const {
    auto& lv = ctx.levels();
    run_collective<collectives::Barrier>(intra, ctx.with_call(*lv.node, 0), {});
    if (lv.node->rank() == 0) run_collective<collectives::Barrier>(inter, ctx.with_call(*lv.rail, 0), {});
    run_collective<collectives::Barrier>(intra, ctx.with_call(*lv.node, 0), {});
  }

  // reduce_scatter, allgather, gather, scatter, alltoall: Inter over all ranks.
  template <class D, class Ctx>
  void run(D, Ctx& ctx, const Args& x) const {
    run_collective<D>(inter, ctx, x);
  }

  // FIELD-NOTES' two-level formula with pl = m.ranks_per_node (0: one node).
  static double cost(Collective op, std::size_t bytes, int p, const CostModel& m) {
    int pl = m.ranks_per_node > 0 && m.ranks_per_node < p ? m.ranks_per_node : p;
    int pg = (p + pl - 1) / pl;
    const double S = static_cast<double>(bytes);
    CostModel local = m, global = m;
    global.alpha = m.alpha_inter;
    global.beta = m.beta_inter;
    switch (op) {
      case Collective::allreduce:
        return Intra::cost(Collective::reduce_scatter, bytes, pl, local) +
               Inter::cost(Collective::allreduce, static_cast<std::size_t>(S / pl), pg, global) +
               Intra::cost(Collective::allgather, bytes, pl, local);
      case Collective::broadcast:
      case Collective::reduce:
        return Inter::cost(op, bytes, pg, global) + Intra::cost(op, bytes, pl, local);
      case Collective::barrier:
        return 2 * Intra::cost(op, 0, pl, local) + Inter::cost(op, 0, pg, global);
      default: return Inter::cost(op, bytes, p, global);
    }
  }

 private:
  template <class Levels>
  static int rail_rank(const Levels& lv, int x) {
    int lr = lv.local_index[static_cast<std::size_t>(x)], k = 0;
    for (int y = 0; y < x; ++y) k += lv.local_index[static_cast<std::size_t>(y)] == lr;
    return k;
  }
};

static_assert(Algorithm<Hierarchical<>>);

}  // namespace weft::comm
