// Data-parallel training throughput on the thread transport.
//   usage: bench_dp [ranks = 2] [seconds = 3]
#include <cstdlib>
#include <weft/comm/run_local.hpp>

#include "dp_common.hpp"

int main(int argc, char** argv) {
  const int ranks = argc > 1 ? std::atoi(argv[1]) : 2;
  const double seconds = argc > 2 ? std::atof(argv[2]) : 3.0;
  openblas_set_num_threads(1);
  double sps = 0;
  weft::comm::run_local(ranks, [&](weft::comm::ThreadTransport& t) {
    double r = dpbench::run(t, seconds);
    if (t.rank() == 0) sps = r;
  });
  std::printf("weft_dp_threads_%d_samples_per_s: %.0f\n", ranks, sps);
  return 0;
}
