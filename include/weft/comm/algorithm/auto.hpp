// Auto: picks, per call, the candidate policy whose alpha-beta cost formula
// predicts the least time for this op, size and rank count (NCCL's tuner does
// the same with its own constants). The choice depends only on values equal
// on every rank, so all ranks pick the same algorithm.
#pragma once

#include <cstddef>
#include <tuple>

#include "../algorithm.hpp"
#include "../cost_model.hpp"
#include "halving_doubling.hpp"
#include "recursive_doubling.hpp"
#include "ring.hpp"
#include "tree.hpp"

namespace weft::comm {

template <Algorithm... Candidates>
struct AutoOf {
  static_assert(sizeof...(Candidates) > 0, "comm::AutoOf needs at least one candidate algorithm");
  static constexpr const char* name = "auto";
  CostModel model{};
  std::tuple<Candidates...> candidates{};

  // Index of the cheapest candidate (first on ties).
  std::size_t choose(Collective op, std::size_t bytes, int p) const {
    std::size_t best = 0, i = 0;
    double best_cost = 0;
    ((consider(Candidates::cost(op, bytes, p, model), i++, best, best_cost)), ...);
    return best;
  }
  const char* choice(Collective op, std::size_t bytes, int p) const {
    const char* names[] = {Candidates::name...};
    return names[choose(op, bytes, p)];
  }

  template <class Ctx>
  void allreduce(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    with(ctx, Collective::allreduce, bytes(ctx, n, false), [&](auto& a) { a.allreduce(ctx, in, out, n); });
  }
  template <class Ctx>
  void reduce_scatter(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    with(ctx, Collective::reduce_scatter, bytes(ctx, n, true), [&](auto& a) { a.reduce_scatter(ctx, in, out, n); });
  }
  template <class Ctx>
  void allgather(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    with(ctx, Collective::allgather, bytes(ctx, n, true), [&](auto& a) { a.allgather(ctx, in, out, n); });
  }
  template <class Ctx>
  void broadcast(Ctx& ctx, void* buf, std::size_t n, int root) const {
    with(ctx, Collective::broadcast, bytes(ctx, n, false), [&](auto& a) { a.broadcast(ctx, buf, n, root); });
  }
  template <class Ctx>
  void reduce(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    with(ctx, Collective::reduce, bytes(ctx, n, false), [&](auto& a) { a.reduce(ctx, in, out, n, root); });
  }
  template <class Ctx>
  void gather(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    with(ctx, Collective::gather, bytes(ctx, n, true), [&](auto& a) { a.gather(ctx, in, out, n, root); });
  }
  template <class Ctx>
  void scatter(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    with(ctx, Collective::scatter, bytes(ctx, n, true), [&](auto& a) { a.scatter(ctx, in, out, n, root); });
  }
  template <class Ctx>
  void alltoall(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    with(ctx, Collective::alltoall, bytes(ctx, n, true), [&](auto& a) { a.alltoall(ctx, in, out, n); });
  }
  template <class Ctx>
  void barrier(Ctx& ctx) const {
    with(ctx, Collective::barrier, 0, [&](auto& a) { a.barrier(ctx); });
  }

  static double cost(Collective op, std::size_t bytes, int p, const CostModel& m) {
    double best = 0;
    bool first = true;
    ((best = first || Candidates::cost(op, bytes, p, m) < best ? Candidates::cost(op, bytes, p, m) : best,
      first = false),
     ...);
    return best;
  }

 private:
  static void consider(double c, std::size_t i, std::size_t& best, double& best_cost) {
    if (i == 0 || c < best_cost) {
      best = i;
      best_cost = c;
    }
  }
  template <class Ctx>
  static std::size_t bytes(Ctx& ctx, std::size_t n, bool times_p) {
    return n * dtype_size(ctx.call.type) * (times_p ? static_cast<std::size_t>(ctx.size()) : 1);
  }
  template <class Ctx, class F>
  void with(Ctx& ctx, Collective op, std::size_t b, F&& f) const {
    std::size_t k = choose(op, b, ctx.size());
    run_index(ctx, k, f, std::index_sequence_for<Candidates...>{});
  }
  template <class Ctx, class F, std::size_t... I>
  void run_index(Ctx& ctx, std::size_t k, F& f, std::index_sequence<I...>) const {
    ((k == I ? (ctx.call.algorithm = std::tuple_element_t<I, std::tuple<Candidates...>>::name,
                f(std::get<I>(candidates)), 0)
             : 0),
     ...);
  }
};

using Auto = AutoOf<Ring, Tree, RecursiveDoubling, HalvingDoubling>;

static_assert(Algorithm<Auto>);

}  // namespace weft::comm
