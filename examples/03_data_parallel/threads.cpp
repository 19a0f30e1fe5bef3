// Story 3 on one machine, no launcher: 4 ranks as threads of this process.
//   build/examples/03_data_parallel [ranks = 4] [epochs = 5] [seed = 1]
#include <cstdlib>
#include <weft/comm/run_local.hpp>

#include "train.hpp"

int main(int argc, char** argv) {
  const int ranks = argc > 1 ? std::atoi(argv[1]) : 4;
  const int epochs = argc > 2 ? std::atoi(argv[2]) : 5;
  const std::uint64_t seed = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 1;
  openblas_set_num_threads(1);
  auto train = weft::io::load_fashion_mnist("train");  // loaded once, read by every rank
  auto test = weft::io::load_fashion_mnist("test");
  story::standardise(train, test);
  weft::comm::run_local(ranks, [&](weft::comm::ThreadTransport& t) { story::train(t, train, test, epochs, 128, seed); });
  return 0;
}
