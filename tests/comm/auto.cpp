// Auto and cost-model files: a file with measured decisions reads back as
// written, malformed files are refused naming file:line and what was
// expected, Auto follows a table exactly at its range boundaries, falls back
// to the formulas where the table has no entry, and every rank of a run
// picks the same algorithm from the file WEFT_COST_MODEL names (read only
// when asked: Auto::from_environment), ranks whose Auto chose differently
// fail naming both choices. No timings
// are asserted: the tables here are written by hand, and calibrate()'s table
// is checked for its shape (ranges that cover every size, candidates' names,
// the same on every rank), not for which algorithm won.
#include <doctest/doctest.h>

#include <weft/comm/algorithm/auto.hpp>
#include <weft/comm/algorithm/ordered.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/tuning/calibrate.hpp>
#include <weft/comm/tuning/cost_file.hpp>
#include <weft/comm/run_local.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

using namespace weft::comm;

namespace {

constexpr std::size_t inf = std::numeric_limits<std::size_t>::max();

// A file in the temporary directory, removed when the test ends.
struct TempFile {
  std::string path;
  explicit TempFile(const std::string& name, const std::string& text = {})
      : path((std::filesystem::temp_directory_path() /
              ("weft_test_" + std::to_string(::getpid()) + "_" + name)).string()) {
    if (!text.empty()) std::ofstream(path) << text;
  }
  ~TempFile() { std::filesystem::remove(path); }
};

// allreduce at 2 ranks: tree up to 1000 B, ring to 5000 B, halving-doubling beyond.
CostModel with_table() {
  CostModel m = CostModel::threads();
  m.decisions = {{Collective::allreduce, 2, 0, 1000, "tree", 1.2, "ring"},
                 {Collective::allreduce, 2, 1001, 5000, "ring", 1.05, "tree"},
                 {Collective::allreduce, 2, 5001, inf, "halving_doubling", 1.3, "ring"}};
  return m;
}

std::string load_error(const std::string& text) {
  TempFile f("bad.txt", text);
  try {
    CostFile::load(f.path);
  } catch (const weft::IoError& e) {
    std::string msg = e.what();
    CHECK_MESSAGE(msg.find(f.path) != std::string::npos, msg);
    return msg.substr(msg.find(f.path) + f.path.size());  // ":line: what was expected"
  }
  FAIL("no error for:\n" << text);
  return {};
}

}  // namespace

TEST_CASE("a cost file with decision tables reads back as written") {
  CostFile f;
  f.sections["threads"] = with_table();
  f.sections["threads"].decisions.push_back({Collective::reduce_scatter, 4, 0, inf, "ring", 2.5, "tree"});
  f.sections["mpi"] = CostModel::mpi();
  f.sections["mpi"].alpha = 4.25e-7;
  TempFile tmp("roundtrip.txt");
  f.save(tmp.path);
  const CostFile g = CostFile::load(tmp.path);
  REQUIRE(g.sections.size() == 2);
  const CostModel* t = g.find("threads");
  const CostModel* m = g.find("mpi");
  REQUIRE(t);
  REQUIRE(m);
  CHECK(g.find("nccl") == nullptr);
  CHECK(m->alpha == doctest::Approx(4.25e-7));
  CHECK(m->decisions.empty());
  CHECK(t->beta == doctest::Approx(CostModel::threads().beta));
  REQUIRE(t->decisions.size() == 4);
  for (const Decision& want : f.sections["threads"].decisions) {
    bool found = false;
    for (const Decision& d : t->decisions)
      if (d.op == want.op && d.ranks == want.ranks && d.min_bytes == want.min_bytes) {
        found = true;
        CHECK(d.max_bytes == want.max_bytes);
        CHECK(d.algorithm == want.algorithm);
        CHECK(d.margin == doctest::Approx(want.margin));
        CHECK(d.runner_up == want.runner_up);
      }
    CHECK_MESSAGE(found, want.algorithm);
  }
  CHECK(load_cost_model(tmp.path, "mpi").alpha == doctest::Approx(4.25e-7));
  CHECK_THROWS_WITH_AS(load_cost_model(tmp.path, "nccl"), doctest::Contains("no [nccl] section (the file has: mpi, threads)"),
                       weft::IoError);
}

