// weft-bench: collective micro-benchmarks in nccl-tests' terms (size, count,
// type, redop, root | time, algbw, busbw, #wrong for out-of-place and
// in-place), plus p50/p99, the cost model's prediction and arrival skew (the
// largest gap between the first and last rank entering a call, and who was
// last). Runs on the thread transport (--np N ranks in this process) or on
// MPI (--transport mpi under mpirun).
//
//   weft-bench -b 8 -e 64M -f 2 --algo ring,native,auto --np 2 -c 1
//   mpirun -np 2 weft-bench --transport mpi --algo ring,halving_doubling,mpi
//   weft-bench calibrate --np 2 --model cost.txt        (then: --model cost.txt)
//   weft-bench project --model cost.txt --transport threads
//   weft-bench memcpy -e 64M
//
// Sizes follow nccl-tests: S bytes is the per-rank buffer for allreduce,
// broadcast and reduce, and the p-block buffer for reduce_scatter, allgather,
// gather, scatter and alltoall. algbw = S / time; busbw = algbw x factor
// (allreduce 2(p-1)/p; reduce_scatter, allgather, gather, scatter, alltoall
// (p-1)/p; broadcast, reduce 1).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <weft/comm/algorithm/auto.hpp>
#include <weft/comm/algorithm/halving_doubling.hpp>
#include <weft/comm/algorithm/hierarchical.hpp>
#include <weft/comm/algorithm/native.hpp>
#include <weft/comm/algorithm/recursive_doubling.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/algorithm/tree.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/tuning/calibrate.hpp>
#include <weft/comm/tuning/cost_file.hpp>
#include <weft/comm/run_local.hpp>
#if WEFT_BENCH_MPI
#include <weft/comm/transport/mpi.hpp>
#endif

#include "weft_bench/codec.hpp"

#ifndef WEFT_BENCH_MPI
#define WEFT_BENCH_MPI 0
#endif

namespace wc = weft::comm;
using weft::dtype;
using wc::Collective;
using wc::ReduceOp;
using Clock = std::chrono::steady_clock;

