// ZeRO on thread ranks: samples/s and bytes per rank of plain data
// parallelism (DataParallel + nn::Adam) and of parallel::Zero stages 1, 2, 3,
// on the MLP of bench/mlp.hpp (784-256-256-10, ReLU, cross-entropy, Adam lr
// 1e-3, global batch 128 split over the ranks, one BLAS thread per rank).
// zero3 gathers every unit before the one-expression forward; zero3l runs
// stage 3 layer by layer (parallel::zero_layers: per-layer gathers with the
// next one prefetched, per-layer reduce-scatters); zero3bf16 is zero3l with
// bf16 parameters and gradients on the wire (f32 master and Adam).
//   usage: bench_zero dp|zero1|zero2|zero3|zero3l|zero3bf16 [ranks = 2] [seconds = 3]
// Prints one line of key: value pairs:
//   samples_per_s       global samples/s on rank 0's clock between barriers
//   bytes_rest          rank 0's bytes between steps: DP: its parameter,
//                       gradient and Adam state tensors (plus DataParallel's
//                       bucket buffers, printed apart as dp_bucket_bytes);
//                       Zero: memory().total()
//   bytes_peak          Zero: peak_total() over the timed steps (DP: = rest)
//   gathered_peak       Zero: memory_peak().gathered (the gathered parameters)
//   formula             parallel::zero_formula(stage, P, N) (f32 Adam)
#include <chrono>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <string>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/run_local.hpp>
#include <weft/parallel/data_parallel.hpp>
#include <weft/parallel/zero.hpp>

#include "mlp.hpp"

