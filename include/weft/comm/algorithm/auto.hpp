// Auto: picks, per call, one of its candidate policies. Where its cost model
// holds a measured decision for (op, rank count) (`weft-bench calibrate`
// writes them: see cost_model.hpp), it runs the algorithm measured fastest
// for that size; elsewhere the candidate whose alpha-beta cost formula
// predicts the least time (NCCL's tuner does the same with its own
// constants). The choice depends only on the op, the size, the rank count,
// the transport's name and the model, all equal on every rank as long as
// every rank loads the same cost file, so all ranks pick the same algorithm.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>
#include <tuple>
#include <utility>

#include "../algorithm.hpp"
#include "../cost_file.hpp"
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
  // Set it to use one model whatever the transport (`a.model = load_cost_model(path, "mpi")`).
  // Unset, Auto uses the section of `file` named after the transport it runs
  // on, else CostModel{}'s built-in constants.
  std::optional<CostModel> model{};
  // By default the file named by the WEFT_COST_MODEL environment variable,
  // read when the policy is constructed (empty when unset).
  CostFile file = CostFile::from_environment();
  std::tuple<Candidates...> candidates{};

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

  // Every collective: the candidate chosen for its size (collective.hpp's reported bytes).
  template <class D, class Ctx>
  void run(D, Ctx& ctx, const Args& x) const {
    const std::size_t b = collectives::reported_bytes(D::extent(x.count, ctx.size()), dtype_size(ctx.call.type));
    with(ctx, D::op, b, [&](auto& a) { run_collective<D>(a, ctx, x); });
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
  static void consider(double c, std::size_t i, std::size_t& best, double& best_cost) {
    if (i == 0 || c < best_cost) {
      best = i;
      best_cost = c;
    }
  }
  template <class Ctx, class F>
  void with(Ctx& ctx, Collective op, std::size_t b, F&& f) const {
    const std::size_t k = choose(op, b, ctx.size(), ctx.transport().name());
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
