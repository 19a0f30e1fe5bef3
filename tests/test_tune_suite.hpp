// tune::search checks written once for every transport (test_tune_threads.cpp
// runs them on thread ranks, test_tune_mpi.cpp under mpirun). The "training"
// is a known function of the configuration and the epoch, computed across the
// trial's group with an allreduce, so every recorded metric has an exact
// expected value and the scheduler's decisions can be replayed by a naive
// reference. No assertion depends on timing.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/tune/asha.hpp>
#include <weft/tune/fifo.hpp>
#include <weft/tune/pbt.hpp>
#include <weft/tune/results.hpp>
#include <weft/tune/sampler.hpp>
#include <weft/tune/search.hpp>

namespace tune_suite {

using namespace weft;
using namespace weft::tune;

inline Space space() {
  Space s;
  s.add("x", uniform(0, 1).grid(5)).add("y", uniform(0, 1).grid(3));
  return s;
}

// Exact in double: every term is a short binary fraction for grid points.
inline double quality(const Config& c, int epoch) {
  const double x = c.number("x"), y = c.number("y");
  return 1 - (x - 0.25) * (x - 0.25) - (y - 0.5) * (y - 0.5) + 0.015625 * epoch;
}

// Trains nothing: the group computes quality() by an allreduce of equal shares
// (g is a power of two in these tests, so the shares sum exactly). Configs with
// x > 0.9 diverge at epoch 2 on every rank of the group.
// With `partial`, configs x = 0.5 and x = 0.75 throw at epoch 2 on one rank of the
// group only (the first, the last), after the epoch's allreduce: the other ranks go
// on to report() and must learn of the failure there.
struct FakeTrain {
  std::atomic<int>* calls = nullptr;  // counted on group leaders
  bool partial = false;
  template <class T>
  void operator()(Trial& trial, T& group) const {
    comm::Communicator<comm::Ring, T> c{group};
    if (calls && c.rank() == 0) ++*calls;
    for (int epoch = 1; epoch <= trial.max_epochs(); ++epoch) {
      if (trial.config().number("x") > 0.9 && epoch == 2) throw_error<ValueError>("loss diverged at epoch 2");
      std::vector<double> share{quality(trial.config(), epoch) / c.size()};
      c.allreduce(share);
      if (partial && epoch == 2) {
        if (trial.config().number("x") == 0.5 && c.rank() == 0) throw_error<ValueError>("only the first rank threw");
        if (trial.config().number("x") == 0.75 && c.rank() == c.size() - 1)
          throw_error<ValueError>("only the last rank threw");
      }
      if (!trial.report(epoch, share[0])) return;
    }
  }
};

template <class T>
Results one_rank_throws(T& world, int g) {
  GridSampler grid(space());
  Fifo fifo(3);
  return search(world, grid, fifo, FakeTrain{nullptr, true}, {.ranks_per_trial = g});
}

inline void check_one_rank_throws(const Results& r) {
  REQUIRE(r.trials.size() == 15);
  for (const TrialRecord& t : r.trials) {
    CAPTURE(t.id);
    const double x = t.config.number("x");
    if (x == 0.5) {
      CHECK(t.status == Status::failed);
      CHECK(t.error == "only the first rank threw");
    } else if (x == 0.75) {
      CHECK(t.status == Status::failed);
      CHECK(t.error == "only the last rank threw");
    } else if (x > 0.9) {
      CHECK(t.status == Status::failed);
    } else {
      CHECK(t.status == Status::completed);
      CHECK(t.epochs() == 3);
    }
  }
}

// Every rank returns the same results.
inline std::string fingerprint(const Results& r) { return r.to_json(); }

template <class T>
Results fifo_grid(T& world, int g, const std::string& path = {}, std::atomic<int>* calls = nullptr) {
  GridSampler grid(space());
  Fifo fifo(3);
  return search(world, grid, fifo, FakeTrain{calls}, {.ranks_per_trial = g, .results = path});
}

inline void check_fifo_grid(const Results& r) {
  GridSampler grid(space());
  REQUIRE(r.trials.size() == grid.size());
  // Naive enumeration of the grid: x in {0, .25, .5, .75, 1}, y in {0, .5, 1}, y fastest.
  std::size_t id = 0;
  double best = -1e9;
  std::size_t best_id = 0;
  for (double x : {0.0, 0.25, 0.5, 0.75, 1.0})
    for (double y : {0.0, 0.5, 1.0}) {
      const TrialRecord& t = r.trials[id];
      CAPTURE(id);
      CHECK(t.id == id);
      CHECK(t.config.number("x") == x);
      CHECK(t.config.number("y") == y);
      if (x > 0.9) {
        CHECK(t.status == Status::failed);
        CHECK(t.error == "loss diverged at epoch 2");
        CHECK(t.epochs() == 1);
      } else {
        CHECK(t.status == Status::completed);
        REQUIRE(t.reports.size() == 3);
        for (int e = 1; e <= 3; ++e) CHECK(t.reports[static_cast<std::size_t>(e - 1)].metric == quality(t.config, e));
        if (quality(t.config, 3) > best) best = quality(t.config, 3), best_id = id;
      }
      ++id;
    }
  REQUIRE(r.best() != nullptr);
  CHECK(r.best()->id == best_id);
  CHECK(r.count(Status::failed) == 3);
}

// ASHA with the reports replayed, in the order the coordinator received them,
// through a naive rung rule: the recorded statuses must be what it decides.
inline Asha asha() { return Asha({.min_epochs = 1, .eta = 2, .max_epochs = 8, .mode = Mode::max}); }

template <class T>
Results asha_sobol(T& world, int g, const std::string& path = {}, std::atomic<int>* calls = nullptr) {
  SobolSampler smp(space(), 16);
  Asha a = asha();
  return search(world, smp, a, FakeTrain{calls}, {.ranks_per_trial = g, .results = path});
}

inline void check_asha(const Results& r) {
  struct Ev {
    double t;
    std::size_t id;
    int epoch;
    double metric;
  };
  std::vector<Ev> evs;
  for (const TrialRecord& t : r.trials)
    for (const Report& rep : t.reports) evs.push_back({rep.seconds, t.id, rep.epoch, rep.metric});
  std::stable_sort(evs.begin(), evs.end(), [](const Ev& a, const Ev& b) { return a.t < b.t; });
  std::vector<std::vector<double>> rungs(3);  // epochs 1, 2, 4
  std::vector<int> stop_at(r.trials.size(), 0);
  for (const Ev& e : evs) {
    const int k = e.epoch == 1 ? 0 : e.epoch == 2 ? 1 : e.epoch == 4 ? 2 : -1;
    if (k < 0) continue;
    auto& v = rungs[static_cast<std::size_t>(k)];
    v.push_back(e.metric);
    std::vector<double> s = v;
    std::sort(s.rbegin(), s.rend());
    const double cut = s[std::max<std::size_t>(1, v.size() / 2) - 1];
    if (e.metric < cut) stop_at[e.id] = e.epoch;
  }
  REQUIRE(r.trials.size() == 16);
  for (const TrialRecord& t : r.trials) {
    CAPTURE(t.id);
    if (stop_at[t.id]) {
      CHECK(t.status == Status::stopped);
      CHECK(t.epochs() == stop_at[t.id]);
    } else if (t.config.number("x") > 0.9) {
      CHECK(t.status == Status::failed);  // diverged at epoch 2, after rung 1 let it go on
    } else {
      CHECK(t.status == Status::completed);
      CHECK(t.epochs() == 8);
    }
    for (const Report& rep : t.reports) CHECK(rep.metric == quality(t.config, rep.epoch));
  }
  CHECK(r.total_epochs() < 16 * 8);
}

// PBT: each trial reports [trial id, epoch] as its weights; an exploiting
// trial must receive its source's last reported weights, else it throws (and
// shows up as failed).
struct PbtTrain {
  std::atomic<int>* exploits = nullptr;
  template <class T>
  void operator()(Trial& trial, T& group) const {
    comm::Communicator<comm::Ring, T> c{group};
    double bias = 0;
    for (int epoch = 1; epoch <= trial.max_epochs(); ++epoch) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // lets the population overlap (not asserted)
      const float w[2] = {static_cast<float>(trial.id()), static_cast<float>(epoch)};
      if (!trial.report(epoch, quality(trial.config(), epoch) + bias, w)) return;
      if (trial.exploited()) {
        if (exploits) ++*exploits;
        const auto& got = trial.weights();
        if (got.size() != 2 || got[0] != static_cast<float>(trial.exploited_from()))
          throw_error<ValueError>("exploit: expected the weights of trial ", trial.exploited_from());
        bias += 0.5;  // the copied weights are better
      }
    }
  }
};

template <class T>
Results pbt(T& world, std::atomic<int>* exploits) {
  RandomSampler smp(space(), static_cast<std::size_t>(world.size()), 11);
  Pbt p(space(), {.interval = 1, .quantile = 0.25, .resample_probability = 0.25, .max_epochs = 6, .seed = 2});
  return search(world, smp, p, PbtTrain{exploits}, {.ranks_per_trial = 1});
}

inline void check_pbt(const Results& r, std::size_t n) {
  REQUIRE(r.trials.size() == n);
  for (const TrialRecord& t : r.trials) {
    CAPTURE(t.error);
    CHECK(t.status == Status::completed);
    CHECK(t.epochs() == 6);
  }
}

// Marks the trials from `from` on as interrupted ("running") in a results file.
inline void interrupt(const std::string& path, std::size_t from) {
  Results r = Results::read(path + ".json");
  for (TrialRecord& t : r.trials)
    if (t.id >= from) {
      t.status = Status::running;
      t.reports.clear();
    }
  r.write(path);
}

}  // namespace tune_suite
