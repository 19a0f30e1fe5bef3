// Story 3, shared by the two launchers (threads.cpp: 4 ranks in one process;
// mpi.cpp: one rank per MPI process). Data-parallel training of the
// Fashion-MNIST MLP with a per-layer choice of collective algorithm: the ring
// for the small layers, halving-doubling for the largest (l1, 784 x 256).
// Global batch 128, split evenly over the ranks; Adam with cosine decay, each
// rank stepping its own shard of the parameters (DataParallel shard_update).
//
// Surviving a lost rank (--checkpoint DIR): a checkpoint after every epoch
// (parameters, Adam's moments and step, the epoch); a run resumes from the
// newest one, on however many ranks it now has (the sharded optimizer state
// is resharded). --fail R@E makes rank R fail halfway through epoch E of the
// first attempt: threads.cpp restarts the survivors (run_elastic), mpi.cpp
// dies with SIGKILL and scripts/weft-run restarts the job on one rank fewer.
// Use a global batch that both rank counts split (--batch 120 for 4 and 3).
#pragma once

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <weft/comm/algorithm/halving_doubling.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/io/checkpoint/checkpoint.hpp>
#include <weft/io/idx.hpp>
#include <weft/io/sampler.hpp>
#include <weft/nn/nn.hpp>
#include <weft/parallel/data_parallel.hpp>
#include <weft/weft.hpp>

namespace story {

using namespace weft;

// Standardise pixels with the training set's statistics (same on every rank).
inline void standardise(io::Dataset& train, io::Dataset& test) {
  const float mu = eval(mean(train.images)).item();
  const float sd = std::sqrt(eval(mean(square(train.images - mu))).item());
  train.images = (train.images - mu) / sd;
  test.images = (test.images - mu) / sd;
}

struct Options {
  int epochs = 5;
  index_t global_batch = 128;
  std::uint64_t seed = 1;
  std::filesystem::path checkpoint;  // empty: no checkpoints
  int fail_rank = -1, fail_epoch = -1;  // --fail R@E
  int attempt = 0;                      // 0: the first run; a restart is 1, 2, ...
  std::function<void(int rank, int epoch)> fail{};  // how the failing rank fails
};

// The launchers' command line: [ranks] (threads only) [epochs] [seed], then
// --batch N, --checkpoint DIR, --fresh (threads: remove DIR's checkpoints
// first), --fail R@E. A bad argument is a ValueError holding the usage.
struct CommandLine {
  Options o;
  int ranks = 4;
  bool fresh = false;
};
inline CommandLine parse_command_line(int argc, char** argv, bool with_ranks) {
  CommandLine cl;
  int positional = with_ranks ? 0 : 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i], next = i + 1 < argc ? argv[i + 1] : "";
    if (a == "--batch" && !next.empty()) {
      cl.o.global_batch = std::atoll(argv[++i]);
    } else if (a == "--checkpoint" && !next.empty()) {
      cl.o.checkpoint = argv[++i];
    } else if (a == "--fresh" && with_ranks) {
      cl.fresh = true;
    } else if (a == "--fail" && next.find('@') != std::string::npos) {
      cl.o.fail_rank = std::atoi(next.c_str());
      cl.o.fail_epoch = std::atoi(next.c_str() + next.find('@') + 1);
      ++i;
    } else if (!a.starts_with("--") && positional < 3) {
      if (positional == 0) cl.ranks = std::atoi(a.c_str());
      else if (positional == 1) cl.o.epochs = std::atoi(a.c_str());
      else cl.o.seed = std::strtoull(a.c_str(), nullptr, 10);
      ++positional;
    } else {
      throw_error<ValueError>("usage: ", argv[0], with_ranks ? " [ranks]" : "", " [epochs] [seed] [--batch N] [--checkpoint DIR",
                              with_ranks ? " [--fresh]" : "", "] [--fail RANK@EPOCH]  (at '", a, "')");
    }
  }
  if (cl.o.fail_rank >= 0 && cl.o.checkpoint.empty())
    throw_error<ValueError>("--fail needs --checkpoint DIR: without checkpoints there is nothing to resume from");
  return cl;
}

