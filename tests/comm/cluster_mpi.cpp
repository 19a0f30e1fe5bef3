// Runs on the emulated cluster of scripts/cluster.sh (tests/comm/cluster.sh
// starts it): ranks on H network-namespace "hosts" of R ranks each, TCP
// between hosts, shared memory within.
//
//   cluster_mpi exact          every policy's allreduce equals a naive sum
//                              computed on each rank; the transport's node ids
//                              group ranks by host (WEFT_CLUSTER_RANKS_PER_HOST
//                              is read only to check that, never to decide it)
//   cluster_mpi link-down DIR  allreduces until one fails; rank 0 writes
//                              DIR/ready after 3 calls, the script then takes
//                              a host's link down; every rank writes what weft
//                              reported to DIR/rank<r> and leaves without
//                              MPI_Finalize (which would wait for the other host)
//
// Prints one line per failure and exits 1 on any; 0 when all passed.
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
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

using namespace weft::comm;

namespace {

int failures = 0;

void fail(int rank, const std::string& what) {
  std::printf("FAIL rank %d: %s\n", rank, what.c_str());
  std::fflush(stdout);
  ++failures;
}

// Rank r's element i: small integers, so every order of summation is exact in float.
float input(int r, std::size_t i) { return static_cast<float>((r + 1) * 3 + static_cast<int>(i % 29)); }

template <class Algo>
void check_policy(MpiTransport& t, const char* label, Algo algo = {}, bool deterministic = false) {
  CommOptions o;
  o.timeout = std::chrono::seconds(20);
  o.deterministic = deterministic;
  Communicator<Algo, MpiTransport> c(t, algo, o);
  const int p = c.size(), me = c.rank();
  // Sizes that split evenly, unevenly, below one element per rank, and past one chunk.
  for (std::size_t n : {std::size_t{1}, std::size_t{3}, std::size_t{1000}, std::size_t{65536 + 7}, std::size_t{1} << 20}) {
    for (int rep = 0; rep < 3; ++rep) {  // in-run Auto tries candidates on the first calls
      std::vector<float> in(n), out(n, -1.0f);
      for (std::size_t i = 0; i < n; ++i) in[i] = input(me, i);
      c.allreduce(in.data(), out.data(), n);
      for (std::size_t i = 0; i < n; ++i) {
        float want = 0;
        for (int r = 0; r < p; ++r) want += input(r, i);
        if (out[i] != want) {
          fail(me, std::string(label) + ": allreduce of " + std::to_string(n) + " elements: element " +
                       std::to_string(i) + " is " + std::to_string(out[i]) + ", expected " + std::to_string(want));
          break;
        }
      }
    }
  }
}

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : 0;
}