TEST_CASE("a cost file from before decision tables still reads") {
  TempFile f("old.txt",
             "# weft cost model (weft-bench calibrate)\n[threads]\nalpha 3.1e-07\nbeta 9.4e-11\ngamma 1.2e-10\n"
             "alpha_inter 5e-06\nbeta_inter 8.3e-10\nranks_per_node 0\n[mpi]\nalpha 2e-06\n");
  const CostFile c = CostFile::load(f.path);
  REQUIRE(c.find("threads"));
  CHECK(c.find("threads")->alpha == doctest::Approx(3.1e-7));
  CHECK(c.find("threads")->decisions.empty());
  CHECK(c.find("mpi")->alpha == doctest::Approx(2e-6));
  CHECK(c.find("mpi")->beta == doctest::Approx(CostModel{}.beta));  // unset keys keep the defaults
}

TEST_CASE("malformed cost files name the file, the line and what was expected") {
  CHECK(load_error("alpha 1e-6\n").find(":1: expected a '[transport]' section header") == 0);
  CHECK(load_error("[threads]\nalpha fast\n").find(":2: expected 'key value' with one number") == 0);
  CHECK(load_error("[threads]\nalpha 1e-6 2e-6\n").find(":2: expected 'key value'") == 0);
  CHECK(load_error("[threads]\n\n# comment\nspeed 3\n").find(":4: unknown key 'speed'") == 0);
  CHECK(load_error("[threads\n").find(":1: expected '[transport]'") == 0);
  CHECK(load_error("[threads]\ndecide allreduce 2 0 inf ring 1.1\n").find(":2: expected 'decide OP RANKS") == 0);
  CHECK(load_error("[threads]\ndecide allsum 2 0 inf ring 1.1 tree\n").find(":2: unknown collective 'allsum'") == 0);
  CHECK(load_error("[threads]\ndecide allreduce 0 0 inf ring 1.1 tree\n").find(":2: expected a rank count") == 0);
  CHECK(load_error("[threads]\ndecide allreduce 2 0 -5 ring 1.1 tree\n").find(":2: expected TO_BYTES") == 0);
  CHECK(load_error("[threads]\ndecide allreduce 2 9 8 ring 1.1 tree\n").find(":2: FROM_BYTES 9 is larger") == 0);
  CHECK(load_error("[threads]\ndecide allreduce 2 0 8 ring fast tree\n").find(":2: expected MARGIN") == 0);
  CHECK(load_error("[threads]\ndecide allreduce 2 0 100 ring 1.1 tree\ndecide allreduce 2 50 inf tree 1.1 ring\n")
            .find(":3: range 50..inf of allreduce at 2 ranks overlaps line 2") == 0);
  CHECK_THROWS_WITH_AS(CostFile::load("/nonexistent/weft-cost.txt"),
                       doctest::Contains("cannot read cost-model file '/nonexistent/weft-cost.txt'"), weft::IoError);
}

TEST_CASE("Auto follows the measured table exactly at its boundaries") {
  Auto a;
  a.model = with_table();
  const auto pick = [&](std::size_t bytes) { return std::string(a.choice(Collective::allreduce, bytes, 2)); };
  CHECK(pick(0) == "tree");
  CHECK(pick(1000) == "tree");
  CHECK(pick(1001) == "ring");
  CHECK(pick(5000) == "ring");
  CHECK(pick(5001) == "halving_doubling");
  CHECK(pick(inf) == "halving_doubling");
  // the table, not the formulas: the formulas never pick tree for 1000 B at p = 2
  Auto formulas;
  formulas.model = CostModel::threads();
  CHECK(std::string(formulas.choice(Collective::allreduce, 1000, 2)) != "tree");
  // predicted cost is the chosen candidate's formula
  CHECK(Auto::cost(Collective::allreduce, 1000, 2, *a.model) == Tree::cost(Collective::allreduce, 1000, 2, *a.model));
}

TEST_CASE("sizes outside a table's ranges take the nearest range") {
  Auto a;
  a.model = CostModel::threads();
  a.model->decisions = {{Collective::allreduce, 2, 100, 200, "tree", 1.1, "ring"},
                        {Collective::allreduce, 2, 300, 400, "ring", 1.1, "tree"}};
  CHECK(std::string(a.choice(Collective::allreduce, 8, 2)) == "tree");
  CHECK(std::string(a.choice(Collective::allreduce, 250, 2)) == "tree");  // the highest range below
  CHECK(std::string(a.choice(Collective::allreduce, 1 << 20, 2)) == "ring");
}

