// A worker killed by SIGKILL under mpirun --enable-recovery (run by
// parameter_server_kill.sh): rank 0 serves under SSP<2> (or BSP with the
// argument "bsp"), ranks 1..3 train a small least-squares model, and rank 2
// kills itself at step 4. Under SSP the server drops it once it has sent
// nothing for 2 s and the others finish; under BSP every survivor's step fails
// naming rank 2. With "server", ranks 0 and 1 serve under ASP (each holding
// half of w), ranks 2 and 3 train, and server rank 1 kills itself once it has
// served 10 requests: every worker's error names server rank 1 and the keys it
// held, and server 0 finishes once both workers reported their failure.
// Each rank prints one line the script checks, then leaves without
// MPI_Finalize (which would wait for the dead rank).
#include <weft/comm/transport/mpi.hpp>
#include <weft/parallel/parameter_server/parameter_server.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

using namespace weft;

template <class C>
void run(comm::MpiTransport& t, bool kill_server) {
  parallel::ps::Options o;
  o.update = nn::SGDOptions{.lr = 1.5f};  // 0.5 per push with 3 workers: w reaches 2 in a few rounds
  o.worker_timeout = std::chrono::milliseconds(2000);
  o.timeout = std::chrono::milliseconds(kill_server ? 3000 : 20000);
  parallel::ParameterServer<C, comm::MpiTransport> s(t, parallel::ps::Roles::count(kill_server ? 2 : 1, t.size()),
                                                     {{"w", 256, 1, false}}, {}, o);
  if (s.is_server()) {
    try {
      if (kill_server && t.rank() == 1) {
        s.start();
        while (s.requests_served() < 10) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        std::fflush(stdout);
        std::raise(SIGKILL);
      }
      s.serve();
      std::printf("server %d: finished; dropped:", t.rank());
      for (const auto& d : s.drops()) std::printf(" rank %d at clock %lld (%s)", d.worker, static_cast<long long>(d.clock), d.reason.c_str());
      std::printf("\n");
    } catch (const std::exception& e) {
      std::printf("server %d: error: %s\n", t.rank(), e.what());
    }
    return;
  }
  std::vector<float> v(256), g(256);
  auto err = s.run_worker([&](auto& ps) {
    for (int step = 0; step < 12; ++step) {
      if (!kill_server && t.rank() == 2 && step == 4) {
        std::fflush(stdout);
        std::raise(SIGKILL);
      }
      if (kill_server) std::this_thread::sleep_for(std::chrono::milliseconds(50));  // server 1 dies mid-run
      ps.pull(0, v).wait();
      for (std::size_t i = 0; i < v.size(); ++i) g[i] = v[i] - 2.0f;
      ps.push(0, g).wait();
      ps.clock();
    }
    ps.pull(0, v).wait();
  });
  if (err)
    std::printf("worker %d: error: %s\n", t.rank(), err->c_str());
  else
    std::printf("worker %d: finished, w[0] = %.3f\n", t.rank(), v[0]);
}

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  {
    comm::MpiTransport t;
    if (argc > 1 && std::strcmp(argv[1], "bsp") == 0)
      run<parallel::BSP>(t, false);
    else if (argc > 1 && std::strcmp(argv[1], "server") == 0)
      run<parallel::ASP>(t, true);
    else
      run<parallel::SSP<2>>(t, false);
    std::fflush(stdout);
  }
  std::_Exit(0);
}