int exact(MpiTransport& t) {
  const int me = t.rank(), p = t.size();
  // Node ids from the transport (MPI_Comm_split_type shared memory): equal exactly for ranks of one host.
  const int rph = env_int("WEFT_CLUSTER_RANKS_PER_HOST");
  if (std::getenv("WEFT_RANKS_PER_NODE")) fail(me, "WEFT_RANKS_PER_NODE is set: the node split would not come from the transport");
  if (rph > 0) {
    std::vector<int> nodes(static_cast<std::size_t>(p));
    int mine = t.node();
    MPI_Allgather(&mine, 1, MPI_INT, nodes.data(), 1, MPI_INT, MPI_COMM_WORLD);
    for (int a = 0; a < p; ++a)
      for (int b = 0; b < p; ++b)
        if ((nodes[static_cast<std::size_t>(a)] == nodes[static_cast<std::size_t>(b)]) != (a / rph == b / rph))
          fail(me, "node ids " + std::to_string(nodes[static_cast<std::size_t>(a)]) + " of rank " + std::to_string(a) +
                       " and " + std::to_string(nodes[static_cast<std::size_t>(b)]) + " of rank " + std::to_string(b) +
                       " do not follow the hosts (" + std::to_string(rph) + " ranks per host)");
    if (rph < p) {
      // Hierarchical's node group is this rank's host.
      CommOptions o;
      Communicator<Hierarchical<>, MpiTransport> h(t, Hierarchical<>{}, o);
      // (levels() is checked by running it below; here the group size)
      const auto& g = *static_cast<NodeGroups<MpiTransport>*>(h.algorithm().groups.get());
      if (g.node->size() != rph)
        fail(me, "Hierarchical's node group has " + std::to_string(g.node->size()) + " ranks, the host " +
                     std::to_string(rph));
    }
  }
  check_policy<Ring>(t, "ring");
  check_policy<Tree>(t, "tree");
  check_policy<RecursiveDoubling>(t, "recursive_doubling");
  check_policy<HalvingDoubling>(t, "halving_doubling");
  check_policy<Hierarchical<>>(t, "hierarchical");
  check_policy<Hierarchical<Ring, HalvingDoubling>>(t, "hierarchical<ring, halving_doubling>");
  {
    HierarchicalLeaders<> leaders;  // the host leaders carry every chunk between the hosts
    leaders.leader_chunk_bytes = 64 << 10;
    check_policy(t, "hierarchical_leaders", leaders);
  }
  check_policy<Native>(t, "native");
  check_policy<Auto>(t, "auto");
  check_policy<Ordered<Ring>>(t, "ordered<ring>");
  check_policy<Ring>(t, "ring, deterministic mode", Ring{}, true);
  {
    AutoOf<Ring, HalvingDoubling, Hierarchical<>, HierarchicalLeaders<>, Native> a;
    a.in_run = {.calls_per_candidate = 1, .recheck_every = 5};
    check_policy(t, "auto in-run (ring, halving_doubling, hierarchical, hierarchical_leaders, native)", a);
  }
  if (me == 0) std::printf("%s: %d ranks on %d hosts: every policy exact\n", failures ? "FAIL" : "ok", p,
                           rph > 0 ? p / rph : 0);
  return failures ? 1 : 0;
}

int link_down(MpiTransport& t, const std::string& dir) {
  const int me = t.rank(), p = t.size();
  const int rph = env_int("WEFT_CLUSTER_RANKS_PER_HOST");
  CommOptions o;
  o.timeout = std::chrono::seconds(3);
  Communicator<Ring, MpiTransport> c(t, Ring{}, o);
  std::vector<float> v(1 << 16, 1.0f);
  std::string report;
  const auto give_up = Clock::now() + std::chrono::seconds(60);
  Clock::time_point t0{};
  for (int k = 0; Clock::now() < give_up; ++k) {
    if (k == 3 && me == 0) std::ofstream(dir + "/ready") << "ready\n";
    t0 = Clock::now();
    try {
      c.allreduce(v);
    } catch (const CommError& e) {
      report = e.what();
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const double took = std::chrono::duration<double>(Clock::now() - t0).count();
  // The ranks of the other hosts: what the error must name as unreachable (and nothing else).
  std::string want = "unreachable: rank";
  std::vector<int> others;
  for (int r = 0; r < p; ++r)
    if (rph > 0 && r / rph != me / rph) others.push_back(r);
  want += others.size() == 1 ? " " : "s ";
  for (std::size_t i = 0; i < others.size(); ++i) {
    if (i) want += ',';
    want += std::to_string(others[i]);
  }
  want += " (";
  const bool named = !report.empty() && report.find(want) != std::string::npos;
  std::ofstream(dir + "/rank" + std::to_string(me))
      << (named ? "ok" : "FAIL") << " rank " << me << " after " << took << " s (deadline 3 s; expected \"" << want
      << "\"): " << (report.empty() ? "no error within 60 s" : report) << "\n";
  std::fflush(stdout);
  std::_Exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  const std::string mode = argc > 1 ? argv[1] : "exact";
  int rc = 0;
  {
    MpiTransport t;
    if (mode == "exact") {
      rc = exact(t);
    } else if (mode == "link-down" && argc > 2) {
      link_down(t, argv[2]);
    } else {
      std::fprintf(stderr, "usage: cluster_mpi exact | link-down DIR\n");
      rc = 2;
    }
  }
  MPI_Finalize();
  return rc;
}
