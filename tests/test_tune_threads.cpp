// tune::search on thread ranks (run_local): the checks of test_tune_suite.hpp
// with 1, 2 and 4 ranks and groups of 1, 2 and 4, resuming, and the errors.
#include <doctest/doctest.h>

#include <weft/comm/run_local.hpp>

#include "test_tune_suite.hpp"

using namespace tune_suite;

namespace {
// Runs f(transport) on n thread ranks; every rank's Results.
template <class F>
std::vector<Results> on_ranks(int n, F f) {
  std::vector<Results> out(static_cast<std::size_t>(n));
  comm::run_local(n, [&](comm::ThreadTransport& t) { out[static_cast<std::size_t>(t.rank())] = f(t); });
  return out;
}
void same_on_every_rank(const std::vector<Results>& rs) {
  for (const Results& r : rs) CHECK(fingerprint(r) == fingerprint(rs[0]));
}
std::string temp_base(const char* name) {
  return (std::filesystem::temp_directory_path() / (std::string("weft_tune_") + name + "_" + std::to_string(::getpid())))
      .string();
}
}  // namespace

TEST_CASE("threads: grid + FIFO on W ranks in groups of g; failed trials recorded, the search goes on") {
  for (auto wg : {std::pair{1, 1}, {2, 1}, {2, 2}, {4, 2}, {4, 1}, {4, 4}}) {
    const int w = wg.first, g = wg.second;
    CAPTURE(w);
    CAPTURE(g);
    auto rs = on_ranks(w, [g](auto& t) { return fifo_grid(t, g); });
    same_on_every_rank(rs);
    check_fifo_grid(rs[0]);
    // Every group took trials when there was more than one.
    if (w / g > 1) {
      std::set<int> groups;
      for (const TrialRecord& t : rs[0].trials) groups.insert(t.group);
      CHECK(groups.size() == static_cast<std::size_t>(w / g));
    }
  }
}

TEST_CASE("threads: one rank of a group throws: the trial fails with its message, the others unwind") {
  for (auto wg : {std::pair{2, 2}, {4, 2}, {4, 4}, {2, 1}}) {
    const int w = wg.first, g = wg.second;
    CAPTURE(w);
    CAPTURE(g);
    auto rs = on_ranks(w, [g](auto& t) { return one_rank_throws(t, g); });
    same_on_every_rank(rs);
    check_one_rank_throws(rs[0]);
  }
}

TEST_CASE("threads: ASHA stops what a naive rung rule replayed in arrival order stops") {
  for (auto wg : {std::pair{1, 1}, {2, 2}, {4, 2}, {4, 1}}) {
    const int w = wg.first, g = wg.second;
    CAPTURE(w);
    CAPTURE(g);
    auto rs = on_ranks(w, [g](auto& t) { return asha_sobol(t, g); });
    same_on_every_rank(rs);
    check_asha(rs[0]);
  }
}

TEST_CASE("threads: PBT hands an exploiting trial its source's weights and new hyperparameters") {
  std::atomic<int> exploits{0};
  auto rs = on_ranks(4, [&](auto& t) { return pbt(t, &exploits); });
  same_on_every_rank(rs);
  check_pbt(rs[0], 4);
  WARN(exploits.load() > 0);  // depends on how the trials overlapped in time
}

TEST_CASE("threads: a search resumes from its results file; finished trials are not rerun") {
  const std::string base = temp_base("resume");
  std::atomic<int> calls{0};
  auto first = on_ranks(4, [&](auto& t) { return fifo_grid(t, 2, base, &calls); });
  CHECK(calls.load() == 15);
  CHECK(std::filesystem::exists(base + ".csv"));
  interrupt(base, 9);  // trials 9..14 were running when the search stopped
  calls = 0;
  auto second = on_ranks(4, [&](auto& t) { return fifo_grid(t, 2, base, &calls); });
  CHECK(calls.load() == 6);
  check_fifo_grid(second[0]);
  for (std::size_t i = 0; i < 9; ++i) CHECK(second[0].trials[i].end_s == first[0].trials[i].end_s);
  calls = 0;
  auto third = on_ranks(2, [&](auto& t) { return fifo_grid(t, 1, base, &calls); });
  CHECK(calls.load() == 0);  // nothing left to run
  CHECK(fingerprint(third[0]) == fingerprint(second[0]));

  // The same file for another search is refused on every rank, with a sentence.
  std::atomic<int> refused{0};
  comm::run_local(2, [&](comm::ThreadTransport& t) {
    try {
      (void)asha_sobol(t, 1);  // no results path: fine
      SobolSampler smp(space(), 4);
      Fifo f(3);
      (void)search(t, smp, f, FakeTrain{}, {.results = base});
    } catch (const ValueError& e) {
      if (std::string(e.what()).find("is from another search") != std::string::npos) ++refused;
    }
  });
  CHECK(refused.load() == 2);
  std::filesystem::remove(base + ".json");
  std::filesystem::remove(base + ".csv");
}

TEST_CASE("threads: a resumed ASHA search decides as if it had never stopped") {
  // One group runs the trials in index order, so the kept trials' reports, fed to the
  // scheduler again in id order, rebuild exactly the rungs the first run had.
  const std::string base = temp_base("resume_asha");
  auto whole = on_ranks(1, [](auto& t) { return asha_sobol(t, 1); });
  (void)on_ranks(1, [&](auto& t) { return asha_sobol(t, 1, base); });
  interrupt(base, 7);
  std::atomic<int> calls{0};
  auto resumed = on_ranks(2, [&](auto& t) { return asha_sobol(t, 2, base, &calls); });
  CHECK(calls.load() == 9);
  REQUIRE(resumed[0].trials.size() == whole[0].trials.size());
  for (std::size_t i = 0; i < whole[0].trials.size(); ++i) {
    CAPTURE(i);
    CHECK(resumed[0].trials[i].status == whole[0].trials[i].status);
    CHECK(resumed[0].trials[i].epochs() == whole[0].trials[i].epochs());
  }
  std::filesystem::remove(base + ".json");
  std::filesystem::remove(base + ".csv");
}

TEST_CASE("threads: a results path that cannot be written fails at the start, on every rank") {
  std::atomic<int> said{0}, calls{0};
  comm::run_local(2, [&](comm::ThreadTransport& t) {
    try {
      (void)fifo_grid(t, 1, "/nonexistent-dir/results", &calls);
    } catch (const ValueError& e) {
      if (std::string(e.what()) ==
          "/nonexistent-dir/results.json.tmp: cannot write the results file (does its directory exist?)")
        ++said;
    }
  });
  CHECK(said.load() == 2);
  CHECK(calls.load() == 0);
}

TEST_CASE("threads: g must divide W, said as a sentence on every rank") {
  std::atomic<int> said{0};
  comm::run_local(4, [&](comm::ThreadTransport& t) {
    try {
      (void)fifo_grid(t, 3);
    } catch (const ValueError& e) {
      if (std::string(e.what()) ==
          "tune::search: trials of 3 ranks do not divide the world of 4 ranks evenly; choose ranks_per_trial among "
          "the divisors of 4")
        ++said;
    }
  });
  CHECK(said.load() == 4);
}
