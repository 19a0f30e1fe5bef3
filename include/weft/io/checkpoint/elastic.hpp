// Elastic recovery on thread ranks: run_elastic(n, min_ranks, fn) runs
// fn(transport, attempt) on n ranks (comm::run_local); when a rank fails (it
// throws, or a deadline expires: run_local then ends every other rank's waits
// with PeerFailedError), the group is torn down, the failure is reported to
// on_restart with its cause, and fn starts again on one rank fewer, the
// survivors, down to min_ranks. fn resumes by itself from the newest complete
// checkpoint (latest(root), load with the new rank count's Sharding: the
// checkpoint is resharded), so training goes on where it was saved.
//
// One failure is one lost rank: the world shrinks by one per restart. A rank
// that hangs with no deadline cannot be recovered on threads (its thread
// cannot be joined); every weft collective has a deadline. Under MPI the
// equivalent is scripts/weft-run, which reruns mpirun on one rank fewer.
#pragma once

#include <cstdio>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <utility>

#include "../../comm/error.hpp"
#include "../../comm/run_local.hpp"
#include "../../core/error.hpp"

namespace weft::io::checkpoint {

struct ElasticEvent {
  int attempt = 0;      // the attempt that failed (0: the first run)
  int ranks = 0;        // how many ranks it had
  int failed_rank = -1;  // the rank whose own error ended it (-1: none identified)
  std::string cause;    // that error's message
  int next_ranks = 0;   // ranks of the restart (0: none, the error is rethrown)
};

struct ElasticOptions {
  int max_restarts = 16;
  // Called once per failure, before restarting; default: one line on stderr.
  std::function<void(const ElasticEvent&)> on_restart{};
};

// Runs fn(comm::ThreadTransport&, int attempt) until one attempt finishes on
// every rank; returns the number of ranks that finished. Rethrows the failed
// rank's error when fewer than min_ranks would remain or after max_restarts.
template <class F>
int run_elastic(int n, int min_ranks, F&& fn, ElasticOptions o = {}) {
  if (min_ranks < 1 || n < min_ranks)
    throw_error<ValueError>("run_elastic: need 1 <= min_ranks <= n, got n = ", n, ", min_ranks = ", min_ranks);
  for (int attempt = 0;; ++attempt) {
    std::mutex mu;
    ElasticEvent ev;
    ev.attempt = attempt;
    ev.ranks = n;
    try {
      comm::run_local(n, [&](comm::ThreadTransport& t) {
        try {
          fn(t, attempt);
        } catch (const comm::PeerFailedError&) {
          throw;  // a consequence, not the cause
        } catch (const comm::BrokenError&) {
          throw;
        } catch (const std::exception& e) {
          std::lock_guard lock(mu);
          if (ev.failed_rank < 0) {
            ev.failed_rank = t.rank();
            ev.cause = e.what();
          }
          throw;
        }
      });
      return n;
    } catch (const std::exception& e) {
      if (ev.failed_rank < 0) ev.cause = e.what();
      const bool again = n - 1 >= min_ranks && attempt < o.max_restarts;
      ev.next_ranks = again ? n - 1 : 0;
      if (o.on_restart)
        o.on_restart(ev);
      else
        std::fprintf(stderr, "weft elastic: attempt %d on %d ranks: rank %d failed: %s; %s\n", ev.attempt, ev.ranks, ev.failed_rank,
                     ev.cause.c_str(), again ? ("restarting on " + std::to_string(n - 1) + " ranks from the latest checkpoint").c_str()
                                             : "not restarting");
      if (!again) throw;
      n -= 1;
    }
  }
}

}  // namespace weft::io::checkpoint