TEST_CASE("Auto uses the formulas where the table has no entry") {
  Auto table, formulas;
  table.model = with_table();
  formulas.model = CostModel::threads();
  for (std::size_t bytes : {std::size_t{8}, std::size_t{1000}, std::size_t{1} << 20, std::size_t{64} << 20}) {
    CAPTURE(bytes);
    for (int p : {3, 4, 8})  // rank counts the table does not have
      CHECK(std::string(table.choice(Collective::allreduce, bytes, p)) == formulas.choice(Collective::allreduce, bytes, p));
    // ops the table does not have
    CHECK(std::string(table.choice(Collective::allgather, bytes, 2)) == formulas.choice(Collective::allgather, bytes, 2));
  }
  // a decision naming an algorithm that is not a candidate: the formulas decide among the candidates
  AutoOf<Ring, RecursiveDoubling> two;
  two.model = with_table();
  AutoOf<Ring, RecursiveDoubling> two_formulas;
  two_formulas.model = CostModel::threads();
  CHECK(std::string(two.choice(Collective::allreduce, 1000, 2)) == two_formulas.choice(Collective::allreduce, 1000, 2));
  CHECK(std::string(two.choice(Collective::allreduce, 3000, 2)) == "ring");  // ring is a candidate: the table decides
}

TEST_CASE("every rank picks the same algorithm from the file WEFT_COST_MODEL names") {
  // [threads] and [mpi] disagree, so following [mpi] on threads would show.
  TempFile f("env.txt",
             "[threads]\nalpha 3e-7\n"
             "decide allreduce 4 0 64 tree 1.1 ring\n"
             "decide allreduce 4 65 4096 recursive_doubling 1.1 ring\n"
             "decide allreduce 4 4097 inf ring 1.1 halving_doubling\n"
             "[mpi]\nalpha 2e-6\ndecide allreduce 4 0 inf halving_doubling 1.1 ring\n");
  REQUIRE(::setenv("WEFT_COST_MODEL", f.path.c_str(), 1) == 0);
  const std::vector<std::size_t> counts{1, 16, 17, 1024, 1025, 50000};  // f32: 4 .. 200000 B
  std::vector<std::vector<std::string>> picks(4);
  run_local(4, [&](ThreadTransport& t) {
    Communicator<Auto, ThreadTransport> c(t, Auto::from_environment(), CommOptions{.timeout = std::chrono::seconds(20)});
    auto& mine = picks[static_cast<std::size_t>(t.rank())];
    for (std::size_t n : counts) {
      mine.push_back(c.algorithm().choice(Collective::allreduce, n * sizeof(float), t.size(), t.name()));
      std::vector<float> in(n, static_cast<float>(t.rank() + 1)), out(n, -1.0f);
      c.allreduce(in.data(), out.data(), n);  // ranks running different schedules would not meet
      std::size_t wrong = 0;
      for (float v : out) wrong += v != 10.0f;
      CHECK(wrong == 0);
    }
  });
  // constructing an Auto reads nothing, even with the variable set: loading is explicit
  CHECK(Auto{}.file.sections.empty());
  ::unsetenv("WEFT_COST_MODEL");
  const std::vector<std::string> want{"tree", "tree", "recursive_doubling", "recursive_doubling", "ring", "ring"};
  for (int r = 0; r < 4; ++r) CHECK(picks[static_cast<std::size_t>(r)] == want);
  // outside run_local, with the variable unset, a default Auto has no table
  CHECK(Auto{}.file.sections.empty());
  CHECK(Auto::from_environment().file.sections.empty());
}

TEST_CASE("an explicit model wins over WEFT_COST_MODEL; a bad WEFT_COST_MODEL is an error") {
  TempFile f("env2.txt", "[threads]\ndecide allreduce 2 0 inf tree 1.1 ring\n");
  REQUIRE(::setenv("WEFT_COST_MODEL", f.path.c_str(), 1) == 0);
  Auto a = Auto::from_environment();
  CHECK(std::string(a.choice(Collective::allreduce, 1 << 20, 2, "threads")) == "tree");
  CHECK(std::string(a.choice(Collective::allreduce, 1 << 20, 2, "mpi")) ==
        Auto{.model = CostModel{}}.choice(Collective::allreduce, 1 << 20, 2));  // no [mpi]: built-in constants
  a.model = with_table();
  CHECK(std::string(a.choice(Collective::allreduce, 1 << 20, 2, "threads")) == "halving_doubling");
  REQUIRE(::setenv("WEFT_COST_MODEL", "/nonexistent/weft-cost.txt", 1) == 0);
  CHECK_THROWS_WITH_AS(Auto::from_environment(), doctest::Contains("/nonexistent/weft-cost.txt"), weft::IoError);
  CHECK_NOTHROW(Auto{});  // no hidden I/O: the bad variable is only read when asked
  ::unsetenv("WEFT_COST_MODEL");
}

