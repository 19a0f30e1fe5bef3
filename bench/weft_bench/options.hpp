// weft-bench's command line: what one run measures (nccl-tests' flags, plus
// the algorithms, transport, cost model and outputs weft adds) and its parsing.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include <weft/comm/collective.hpp>
#include <weft/comm/reduce_op.hpp>
#include <weft/core/dtype.hpp>

#ifndef WEFT_BENCH_MPI
#define WEFT_BENCH_MPI 0
#endif

namespace weft_bench {

namespace wc = weft::comm;
using weft::dtype;
using wc::Collective;
using wc::ReduceOp;

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// hierarchical_leaders: Hierarchical with Schedule::leaders (one connection
// per node pair carries the buffer, pipelined in chunks).
enum class Algo { ring, tree, recursive_doubling, halving_doubling, hierarchical, native, automatic, mpi, hierarchical_leaders };
inline constexpr const char* algo_names[] = {"ring", "tree", "recursive_doubling", "halving_doubling",
                                      "hierarchical", "native", "auto", "mpi", "hierarchical_leaders"};
inline const char* name_of(Algo a) { return algo_names[static_cast<int>(a)]; }

struct Options {
  bool help = false;         // -h/--help: print usage() and nothing else
  std::string mode = "run";  // run | calibrate | project | memcpy
  std::size_t min_bytes = 8, max_bytes = std::size_t{32} << 20;
  bool max_given = false, ops_given = false;  // calibrate has its own defaults for -e and --op
  bool table_only = false;  // calibrate: measure Auto's table, keep the file's constants
  int passes = 3;           // calibrate: sweeps over every size for Auto's table
  double factor = 2;
  std::size_t step_bytes = 0;  // -i: additive step instead of -f
  int iters = 20, warmup = 5;
  // Timed iterations for sizes up to 8 KiB (0: --iters). A 1-2 us call
  // timed 20 times in 5 interleaved shares of 4 is dominated by the first
  // call after each switch of policy; OSU's benchmarks likewise time small
  // messages 10x more often than large ones.
  int small_iters = 0;
  int check = 1;
  ReduceOp redop = ReduceOp::sum;
  dtype type = dtype::f32;
  int root = 0;
  std::vector<Collective> ops{Collective::allreduce};
  std::vector<Algo> algos{Algo::ring};
  std::string transport = "thread";
  int np = 2;
  std::string json, csv, model_file;
  std::size_t bytes_budget = std::size_t{2} << 30;  // caps iterations for large sizes
  int ranks_per_node = 8;                            // project: ranks per node for hierarchical
  bool quiet = false;
  std::size_t chunk = 0;  // --chunk: pipeline unit of ring, tree, halving_doubling (0: the policy's default)
  bool fingerprints = true;  // the library's default: every call's fingerprint checked (one small message per peer)
  bool bind = true;  // thread transport: pin rank r to CPU r mod ncpu (mpirun binds processes to cores too)
  int contend = 0;   // --contend N: busy processes competing for CPUs 0..N-1 during the run (weft_bench/contend.hpp)
  std::vector<std::string> codecs;  // --codec: compressed allreduce instead (weft_bench/codec.hpp)
  int in_run = 0;             // --in-run N: Auto times each candidate N calls in the run (0: table/formulas)
  std::size_t recheck = 0;    // --recheck N: in-run Auto re-times after N decided calls (0: never)
  bool in_run_sync = true;    // --in-run-sync on|off: start each trial call together on every rank
  bool auto_wide = false;     // --auto-candidates wide: Auto also chooses hierarchical and native
};

// Parses and checks argv: every number finite and in its range, every list
// and name known, and the buffers the run needs no larger than this machine's
// memory. Throws UsageError with a sentence naming the flag on anything else;
// prints nothing and never exits (with -h/--help it returns help = true).
Options parse(int argc, char** argv);

// The --help text.
const char* usage();

// The sizes of a sweep: -b .. -e by -f (or +-i); at most max_sweep_sizes of them.
inline constexpr std::size_t max_sweep_sizes = 10000;
std::vector<std::size_t> sizes(const Options& o);

}  // namespace weft_bench
