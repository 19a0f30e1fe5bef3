// Data-parallel training throughput on the MPI transport (one rank per process).
//   usage: mpirun -np 2 bench_dp_mpi [seconds = 3]
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <weft/comm/transport/mpi.hpp>

#include "dp_common.hpp"

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  const double seconds = argc > 1 ? std::atof(argv[1]) : 3.0;
  openblas_set_num_threads(1);
  int size = 0, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  {
    weft::comm::MpiTransport t{MPI_COMM_WORLD};
    double sps = dpbench::run(t, seconds);
    if (rank == 0) std::printf("weft_dp_mpi_%d_samples_per_s: %.0f\n", size, sps);
  }
  MPI_Finalize();
  return 0;
}
