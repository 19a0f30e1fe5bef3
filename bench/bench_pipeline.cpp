// Pipeline bubbles, measured: an MLP of 8 equal layers (Linear H-H + tanh;
// the first adds a learned input embedding, the last ends in a 10-class
// head and cross-entropy, so that every stage does the same work per
// micro-batch, as the formulas assume) cut into p v equal stages on p thread
// ranks, micro-batches of R rows. Each step is traced; the bubble is
// 1 - sum(busy) / (p x makespan) of the step's actions, averaged over the
// steps. The per-stage F, B and W times measured in those traces drive
// simulate(), which gives the bubble the same schedule would have with one
// core per rank (p = 4 oversubscribes a 2-core machine).
//
//   build/bench/bench_pipeline p m schedule [steps = 30] [hidden = 256] [rows = 256]
//   schedule: gpipe | 1f1b | interleaved (v = 2) | zb
// One line of key=value pairs (bench/compare_pipeline.sh reads it).
// WEFT_PIPE_STAGES=1: per-stage F, B, W times; WEFT_PIPE_TIMELINE=1: the last
// step's ASCII timeline; WEFT_PIPE_EVENTS=1: the last step's actions, one per
// line (rank, op, micro-batch, start and end in us from the step's start):
// a receive's end minus its send's start is the delivery latency.
// WEFT_PIPE_COPY=1: messages carry copies of the payload (PipelineOptions::
// zero_copy off; by default thread ranks read the sender's buffer in place).
// WEFT_PIPE_BIND=0: ranks unpinned (by default each has its own core where
// p <= cores).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>
#include <weft/comm/run_local.hpp>
#include <weft/nn/nn.hpp>
#include <weft/nn/transformer.hpp>
#include <weft/parallel/pipeline/pipeline.hpp>
#include <weft/weft.hpp>

using namespace weft;
namespace pp = weft::parallel::pipeline;

