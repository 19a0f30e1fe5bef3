// Story 12: data-parallel training on GPUs, one MPI process per GPU.
//   mpirun -np <GPUs> build/examples/12_gpu_data_parallel [epochs = 3] [seed = 1]
// The Fashion-MNIST MLP (784-256-256-10, ReLU) on every GPU, global batch
// 256 split over the ranks; the NCCL communicator is bootstrapped over MPI
// (rank 0's id sent through MPI), then everything runs on one stream per
// rank: forward and backward as kernels, each gradient bucket averaged as
// soon as its last gradient's kernel is queued, per layer: l1 (the largest)
// through NCCL's own allreduce (comm::Native), l2 through weft's
// Hierarchical (ranks grouped by node as MPI sees them, each level a ring over
// ncclSend/ncclRecv), l3 through Compressed<BF16, Ring> (the codec on the
// host, bf16 payloads on the wire); AdamW updates every parameter in one
// launch. Each communicator has its own split of the NCCL transport. Rank 0
// prints the loss, the test accuracy (the logits computed on its GPU) and
// samples/s per epoch. Without a GPU it says so and exits 77.
#include "run_under_mpi.hpp"

#include <cuda_runtime.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/algorithm/hierarchical.hpp>
#include <weft/comm/algorithm/native.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/codec/cast.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/transport/mpi.hpp>
#include <weft/comm/transport/nccl.hpp>
#include <weft/io/idx.hpp>
#include <weft/io/sampler.hpp>
#include <weft/kernels/cuda/gemm.cuh>
#include <weft/kernels/cuda/kernels.cuh>
#include <weft/nn/nn.hpp>
#include <weft/nn/optim_cuda.cuh>
#include <weft/parallel/data_parallel.hpp>
#include <weft/weft.hpp>

using namespace weft;

int main(int argc, char** argv) {
  return examples::run_under_mpi(argc, argv, [&] {
    const int epochs = argc > 1 ? std::atoi(argv[1]) : 3;
    const std::uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1;
    comm::MpiTransport boot{MPI_COMM_WORLD};
    const int rank = boot.rank(), size = boot.size();
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      if (rank == 0) std::printf("no CUDA device: skipped\n");
      return 77;
    }
    const int device = rank % devices;  // one rank per GPU: NCCL refuses two ranks on one device
    cuda_check(cudaSetDevice(device), "cudaSetDevice");

    comm::NcclTransport<comm::MpiTransport> t(boot, device);  // creates and owns its stream
    cudaStream_t stream = t.stream();
    comm::Communicator<comm::Native, decltype(t)> nccl{t};
    const auto dl = comm::deadline_after(std::chrono::seconds(60));
    comm::Communicator<comm::Hierarchical<>, decltype(t)> hier{t.split(1, rank, dl)};
    comm::Communicator<comm::Compressed<comm::BF16, comm::Ring>, decltype(t)> bf16{t.split(2, rank, dl)};

    auto train = io::load_fashion_mnist("train");  // (60000, 784), (60000,)
    auto test = io::load_fashion_mnist("test");
    const index_t global_batch = 256, batch = global_batch / size, d = 784, n = train.images.size(0);
    if (global_batch % size != 0) throw_error<ValueError>("global batch ", global_batch, " does not split over ", size, " ranks");

    nn::Linear<float, true, weft::cuda> l1(d, 256, seed), l2(256, 256, seed + 1), l3(256, 10, seed + 2);
    nn::Registry<float, weft::cuda> params;
    params.add("l1", l1).add("l2", l2).add("l3", l3);
    parallel::DataParallel<float, decltype(nccl), decltype(hier), decltype(bf16)> dp(params, nccl, hier, bf16);  // rank 0's values to all
    dp.layer("l2").use(hier);
    dp.layer("l3").use(bf16);
    nn::MultiTensorAdamW<float> opt(params, stream, {.lr = 1e-3f});
    auto model = [&](auto& x) { return l3(relu(l2(relu(l1(x))))); };

    Workspace<weft::cuda> ws(stream);
    Exec<weft::cuda> ex(ws, stream);
    Tensor<float> xb({batch, d});
    Tensor<std::int32_t> yb({batch});
    Tensor<float, weft::cuda> dx(Shape{batch, d}, stream);
    Tensor<std::int32_t, weft::cuda> dy(Shape{batch}, stream);
    io::DistributedSampler sampler(n, rank, size, seed, io::Remainder::drop);
    const index_t steps = sampler.shard_size() / batch;
    if (rank == 0)
      std::printf("GPU data parallel: %d ranks x batch %lld, MLP 784-256-256-10, AdamW; l1 via NCCL allreduce, l2 via "
                  "weft's Hierarchical, l3 via Compressed<BF16, Ring> (NCCL send/recv)\n", size, static_cast<long long>(batch));

    auto dtest = to_device(test.images, stream);
    Tensor<float, weft::cuda> dlogits(Shape{test.images.size(0), 10}, stream);
    for (int epoch = 1; epoch <= epochs; ++epoch) {
      auto idx = sampler.indices(static_cast<std::uint64_t>(epoch));
      const auto t0 = std::chrono::steady_clock::now();
      double total = 0;
      for (index_t s = 0; s < steps; ++s) {
        io::gather_batch(train, idx, s * batch, xb, yb);
        copy_to_device_async(xb.view(), dx.view(), stream);  // ordered before the pass on the same stream
        copy_to_device_async(yb.view(), dy.view(), stream);
        opt.zero_grad();
        total += dp.backward(cross_entropy(model(dx), dy), ex);  // waits for the stream once (the loss)
        dp.step(opt);
      }
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (rank == 0) {
        assign(dlogits.view(), model(dtest), ex);
        Tensor<float> logits = to_host(dlogits.view(), stream);
        std::printf("epoch %d  loss %.4f  test accuracy %.2f%%  %.0f samples/s (all ranks)\n", epoch,
                    total / static_cast<double>(steps), 100.0 * nn::accuracy(logits, test.labels),
                    static_cast<double>(steps * global_batch) / secs);
      }
    }
    return 0;
  });
}
