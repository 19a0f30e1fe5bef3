// Every policy over a device transport emulated on the host
// (emulated_device.hpp) over MPI, against the same policy over host buffers,
// bit for bit (device_policies_suite.hpp); run by Meson under mpirun with 4
// ranks, 2 per emulated node (WEFT_RANKS_PER_NODE=2), so Hierarchical has
// two levels. The thread-rank twin is device_policies.cpp.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/algorithm/halving_doubling.hpp>
#include <weft/comm/algorithm/hierarchical.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/algorithm/tree.hpp>
#include <weft/comm/codec/cast.hpp>
#include <weft/comm/codec/powersgd.hpp>
#include <weft/comm/codec/top_k.hpp>
#include <weft/comm/transport/mpi.hpp>

#include "device_policies_suite.hpp"
#include "mpi_doctest.hpp"

using namespace weft::comm;
using device_suite::host_vs_device_on;
using testing::agree;

TEST_CASE_TEMPLATE("mpi: schedules and Hierarchical over a device transport give the host's bits", A, Ring, Tree,
                   HalvingDoubling, Hierarchical<>, Compressed<BF16, Hierarchical<>>, Compressed<PowerSGD, Ring>) {
  MpiTransport t;
  agree(host_vs_device_on<A>(t, A::name));
}

TEST_CASE("mpi: Compressed<TopK, Ring> over a device transport stages its codec and keeps its state") {
  MpiTransport t;
  agree(host_vs_device_on<Compressed<TopK, Ring>>(t, "Compressed<TopK, Ring>",
                                                   [] { return Compressed<TopK, Ring>{.codec = {.fraction = 0.05}}; }));
}

TEST_CASE("mpi: Hierarchical's leaders schedule is refused on a device transport") {
  MpiTransport t;
  std::string w;
  try {
    Communicator<HierarchicalLeaders<>, emulated::Transport<MpiTransport>> c{emulated::Transport<MpiTransport>(t),
                                                                              HierarchicalLeaders<>{},
                                                                              device_suite::checked()};
  } catch (const weft::ValueError& e) {
    w = e.what();
  }
  agree(w.find("leaders schedule") != std::string::npos ? "" : "rank " + std::to_string(t.rank()) + ": '" + w + "'");
}

int main(int argc, char** argv) { return testing::run_doctest_under_mpi(argc, argv); }
