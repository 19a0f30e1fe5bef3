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

namespace {
// Rank r's element i, small integers (every summation order is exact in
// float) but different per rank and element.
float leaders_input(int r, std::size_t i) { return static_cast<float>((r + 1) * 7 + static_cast<int>(i % 31)); }

// Allreduce through Schedule::leaders on `ranks` thread ranks, `per_node` per
// emulated node, against the naive sum; chunks of `chunk` bytes so a few
// kilobytes already run the pipeline for many chunks. "" = fine.
std::string leaders_case(int ranks, int per_node, std::size_t chunk) {
  std::mutex m;
  std::string errors;
  run_local(
      ranks,
      [&](ThreadTransport& t) {
        Hierarchical<> h;
        h.schedule = Hierarchical<>::Schedule::leaders;
        h.leader_chunk_bytes = chunk;
        Communicator<Hierarchical<>, ThreadTransport> c{t, h, checked()};
        std::string e;
        const int p = c.size(), me = c.rank();
        for (std::size_t n : {std::size_t{1}, std::size_t{5}, std::size_t{64}, std::size_t{1000}, std::size_t{4099}}) {
          for (const bool in_place : {false, true}) {
            std::vector<float> in(n), out(n, -1.0f);
            for (std::size_t i = 0; i < n; ++i) in[i] = leaders_input(me, i);
            if (in_place) {
              c.allreduce(in);
              out = in;
            } else {
              c.allreduce(in.data(), out.data(), n);
            }
            for (std::size_t i = 0; i < n; ++i) {
              float want = 0;
              for (int r = 0; r < p; ++r) want += leaders_input(r, i);
              if (out[i] != want) {
                e += "rank " + std::to_string(me) + ", n " + std::to_string(n) + (in_place ? " in place" : "") +
                     ": element " + std::to_string(i) + " is " + std::to_string(out[i]) + ", expected " +
                     std::to_string(want) + "; ";
                break;
              }
            }
          }
        }
        // avg and max go through the same schedule (avg divides once, at the end)
        std::vector<double> a(777);
        for (std::size_t i = 0; i < a.size(); ++i) a[i] = me + 0.5 * static_cast<double>(i);
        c.allreduce(a, ReduceOp::avg);
        for (std::size_t i = 0; i < a.size(); ++i)
          if (a[i] != (p - 1) / 2.0 + 0.5 * static_cast<double>(i)) {
            e += "rank " + std::to_string(me) + ": avg wrong at " + std::to_string(i) + "; ";
            break;
          }
        std::vector<int> mx(300, me);
        c.allreduce(mx, ReduceOp::max);
        for (int v : mx)
          if (v != p - 1) {
            e += "rank " + std::to_string(me) + ": max wrong; ";
            break;
          }
        std::lock_guard lock(m);
        errors += e;
      },
      LocalOptions{per_node});
  return errors;
}
}  // namespace

TEST_CASE("Hierarchical's leaders schedule: exact sums on 2 and 3 nodes of 2 and 3 ranks, many chunks") {
  CHECK(leaders_case(4, 2, 256) == "");      // two nodes of two
  CHECK(leaders_case(6, 3, 512) == "");      // three ranks per node reduce to the leader
  CHECK(leaders_case(6, 2, 256) == "");      // three leaders: a ring per chunk
  CHECK(leaders_case(4, 2, 1 << 20) == "");  // one chunk
}

TEST_CASE("Hierarchical's leaders schedule gives every rank the same bits for float sums") {
  std::mutex m;
  std::vector<std::vector<float>> got(4);
  run_local(
      4,
      [&](ThreadTransport& t) {
        HierarchicalLeaders<> h;  // the same schedule as a policy type of its own
        h.leader_chunk_bytes = 1024;
        Communicator<HierarchicalLeaders<>, ThreadTransport> c{t, h, checked()};
        if (std::string(c.algorithm().name) != "hierarchical_leaders") {
          std::lock_guard lock(m);
          got[static_cast<std::size_t>(c.rank())] = {-1.0f};
          return;
        }
        std::vector<float> x(3000);
        for (std::size_t i = 0; i < x.size(); ++i) x[i] = 1.0f / static_cast<float>(1 + c.rank() + 3 * static_cast<int>(i));
        c.allreduce(x);
        std::lock_guard lock(m);
        got[static_cast<std::size_t>(c.rank())] = x;
      },
      LocalOptions{2});
  for (int r = 1; r < 4; ++r) CHECK(got[static_cast<std::size_t>(r)] == got[0]);
}
