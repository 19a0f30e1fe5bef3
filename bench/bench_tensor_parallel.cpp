// Tensor-parallel training throughput of a stack of two residual MLP blocks
// (x + ParallelMLP(x), hidden 4C), one thread per rank. Thread ranks:
//   bench_tensor_parallel T SECONDS [TOKENS C]
// under mpirun (bench_tensor_parallel_mpi, T = the number of processes):
//   mpirun -np T bench_tensor_parallel_mpi SECONDS [TOKENS C]
// Environment: WEFT_TP_NO_OVERLAP=1 waits for each input-gradient allreduce
// before the weight's gradient (the control for the overlap in
// column_matmul.hpp); WEFT_TP_LINK_GBPS (default 100) is the link the t = 8
// projection assumes.
// Prints (rank 0): tokens_per_s, step_ms, collective_ms (time inside blocking
// collectives and waits, per step), bytes_per_step (this rank's transport
// counter over one step, fingerprints included), and at t = 1 the cost model's projection for t = 8:
// projected_t8_tokens_per_s (compute / 8 + 2 ring allreduces of TOKENS x C
// floats per block forward and backward, from comm/tuning/cost_model.hpp).
#ifdef WEFT_TP_MPI
#include "../examples/run_under_mpi.hpp"

#include <weft/comm/transport/mpi.hpp>
#else
#include <weft/comm/run_local.hpp>
#endif

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/tuning/cost_model.hpp>
#include <weft/nn/nn.hpp>
#include <weft/parallel/tensor_parallel/layers.hpp>
#include <weft/weft.hpp>

using namespace weft;
namespace tp = weft::parallel::tensor_parallel;
using Clock = std::chrono::steady_clock;

// A communicator that adds the time spent in its calls (and in waits on its
// requests) to `secs`: what the nodes call, forwarded.
template <class Comm>
struct Timed {
  Comm* c;
  double secs = 0;
  int rank() const { return c->rank(); }
  int size() const { return c->size(); }
  template <class F>
  decltype(auto) timed(F&& f) {
    auto t0 = Clock::now();
    struct Add {
      double* s;
      Clock::time_point t0;
      ~Add() { *s += std::chrono::duration<double>(Clock::now() - t0).count(); }
    } add{&secs, t0};
    return f();
  }
  template <class... A>
  void allreduce(A&&... a) {
    timed([&] { c->allreduce(std::forward<A>(a)...); });
  }
  template <class... A>
  void allgather(A&&... a) {
    timed([&] { c->allgather(std::forward<A>(a)...); });
  }
  template <class... A>
  void reduce_scatter(A&&... a) {
    timed([&] { c->reduce_scatter(std::forward<A>(a)...); });
  }
  struct Request {
    typename Comm::Request r;
    Timed* t;
    void wait() {
      t->timed([&] { r.wait(); });
    }
  };
  template <class... A>
  Request iallreduce(A&&... a) {
    return {c->iallreduce(std::forward<A>(a)...), this};
  }
  template <class... A>
  Request iallgather(A&&... a) {
    return {c->iallgather(std::forward<A>(a)...), this};
  }
  template <class... A>
  Request ireduce_scatter(A&&... a) {
    return {c->ireduce_scatter(std::forward<A>(a)...), this};
  }
};

