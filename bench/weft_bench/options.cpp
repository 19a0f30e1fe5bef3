// weft-bench's command line (options.hpp). Every number is checked before it
// is converted (no NaN, infinity or out-of-range double reaches an integer),
// and what the run would allocate is compared with this machine's memory, so
// a bad command line ends in one sentence naming the flag, never in a crash,
// a silent no-op or std::bad_alloc. Fuzzed: tests/fuzz/bench_options.cpp.
#include "options.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sstream>

namespace weft_bench {

namespace {

// Sizes above this are larger than any machine (and than a double converts exactly).
constexpr double max_size_bytes = 0x1p50;  // 1 PiB

// 1536 -> "1.5 KiB": sizes in messages, as a person reads them.
std::string human(double bytes) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (bytes >= 1024 && u < 5) {
    bytes /= 1024;
    ++u;
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, bytes == std::floor(bytes) ? "%.0f %s" : "%.1f %s", bytes, unit[u]);
  return buf;
}

std::size_t parse_bytes(const std::string& flag, const std::string& v) {
  const std::string expected = flag + ": expected a size like 8, 64K, 1M or 2G, got '" + v + "'";
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || end == v.c_str() || std::isspace(static_cast<unsigned char>(v[0]))) throw UsageError(expected);
  if (!std::isfinite(x)) throw UsageError(flag + ": '" + v + "' is not a finite size");
  if (x < 0 || std::signbit(x)) throw UsageError(flag + ": '" + v + "' is negative");
  const std::string suf(end);
  double mult = 1;
  if (suf == "" || suf == "B") mult = 1;
  else if (suf == "K" || suf == "k" || suf == "KiB") mult = 0x1p10;
  else if (suf == "M" || suf == "MiB") mult = 0x1p20;
  else if (suf == "G" || suf == "GiB") mult = 0x1p30;
  else if (suf == "T" || suf == "TiB") mult = 0x1p40;
  else throw UsageError(flag + ": unknown size suffix '" + suf + "' in '" + v + "' (accepted: none, K, M, G, T)");
  const double bytes = x * mult;
  if (bytes > max_size_bytes)
    throw UsageError(flag + ": " + v + " is larger than any machine (at most " + human(max_size_bytes) + ")");
  if (bytes != std::floor(bytes)) throw UsageError(flag + ": " + v + " is not a whole number of bytes");
  return static_cast<std::size_t>(bytes);
}

// A real number > lo and <= hi, finite.
double parse_real(const std::string& flag, const std::string& v, double lo, double hi) {
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || end == v.c_str() || *end || std::isspace(static_cast<unsigned char>(v[0])))
    throw UsageError(flag + ": expected a number, got '" + v + "'");
  if (!std::isfinite(x) || x <= lo || x > hi) {
    std::ostringstream os;
    os << flag << ": expected a finite number > " << lo << " and <= " << hi << ", got '" << v << "'";
    throw UsageError(os.str());
  }
  return x;
}

long parse_int(const std::string& flag, const std::string& v, long lo, long hi) {
  char* end = nullptr;
  errno = 0;
  long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || end == v.c_str() || *end || errno == ERANGE || x < lo || x > hi ||
      std::isspace(static_cast<unsigned char>(v[0])))
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
  for (int i = 0; i < 9; ++i)
    if (v == algo_names[i]) return static_cast<Algo>(i);
  if (v == "rd") return Algo::recursive_doubling;
  if (v == "hd") return Algo::halving_doubling;
  throw UsageError("--algo: unknown algorithm '" + v +
                   "' (accepted: ring, tree, recursive_doubling, halving_doubling, hierarchical, "
                   "hierarchical_leaders, native, auto, mpi (MPI's blocking collectives, --transport mpi only), all)");
}

