// DataParallel on GPUs: one thread rank per GPU, each with an NcclTransport
// (bootstrapped over a ThreadTransport) and its shard of the global batch;
// after three steps (backward on the device, buckets reduced through NCCL's
// own allreduce or weft's Ring over ncclSend/ncclRecv, MultiTensorSGD; then
// again with the sharded update: reduce-scatter, MultiTensorSGD::step(parts)
// on this rank's pieces, allgather) every rank's parameters must equal one
// CPU model trained on the whole batch.
// With one GPU only the 1-rank job runs (NCCL refuses two ranks on one
// device), which still checks the device training step against the CPU.
// Also: a pass on a stream other than the communicators' is refused with a
// sentence. Without a GPU: exit 77.
#include "check.hpp"
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <weft/comm/algorithm/native.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/run_local.hpp>
#include <weft/comm/transport/nccl.hpp>
#include <weft/expr/matmul.hpp>
#include <weft/kernels/cuda/gemm.cuh>
#include <weft/kernels/cuda/kernels.cuh>
#include <weft/nn/nn.hpp>
#include <weft/nn/optim_cuda.cuh>
#include <weft/parallel/data_parallel.hpp>
#include <weft/weft.hpp>

using namespace weft;
using NT = comm::NcclTransport<comm::ThreadTransport>;

using cudatest::checks;
using cudatest::failures;

constexpr index_t kIn = 20, kHidden = 32, kClasses = 4, kPerRank = 8;
constexpr int kSteps = 3;
constexpr float kLr = 0.1f;

// The model on any device: the same seeds give the same initial values.
template <class D>
struct Mlp {
  nn::Linear<float, true, D> l1{kIn, kHidden, 1}, l2{kHidden, kClasses, 2};
  nn::Registry<float, D> params;
  Mlp() { params.add("l1", l1).add("l2", l2); }
  template <class X, class Y>
  auto loss(X& x, Y& y) {
    return cross_entropy(l2(tanh(l1(x))), y);
  }
};

// Rows [from, from + n) of the global batch.
static Tensor<float> rows_x(index_t from, index_t n) {
  Tensor<float> x({n, kIn});
  for (index_t i = 0; i < n * kIn; ++i) x.data()[i] = std::sin(0.37f * static_cast<float>(from * kIn + i));
  return x;
}
static Tensor<std::int32_t> rows_y(index_t from, index_t n) {
  Tensor<std::int32_t> y({n});
  for (index_t i = 0; i < n; ++i) y.data()[i] = static_cast<std::int32_t>(((from + i) * 3) % kClasses);
  return y;
}

// One CPU model over the whole batch (k ranks' rows), kSteps SGD steps.
static std::vector<std::vector<float>> reference(int k) {
  Mlp<cpu> m;
  nn::SGD<float> opt(m.params, {.lr = kLr});
  auto x = rows_x(0, kPerRank * k);
  auto y = rows_y(0, kPerRank * k);
  Workspace<> ws;
  for (int s = 0; s < kSteps; ++s) {
    opt.zero_grad();
    backward(m.loss(x, y), ws);
    opt.step();
  }
  std::vector<std::vector<float>> out;
  for (auto* p : m.params) out.emplace_back(p->value.data(), p->value.data() + p->numel());
  return out;
}

template <class Algo>
static void train_and_compare(comm::ThreadTransport& boot, int k, const std::vector<std::vector<float>>& want, bool sharded) {
  const int r = boot.rank();
  NT t(boot, /*device=*/r, nullptr, comm::deadline_after(std::chrono::seconds(120)));
  comm::Communicator<Algo, NT> c{t};
  Mlp<weft::cuda> m;
  // Several buckets; sharded: each reduce-scattered, this rank's pieces stepped, then allgathered.
  parallel::DataParallel<float, comm::Communicator<Algo, NT>> dp(m.params, c, {.bucket_bytes = 2048, .shard_update = sharded});
  nn::MultiTensorSGD<float> opt(m.params, t.stream(), {.lr = kLr});
  auto x = to_device(rows_x(kPerRank * r, kPerRank), t.stream());
  auto y = to_device(rows_y(kPerRank * r, kPerRank), t.stream());
  Workspace<weft::cuda> ws(t.stream());
  Exec<weft::cuda> ex(ws, t.stream());
  for (int s = 0; s < kSteps; ++s) {
    opt.zero_grad();
    const float l = dp.backward(m.loss(x, y), ex);
    EXPECT(std::isfinite(l), "%s%s rank %d step %d: loss %g", Algo::name, sharded ? " sharded" : "", r, s, l);
    dp.step(opt);
  }
  device_memory<weft::cuda>::synchronize(t.stream());
  std::size_t k_param = 0;
  for (auto* p : m.params) {
    std::vector<float> got(static_cast<std::size_t>(p->numel()));
    device_memory<weft::cuda>::copy_to_host(got.data(), p->value.data(), got.size() * sizeof(float));
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i)
      worst = std::fmax(worst, std::fabs(double(got[i]) - double(want[k_param][i])) / (1.0 + std::fabs(want[k_param][i])));
    EXPECT(worst < 2e-5, "%s%s, %d rank(s), rank %d: %s after %d steps differs from the CPU model on the whole batch by %g",
           Algo::name, sharded ? " sharded" : "", k, r, p->name.c_str(), kSteps, worst);
    ++k_param;
  }

  // A pass on another stream is refused (its buckets would be reduced before their gradients exist).
  cudaStream_t other;
  cudaStreamCreate(&other);
  Workspace<weft::cuda> ws2(other);
  Exec<weft::cuda> ex2(ws2, other);
  bool refused = false;
  try {
    dp.backward(m.loss(x, y), ex2);
  } catch (const ValueError& e) {
    refused = std::string(e.what()).find("not the communicators'") != std::string::npos;
  }
  EXPECT(refused, "%s rank %d: a backward on another stream was not refused", Algo::name, r);
  cudaStreamSynchronize(other);
  cudaStreamDestroy(other);
}

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  const int k = devices < 4 ? devices : 4;
  std::printf("%d CUDA device(s): DataParallel over %d thread rank(s), one per GPU\n", devices, k);
  const auto want = reference(k);
  try {
    comm::run_local(k, [&](comm::ThreadTransport& boot) {
      cudaSetDevice(boot.rank());
      for (bool sharded : {false, true}) {
        train_and_compare<comm::Native>(boot, k, want, sharded);
        train_and_compare<comm::Ring>(boot, k, want, sharded);
      }
    });
  } catch (const std::exception& e) {
    ++failures;
    std::printf("FAILED: %s\n", e.what());
  }
  if (k < 2) std::printf("one GPU: the gradients were not averaged across ranks (the 1-rank path ran)\n");
  std::printf("%s (%d failures)\n", failures ? "FAILED" : "passed", failures.load());
  return failures ? 1 : 0;
}
