// Pipeline exactness checks written once for every transport
// (test_pipeline.cpp runs them on thread ranks, test_pipeline_mpi.cpp under
// mpirun): p ranks running a schedule against one rank accumulating the
// gradients of the same micro-batches with weft::backward.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/nn/nn.hpp>
#include <weft/parallel/data_parallel.hpp>
#include <weft/parallel/pipeline/pipeline.hpp>
#include <weft/weft.hpp>

namespace pipe_suite {

using namespace weft;
namespace pp = weft::parallel::pipeline;

constexpr index_t kBatch = 32, kIn = 12, kHidden = 16, kClasses = 4, kRows = 128;

struct Data {
  Tensor<float> x{Shape{kRows, kIn}};
  Tensor<std::int32_t> y{Shape{kRows}};
  Data() {
    nn::Rng rng(11);
    for (index_t i = 0; i < x.numel(); ++i) x.data()[i] = rng.normal();
    for (index_t i = 0; i < kRows; ++i) y.data()[i] = static_cast<std::int32_t>(rng.below(kClasses));
  }
  TensorView<float> xs(int step) const { return x.slice((step * kBatch) % kRows, (step * kBatch) % kRows + kBatch); }
  TensorView<std::int32_t> ys(int step) const { return y.slice((step * kBatch) % kRows, (step * kBatch) % kRows + kBatch); }
};

// Linear then tanh, as one layer of a Sequential.
struct Block {
  nn::Linear<float> lin;
  Block(index_t in, index_t out, std::uint64_t seed) : lin(in, out, seed) {}
  template <class X>
  auto operator()(X&& x) {
    return tanh(lin(std::forward<X>(x)));
  }
  template <class F>
  void for_each_parameter(F&& f) {
    lin.for_each_parameter(f);
  }
};

// Eight layers, cut into 2, 4 or 8 stages.
using Model = nn::Sequential<Block, Block, Block, Block, Block, Block, Block, nn::Linear<float>>;
inline Model make_model() {
  return Model(Block(kIn, kHidden, 1), Block(kHidden, kHidden, 2), Block(kHidden, kHidden, 3), Block(kHidden, kHidden, 4),
               Block(kHidden, kHidden, 5), Block(kHidden, kHidden, 6), Block(kHidden, kHidden, 7),
               nn::Linear<float>(kHidden, kClasses, 8));
}

template <int S>
auto cut_model(Model& m) {
  if constexpr (S == 2)
    return pp::cut<4>(m);
  else if constexpr (S == 4)
    return pp::cut<2, 4, 6>(m);
  else
    return pp::cut<1, 2, 3, 4, 5, 6, 7>(m);
}

inline auto loss_fn() {
  return [](auto logits, TensorView<std::int32_t> y) { return cross_entropy(logits, y); };
}

inline std::vector<float> flat(nn::Registry<float>& reg, bool grads) {
  std::vector<float> v;
  for (Parameter<float>* p : reg)
    for (index_t i = 0; i < p->numel(); ++i) v.push_back(grads ? p->grad.data()[i] : p->value.data()[i]);
  return v;
}

inline bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// One rank: gradient accumulation over m micro-batches of each step, scaled
// by 1/m; returns the gradients of step 0 and the parameters after `steps`
// SGD steps. Only the parameters of the stages in `mine` (stage indices of an
// S-stage cut) are reported, in registration order.
struct Reference {
  std::vector<float> grads, values;
  std::string err;
};

template <int S>
nn::Registry<float> stage_registry(Model& model, const std::vector<int>& mine) {
  auto stages = cut_model<S>(model);
  nn::Registry<float> reg;
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (((std::find(mine.begin(), mine.end(), static_cast<int>(I)) != mine.end())
          ? (void)reg.add("", std::get<I>(stages))
          : void()),
     ...);
  }(std::make_index_sequence<S>{});
  return reg;
}

template <int S>
Reference reference(const Data& data, int m, int steps, const std::vector<int>& mine) {
  Model model = make_model();
  nn::Registry<float> all;
  all.add("", model);
  nn::Registry<float> reg = stage_registry<S>(model, mine);
  nn::SGD<float> opt(all, {.lr = 0.05f, .momentum = 0.9f});
  Workspace<> ws;
  Reference ref;
  const index_t rows = kBatch / m;
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    auto x = data.xs(s);
    auto y = data.ys(s);
    for (int i = 0; i < m; ++i) backward(cross_entropy(model(x.slice(i * rows, (i + 1) * rows)), y.slice(i * rows, (i + 1) * rows)), ws);
    const float scale = 1.0f / static_cast<float>(m);  // a power of 2 here: exact
    for (Parameter<float>* p : all)
      for (index_t k = 0; k < p->numel(); ++k) p->grad.data()[k] *= scale;
    if (s == 0) ref.grads = flat(reg, true);
    opt.step();
  }
  ref.values = flat(reg, false);
  return ref;
}

// The pipeline on this transport: stages of an S-stage cut, schedule built by
// `policy`; returns this rank's gradients of step 0 and parameters after
// `steps` steps (its stages, in stage order), and checks the activation bound.
template <int S, class Tr, class Policy>
Reference run_pipeline(Tr t, Policy policy, const Data& data, int m, int steps, std::vector<int>& mine,
                       pp::PipelineOptions o = {}) {
  Model model = make_model();
  auto pipe = pp::make_pipeline<float, std::int32_t>(t, policy, m, cut_model<S>(model), loss_fn(), o);
  mine.clear();
  for (int s = 0; s < S; ++s)
    if (pipe.holds_stage(s)) mine.push_back(s);
  nn::Registry<float> reg = stage_registry<S>(model, mine);
  nn::SGD<float> opt(reg, {.lr = 0.05f, .momentum = 0.9f});
  Reference out;
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    pipe.step(data.xs(s), data.ys(s));
    if (pipe.peak_activations() != pipe.report().peak(t.rank()) && out.err.empty())
      out.err = "rank " + std::to_string(t.rank()) + " held " + std::to_string(pipe.peak_activations()) +
                " micro-batch stashes at once, validate() counted " + std::to_string(pipe.report().peak(t.rank()));
    if (s == 0) out.grads = flat(reg, true);
    opt.step();
  }
  out.values = flat(reg, false);
  return out;
}