// --codec SPEC as weft_bench/codec.hpp reads it, checked here so that a bad
// parameter (NaN, a negative or fractional count) never reaches a conversion.
void check_codec(const std::string& spec) {
  const std::string name = spec.substr(0, spec.find(':'));
  const bool has_param = spec.find(':') != std::string::npos;
  const std::string param = has_param ? spec.substr(spec.find(':') + 1) : "";
  const std::string flag = "--codec " + name;
  if (name == "none" || name == "f16" || name == "bf16" || name == "sign") {
    if (has_param) throw UsageError(flag + ": takes no parameter, got '" + spec + "'");
  } else if (name == "topk" || name == "randomk") {
    if (has_param) parse_real(flag + " fraction", param, 0, 1);
  } else if (name == "int8") {
    if (has_param) parse_int(flag + " chunk", param, 1, 1L << 30);
  } else if (name == "powersgd") {
    if (has_param) parse_int(flag + " rank", param, 1, 4096);
  } else {
    throw UsageError("--codec: unknown codec '" + name +
                     "' (accepted: none, f16, bf16, int8[:chunk], topk[:fraction], randomk[:fraction], sign, "
                     "powersgd[:rank])");
  }
}

// This machine's physical memory in bytes (0 where the system does not say).
double physical_memory() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0;
}

// Ranks of this run sharing this machine's memory: --np threads, or the
// processes mpirun started on this node (Open MPI and MPICH say how many).
int ranks_on_this_machine(const Options& o) {
  if (o.transport == "thread") return o.np;
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"})
    if (const char* v = std::getenv(var)) {
      const long n = std::strtol(v, nullptr, 10);
      if (n > 0 && n <= 1 << 20) return static_cast<int>(n);
    }
  return 1;
}

// What a size flag makes the run allocate, against physical memory: every
// rank holds a send and a receive buffer of the largest size (memcpy: a
// source and a destination). The transport's staging comes on top.
void check_fits(const Options& o, const char* flag, std::size_t bytes) {
  if (o.mode == "project") return;
  const double mem = physical_memory();
  const int ranks = o.mode == "memcpy" ? 1 : ranks_on_this_machine(o);
  const double need = 2.0 * ranks * static_cast<double>(std::max<std::size_t>(bytes, o.mode == "memcpy" ? 1 << 20 : 0));
  if (mem > 0 && need > mem) {
    const bool one = o.mode == "memcpy" || ranks == 1;
    const std::string who = o.mode == "memcpy" ? "memcpy"
                                               : std::to_string(ranks) + (o.transport == "thread" ? " thread" : "") +
                                                     (one ? " rank" : " ranks") +
                                                     (o.transport == "thread" ? "" : " on this node");
    throw UsageError(std::string(flag) + " " + human(static_cast<double>(bytes)) + ": " + who + (one ? " needs" : " need") +
                     " at least " + human(need) + " (" +
                     (o.mode == "memcpy" ? "a source and a destination" : "a send and a receive buffer per rank") +
                     "), more than this machine's " + human(mem) + " of memory: lower " + flag +
                     (o.mode == "memcpy" || o.transport != "thread" ? "" : " or --np"));
  }
}

