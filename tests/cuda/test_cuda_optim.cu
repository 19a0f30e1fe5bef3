// The device optimizers (nn/optim_cuda.cuh) against the CPU optimizers on the
// same values (step() and step(parts)), and stream-ordered device memory (kernels/cuda/memory.cuh):
// a repeated training step (backward + fused AdamW + zero_grad) over a reused
// Workspace<cuda> allocates nothing after its first step. Without a GPU: exit 77.
//
// Tolerances: float 1e-5 * (1 + |cpu|) per element after 5 steps (nvcc
// contracts a * b + c into FMAs, the host compiler may not: a few ulp per step);
// double 1e-12 * (1 + |cpu|).
#include "check.hpp"
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>
#include <weft/kernels/cuda/kernels.cuh>
#include <weft/nn/optim_cuda.cuh>
#include <weft/weft.hpp>

using namespace weft;

using cudatest::checks;
using cudatest::failures;

// max |a - b| / (1 + |b|)
template <class T>
static double rel_diff(const Tensor<T>& a, const Tensor<T>& b) {
  double m = 0;
  for (index_t i = 0; i < a.numel(); ++i) {
    const double d = std::fabs(double(a.data()[i]) - double(b.data()[i])) / (1.0 + std::fabs(double(b.data()[i])));
    m = std::fmax(m, d != d ? INFINITY : d);  // NaN fails
  }
  return m;
}

template <class T>
static double tolerance() {
  return sizeof(T) == 4 ? 1e-5 : 1e-12;
}

// Odd sizes: below a warp, not a multiple of anything, across chunk borders
// (multi_tensor_chunk = 8192 elements per block).
static const std::vector<Shape> shapes = {Shape{1}, Shape{7}, Shape{33, 5}, Shape{8193}, Shape{3, 10007}};

// Kernel nodes the optimizer's step() enqueues, captured into a graph that is
// then launched as this step (so the step runs exactly once).
template <class DevOpt>
static std::size_t step_captured(DevOpt& opt, cudaStream_t stream) {
  cudaGraph_t graph;
  cuda_check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  opt.step();
  cuda_check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  std::size_t nodes = 0;
  cuda_check(cudaGraphGetNodes(graph, nullptr, &nodes), "cudaGraphGetNodes");
  std::vector<cudaGraphNode_t> list(nodes);
  std::size_t kernels = 0;
  if (nodes > 0) cuda_check(cudaGraphGetNodes(graph, list.data(), &nodes), "cudaGraphGetNodes");
  for (cudaGraphNode_t n : list) {
    cudaGraphNodeType type;
    cuda_check(cudaGraphNodeGetType(n, &type), "cudaGraphNodeGetType");
    kernels += type == cudaGraphNodeTypeKernel;
  }
  EXPECT(kernels == nodes, "the captured step has %zu nodes of which %zu kernels", nodes, kernels);
  cudaGraphExec_t exec;
  cuda_check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  cuda_check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
  cuda_check(cudaStreamSynchronize(stream), "captured step");
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return kernels;
}

