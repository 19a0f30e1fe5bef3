// Story 6 across processes, t = the number of MPI ranks:
//   mpirun -np 2 build/examples/06_tensor_parallel_mpi [epochs = 3] [seed = 1] [--reference]
// --reference: each process also trains the single-rank model (t = 1, on a
// communicator of its own) and rank 0 prints the difference.
#include "../run_under_mpi.hpp"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <weft/comm/transport/mpi.hpp>

#include "train.hpp"

int main(int argc, char** argv) {
  return examples::run_under_mpi(argc, argv, [&] {
    story6::Options o;
    bool reference = false;
    int positional = 0;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--reference") reference = true;
      else if (positional++ == 0) o.epochs = std::atoi(a.c_str());
      else o.seed = std::strtoull(a.c_str(), nullptr, 10);
    }
    openblas_set_num_threads(1);
    auto train = weft::io::load_fashion_mnist("train");
    auto test = weft::io::load_fashion_mnist("test");
    story6::standardise(train, test);
    weft::comm::MpiTransport t{MPI_COMM_WORLD};
    const double a = story6::train(t, train, test, o);
    if (!reference) return 0;
    weft::comm::MpiTransport alone = t.split(t.rank(), 0);
    story6::Options q = o;
    q.quiet = t.rank() != 0;
    const double a1 = story6::train(alone, train, test, q);
    if (t.rank() == 0)
      std::printf("test accuracy: t = 1 %.2f%%, t = %d %.2f%%, difference %.2f points\n", a1, t.size(), a, a - a1);
    return std::abs(a - a1) <= 0.3 ? 0 : 1;
  });
}