const char* usage_text =
    "usage: weft-bench [calibrate|project|memcpy] [options]\n"
    "  calibrate: fit alpha, beta, gamma and time Auto's candidates at every size (-b .. -e, default\n"
    "  8 .. 64M; --op, default allreduce,reduce_scatter,allgather,reduce) into --model FILE\n"
    "  -b, --minbytes SIZE     smallest size (default 8; suffixes K, M, G, T)\n"
    "  -e, --maxbytes SIZE     largest size (default 32M)\n"
    "  -f, --stepfactor F      multiply the size by F each step (default 2)\n"
    "  -i, --stepbytes SIZE    add SIZE each step instead\n"
    "  -n, --iters N           timed iterations per size (default 20; capped by --bytes-budget)\n"
    "      --small-iters N     timed iterations for sizes up to 8 KiB (default: --iters)\n"
    "  -w, --warmup_iters N    untimed iterations first (default 5)\n"
    "  -c, --check 0|1         count wrong elements exactly (default 1)\n"
    "  -o, --redop OP          sum, prod, min, max, avg (default sum)\n"
    "  -d, --dtype T           float, double, half, bfloat16, int32, int64, uint8 (default float)\n"
    "  -r, --root R            root of broadcast, reduce, gather, scatter (default 0)\n"
    "      --op LIST           collectives: allreduce, reduce_scatter, allgather, broadcast, reduce,\n"
    "                          gather, scatter, alltoall, barrier, all (default allreduce)\n"
    "      --algo LIST         ring, tree, recursive_doubling, halving_doubling, hierarchical, native,\n"
    "                          auto, mpi, all (default ring); hierarchical_leaders: hierarchical whose\n"
    "                          node leaders carry the whole buffer between nodes, pipelined in --chunk pieces\n"
    "      --transport T       thread | mpi (default thread; mpi: run under mpirun)\n"
    "      --np N              ranks for the thread transport (default 2)\n"
    "      --model FILE        cost model from `weft-bench calibrate` (predictions and Auto)\n"
    "      --json FILE, --csv FILE   write every row\n"
    "      --bytes-budget SIZE at most this many bytes per measurement: iterations = min(n, SIZE/S), >= 3\n"
    "      --ranks-per-node N  project: node size for the hierarchical projection (default 8)\n"
    "      --chunk SIZE        pipeline unit of ring, tree, halving_doubling, hierarchical (default: the policy's, 1M)\n"
    "      --fingerprints on|off  check that every rank made the same call (default on, as the library;\n"
    "                          off measures the schedule alone)\n"
    "      --bind core|none    thread transport: pin rank r to CPU r mod ncpu (default core, as mpirun binds)\n"
    "      --contend N         start N busy processes on CPUs 0..N-1 for the run: the machine shared with\n"
    "                          other work (a compiler, another job); see what waiting ranks cost then\n"
    "      --codec LIST        compressed allreduce: none, f16, bf16, int8[:chunk], topk[:fraction],\n"
    "                          randomk[:fraction], sign, powersgd[:rank]; prints bytes on the wire,\n"
    "                          compression ratio and effective busbw (weft_bench/codec.hpp)\n"
    "      --in-run N          auto: time the candidates in N interleaved rounds inside the run (warmup\n"
    "                          included) and keep the winner the ranks agree on (comm/tuning/in_run.hpp);\n"
    "                          0: off\n"
    "      --recheck N         auto --in-run: time the candidates again after N decided calls\n"
    "      --in-run-sync on|off  auto --in-run: start every trial call together on every rank (default\n"
    "                          on), or time trial calls back to back as a loop runs them\n"
    "      --auto-candidates C auto's candidates: default (ring, tree, recursive_doubling, halving_doubling)\n"
    "                          or wide (those, hierarchical and native: for clusters)\n"
    "      --table-only        calibrate: only Auto's table (keep the file's alpha, beta, gamma)\n"
    "      --passes N          calibrate: sweeps over every size for Auto's table (default 3)\n"
    "  -q, --quiet             no table on stdout (files only)\n";

}  // namespace

const char* usage() { return usage_text; }

