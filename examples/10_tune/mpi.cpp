// Story 10 across processes: one rank per MPI process (an even number of them:
// trials take 2 ranks each).
//   mpirun -np 4 build/examples/10_tune_mpi [--quick] [--out DIR] [--seed S]
#include "../run_under_mpi.hpp"

#include <weft/comm/transport/mpi.hpp>

#include "tune.hpp"

int main(int argc, char** argv) {
  return examples::run_under_mpi(argc, argv, [&] {
    weft::comm::MpiTransport world{MPI_COMM_WORLD};
    return story10::run(argc, argv, world.rank() == 0, [&](auto&& body) { body(world); });
  });
}