// 5 steps of DevOpt and HostOpt from the same values and gradients; values
// after every step, state after the last, against the CPU.
template <class T, class HostOpt, class DevOpt, class Options>
static void compare(const char* name, const Options& o, std::vector<std::string> keys, cudaStream_t stream) {
  std::mt19937 rng(11);
  std::normal_distribution<double> nd;
  std::vector<Parameter<T>> hp;
  std::vector<Parameter<T, weft::cuda>> dp;
  hp.reserve(shapes.size());
  dp.reserve(shapes.size());
  nn::Registry<T> reg;
  std::vector<Parameter<T, weft::cuda>*> dptrs;
  for (std::size_t k = 0; k < shapes.size(); ++k) {
    const std::string pname = "p" + std::to_string(k);
    hp.emplace_back(pname, shapes[k]);
    for (index_t i = 0; i < hp[k].numel(); ++i) hp[k].value.data()[i] = T(nd(rng));
    reg.add(hp[k], pname);
    dp.emplace_back(pname, shapes[k]);
    dp[k].value = to_device(hp[k].value, stream);
    dptrs.push_back(&dp[k]);
  }
  HostOpt host(reg, o);
  DevOpt dev(dptrs, stream, o);  // after the values are in place: the launch table holds their pointers
  for (int step = 1; step <= 5; ++step) {
    for (std::size_t k = 0; k < shapes.size(); ++k) {
      for (index_t i = 0; i < hp[k].numel(); ++i) hp[k].grad.data()[i] = T(nd(rng));
      copy_to_device_async(hp[k].grad.view(), dp[k].grad.view(), stream);
    }
    host.step();
    const std::uint64_t before = dev.launches();
    if (step == 1) {
      const std::size_t kernels = step_captured(dev, stream);
      EXPECT(kernels == 1, "%s: step() enqueued %zu kernels for %zu parameters, not 1", name, kernels, shapes.size());
    } else {
      dev.step();
    }
    EXPECT(dev.launches() == before + 1, "%s: step %d launched %llu kernels", name, step,
           static_cast<unsigned long long>(dev.launches() - before));
    EXPECT(dev.steps() == host.steps(), "%s: steps %lld vs %lld", name, static_cast<long long>(dev.steps()),
           static_cast<long long>(host.steps()));
    for (std::size_t k = 0; k < shapes.size(); ++k) {
      const double d = rel_diff(to_host(dp[k].value, stream), hp[k].value);
      EXPECT(d <= tolerance<T>(), "%s step %d, parameter %zu: max |gpu - cpu| / (1 + |cpu|) = %g", name, step, k, d);
    }
  }
  // step(parts): only the given ranges (a sharded update's pieces), one
  // launch, the CPU's step(parts) as the reference (every element compared,
  // so those outside the ranges must be left as they were). Ranges cross the
  // 8192-element chunk border, start inside a parameter, and one is empty;
  // the second call reuses the uploaded table, the third uploads new ranges.
  const std::vector<std::vector<nn::ParamRange>> part_sets = {
      {{0, 0, 1}, {2, 5, 5}, {3, 100, 8300}, {4, 9000, 30021}},
      {{0, 0, 1}, {2, 5, 5}, {3, 100, 8300}, {4, 9000, 30021}},
      {{1, 2, 7}, {2, 0, 165}, {4, 0, 8193}}};
  for (std::size_t round = 0; round < part_sets.size(); ++round) {
    for (std::size_t k = 0; k < shapes.size(); ++k) {
      for (index_t i = 0; i < hp[k].numel(); ++i) hp[k].grad.data()[i] = T(nd(rng));
      copy_to_device_async(hp[k].grad.view(), dp[k].grad.view(), stream);
    }
    host.step(part_sets[round]);
    const std::uint64_t before = dev.launches();
    dev.step(part_sets[round]);
    EXPECT(dev.launches() == before + 1, "%s: step(parts) launched %llu kernels", name,
           static_cast<unsigned long long>(dev.launches() - before));
    for (std::size_t k = 0; k < shapes.size(); ++k) {
      const double d = rel_diff(to_host(dp[k].value, stream), hp[k].value);
      EXPECT(d <= tolerance<T>(), "%s step(parts) round %zu, parameter %zu: max |gpu - cpu| / (1 + |cpu|) = %g", name, round, k, d);
    }
  }
  bool refused = false;
  try {
    dev.step(std::vector<nn::ParamRange>{{4, 10, 30022}});
  } catch (const ValueError& e) {
    refused = std::string(e.what()).find("elements [10, 30022) of parameter 'p4' (30021 elements)") != std::string::npos;
  }
  EXPECT(refused, "%s: step(parts) past a parameter's end was not refused with its range", name);
  for (std::size_t k = 0; k < shapes.size(); ++k)
    for (const std::string& key : keys) {
      const double d = rel_diff(to_host(dev.state(hp[k].name, key), stream), host.state(hp[k].name, key));
      EXPECT(d <= tolerance<T>(), "%s state %s of parameter %zu: max rel diff %g", name, key.c_str(), k, d);
    }
  dev.zero_grad();
  for (std::size_t k = 0; k < shapes.size(); ++k) {
    Tensor<T> g = to_host(dp[k].grad, stream);
    bool zero = true;
    for (index_t i = 0; i < g.numel(); ++i) zero = zero && g.data()[i] == T(0);
    EXPECT(zero, "%s: zero_grad left parameter %zu's gradient nonzero", name, k);
  }
}

