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
//
// In-run selection (tuning/in_run.hpp), off unless asked:
//   a.in_run = {.calls_per_candidate = 2, .recheck_every = 1000};
// The first calls of each (op, size class) on the communicator time every
// candidate in the user's own run, in calls_per_candidate interleaved
// rounds (the model's pick first in each: the table is the
// starting guess, not the final word), the ranks agree on the winner from
// the slowest rank's times, and later calls run it. The state belongs to the
// communicator the policy was prepared for (a Communicator prepares its own
// copy when it is built); each call's fingerprint names the candidate the
// state machine says it runs.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>

#include "../../core/dtype.hpp"
#include "../algorithm.hpp"
#include "../context.hpp"
#include "../deadline.hpp"
#include "../error.hpp"
#include "../transport.hpp"
#include "../tuning/cost_file.hpp"
#include "../tuning/cost_model.hpp"
#include "../tuning/in_run.hpp"
#include "halving_doubling.hpp"
#include "recursive_doubling.hpp"
#include "ring.hpp"
#include "tree.hpp"

namespace weft::comm {

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
  // In-run selection (off by default: calls_per_candidate = 0).
  InRunOptions in_run{};
  // Set by prepare() when in_run is on: the state of the communicator it was prepared for.
  std::shared_ptr<InRunTuner> tuner{};
  const void* prepared_for = nullptr;

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

  // Candidates that split groups (Hierarchical) do so when the Communicator
  // is built; in-run selection starts a fresh state for this communicator.
  template <Transport T, Executor E>
  void prepare(Context<T, E>& ctx, Deadline dl) {
    std::apply([&](auto&... c) { (prepare_one(c, ctx, dl), ...); }, candidates);
    if (in_run.enabled()) {
      if (in_run.calls_per_candidate > 1000)
        throw_error<ValueError>("Auto on rank ", ctx.rank(), ": in_run.calls_per_candidate is ",
                                in_run.calls_per_candidate, "; give 1..1000 timed calls per candidate");
      tuner = std::make_shared<InRunTuner>(in_run, sizeof...(Candidates));
    } else {
      tuner.reset();
    }
    prepared_for = &ctx;
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
  // The candidate a call of `count` elements of `type` runs (in place or
  // not: collectives::is_in_place): what the Communicator puts in the call's
  // fingerprint.
  const char* chosen(Collective op, dtype type, std::size_t count, int p, std::string_view transport,
                     bool in_place) const {
    const std::size_t bytes = bytes_of(op, type, count, p);
    if (tuner && in_run.enabled())
      if (const std::ptrdiff_t w = tuner->settled(op, bytes, in_place); w >= 0) return names[w];
    const std::size_t guess = choose(op, bytes, p, transport);
    return names[tuner && in_run.enabled() ? tuner->next(op, bytes, in_place, guess) : guess];
  }
  // In-run selection's state (nullptr when off or not prepared): tuning()->find(op, bytes, in_place).
  const InRunTuner* tuning() const { return tuner.get(); }
  static constexpr std::size_t candidate_count() { return sizeof...(Candidates); }
  static const char* candidate_name(std::size_t i) { return names[i]; }

  // Every collective: the candidate chosen for its size (bytes_of, as the fingerprint's choice).
  template <class D, class Ctx>
  void run(D, Ctx& ctx, const Args& x) const {
    const bool in_place = collectives::is_in_place<D>(x.in, x.out, x.count, dtype_size(ctx.call.type), ctx.rank());
    with(ctx, D::op, x.count, in_place, [&](auto& a) { run_collective<D>(a, ctx, x); });
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
  void with(Ctx& ctx, Collective op, std::size_t n, bool in_place, F&& f) const {
    const std::size_t bytes = bytes_of(op, ctx.call.type, n, ctx.size());
    if (in_run.enabled() && tuner && prepared_for == static_cast<const void*>(&ctx))
      if (const std::ptrdiff_t w = tuner->settled(op, bytes, in_place); w >= 0) {
        run_index(ctx, static_cast<std::size_t>(w), f, std::index_sequence_for<Candidates...>{});
        return;
      }
    const std::size_t guess = choose(op, bytes, ctx.size(), ctx.transport().name());
    if (!in_run.enabled()) {
      run_index(ctx, guess, f, std::index_sequence_for<Candidates...>{});
      return;
    }
    if (!tuner || prepared_for != static_cast<const void*>(&ctx))
      throw_error<ValueError>(ctx.call.label(), " on rank ", ctx.name_of(ctx.rank()),
                              ": Auto's in-run selection was not prepared for this communicator (a Communicator "
                              "prepares its policy when it is built; a policy that wraps Auto must forward prepare())");
    const std::size_t k = tuner->next(op, bytes, in_place, guess);
    if (in_run.sync_trials && tuner->trialing(op, bytes, in_place)) InRunTuner::sync(ctx);  // a trial times one call's latency
    const auto t0 = std::chrono::steady_clock::now();
    run_index(ctx, k, f, std::index_sequence_for<Candidates...>{});
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    tuner->record(ctx, op, bytes, in_place, guess, k, s);
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