TEST_CASE("Auto::from_file follows the file's section for the transport; Auto{model} one model everywhere") {
  TempFile f("from_file.txt",
             "[threads]\ndecide allreduce 2 0 inf tree 1.1 ring\n[mpi]\ndecide allreduce 2 0 inf ring 1.1 tree\n");
  const Auto a = Auto::from_file(f.path);
  CHECK(std::string(a.choice(Collective::allreduce, 1 << 20, 2, "threads")) == "tree");
  CHECK(std::string(a.choice(Collective::allreduce, 1 << 20, 2, "mpi")) == "ring");
  const Auto b{with_table()};
  CHECK(std::string(b.choice(Collective::allreduce, 3000, 2, "threads")) == "ring");
  CHECK(std::string(b.choice(Collective::allreduce, 3000, 2, "mpi")) == "ring");
  CHECK_THROWS_WITH_AS(Auto::from_file("/nonexistent/weft-cost.txt"),
                       doctest::Contains("cannot read cost-model file '/nonexistent/weft-cost.txt'"), weft::IoError);
}

TEST_CASE("ranks whose Auto chose different algorithms fail naming both choices") {
  // Rank 0's table says tree, rank 1's says ring: their schedules would
  // never meet. The chosen algorithm is in the fingerprint, so the call fails
  // on both ranks before any data moves.
  std::vector<std::string> errors(2);
  run_local(2, [&](ThreadTransport& t) {
    CostModel m = CostModel::threads();
    m.decisions = {{Collective::allreduce, 2, 0, inf, t.rank() == 0 ? "tree" : "ring", 1.1, "-"}};
    Communicator<Auto, ThreadTransport> c(t, Auto{m},
                                          CommOptions{.timeout = std::chrono::seconds(20), .fingerprints = true});
    std::vector<float> g(256, 1.0f);
    try {
      c.allreduce(g);
    } catch (const MismatchError& e) {
      errors[static_cast<std::size_t>(t.rank())] = e.what();
    }
  });
  for (const std::string& e : errors) {
    CAPTURE(e);
    CHECK(e.find("rank 0 called allreduce(f32 x 256, algorithm tree), "
                 "rank 1 called allreduce(f32 x 256, algorithm ring)") != std::string::npos);
    CHECK(e.find("same cost model") != std::string::npos);
  }
  // the same table on both ranks: the call goes through
  run_local(2, [&](ThreadTransport& t) {
    Communicator<Auto, ThreadTransport> c(t, Auto{with_table()},
                                          CommOptions{.timeout = std::chrono::seconds(20), .fingerprints = true});
    std::vector<float> g(256, 1.0f);
    c.allreduce(g);
    CHECK(g[0] == 2.0f);
  });
}

