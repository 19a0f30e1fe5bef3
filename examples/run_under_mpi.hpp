// main() of a story run under mpirun, one rank per process: MPI set up for
// threads (weft's progress threads call MPI), the story run, an error
// printed with exit code 1, and MPI finalised on every path.
// Only MPI's C API (Open MPI's deprecated C++ bindings warn under -Wextra).
#pragma once

#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <cstdio>
#include <exception>

namespace examples {

// f() runs the story and returns the exit code.
template <class F>
int run_under_mpi(int& argc, char**& argv, F&& f) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rc = 0;
  try {
    rc = f();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    rc = 1;
  }
  MPI_Finalize();
  return rc;
}

}  // namespace examples
