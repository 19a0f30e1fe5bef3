// weft-bench's command line (options.hpp).
#include "options.hpp"

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <sstream>
#include <algorithm>

namespace weft_bench {

namespace {

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
  std::optional<Collective> found;
  std::string accepted;
  wc::collectives::for_each([&](auto d) {
    if (v == d.name) found = d.op;
    accepted += std::string(accepted.empty() ? "" : ", ") + d.name;
  });
  if (!found) throw UsageError("--op: unknown collective '" + v + "' (accepted: " + accepted + ", all)");
  return *found;
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

}  // namespace

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
          wc::collectives::for_each([&](auto d) { o.ops.push_back(d.op); });
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

}  // namespace weft_bench