// A training step on device parameters, repeated: zero_grad, backward over a
// reused stream-ordered workspace, one fused AdamW step. From the second step
// on nothing is allocated: not by weft (its counter of CUDA allocation calls),
// not by the workspace, and the pool does not grow. Also checked against the
// same steps on the host.
static void steady_state(cudaStream_t stream) {
  const index_t n = 4099;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  Tensor<float> x({n}), y({n});
  Parameter<float> hw("w", Shape{n}), hb("b", Shape{n});
  for (index_t i = 0; i < n; ++i) {
    x.data()[i] = nd(rng);
    y.data()[i] = nd(rng);
    hw.value.data()[i] = nd(rng);
    hb.value.data()[i] = nd(rng);
  }
  Tensor<float, weft::cuda> dx = to_device(x, stream), dy = to_device(y, stream);
  Parameter<float, weft::cuda> dw("w", Shape{n}), db("b", Shape{n});
  dw.value = to_device(hw.value, stream);
  db.value = to_device(hb.value, stream);
  nn::Registry<float> reg;
  reg.add(hw, "w").add(hb, "b");
  nn::AdamWOptions o;
  o.lr = 1e-2f;
  nn::AdamW<float> host(reg, o);
  Workspace<> hws;

  Workspace<weft::cuda> ws(stream);
  Exec<weft::cuda> ex(ws, stream);
  nn::MultiTensorAdamW<float> opt({&dw, &db}, stream, o);
  int device = 0;
  cuda_check(cudaGetDevice(&device), "cudaGetDevice");

  DeviceMemoryStats after_first{};
  std::size_t ws_blocks = 0;
  CudaPoolStats pool_first{};
  for (int step = 1; step <= 6; ++step) {
    opt.zero_grad();
    backward(sum(tanh(param(dw) * dx + param(db)) * dy), ex);
    opt.step();
    host.zero_grad();
    backward(sum(tanh(param(hw) * x + param(hb)) * y), hws);
    host.step();
    cuda_check(cudaStreamSynchronize(stream), "training step");
    if (step == 1) {
      after_first = device_memory<weft::cuda>::stats();
      ws_blocks = ws.allocations();
      pool_first = cuda_pool_stats(device);
    }
  }
  const DeviceMemoryStats after = device_memory<weft::cuda>::stats();
  const CudaPoolStats pool = cuda_pool_stats(device);
  EXPECT(after.allocations == after_first.allocations, "steps 2-6 made %llu CUDA allocation calls",
         static_cast<unsigned long long>(after.allocations - after_first.allocations));
  EXPECT(ws.allocations() == ws_blocks, "the workspace grew after step 1: %zu blocks, then %zu", ws_blocks, ws.allocations());
  EXPECT(ws_blocks > 0, "the workspace allocated nothing at all (did backward use it?)");
  EXPECT(pool.reserved_high == pool_first.reserved_high, "the pool grew after step 1: %llu -> %llu bytes",
         static_cast<unsigned long long>(pool_first.reserved_high), static_cast<unsigned long long>(pool.reserved_high));
  const double dwv = rel_diff(to_host(dw.value, stream), hw.value), dbv = rel_diff(to_host(db.value, stream), hb.value);
  EXPECT(dwv <= 1e-5 && dbv <= 1e-5, "6 training steps: w differs by %g, b by %g (relative) from the cpu", dwv, dbv);
}

