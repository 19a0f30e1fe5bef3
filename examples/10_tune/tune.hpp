// Story 10, shared by the two launchers (threads.cpp: 4 ranks in one process;
// mpi.cpp: one rank per MPI process): tune the Fashion-MNIST MLP's learning
// rate, weight decay and hidden width, 2 trials of 2 ranks at a time, each
// trial trained data-parallel on its group. ASHA over 16 Sobol points against
// a grid run to the end (FIFO): both bests and the epochs each search spent.
//
//   build/examples/10_tune [--quick] [--out DIR = tune_results or tune_results_quick] [--seed S]
//   mpirun -np 4 build/examples/10_tune_mpi [same options]
//   python3 examples/10_tune/plot.py DIR/asha.json DIR/grid.json -o tune.png
//
// The metric is accuracy on a validation set held out of the training set
// (the last 10,000 of its 60,000 images), never the test set. The model is
// story 3's MLP, 784-H-H-10 with ReLU, AdamW at a constant learning rate,
// global batch 128 (64 per rank). --quick trains on 4,096 images for at most
// 3 epochs with 4 samples and a 2 x 2 grid: a smoke test (CI runs it).
// Results, written as the searches go (rerunning resumes them):
// DIR/asha.{json,csv}, DIR/grid.{json,csv}.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/io/idx.hpp>
#include <weft/io/sampler.hpp>
#include <weft/nn/nn.hpp>
#include <weft/parallel/data_parallel.hpp>
#include <weft/tune/asha.hpp>
#include <weft/tune/fifo.hpp>
#include <weft/tune/sampler.hpp>
#include <weft/tune/search.hpp>
#include <weft/weft.hpp>