namespace {

struct Block {
  nn::Linear<float> lin;
  Block(index_t h, std::uint64_t seed) : lin(h, h, seed) {}
  template <class X>
  auto operator()(X&& x) {
    return tanh(lin(std::forward<X>(x)));
  }
  template <class F>
  void for_each_parameter(F&& f) {
    lin.for_each_parameter(f);
  }
};

// The first block adds a learned input embedding (a ViT's positional
// embedding, a language model's token embedding), so the first stage's
// backward computes its first layer's input gradient as every other layer
// does; without it stage 0 skipped one of its four input-gradient gemms and
// the stages differed by ~15% per micro-batch, which is a bubble no
// schedule's formula counts.
struct EntryBlock {
  Parameter<float> embed;
  Block block;
  EntryBlock(index_t h, std::uint64_t seed) : embed("embed", Shape{h}), block(h, seed) {
    nn::Rng rng(seed + 100);
    for (index_t i = 0; i < h; ++i) embed.value.data()[i] = static_cast<float>(0.02 * rng.normal_double());
  }
  template <class X>
  auto operator()(X&& x) {
    return block(std::forward<X>(x) + embed);
  }
  template <class F>
  void for_each_parameter(F&& f) {
    f("embed", embed);
    nn::for_each_parameter_in(block, "block", f);
  }
};

// The last block ends in a 10-class head (Fashion-MNIST's classes): the loss
// adds ~1% to the last stage, where cross-entropy over all H outputs added
// ~8%.
constexpr index_t classes = 10;
struct HeadBlock {
  Block block;
  nn::Linear<float> head;
  HeadBlock(index_t h, std::uint64_t seed) : block(h, seed), head(h, classes, seed + 100) {}
  template <class X>
  auto operator()(X&& x) {
    return head(block(std::forward<X>(x)));
  }
  template <class F>
  void for_each_parameter(F&& f) {
    nn::for_each_parameter_in(block, "block", f);
    nn::for_each_parameter_in(head, "head", f);
  }
};
using Model = nn::Sequential<EntryBlock, Block, Block, Block, Block, Block, Block, HeadBlock>;

template <int S>
auto cut_model(Model& m) {
  if constexpr (S == 2)
    return pp::cut<4>(m);
  else if constexpr (S == 4)
    return pp::cut<2, 4, 6>(m);
  else
    return pp::cut<1, 2, 3, 4, 5, 6, 7>(m);
}

struct Result {
  double bubble = 0, sim_bubble = 0, samples_per_s = 0, peak_mib = 0;
  int peak_stashes = 0;
  std::vector<double> f, b, w;  // per stage, seconds
  std::string timeline;
};

template <int S>
Result run(const pp::Schedule& sched, int steps, index_t hidden, index_t rows) {
  const int p = sched.ranks, m = sched.micro_batches;
  Tensor<float> x(Shape{rows * m, hidden});
  Tensor<std::int32_t> y(Shape{rows * m});
  nn::Rng rng(7);
  for (index_t i = 0; i < x.numel(); ++i) x.data()[i] = rng.normal();
  for (index_t i = 0; i < y.numel(); ++i) y.data()[i] = static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(classes)));
  Result res;
  res.f.assign(S, 0), res.b.assign(S, 0), res.w.assign(S, 0);
  std::vector<std::size_t> peak_bytes(static_cast<std::size_t>(p));
  std::vector<int> peak_stash(static_cast<std::size_t>(p));
  // Each rank pinned to its own CPU where there are enough (as mpirun binds
  // ranks to cores): unpinned, the scheduler sometimes ran both ranks on one
  // core for a while, and one run's bubble then differed from the next by
  // ~20%. WEFT_PIPE_BIND=0: unpinned.
  const char* bind_env = std::getenv("WEFT_PIPE_BIND");
  const bool bind = !(bind_env && std::string(bind_env) == "0") && static_cast<unsigned>(p) <= std::thread::hardware_concurrency();
  comm::run_local(p, [&](comm::ThreadTransport t) {
    Model model(EntryBlock(hidden, 1), Block(hidden, 2), Block(hidden, 3), Block(hidden, 4), Block(hidden, 5), Block(hidden, 6),
                Block(hidden, 7), HeadBlock(hidden, 8));
    auto loss = [](auto out, TensorView<std::int32_t> labels) { return cross_entropy(out, labels); };
    auto pipe = pp::make_pipeline<float, std::int32_t>(t, sched, cut_model<S>(model), loss, {.trace = true, .zero_copy = std::getenv("WEFT_PIPE_COPY") == nullptr});
    nn::Registry<float> reg;
    reg.add("", model);
    const int warm = 3;
    double total_time = 0, bubble = 0;
    std::vector<double> sum[3];
    std::vector<int> cnt[3];
    for (auto& v : sum) v.assign(S, 0);
    for (auto& v : cnt) v.assign(S, 0);
    for (int s = 0; s < warm + steps; ++s) {
      reg.zero_grad();
      pipe.step(x.view(), y.view());
      pp::Trace tr = pipe.gather_trace();
      if (t.rank() != 0 || s < warm) continue;
      total_time += tr.makespan();
      bubble += tr.bubble();
      for (int r = 0; r < p; ++r)
        for (const pp::Event& e : tr.ranks[static_cast<std::size_t>(r)]) {
          if (!pp::is_compute(e.action.op)) continue;
          const int k = e.action.op == pp::Op::F ? 0 : e.action.op == pp::Op::B ? 1 : 2;
          const int st = sched.stage(r, e.action.chunk);
          sum[k][static_cast<std::size_t>(st)] += e.end - e.start;
          ++cnt[k][static_cast<std::size_t>(st)];
        }
      if (s + 1 == warm + steps) res.timeline = pp::ascii_timeline(tr, 96);
      if (s + 1 == warm + steps && std::getenv("WEFT_PIPE_EVENTS")) {
        const double t0 = tr.begin();
        for (int r = 0; r < p; ++r)
          for (const pp::Event& e : tr.ranks[static_cast<std::size_t>(r)])
            std::printf("r%d %-9s mb%d %8.0f %8.0f\n", r, pp::op_name(e.action.op), e.action.mb, 1e6 * (e.start - t0), 1e6 * (e.end - t0));
      }
    }
    peak_bytes[static_cast<std::size_t>(t.rank())] = pipe.peak_activation_bytes();
    peak_stash[static_cast<std::size_t>(t.rank())] = pipe.peak_activations();
    if (t.rank() == 0) {
      res.bubble = bubble / steps;
      res.samples_per_s = static_cast<double>(steps) * static_cast<double>(rows * m) / total_time;
      for (int st = 0; st < S; ++st) {
        auto mean = [&](int k) { return cnt[k][static_cast<std::size_t>(st)] ? sum[k][static_cast<std::size_t>(st)] / cnt[k][static_cast<std::size_t>(st)] : 0.0; };
        res.f[static_cast<std::size_t>(st)] = mean(0), res.b[static_cast<std::size_t>(st)] = mean(1), res.w[static_cast<std::size_t>(st)] = mean(2);
      }
    }
  }, {.bind_cores = bind});
  res.peak_mib = static_cast<double>(*std::max_element(peak_bytes.begin(), peak_bytes.end())) / (1 << 20);
  res.peak_stashes = *std::max_element(peak_stash.begin(), peak_stash.end());
  res.sim_bubble = pp::simulate(sched, {res.f, res.b, res.w, 0}).bubble();
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: bench_pipeline p m gpipe|1f1b|interleaved|zb [steps = 30] [hidden = 256] [rows = 256]\n");
    return 2;
  }
  const int p = std::atoi(argv[1]), m = std::atoi(argv[2]);
  const std::string which = argv[3];
  const int steps = argc > 4 ? std::atoi(argv[4]) : 30;
  const index_t hidden = argc > 5 ? std::atoll(argv[5]) : 256, rows = argc > 6 ? std::atoll(argv[6]) : 256;
  openblas_set_num_threads(1);
  pp::Schedule sched;
  int v = 1;
  if (which == "gpipe") sched = pp::GPipe{}.build(p, m);
  else if (which == "1f1b") sched = pp::OneFOneB{}.build(p, m);
  else if (which == "zb") sched = pp::ZeroBubbleH1{}.build(p, m);
  else if (which == "interleaved") sched = pp::Interleaved1F1B<2>{}.build(p, m), v = 2;
  else {
    std::fprintf(stderr, "bench_pipeline: unknown schedule '%s'\n", which.c_str());
    return 2;
  }
  const int S = p * v;
  Result r;
  if (S == 2) r = run<2>(sched, steps, hidden, rows);
  else if (S == 4) r = run<4>(sched, steps, hidden, rows);
  else if (S == 8) r = run<8>(sched, steps, hidden, rows);
  else {
    std::fprintf(stderr, "bench_pipeline: p x v must be 2, 4 or 8 (8 layers), got %d\n", S);
    return 2;
  }
  double f = 0, b = 0, w = 0;
  for (int s = 0; s < S; ++s) f += r.f[static_cast<std::size_t>(s)], b += r.b[static_cast<std::size_t>(s)], w += r.w[static_cast<std::size_t>(s)];
  std::printf("schedule=%s p=%d m=%d bubble=%.4f sim_bubble=%.4f formula=%.4f peak_stashes=%d peak_act_mib=%.3f "
              "samples_per_s=%.0f f_us=%.1f b_us=%.1f w_us=%.1f\n",
              sched.name.c_str(), p, m, r.bubble, r.sim_bubble, pp::formula_bubble(p, m, v), r.peak_stashes, r.peak_mib,
              r.samples_per_s, 1e6 * f / S, 1e6 * b / S, 1e6 * w / S);
  if (std::getenv("WEFT_PIPE_STAGES"))
    for (int s = 0; s < S; ++s)
      std::printf("stage %d: F %.1f us  B %.1f us  W %.1f us\n", s, 1e6 * r.f[static_cast<std::size_t>(s)],
                  1e6 * r.b[static_cast<std::size_t>(s)], 1e6 * r.w[static_cast<std::size_t>(s)]);
  if (std::getenv("WEFT_PIPE_TIMELINE")) std::printf("%s", r.timeline.c_str());
  return 0;
}