TEST_CASE("calibrate() returns one table on every rank, covering every size, that a cost file keeps") {
  CalibrateOptions o;
  o.ops = {Collective::allreduce, Collective::allgather};
  o.sizes = CalibrateOptions::geometric_sizes(64, 16384, 4);
  o.passes = 1;
  o.fit_constants = false;  // the ping-pong sweeps up to 64 MiB: too slow for a unit test
  std::vector<CostModel> got(3);
  run_local(3, [&](ThreadTransport& t) { got[static_cast<std::size_t>(t.rank())] = calibrate(t, CostModel::threads(), o); });
  const CostModel& m = got[0];
  CHECK(m.alpha == CostModel::threads().alpha);  // kept: fit_constants is false
  for (const CostModel& other : got) {
    REQUIRE(other.decisions.size() == m.decisions.size());
    for (std::size_t i = 0; i < m.decisions.size(); ++i) {
      CHECK(other.decisions[i].algorithm == m.decisions[i].algorithm);
      CHECK(other.decisions[i].max_bytes == m.decisions[i].max_bytes);
    }
  }
  for (Collective op : o.ops) {
    CAPTURE(collective_name(op));
    std::size_t next = 0;  // ranges of one op are contiguous from 0 B to no end
    for (const Decision& d : m.decisions) {
      if (d.op != op) continue;
      CHECK(d.ranks == 3);
      CHECK(d.min_bytes == next);
      CHECK(d.margin > 0);
      const std::string names[] = {"ring", "tree", "recursive_doubling", "halving_doubling"};
      CHECK(std::find(std::begin(names), std::end(names), d.algorithm) != std::end(names));
      next = d.max_bytes == inf ? inf : d.max_bytes + 1;
    }
    CHECK(next == inf);
  }
  // Auto built from it follows it, and it survives a file
  const Auto a{.model = m};
  for (const Decision& d : m.decisions)
    CHECK(std::string(a.choice(d.op, d.min_bytes, 3)) == d.algorithm);
  TempFile f("calibrated.txt");
  CostFile file;
  file.sections["threads"] = m;
  file.save(f.path);
  CHECK(load_cost_model(f.path, "threads").decisions.size() == m.decisions.size());
  CHECK_THROWS_WITH_AS(run_local(1, [&](ThreadTransport& t) { calibrate(t, CostModel{}, o); }),
                       doctest::Contains("calibrate needs at least 2 ranks"), weft::ValueError);
}

// ---- in-run selection (tuning/in_run.hpp) --------------------------------------
// No timing decides a check here: which candidate wins is whatever this
// machine measured; what is checked is that every rank agreed on it (the
// winner, and the slowest-rank times it was chosen from, bitwise), that every
// call's result is exact whichever candidate ran it, that the table's pick is
// timed first, and that re-checks and deterministic mode keep working.
namespace {

// Rank r's element i: small integers, exact in float under any summation order.
float in_run_input(int r, std::size_t i) { return static_cast<float>(r * 5 + static_cast<int>(i % 17)); }

}  // namespace

TEST_CASE("in-run Auto: ranks agree on each size class's winner, and every call is exact") {
  constexpr int P = 4;
  constexpr int per = 2;  // timed calls per candidate
  const std::vector<std::size_t> sizes{2, 100, 5000, 70000};
  // Per rank and size: the winner's index, and the agreed times' bits.
  std::vector<std::vector<std::size_t>> winners(P);
  std::vector<std::vector<std::vector<double>>> agreed(P);
  std::vector<std::string> errors(P);
  run_local(P, [&](ThreadTransport& t) {
    Auto a;
    a.in_run = {.calls_per_candidate = per};
    Communicator<Auto, ThreadTransport> c(t, a, CommOptions{.timeout = std::chrono::seconds(30)});
    Communicator<Auto, ThreadTransport> other(t.split(0, t.rank()), a, CommOptions{.timeout = std::chrono::seconds(30)});
    const auto me = static_cast<std::size_t>(t.rank());
    for (std::size_t n : sizes) {
      const std::size_t bytes = n * sizeof(float);
      // The first call runs the model's pick (the starting guess).
      const char* guess = c.algorithm().choice(Collective::allreduce, bytes, P, t.name());
      CHECK(std::string(c.algorithm().chosen(Collective::allreduce, weft::dtype::f32, n, P, t.name(), true)) == guess);
      for (int k = 0; k < per * static_cast<int>(Auto::candidate_count()) + 3; ++k) {
        std::vector<float> v(n);
        for (std::size_t i = 0; i < n; ++i) v[i] = in_run_input(t.rank(), i);
        c.allreduce(v);
        for (std::size_t i = 0; i < n; ++i) {
          float want = 0;
          for (int r = 0; r < P; ++r) want += in_run_input(r, i);
          if (v[i] != want) {
            errors[me] = "call " + std::to_string(k) + " of " + std::to_string(n) + " elements: element " +
                         std::to_string(i) + " is " + std::to_string(v[i]) + ", expected " + std::to_string(want);
            break;
          }
        }
      }
      const InRunTuner::Entry* e = c.algorithm().tuning()->find(Collective::allreduce, bytes, true);
      REQUIRE(e != nullptr);
      CHECK(e->decided);
      CHECK(e->decisions == 1);
      winners[me].push_back(e->winner);
      agreed[me].push_back(e->agreed);
      // Later calls run the winner (it is what the fingerprint names).
      CHECK(std::string(c.algorithm().chosen(Collective::allreduce, weft::dtype::f32, n, P, t.name(), true)) ==
            Auto::candidate_name(e->winner));
    }
    // The state is the communicator's: another communicator built from the same policy starts fresh.
    CHECK(other.algorithm().tuning()->find(Collective::allreduce, 400, true) == nullptr);
  });
  for (int r = 0; r < P; ++r) {
    CAPTURE(r);
    CHECK(errors[static_cast<std::size_t>(r)] == "");
    CHECK(winners[static_cast<std::size_t>(r)] == winners[0]);
    REQUIRE(agreed[static_cast<std::size_t>(r)].size() == sizes.size());
    for (std::size_t s = 0; s < sizes.size(); ++s) {
      REQUIRE(agreed[static_cast<std::size_t>(r)][s].size() == Auto::candidate_count());
      for (std::size_t i = 0; i < Auto::candidate_count(); ++i) {
        CHECK(agreed[static_cast<std::size_t>(r)][s][i] == agreed[0][s][i]);
        CHECK(agreed[0][s][i] > 0);
      }
    }
  }
}

