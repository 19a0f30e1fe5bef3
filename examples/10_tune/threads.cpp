// Story 10 on one machine, no launcher: 4 ranks as threads of this process.
//   build/examples/10_tune [--quick] [--out DIR] [--seed S]
#include <weft/comm/run_local.hpp>

#include "tune.hpp"

int main(int argc, char** argv) {
  return story10::run(argc, argv, true, [](auto&& body) {
    weft::comm::run_local(4, [&](weft::comm::ThreadTransport& t) { body(t); });
  });
}
