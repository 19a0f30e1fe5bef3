// tune::search under mpirun (run by Meson with 2 and 4 ranks): the checks of
// test_tune_suite.hpp with one rank per process. Every rank checks its own
// copy of the results (they must be equal); comm/mpi_doctest.hpp runs doctest.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <unistd.h>

#include <weft/comm/transport/mpi.hpp>

#include "comm/mpi_doctest.hpp"
#include "test_tune_suite.hpp"

using namespace tune_suite;

namespace {
// Results as every rank sees them: checked equal to rank 0's by comparing lengths and a hash.
void same_on_every_rank(const Results& r) {
  const std::string s = fingerprint(r);
  unsigned long long h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  unsigned long long lo = h, hi = h;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
  CHECK(lo == hi);
}
}  // namespace

TEST_CASE("mpi: grid + FIFO in groups of 1, 2 and W ranks; failed trials recorded, the search goes on") {
  comm::MpiTransport world{MPI_COMM_WORLD};
  for (int g : {1, 2, world.size()}) {
    if (world.size() % g) continue;
    CAPTURE(g);
    Results r = fifo_grid(world, g);
    same_on_every_rank(r);
    check_fifo_grid(r);
  }
}

TEST_CASE("mpi: one rank of a group throws: the trial fails with its message, the others unwind") {
  comm::MpiTransport world{MPI_COMM_WORLD};
  for (int g : {2, world.size()}) {
    if (world.size() % g) continue;
    CAPTURE(g);
    Results r = one_rank_throws(world, g);
    same_on_every_rank(r);
    check_one_rank_throws(r);
  }
}

TEST_CASE("mpi: ASHA stops what a naive rung rule replayed in arrival order stops") {
  comm::MpiTransport world{MPI_COMM_WORLD};
  for (int g : {1, 2}) {
    if (world.size() % g) continue;
    CAPTURE(g);
    Results r = asha_sobol(world, g);
    same_on_every_rank(r);
    check_asha(r);
  }
}

TEST_CASE("mpi: PBT hands an exploiting trial its source's weights") {
  comm::MpiTransport world{MPI_COMM_WORLD};
  Results r = pbt(world, nullptr);
  same_on_every_rank(r);
  check_pbt(r, static_cast<std::size_t>(world.size()));
}

TEST_CASE("mpi: resume from the results file, and g must divide W") {
  comm::MpiTransport world{MPI_COMM_WORLD};
  // One path for every rank: rank 0's pid.
  long long pid = ::getpid();
  MPI_Bcast(&pid, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
  const std::string base = (std::filesystem::temp_directory_path() / ("weft_tune_mpi_" + std::to_string(pid))).string();
  std::atomic<int> calls{0};
  (void)fifo_grid(world, 1, base, &calls);
  if (world.rank() == 0) interrupt(base, 10);
  MPI_Barrier(MPI_COMM_WORLD);
  calls = 0;
  Results r = fifo_grid(world, 1, base, &calls);
  int total = calls.load();
  MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  CHECK(total == 5);
  check_fifo_grid(r);
  if (world.rank() == 0) {
    std::filesystem::remove(base + ".json");
    std::filesystem::remove(base + ".csv");
  }
  const int w = world.size();
  std::string said;
  try {
    (void)fifo_grid(world, w + 1);
  } catch (const ValueError& e) {
    said = e.what();
  }
  CHECK(said.find("do not divide the world of " + std::to_string(w) + " ranks") != std::string::npos);
}

int main(int argc, char** argv) { return weft::comm::testing::run_doctest_under_mpi(argc, argv); }