TEST_CASE("in-run Auto: the table's pick is timed first, then the others in order; re-checks start again") {
  run_local(2, [&](ThreadTransport& t) {
    Auto a{with_table()};  // 2 ranks: tree up to 1000 B
    a.in_run = {.calls_per_candidate = 1, .recheck_every = 3};
    Communicator<Auto, ThreadTransport> c(t, a, CommOptions{.timeout = std::chrono::seconds(30)});
    std::vector<float> v(100, 1.0f);  // 400 B
    auto next = [&] { return std::string(c.algorithm().chosen(Collective::allreduce, weft::dtype::f32, 100, 2, t.name(), true)); };
    // Trial order: tree (the table's), then ring, recursive_doubling, halving_doubling.
    for (const char* want : {"tree", "ring", "recursive_doubling", "halving_doubling"}) {
      CHECK(next() == want);
      std::fill(v.begin(), v.end(), 1.0f);
      c.allreduce(v);
      CHECK(v[99] == 2.0f);
    }
    const InRunTuner::Entry* e = c.algorithm().tuning()->find(Collective::allreduce, 400, true);
    REQUIRE(e != nullptr);
    CHECK(e->decided);
    const std::string first = Auto::candidate_name(e->winner);
    for (int k = 0; k < 3; ++k) {
      CHECK(next() == first);
      c.allreduce(v);
    }
    // After 3 decided calls: timed again, the current winner first.
    CHECK(!e->decided);
    CHECK(next() == first);
    for (int k = 0; k < 4; ++k) c.allreduce(v);
    CHECK(e->decided);
    CHECK(e->decisions == 2);
    // A size in another class has its own state.
    CHECK(c.algorithm().tuning()->find(Collective::allreduce, 4000, true) == nullptr);
    // So does the same size out of place: its trials start from the table's pick again.
    CHECK(c.algorithm().tuning()->find(Collective::allreduce, 400, false) == nullptr);
    std::vector<float> in(100, 1.0f), out(100, 0.0f);
    auto next_oop = [&] {
      return std::string(c.algorithm().chosen(Collective::allreduce, weft::dtype::f32, 100, 2, t.name(), false));
    };
    for (const char* want : {"tree", "ring", "recursive_doubling", "halving_doubling"}) {
      CHECK(next_oop() == want);
      c.allreduce(in.data(), out.data(), in.size());
      CHECK(out[99] == 2.0f);
    }
    const InRunTuner::Entry* o = c.algorithm().tuning()->find(Collective::allreduce, 400, false);
    REQUIRE(o != nullptr);
    CHECK(o->decided);
    CHECK(e->decisions == 2);  // the in-place state is untouched
  });
}

