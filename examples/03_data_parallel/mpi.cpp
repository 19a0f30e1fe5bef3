// Story 3 across processes: one rank per MPI process.
//   mpirun -np 4 build/examples/03_data_parallel_mpi [epochs = 5] [seed = 1]
//       [--batch 128] [--checkpoint DIR] [--fail R@E]
// With --checkpoint, a checkpoint after every epoch and a resume from the
// newest one at start. --fail R@E: rank R kills itself (SIGKILL) halfway
// through epoch E of the first attempt; scripts/weft-run restarts the job on
// the remaining ranks, which resume from the latest checkpoint:
//   scripts/weft-run -np 4 --min-ranks 2 --
//       build/examples/03_data_parallel_mpi 5 1 --batch 120 --checkpoint /tmp/ck --fail 2@3
#include "../run_under_mpi.hpp"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <weft/comm/transport/mpi.hpp>

#include "train.hpp"

int main(int argc, char** argv) {
  return examples::run_under_mpi(argc, argv, [&] {
    story::Options o = story::parse_command_line(argc, argv, false).o;
    if (const char* at = std::getenv("WEFT_RUN_ATTEMPT")) o.attempt = std::atoi(at);  // set by scripts/weft-run
    o.fail = [](int rank, int epoch) {
      std::fprintf(stderr, "rank %d: --fail: killing myself (SIGKILL) halfway through epoch %d\n", rank, epoch);
      ::kill(::getpid(), SIGKILL);
    };
    openblas_set_num_threads(1);
    auto train = weft::io::load_fashion_mnist("train");
    auto test = weft::io::load_fashion_mnist("test");
    story::standardise(train, test);
    weft::comm::MpiTransport t{MPI_COMM_WORLD};
    story::train(t, train, test, o);
    return 0;
  });
}
