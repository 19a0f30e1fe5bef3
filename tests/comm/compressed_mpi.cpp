// Compressed communicators under mpirun (2, 3, 4 ranks): the same checks as
// the thread transport (compressed_suite.hpp), every codec over every
// algorithm, plus the byte counter of MpiTransport.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <weft/comm/algorithm/auto.hpp>
#include <weft/comm/algorithm/halving_doubling.hpp>
#include <weft/comm/algorithm/hierarchical.hpp>
#include <weft/comm/algorithm/native.hpp>
#include <weft/comm/algorithm/recursive_doubling.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/algorithm/tree.hpp>
#include <weft/comm/transport/mpi.hpp>

#include <chrono>
#include <string>
#include <vector>

#include "compressed_suite.hpp"
#include "mpi_doctest.hpp"
#include "suite.hpp"

using namespace weft::comm;
using namespace std::chrono_literals;
using testing::agree;
using testing::checked;

TEST_CASE_TEMPLATE("mpi compressed: every codec equals the uncompressed sum within its bound", A, Ring, Tree,
                   RecursiveDoubling, HalvingDoubling, Hierarchical<>, Native, Auto) {
  MpiTransport t;
  agree(testing::check_all_codecs<A>(t, checked()));
}

TEST_CASE("mpi compressed: MpiTransport counts the bytes it sends") {
  MpiTransport t;
  CommOptions o;
  o.fingerprints = false;
  Communicator<Ring, MpiTransport> ring{t, Ring{}, o};
  Communicator<Compressed<F16, Ring>, MpiTransport> half{t, {}, o};
  const int p = ring.size();
  std::vector<float> x(static_cast<std::size_t>(p) * 1024, 1.0f);
  const std::uint64_t a = ring.sent_bytes();
  ring.allreduce(x);
  const std::uint64_t b = ring.sent_bytes();
  half.allreduce(x);
  const std::uint64_t c = half.sent_bytes();
  std::string e;
  if (b - a != 2 * static_cast<std::uint64_t>(p - 1) * 1024 * sizeof(float)) e += "ring bytes; ";
  if (c - b != (b - a) / 2) e += "f16 bytes are not half the ring's; ";
  agree(e);
}

int main(int argc, char** argv) { return weft::comm::testing::run_doctest_under_mpi(argc, argv); }