namespace story10 {

using namespace weft;

// Rows [first, first + n) of a dataset, standardised with (mu, sd).
io::Dataset rows(const io::Dataset& d, index_t first, index_t n) {
  const index_t dim = d.images.size(1);
  io::Dataset out{Tensor<float>({n, dim}), Tensor<std::int32_t>({n})};
  std::memcpy(out.images.data(), d.images.data() + first * dim, static_cast<std::size_t>(n * dim) * sizeof(float));
  std::memcpy(out.labels.data(), d.labels.data() + first, static_cast<std::size_t>(n) * sizeof(std::int32_t));
  return out;
}

struct Data {
  io::Dataset train, val;
};

// One trial: the MLP of width H trained data-parallel on `group` (this trial's
// ranks), reporting validation accuracy (percent) after every epoch.
template <class Transport>
void train_trial(tune::Trial& trial, Transport& group, const Data& data, std::uint64_t seed) {
  const float lr = static_cast<float>(trial.config().number("lr"));
  const float wd = static_cast<float>(trial.config().number("wd"));
  const index_t h = trial.config().integer("hidden");
  comm::Communicator<comm::Ring, Transport> ring{group};
  const index_t global_batch = 128, batch = global_batch / ring.size(), d = data.train.images.size(1);

  nn::Linear<float> l1(d, h, seed), l2(h, h, seed + 1), l3(h, 10, seed + 2);
  nn::Registry<float> params;
  params.add("l1", l1).add("l2", l2).add("l3", l3);
  // Blocking reductions after backward: with 4 ranks on few cores there is no spare core for progress threads.
  parallel::DataParallel dp(params, ring);
  dp.set_overlap(false);
  nn::AdamW<float> opt(params, {.lr = lr, .weight_decay = wd});
  io::DistributedSampler sampler(data.train.labels.numel(), ring.rank(), ring.size(), seed, io::Remainder::drop);
  const index_t steps = sampler.shard_size() / batch;
  Tensor<float> xb({batch, d});
  Tensor<std::int32_t> yb({batch});
  auto model = [&](auto x) { return l3(relu(l2(relu(l1(x))))); };
  Workspace<> ws;
  for (int epoch = 1; epoch <= trial.max_epochs(); ++epoch) {
    auto idx = sampler.indices(static_cast<std::uint64_t>(epoch));
    for (index_t s = 0; s < steps; ++s) {
      io::gather_batch(data.train, idx, s * batch, xb, yb);
      opt.zero_grad();
      const float loss = dp.backward(cross_entropy(model(xb), yb), ws);
      if (!std::isfinite(loss)) throw_error<ValueError>("loss is ", loss, " at epoch ", epoch, " step ", s);
      dp.step(opt);
    }
    // Parameters agree on every rank: the group's first rank evaluates, its metric is the one that counts.
    double acc = 0;
    if (ring.rank() == 0) acc = 100.0 * nn::accuracy(eval(model(data.val.images), ws), data.val.labels);
    if (!trial.report(epoch, acc)) return;
  }
}

void print_best(const char* name, const tune::Results& r, double seconds) {
  const tune::TrialRecord* b = r.best();
  std::printf("%-5s %2zu trials (%zu completed, %zu stopped, %zu failed), %3lld epochs, %6.1f s; best %.2f%% after %d "
              "epochs: %s\n",
              name, r.trials.size(), r.count(tune::Status::completed), r.count(tune::Status::stopped),
              r.count(tune::Status::failed), r.total_epochs(), seconds, b ? b->last_metric() : 0.0,
              b ? b->epochs() : 0, b ? b->config.to_string().c_str() : "-");
}

// Both searches. launch(body) runs body(world) on every rank; `printer`: this
// process prints the comparison. Returns the exit code.
template <class Launch>
int run(int argc, char** argv, bool printer, Launch&& launch) {
  bool quick = false;
  std::string out;
  std::uint64_t seed = 1;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
    else if (!std::strcmp(argv[i], "--seed") && i + 1 < argc) seed = std::strtoull(argv[++i], nullptr, 10);
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--out DIR] [--seed S]\n", argv[0]);
      return 2;
    }
  }
  if (out.empty()) out = quick ? "tune_results_quick" : "tune_results";
  openblas_set_num_threads(1);
  io::Dataset full;
  try {
    full = io::load_fashion_mnist("train");
  } catch (const IoError& e) {
    std::fprintf(stderr, "skipped: %s\n", e.what());
    return 77;  // no dataset: skipped (Meson's convention)
  }
  // Standardise with the training rows' statistics; hold out the last 10,000 rows for validation.
  const float mu = eval(mean(full.images)).item();
  const float sd = std::sqrt(eval(mean(square(full.images - mu))).item());
  full.images = (full.images - mu) / sd;
  const index_t n_train = quick ? 4096 : 50000, n_val = quick ? 2048 : 10000;
  const Data data{rows(full, 0, n_train), rows(full, 60000 - n_val, n_val)};
  std::filesystem::create_directories(out);

  // The search space: a learning rate, a weight decay, a hidden width.
  tune::Space space;
  space.add("lr", tune::log_uniform(1e-4, 1e-2).grid(3))
      .add("wd", tune::choice({0.0, 0.1}))
      .add("hidden", tune::log_integer(64, 256).grid(2));
  const int max_epochs = quick ? 3 : 9;
  const std::size_t samples = quick ? 4 : 16;
  if (quick) space = tune::Space().add("lr", tune::log_uniform(1e-3, 1e-2).grid(2)).add("wd", tune::choice({0.0})).add(
                 "hidden", tune::log_integer(32, 64).grid(2));

  const tune::SearchOptions asha_opts{.ranks_per_trial = 2, .results = out + "/asha", .log = true};
  const tune::SearchOptions grid_opts{.ranks_per_trial = 2, .results = out + "/grid", .log = true};
  tune::Results asha_results, grid_results;
  double asha_s = 0, grid_s = 0;
  auto train = [&](tune::Trial& trial, auto& group) { train_trial(trial, group, data, seed); };
  auto timed = [](auto&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };

  if (printer)
    std::printf("ASHA (eta 3, rungs at 1 and 3 epochs, at most %d) over %zu Sobol points, trials of 2 ranks\n",
                max_epochs, samples);
  asha_s = timed([&] {
    launch([&](auto& world) {
      tune::SobolSampler sampler(space, samples);
      tune::Asha asha({.min_epochs = 1, .eta = 3, .max_epochs = max_epochs});
      auto r = tune::search(world, sampler, asha, train, asha_opts);
      if (world.rank() == 0) asha_results = r;
    });
  });
  if (printer) std::printf("grid (%d epochs each, FIFO), trials of 2 ranks\n", max_epochs);
  grid_s = timed([&] {
    launch([&](auto& world) {
      tune::GridSampler sampler(space);
      tune::Fifo fifo(max_epochs);
      auto r = tune::search(world, sampler, fifo, train, grid_opts);
      if (world.rank() == 0) grid_results = r;
    });
  });
  if (!printer) return 0;

  std::printf("\n");
  print_best("asha", asha_results, asha_s);
  print_best("grid", grid_results, grid_s);
  const tune::TrialRecord *a = asha_results.best(), *g = grid_results.best();
  if (a && g) {
    const double gap = g->last_metric() - a->last_metric();
    const double ratio = static_cast<double>(asha_results.total_epochs()) / static_cast<double>(grid_results.total_epochs());
    std::printf("asha vs grid: %.2f points %s the grid's best (within 0.3: %s), %.2f of its epochs (at most half: %s)\n",
                std::abs(gap), gap > 0 ? "below" : "above or at", gap <= 0.3 ? "yes" : "no", ratio,
                ratio <= 0.5 ? "yes" : "no");
  }
  std::printf("results: %s/asha.{json,csv}, %s/grid.{json,csv}\n", out.c_str(), out.c_str());
  return 0;
}

}  // namespace story10
