// Asha: asynchronous successive halving (Li et al., "A System for Massively
// Parallel Hyperparameter Tuning", MLSys 2020), as an early-stopping rule.
//
// Rungs sit at min_epochs * eta^k epochs, below max_epochs. When a trial
// reports at a rung, its metric joins that rung's record and the trial goes
// on only if it is among the top max(1, floor(n / eta)) of the n metrics the
// rung holds so far (itself included; ties favour the trial reporting);
// otherwise it stops. Nothing waits for a rung to fill: the decision uses what
// has arrived, so a group never idles, which is what makes successive halving
// asynchronous.
//
// Li et al.'s Algorithm 2 pauses a trial at each rung and later promotes the
// top 1/eta of the rung by resuming it from a checkpoint. This is the variant
// Ray Tune's ASHAScheduler and Li et al.'s "stopping" variant use: a trial
// never pauses, so trials need no checkpoints and a group is always busy. The
// promotion rule (top 1/eta of the rung) is the same; only early arrivals are
// judged against fewer metrics.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "scheduler.hpp"

namespace weft::tune {

struct AshaOptions {
  int min_epochs = 1;  // r: the first rung
  int eta = 3;         // reduction factor: the top 1/eta of a rung goes on
  int max_epochs = 9;  // R: a trial that reaches it is complete
  Mode mode = Mode::max;
};

class Asha {
 public:
  explicit Asha(AshaOptions o) : o_(o) {
    if (o.min_epochs < 1) throw_error<ValueError>("tune::Asha: min_epochs must be at least 1, got ", o.min_epochs);
    if (o.eta < 2) throw_error<ValueError>("tune::Asha: eta must be at least 2, got ", o.eta);
    if (o.max_epochs < o.min_epochs)
      throw_error<ValueError>("tune::Asha: max_epochs ", o.max_epochs, " is below min_epochs ", o.min_epochs);
    for (long long r = o.min_epochs; r < o.max_epochs; r *= o.eta) rungs_.push_back(static_cast<int>(r));
    recorded_.resize(rungs_.size());
  }

  Mode mode() const { return o_.mode; }
  int max_epochs() const { return o_.max_epochs; }
  const std::vector<int>& rungs() const { return rungs_; }
  std::string describe() const {
    return "asha min_epochs " + std::to_string(o_.min_epochs) + " eta " + std::to_string(o_.eta) + " max_epochs " +
           std::to_string(o_.max_epochs) + " mode " + mode_name(o_.mode);
  }
  // Metrics recorded at rung k, in arrival order.
  const std::vector<double>& recorded(std::size_t k) const { return recorded_[k]; }

  void on_start(std::size_t, const Config&) {}
  Action on_report(std::size_t, int epoch, double metric) {
    if (epoch >= o_.max_epochs) return Action::stop_();  // complete
    for (std::size_t k = 0; k < rungs_.size(); ++k) {
      if (rungs_[k] != epoch) continue;
      auto& rung = recorded_[k];
      rung.push_back(metric);
      std::size_t ahead = 0;
      for (double m : rung)
        if (better(o_.mode, m, metric)) ++ahead;
      std::size_t keep = rung.size() / static_cast<std::size_t>(o_.eta);
      if (keep < 1) keep = 1;
      return ahead < keep ? Action::continue_() : Action::stop_();
    }
    return Action::continue_();
  }
  void on_finish(std::size_t) {}

 private:
  AshaOptions o_;
  std::vector<int> rungs_;
  std::vector<std::vector<double>> recorded_;
};
static_assert(Scheduler<Asha>);

}  // namespace weft::tune
