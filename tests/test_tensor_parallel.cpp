// Tensor parallelism on thread ranks (tensor_parallel_suite.hpp holds the
// checks, shared with test_tensor_parallel_mpi.cpp): central differences
// through every collective node on 2 and 4 ranks; the sharded model against
// the unsharded one at t = 1, 2, 4 (loss, gradients, 20 AdamW steps); the
// transport's byte counter against the formula; configuration errors.
#include <doctest/doctest.h>

#include <string>
#include <vector>
#include <weft/comm/run_local.hpp>

#include "tensor_parallel_suite.hpp"

using namespace tp_suite;
using comm::ThreadTransport;

namespace {
// Run fn on p thread ranks; every rank's message must be empty.
template <class F>
void on_ranks(int p, F fn) {
  std::vector<std::string> errs(static_cast<std::size_t>(p));
  comm::run_local(p, [&](ThreadTransport& t) { errs[static_cast<std::size_t>(t.rank())] = fn(t); });
  for (int r = 0; r < p; ++r) CHECK_MESSAGE(errs[static_cast<std::size_t>(r)] == "", errs[static_cast<std::size_t>(r)]);
}
}  // namespace

TEST_CASE("gradcheck through every collective node on 1, 2 and 4 thread ranks") {
  for (int p : {1, 2, 4}) {
    CAPTURE(p);
    on_ranks(p, [](ThreadTransport& t) {
      RingComm<ThreadTransport> c(t);
      return gradcheck_every_node(c);
    });
  }
}

TEST_CASE("t = 1, 2, 4: loss, gradients and 20 AdamW steps equal the unsharded model's") {
  for (int p : {1, 2, 4}) {
    CAPTURE(p);
    on_ranks(p, [](ThreadTransport& t) { return exactness(t); });
  }
}

TEST_CASE("the transport moves the formula's bytes per step") {
  for (int p : {1, 2, 4}) {
    CAPTURE(p);
    on_ranks(p, [](ThreadTransport& t) { return byte_count(t); });
  }
}
