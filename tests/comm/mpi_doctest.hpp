// For the doctest executables run under mpirun: every rank must agree a check
// passed (a failure seen on one rank fails the test on all of them), and
// main() runs doctest on every rank with one report and one exit code.
#pragma once

#include <doctest/doctest.h>
#include <mpi.h>

#include <string>

namespace weft::comm::testing {

inline void agree(const std::string& err) {
  int bad = err.empty() ? 0 : 1, any = 0;
  MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  CHECK_MESSAGE(err == "", err);
  CHECK(any == 0);
}

// The body of main(): MPI with threads (progress threads call MPI), doctest on
// every rank, one full report (rank 0's; the other ranks print only their
// failures), the worst rank's exit code.
inline int run_doctest_under_mpi(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  doctest::Context ctx(argc, argv);
  if (rank != 0) ctx.setOption("minimal", true);
  int rc = ctx.run();
  int worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}

}  // namespace weft::comm::testing