TEST_CASE("collectives::is_in_place: every rank of an in-place call says so; two buffers, rooted ops and alltoall do not") {
  namespace cl = weft::comm::collectives;
  std::vector<float> buf(4 * 10), other(4 * 10);
  for (int r = 0; r < 4; ++r) {
    CAPTURE(r);
    float* b = buf.data();
    const auto at = [&](std::size_t e) { return static_cast<void*>(b + e); };
    CHECK(cl::is_in_place<cl::Allreduce>(b, b, 10, 4, r));
    CHECK(!cl::is_in_place<cl::Allreduce>(b, other.data(), 10, 4, r));
    CHECK(cl::is_in_place<cl::ReduceScatter>(b, at(10 * static_cast<std::size_t>(r)), 10, 4, r));
    CHECK(!cl::is_in_place<cl::ReduceScatter>(b, other.data(), 10, 4, r));
    CHECK(cl::is_in_place<cl::Allgather>(at(10 * static_cast<std::size_t>(r)), b, 10, 4, r));
    CHECK(cl::is_in_place<cl::Allgather>(b, b, 10, 4, r) == (r == 0));  // rank r's block is at r * n
    CHECK(!cl::is_in_place<cl::Reduce>(b, b, 10, 4, r));
    CHECK(!cl::is_in_place<cl::Alltoall>(b, b, 10, 4, r));
  }
}

