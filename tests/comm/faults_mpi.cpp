// Fault injection under mpirun (issue 12), run by Meson with 2, 3 and 4
// ranks: mismatched calls with the default options, a zero-element call
// meeting a non-empty one, an MPI error (MPI_ERR_TRUNCATE) that must become
// a weft error naming the call instead of aborting the job, a rank that
// never constructs its MpiTransport, and a rank that throws with its
// non-blocking allreduce in flight. Each ends in a named error within its
// deadline, or in correct data. Built with NDEBUG like a user's release build.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <weft/comm/algorithm/halving_doubling.hpp>
#include <weft/comm/algorithm/native.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/transport/mpi.hpp>

#include <chrono>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "mpi_doctest.hpp"

using namespace weft::comm;
using namespace std::chrono_literals;
using testing::agree;

namespace {

// "rank 0 called X, rank 1 called Y" on 2 ranks; "rank p-1 called Y, ranks 0,..,p-2 called X" on more.
std::string want_mismatch(int p, const std::string& x, const std::string& y) {
  if (p == 2) return "rank 0 called " + x + ", rank 1 called " + y;
  std::string others = p > 2 ? "ranks " : "rank ";
  for (int r = 0; r < p - 1; ++r) {
    if (r) others += ',';
    others += std::to_string(r);
  }
  return "rank " + std::to_string(p - 1) + " called " + y + ", " + others + " called " + x;
}

std::string check_has(const std::string& got, const std::string& want) {
  return got.find(want) != std::string::npos ? "" : "got: " + got + " | want: " + want;
}

}  // namespace

TEST_CASE_TEMPLATE("mpi, default options: reduce-op, same-size dtype, root and count mismatches are named", A, Ring,
                   HalvingDoubling, Native) {
  MpiTransport t;
  const int p = t.size(), odd = p - 1;
  const std::string kinds[] = {"reduce op", "dtype", "root", "count"};
  for (const std::string& k : kinds) {
    CAPTURE(k);
    CommOptions o;  // the defaults, with a bounded wait if the mismatch went unnoticed
    o.timeout = 5s;
    Communicator<A, MpiTransport> c(t, A{}, o);
    std::vector<float> f(64, 1.0f), f65(65, 1.0f);
    std::vector<std::int32_t> i(64, 1);
    std::string msg = "no error";
    const auto t0 = Clock::now();
    try {
      if (k == "reduce op") c.allreduce(f, t.rank() == odd ? ReduceOp::max : ReduceOp::sum);
      else if (k == "dtype" && t.rank() == odd) c.allreduce(i);
      else if (k == "dtype") c.allreduce(f);
      else if (k == "count") c.allreduce(std::span<float>(f65.data(), t.rank() == odd ? 65 : 64));
      else c.broadcast(f, t.rank() == odd ? odd : 0);
    } catch (const MismatchError& e) {
      msg = e.what();
    } catch (const CommError& e) {
      msg = std::string("not a mismatch: ") + e.what();
    }
    std::string want = k == "reduce op" ? want_mismatch(p, "allreduce(f32 x 64, sum)", "allreduce(f32 x 64, max)")
                       : k == "dtype"   ? want_mismatch(p, "allreduce(f32 x 64)", "allreduce(i32 x 64)")
                       : k == "count"   ? want_mismatch(p, "allreduce(f32 x 64)", "allreduce(f32 x 65)")
                                        : want_mismatch(p, "broadcast(f32 x 64, root 0)",
                                                        "broadcast(f32 x 64, root " + std::to_string(odd) + ")");
    agree(check_has(msg, want) + (Clock::now() - t0 < 3s ? "" : " (slow)"));
  }
}

TEST_CASE("mpi, default options: a 0-element call meeting a 128-element call is named at once") {
  MpiTransport t;
  CommOptions o;
  o.timeout = 10s;
  Communicator<Ring, MpiTransport> c(t, Ring{}, o);
  const int odd = t.size() - 1;
  std::vector<float> v(t.rank() == odd ? 0 : 128, 1.0f);
  std::string msg = "no error";
  const auto t0 = Clock::now();
  try {
    c.allreduce(v);
  } catch (const MismatchError& e) {
    msg = e.what();
  }
  agree(check_has(msg, want_mismatch(t.size(), "allreduce(f32 x 128)", "allreduce(f32 x 0)")) +
        (Clock::now() - t0 < 3s ? "" : " (slow)"));
}

TEST_CASE("mpi: MPI_ERR_TRUNCATE is a TransportError naming the call, not an abort") {
  MpiTransport t;
  Communicator<Ring, MpiTransport> c(t);
  std::string err;
  if (t.rank() == 0) {
    std::vector<float> big(16, 1.0f);
    c.send(big, 1, 3);
  } else if (t.rank() == 1) {
    std::vector<float> small(4);
    std::string msg = "no error";
    try {
      c.recv(small, 0, 3);
    } catch (const TransportError& e) {
      msg = e.what();
    }
    err = check_has(msg, "recv from rank 0 (tag 3) on rank 1: MpiTransport: MPI_Test failed: MPI_ERR_TRUNCATE");
  }
  agree(err);
}

TEST_CASE("mpi: a rank that never constructs its MpiTransport ends the others' construction at the deadline") {
  MPI_Comm mine;
  MPI_Comm_dup(MPI_COMM_WORLD, &mine);  // the test's own: the missing rank joins its barrier at the end
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::string err;
  if (rank != size - 1) {
    const auto t0 = Clock::now();
    std::string msg = "constructed";
    try {
      MpiTransport t(mine, Clock::now() + 500ms);
    } catch (const TimeoutError& e) {
      msg = e.what();
    }
    err = check_has(msg, "MpiTransport on rank " + std::to_string(rank) + " of " + std::to_string(size) +
                             ": construction timed out after 0.");
    if (Clock::now() - t0 > 3s) err += " (slow)";
  }
  agree(err);
  if (rank == size - 1) {  // completes the others' pending barrier (only a non-blocking one matches it)
    MPI_Request late;
    MPI_Ibarrier(mine, &late);
    MPI_Wait(&late, MPI_STATUS_IGNORE);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST_CASE("mpi: a rank that throws with its non-blocking allreduce in flight leaves correct data everywhere") {
  MpiTransport t;
  CommOptions o;
  o.timeout = 10s;
  Communicator<Ring, MpiTransport> c(t, Ring{}, o);
  const std::size_t n = std::size_t{1} << 18;
  std::string err;
  if (t.rank() == 1) {
    bool caught = false;
    try {
      std::vector<float> v(n, 1.0f);
      auto r = c.iallreduce(v);
      std::this_thread::sleep_for(20ms);  // the progress thread has started the call
      throw std::runtime_error("boom on rank 1");
    } catch (const std::runtime_error&) {
      caught = true;  // the request waited for the call before v went
    }
    if (!caught) err = "not caught";
  } else {
    std::this_thread::sleep_for(200ms);
    std::vector<float> v(n, 1.0f);
    c.allreduce(v);
    if (v[0] != float(t.size()) || v[n - 1] != float(t.size())) err = "wrong sum " + std::to_string(v[0]);
  }
  agree(err);
}

int main(int argc, char** argv) { return weft::comm::testing::run_doctest_under_mpi(argc, argv); }
