// For the doctest executables run under mpirun: every rank must agree a check
// passed (a failure seen on one rank fails the test on all of them), and
// main() runs doctest on every rank with one report and one exit code.
#pragma once

#include <doctest/doctest.h>
#include <mpi.h>

#include <cstddef>
#include <cstdio>
#include <string>
#include <type_traits>

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
// `refuse(size)`, when given, names why this process count cannot run the
// suite (empty: it can); rank 0 prints it and every rank exits with 2.
template <class Refuse = std::nullptr_t>
inline int run_doctest_under_mpi(int argc, char** argv, Refuse refuse = nullptr) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if constexpr (!std::is_same_v<Refuse, std::nullptr_t>) {
    const std::string why = refuse(size);
    if (!why.empty()) {
      if (rank == 0) std::fprintf(stderr, "%s\n", why.c_str());
      MPI_Finalize();
      return 2;
    }
  }
  doctest::Context ctx(argc, argv);
  if (rank != 0) ctx.setOption("minimal", true);
  int rc = ctx.run();
  int worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}

}  // namespace weft::comm::testing
