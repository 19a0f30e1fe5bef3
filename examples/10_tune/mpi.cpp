// Story 10 across processes: one rank per MPI process (an even number of them:
// trials take 2 ranks each).
//   mpirun -np 4 build/examples/10_tune_mpi [--quick] [--out DIR] [--seed S]
// Only MPI's C API (Open MPI's deprecated C++ bindings warn under -Wextra).
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <cstdio>
#include <weft/comm/transport/mpi.hpp>

#include "tune.hpp"

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rc = 0;
  try {
    weft::comm::MpiTransport world{MPI_COMM_WORLD};
    rc = story10::run(argc, argv, world.rank() == 0, [&](auto&& body) { body(world); });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    rc = 1;
  }
  MPI_Finalize();
  return rc;
}
