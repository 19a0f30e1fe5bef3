// What a scheduler is: the rule that decides, from the metrics trials report,
// whether each trial goes on, stops early, or (population-based training)
// takes over another trial's weights and perturbed hyperparameters.
//
// A scheduler is a plain data structure driven by three calls, in the order
// the coordinator sees events: on_start(trial, config), on_report(trial,
// epoch, metric) -> Action, on_finish(trial). It holds no communicator and no
// clock, so a test feeds it metrics and checks its decisions exactly.
// Models: Fifo (fifo.hpp), Asha (asha.hpp), Pbt (pbt.hpp).
#pragma once

#include <concepts>
#include <cstddef>
#include <string>

#include "space.hpp"

namespace weft::tune {

// Whether a larger metric is better (accuracy) or a smaller one (loss).
enum class Mode { max, min };

inline const char* mode_name(Mode m) { return m == Mode::max ? "max" : "min"; }
inline bool better(Mode m, double a, double b) { return m == Mode::max ? a > b : a < b; }

struct Action {
  enum Kind { go_on, stop, exploit };
  Kind kind = go_on;
  // exploit: load the weights of trial `source` and continue with `config`.
  std::size_t source = 0;
  Config config;

  static Action continue_() { return {}; }
  static Action stop_() { return {stop, 0, {}}; }
};

template <class S>
concept Scheduler = requires(S& s, const S& cs, std::size_t trial, int epoch, double metric, const Config& c) {
  { cs.mode() } -> std::same_as<Mode>;
  { cs.max_epochs() } -> std::convertible_to<int>;
  { cs.describe() } -> std::convertible_to<std::string>;
  s.on_start(trial, c);
  { s.on_report(trial, epoch, metric) } -> std::same_as<Action>;
  s.on_finish(trial);
};

}  // namespace weft::tune