namespace {

using namespace weft;
using C = comm::Communicator<comm::Ring, comm::ThreadTransport>;

struct Result {
  double sps = 0, rest = 0, peak = 0, buckets = 0, P = 0, gathered = 0;
};

// Runs step() for a probe-sized number of steps on every rank; samples/s.
template <class Step>
double timed(C& c, double seconds, index_t batch, Step&& step) {
  for (int w = 0; w < 5; ++w) step();
  c.barrier();
  auto t0 = std::chrono::steady_clock::now();
  for (int w = 0; w < 10; ++w) step();
  double probe = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 10;
  c.broadcast(std::span<double>(&probe, 1), 0);
  const long steps = static_cast<long>(seconds / probe) + 1;
  c.barrier();
  t0 = std::chrono::steady_clock::now();
  for (long s = 0; s < steps; ++s) step();
  c.barrier();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return static_cast<double>(steps * batch * c.size()) / secs;
}

template <class Stage>
Result zero(comm::ThreadTransport& t, double seconds, bool overlap) {
  C c{t};
  const index_t batch = 128 / c.size();
  const benchmlp::RandomData data(4096, nn::Rng(100 + static_cast<std::uint64_t>(c.rank())));
  benchmlp::Mlp m;
  Result r;
  r.P = static_cast<double>(m.params.numel());
  parallel::Zero<float, Stage, C> z(m.params, c, nn::AdamOptions{.lr = 1e-3f}, {.overlap = overlap});
  benchmlp::Batches b(data, batch);
  Workspace<> ws;
  r.sps = timed(c, seconds, batch, [&] {
    b.next();
    z.backward([&] { return m.loss(b.x, b.y); }, ws);
    z.step();
  });
  r.rest = static_cast<double>(z.memory().total());
  r.peak = static_cast<double>(z.peak_total());
  r.gathered = static_cast<double>(z.memory_peak().gathered);
  return r;
}

// Stage 3 layer by layer, f32 or bf16 on the wire.
Result zero3_layers(comm::ThreadTransport& t, double seconds, parallel::ZeroPrecision prec, bool overlap) {
  C c{t};
  const index_t batch = 128 / c.size();
  const benchmlp::RandomData data(4096, nn::Rng(100 + static_cast<std::uint64_t>(c.rank())));
  benchmlp::Mlp m;
  Result r;
  r.P = static_cast<double>(m.params.numel());
  parallel::Zero<float, parallel::Zero3, C> z(m.params, c, nn::AdamOptions{.lr = 1e-3f}, {.precision = prec, .overlap = overlap});
  nn::ReLU act;
  auto fsdp = parallel::zero_layers<std::int32_t>(z, std::tie(m.l1, act, m.l2, act, m.l3),
                                                  [](auto out, TensorView<std::int32_t> y) { return cross_entropy(out, y); });
  benchmlp::Batches b(data, batch);
  r.sps = timed(c, seconds, batch, [&] {
    b.next();
    fsdp.backward(b.x, b.y);
    z.step();
  });
  r.rest = static_cast<double>(z.memory().total());
  r.peak = static_cast<double>(z.peak_total());
  r.gathered = static_cast<double>(z.memory_peak().gathered);
  return r;
}

Result dp(comm::ThreadTransport& t, double seconds, bool overlap) {
  C c{t};
  const index_t batch = 128 / c.size();
  const benchmlp::RandomData data(4096, nn::Rng(100 + static_cast<std::uint64_t>(c.rank())));
  benchmlp::Mlp m;
  Result r;
  r.P = static_cast<double>(m.params.numel());
  parallel::DataParallel d(m.params, c);
  d.set_overlap(overlap);
  nn::Adam<float> opt(m.params, {.lr = 1e-3f});
  benchmlp::Batches b(data, batch);
  Workspace<> ws;
  r.sps = timed(c, seconds, batch, [&] {
    b.next();
    opt.zero_grad();
    d.backward(m.loss(b.x, b.y), ws);
    d.step(opt);
  });
  for (Parameter<float>* p : m.params) {
    r.rest += static_cast<double>(p->value.bytes() + p->grad.bytes());
    for (const char* key : {"exp_avg", "exp_avg_sq"}) r.rest += static_cast<double>(opt.state(p->name, key).bytes());
  }
  for (std::size_t i = 0; i < d.buckets(); ++i) {
    const auto names = d.bucket_names(i);
    if (names.size() < 2) continue;  // one parameter: reduced in place, no buffer
    for (const auto& n : names) r.buckets += static_cast<double>(m.params.at(n).numel()) * 4;
  }
  r.peak = r.rest;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "zero3";
  const int ranks = argc > 2 ? std::atoi(argv[2]) : 2;
  const double seconds = argc > 3 ? std::atof(argv[3]) : 3.0;
  openblas_set_num_threads(1);
  // A trailing "s" (dps, zero2s, zero3s, zero3ls, zero3bf16s): overlap off (collectives on the
  // calling thread; DataParallelOptions::overlap, ZeroOptions::overlap).
  std::string base = mode;
  int stage = -1;
  bool sync = false;
  if (base == "dps" || base == "zero2s" || base == "zero3s" || base == "zero3ls" || base == "zero3bf16s") {
    sync = true;
    base.pop_back();
  }
  if (base == "dp") stage = 0;
  if (base == "zero1") stage = 1;
  if (base == "zero2") stage = 2;
  if (base == "zero3") stage = 3;
  if (base == "zero3l") stage = 4;
  if (base == "zero3bf16") stage = 5;
  if (stage < 0 || ranks < 1) {
    std::fprintf(stderr, "usage: bench_zero dp|zero1|zero2|zero3|zero3l|zero3bf16|dps|zero2s|zero3s|zero3ls|zero3bf16s [ranks] [seconds]\n"
                         "  (a trailing s: overlap off)\n");
    return 2;
  }
  Result out;
  weft::comm::run_local(ranks, [&](weft::comm::ThreadTransport& t) {
    Result r;
    switch (stage) {
      case 0: r = dp(t, seconds, !sync); break;
      case 1: r = zero<parallel::Zero1>(t, seconds, !sync); break;
      case 2: r = zero<parallel::Zero2>(t, seconds, !sync); break;
      case 3: r = zero<parallel::Zero3>(t, seconds, !sync); break;
      case 4: r = zero3_layers(t, seconds, parallel::ZeroPrecision::f32, !sync); break;
      default: r = zero3_layers(t, seconds, parallel::ZeroPrecision::bf16, !sync); break;
    }
    if (t.rank() == 0) out = r;
  });
  std::printf(
      "mode %s ranks %d params %.0f samples_per_s %.0f bytes_rest %.0f bytes_peak %.0f gathered_peak %.0f formula %.0f "
      "dp_bucket_bytes %.0f\n",
      mode.c_str(), ranks, out.P, out.sps, out.rest, out.peak, out.gathered, parallel::zero_formula(std::min(stage, 3), out.P, ranks),
      out.buckets);
  return 0;
}
