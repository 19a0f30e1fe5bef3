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
//
// The two levels are explicit sub-communicators (NodeGroups below), split
// from the communicator's transport once, when the Communicator is built
// (it calls prepare()), never inside a collective. The policy holds them, so
// its copy inside one Communicator serves that communicator only: a policy
// that was not prepared for the communicator running it says so.
#pragma once

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "../algorithm.hpp"
#include "../context.hpp"
#include "../deadline.hpp"
#include "../detail/blocks.hpp"
#include "../error.hpp"
#include "../transport.hpp"
#include "../tuning/cost_model.hpp"
#include "ring.hpp"

namespace weft::comm {

// The levels of a multi-node communicator: the ranks on this node, and the
// ranks with this node-local index on other nodes (a "rail"), each a
// sub-context whose errors name the communicator's ranks and whose local
// work (copies, combines, scratch) goes through the communicator's executor:
// on NcclTransport the sub-transports share its stream, so the levels' steps
// run in order on the device.
template <Transport T, Executor E = HostExecutor>
struct NodeGroups {
  std::unique_ptr<Context<T, E>> node, rail;
  bool uniform = true;           // every node holds the same number of ranks
  std::vector<int> node_of;      // node id of each rank
  std::vector<int> local_index;  // each rank's index on its node (= its rail)

  // Splits `whole`'s transport by node, then by node-local index. Collective
  // over whole's ranks; bounded by `dl`.
  static std::shared_ptr<NodeGroups> split(Context<T, E>& whole, Deadline dl) {
    auto g = std::make_shared<NodeGroups>();
    T& t = whole.transport();
    T node_t = t.split(t.node(), whole.rank(), dl);
    T rail_t = t.split(node_t.rank(), whole.rank(), dl);
    g->node = std::make_unique<Context<T, E>>(node_t, names(whole, node_t, dl), whole.executor());
    g->rail = std::make_unique<Context<T, E>>(rail_t, names(whole, rail_t, dl), whole.executor());
    g->node_of = node_ids(whole, dl);
    const auto first = g->node_of.begin();
    g->local_index.resize(g->node_of.size());
    for (std::size_t x = 0; x < g->node_of.size(); ++x)
      g->local_index[x] = static_cast<int>(std::count(first, first + static_cast<std::ptrdiff_t>(x), g->node_of[x]));
    for (std::size_t x = 0; x < g->node_of.size(); ++x)
      g->uniform &= std::count(first, g->node_of.end(), g->node_of[x]) == node_t.size();
    return g;
  }

 private:
  [[noreturn]] static void fail(Context<T, E>& whole, WaitStatus s, const char* what) {
    const std::string head = "Hierarchical on rank " + std::to_string(whole.name_of(whole.rank())) +
                             ": splitting the node and rail groups (" + what + ") ";
    if (s == WaitStatus::timed_out) throw TimeoutError(head + "timed out: " + whole.transport().failure());
    throw PeerFailedError(head + "failed: " + whole.transport().failure());
  }

  // The communicator-level rank of every member of a sub-transport.
  static std::vector<int> names(Context<T, E>& whole, T& sub, Deadline dl) {
    std::vector<int> out(static_cast<std::size_t>(sub.size()));
    int mine = whole.name_of(whole.rank());
    std::vector<typename T::Request> rq(static_cast<std::size_t>(2 * sub.size()));
    for (int r = 0; r < sub.size(); ++r) {
      if (r == sub.rank()) {
        out[static_cast<std::size_t>(r)] = mine;
        continue;
      }
      rq[static_cast<std::size_t>(r)] = sub.irecv(&out[static_cast<std::size_t>(r)], sizeof(int), r, setup_tag_names);
      rq[static_cast<std::size_t>(sub.size() + r)] = sub.isend(&mine, sizeof(int), r, setup_tag_names);
    }
    for (auto& q : rq)
      if (WaitStatus s = sub.wait(q, dl); s != WaitStatus::done) fail(whole, s, "exchanging rank names");
    return out;
  }