TEST_CASE("in-run Auto in deterministic mode: bitwise Ordered's result, fingerprints agree") {
  const std::size_t n = 3001;
  std::vector<std::vector<float>> got(3), ref(3);
  auto fill = [&](std::vector<float>& v, int r) {
    v.resize(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = 0.1f * static_cast<float>(r + 1) + 1e-3f * static_cast<float>(i);
  };
  run_local(3, [&](ThreadTransport& t) {
    Auto a;
    a.in_run = {.calls_per_candidate = 1};
    Communicator<Auto, ThreadTransport> c(t, a, CommOptions{.timeout = std::chrono::seconds(30), .deterministic = true});
    Communicator<Ordered<>, ThreadTransport> o(t.split(0, t.rank()), Ordered<>{},
                                              CommOptions{.timeout = std::chrono::seconds(30)});
    auto& mine = got[static_cast<std::size_t>(t.rank())];
    for (int k = 0; k < 6; ++k) {
      fill(mine, t.rank());
      c.allreduce(mine);
    }
    auto& r = ref[static_cast<std::size_t>(t.rank())];
    fill(r, t.rank());
    o.allreduce(r);
  });
  for (std::size_t r = 0; r < 3; ++r) {
    CHECK(std::memcmp(got[r].data(), ref[0].data(), n * sizeof(float)) == 0);
    CHECK(std::memcmp(ref[r].data(), ref[0].data(), n * sizeof(float)) == 0);
  }
}

TEST_CASE("in-run Auto refuses a trial count past 1000 with a sentence") {
  CHECK_THROWS_WITH_AS(run_local(2,
                                 [&](ThreadTransport& t) {
                                   Auto a;
                                   a.in_run = {.calls_per_candidate = 5000};
                                   Communicator<Auto, ThreadTransport> c(t, a);
                                 }),
                       doctest::Contains("in_run.calls_per_candidate is 5000; give 1..1000"), weft::ValueError);
}

namespace {
// The least a context must offer InRunTuner::record on one rank (its
// exchanges with other ranks are empty loops there).
struct OneRankTransport {
  struct Request {};
  Request irecv(void*, std::size_t, int, int) { return {}; }
  Request isend(const void*, std::size_t, int, int) { return {}; }
  weft::comm::WaitStatus wait(Request&, weft::comm::Deadline) { return weft::comm::WaitStatus::done; }
  void cancel(Request&) {}
};
struct OneRankContext {
  OneRankTransport t;
  struct {
    weft::comm::Deadline deadline{};
  } call;
  int size() const { return 1; }
  int rank() const { return 0; }
  OneRankTransport& transport() { return t; }
  [[noreturn]] void fail(weft::comm::WaitStatus, int) { throw std::runtime_error("OneRankContext: no peer to fail on"); }
};
// Candidate times (s) for candidates 0, 1, 2 with candidate 1 the guess: the key's winner.
std::size_t winner_of(InRunOptions o, double t0, double t1, double t2) {
  InRunTuner tuner(o, 3);
  OneRankContext ctx;
  const std::size_t guess = 1;
  // Trial order: the guess, then 0, then 2 (one call each).
  for (std::size_t ran : {std::size_t{1}, std::size_t{0}, std::size_t{2}})
    tuner.record(ctx, Collective::allreduce, 4096, false, guess, ran, ran == 0 ? t0 : ran == 1 ? t1 : t2);
  const InRunTuner::Entry* e = tuner.find(Collective::allreduce, 4096, false);
  REQUIRE(e != nullptr);
  REQUIRE(e->decided);
  return e->winner;
}
}  // namespace

TEST_CASE("in-run Auto: the starting guess keeps a key unless a candidate beats it by more than keep_guess_within") {
  const InRunOptions o{.calls_per_candidate = 1};  // keep_guess_within 5% by default
  CHECK(winner_of(o, 0.97, 1.00, 1.50) == 1);      // 3% faster: noise, the guess stays
  CHECK(winner_of(o, 0.90, 1.00, 1.50) == 0);      // 10% faster: it wins
  CHECK(winner_of(o, 1.20, 1.00, 0.96) == 1);
  CHECK(winner_of(o, 1.20, 1.00, 0.94) == 2);
  InRunOptions strict = o;
  strict.keep_guess_within = 0;
  CHECK(winner_of(strict, 0.97, 1.00, 1.50) == 0);  // the fastest trial always wins
  CHECK(winner_of(strict, 1.00, 1.00, 1.50) == 1);  // a tie: the guess
}

TEST_CASE("in-run Auto: a candidate's trial time is the lower median of its calls, not its luckiest call") {
  // Candidate 0 (the guess) takes one or two rounds at random, candidate 1 always one and a half.
  InRunTuner tuner(InRunOptions{.calls_per_candidate = 3, .keep_guess_within = 0}, 2);
  OneRankContext ctx;
  // Rounds: candidate 0 (the guess), then 1.
  const double t0[] = {2.0, 1.0, 2.0}, t1[] = {1.5, 1.6, 1.4};
  for (int r = 0; r < 3; ++r) {
    tuner.record(ctx, Collective::allreduce, 64, false, 0, 0, t0[r]);
    tuner.record(ctx, Collective::allreduce, 64, false, 0, 1, t1[r]);
  }
  const InRunTuner::Entry* e = tuner.find(Collective::allreduce, 64, false);
  REQUIRE(e != nullptr);
  REQUIRE(e->decided);
  CHECK(e->agreed[0] == 2.0);
  CHECK(e->agreed[1] == 1.5);
  CHECK(e->winner == 1);
  // Two calls: the faster (a cold first call does not count against a candidate).
  InRunTuner two(InRunOptions{.calls_per_candidate = 2, .keep_guess_within = 0}, 2);
  const double u0[] = {9.0, 1.0}, u1[] = {1.2, 1.3};
  for (int r = 0; r < 2; ++r) {
    two.record(ctx, Collective::allreduce, 64, false, 0, 0, u0[r]);
    two.record(ctx, Collective::allreduce, 64, false, 0, 1, u1[r]);
  }
  CHECK(two.find(Collective::allreduce, 64, false)->winner == 0);
}

TEST_CASE("in-run Auto: trials run in rounds, the guess first in each, so drift falls on every candidate alike") {
  InRunTuner tuner(InRunOptions{.calls_per_candidate = 3, .keep_guess_within = 0}, 3);
  OneRankContext ctx;
  const std::size_t guess = 2;
  // The machine slows down during the trials: call i takes 1 + i/20 s plus the candidate's own
  // cost. In rounds every candidate's lower median falls in the middle round; one candidate
  // after another, the guess's calls (0-2) would time 1.25 and candidate 1's (6-8) 1.35.
  const double own[] = {0.30, 0.00, 0.20};  // candidate 1 is the fastest
  std::vector<std::size_t> ran;
  for (int i = 0; i < 9; ++i) {
    CHECK(tuner.trialing(Collective::allreduce, 1 << 20, true));
    const std::size_t c = tuner.next(Collective::allreduce, 1 << 20, true, guess);
    ran.push_back(c);
    tuner.record(ctx, Collective::allreduce, 1 << 20, true, guess, c, 1.0 + i / 20.0 + own[c]);
  }
  CHECK(ran == std::vector<std::size_t>{2, 0, 1, 2, 0, 1, 2, 0, 1});
  const InRunTuner::Entry* e = tuner.find(Collective::allreduce, 1 << 20, true);
  REQUIRE(e != nullptr);
  REQUIRE(e->decided);
  CHECK(e->winner == 1);
  CHECK(e->agreed[1] == doctest::Approx(1.25));  // call 5
  CHECK(e->agreed[2] == doctest::Approx(1.35));  // call 3
  CHECK(e->agreed[0] == doctest::Approx(1.50));  // call 4
  CHECK(tuner.next(Collective::allreduce, 1 << 20, true, guess) == 1);
}
