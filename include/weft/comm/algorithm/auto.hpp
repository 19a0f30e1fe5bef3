// Auto: picks, per call, one of its candidate policies. Where its cost model
// holds a measured decision for (op, rank count) (`weft-bench calibrate`
// writes them: see cost_model.hpp), it runs the algorithm measured fastest
// for that size; elsewhere the candidate whose alpha-beta cost formula
// predicts the least time (NCCL's tuner does the same with its own
// constants). The choice depends only on the op, the size, the rank count,
// the transport's name and the model, all equal on every rank as long as
// every rank loads the same cost file, so all ranks pick the same algorithm;
// the chosen algorithm is part of a call's fingerprint (chosen()), so ranks
// that chose differently fail naming both choices instead of hanging.
//
// Loading is explicit; constructing an Auto reads nothing:
//   Auto{}                          formulas only, CostModel{}'s constants
//   Auto{model}                     one model (constants and tables) on any transport
//   Auto::from_file("cost.txt")     the file's section named after the transport
//   Auto::from_environment()        the file WEFT_COST_MODEL names (unset: formulas only)
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>

#include "../../core/dtype.hpp"
#include "../algorithm.hpp"
#include "../context.hpp"
#include "../deadline.hpp"
#include "../transport.hpp"
#include "../tuning/cost_file.hpp"
#include "../tuning/cost_model.hpp"
#include "halving_doubling.hpp"
#include "recursive_doubling.hpp"
#include "ring.hpp"
#include "tree.hpp"

namespace weft::comm {

namespace detail {
template <class A, class T>
concept prepares_on = requires(A& a, Context<T>& ctx, Deadline dl) { a.prepare(ctx, dl); };
}  // namespace detail

template <Algorithm... Candidates>
struct AutoOf {
  static_assert(sizeof...(Candidates) > 0, "comm::AutoOf needs at least one candidate algorithm");
  static constexpr const char* name = "auto";
  // Set it to use one model whatever the transport (`a.model = load_cost_model(path, "mpi")`).
  // Unset, Auto uses the section of `file` named after the transport it runs
  // on, else CostModel{}'s built-in constants.
  std::optional<CostModel> model{};
  CostFile file{};  // empty unless loaded (from_file, from_environment, or assigned)
  std::tuple<Candidates...> candidates{};

  // An Auto that follows the cost file at `path` (weft-bench calibrate
  // writes them); throws IoError naming the file and line if it is bad.
  static AutoOf from_file(const std::string& path) {
    AutoOf a;
    a.file = CostFile::load(path);
    return a;
  }
  // An Auto that follows the file the WEFT_COST_MODEL environment variable
  // names, read now; unset or empty, the formulas only. A set variable naming
  // a bad file throws (a typo must not silently fall back to the formulas).
  static AutoOf from_environment() {
    AutoOf a;
    a.file = CostFile::from_environment();
    return a;
  }

  // Candidates that split groups (Hierarchical) do so when the Communicator is built.
  template <Transport T>
    requires(detail::prepares_on<Candidates, T> || ...)
  void prepare(Context<T>& ctx, Deadline dl) {
    std::apply([&](auto&... c) { (prepare_one(c, ctx, dl), ...); }, candidates);
  }

  // The model used on a transport of this name.
  const CostModel& model_for(std::string_view transport) const {
    if (model) return *model;
    if (const CostModel* m = file.find(transport)) return *m;
    static const CostModel built_in{};
    return built_in;
  }

  // Index of the candidate run for (op, bytes, p) on `transport`: the
  // measured decision when the model has one naming a candidate, else the
  // cheapest formula (first on ties).
  std::size_t choose(Collective op, std::size_t bytes, int p, std::string_view transport = {}) const {
    return choose_in(model_for(transport), op, bytes, p);
  }
  const char* choice(Collective op, std::size_t bytes, int p, std::string_view transport = {}) const {
    return names[choose(op, bytes, p, transport)];
  }
  // The candidate a call of `count` elements of `type` runs: what the
  // Communicator puts in the call's fingerprint.
  const char* chosen(Collective op, dtype type, std::size_t count, int p, std::string_view transport) const {
    return choice(op, bytes_of(op, type, count, p), p, transport);
  }

  // Every collective: the candidate chosen for its size (bytes_of, as the fingerprint's choice).
  template <class D, class Ctx>
  void run(D, Ctx& ctx, const Args& x) const {
    with(ctx, D::op, x.count, [&](auto& a) { run_collective<D>(a, ctx, x); });
  }

  // The chosen candidate's formula: the measured pick's where the model has
  // a decision, else the cheapest.
  static double cost(Collective op, std::size_t bytes, int p, const CostModel& m) {
    const std::size_t k = choose_in(m, op, bytes, p);
    double c = 0;
    std::size_t i = 0;
    ((c = i++ == k ? Candidates::cost(op, bytes, p, m) : c), ...);
    return c;
  }

 private:
  static constexpr const char* names[] = {Candidates::name...};

  static std::size_t choose_in(const CostModel& m, Collective op, std::size_t bytes, int p) {
    if (const Decision* d = m.decide(op, bytes, p))
      for (std::size_t i = 0; i < sizeof...(Candidates); ++i)
        if (d->algorithm == names[i]) return i;  // a name no candidate has: the formulas decide
    std::size_t best = 0, i = 0;
    double best_cost = 0;
    ((consider(Candidates::cost(op, bytes, p, m), i++, best, best_cost)), ...);
    return best;
  }
  template <class C, class Ctx>
  static void prepare_one(C& c, Ctx& ctx, Deadline dl) {
    if constexpr (requires { c.prepare(ctx, dl); }) c.prepare(ctx, dl);
  }
  static void consider(double c, std::size_t i, std::size_t& best, double& best_cost) {
    if (i == 0 || c < best_cost) {
      best = i;
      best_cost = c;
    }
  }
  // S as the calls below compute it (cost_model.hpp): the p-block buffer for
  // reduce_scatter, allgather, gather, scatter and alltoall.
  static std::size_t bytes_of(Collective op, dtype type, std::size_t n, int p) {
    if (op == Collective::barrier) return 0;
    const bool times_p = op != Collective::allreduce && op != Collective::broadcast && op != Collective::reduce;
    return n * dtype_size(type) * (times_p ? static_cast<std::size_t>(p) : 1);
  }
  template <class Ctx, class F>
  void with(Ctx& ctx, Collective op, std::size_t n, F&& f) const {
    const std::size_t k = choose(op, bytes_of(op, ctx.call.type, n, ctx.size()), ctx.size(), ctx.transport().name());
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
