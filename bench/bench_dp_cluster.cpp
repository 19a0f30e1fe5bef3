// Data-parallel Fashion-MNIST under mpirun, with and without gradient
// compression: samples/s and time to a target test accuracy. Written for the
// emulated cluster (scripts/cluster.sh; bench/compare_cluster.sh runs it),
// where the links between hosts cost what real ones do.
//
//   mpirun ... bench_dp_cluster [codec = none] [max_epochs = 6] [target = 87]
//   codec: none (ring), bf16, topk (1% + error feedback), powersgd (rank 4, products through CBLAS)
//
// The MLP 784-256-256-10, global batch 128, Adam 1e-3 as in examples/03 and
// 04: the three weight matrices through the codec (one communicator each, so
// a layer's codec state is its own), biases through a plain ring. Test
// accuracy is measured on rank 0 every quarter epoch with the clock stopped
// (every rank waits in a barrier). Prints, on rank 0:
//   result codec=C samples_per_s=S time_to_target_s=T epochs_to_target=E accuracy=A
// time_to_target_s is -1 when the target was not reached in max_epochs.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/codec/cast.hpp>
#include <weft/comm/codec/powersgd.hpp>
#include <weft/comm/codec/powersgd_blas.hpp>
#include <weft/comm/codec/top_k.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/transport/mpi.hpp>
#include <weft/io/idx.hpp>
#include <weft/io/sampler.hpp>
#include <weft/nn/nn.hpp>
#include <weft/parallel/data_parallel.hpp>
#include <weft/weft.hpp>

using namespace weft;
using namespace weft::comm;

namespace {

void standardise(io::Dataset& train, io::Dataset& test) {
  const float mu = eval(mean(train.images)).item();
  const float sd = std::sqrt(eval(mean(square(train.images - mu))).item());
  train.images = (train.images - mu) / sd;
  test.images = (test.images - mu) / sd;
}

template <class Policy>
void run(MpiTransport& t, const io::Dataset& train, const io::Dataset& test, int max_epochs, double target,
         const char* label, Policy weights) {
  const int rank = t.rank(), size = t.size();
  const std::uint64_t seed = 1;
  const index_t global_batch = 128, batch = global_batch / size, d = train.images.size(1), n = train.images.size(0);
  nn::Linear<float> l1(d, 256, seed), l2(256, 256, seed + 1), l3(256, 10, seed + 2);
  nn::Registry<float> params;
  params.add("l1", l1).add("l2", l2).add("l3", l3);
  auto layer_policy = [&](const char* name, index_t cols) {
    Policy p = weights;
    if constexpr (requires { p.states; }) {
      p.states = std::make_shared<typename Policy::state_table>(name);
      if constexpr (requires { p.codec.cols; }) p.codec.cols = static_cast<std::size_t>(cols);
    }
    return p;
  };
  const auto dl = Clock::now() + std::chrono::seconds(60);
  Communicator<Ring, MpiTransport> ring{t.split(0, rank, dl)};
  Communicator<Policy, MpiTransport> c1{t.split(0, rank, dl), layer_policy("l1", 256)},
      c2{t.split(0, rank, dl), layer_policy("l2", 256)}, c3{t.split(0, rank, dl), layer_policy("l3", 10)};
  parallel::DataParallel dp(params, ring, c1, c2, c3);
  dp.layer("l1.weight").use(c1);
  dp.layer("l2.weight").use(c2);
  dp.layer("l3.weight").use(c3);
  nn::Adam<float> opt(params, {.lr = 1e-3f});
  io::DistributedSampler sampler(n, rank, size, seed, io::Remainder::drop);
  const index_t steps_per_epoch = sampler.shard_size() / batch, quarter = std::max<index_t>(1, steps_per_epoch / 4);
  const nn::CosineAnnealing schedule{.lr = 1e-3f, .total_steps = max_epochs * steps_per_epoch};
  Tensor<float> xb({batch, d});
  Tensor<std::int32_t> yb({batch});
  auto model = [&](auto x) { return l3(relu(l2(relu(l1(x))))); };
  Workspace<> ws;
  if (rank == 0)
    std::printf("dp cluster: %d ranks x batch %lld, weights via %s, up to %d epochs, target %.1f%%\n", size,
                static_cast<long long>(batch), label, max_epochs, target);
  double training_s = 0, reached_s = -1, reached_epochs = -1, accuracy = 0;
  std::int64_t samples = 0;
  for (int epoch = 1; epoch <= max_epochs && reached_s < 0; ++epoch) {
    auto idx = sampler.indices(static_cast<std::uint64_t>(epoch));
    auto t0 = std::chrono::steady_clock::now();
    for (index_t s = 0; s < steps_per_epoch; ++s) {
      io::gather_batch(train, idx, s * batch, xb, yb);
      opt.set_lr(schedule(opt.steps()));
      opt.zero_grad();
      dp.backward(cross_entropy(model(xb), yb), ws);
      opt.step();
      samples += global_batch;
      if ((s + 1) % quarter == 0 || s + 1 == steps_per_epoch) {
        ring.barrier();
        training_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        double acc = 0;
        if (rank == 0) {
          Tensor<float> logits = eval(model(test.images), ws);
          acc = 100.0 * nn::accuracy(logits, test.labels);
        }
        ring.broadcast(std::span<double>(&acc, 1), 0);
        accuracy = acc;
        if (acc >= target && reached_s < 0) {
          reached_s = training_s;
          reached_epochs = (epoch - 1) + static_cast<double>(s + 1) / static_cast<double>(steps_per_epoch);
          break;
        }
        t0 = std::chrono::steady_clock::now();
      }
    }
    if (rank == 0)
      std::printf("epoch %d  test accuracy %.2f%%  %.1f s of training so far\n", epoch, accuracy, training_s);
  }
  if (rank == 0)
    std::printf("result codec=%s samples_per_s=%.0f time_to_target_s=%.2f epochs_to_target=%.2f accuracy=%.2f\n",
                label, static_cast<double>(samples) / training_s, reached_s, reached_epochs, accuracy);
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  const std::string codec = argc > 1 ? argv[1] : "none";
  const int max_epochs = argc > 2 ? std::atoi(argv[2]) : 6;
  const double target = argc > 3 ? std::atof(argv[3]) : 87.0;
  openblas_set_num_threads(1);
  int rc = 0;
  try {
    auto train_set = io::load_fashion_mnist("train");
    auto test_set = io::load_fashion_mnist("test");
    standardise(train_set, test_set);
    MpiTransport t{MPI_COMM_WORLD};
    if (codec == "none") run(t, train_set, test_set, max_epochs, target, "none", Ring{});
    else if (codec == "bf16") run(t, train_set, test_set, max_epochs, target, "bf16", Compressed<BF16, Ring>{});
    else if (codec == "topk")
      run(t, train_set, test_set, max_epochs, target, "topk", Compressed<TopK, Ring>{.codec = {.fraction = 0.01}});
    else if (codec == "powersgd")
      run(t, train_set, test_set, max_epochs, target, "powersgd", Compressed<PowerSGD, Ring>{.codec = with_blas(PowerSGD{.rank = 4})});
    else {
      std::fprintf(stderr, "bench_dp_cluster: unknown codec '%s' (none, bf16, topk, powersgd)\n", codec.c_str());
      rc = 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_dp_cluster: %s\n", e.what());
    rc = 1;
  }
  MPI_Finalize();
  return rc;
}