Options parse(int argc, char** argv) {
  Options o;
  int i = 1;
  if (argc > 1 && argv[1][0] != '-') {
    o.mode = argv[1];
    if (o.mode != "run" && o.mode != "calibrate" && o.mode != "project" && o.mode != "memcpy")
      throw UsageError("unknown command '" + o.mode + "' (accepted: run, calibrate, project, memcpy)");
    i = 2;
  }
  bool min_given = false;
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
    auto flag = [&] {  // an option without a value
      if (has_eq) throw UsageError(a + ": takes no value, got '" + a + "=" + v + "'");
      return true;
    };
    if (a == "-h" || a == "--help") {
      o.help = flag();
      return o;
    } else if (a == "-b" || a == "--minbytes") {
      o.min_bytes = parse_bytes(a, val());
      min_given = true;
    } else if (a == "-e" || a == "--maxbytes") {
      o.max_bytes = parse_bytes(a, val());
      o.max_given = true;
    } else if (a == "-f" || a == "--stepfactor") o.factor = parse_real(a, val(), 1, 1024);
    else if (a == "-i" || a == "--stepbytes") {
      o.step_bytes = parse_bytes(a, val());
      if (o.step_bytes == 0) throw UsageError(a + ": the step must be at least 1 byte");
    }
    else if (a == "-n" || a == "--iters") o.iters = static_cast<int>(parse_int(a, val(), 1, 1000000));
    else if (a == "--small-iters") o.small_iters = static_cast<int>(parse_int(a, val(), 1, 1000000));
    else if (a == "-w" || a == "--warmup_iters") o.warmup = static_cast<int>(parse_int(a, val(), 0, 1000000));
    else if (a == "--in-run") o.in_run = static_cast<int>(parse_int(a, val(), 0, 1000));
    else if (a == "--auto-candidates") {
      const std::string v = val();
      if (v != "default" && v != "wide")
        throw UsageError("--auto-candidates: unknown set '" + v + "' (accepted: default, wide)");
      o.auto_wide = v == "wide";
    }
    else if (a == "--recheck") o.recheck = static_cast<std::size_t>(parse_int(a, val(), 0, 1000000000));
    else if (a == "--in-run-sync") {
      const std::string v = val();
      if (v != "on" && v != "off") throw UsageError("--in-run-sync takes on or off, got '" + v + "'");
      o.in_run_sync = v == "on";
    }
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
    else if (a == "-q" || a == "--quiet") o.quiet = flag();
    else if (a == "--table-only") o.table_only = flag();
    else if (a == "--passes") o.passes = static_cast<int>(parse_int(a, val(), 1, 100));
    else if (a == "--chunk") o.chunk = parse_bytes(a, val());
    else if (a == "--codec") {
      o.codecs = split_list(val());
      if (o.codecs.empty()) throw UsageError("--codec: empty list");
      for (const std::string& c : o.codecs) check_codec(c);
    } else if (a == "--bind") {
      std::string b = val();
      if (b != "core" && b != "none") throw UsageError("--bind: unknown binding '" + b + "' (accepted: core, none)");
      o.bind = b == "core";
    } else if (a == "--contend") {
      o.contend = static_cast<int>(parse_int(a, val(), 0, 1024));
    } else if (a == "--fingerprints") {
      std::string f = val();
      if (f != "on" && f != "off") throw UsageError("--fingerprints: '" + f + "' (accepted: on, off)");
      o.fingerprints = f == "on";
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
  // Each size flag against this machine's memory first, so the message names the one that is too large.
  if (min_given) check_fits(o, "-b/--minbytes", o.min_bytes);
  check_fits(o, "-e/--maxbytes", o.max_bytes);
  if (o.min_bytes > o.max_bytes)
    throw UsageError("-b/--minbytes " + human(static_cast<double>(o.min_bytes)) + " is larger than -e/--maxbytes " +
                     human(static_cast<double>(o.max_bytes)));
  if (o.max_bytes == 0) throw UsageError("-e/--maxbytes: the largest size must be at least 1 byte");
  for (Algo a : o.algos)
    if (a == Algo::mpi && o.transport != "mpi")
      throw UsageError("--algo mpi calls MPI's own collectives: it needs --transport mpi");
  if (!o.codecs.empty())
    for (Algo a : o.algos)
      if (a == Algo::hierarchical || a == Algo::hierarchical_leaders || a == Algo::mpi)
        throw UsageError(std::string("--codec: algorithm '") + name_of(a) +
                         "' is not offered with codecs (accepted: ring, tree, recursive_doubling, halving_doubling, "
                         "native, auto)");
  if (o.transport == "mpi" && !WEFT_BENCH_MPI)
    throw UsageError("--transport mpi: this weft-bench was built without MPI (meson -Dmpi=enabled)");
  (void)sizes(o);  // a sweep of too many sizes is a usage error too
  return o;
}

std::vector<std::size_t> sizes(const Options& o) {
  std::vector<std::size_t> s;
  for (std::size_t b = std::max<std::size_t>(o.min_bytes, 1); b <= o.max_bytes;) {
    if (s.size() == max_sweep_sizes)
      throw UsageError("-b/-e/" + std::string(o.step_bytes ? "-i" : "-f") + ": the sweep from " +
                       human(static_cast<double>(std::max<std::size_t>(o.min_bytes, 1))) + " to " +
                       human(static_cast<double>(o.max_bytes)) + " has more than " + std::to_string(max_sweep_sizes) +
                       " sizes: use a larger step");
    s.push_back(b);
    // In double until it is known to be in range: b * factor may not fit a size_t.
    const double next = o.step_bytes ? static_cast<double>(b) + static_cast<double>(o.step_bytes)
                                     : std::ceil(static_cast<double>(b) * o.factor);
    if (!(next > static_cast<double>(b)) || next > static_cast<double>(o.max_bytes)) break;
    b = static_cast<std::size_t>(next);
  }
  return s;
}

}  // namespace weft_bench
