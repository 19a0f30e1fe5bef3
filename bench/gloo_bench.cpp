// gloo_bench: Gloo's ring and halving-doubling allreduce (Debian's
// libgloo-dev) over its TCP transport on loopback, measured the way
// weft-bench measures (per-iteration time of the slowest rank, algbw, busbw,
// p50/p99), so bench/compare_collectives.sh can put both in one table. The
// process forks --np ranks itself; they meet through a FileStore in a
// temporary directory.
//
//   gloo_bench --np 2 -b 8 -e 256M -f 2 -n 20 -w 5 --algo ring,halving_doubling --csv gloo.csv
#include <gloo/allreduce_halving_doubling.h>
#include <gloo/allreduce_ring.h>
#include <gloo/barrier_all_to_one.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/transport/tcp/device.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Options {
  int np = 2, iters = 20, warmup = 5;
  std::size_t min_bytes = 8, max_bytes = std::size_t{32} << 20, bytes_budget = std::size_t{2} << 30;
  double factor = 2;
  std::vector<std::string> algos{"ring", "halving_doubling"};
  std::string csv;
};

[[noreturn]] void usage_error(const std::string& m) {
  std::fprintf(stderr, "gloo_bench: %s\n", m.c_str());
  std::exit(2);
}

std::size_t parse_bytes(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (end == v.c_str() || x < 0) usage_error(flag + ": expected a size like 8, 64K, 1M, got '" + v + "'");
  std::string s(end);
  double m = s.empty() ? 1 : s == "K" ? 1024.0 : s == "M" ? 1048576.0 : s == "G" ? 1073741824.0 : -1;
  if (m < 0) usage_error(flag + ": unknown suffix '" + s + "' (accepted: none, K, M, G)");
  return static_cast<std::size_t>(x * m);
}

int parse_int(const std::string& flag, const std::string& v, int lo) {
  char* end = nullptr;
  long x = std::strtol(v.c_str(), &end, 10);
  if (end == v.c_str() || *end || x < lo) usage_error(flag + ": expected an integer >= " + std::to_string(lo) + ", got '" + v + "'");
  return static_cast<int>(x);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(a + ": missing value");
      return argv[++i];
    };
    if (a == "--np") o.np = parse_int(a, val(), 1);
    else if (a == "-b") o.min_bytes = parse_bytes(a, val());
    else if (a == "-e") o.max_bytes = parse_bytes(a, val());
    else if (a == "-f") {
      std::string v = val();
      o.factor = std::atof(v.c_str());
      if (o.factor <= 1) usage_error("-f: expected a number > 1, got '" + v + "'");
    } else if (a == "-n") o.iters = parse_int(a, val(), 1);
    else if (a == "-w") o.warmup = parse_int(a, val(), 0);
    else if (a == "--bytes-budget") o.bytes_budget = parse_bytes(a, val());
    else if (a == "--csv") o.csv = val();
    else if (a == "--algo") {
      o.algos.clear();
      std::stringstream ss(val());
      std::string s;
      while (std::getline(ss, s, ','))
        if (s == "ring" || s == "halving_doubling") o.algos.push_back(s);
        else usage_error("--algo: unknown algorithm '" + s + "' (accepted: ring, halving_doubling)");
    } else usage_error("unknown option '" + a + "' (accepted: --np -b -e -f -n -w --algo --csv --bytes-budget)");
  }
  return o;
}

struct Result {
  std::string algo;
  std::size_t bytes, count;
  int iters;
  double time_us, p50_us, p99_us;
};

std::unique_ptr<gloo::Algorithm> make(const std::string& algo, const std::shared_ptr<gloo::Context>& ctx, float* p,
                                      int count) {
  if (algo == "ring") return std::make_unique<gloo::AllreduceRing<float>>(ctx, std::vector<float*>{p}, count);
  return std::make_unique<gloo::AllreduceHalvingDoubling<float>>(ctx, std::vector<float*>{p}, count);
}

