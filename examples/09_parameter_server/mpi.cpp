// Story 9 under mpirun: one rank per process; --servers of them serve, the
// rest work (dp: all of them train with DataParallel).
//   mpirun -np 4 build/examples/09_parameter_server_mpi --consistency ssp4 --servers 1 --straggler transient
// The worker count is the process count minus --servers (dp: the process count).
#include <cstdio>
#include <weft/comm/transport/mpi.hpp>  // <mpi.h>, without Open MPI's C++ bindings

#include "train.hpp"

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rc = 0;
  try {
    story9::Options o = story9::parse(argc, argv);
    openblas_set_num_threads(1);
    weft::comm::MpiTransport t;
    o.workers = o.consistency == "dp" ? t.size() : t.size() - o.servers;
    auto train = weft::io::load_fashion_mnist("train");
    auto test = weft::io::load_fashion_mnist("test");
    story9::standardise(train, test);
    story9::train(t, train, test, o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    rc = 1;
  }
  MPI_Finalize();
  return rc;
}
