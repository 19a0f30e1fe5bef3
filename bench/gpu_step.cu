// One training step on the GPU (forward, backward, AdamW in one multi-tensor
// launch), all on one stream with a reused stream-ordered workspace: the
// weft side of bench/gpu_step_torch.py, which loads the weights this program
// writes and times PyTorch on the same GPU in the same run.
//   usage: gpu_step mlp|vit [batch] [--dump FILE] [--repeats N]
// Prints the first three losses, the device allocations made after the first
// step (none is the design), and the median ms per step (events on the
// stream, 10 steps per timing). Without a GPU it prints why and exits 77.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <weft/kernels/cuda/attention.cuh>
#include <weft/kernels/cuda/gemm.cuh>
#include <weft/kernels/cuda/kernels.cuh>
#include <weft/nn/optim_cuda.cuh>

#include "gpu_timing.hpp"
#include "step_models.hpp"

using namespace weft;

namespace {

template <class M>
int run(index_t batch, const std::string& dump_path, int repeats) {
  cudaStream_t stream;
  cuda_check(cudaStreamCreate(&stream), "cudaStreamCreate");
  M m;
  if (!dump_path.empty())
    stepbench::dump(m.params, dump_path, [&](Parameter<float, weft::cuda>& p) {
      std::vector<float> h(static_cast<std::size_t>(p.numel()));
      device_memory<weft::cuda>::copy_to_host(h.data(), p.value.data(), h.size() * sizeof(float));
      return h;
    });
  auto x = to_device(stepbench::inputs(M::input_shape(batch)), stream);  // (B, 784) or (B, P, K)
  auto y = to_device(stepbench::labels(batch), stream);                  // (B,)
  Workspace<weft::cuda> ws(stream);
  Exec<weft::cuda> ex(ws, stream);
  nn::MultiTensorAdamW<float> opt(m.params, stream, nn::AdamWOptions{.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f});

  float loss_host = 0;
  auto step = [&](bool read_loss) {
    opt.zero_grad();
    auto l = backward(m.loss(x, y), ex);  // rank 0, in the workspace
    if (read_loss) device_memory<weft::cuda>::copy_to_host(&loss_host, l.data, sizeof(float));
    opt.step();
  };
  std::printf("losses:");
  for (int i = 0; i < 3; ++i) {
    step(true);
    std::printf(" %.6f", loss_host);
  }
  std::printf("\n");
  cuda_check(cudaStreamSynchronize(stream), "warm-up steps");
  const auto before = device_memory<weft::cuda>::stats().allocations;
  const auto blocks_before = ws.allocations();
  for (int i = 0; i < 5; ++i) step(false);
  cuda_check(cudaStreamSynchronize(stream), "steps");
  std::printf("device_allocations_after_first_step: %llu (workspace blocks %llu)\n",
              static_cast<unsigned long long>(device_memory<weft::cuda>::stats().allocations - before),
              static_cast<unsigned long long>(ws.allocations() - blocks_before));

  const double ms = gpubench::median_ms(stream, repeats, 10, [&] { step(false); });
  std::printf("%s batch %lld: %zu parameters tensors, %lld values\n", M::name, static_cast<long long>(batch), m.params.size(),
              static_cast<long long>(m.params.numel()));
  std::printf("step_ms_median: %.4f\n", ms);
  cudaStreamDestroy(stream);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  std::string model = argc > 1 ? argv[1] : "mlp", dump_path;
  index_t batch = 0;
  int repeats = 20;
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--dump") == 0 && i + 1 < argc)
      dump_path = argv[++i];
    else if (std::strcmp(argv[i], "--repeats") == 0 && i + 1 < argc)
      repeats = std::max(1, std::atoi(argv[++i]));
    else
      batch = std::atoll(argv[i]);
  }
  if (model == "mlp") return run<stepbench::Mlp<weft::cuda>>(batch > 0 ? batch : 256, dump_path, repeats);
  if (model == "vit") return run<stepbench::Vit<weft::cuda>>(batch > 0 ? batch : 128, dump_path, repeats);
  std::fprintf(stderr, "gpu_step: unknown model '%s' (mlp or vit)\n", model.c_str());
  return 2;
}
