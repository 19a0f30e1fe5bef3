// Every policy over a device transport (emulated_device.hpp: buffers the host
// cannot read as numbers, an executor with its own combines and staging)
// gives bitwise what the same policy gives over host buffers: the schedules'
// local work all goes through the executor, Hierarchical's levels share it,
// and Compressed stages its host codecs through download/upload (its codec
// state evolving as on the host). What cannot run on a device transport says
// so: Hierarchical's leaders schedule when the communicator is built,
// QuantizedRing at compile time (compile_fail_quantized_ring_device.cpp).
// This is what NcclTransport runs (tests/cuda/test_nccl.cu on a GPU).
#include <doctest/doctest.h>

#include <weft/comm/algorithm/auto.hpp>
#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/algorithm/halving_doubling.hpp>
#include <weft/comm/algorithm/hierarchical.hpp>
#include <weft/comm/algorithm/ordered.hpp>
#include <weft/comm/algorithm/recursive_doubling.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/algorithm/tree.hpp>
#include <weft/comm/codec/cast.hpp>
#include <weft/comm/codec/int8.hpp>
#include <weft/comm/codec/powersgd.hpp>
#include <weft/comm/codec/random_k.hpp>
#include <weft/comm/codec/scaled_sign.hpp>
#include <weft/comm/codec/top_k.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/run_local.hpp>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "device_policies_suite.hpp"
#include "emulated_device.hpp"

using namespace weft::comm;
using namespace std::chrono_literals;
using DT = emulated::Transport<>;
using device_suite::checked;
using device_suite::inputs;

namespace {
// Runs the suite's comparison with policy A on 4 thread ranks, 2 per
// emulated node; "" = bitwise the same on every rank.
template <class A, class Make>
std::string host_vs_device(const char* what, Make make) {
  std::mutex m;
  std::string errors;
  run_local(
      4,
      [&](ThreadTransport& t) {
        const std::string e = device_suite::host_vs_device_on<A>(t, what, make);
        std::lock_guard lock(m);
        errors += e;
      },
      LocalOptions{2});
  return errors;
}
template <class A>
std::string host_vs_device(const char* what) {
  return host_vs_device<A>(what, [] { return A{}; });
}
}  // namespace

TEST_CASE("the schedules over a device transport give the host's bits") {
  CHECK(host_vs_device<Ring>("Ring") == "");
  CHECK(host_vs_device<Tree>("Tree") == "");
  CHECK(host_vs_device<HalvingDoubling>("HalvingDoubling") == "");
  CHECK(host_vs_device<RecursiveDoubling>("RecursiveDoubling") == "");
  CHECK(host_vs_device<Ordered<>>("Ordered") == "");
}

TEST_CASE("Hierarchical over a device transport: its levels use the communicator's executor") {
  CHECK(host_vs_device<Hierarchical<>>("Hierarchical") == "");
  CHECK(host_vs_device<Hierarchical<Tree, HalvingDoubling>>("Hierarchical<Tree, HalvingDoubling>") == "");
  CHECK(host_vs_device<AutoOf<Ring, Hierarchical<>>>("AutoOf<Ring, Hierarchical>") == "");
}

TEST_CASE("Compressed over a device transport stages its host codec and keeps its state as on the host") {
  CHECK(host_vs_device<Compressed<F16, Ring>>("Compressed<F16, Ring>") == "");
  CHECK(host_vs_device<Compressed<BF16, Hierarchical<>>>("Compressed<BF16, Hierarchical>") == "");
  CHECK(host_vs_device<Compressed<TopK, Ring>>("Compressed<TopK, Ring>",
                                               [] { return Compressed<TopK, Ring>{.codec = {.fraction = 0.05}}; }) == "");
  CHECK(host_vs_device<Compressed<Int8, Ring>>("Compressed<Int8, Ring>") == "");
  CHECK(host_vs_device<Compressed<ScaledSign, Tree>>("Compressed<ScaledSign, Tree>") == "");
  CHECK(host_vs_device<Compressed<RandomK, Ring>>("Compressed<RandomK, Ring>",
                                                  [] { return Compressed<RandomK, Ring>{.codec = {.fraction = 0.1}}; }) == "");
  CHECK(host_vs_device<Compressed<PowerSGD, Ring>>("Compressed<PowerSGD, Ring>") == "");
}

TEST_CASE("Compressed over a device transport: every byte the codec reads or writes is staged") {
  // The input goes down once, each round's payload up and down, the result up once.
  run_local(2, [](ThreadTransport& t) {
    emulated::Executor ex;
    Communicator<Compressed<TopK, Ring>, DT> c{DT(t, ex), Compressed<TopK, Ring>{.codec = {.fraction = 0.1}}, checked()};
    emulated::Buffer<float> x(ex, inputs(t.rank(), 100, 0));
    const long down = ex.counts->download, up = ex.counts->upload;
    c.allreduce(x.data(), x.data(), 100, ReduceOp::avg, {.name = "w"});
    CHECK(ex.counts->download - down == 2);  // the input; the allgathered payloads
    CHECK(ex.counts->upload - up == 2);      // this rank's payload; the result
    CHECK(c.algorithm().states->names() == std::vector<std::string>{"compressed/w/residual"});
  });
}

TEST_CASE("Hierarchical's leaders schedule is refused on a device transport when the communicator is built") {
  std::mutex m;
  std::vector<std::string> what;
  run_local(
      4,
      [&](ThreadTransport& t) {
        std::string w;
        try {
          Communicator<HierarchicalLeaders<>, DT> c{DT(t), HierarchicalLeaders<>{}, checked()};
        } catch (const weft::ValueError& e) {
          w = e.what();
        }
        std::lock_guard lock(m);
        what.push_back(w);
      },
      LocalOptions{2});
  REQUIRE(what.size() == 4);
  for (const auto& w : what) {
    CHECK(w.find("leaders schedule") != std::string::npos);
    CHECK(w.find("Schedule::rails") != std::string::npos);
    CHECK(w.find("emulated-device") != std::string::npos);
  }
}