  // Every rank's node id.
  static std::vector<int> node_ids(Context<T, E>& whole, Deadline dl) {
    T& t = whole.transport();
    const int p = t.size(), me = t.rank(), v = t.node();
    std::vector<int> vals(static_cast<std::size_t>(p), v);
    std::vector<typename T::Request> rq(static_cast<std::size_t>(2 * p));
    for (int r = 0; r < p; ++r) {
      if (r == me) continue;
      rq[static_cast<std::size_t>(r)] = t.irecv(&vals[static_cast<std::size_t>(r)], sizeof(int), r, setup_tag_nodes);
      rq[static_cast<std::size_t>(p + r)] = t.isend(&v, sizeof(int), r, setup_tag_nodes);
    }
    for (auto& q : rq)
      if (WaitStatus s = t.wait(q, dl); s != WaitStatus::done) fail(whole, s, "exchanging node ids");
    return vals;
  }
};

template <Algorithm Intra = Ring, Algorithm Inter = Ring>
struct Hierarchical {
  static constexpr const char* name = "hierarchical";
  Intra intra{};
  Inter inter{};
  // allreduce's schedule between nodes (uniform nodes; see allreduce below):
  //   rails    every node-local rank carries its 1/L shard across nodes (L
  //            connections per node at once: the fastest when each local rank
  //            has its own link, as with one NIC per GPU)
  //   leaders  the node's first rank carries the whole buffer on one
  //            connection, chunk by chunk, while the node reduces the next
  //            chunks to it and it sends the finished ones back (Open MPI
  //            HAN's segmented pipeline): for nodes that share one link,
  //            where L flows through it fill it less than one does
  enum class Schedule { rails, leaders };
  Schedule schedule = Schedule::rails;
  std::size_t leader_chunk_bytes = std::size_t{256} << 10;
  // Set by prepare(): the NodeGroups<T, E> of the communicator it was prepared
  // for (type-erased: a policy is not tied to one transport type).
  std::shared_ptr<void> groups;
  const void* prepared_for = nullptr;

  // Splits the node and rail groups of `ctx` now (the Communicator calls it
  // when it is built). Collective.
  template <Transport T, Executor E>
  void prepare(Context<T, E>& ctx, Deadline dl) {
    if constexpr (!host_buffers_v<Context<T, E>>)
      if (schedule == Schedule::leaders) refuse_leaders(ctx, std::string("building the communicator"));
    groups = NodeGroups<T, E>::split(ctx, dl);
    prepared_for = &ctx;
  }

  // The groups prepare() split for `ctx`.
  template <Transport T, Executor E>
  NodeGroups<T, E>& levels(Context<T, E>& ctx) const {
    if (!groups || prepared_for != &ctx)
      throw_error<ValueError>(ctx.call.label(), " on rank ", ctx.name_of(ctx.rank()),
                              ": Hierarchical was not prepared for this communicator (its node and rail groups are "
                              "split when a Communicator is built from it; a policy that wraps it must forward "
                              "prepare())");
    return *static_cast<NodeGroups<T, E>*>(groups.get());
  }