// Stream-ordered tensors come from the pool, aligned, and stay in it after a
// synchronisation (the release threshold); copies on a stream round-trip.
static void pool_and_copies(cudaStream_t stream) {
  int device = 0;
  cuda_check(cudaGetDevice(&device), "cudaGetDevice");
  const index_t n = (1 << 20) + 3;
  const DeviceMemoryStats s0 = device_memory<weft::cuda>::stats();
  std::uint64_t high_after_first = 0;
  for (int i = 0; i < 10; ++i) {
    Tensor<float, weft::cuda> t(Shape{n}, stream);
    EXPECT(t.stream_ordered() && t.queue() == stream, "Tensor(shape, stream) is not stream-ordered on that stream");
    EXPECT(reinterpret_cast<std::uintptr_t>(t.data()) % device_memory<weft::cuda>::alignment == 0,
           "cudaMallocAsync returned %p, not %zu-byte aligned", static_cast<void*>(t.data()), device_memory<weft::cuda>::alignment);
    Tensor<float, weft::cuda> copy = t;  // allocated as t was
    EXPECT(copy.stream_ordered() && copy.queue() == stream, "a copy of a stream-ordered tensor is not stream-ordered");
    cuda_check(cudaStreamSynchronize(stream), "pool loop");
    if (i == 0) high_after_first = cuda_pool_stats(device).reserved_high;
  }
  const DeviceMemoryStats s1 = device_memory<weft::cuda>::stats();
  EXPECT(s1.ordered_allocations - s0.ordered_allocations == 20, "20 stream-ordered allocations counted as %llu",
         static_cast<unsigned long long>(s1.ordered_allocations - s0.ordered_allocations));
  const CudaPoolStats p = cuda_pool_stats(device);
  EXPECT(p.reserved_high == high_after_first, "the pool grew while reusing one size: %llu -> %llu bytes",
         static_cast<unsigned long long>(high_after_first), static_cast<unsigned long long>(p.reserved_high));
  EXPECT(p.reserved >= 2 * static_cast<std::uint64_t>(n) * sizeof(float),
         "after a synchronisation the pool holds %llu bytes: freed blocks went back to the driver",
         static_cast<unsigned long long>(p.reserved));

  Tensor<float> h({5, 7});
  for (index_t i = 0; i < h.numel(); ++i) h.data()[i] = float(i) * 0.5f - 3.0f;
  Tensor<float, weft::cuda> d = to_device(h, stream);
  EXPECT(rel_diff(to_host(d, stream), h) == 0.0, "to_device(h, stream) / to_host(d, stream) do not round-trip");
  Tensor<float> back({5, 7}, 0.0f);
  copy_to_host_async(d.view(), back.view(), stream);
  cuda_check(cudaStreamSynchronize(stream), "copy_to_host_async");
  EXPECT(rel_diff(back, h) == 0.0, "copy_to_host_async differs");
  EXPECT(rel_diff(to_host(to_device(h)), h) == 0.0, "the synchronous copies do not round-trip");
}

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  cudaStream_t stream;
  cuda_check(cudaStreamCreate(&stream), "cudaStreamCreate");
  {
    nn::AdamWOptions aw;
    aw.lr = 1e-2f;
    compare<float, nn::AdamW<float>, nn::MultiTensorAdamW<float>>("AdamW", aw, {"exp_avg", "exp_avg_sq"}, stream);
    compare<double, nn::AdamW<double>, nn::MultiTensorAdamW<double>>("AdamW<double>", aw, {"exp_avg", "exp_avg_sq"}, stream);
    nn::AdamOptions a;
    a.lr = 1e-2f;
    a.weight_decay = 0.05f;
    compare<float, nn::Adam<float>, nn::MultiTensorAdam<float>>("Adam", a, {"exp_avg", "exp_avg_sq"}, stream);
    nn::SGDOptions s;
    s.lr = 0.05f;
    s.momentum = 0.9f;
    s.nesterov = true;
    s.weight_decay = 0.01f;
    compare<float, nn::SGD<float>, nn::MultiTensorSGD<float>>("SGD nesterov", s, {"momentum_buffer"}, stream);
    s.nesterov = false;
    s.dampening = 0.1f;
    compare<float, nn::SGD<float>, nn::MultiTensorSGD<float>>("SGD momentum", s, {"momentum_buffer"}, stream);
    s.momentum = 0.0f;
    s.dampening = 0.0f;
    compare<float, nn::SGD<float>, nn::MultiTensorSGD<float>>("SGD", s, {}, stream);
    steady_state(stream);
    pool_and_copies(stream);
  }
  cuda_check(cudaStreamSynchronize(stream), "end");
  cudaStreamDestroy(stream);
  std::printf("%s (%d failures)\n", failures ? "FAILED" : "passed", failures.load());
  return failures ? 1 : 0;
}
