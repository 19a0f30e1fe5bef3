// Fifo: run every trial to the end (max_epochs); the baseline scheduler of a
// grid or random search. Trials start in index order as groups free up.
#pragma once

#include <cstddef>
#include <string>

#include "../core/error.hpp"
#include "scheduler.hpp"

namespace weft::tune {

class Fifo {
 public:
  explicit Fifo(int max_epochs, Mode mode = Mode::max) : max_epochs_(max_epochs), mode_(mode) {
    if (max_epochs < 1) throw_error<ValueError>("tune::Fifo: max_epochs must be at least 1, got ", max_epochs);
  }
  Mode mode() const { return mode_; }
  int max_epochs() const { return max_epochs_; }
  std::string describe() const {
    return "fifo max_epochs " + std::to_string(max_epochs_) + " mode " + mode_name(mode_);
  }
  void on_start(std::size_t, const Config&) {}
  // A trial that reports past max_epochs is told to stop.
  Action on_report(std::size_t, int epoch, double) const {
    return epoch >= max_epochs_ ? Action::stop_() : Action::continue_();
  }
  void on_finish(std::size_t) {}

 private:
  int max_epochs_;
  Mode mode_;
};
static_assert(Scheduler<Fifo>);

}  // namespace weft::tune