// Every schedule, m = 1, 4, 8, on this transport (p = its size, 2 or 4).
// Returns a description of the first mismatch, "" when all are bitwise equal.
template <class Tr>
std::string check_all_schedules(Tr t, const Data& data, int steps) {
  const int p = t.size();
  std::string err;
  auto one = [&]<int S>(auto policy, int m) {
    if (!err.empty()) return;
    std::vector<int> mine;
    Reference got = run_pipeline<S>(t, policy, data, m, steps, mine);
    Reference want = reference<S>(data, m, steps, mine);
    const std::string what = std::string(policy.build(p, m).name) + " p=" + std::to_string(p) + " m=" + std::to_string(m) +
                             " rank " + std::to_string(t.rank());
    if (!got.err.empty()) err = what + ": " + got.err;
    else if (!bitwise_equal(got.grads, want.grads)) err = what + ": step-0 gradients differ from one rank's accumulation";
    else if (!bitwise_equal(got.values, want.values))
      err = what + ": parameters after " + std::to_string(steps) + " steps differ from one rank's";
  };
  for (int m : {1, 4, 8}) {
    if (p == 2) {
      one.template operator()<2>(pp::GPipe{}, m);
      one.template operator()<2>(pp::OneFOneB{}, m);
      one.template operator()<2>(pp::ZeroBubbleH1{}, m);
      one.template operator()<4>(pp::Interleaved1F1B<2>{}, m);
    } else if (p == 4) {
      one.template operator()<4>(pp::GPipe{}, m);
      one.template operator()<4>(pp::OneFOneB{}, m);
      one.template operator()<4>(pp::ZeroBubbleH1{}, m);
      one.template operator()<8>(pp::Interleaved1F1B<2>{}, m);
    }
  }
  return err;
}


// 4 ranks: 2 pipelines of 2 stages (ranks {0, 1} and {2, 3}), each fed half
// the batch, with a DataParallel in deterministic mode over the ranks holding
// the same stage ({0, 2} and {1, 3}), ZB-H1, m = 4, 20 SGD steps. Against one
// rank: each half batch accumulated over the micro-batches (scaled 1/m), the
// halves' gradients summed in replica order and halved (the ordered
// average). Returns "" when this rank's parameters are bitwise the reference's.
template <class Tr>
std::string check_pipeline_data_parallel(Tr world, const Data& data) {
  constexpr int kSteps = 20, m = 4;
  const index_t half = kBatch / 2;
  const int r = world.rank(), d = r / 2, stage = r % 2;
  Model ref = make_model();
  nn::Registry<float> all;
  all.add("", ref);
  {
    nn::SGD<float> opt(all, {.lr = 0.05f, .momentum = 0.9f});
    Workspace<> ws;
    const index_t rows = half / m;
    std::vector<std::vector<float>> shard(2);
    for (int s = 0; s < kSteps; ++s) {
      for (int k = 0; k < 2; ++k) {
        opt.zero_grad();
        auto x = data.xs(s).slice(k * half, (k + 1) * half);
        auto y = data.ys(s).slice(k * half, (k + 1) * half);
        for (int i = 0; i < m; ++i)
          backward(cross_entropy(ref(x.slice(i * rows, (i + 1) * rows)), y.slice(i * rows, (i + 1) * rows)), ws);
        shard[static_cast<std::size_t>(k)] = flat(all, true);
      }
      std::size_t j = 0;
      for (Parameter<float>* p : all)
        for (index_t i = 0; i < p->numel(); ++i, ++j)
          p->grad.data()[i] = (shard[0][j] * 0.25f + shard[1][j] * 0.25f) / 2.0f;
      opt.step();
    }
  }
  const auto dl = comm::deadline_after(std::chrono::seconds(60));
  Tr pipe_t = world.split(d, stage, dl);  // one pipeline per replica
  Tr dp_t = world.split(stage, d, dl);    // the ranks holding the same stage
  Model model = make_model();
  auto stages = pp::cut<4>(model);
  nn::Registry<float> reg;
  if (stage == 0) reg.add("", std::get<0>(stages)); else reg.add("", std::get<1>(stages));
  comm::CommOptions co;
  co.deterministic = true;
  comm::Communicator<comm::Ring, Tr> c{dp_t, co};
  parallel::DataParallel<float, decltype(c)> dp(reg, c, {.overlap = false});
  auto pipe = pp::make_pipeline<float, std::int32_t>(pipe_t, pp::ZeroBubbleH1{}, m, stages, loss_fn());
  nn::SGD<float> opt(reg, {.lr = 0.05f, .momentum = 0.9f});
  for (int s = 0; s < kSteps; ++s) {
    opt.zero_grad();
    pipe.step(data.xs(s).slice(d * half, (d + 1) * half), data.ys(s).slice(d * half, (d + 1) * half), dp);
    dp.step(opt);
  }
  nn::Registry<float> want = stage_registry<2>(ref, {stage});
  if (!bitwise_equal(flat(reg, false), flat(want, false)))
    return "rank " + std::to_string(r) + " (stage " + std::to_string(stage) + ", replica " + std::to_string(d) +
           "): parameters after 20 steps differ from one rank's";
  return "";
}

}  // namespace pipe_suite
