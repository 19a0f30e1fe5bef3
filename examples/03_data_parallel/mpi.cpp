// Story 3 across processes: one rank per MPI process.
//   mpirun -np 4 build/examples/03_data_parallel_mpi [epochs = 5] [seed = 1]
#include "../run_under_mpi.hpp"

#include <cstdlib>
#include <weft/comm/transport/mpi.hpp>

#include "train.hpp"

int main(int argc, char** argv) {
  return examples::run_under_mpi(argc, argv, [&] {
    const int epochs = argc > 1 ? std::atoi(argv[1]) : 5;
    const std::uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1;
    openblas_set_num_threads(1);
    auto train = weft::io::load_fashion_mnist("train");
    auto test = weft::io::load_fashion_mnist("test");
    story::standardise(train, test);
    weft::comm::MpiTransport t{MPI_COMM_WORLD};
    story::train(t, train, test, epochs, 128, seed);
    return 0;
  });
}