namespace {

// ---------------------------------------------------------------- options ----

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Algo { ring, tree, recursive_doubling, halving_doubling, hierarchical, native, automatic, mpi };
constexpr const char* algo_names[] = {"ring", "tree", "recursive_doubling", "halving_doubling",
                                      "hierarchical", "native", "auto", "mpi"};
const char* name_of(Algo a) { return algo_names[static_cast<int>(a)]; }

struct Options {
  std::string mode = "run";  // run | calibrate | project | memcpy
  std::size_t min_bytes = 8, max_bytes = std::size_t{32} << 20;
  bool max_given = false, ops_given = false;  // calibrate has its own defaults for -e and --op
  bool table_only = false;  // calibrate: measure Auto's table, keep the file's constants
  int passes = 3;           // calibrate: sweeps over every size for Auto's table
  double factor = 2;
  std::size_t step_bytes = 0;  // -i: additive step instead of -f
  int iters = 20, warmup = 5;
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
  bool bind = true;  // thread transport: pin rank r to CPU r mod ncpu (mpirun binds processes to cores too)
  std::vector<std::string> codecs;  // --codec: compressed allreduce instead (weft_bench/codec.hpp)
};

std::size_t parse_bytes(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (end == v.c_str() || x < 0) throw UsageError(flag + ": expected a size like 8, 64K, 1M or 2G, got '" + v + "'");
  std::string suf(end);
  double mult = 1;
  if (suf == "" || suf == "B") mult = 1;
  else if (suf == "K" || suf == "k" || suf == "KiB") mult = 1024.0;
  else if (suf == "M" || suf == "MiB") mult = 1024.0 * 1024;
  else if (suf == "G" || suf == "GiB") mult = 1024.0 * 1024 * 1024;
  else throw UsageError(flag + ": unknown size suffix '" + suf + "' in '" + v + "' (accepted: none, K, M, G)");
  return static_cast<std::size_t>(x * mult);
}

long parse_int(const std::string& flag, const std::string& v, long lo, long hi) {
  char* end = nullptr;
  long x = std::strtol(v.c_str(), &end, 10);
  if (end == v.c_str() || *end || x < lo || x > hi)
    throw UsageError(flag + ": expected an integer in " + std::to_string(lo) + ".." + std::to_string(hi) + ", got '" +
                     v + "'");
  return x;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream is(s);
  while (std::getline(is, cur, ','))
    if (!cur.empty()) out.push_back(cur);
  return out;
}

ReduceOp parse_redop(const std::string& v) {
  if (v == "sum") return ReduceOp::sum;
  if (v == "prod") return ReduceOp::prod;
  if (v == "min") return ReduceOp::min;
  if (v == "max") return ReduceOp::max;
  if (v == "avg") return ReduceOp::avg;
  throw UsageError("-o/--redop: unknown reduce op '" + v + "' (accepted: sum, prod, min, max, avg)");
}

dtype parse_dtype(const std::string& v) {
  if (v == "float" || v == "f32" || v == "float32") return dtype::f32;
  if (v == "double" || v == "f64" || v == "float64") return dtype::f64;
  if (v == "half" || v == "f16" || v == "float16") return dtype::f16;
  if (v == "bfloat16" || v == "bf16") return dtype::bf16;
  if (v == "int32" || v == "i32" || v == "int") return dtype::i32;
  if (v == "int64" || v == "i64") return dtype::i64;
  if (v == "uint8" || v == "u8") return dtype::u8;
  throw UsageError("-d/--dtype: unknown type '" + v +
                   "' (accepted: float, double, half, bfloat16, int32, int64, uint8)");
}

Collective parse_op(const std::string& v) {
  for (Collective c : {Collective::allreduce, Collective::reduce_scatter, Collective::allgather, Collective::broadcast,
                       Collective::reduce, Collective::gather, Collective::scatter, Collective::alltoall,
                       Collective::barrier})
    if (v == wc::collective_name(c)) return c;
  throw UsageError("--op: unknown collective '" + v +
                   "' (accepted: allreduce, reduce_scatter, allgather, broadcast, reduce, gather, scatter, alltoall, "
                   "barrier, all)");
}

Algo parse_algo(const std::string& v) {
  for (int i = 0; i < 8; ++i)
    if (v == algo_names[i]) return static_cast<Algo>(i);
  if (v == "rd") return Algo::recursive_doubling;
  if (v == "hd") return Algo::halving_doubling;
  throw UsageError("--algo: unknown algorithm '" + v +
                   "' (accepted: ring, tree, recursive_doubling, halving_doubling, hierarchical, native, auto, "
                   "mpi (MPI's blocking collectives, --transport mpi only), all)");
}

const char* usage_text =
    "usage: weft-bench [calibrate|project|memcpy] [options]\n"
    "  calibrate: fit alpha, beta, gamma and time Auto's candidates at every size (-b .. -e, default\n"
    "  8 .. 64M; --op, default allreduce,reduce_scatter,allgather,reduce) into --model FILE\n"
    "  -b, --minbytes SIZE     smallest size (default 8; suffixes K, M, G)\n"
    "  -e, --maxbytes SIZE     largest size (default 32M)\n"
    "  -f, --stepfactor F      multiply the size by F each step (default 2)\n"
    "  -i, --stepbytes SIZE    add SIZE each step instead\n"
    "  -n, --iters N           timed iterations per size (default 20; capped by --bytes-budget)\n"
    "  -w, --warmup_iters N    untimed iterations first (default 5)\n"
    "  -c, --check 0|1         count wrong elements exactly (default 1)\n"
    "  -o, --redop OP          sum, prod, min, max, avg (default sum)\n"
    "  -d, --dtype T           float, double, half, bfloat16, int32, int64, uint8 (default float)\n"
    "  -r, --root R            root of broadcast, reduce, gather, scatter (default 0)\n"
    "      --op LIST           collectives: allreduce, reduce_scatter, allgather, broadcast, reduce,\n"
    "                          gather, scatter, alltoall, barrier, all (default allreduce)\n"
    "      --algo LIST         ring, tree, recursive_doubling, halving_doubling, hierarchical, native,\n"
    "                          auto, mpi, all (default ring)\n"
    "      --transport T       thread | mpi (default thread; mpi: run under mpirun)\n"
    "      --np N              ranks for the thread transport (default 2)\n"
    "      --model FILE        cost model from `weft-bench calibrate` (predictions and Auto)\n"
    "      --json FILE, --csv FILE   write every row\n"
    "      --bytes-budget SIZE at most this many bytes per measurement: iterations = min(n, SIZE/S), >= 3\n"
    "      --ranks-per-node N  project: node size for the hierarchical projection (default 8)\n"
    "      --chunk SIZE        pipeline unit of ring, tree, halving_doubling, hierarchical (default: the policy's, 1M)\n"
    "      --bind core|none    thread transport: pin rank r to CPU r mod ncpu (default core, as mpirun binds)\n"
    "      --codec LIST        compressed allreduce: none, f16, bf16, int8[:chunk], topk[:fraction],\n"
    "                          randomk[:fraction], sign, powersgd[:rank]; prints bytes on the wire,\n"
    "                          compression ratio and effective busbw (weft_bench/codec.hpp)\n"
    "      --table-only        calibrate: only Auto's table (keep the file's alpha, beta, gamma)\n"
    "      --passes N          calibrate: sweeps over every size for Auto's table (default 3)\n"
    "  -q, --quiet             no table on stdout (files only)\n";

Options parse(int argc, char** argv) {
  Options o;
  int i = 1;
  if (argc > 1 && argv[1][0] != '-') {
    o.mode = argv[1];
    if (o.mode != "run" && o.mode != "calibrate" && o.mode != "project" && o.mode != "memcpy")
      throw UsageError("unknown command '" + o.mode + "' (accepted: run, calibrate, project, memcpy)");
    i = 2;
  }
  for (; i < argc; ++i) {
    std::string a = argv[i], v;
    auto eq = a.find('=');
    bool has_eq = a.rfind("--", 0) == 0 && eq != std::string::npos;
    if (has_eq) {
      v = a.substr(eq + 1);
      a.resize(eq);
    }
    auto val = [&]() -> std::string {
      if (has_eq) return v;
      if (i + 1 >= argc) throw UsageError(a + ": missing value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::cout << usage_text;
      std::exit(0);
    } else if (a == "-b" || a == "--minbytes") o.min_bytes = parse_bytes(a, val());
    else if (a == "-e" || a == "--maxbytes") {
      o.max_bytes = parse_bytes(a, val());
      o.max_given = true;
    }
    else if (a == "-f" || a == "--stepfactor") {
      std::string s = val();
      char* end = nullptr;
      o.factor = std::strtod(s.c_str(), &end);
      if (end == s.c_str() || *end || o.factor <= 1) throw UsageError(a + ": expected a number > 1, got '" + s + "'");
    } else if (a == "-i" || a == "--stepbytes") o.step_bytes = parse_bytes(a, val());
    else if (a == "-n" || a == "--iters") o.iters = static_cast<int>(parse_int(a, val(), 1, 1000000));
    else if (a == "-w" || a == "--warmup_iters") o.warmup = static_cast<int>(parse_int(a, val(), 0, 1000000));
    else if (a == "-c" || a == "--check") o.check = static_cast<int>(parse_int(a, val(), 0, 1));
    else if (a == "-o" || a == "--redop") o.redop = parse_redop(val());
    else if (a == "-d" || a == "--dtype") o.type = parse_dtype(val());
    else if (a == "-r" || a == "--root") o.root = static_cast<int>(parse_int(a, val(), 0, 1 << 20));
    else if (a == "--op") {
      o.ops.clear();
      o.ops_given = true;
      for (auto& s : split_list(val())) {
        if (s == "all") {
          for (int k = 0; k <= static_cast<int>(Collective::barrier); ++k) o.ops.push_back(static_cast<Collective>(k));
        } else {
          o.ops.push_back(parse_op(s));
        }
      }
      if (o.ops.empty()) throw UsageError("--op: empty list");
    } else if (a == "--algo") {
      o.algos.clear();
      for (auto& s : split_list(val())) {
        if (s == "all") {
          for (int k = 0; k < 7; ++k) o.algos.push_back(static_cast<Algo>(k));
        } else {
          o.algos.push_back(parse_algo(s));
        }
      }
      if (o.algos.empty()) throw UsageError("--algo: empty list");
    } else if (a == "--transport") {
      o.transport = val();
      if (o.transport == "threads") o.transport = "thread";
      if (o.transport != "thread" && o.transport != "mpi")
        throw UsageError("--transport: unknown transport '" + o.transport + "' (accepted: thread, mpi)");
    } else if (a == "--np") o.np = static_cast<int>(parse_int(a, val(), 1, 4096));
    else if (a == "--json") o.json = val();
    else if (a == "--csv") o.csv = val();
    else if (a == "--model") o.model_file = val();
    else if (a == "--bytes-budget") o.bytes_budget = parse_bytes(a, val());
    else if (a == "--ranks-per-node") o.ranks_per_node = static_cast<int>(parse_int(a, val(), 1, 1 << 20));
    else if (a == "-q" || a == "--quiet") o.quiet = true;
    else if (a == "--table-only") o.table_only = true;
    else if (a == "--passes") o.passes = static_cast<int>(parse_int(a, val(), 1, 100));
    else if (a == "--chunk") o.chunk = parse_bytes(a, val());
    else if (a == "--codec") o.codecs = split_list(val());
    else if (a == "--bind") {
      std::string b = val();
      if (b != "core" && b != "none") throw UsageError("--bind: unknown binding '" + b + "' (accepted: core, none)");
      o.bind = b == "core";
    }
    else throw UsageError("unknown option '" + a + "' (see --help)");
  }
  if (o.mode == "calibrate") {
    // Auto's table: the ops whose candidates run different schedules (for
    // broadcast, gather, scatter, alltoall and barrier, ring, tree, recursive
    // doubling and halving-doubling share one implementation), up to 64 MiB.
    if (!o.max_given) o.max_bytes = std::size_t{64} << 20;
    if (!o.ops_given)
      o.ops = {Collective::allreduce, Collective::reduce_scatter, Collective::allgather, Collective::reduce};
  }
  if (o.min_bytes > o.max_bytes) throw UsageError("-b/--minbytes is larger than -e/--maxbytes");
  for (Algo a : o.algos)
    if (a == Algo::mpi && o.transport != "mpi")
      throw UsageError("--algo mpi calls MPI's own collectives: it needs --transport mpi");
  if (o.transport == "mpi" && !WEFT_BENCH_MPI)
    throw UsageError("--transport mpi: this weft-bench was built without MPI (meson -Dmpi=enabled)");
  return o;
}

// ------------------------------------------------------------ data + check ----

template <class F>
decltype(auto) visit(dtype d, F&& f) {
  switch (d) {
    case dtype::f32: return f(float{});
    case dtype::f64: return f(double{});
    case dtype::f16: return f(weft::half{});
    case dtype::bf16: return f(weft::bfloat16{});
    case dtype::i32: return f(std::int32_t{});
    case dtype::i64: return f(std::int64_t{});
    case dtype::u8: return f(std::uint8_t{});
  }
  throw std::logic_error("unknown dtype");
}

template <class E>
E from_int(std::int64_t v) {
  if constexpr (std::is_same_v<E, weft::half> || std::is_same_v<E, weft::bfloat16>)
    return E(static_cast<float>(v));
  else if constexpr (std::is_integral_v<E>)
    return static_cast<E>(static_cast<std::make_unsigned_t<E>>(static_cast<std::uint64_t>(v)));  // wraps
  else
    return static_cast<E>(v);
}
template <class E>
bool same(E a, E b) {
  if constexpr (std::is_same_v<E, weft::half> || std::is_same_v<E, weft::bfloat16>)
    return static_cast<float>(a) == static_cast<float>(b);
  else
    return a == b;
}

// Inputs are small integers chosen so every partial result is exactly
// representable in every type (bf16 holds integers up to 256 exactly), in any
// combination order: #wrong is exact, not a tolerance.
std::int64_t reduce_input(ReduceOp op, int r, int p, std::size_t i) {
  const auto ii = static_cast<std::int64_t>(i % 1000003);
  switch (op) {
    case ReduceOp::sum: return (r + ii) % 3;
    case ReduceOp::prod:
      if (r < 8 && (ii + r) % 5 == 0) return 2;
      return (ii + 2 * r) % 3 == 0 ? -1 : 1;
    case ReduceOp::min:
    case ReduceOp::max: return (r * 13 + ii * 7) % 17;
    case ReduceOp::avg: {  // b_i + d_r with sum_r d_r = 0: the average is b_i exactly
      std::int64_t b = ii % 7 + 1;
      if (p % 2 == 1 && r == p - 1) return b;
      return b + (r % 2 == 0 ? 1 : -1);
    }
  }
  return 0;
}
std::int64_t reduce_expected(ReduceOp op, int p, std::size_t i) {
  std::int64_t acc = reduce_input(op, 0, p, i);
  for (int r = 1; r < p; ++r) {
    std::int64_t x = reduce_input(op, r, p, i);
    switch (op) {
      case ReduceOp::sum:
      case ReduceOp::avg: acc += x; break;
      case ReduceOp::prod: acc *= x; break;
      case ReduceOp::min: acc = std::min(acc, x); break;
      case ReduceOp::max: acc = std::max(acc, x); break;
    }
  }
  return op == ReduceOp::avg ? acc / p : acc;
}
// Data moved without combining: distinct per (rank, index).
std::int64_t move_input(int r, std::size_t i) { return static_cast<std::int64_t>((static_cast<std::size_t>(r) * 131 + i) % 251); }

// One call's buffers: where input and output live for out-of-place or in-place.
struct Layout {
  void* in = nullptr;
  void* out = nullptr;
};

// Buffer elements per rank the op needs (send and receive side).
std::size_t total_elems(Collective op, std::size_t n, int p) {
  switch (op) {
    case Collective::allreduce:
    case Collective::broadcast:
    case Collective::reduce: return n;
    default: return n * static_cast<std::size_t>(p);
  }
}

Layout layout(Collective op, bool in_place, std::byte* send, std::byte* recv, std::size_t n, std::size_t es, int r,
              int root) {
  const std::size_t blk = n * es;
  if (!in_place) return {send, recv};
  switch (op) {
    case Collective::reduce_scatter: return {recv, recv + static_cast<std::size_t>(r) * blk};
    case Collective::allgather: return {recv + static_cast<std::size_t>(r) * blk, recv};
    case Collective::gather: return {r == root ? recv + static_cast<std::size_t>(root) * blk : recv, recv};
    case Collective::scatter: return {recv, r == root ? recv + static_cast<std::size_t>(root) * blk : recv};
    default: return {recv, recv};
  }
}

// Fill the input of one call (rank r of p).
void fill(Collective op, dtype t, ReduceOp redop, const Layout& L, std::size_t n, int r, int p, int root) {
  visit(t, [&](auto tag) {
    using E = decltype(tag);
    E* in = static_cast<E*>(L.in);
    switch (op) {
      case Collective::allreduce:
      case Collective::reduce:
        for (std::size_t i = 0; i < n; ++i) in[i] = from_int<E>(reduce_input(redop, r, p, i));
        break;
      case Collective::reduce_scatter:
        for (std::size_t i = 0; i < n * static_cast<std::size_t>(p); ++i) in[i] = from_int<E>(reduce_input(redop, r, p, i));
        break;
      case Collective::allgather:
      case Collective::gather:
        for (std::size_t i = 0; i < n; ++i) in[i] = from_int<E>(move_input(r, i));
        break;
      case Collective::broadcast: {
        E* buf = static_cast<E*>(L.out);
        for (std::size_t i = 0; i < n; ++i) buf[i] = from_int<E>(r == root ? move_input(root, i) : 0);
        break;
      }
      case Collective::scatter:
        if (r == root)
          for (std::size_t i = 0; i < n * static_cast<std::size_t>(p); ++i) in[i] = from_int<E>(move_input(root, i));
        break;
      case Collective::alltoall:
        for (std::size_t i = 0; i < n * static_cast<std::size_t>(p); ++i) in[i] = from_int<E>(move_input(r, i));
        break;
      default: break;
    }
  });
}

// Wrong elements in this rank's output of one call.
std::int64_t count_wrong(Collective op, dtype t, ReduceOp redop, const Layout& L, std::size_t n, int r, int p,
                         int root) {
  return visit(t, [&](auto tag) -> std::int64_t {
    using E = decltype(tag);
    const E* out = static_cast<const E*>(L.out);
    std::int64_t wrong = 0;
    auto chk = [&](std::size_t k, std::int64_t want) { wrong += !same(out[k], from_int<E>(want)); };
    const auto P = static_cast<std::size_t>(p);
    switch (op) {
      case Collective::allreduce:
        for (std::size_t i = 0; i < n; ++i) chk(i, reduce_expected(redop, p, i));
        break;
      case Collective::reduce:
        if (r == root)
          for (std::size_t i = 0; i < n; ++i) chk(i, reduce_expected(redop, p, i));
        break;
      case Collective::reduce_scatter:
        for (std::size_t i = 0; i < n; ++i) chk(i, reduce_expected(redop, p, static_cast<std::size_t>(r) * n + i));
        break;
      case Collective::allgather:
        for (std::size_t k = 0; k < P; ++k)
          for (std::size_t i = 0; i < n; ++i) chk(k * n + i, move_input(static_cast<int>(k), i));
        break;
      case Collective::gather:
        if (r == root)
          for (std::size_t k = 0; k < P; ++k)
            for (std::size_t i = 0; i < n; ++i) chk(k * n + i, move_input(static_cast<int>(k), i));
        break;
      case Collective::broadcast:
        for (std::size_t i = 0; i < n; ++i) chk(i, move_input(root, i));
        break;
      case Collective::scatter:
        for (std::size_t i = 0; i < n; ++i) chk(i, move_input(root, static_cast<std::size_t>(r) * n + i));
        break;
      case Collective::alltoall:
        for (std::size_t k = 0; k < P; ++k)
          for (std::size_t i = 0; i < n; ++i) chk(k * n + i, move_input(static_cast<int>(k), static_cast<std::size_t>(r) * n + i));
        break;
      default: break;
    }
    return wrong;
  });
}

template <class Comm>
void invoke(Comm& comm, Collective op, dtype t, ReduceOp redop, const Layout& L, std::size_t n, int root) {
  visit(t, [&](auto tag) {
    using E = decltype(tag);
    const E* in = static_cast<const E*>(L.in);
    E* out = static_cast<E*>(L.out);
    switch (op) {
      case Collective::allreduce: comm.allreduce(in, out, n, redop); break;
      case Collective::reduce_scatter: comm.reduce_scatter(in, out, n, redop); break;
      case Collective::allgather: comm.allgather(in, out, n); break;
      case Collective::broadcast: comm.broadcast(out, n, root); break;
      case Collective::reduce: comm.reduce(in, out, n, root, redop); break;
      case Collective::gather: comm.gather(in, out, n, root); break;
      case Collective::scatter: comm.scatter(in, out, n, root); break;
      case Collective::alltoall: comm.alltoall(in, out, n); break;
      case Collective::barrier: comm.barrier(); break;
      default: break;
    }
  });
}

double bus_factor(Collective op, int p) {
  const double f = p > 0 ? static_cast<double>(p - 1) / p : 0;
  switch (op) {
    case Collective::allreduce: return 2 * f;
    case Collective::reduce_scatter:
    case Collective::allgather:
    case Collective::gather:
    case Collective::scatter:
    case Collective::alltoall: return f;
    default: return 1;
  }
}

// ------------------------------------------------------------ measurement ----

struct Sample {  // one placement (out-of-place or in-place) of one row
  double time_us = 0, p50_us = 0, p99_us = 0, algbw = 0, busbw = 0;
  std::int64_t wrong = -1;  // -1: not checked
  double skew_us = 0;
  int last_rank = -1;
  bool run = false;
};

struct Row {
  std::string transport, algo, chosen;  // chosen: what Auto picked
  Collective op = Collective::allreduce;
  dtype type = dtype::f32;
  ReduceOp redop = ReduceOp::sum;
  int root = -1, ranks = 0, iters = 0;
  std::size_t bytes = 0, count = 0;
  double pred_us = 0;
  Sample oop, ip;
};

std::vector<std::size_t> sizes(const Options& o) {
  std::vector<std::size_t> s;
  for (std::size_t b = std::max<std::size_t>(o.min_bytes, 1); b <= o.max_bytes;) {
    s.push_back(b);
    std::size_t next = o.step_bytes ? b + o.step_bytes : static_cast<std::size_t>(std::ceil(b * o.factor));
    if (next <= b) break;
    b = next;
  }
  return s;
}

double seconds_since_boot(Clock::time_point t) { return std::chrono::duration<double>(t.time_since_epoch()).count(); }

// Cost of `a` as its policy states it (Auto: the cheapest candidate).
double predicted(Algo a, Collective op, std::size_t bytes, int p, const wc::CostModel& m) {
  switch (a) {
    case Algo::ring: return wc::Ring::cost(op, bytes, p, m);
    case Algo::tree: return wc::Tree::cost(op, bytes, p, m);
    case Algo::recursive_doubling: return wc::RecursiveDoubling::cost(op, bytes, p, m);
    case Algo::halving_doubling: return wc::HalvingDoubling::cost(op, bytes, p, m);
    case Algo::hierarchical: return wc::Hierarchical<>::cost(op, bytes, p, m);
    case Algo::native:
    case Algo::mpi: return wc::Native::cost(op, bytes, p, m);
    case Algo::automatic: return wc::Auto::cost(op, bytes, p, m);
  }
  return 0;
}

void print_header(const Options& o, const char* tname, int p, Algo a) {
  std::printf("#\n# weft-bench  transport %s  ranks %d  algorithm %s  iters %d  warmup %d  check %d\n#\n", tname, p,
              name_of(a), o.iters, o.warmup, o.check);
  std::printf("#%67s %-33s  %-33s  %-9s %-9s %-9s %-14s\n", "", "out-of-place", "in-place", "", "", "", "");
  std::printf("# %10s %12s %8s %6s %5s  %10s %7s %7s %6s  %10s %7s %7s %6s  %9s %9s %9s %9s %4s  %-14s %s\n", "size",
              "count", "type", "redop", "root", "time", "algbw", "busbw", "#wrong", "time", "algbw", "busbw",
              "#wrong", "p50", "p99", "pred", "skew", "last", "op", "auto->");
  std::printf("# %10s %12s %8s %6s %5s  %10s %7s %7s %6s  %10s %7s %7s %6s  %9s %9s %9s %9s %4s\n", "(B)",
              "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(us)",
              "(us)", "(us)", "");
  std::fflush(stdout);
}

// One selected algorithm: its communicator (on its own split of the
// transport) behind a call that runs one collective, so the measurement loop
// can alternate between algorithms of different policy types.
struct Runner {
  Algo algo = Algo::ring;
  std::shared_ptr<void> owner;  // the communicator
  std::function<void(Collective, const Layout&, std::size_t, int)> call;
  std::function<std::string(Collective, std::size_t)> chosen;  // Auto's pick, "" for the others
};

void print_row(const Row& row) {
  auto sm = [](const Sample& x, char* buf, std::size_t len) {
    if (!x.run)
      std::snprintf(buf, len, "%10s %7s %7s %6s", "n/a", "", "", "");
    else if (x.wrong < 0)
      std::snprintf(buf, len, "%10.2f %7.2f %7.2f %6s", x.time_us, x.algbw, x.busbw, "N/A");
    else
      std::snprintf(buf, len, "%10.2f %7.2f %7.2f %6lld", x.time_us, x.algbw, x.busbw,
                    static_cast<long long>(x.wrong));
  };
  char a[96], b[96];
  sm(row.oop, a, sizeof a);
  sm(row.ip, b, sizeof b);
  std::printf("%12zu %12zu %8s %6s %5d  %s  %s  %9.2f %9.2f %9.2f %9.2f %4d  %-14s %s\n", row.bytes, row.count,
              weft::dtype_name(row.type), wc::is_reduction(row.op) ? wc::reduce_op_name(row.redop) : "none", row.root, a,
              b, row.oop.p50_us, row.oop.p99_us, row.pred_us, row.oop.skew_us, row.oop.last_rank,
              wc::collective_name(row.op), row.chosen.c_str());
}

// Runs every (op, size, placement) of every selected algorithm. The
// algorithms take turns at each size: the iterations of one (op, size,
// placement) are split into up to five rounds, each round running every
// algorithm (rotating who goes first, one warm-up call each) for its share,
// so load from other processes and the state of the shared buffers fall on
// all algorithms alike and their medians can be compared within the run.
// `ctl` is a Ring communicator on a separate transport group that gathers
// timings and counts.
template <class Ctl>
void measure(std::vector<Runner>& runners, Ctl& ctl, const char* tname, const Options& o,
             const wc::CostModel& model, std::vector<Row>& rows) {
  const int p = ctl.size(), r = ctl.rank();
  const std::size_t na = runners.size();
  const std::size_t es = weft::dtype_size(o.type);
  const auto all_sizes = sizes(o);
  std::size_t max_elems = 0;
  for (std::size_t b : all_sizes) max_elems = std::max(max_elems, (b + es - 1) / es);
  max_elems = std::max<std::size_t>(max_elems, 1) + static_cast<std::size_t>(p);
  std::vector<std::byte> send(max_elems * es), recv(max_elems * es);
  std::vector<std::vector<Row>> by_algo(na);

  for (Collective op : o.ops) {
    const bool rooted = wc::has_root(op);
    const int root = rooted ? o.root : -1;
    if (rooted && root >= p)
      throw UsageError("-r/--root: root " + std::to_string(root) + " is not a rank of " + std::to_string(p));
    std::vector<std::size_t> op_sizes = op == Collective::barrier ? std::vector<std::size_t>{0} : all_sizes;
    for (std::size_t S : op_sizes) {
      std::size_t n = 0;
      if (op != Collective::barrier) {
        n = total_elems(op, 1, p) == 1 ? S / es : S / (es * static_cast<std::size_t>(p));
        if (n == 0) continue;
      }
      const std::size_t bytes = total_elems(op, n, p) * es;
      const int iters = static_cast<int>(std::clamp<std::size_t>(o.bytes_budget / std::max<std::size_t>(bytes, 1), 3,
                                                                 static_cast<std::size_t>(o.iters)));
      const int warm = std::min(o.warmup, std::max(1, iters / 2));
      const int rounds = std::min(iters, 5);
      std::vector<Row> row(na);
      for (std::size_t a = 0; a < na; ++a) {
        Row& w = row[a];
        w.transport = tname;
        w.algo = name_of(runners[a].algo);
        w.op = op;
        w.type = o.type;
        w.redop = o.redop;
        w.root = root;
        w.ranks = p;
        w.bytes = bytes;
        w.count = n;
        w.pred_us = predicted(runners[a].algo, op, bytes, p, model) * 1e6;
        w.chosen = runners[a].chosen(op, bytes);
        w.iters = iters;
      }
      for (int placement = 0; placement < 2; ++placement) {
        const bool in_place = placement == 1;
        const Layout L = layout(op, in_place, send.data(), recv.data(), n, es, r, root);
        fill(op, o.type, o.redop, L, n, r, p, root < 0 ? 0 : root);
        std::vector<std::vector<double>> entry(na, std::vector<double>(static_cast<std::size_t>(iters))),
            dur(na, std::vector<double>(static_cast<std::size_t>(iters)));
        for (int round = 0, done = 0; round < rounds; ++round) {
          const int share = (iters - done) / (rounds - round);
          for (std::size_t v = 0; v < na; ++v) {
            const std::size_t a = (v + static_cast<std::size_t>(round)) % na;
            for (int k = 0; k < (round == 0 ? warm : 1); ++k) runners[a].call(op, L, n, root);
            ctl.barrier();
            for (int k = done; k < done + share; ++k) {
              auto t0 = Clock::now();
              runners[a].call(op, L, n, root);
              auto t1 = Clock::now();
              entry[a][static_cast<std::size_t>(k)] = seconds_since_boot(t0);
              dur[a][static_cast<std::size_t>(k)] = std::chrono::duration<double>(t1 - t0).count();
            }
          }
          done += share;
        }
        for (std::size_t a = 0; a < na; ++a) {
          Sample& s = in_place ? row[a].ip : row[a].oop;
          std::int64_t wrong = -1;
          if (o.check && op != Collective::barrier) {
            fill(op, o.type, o.redop, L, n, r, p, root < 0 ? 0 : root);
            runners[a].call(op, L, n, root);
            std::int64_t w = count_wrong(op, o.type, o.redop, L, n, r, p, root < 0 ? 0 : root);
            ctl.allreduce(&w, &w, 1);
            wrong = w;
          }
          std::vector<double> mine(2 * static_cast<std::size_t>(iters));
          std::copy(entry[a].begin(), entry[a].end(), mine.begin());
          std::copy(dur[a].begin(), dur[a].end(), mine.begin() + iters);
          std::vector<double> all(mine.size() * static_cast<std::size_t>(p), 0);
          ctl.allgather(mine, all);
          // iteration k: the slowest rank's duration; skew = last entry - first entry.
          std::vector<double> t(static_cast<std::size_t>(iters));
          double sum = 0;
          for (int k = 0; k < iters; ++k) {
            double worst = 0, first = 1e300, last = -1e300;
            int last_rank = 0;
            for (int q = 0; q < p; ++q) {
              const double* b = all.data() + static_cast<std::size_t>(q) * mine.size();
              worst = std::max(worst, b[iters + k]);
              first = std::min(first, b[k]);
              if (b[k] > last) {
                last = b[k];
                last_rank = q;
              }
            }
            t[static_cast<std::size_t>(k)] = worst;
            sum += worst;
            if (last - first > s.skew_us * 1e-6 || s.last_rank < 0) {
              s.skew_us = (last - first) * 1e6;
              s.last_rank = last_rank;
            }
          }
          std::sort(t.begin(), t.end());
          auto pct = [&](double q) {
            return t[std::min(t.size() - 1, static_cast<std::size_t>(std::ceil(q * static_cast<double>(t.size())) - 1))];
          };
          s.time_us = sum / iters * 1e6;
          s.p50_us = pct(0.5) * 1e6;
          s.p99_us = pct(0.99) * 1e6;
          s.algbw = s.time_us > 0 ? static_cast<double>(bytes) / (s.time_us * 1e-6) / 1e9 : 0;
          s.busbw = s.algbw * bus_factor(op, p);
          s.wrong = wrong;
          s.run = true;
        }
      }
      if (r == 0 && !o.quiet && na > 1) {
        std::printf("# measured %-14s %12zu B\n", wc::collective_name(op), bytes);  // progress; tables follow
        std::fflush(stdout);
      }
      for (std::size_t a = 0; a < na; ++a) by_algo[a].push_back(std::move(row[a]));
    }
  }
  for (std::size_t a = 0; a < na; ++a) {
    if (r == 0 && !o.quiet) {
      print_header(o, tname, p, runners[a].algo);
      for (const Row& w : by_algo[a]) print_row(w);
      std::fflush(stdout);
    }
    if (r == 0) rows.insert(rows.end(), by_algo[a].begin(), by_algo[a].end());
  }
}

// ------------------------------------------------------------ MPI's own ----
#if WEFT_BENCH_MPI
// MPI's blocking collectives, as the peer a user would otherwise call
// directly (no weft deadline: MPI_Allreduce and friends block).
struct MpiDirect {
  static constexpr const char* name = "mpi";
  template <class Ctx>
  void allreduce(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    check(MPI_Allreduce(in == out ? MPI_IN_PLACE : in, out, cnt(n), type(ctx), op(ctx), comm(ctx)));
  }
  template <class Ctx>
  void reduce_scatter(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    const bool alias = static_cast<const std::byte*>(in) + static_cast<std::size_t>(ctx.rank()) * n * es(ctx) == out;
    check(MPI_Reduce_scatter_block(alias ? MPI_IN_PLACE : in, alias ? const_cast<void*>(in) : out, cnt(n), type(ctx),
                                   op(ctx), comm(ctx)));
    if (alias) std::memmove(out, in, n * es(ctx));
  }
  template <class Ctx>
  void allgather(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    const bool ip = static_cast<const std::byte*>(out) + static_cast<std::size_t>(ctx.rank()) * n * es(ctx) == in;
    check(MPI_Allgather(ip ? MPI_IN_PLACE : in, cnt(n), type(ctx), out, cnt(n), type(ctx), comm(ctx)));
  }
  template <class Ctx>
  void broadcast(Ctx& ctx, void* buf, std::size_t n, int root) const {
    check(MPI_Bcast(buf, cnt(n), type(ctx), root, comm(ctx)));
  }
  template <class Ctx>
  void reduce(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    check(MPI_Reduce(ctx.rank() == root && in == out ? MPI_IN_PLACE : in, out, cnt(n), type(ctx), op(ctx), root,
                     comm(ctx)));
  }
  template <class Ctx>
  void gather(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    const bool ip = ctx.rank() == root && static_cast<const std::byte*>(out) + static_cast<std::size_t>(root) * n * es(ctx) == in;
    check(MPI_Gather(ip ? MPI_IN_PLACE : in, cnt(n), type(ctx), out, cnt(n), type(ctx), root, comm(ctx)));
  }
  template <class Ctx>
  void scatter(Ctx& ctx, const void* in, void* out, std::size_t n, int root) const {
    const bool ip = ctx.rank() == root && static_cast<const std::byte*>(in) + static_cast<std::size_t>(root) * n * es(ctx) == out;
    check(MPI_Scatter(in, cnt(n), type(ctx), ip ? MPI_IN_PLACE : out, cnt(n), type(ctx), root, comm(ctx)));
  }
  template <class Ctx>
  void alltoall(Ctx& ctx, const void* in, void* out, std::size_t n) const {
    check(MPI_Alltoall(in == out ? MPI_IN_PLACE : in, cnt(n), type(ctx), out, cnt(n), type(ctx), comm(ctx)));
  }
  template <class Ctx>
  void barrier(Ctx& ctx) const {
    check(MPI_Barrier(comm(ctx)));
  }
  static double cost(Collective c, std::size_t bytes, int p, const wc::CostModel& m) {
    return wc::Native::cost(c, bytes, p, m);
  }

 private:
  static void check(int rc) {
    if (rc != MPI_SUCCESS) throw std::runtime_error("MPI collective failed with code " + std::to_string(rc));
  }
  static int cnt(std::size_t n) {
    if (n > static_cast<std::size_t>(INT32_MAX)) throw std::runtime_error("--algo mpi: count exceeds MPI's int");
    return static_cast<int>(n);
  }
  template <class Ctx>
  static MPI_Comm comm(Ctx& ctx) { return ctx.transport().comm(); }
  template <class Ctx>
  static std::size_t es(Ctx& ctx) { return weft::dtype_size(ctx.call.type); }
  template <class Ctx>
  static MPI_Datatype type(Ctx& ctx) {
    switch (ctx.call.type) {
      case dtype::f32: return MPI_FLOAT;
      case dtype::f64: return MPI_DOUBLE;
      case dtype::i32: return MPI_INT32_T;
      case dtype::i64: return MPI_INT64_T;
      case dtype::u8: return MPI_UINT8_T;
      default: throw UsageError("--algo mpi: MPI has no half or bfloat16 type (use -d float, double, int32, int64, uint8)");
    }
  }
  template <class Ctx>
  static MPI_Op op(Ctx& ctx) {
    switch (ctx.call.reduce) {
      case ReduceOp::sum: return MPI_SUM;
      case ReduceOp::prod: return MPI_PROD;
      case ReduceOp::min: return MPI_MIN;
      case ReduceOp::max: return MPI_MAX;
      default: throw UsageError("--algo mpi: MPI has no avg reduction (use -o sum, prod, min, max)");
    }
  }
};
static_assert(wc::AlgorithmFor<MpiDirect, wc::MpiTransport>);
#endif

// Runs f(policy) with each selected algorithm's policy object.
template <class T, class F>
void with_policy(Algo a, const wc::CostModel& model, std::size_t chunk, F&& f) {
  wc::Ring ring;
  wc::Tree tree;
  wc::HalvingDoubling hd;
  if (chunk) ring.chunk_bytes = tree.chunk_bytes = hd.chunk_bytes = chunk;
  switch (a) {
    case Algo::ring: f(ring); return;
    case Algo::tree: f(tree); return;
    case Algo::recursive_doubling: f(wc::RecursiveDoubling{}); return;
    case Algo::halving_doubling: f(hd); return;
    case Algo::hierarchical: {
      wc::Hierarchical<> h;
      h.intra = h.inter = ring;
      f(h);
      return;
    }
    case Algo::native: f(wc::Native{}); return;
    case Algo::automatic: {
      wc::Auto au;
      au.model = model;
      std::get<wc::Ring>(au.candidates) = ring;
      std::get<wc::Tree>(au.candidates) = tree;
      std::get<wc::HalvingDoubling>(au.candidates) = hd;
      f(au);
      return;
    }
    case Algo::mpi:
#if WEFT_BENCH_MPI
      if constexpr (std::is_same_v<T, wc::MpiTransport>) {
        f(MpiDirect{});
        return;
      }
#endif
      throw UsageError("--algo mpi needs --transport mpi");
  }
}

template <class T>
void run_all(T& t, const Options& o, const wc::CostModel& model, const char* tname, std::vector<Row>& rows) {
  const auto dl = wc::deadline_after(std::chrono::seconds(60));
  T ctl_t = t.split(0, t.rank(), dl);
  wc::Communicator<wc::Ring, T> ctl{ctl_t};
  std::vector<Runner> runners;
  for (Algo a : o.algos)
    with_policy<T>(a, model, o.chunk, [&](auto policy) {
      using P = decltype(policy);
      auto comm = std::make_shared<wc::Communicator<P, T>>(t.split(0, t.rank(), dl), policy);
      Runner run;
      run.algo = a;
      run.owner = comm;
      run.call = [c = comm.get(), &o](Collective op, const Layout& L, std::size_t n, int root) {
        invoke(*c, op, o.type, o.redop, L, n, root);
      };
      run.chosen = [policy, size = t.size(), name = std::string(t.name())](Collective op, std::size_t bytes) {
        std::string c;
        if constexpr (std::is_same_v<P, wc::Auto>) c = policy.choice(op, bytes, size, name);
        return c;
      };
      runners.push_back(std::move(run));
    });
  measure(runners, ctl, tname, o, model, rows);
}

// ------------------------------------------------------------ reports ----

void write_csv(const std::string& path, const std::vector<Row>& rows) {
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write --csv file '" + path + "'");
  f << "impl,transport,algo,op,type,redop,root,ranks,size,count,placement,time_us,p50_us,p99_us,algbw_GBps,"
       "busbw_GBps,wrong,pred_us,skew_us,last_rank,auto_choice\n";
  for (const Row& r : rows)
    for (int k = 0; k < 2; ++k) {
      const Sample& s = k ? r.ip : r.oop;
      if (!s.run) continue;
      f << "weft," << r.transport << ',' << r.algo << ',' << wc::collective_name(r.op) << ','
        << weft::dtype_name(r.type) << ',' << (wc::is_reduction(r.op) ? wc::reduce_op_name(r.redop) : "none") << ','
        << r.root << ',' << r.ranks << ',' << r.bytes << ',' << r.count << ',' << (k ? "ip" : "oop") << ','
        << s.time_us << ',' << s.p50_us << ',' << s.p99_us << ',' << s.algbw << ',' << s.busbw << ','
        << (s.wrong < 0 ? std::string() : std::to_string(s.wrong)) << ',' << r.pred_us << ',' << s.skew_us << ','
        << s.last_rank << ',' << r.chosen << '\n';
    }
}

void write_json(const std::string& path, const std::vector<Row>& rows) {
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write --json file '" + path + "'");
  f << "{\"impl\": \"weft\", \"rows\": [\n";
  bool first = true;
  for (const Row& r : rows)
    for (int k = 0; k < 2; ++k) {
      const Sample& s = k ? r.ip : r.oop;
      if (!s.run) continue;
      f << (first ? "  " : ",\n  ");
      first = false;
      f << "{\"impl\": \"weft\", \"transport\": \"" << r.transport << "\", \"algo\": \"" << r.algo << "\", \"op\": \""
        << wc::collective_name(r.op) << "\", \"type\": \"" << weft::dtype_name(r.type) << "\", \"redop\": \""
        << (wc::is_reduction(r.op) ? wc::reduce_op_name(r.redop) : "none") << "\", \"root\": " << r.root
        << ", \"ranks\": " << r.ranks << ", \"size\": " << r.bytes << ", \"count\": " << r.count
        << ", \"placement\": \"" << (k ? "ip" : "oop") << "\", \"time_us\": " << s.time_us
        << ", \"p50_us\": " << s.p50_us << ", \"p99_us\": " << s.p99_us << ", \"algbw_GBps\": " << s.algbw
        << ", \"busbw_GBps\": " << s.busbw << ", \"wrong\": " << (s.wrong < 0 ? std::string("null") : std::to_string(s.wrong))
        << ", \"pred_us\": " << r.pred_us << ", \"skew_us\": " << s.skew_us << ", \"last_rank\": " << s.last_rank
        << ", \"auto_choice\": \"" << r.chosen << "\"}";
    }
  f << "\n]}\n";
}

// Auto against the best measured candidate, per (op, size). Medians (p50),
// not means, so one preempted iteration on a shared machine does not decide:
// Auto's choice is judged by the p50 its chosen algorithm measured in its own
// run (Auto's own p50 is shown beside it).
bool auto_table(const std::vector<Row>& rows) {
  bool any = false, all_ok = true;
  for (const Row& a : rows) {
    if (a.algo != "auto") continue;
    const Row* best = nullptr;
    const Row* chosen = nullptr;
    for (const Row& r : rows) {
      if (r.op != a.op || r.bytes != a.bytes || r.transport != a.transport || r.algo == "auto") continue;
      if (r.algo != "ring" && r.algo != "tree" && r.algo != "recursive_doubling" && r.algo != "halving_doubling")
        continue;  // Auto's candidates
      if (!best || r.oop.p50_us < best->oop.p50_us) best = &r;
      if (r.algo == a.chosen) chosen = &r;
    }
    if (!best) continue;
    if (!any) {
      std::printf("#\n# Auto vs the best measured candidate (ring, tree, recursive_doubling, halving_doubling), p50 times\n");
      std::printf("# %-14s %12s  %-18s %10s  %-18s %10s %10s %7s %s\n", "op", "size", "best", "best_us", "auto_choice",
                  "choice_us", "auto_us", "ratio", "within10%");
      any = true;
    }
    double ct = chosen ? chosen->oop.p50_us : a.oop.p50_us;
    double ratio = ct / best->oop.p50_us;
    bool ok = ratio <= 1.10;
    all_ok = all_ok && ok;
    std::printf("  %-14s %12zu  %-18s %10.2f  %-18s %10.2f %10.2f %7.3f %s\n", wc::collective_name(a.op), a.bytes,
                best->algo.c_str(), best->oop.p50_us, a.chosen.c_str(), ct, a.oop.p50_us, ratio, ok ? "yes" : "NO");
  }
  if (any) std::printf("auto_within_10pct_everywhere: %s\n", all_ok ? "yes" : "no");
  return all_ok;
}

// ------------------------------------------------------------ calibrate ----

// The measurement is comm::calibrate() (weft/comm/tuning/calibrate.hpp): the
// fitted constants and Auto's table for this rank count, the same on every
// rank. Here: the options from the command line, and the printing.
template <class T>
wc::CostModel calibrate(T& t, const Options& o, wc::CostModel base) {
  wc::Auto au;
  if (o.chunk) {
    std::get<wc::Ring>(au.candidates).chunk_bytes = o.chunk;
    std::get<wc::Tree>(au.candidates).chunk_bytes = o.chunk;
    std::get<wc::HalvingDoubling>(au.candidates).chunk_bytes = o.chunk;
  }
  wc::CalibrateOptions co;
  co.ops = o.ops;
  co.sizes = sizes(o);
  co.type = o.type;
  co.reduce = o.redop;
  co.root = o.root;
  co.passes = o.passes;
  co.fit_constants = !o.table_only;
  if (!o.quiet)
    co.log = [](const std::string& line) {
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    };
  wc::CostModel m = wc::calibrate(t, au, base, co);
  if (t.rank() == 0 && co.fit_constants)
    std::printf("calibrated %s: alpha %.3g s  beta %.3g s/B (%.2f GB/s)  gamma %.3g s/B (%.2f GB/s)\n", t.name(),
                m.alpha, m.beta, 1e-9 / m.beta, m.gamma, 1e-9 / m.gamma);
  std::fflush(stdout);
  return m;
}

// ------------------------------------------------------------ project ----

// Beyond one machine: nodes of --ranks-per-node ranks. Flat algorithms
// (ring, tree, recursive doubling, halving-doubling) are charged the
// inter-node constants for every step once p exceeds a node (their schedules
// cross node boundaries at every step, so the slowest link paces them);
// hierarchical uses the intra-node constants inside a node and the inter-node
// ones across (Hierarchical<Ring, Ring>::cost).
void project(const wc::CostModel& m0, const Options& o, const char* tname) {
  wc::CostModel m = m0;
  m.ranks_per_node = o.ranks_per_node;
  wc::CostModel flat = m;
  flat.alpha = m.alpha_inter;
  flat.beta = m.beta_inter;
  const std::size_t sz[] = {8, 64 << 10, 1 << 20, 64 << 20, 256u << 20};
  const Algo algos[] = {Algo::ring, Algo::tree, Algo::recursive_doubling, Algo::halving_doubling, Algo::hierarchical};
  std::printf("# allreduce projection from the [%s] cost model: intra-node alpha %.3g s, beta %.3g s/B, gamma %.3g s/B;\n"
              "# %d ranks per node; inter-node alpha_inter %.3g s, beta_inter %.3g s/B (edit the file or recalibrate\n"
              "# on a cluster: one machine cannot measure them). Times in us, busbw in GB/s.\n",
              tname, m.alpha, m.beta, m.gamma, m.ranks_per_node, m.alpha_inter, m.beta_inter);
  std::printf("# %6s %10s", "ranks", "size");
  for (Algo a : algos) std::printf(" %14s %7s", name_of(a) == std::string("recursive_doubling") ? "rec_doubling" : name_of(a) == std::string("halving_doubling") ? "halv_doubling" : name_of(a), "busbw");
  std::printf("\n");
  for (int p = 8; p <= 4096; p *= 2)
    for (std::size_t S : sz) {
      std::printf("  %6d %10s", p, (S >= (1u << 20) ? std::to_string(S >> 20) + "MiB" : S >= 1024 ? std::to_string(S >> 10) + "KiB" : std::to_string(S) + "B").c_str());
      for (Algo a : algos) {
        const wc::CostModel& mm = a == Algo::hierarchical || p <= m.ranks_per_node ? m : flat;
        double t = predicted(a, Collective::allreduce, S, p, mm);
        double bus = static_cast<double>(S) / t / 1e9 * bus_factor(Collective::allreduce, p);
        std::printf(" %14.1f %7.3f", t * 1e6, bus);
      }
      std::printf("\n");
    }
}

// ------------------------------------------------------------ memcpy ----

void memcpy_bw(const Options& o) {
  const std::size_t n = std::max<std::size_t>(o.max_bytes, 1 << 20);
  std::vector<std::byte> a(n, std::byte{1}), b(n);
  std::vector<double> t;
  for (int k = 0; k < std::max(5, o.iters / 2); ++k) {
    auto t0 = Clock::now();
    std::memcpy(b.data(), a.data(), n);
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    a[static_cast<std::size_t>(k) % n] = b[n - 1];
  }
  std::sort(t.begin(), t.end());
  std::printf("memcpy_bytes: %zu\nmemcpy_GBps: %.3f\n", n, static_cast<double>(n) / t[0] / 1e9);
}

wc::CostModel model_for(const Options& o, const char* section, wc::CostModel fallback) {
  if (o.model_file.empty() || (o.mode == "calibrate" && !std::ifstream(o.model_file).good())) return fallback;
  const wc::CostFile f = wc::CostFile::load(o.model_file);
  const wc::CostModel* m = f.find(section);
  if (!m) {
    std::fprintf(stderr, "weft-bench: %s has no [%s] section; using built-in constants\n", o.model_file.c_str(),
                 section);
    return fallback;
  }
  return *m;
}

// Writes one transport's section: the fitted constants, and the measured
// decisions merged with the file's (those for an (op, ranks) measured now
// replace the old ones; other rank counts are kept, so calibrating --np 2
// and --np 4 into one file keeps both tables).
void save_model(const Options& o, const char* section, const wc::CostModel& m) {
  std::string path = o.model_file.empty() ? std::string("weft-cost-model.txt") : o.model_file;
  wc::CostFile f;
  if (std::ifstream(path).good()) f = wc::CostFile::load(path);
  std::vector<wc::Decision> kept;
  if (const wc::CostModel* old = f.find(section))
    for (const wc::Decision& d : old->decisions) {
      bool replaced = false;
      for (const wc::Decision& n : m.decisions) replaced = replaced || (n.op == d.op && n.ranks == d.ranks);
      if (!replaced) kept.push_back(d);
    }
  wc::CostModel& out = f.sections[section];
  out = m;
  out.decisions.insert(out.decisions.begin(), kept.begin(), kept.end());
  f.save(path);
  std::printf("wrote [%s] to %s\n", section, path.c_str());
}

template <class T>
void run_mode(T& t, const Options& o, const char* section, wc::CostModel fallback, std::vector<Row>& rows) {
  if (o.mode == "calibrate") {
    if (t.size() < 2) throw UsageError("calibrate needs at least 2 ranks (--np 2, or mpirun -np 2)");
    wc::CostModel base = model_for(o, section, fallback);
    bool had = false;
    if (!o.model_file.empty() && std::ifstream(o.model_file).good())
      had = wc::CostFile::load(o.model_file).find(section) != nullptr;
    if (!had) {  // not measurable on one machine: start from a typical fabric (edit the file on a cluster)
      base.alpha_inter = wc::CostModel::mpi().alpha_inter;
      base.beta_inter = wc::CostModel::mpi().beta_inter;
    }
    // Constants come from a ping-pong between ranks 0 and 1; with more ranks
    // than cores the others' waiting skews them, so --table-only keeps them.
    const wc::CostModel m = calibrate(t, o, base);
    if (t.rank() == 0) save_model(o, section, m);
    return;
  }
  run_all(t, o, model_for(o, section, fallback), section, rows);
}

void finish(const Options& o, const std::vector<Row>& rows) {
  if (!o.csv.empty()) write_csv(o.csv, rows);
  if (!o.json.empty()) write_json(o.json, rows);
  if (!o.quiet) {
    double sum = 0;
    int k = 0;
    for (const Row& r : rows)
      if (r.op != Collective::barrier) sum += r.oop.busbw, ++k;
    std::printf("# Avg bus bandwidth    : %g\n", k ? sum / k : 0.0);
    std::int64_t wrong = 0;
    for (const Row& r : rows) wrong += std::max<std::int64_t>(0, r.oop.wrong) + std::max<std::int64_t>(0, r.ip.wrong);
    std::printf("# Out of bounds values : %lld %s\n", static_cast<long long>(wrong), wrong ? "FAILED" : "OK");
    auto_table(rows);
  }
}

std::int64_t total_wrong(const std::vector<Row>& rows) {
  std::int64_t w = 0;
  for (const Row& r : rows) w += std::max<std::int64_t>(0, r.oop.wrong) + std::max<std::int64_t>(0, r.ip.wrong);
  return w;
}

}  // namespace

namespace {
// --codec: the compressed-allreduce table (weft_bench/codec.hpp).
int run_codecs(const Options& o, int& argc, char**& argv) {
  std::vector<std::string> algos;
  for (Algo a : o.algos) algos.push_back(name_of(a));
  const weft_bench::codec::Settings s{o.codecs, algos, o.min_bytes, o.max_bytes, o.factor, o.iters, o.warmup};
  std::vector<weft_bench::codec::Row> rows;
  if (o.transport == "thread") {
    wc::run_local(o.np, [&](wc::ThreadTransport& t) { weft_bench::codec::run(t, s, rows); });
    if (!o.quiet) weft_bench::codec::print(rows, "threads", o.np);
    return 0;
  }
#if WEFT_BENCH_MPI
  int provided = 0, rank = 0, p = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  {
    wc::MpiTransport t{MPI_COMM_WORLD};
    rank = t.rank();
    p = t.size();
    weft_bench::codec::run(t, s, rows);
  }
  if (rank == 0 && !o.quiet) weft_bench::codec::print(rows, "mpi", p);
  MPI_Finalize();
#else
  (void)argc;
  (void)argv;
#endif
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "weft-bench: %s\n", e.what());
    return 2;
  }
  try {
    if (o.mode == "memcpy") {
      memcpy_bw(o);
      return 0;
    }
    if (o.mode == "project") {
      const char* section = o.transport == "mpi" ? "mpi" : "threads";
      project(model_for(o, section, o.transport == "mpi" ? wc::CostModel::mpi() : wc::CostModel::threads()), o,
              section);
      return 0;
    }
    if (!o.codecs.empty()) return run_codecs(o, argc, argv);
    std::vector<Row> rows;
    if (o.transport == "thread") {
      wc::run_local(o.np, [&](wc::ThreadTransport& t) {
        if (o.bind) {
          // Unpinned, two ranks can share a core while other processes load the
          // machine: a rank then spins through its peer's time slice.
          long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
          cpu_set_t set;
          CPU_ZERO(&set);
          CPU_SET(static_cast<int>(t.rank() % (ncpu > 0 ? ncpu : 1)), &set);
          pthread_setaffinity_np(pthread_self(), sizeof set, &set);
        }
        std::vector<Row> mine;
        run_mode(t, o, "threads", wc::CostModel::threads(), mine);
        if (t.rank() == 0) rows = std::move(mine);
      });
      if (o.mode == "run") finish(o, rows);
      return total_wrong(rows) ? 1 : 0;
    }
#if WEFT_BENCH_MPI
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    int rank = 0;
    {
      wc::MpiTransport t{MPI_COMM_WORLD};
      rank = t.rank();
      run_mode(t, o, "mpi", wc::CostModel::mpi(), rows);
    }
    std::int64_t w = total_wrong(rows);
    if (rank == 0 && o.mode == "run") finish(o, rows);
    MPI_Finalize();
    return w ? 1 : 0;
#endif
  } catch (const UsageError& e) {
    std::fprintf(stderr, "weft-bench: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "weft-bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