  template <class Ctx>
  void allreduce(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    auto& lv = levels(ctx);
    auto& node = *lv.node;
    auto& rail = *lv.rail;
    const int L = node.size();
    const std::size_t es = dtype_size(ctx.call.type);
    ReduceOp op = ctx.call.reduce;
    ctx.call.reduce = op == ReduceOp::avg ? ReduceOp::sum : op;  // divide once, at the end
    if (lv.uniform && L > 1 && lv.rail->size() > 1 && schedule == Schedule::leaders) {
      if constexpr (!host_buffers_v<Ctx>) refuse_leaders(ctx, ctx.call.label());
      leaders_allreduce(ctx, node, rail, in, out, n);
    } else if (lv.uniform && n % static_cast<std::size_t>(L) == 0) {
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
    if (op == ReduceOp::avg) ctx.divide(out, n, ctx.size());
  }

  template <class Ctx>
  void broadcast(Ctx& ctx, void* buf, std::size_t n, int root) const {
    auto& lv = levels(ctx);
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
    auto& lv = levels(ctx);
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
    if (op == ReduceOp::avg && ctx.rank() == root) ctx.divide(out, n, ctx.size());
  }

  template <class Ctx>
  void barrier(Ctx& ctx) const {
    auto& lv = levels(ctx);
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

  // The leaders schedule's allreduce (other collectives as cost()): the leader
  // takes in (pl-1) n bytes and sends them back inside the node while n goes
  // between the leaders (Inter's allreduce over pg nodes); pipelined, the
  // slower of the two sets the time. Intra's combine cost is the gamma term.
  static double leaders_cost(Collective op, std::size_t bytes, int p, const CostModel& m) {
    if (op != Collective::allreduce) return cost(op, bytes, p, m);
    const int pl = m.ranks_per_node > 0 && m.ranks_per_node < p ? m.ranks_per_node : p;
    const int pg = (p + pl - 1) / pl;
    const double S = static_cast<double>(bytes);
    CostModel global = m;
    global.alpha = m.alpha_inter;
    global.beta = m.beta_inter;
    const double node = (pl - 1) * (2 * m.alpha + S * (2 * m.beta + m.gamma));
    return std::max(node, Inter::cost(Collective::allreduce, bytes, pg, global));
  }

 private:
  // The leaders schedule's non-leaders post every chunk before the leader
  // receives them; NCCL's send/recv, ordered on one stream, would block on
  // the first unmatched send. Same on every rank, before any message.
  template <class Ctx>
  [[noreturn]] static void refuse_leaders(Ctx& ctx, const std::string& when) {
    throw_error<ValueError>("Hierarchical on rank ", ctx.name_of(ctx.rank()), " (", ctx.transport().name(), "), ", when,
                            ": the leaders schedule posts a node's chunks ahead of the leader's receives, which "
                            "stream-ordered device send/recv (NCCL) cannot progress; use Schedule::rails "
                            "(Hierarchical<>) on a device transport");
  }

  // The leaders schedule. Chunk k (c elements) goes: every non-leader sends
  // its chunk k of `in` to the leader (node rank 0), which adds them to its
  // own in node-rank order; the leaders allreduce it with Inter (every leader
  // gets the same bits); the leader sends the result back. Pipelined: the
  // non-leaders post every chunk at once and the leader receives W chunks
  // ahead and sends results without waiting, so the node's traffic moves
  // (shared memory) while the leaders' allreduce of chunk k holds the link.
  // (Leaders exchanging whole chunks with non-blocking sends, two in flight,
  // was measured slower on the emulated cluster: 0.96-0.99 s against 0.58 s
  // for 64 MiB at 1 Gbit/s.)
  template <class Ctx, class Sub>
  void leaders_allreduce(Ctx& ctx, Sub& node, Sub& rail, const void* in, void* out, std::size_t n) const {
    const std::size_t es = dtype_size(ctx.call.type);
    const std::size_t c = std::max<std::size_t>(1, leader_chunk_bytes / es);
    const std::size_t K = (n + c - 1) / c;
    auto len = [&](std::size_t k) { return std::min(c, n - k * c); };
    auto src = [&](std::size_t k) { return detail::at(in, k * c, es); };
    auto dst = [&](std::size_t k) { return detail::at(out, k * c, es); };
    Sub& nd = ctx.with_call(node, n);
    Sub& rl = ctx.with_call(rail, n);
    const int L = nd.size();
    using Request = typename Sub::Request;
    if (nd.rank() != 0) {
      // Sends first; a chunk's result is received into `out` only after its
      // send finished (in and out may be the same buffer).
      std::vector<Request> sends(K), recvs(K);
      for (std::size_t k = 0; k < K; ++k) sends[k] = nd.isend(src(k), len(k) * es, 0);
      for (std::size_t k = 0; k < K; ++k) {
        nd.wait(sends[k]);
        recvs[k] = nd.irecv(dst(k), len(k) * es, 0);
      }
      for (auto& q : recvs) nd.wait(q);
      return;
    }
    constexpr std::size_t W = 2;  // chunks whose node inputs are in flight ahead
    const auto locals = static_cast<std::size_t>(L - 1);
    std::byte* stage = ctx.workspace(locals * W * c * es, 1);
    auto slot = [&](std::size_t k, std::size_t j) { return stage + ((k % W) * locals + j) * c * es; };
    std::vector<Request> from(locals * W), back;
    back.reserve(locals * K);
    auto post_inputs = [&](std::size_t k) {
      if (k >= K) return;
      for (std::size_t j = 0; j < locals; ++j)
        from[(k % W) * locals + j] = nd.irecv(slot(k, j), len(k) * es, static_cast<int>(j + 1));
    };
    for (std::size_t k = 0; k < W; ++k) post_inputs(k);
    for (std::size_t k = 0; k < K; ++k) {
      // The node's chunk k, added in node-rank order.
      const void* acc = src(k);
      for (std::size_t j = 0; j < locals; ++j) {
        nd.wait(from[(k % W) * locals + j]);
        nd.combine(acc, slot(k, j), dst(k), len(k));
        acc = dst(k);
      }
      post_inputs(k + W);
      run_collective<collectives::Allreduce>(inter, rl, {dst(k), dst(k), len(k)});
      for (int j = 1; j < L; ++j) back.push_back(nd.isend(dst(k), len(k) * es, j));
    }
    for (auto& q : back) nd.wait(q);
  }

  template <class Levels>
  static int rail_rank(const Levels& lv, int x) {
    int lr = lv.local_index[static_cast<std::size_t>(x)], k = 0;
    for (int y = 0; y < x; ++y) k += lv.local_index[static_cast<std::size_t>(y)] == lr;
    return k;
  }
};

static_assert(Algorithm<Hierarchical<>>);

// Hierarchical with Schedule::leaders, as a policy of its own: its own name
// in labels and fingerprints, its own cost formula, and a candidate Auto can
// weigh against the rails schedule (AutoOf<..., Hierarchical<>,
// HierarchicalLeaders<>>). Measured on the emulated cluster (2 hosts x 2
// ranks, 1 Gbit/s links, 64 MiB, two runs): 0.57 s against 0.77-0.78 s for
// rails and 0.86-0.87 s for the flat ring (README, "Clusters").
template <Algorithm Intra = Ring, Algorithm Inter = Ring>
struct HierarchicalLeaders : Hierarchical<Intra, Inter> {
  static constexpr const char* name = "hierarchical_leaders";
  HierarchicalLeaders() { this->schedule = Hierarchical<Intra, Inter>::Schedule::leaders; }
  static double cost(Collective op, std::size_t bytes, int p, const CostModel& m) {
    return Hierarchical<Intra, Inter>::leaders_cost(op, bytes, p, m);
  }
};

static_assert(Algorithm<HierarchicalLeaders<>>);

}  // namespace weft::comm