template <class Transport>
void run(Transport& t, double seconds, index_t tokens, index_t c) {
  using Ring = comm::Communicator<comm::Ring, Transport>;
  Ring ring{t.split(0, t.rank())};
  Timed<Ring> timed{&ring};
  using M = tp::ParallelMLP<Timed<Ring>, Timed<Ring>>;
  M b1(timed, timed, c, 4 * c, c, 1, "block1"), b2(timed, timed, c, 4 * c, c, 3, "block2");
  const bool overlap = std::getenv("WEFT_TP_NO_OVERLAP") == nullptr;
  for (M* b : {&b1, &b2}) b->fc1.overlap = overlap;
  nn::Registry<float> reg;
  reg.add("b1", b1).add("b2", b2);
  nn::SGD<float> opt(reg, {.lr = 1e-4f});
  Tensor<float> x(Shape{tokens, c});
  nn::Rng rng(7);
  for (index_t i = 0; i < x.numel(); ++i) x.data()[i] = rng.normal();
  Workspace<cpu> ws;
  auto step = [&] {
    opt.zero_grad();
    auto h = let(x + b1(x), [&](auto v) { return v + b2(v); });
    weft::backward(mean(square(h)), ws);
    opt.step();
  };
  step();  // warm the workspace
  ring.barrier();
  const std::uint64_t bytes0 = ring.sent_bytes();
  step();  // one step's bytes, fingerprints included
  const std::uint64_t bytes = ring.sent_bytes() - bytes0;
  ring.barrier();
  double coll0 = timed.secs;
  int steps = 0;
  auto t0 = Clock::now();
  double elapsed = 0;
  for (;;) {
    step();
    ++steps;
    elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    double go = elapsed < seconds ? 1 : 0;  // every rank stops after the same step
    ring.allreduce(&go, &go, 1, comm::ReduceOp::min);
    if (go == 0) break;
  }
  const double coll = (timed.secs - coll0) / steps;
  if (t.rank() != 0) return;
  const double step_s = elapsed / steps;
  std::printf("t %d  tokens %lld  C %lld  overlap %d  steps %d\n", t.size(), static_cast<long long>(tokens), static_cast<long long>(c),
              overlap ? 1 : 0, steps);
  std::printf("tokens_per_s %.1f\nstep_ms %.3f\ncollective_ms %.3f\nbytes_per_step %llu\n", static_cast<double>(tokens) / step_s,
              1e3 * step_s, 1e3 * coll, static_cast<unsigned long long>(bytes));
  if (t.size() == 1) {
    const char* g = std::getenv("WEFT_TP_LINK_GBPS");
    const double gbps = g ? std::atof(g) : 100.0;
    comm::CostModel m = comm::CostModel::mpi();
    m.alpha = 5e-6;
    m.beta = 8.0 / (gbps * 1e9);
    const std::size_t msg = static_cast<std::size_t>(tokens * c) * sizeof(float);
    // Per step: 2 blocks x (forward fc2 + backward fc1) allreduces, less the
    // first block's backward one (its input is data): 3 allreduces.
    const double comm_s = 3 * comm::Ring::cost(comm::Collective::allreduce, msg, 8, m);
    const double proj = (step_s - coll) / 8 + comm_s;
    std::printf("projected_t8_link_gbps %.1f\nprojected_t8_comm_ms %.3f\nprojected_t8_tokens_per_s %.1f\n", gbps, 1e3 * comm_s,
                static_cast<double>(tokens) / proj);
  }
}

int main(int argc, char** argv) {
#ifdef WEFT_TP_MPI
  return examples::run_under_mpi(argc, argv, [&] {
    const double seconds = argc > 1 ? std::atof(argv[1]) : 3;
    const index_t tokens = argc > 2 ? std::atoll(argv[2]) : 512, c = argc > 3 ? std::atoll(argv[3]) : 512;
    openblas_set_num_threads(1);
    comm::MpiTransport t{MPI_COMM_WORLD};
    run(t, seconds, tokens, c);
    return 0;
  });
#else
  const int p = argc > 1 ? std::atoi(argv[1]) : 2;
  const double seconds = argc > 2 ? std::atof(argv[2]) : 3;
  const index_t tokens = argc > 3 ? std::atoll(argv[3]) : 512, c = argc > 4 ? std::atoll(argv[4]) : 512;
  openblas_set_num_threads(1);
  comm::run_local(p, [&](comm::ThreadTransport& t) { run(t, seconds, tokens, c); }, {.bind_cores = true});
  return 0;
#endif
}
