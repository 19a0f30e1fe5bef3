// A rank killed by SIGKILL under mpirun (issue 12): after one allreduce that
// every rank completes, rank 1 kills itself and the others call the next
// allreduce with a 2 s deadline. Each survivor prints what weft reported and
// leaves without MPI_Finalize (which would wait for the dead rank).
// faults_mpi_kill.sh runs it with Open MPI's --enable-recovery (without it
// mpirun kills the whole job at the first death) and checks that every
// survivor named the call within its deadline.
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/transport/mpi.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <vector>

using namespace weft::comm;

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  {
    MpiTransport t;
    CommOptions o;
    o.timeout = std::chrono::seconds(2);
    Communicator<Ring, MpiTransport> c(t, Ring{}, o);
    std::vector<float> v(1000, 1.0f);
    c.allreduce(v);
    if (t.rank() == 1) std::raise(SIGKILL);
    const auto t0 = Clock::now();
    try {
      c.allreduce(v);
      std::printf("survivor %d: no error\n", t.rank());
    } catch (const CommError& e) {
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      std::printf("survivor %d after %.1f s: %s\n", t.rank(), s, e.what());
    }
    std::fflush(stdout);
  }
  std::_Exit(0);
}
