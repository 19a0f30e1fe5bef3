// For the tests run under mpirun: every rank must agree a check passed, so a
// failure seen on one rank fails the test on all of them (and rank 0's
// report, the only one printed, shows it).
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

}  // namespace weft::comm::testing
