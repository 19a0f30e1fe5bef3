// Story 6 on thread ranks: the MLP trained at t = 1 (the single-rank model)
// and at t = 2 (or the degree given), compared.
//   build/examples/06_tensor_parallel [t = 2] [epochs = 3] [seed = 1]
#include <cstdio>
#include <cstdlib>
#include <weft/comm/run_local.hpp>

#include "train.hpp"

int main(int argc, char** argv) {
  const int t = argc > 1 ? std::atoi(argv[1]) : 2;
  story6::Options o;
  if (argc > 2) o.epochs = std::atoi(argv[2]);
  if (argc > 3) o.seed = std::strtoull(argv[3], nullptr, 10);
  openblas_set_num_threads(1);
  auto train = weft::io::load_fashion_mnist("train");
  auto test = weft::io::load_fashion_mnist("test");
  story6::standardise(train, test);
  double acc[2] = {0, 0};
  const int degrees[2] = {1, t};
  for (int k = 0; k < 2; ++k)
    weft::comm::run_local(degrees[k], [&](weft::comm::ThreadTransport& tr) {
      const double a = story6::train(tr, train, test, o);
      if (tr.rank() == 0) acc[k] = a;
    });
  std::printf("test accuracy: t = 1 %.2f%%, t = %d %.2f%%, difference %.2f points\n", acc[0], t, acc[1], acc[1] - acc[0]);
  return std::abs(acc[1] - acc[0]) <= 0.3 ? 0 : 1;
}
