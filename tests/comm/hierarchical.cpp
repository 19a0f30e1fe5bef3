// Hierarchical's node and rail groups are explicit sub-communicators, split
// once when the Communicator is built (never inside a collective), and
// policies that wrap it (Compressed, Auto) forward that preparation. The
// collectives themselves are checked with every other policy in threads.cpp
// and mpi.cpp.
#include <doctest/doctest.h>

#include <weft/comm/algorithm/auto.hpp>
#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/algorithm/hierarchical.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/codec/cast.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/run_local.hpp>

#include <chrono>
#include <mutex>
#include <string>
#include <vector>

using namespace weft::comm;
using namespace std::chrono_literals;

namespace {
CommOptions checked() { return CommOptions{.timeout = 20s, .fingerprints = true}; }

// fn(t) on 4 ranks, 2 per emulated node; each rank's message ("" = fine).
template <class F>
std::vector<std::string> on_two_nodes(F&& fn) {
  std::mutex m;
  std::vector<std::string> errors;
  run_local(
      4,
      [&](ThreadTransport& t) {
        std::string e = fn(t);
        std::lock_guard lock(m);
        errors.push_back(e);
      },
      LocalOptions{2});
  return errors;
}
}  // namespace

TEST_CASE("Hierarchical's node and rail groups are split when the communicator is built") {
  for (const auto& e : on_two_nodes([](ThreadTransport& t) {
        Communicator<Hierarchical<>, ThreadTransport> c{t, Hierarchical<>{}, checked()};
        // before any collective: the groups exist
        std::string e;
        const auto& h = c.algorithm();
        if (!h.groups || !h.prepared_for) e += "not split at construction; ";
        else {
          const auto& g = *static_cast<NodeGroups<ThreadTransport>*>(h.groups.get());
          if (g.node->size() != 2 || g.rail->size() != 2) e += "groups are not 2 x 2; ";
          if (!g.uniform) e += "nodes of 2 ranks read as non-uniform; ";
          if (g.node_of != std::vector<int>{0, 0, 1, 1}) e += "node ids wrong; ";
          if (g.local_index != std::vector<int>{0, 1, 0, 1}) e += "local indices wrong; ";
          if (g.node->name_of(g.node->rank()) != t.rank()) e += "node group does not name communicator ranks; ";
        }
        if (c.sequence() != 0) e += "a collective ran during construction; ";
        std::vector<float> x(10, 1.0f);
        c.allreduce(x);
        for (float v : x) e += v == 4.0f ? "" : "wrong sum; ";
        return e;
      }))
    CHECK(e == "");
}

TEST_CASE("a Hierarchical policy not prepared for the context running it says so") {
  run_local(2, [](ThreadTransport& t) {
    Context<ThreadTransport> ctx{t};
    ctx.call.op = Collective::allreduce;
    ctx.call.type = weft::dtype::f32;
    ctx.call.count = 4;
    std::vector<float> x(4, 1.0f);
    const Hierarchical<> h;
    CHECK_THROWS_WITH_AS(h.allreduce(ctx, x.data(), x.data(), x.size()),
                         doctest::Contains("Hierarchical was not prepared for this communicator"), weft::ValueError);
  });
}

TEST_CASE("policies that wrap Hierarchical forward its preparation") {
  for (const auto& e : on_two_nodes([](ThreadTransport& t) {
        std::string e;
        Communicator<Compressed<F16, Hierarchical<>>, ThreadTransport> c{t, {}, checked()};
        if (!c.algorithm().inner.groups) e += "Compressed did not prepare its inner Hierarchical; ";
        std::vector<float> x(8, 1.0f);
        c.allreduce(x);
        for (float v : x) e += v == 4.0f ? "" : "compressed sum wrong; ";
        Communicator<AutoOf<Ring, Hierarchical<>>, ThreadTransport> a{t, {}, checked()};
        if (!std::get<1>(a.algorithm().candidates).groups) e += "Auto did not prepare its Hierarchical candidate; ";
        std::vector<float> y(1 << 16, 1.0f);
        a.allreduce(y);
        for (float v : y) e += v == 4.0f ? "" : "auto sum wrong; ";
        return e;
      }))
    CHECK(e == "");
}