int rank_main(int rank, const Options& o, const std::string& dir) {
  gloo::transport::tcp::attr attr;
  attr.hostname = "127.0.0.1";
  auto dev = gloo::transport::tcp::CreateDevice(attr);
  gloo::rendezvous::FileStore store(dir);
  auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, o.np);
  ctx->setTimeout(std::chrono::seconds(300));
  ctx->connectFullMesh(store, dev);
  std::vector<Result> results;
  for (const auto& algo : o.algos) {
    for (std::size_t S = std::max<std::size_t>(o.min_bytes, 4); S <= o.max_bytes;
         S = std::max(S + 1, static_cast<std::size_t>(std::ceil(S * o.factor)))) {
      const int count = static_cast<int>(S / sizeof(float));
      if (count == 0) continue;
      const std::size_t bytes = static_cast<std::size_t>(count) * sizeof(float);
      const int iters = static_cast<int>(std::clamp<std::size_t>(o.bytes_budget / bytes, 3, static_cast<std::size_t>(o.iters)));
      std::vector<float> buf(static_cast<std::size_t>(count), 1.0f);
      auto a = make(algo, ctx, buf.data(), count);
      for (int k = 0; k < std::min(o.warmup, std::max(1, iters / 2)); ++k) a->run();
      gloo::BarrierAllToOne(ctx).run();
      std::vector<double> t(static_cast<std::size_t>(iters));
      for (int k = 0; k < iters; ++k) {
        auto t0 = std::chrono::steady_clock::now();
        a->run();
        t[static_cast<std::size_t>(k)] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      }
      // check: all ones in, p out (inputs reset; sums of small integers are exact)
      std::fill(buf.begin(), buf.end(), 1.0f);
      a->run();
      long wrong = 0;
      for (float x : buf) wrong += x != static_cast<float>(o.np);
      if (wrong) {
        std::fprintf(stderr, "gloo_bench: rank %d: %ld wrong elements at %zu bytes (%s)\n", rank, wrong, bytes, algo.c_str());
        return 1;
      }
      // the slowest rank's time per iteration
      gloo::AllreduceRing<double>(ctx, std::vector<double*>{t.data()}, iters, gloo::ReductionFunction<double>::max).run();
      double sum = 0;
      for (double x : t) sum += x;
      std::sort(t.begin(), t.end());
      auto pct = [&](double q) {
        return t[std::min(t.size() - 1, static_cast<std::size_t>(std::ceil(q * static_cast<double>(t.size())) - 1))];
      };
      results.push_back({algo, bytes, static_cast<std::size_t>(count), iters, sum / iters * 1e6, pct(0.5) * 1e6, pct(0.99) * 1e6});
      if (rank == 0) {
        const Result& r = results.back();
        double algbw = r.bytes / (r.time_us * 1e-6) / 1e9;
        std::printf("%-18s %12zu %12zu %10.2f %8.3f %8.3f %10.2f %10.2f\n", r.algo.c_str(), r.bytes, r.count, r.time_us,
                    algbw, algbw * 2.0 * (o.np - 1) / o.np, r.p50_us, r.p99_us);
        std::fflush(stdout);
      }
    }
  }
  if (rank == 0 && !o.csv.empty()) {
    std::ofstream f(o.csv);
    f << "impl,transport,algo,op,type,redop,root,ranks,size,count,placement,time_us,p50_us,p99_us,algbw_GBps,"
         "busbw_GBps,wrong,pred_us,skew_us,last_rank,auto_choice\n";
    for (const Result& r : results) {
      double algbw = r.bytes / (r.time_us * 1e-6) / 1e9;
      f << "gloo,tcp," << r.algo << ",allreduce,f32,sum,-1," << o.np << ',' << r.bytes << ',' << r.count << ",ip,"
        << r.time_us << ',' << r.p50_us << ',' << r.p99_us << ',' << algbw << ',' << algbw * 2.0 * (o.np - 1) / o.np
        << ",0,,,,\n";
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  char tmpl[] = "/tmp/gloo_bench.XXXXXX";
  if (!mkdtemp(tmpl)) {
    std::perror("gloo_bench: mkdtemp");
    return 1;
  }
  const std::string dir = tmpl;
  std::printf("# gloo %d ranks, TCP loopback, f32 sum allreduce (in place)\n", o.np);
  std::printf("# %-16s %12s %12s %10s %8s %8s %10s %10s\n", "algo", "size(B)", "count", "time(us)", "algbw", "busbw",
              "p50(us)", "p99(us)");
  std::fflush(stdout);
  std::vector<pid_t> kids;
  for (int r = 0; r < o.np; ++r) {
    pid_t pid = fork();
    if (pid < 0) {
      std::perror("gloo_bench: fork");
      return 1;
    }
    if (pid == 0) {
      int rc = 1;
      try {
        rc = rank_main(r, o, dir);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "gloo_bench: rank %d: %s\n", r, e.what());
      }
      std::fflush(stdout);
      _exit(rc);
    }
    kids.push_back(pid);
  }
  int failed = 0;
  for (pid_t k : kids) {
    int st = 0;
    waitpid(k, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failed = 1;
  }
  std::string cmd = "rm -rf '" + dir + "'";
  if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "gloo_bench: could not remove %s\n", dir.c_str());
  return failed;
}