// Returns rank 0's final test accuracy (%; other ranks: 0).
template <class Transport>
double train(Transport& t, const io::Dataset& train, const io::Dataset& test, const Options& o) {
  using namespace weft::comm;
  namespace ck = weft::io::checkpoint;
  const int epochs = o.epochs;
  const index_t global_batch = o.global_batch;
  const std::uint64_t seed = o.seed;
  const int rank = t.rank(), size = t.size();
  if (global_batch % size != 0)
    throw_error<ValueError>("global batch ", global_batch, " does not split evenly over ", size, " ranks");
  const index_t batch = global_batch / size, d = train.images.size(1), n = train.images.size(0);

  // One communicator per policy, each on its own transport context.
  Communicator<Ring, Transport> ring{t};
  Communicator<HalvingDoubling, Transport> big{t.split(1, rank, Clock::now() + std::chrono::seconds(30))};

  nn::Linear<float> l1(d, 256, seed), l2(256, 256, seed + 1), l3(256, 10, seed + 2);
  nn::Registry<float> params;
  params.add("l1", l1).add("l2", l2).add("l3", l3);
  parallel::DataParallel dp(params, ring, big);  // broadcasts rank 0's parameters
  dp.layer("l1").use(big);                        // the largest layer: halving-doubling
  dp.set_shard_update(true);                      // each rank runs Adam on 1/size of the parameters
  nn::Adam<float> opt(params, {.lr = 1e-3f});
  io::DistributedSampler sampler(n, rank, size, seed, io::Remainder::drop);
  const index_t steps_per_epoch = sampler.shard_size() / batch;
  const nn::CosineAnnealing schedule{.lr = 1e-3f, .total_steps = epochs * steps_per_epoch};

  Tensor<float> xb({batch, d});
  Tensor<std::int32_t> yb({batch});
  auto model = [&](auto x) { return l3(relu(l2(relu(l1(x))))); };
  Workspace<> ws;
  if (rank == 0)
    std::printf("data parallel: %d ranks x batch %lld, MLP %lld-256-256-10, Adam (cosine); l1 via halving-doubling, "
                "l2 and l3 via ring; sharded Adam step\n",
                size, static_cast<long long>(batch), static_cast<long long>(d));

  // What a checkpoint holds, by name; rank r holds the optimizer state of its shard.
  std::int64_t done = 0;  // epochs finished
  auto state = [&](auto& v) {
    auto m = nn::prefixed("model", v);     nn::visit_state(params, m);
    auto a = nn::prefixed("optimizer", v); opt.visit_state(a);
    auto p = nn::prefixed("dp", v);        dp.visit_state(p);
    v(std::string_view("epochs_done"), done);
  };
  if (!o.checkpoint.empty())
    if (auto last = ck::latest(o.checkpoint)) {
      ck::load(*last, state, ring, {.sharding = ck::data_parallel_sharding(dp, params)});
      if (rank == 0)
        std::printf("resumed from %s: %lld epochs done, now on %d ranks\n", last->string().c_str(),
                    static_cast<long long>(done), size);
    }
  double accuracy = 0;

  for (int epoch = static_cast<int>(done) + 1; epoch <= epochs; ++epoch) {
    auto idx = sampler.indices(static_cast<std::uint64_t>(epoch));
    auto t0 = std::chrono::steady_clock::now();
    double total = 0;
    for (index_t s = 0; s < steps_per_epoch; ++s) {
      if (o.attempt == 0 && rank == o.fail_rank && epoch == o.fail_epoch && s == steps_per_epoch / 2 && o.fail)
        o.fail(rank, epoch);
      io::gather_batch(train, idx, s * batch, xb, yb);
      opt.set_lr(schedule(opt.steps()));
      opt.zero_grad();
      total += dp.backward(cross_entropy(model(xb), yb), ws);
      dp.step(opt);  // Adam on this rank's shard, then every rank gets the updated values
      if (rank == 0 && s % 50 == 0) {
        std::printf("\r  epoch %d  %3.0f%%  loss %.4f", epoch, 100.0 * static_cast<double>(s) / static_cast<double>(steps_per_epoch),
                    total / static_cast<double>(s + 1));
        std::fflush(stdout);
      }
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double loss = total / static_cast<double>(steps_per_epoch);
    ring.allreduce(std::span<double>(&loss, 1), ReduceOp::avg);  // mean over ranks
    if (rank == 0) {
      Tensor<float> logits = eval(model(test.images), ws);
      accuracy = 100.0 * nn::accuracy(logits, test.labels);
      std::printf("\r\033[Kepoch %d  loss %.4f  test accuracy %.2f%%  %.0f samples/s (all ranks)\n", epoch, loss, accuracy,
                  static_cast<double>(steps_per_epoch * global_batch) / secs);
    }
    done = epoch;
    if (!o.checkpoint.empty())
      ck::save(ck::step_dir(o.checkpoint, epoch), state, ring,
               {.step = epoch, .sharding = ck::data_parallel_sharding(dp, params)});
  }
  return accuracy;
}

}  // namespace story
