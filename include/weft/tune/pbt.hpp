// Pbt: population-based training (Jaderberg et al., "Population Based
// Training of Neural Networks", 2017), truncation selection.
//
// Every `interval` epochs a trial that reports is ranked against the latest
// metric of every trial that has reported (the population). If it is in the
// bottom `quantile` (and not also in the top one), it exploits: it takes the
// weights of a trial drawn uniformly from the top `quantile` and that trial's
// hyperparameters, explored. Exploring visits the parameters in space order
// and, for each, with probability `resample_probability` draws a fresh value
// from the space, else perturbs: numbers are multiplied by 0.8 or 1.2 (one
// coin each) and clamped to the bounds (integers rounded, and moved by one
// when rounding undoes the change); a choice moves to its lower or upper
// neighbour. Quantile sets hold max(1, floor(n * quantile)) trials of the n
// ranked best first, ties broken by lower trial index.
//
// Under tune::search the population is the trials running at once (one per
// group); on_finish() removes a trial from it.
//
// Draws come from one nn::Rng(seed) in a fixed order (source index, then per
// parameter: resample coin, then the value or the 0.8/1.2 coin), so the same
// reports in the same order give the same decisions on every platform.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../nn/rng.hpp"
#include "scheduler.hpp"
#include "space.hpp"

namespace weft::tune {

struct PbtOptions {
  int interval = 2;                  // epochs between exploit/explore decisions
  double quantile = 0.25;            // top and bottom fraction of the population
  double resample_probability = 0.25;
  int max_epochs = 10;
  Mode mode = Mode::max;
  std::uint64_t seed = 0;
};

class Pbt {
 public:
  Pbt(Space space, PbtOptions o) : space_(std::move(space)), o_(o), rng_(o.seed) {
    if (o.interval < 1) throw_error<ValueError>("tune::Pbt: interval must be at least 1 epoch, got ", o.interval);
    if (!(o.quantile > 0 && o.quantile <= 0.5))
      throw_error<ValueError>("tune::Pbt: quantile must be in (0, 0.5], got ", o.quantile);
    if (!(o.resample_probability >= 0 && o.resample_probability <= 1))
      throw_error<ValueError>("tune::Pbt: resample_probability must be in [0, 1], got ", o.resample_probability);
    if (o.max_epochs < 1) throw_error<ValueError>("tune::Pbt: max_epochs must be at least 1, got ", o.max_epochs);
    if (space_.empty()) throw_error<ValueError>("tune::Pbt: the search space has no hyperparameters");
  }

  Mode mode() const { return o_.mode; }
  int max_epochs() const { return o_.max_epochs; }
  std::string describe() const {
    return "pbt interval " + std::to_string(o_.interval) + " quantile " + detail::format_number(o_.quantile) +
           " resample " + detail::format_number(o_.resample_probability) + " max_epochs " +
           std::to_string(o_.max_epochs) + " seed " + std::to_string(o_.seed) + " mode " + mode_name(o_.mode);
  }
  const Config& config(std::size_t trial) const { return state_.at(trial).config; }

  void on_start(std::size_t trial, const Config& c) { state_[trial] = State{c, false, 0.0}; }

  Action on_report(std::size_t trial, int epoch, double metric) {
    State& me = state_.at(trial);
    me.reported = true;
    me.latest = metric;
    if (epoch >= o_.max_epochs) return Action::stop_();
    if (epoch % o_.interval != 0) return Action::continue_();
    std::vector<std::size_t> ranked;
    for (auto& [t, s] : state_)
      if (s.reported) ranked.push_back(t);
    if (ranked.size() < 2) return Action::continue_();
    std::stable_sort(ranked.begin(), ranked.end(), [&](std::size_t a, std::size_t b) {
      return better(o_.mode, state_[a].latest, state_[b].latest);
    });  // map order: ties keep lower trial index first
    std::size_t q = static_cast<std::size_t>(std::floor(static_cast<double>(ranked.size()) * o_.quantile));
    if (q < 1) q = 1;
    const auto pos = static_cast<std::size_t>(std::find(ranked.begin(), ranked.end(), trial) - ranked.begin());
    if (pos < q || pos < ranked.size() - q) return Action::continue_();
    const std::size_t source = ranked[static_cast<std::size_t>(rng_.below(q))];
    Action a{Action::exploit, source, explore(state_[source].config)};
    me.config = a.config;
    me.latest = state_[source].latest;  // it now holds the source's weights
    return a;
  }
  void on_finish(std::size_t trial) { state_.erase(trial); }

  // The explore step alone (consumes draws from this scheduler's generator).
  Config explore(const Config& from) {
    Config c;
    for (auto& [name, p] : space_.params()) {
      const Value& v = from.get(name);
      if (rng_.uniform_double() < o_.resample_probability) {
        c.set(name, p.at(rng_.uniform_double()));
        continue;
      }
      const bool up = rng_.below(2) == 1;  // 0: x0.8, 1: x1.2
      c.set(name, perturb(p, v, up));
    }
    return c;
  }

  static Value perturb(const Param& p, const Value& v, bool up) {
    if (p.kind == Kind::choice) {
      std::size_t i = 0;
      while (i < p.choices.size() && p.choices[i] != v) ++i;
      if (i == p.choices.size()) return v;  // not one of the choices: keep it
      if (up) return p.choices[std::min(i + 1, p.choices.size() - 1)];
      return p.choices[i == 0 ? 0 : i - 1];
    }
    const double x = std::get<double>(v);
    double y = x * (up ? 1.2 : 0.8);
    if (p.is_integer()) {
      y = std::round(y);
      if (y == x) y = up ? x + 1 : x - 1;
    }
    return std::clamp(y, p.lo, p.hi);
  }

 private:
  struct State {
    Config config;
    bool reported = false;
    double latest = 0.0;
  };
  Space space_;
  PbtOptions o_;
  nn::Rng rng_;
  std::map<std::size_t, State> state_;
};
static_assert(Scheduler<Pbt>);

}  // namespace weft::tune
