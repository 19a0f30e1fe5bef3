// Tensor-parallel training throughput, one thread per rank, of
//   WEFT_TP_MODEL=mlp (default)  a stack of two residual MLP blocks (x + ParallelMLP(x), hidden 4C)
//                                on (TOKENS, C)
//   WEFT_TP_MODEL=block          a stack of two ParallelTransformerBlocks (tensor_parallel/transformer.hpp,
//                                C / 64 heads, MLP 4C, causal) on (TOKENS / 128, 128, C)
//   WEFT_TP_MODEL=block_sp       the same blocks sequence parallel (each rank 128 / T of the tokens)
// Thread ranks:
//   bench_tensor_parallel T SECONDS [TOKENS C]
// under mpirun (bench_tensor_parallel_mpi, T = the number of processes):
//   mpirun -np T bench_tensor_parallel_mpi SECONDS [TOKENS C]
// Environment: WEFT_TP_NO_OVERLAP=1 waits for each input-gradient collective
// (allreduce, or reduce-scatter under sequence parallelism) before the
// weight's gradient (the control for the overlap in column_matmul.hpp);
// WEFT_TP_LINK_GBPS (default 100) is the link the t = 8 projection assumes.
// Prints (rank 0): tokens_per_s, step_ms, collective_ms (time inside blocking
// collectives and waits, per step), bytes_per_step (this rank's transport
// counter over one step, fingerprints included), and at t = 1 the cost model's projection for t = 8:
// projected_t8_tokens_per_s (compute / 8 + the ring allreduces of TOKENS x C
// floats the model runs per step, from comm/tuning/cost_model.hpp).
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
#include <weft/parallel/tensor_parallel/transformer.hpp>
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

// The model's training step: mlp, or the transformer block stack (SP: sequence parallel).
template <class Timed>
struct MlpModel {
  using M = tp::ParallelMLP<Timed, Timed>;
  M b1, b2;
  Tensor<float> x;
  static constexpr int allreduces_per_step = 3;  // 2 blocks x (fc2 forward + fc1 backward), less block 1's backward (its input is data)
  MlpModel(Timed& c, index_t tokens, index_t ch, bool overlap) : b1(c, c, ch, 4 * ch, ch, 1, "block1"), b2(c, c, ch, 4 * ch, ch, 3, "block2"), x(Shape{tokens, ch}) {
    for (M* b : {&b1, &b2}) b->fc1.overlap = overlap;
    nn::Rng rng(7);
    for (index_t i = 0; i < x.numel(); ++i) x.data()[i] = rng.normal();
  }
  void add_to(nn::Registry<float>& reg) { reg.add("b1", b1).add("b2", b2); }
  void step(Workspace<cpu>& ws) {
    auto h = let(x + b1(x), [&](auto v) { return v + b2(v); });
    weft::backward(mean(square(h)), ws);
  }
};

constexpr index_t kSeqLen = 128;  // tokens per sequence of the block stack
template <class Timed, bool SP>
struct BlockModel {
  tp::ParallelTransformerStack<Timed, Timed, 2, float, SP> stack;
  Tensor<float> x;  // (N, T, C), or this rank's (N, T/t, C)
  // 2 blocks x 4: block 1's qkv input gradient is reduced too although x is
  // data, since ln1's gamma and beta need it.
  static constexpr int allreduces_per_step = 8;
  static nn::BlockConfig config(index_t ch) {
    return {.dim = ch, .heads = ch >= 64 ? ch / 64 : 1, .mlp = 4 * ch, .causal = true, .attn_dropout = 0};
  }
  BlockModel(Timed& c, index_t tokens, index_t ch, bool overlap)
      : stack(c, c, config(ch), 1), x(Shape{tokens / kSeqLen, SP ? kSeqLen / c.size() : kSeqLen, ch}) {
    if (tokens % kSeqLen != 0) throw_error<ValueError>("bench_tensor_parallel: TOKENS ", tokens, " is not a multiple of ", kSeqLen);
    stack.set_overlap(overlap);
    nn::Rng rng(7 + static_cast<std::uint64_t>(SP ? c.rank() : 0));
    for (index_t i = 0; i < x.numel(); ++i) x.data()[i] = rng.normal();
  }
  void add_to(nn::Registry<float>& reg) { reg.add("stack", stack); }
  void step(Workspace<cpu>& ws) {
    weft::backward(mean(square(stack(x))), ws);
    stack.reduce_replicated_grads();
  }
};

template <class Model, class Transport>
void run_model(Transport& t, double seconds, index_t tokens, index_t c, const char* name) {
  using Ring = comm::Communicator<comm::Ring, Transport>;
  Ring ring{t.split(0, t.rank())};
  Timed<Ring> timed{&ring};
  const bool overlap = std::getenv("WEFT_TP_NO_OVERLAP") == nullptr;
  Model model(timed, tokens, c, overlap);
  nn::Registry<float> reg;
  model.add_to(reg);
  nn::SGD<float> opt(reg, {.lr = 1e-4f});
  Workspace<cpu> ws;
  auto step = [&] {
    opt.zero_grad();
    model.step(ws);
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
  std::printf("model %s  t %d  tokens %lld  C %lld  overlap %d  steps %d\n", name, t.size(), static_cast<long long>(tokens),
              static_cast<long long>(c), overlap ? 1 : 0, steps);
  std::printf("tokens_per_s %.1f\nstep_ms %.3f\ncollective_ms %.3f\nbytes_per_step %llu\n", static_cast<double>(tokens) / step_s,
              1e3 * step_s, 1e3 * coll, static_cast<unsigned long long>(bytes));
  if (t.size() == 1) {
    const char* g = std::getenv("WEFT_TP_LINK_GBPS");
    const double gbps = g ? std::atof(g) : 100.0;
    comm::CostModel m = comm::CostModel::mpi();
    m.alpha = 5e-6;
    m.beta = 8.0 / (gbps * 1e9);
    const std::size_t msg = static_cast<std::size_t>(tokens * c) * sizeof(float);
    // Sequence parallelism moves the same bytes as all-gather + reduce-scatter
    // pairs; the ring model prices them as the allreduces they replace.
    const double comm_s = Model::allreduces_per_step * comm::Ring::cost(comm::Collective::allreduce, msg, 8, m);
    const double proj = (step_s - coll) / 8 + comm_s;
    std::printf("projected_t8_link_gbps %.1f\nprojected_t8_comm_ms %.3f\nprojected_t8_tokens_per_s %.1f\n", gbps, 1e3 * comm_s,
                static_cast<double>(tokens) / proj);
  }
}

template <class Transport>
void run(Transport& t, double seconds, index_t tokens, index_t c) {
  using T = Timed<comm::Communicator<comm::Ring, Transport>>;
  const char* m = std::getenv("WEFT_TP_MODEL");
  const std::string model = m ? m : "mlp";
  if (model == "mlp")
    run_model<MlpModel<T>>(t, seconds, tokens, c, "mlp");
  else if (model == "block")
    run_model<BlockModel<T, false>>(t, seconds, tokens, c, "block");
  else if (model == "block_sp")
    run_model<BlockModel<T, true>>(t, seconds, tokens, c, "block_sp");
  else
    throw_error<ValueError>("bench_tensor_parallel: WEFT_TP_MODEL=", model, " is not one of mlp, block, block_sp");
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
