// Parameter-server push/pull throughput on thread ranks: one server, one
// worker, ASP (no waiting on clocks), SGD on the server. Dense: push and pull
// of one key of 1, 4, 16 and 64 MiB (GB/s of payload, requests/s). Sparse:
// push_rows / pull_rows of 1024 random rows of 64 floats from a 262144-row
// table (rows/s, GB/s of row payload).
//   build/bench/bench_ps [seconds per size = 1]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
#include <weft/comm/run_local.hpp>
#include <weft/parallel/parameter_server/parameter_server.hpp>

using namespace weft;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  const double secs = argc > 1 ? std::atof(argv[1]) : 1.0;
  const std::size_t mib = 1 << 20;
  std::printf("%-8s %-10s %10s %10s %12s\n", "kind", "size", "op", "GB/s", "requests/s");
  for (std::size_t bytes : {1 * mib, 4 * mib, 16 * mib, 64 * mib}) {
    const std::size_t n = bytes / sizeof(float);
    comm::run_local(2, [&](comm::ThreadTransport& t) {
      parallel::ParameterServer<parallel::ASP, comm::ThreadTransport> s(
          t, parallel::ps::Roles::count(1, 2), {{"x", n, 1, false}}, {}, {.update = nn::SGDOptions{.lr = 0.0f}});
      if (s.is_server()) return s.serve();
      std::vector<float> buf(n, 1.0f);
      for (int op = 0; op < 2; ++op) {
        long reqs = 0;
        const auto t0 = Clock::now();
        double el = 0;
        do {
          if (op == 0)
            s.push(0, buf).wait();
          else
            s.pull(0, buf).wait();
          ++reqs;
          el = std::chrono::duration<double>(Clock::now() - t0).count();
        } while (el < secs);
        std::printf("%-8s %6zu MiB %10s %10.2f %12.0f\n", "dense", bytes / mib, op == 0 ? "push" : "pull",
                    static_cast<double>(reqs) * static_cast<double>(bytes) / el / 1e9, static_cast<double>(reqs) / el);
        std::fflush(stdout);
      }
      s.leave();
    });
  }
  const std::size_t rows = 262144, dim = 64, batch = 1024;
  comm::run_local(2, [&](comm::ThreadTransport& t) {
    parallel::ParameterServer<parallel::ASP, comm::ThreadTransport> s(
        t, parallel::ps::Roles::count(1, 2), {{"emb", rows, dim, true}}, {}, {.update = nn::SGDOptions{.lr = 0.01f}});
    if (s.is_server()) return s.serve();
    std::mt19937_64 g(1);
    std::vector<std::int64_t> ids(batch);
    std::vector<float> vals(batch * dim, 0.5f);
    for (int op = 0; op < 2; ++op) {
      long reqs = 0;
      const auto t0 = Clock::now();
      double el = 0;
      do {
        for (auto& id : ids) id = static_cast<std::int64_t>(g() % rows);
        if (op == 0)
          s.push_rows(0, ids, vals).wait();
        else
          s.pull_rows(0, ids, vals).wait();
        ++reqs;
        el = std::chrono::duration<double>(Clock::now() - t0).count();
      } while (el < secs);
      const double r = static_cast<double>(reqs) * batch / el;
      std::printf("%-8s %5zux%-3zu %10s %10.2f %12.0f   (%.0f rows/s)\n", "sparse", batch, dim,
                  op == 0 ? "push_rows" : "pull_rows", r * dim * sizeof(float) / 1e9, static_cast<double>(reqs) / el, r);
      std::fflush(stdout);
    }
    s.leave();
  });
  return 0;
}
