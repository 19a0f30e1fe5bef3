// Story 9 on one machine: servers and workers as thread ranks of this process.
//   build/examples/09_parameter_server --consistency ssp4 --servers 1 --workers 3 --straggler transient
// (--consistency bsp|ssp1|ssp4|asp|dp; dp runs DataParallel on the workers alone.) See train.hpp.
#include <cstdio>
#include <weft/comm/run_local.hpp>

#include "train.hpp"

int main(int argc, char** argv) {
  story9::Options o;
  try {
    o = story9::parse(argc, argv);
  } catch (const weft::ValueError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  openblas_set_num_threads(1);
  auto train = weft::io::load_fashion_mnist("train");
  auto test = weft::io::load_fashion_mnist("test");
  story9::standardise(train, test);
  const int ranks = o.consistency == "dp" ? o.workers : o.servers + o.workers;
  weft::comm::run_local(ranks, [&](weft::comm::ThreadTransport& t) { story9::train(t, train, test, o); });
  return 0;
}
