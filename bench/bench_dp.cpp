// Data-parallel training throughput on the thread transport, rank r pinned
// to CPU r mod ncpu as mpirun pins processes (WEFT_DP_BIND=0: unpinned).
//   usage: bench_dp [ranks = 2] [seconds = 3]
#include <cstdlib>
#include <string>
#include <weft/comm/run_local.hpp>

#include "dp_common.hpp"

int main(int argc, char** argv) {
  const int ranks = argc > 1 ? std::atoi(argv[1]) : 2;
  const double seconds = argc > 2 ? std::atof(argv[2]) : 3.0;
  openblas_set_num_threads(1);
  const char* bind = std::getenv("WEFT_DP_BIND");
  double sps = 0;
  weft::comm::run_local(
      ranks,
      [&](weft::comm::ThreadTransport& t) {
        double r = dpbench::run(t, seconds);
        if (t.rank() == 0) sps = r;
      },
      {.bind_cores = !(bind && std::string(bind) == "0")});
  std::printf("weft_dp_threads_%d_samples_per_s: %.0f\n", ranks, sps);
  return 0;
}
