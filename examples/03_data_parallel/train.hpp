// Story 3, shared by the two launchers (threads.cpp: 4 ranks in one process;
// mpi.cpp: one rank per MPI process). Data-parallel training of the
// Fashion-MNIST MLP with a per-layer choice of collective algorithm: the ring
// for the small layers, halving-doubling for the largest (l1, 784 x 256).
// Global batch 128, split evenly over the ranks; Adam with cosine decay, each
// rank stepping its own shard of the parameters (DataParallel shard_update).
// Story 4 (examples/04_compressed) trains the same model on the same batches.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <utility>
#include <vector>
#include <weft/comm/algorithm/halving_doubling.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
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

// The model of stories 3 and 4: an MLP d-256-256-10 with ReLU, its
// parameters registered as l1, l2, l3.
struct Mlp {
  nn::Linear<float> l1, l2, l3;
  nn::Registry<float> params;
  Mlp(index_t d, std::uint64_t seed) : l1(d, 256, seed), l2(256, 256, seed + 1), l3(256, 10, seed + 2) {
    params.add("l1", l1).add("l2", l2).add("l3", l3);
  }
  Mlp(const Mlp&) = delete;  // params points at the layers
  Mlp& operator=(const Mlp&) = delete;
  template <class X>
  auto operator()(X&& x) {  // (B, d) -> logits (B, 10)
    return l3(relu(l2(relu(l1(std::forward<X>(x))))));
  }
};

// One rank's batches: its shard of each epoch's permutation (the remainder
// dropped), `batch` rows at a time, and Adam's cosine schedule over every step.
struct Batches {
  io::DistributedSampler sampler;
  index_t batch, steps_per_epoch;
  nn::CosineAnnealing schedule;
  Tensor<float> x;          // (batch, d)
  Tensor<std::int32_t> y;   // (batch,)
  std::vector<index_t> order;

  Batches(const io::Dataset& train, int rank, int size, index_t batch, int epochs, std::uint64_t seed, float lr)
      : sampler(train.images.size(0), rank, size, seed, io::Remainder::drop),
        batch(batch),
        steps_per_epoch(sampler.shard_size() / batch),
        schedule{.lr = lr, .total_steps = epochs * steps_per_epoch},
        x({batch, train.images.size(1)}),
        y({batch}) {}
  void start_epoch(int epoch) { order = sampler.indices(static_cast<std::uint64_t>(epoch)); }
  void load(const io::Dataset& train, index_t step) { io::gather_batch(train, order, step * batch, x, y); }
};

template <class Transport>
void train(Transport& t, const io::Dataset& train, const io::Dataset& test, int epochs, index_t global_batch,
           std::uint64_t seed) {
  using namespace weft::comm;
  const int rank = t.rank(), size = t.size();
  if (global_batch % size != 0)
    throw_error<ValueError>("global batch ", global_batch, " does not split evenly over ", size, " ranks");
  const index_t batch = global_batch / size, d = train.images.size(1);

  // One communicator per policy, each on its own transport context.
  Communicator<Ring, Transport> ring{t};
  Communicator<HalvingDoubling, Transport> big{t.split(1, rank, Clock::now() + std::chrono::seconds(30))};

  Mlp model(d, seed);
  parallel::DataParallel dp(model.params, ring, big);  // broadcasts rank 0's parameters
  dp.layer("l1").use(big);                              // the largest layer: halving-doubling
  dp.set_shard_update(true);                            // each rank runs Adam on 1/size of the parameters
  nn::Adam<float> opt(model.params, {.lr = 1e-3f});
  Batches data(train, rank, size, batch, epochs, seed, 1e-3f);
  const index_t steps_per_epoch = data.steps_per_epoch;
  Workspace<> ws;
  if (rank == 0)
    std::printf("data parallel: %d ranks x batch %lld, MLP %lld-256-256-10, Adam (cosine); l1 via halving-doubling, "
                "l2 and l3 via ring; sharded Adam step\n",
                size, static_cast<long long>(batch), static_cast<long long>(d));

  for (int epoch = 1; epoch <= epochs; ++epoch) {
    data.start_epoch(epoch);
    auto t0 = std::chrono::steady_clock::now();
    double total = 0;
    for (index_t s = 0; s < steps_per_epoch; ++s) {
      data.load(train, s);
      opt.set_lr(data.schedule(opt.steps()));
      opt.zero_grad();
      total += dp.backward(cross_entropy(model(data.x), data.y), ws);
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
      std::printf("\r\033[Kepoch %d  loss %.4f  test accuracy %.2f%%  %.0f samples/s (all ranks)\n", epoch, loss,
                  100.0 * nn::accuracy(logits, test.labels),
                  static_cast<double>(steps_per_epoch * global_batch) / secs);
    }
  }
}

}  // namespace story
