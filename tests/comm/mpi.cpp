// Collectives on the MPI transport, run by Meson under mpirun with 2, 3 and 4
// ranks (oversubscribed): the same checks as the thread transport (suite.hpp),
// Native included, plus the failure paths (mismatch, missing rank) which must
// end with the expected error within a few seconds on every rank.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <weft/comm/algorithm/auto.hpp>
#include <weft/comm/algorithm/halving_doubling.hpp>
#include <weft/comm/algorithm/hierarchical.hpp>
#include <weft/comm/algorithm/native.hpp>
#include <weft/comm/algorithm/ordered.hpp>
#include <weft/comm/algorithm/recursive_doubling.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/algorithm/tree.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/transport/mpi.hpp>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "suite.hpp"
#include "mpi_doctest.hpp"

using namespace weft::comm;
using namespace std::chrono_literals;
using testing::agree;
using testing::checked;
using testing::small_chunks;
using Clock = std::chrono::steady_clock;

TEST_CASE_TEMPLATE("mpi: every collective x dtype x reduce op matches the reference", A, Ring, Tree,
                   RecursiveDoubling, HalvingDoubling, Hierarchical<>, testing::HierarchicalLeaders, Native, Auto,
                   Ordered<Ring>) {
  MpiTransport t;
  Communicator<A, MpiTransport> c(t, small_chunks<A>(), checked());
  agree(testing::erased(c, [](auto& e) { return testing::check_matrix(e, {0, 1, 7, 1031}); }));
}

TEST_CASE_TEMPLATE("mpi: the collective descriptors' exact inputs and checks hold", A, Ring, Native, Auto,
                   Ordered<Ring>) {
  MpiTransport t;
  Communicator<A, MpiTransport> c(t, small_chunks<A>(), checked());
  agree(testing::erased(c, [](auto& e) {
    return testing::check_descriptors<float>(e, 7) + testing::check_descriptors<weft::bfloat16>(e, 1031);
  }));
}

TEST_CASE_TEMPLATE("mpi: large buffers (16 MiB per rank)", A, Ring, HalvingDoubling, Native, Auto) {
  MpiTransport t;
  Communicator<A, MpiTransport> c(t, A{}, checked());
  agree(testing::erased(c, [](auto& e) { return testing::check_large(e, std::size_t{4} << 20); }));
}

TEST_CASE_TEMPLATE("mpi: deterministic mode equals the rank-order fold", A, Ring, Tree, RecursiveDoubling,
                   HalvingDoubling, Hierarchical<>, Native, Auto) {
  MpiTransport t;
  CommOptions o = checked();
  o.deterministic = true;
  Communicator<A, MpiTransport> c(t, small_chunks<A>(), o);
  std::string e[] = {testing::erased(c, [](auto& e) { return testing::check_deterministic<float>(e, 1000, 11); }),
                     testing::erased(c, [](auto& e) { return testing::check_deterministic<double>(e, 777, 12); }),
                     testing::erased(c, [](auto& e) { return testing::check_deterministic<weft::bfloat16>(e, 515, 13); })};
  agree(e[0] + e[1] + e[2]);
}

TEST_CASE("mpi: Ordered<HalvingDoubling> equals the rank-order fold without the option") {
  MpiTransport t;
  Communicator<Ordered<HalvingDoubling>, MpiTransport> c(t, {}, checked());
  CHECK(c.deterministic());
  agree(testing::erased(c, [](auto& e) { return testing::check_deterministic<float>(e, 1000, 11); }) +
        testing::erased(c, [](auto& e) { return testing::check_deterministic<double>(e, 777, 12); }));
}

TEST_CASE("mpi: receive from any rank and probe (MPI_ANY_SOURCE, MPI_Iprobe)") {
  MpiTransport t;
  Communicator<Ring, MpiTransport> c(t, Ring{}, checked());
  agree(testing::check_any_source(c));
}

TEST_CASE("mpi: non-blocking allreduce") {
  MpiTransport t;
  Communicator<Ring, MpiTransport> c(t, Ring{}, checked());
  std::vector<std::int64_t> v(10007, c.rank() + 1);
  auto r = c.iallreduce(v);
  r.wait();
  std::int64_t want = std::int64_t{c.size()} * (c.size() + 1) / 2;
  agree(v[0] == want && v.back() == want ? "" : "iallreduce wrong: " + std::to_string(v[0]));
}

TEST_CASE("mpi: split") {
  MpiTransport t;
  MpiTransport sub = t.split(t.rank() % 2, t.rank(), Clock::now() + 10s);
  Communicator<Ring, MpiTransport> c(sub, Ring{}, checked());
  std::vector<int> v(3, t.rank());
  c.allreduce(v);
  int want = 0;
  for (int r = t.rank() % 2; r < t.size(); r += 2) want += r;
  agree(v[0] == want ? "" : "split sum " + std::to_string(v[0]));
}

TEST_CASE("mpi: mismatched calls fail on every rank naming ranks and calls") {
  MpiTransport t;
  Communicator<Ring, MpiTransport> c(t, Ring{}, checked());
  const int odd = t.size() - 1;
  std::vector<float> v(t.rank() == odd ? 1025 : 262144, 1.0f);
  std::string msg;
  auto t0 = Clock::now();
  try {
    c.allreduce(v);
  } catch (const MismatchError& e) {
    msg = e.what();
  }
  CHECK(Clock::now() - t0 < 5s);
  std::string others(odd > 1 ? "ranks " : "rank ");
  for (int r = 0; r < odd; ++r) {
    if (r) others += ',';
    others += std::to_string(r);
  }
  std::string want = "rank " + std::to_string(odd) + " called allreduce(f32 x 1025), " + others +
                     " called allreduce(f32 x 262144)";
  if (odd == 1) want = "rank 0 called allreduce(f32 x 262144), rank 1 called allreduce(f32 x 1025)";
  CHECK_MESSAGE(msg.find(want) != std::string::npos, msg, " | want: ", want);
  CHECK(c.broken());
  CHECK_THROWS_AS(c.barrier(), BrokenError);
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST_CASE("mpi: a rank that never arrives is named by the others' timeout") {
  MpiTransport t;
  Communicator<Tree, MpiTransport> c(t, Tree{}, checked());
  const int missing = t.size() - 1;
  auto t0 = Clock::now();
  if (t.rank() != missing) {
    std::vector<double> v(100, 1.0);
    std::string msg;
    try {
      c.allreduce(v, ReduceOp::sum, CallOptions{700ms});
    } catch (const TimeoutError& e) {
      msg = e.what();
    }
    CHECK(Clock::now() - t0 < 4s);
    CHECK_MESSAGE(msg.find("rank " + std::to_string(missing) + " did not arrive") != std::string::npos, msg);
    CHECK(c.broken());
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

int main(int argc, char** argv) { return weft::comm::testing::run_doctest_under_mpi(argc, argv); }
