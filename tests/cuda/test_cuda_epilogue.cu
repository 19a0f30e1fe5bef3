// The cuBLASLt epilogues reached from expressions: gelu_tanh(affine(x, W, b))
// (expr/affine_gelu.hpp: bias + GELU in the gemm's epilogue forward, saving
// the pre-activation) and affine's backward (dW and db in one gemm, BGRADA,
// db accumulated through kernels::gemm_bias_grad), on the GPU against weft's
// CPU evaluation of the same expressions: values and the gradients of x, W
// and b, with the bias and weight used twice and backward run twice (the
// gradients accumulate). Without a GPU: exit 77 (skipped).
// Shapes: a plain (R, K) x, rank-3 and rank-4 x (rows folded into one gemm),
// N a multiple of 8 (GELU_AUX_BIAS) and not (gemm.cuh's fallback: gemm_bias
// and a GELU kernel), and a permuted x whose rows do not fold (the batched
// product, then the elementwise GELU). Then a nn::TransformerBlock with the
// tanh GELU (GPT-2's MLP) on both devices.
// Tolerances (float): |gpu - cpu| <= tol * (1 + max |cpu|) per tensor, tol
// 1e-4 for values (FP32 compute, no TF32; cuBLASLt's GELU is the tanh form
// with op::GeluTanh's constants, to float rounding), 1e-3 for gradients (sums
// of longer products in another order).
#include "check.hpp"
#include "host_oracle.hpp"
#include <cmath>
#include <cstdio>
#include <random>
#include <type_traits>
#include <weft/expr/affine.hpp>
#include <weft/expr/matmul.hpp>
#include <weft/expr/view.hpp>
#include <weft/kernels/cuda/attention.cuh>
#include <weft/kernels/cuda/gemm.cuh>
#include <weft/kernels/cuda/kernels.cuh>
#include <weft/nn/transformer.hpp>
#include <weft/weft.hpp>

using namespace weft;
using cudatest::failures;

// The GPU takes both fused paths; the host keeps its unfused steps.
static_assert(kernels::has_gemm_bias_gelu<weft::cuda, float> && kernels::has_gemm_bias_grad<weft::cuda, float>);
static_assert(!kernels::has_gemm_bias_gelu<weft::cpu, float> && !kernels::has_gemm_bias_grad<weft::cpu, float>);

using cudatest::randn;
using cudatest::rel;

struct Case {
  const char* what;
  Shape x;  // (..., K)
  index_t n;
};

// x as the expression reads it: itself, or (Permuted) permute(x, 1, 0, 2),
// whose rows do not fold into one matrix.
template <bool Permuted, class X>
auto shaped(const X& x) {
  if constexpr (Permuted)
    return permute(x, 1, 0, 2);
  else
    return x;
}

template <bool Permuted>
static void test_case(const Case& tc, Exec<weft::cuda>& ex, cudaStream_t s) {
  const index_t K = tc.x.back(), N = tc.n;
  Tensor<float> x = randn(tc.x, 1), w = randn({K, N}, 2, 0.3f), bias = randn({N}, 3);
  Parameter<float> wc("weight", Shape{K, N}), bc("bias", Shape{N});
  wc.value = w;
  bc.value = bias;
  Parameter<float, weft::cuda> wd("weight", Shape{K, N}), bd("bias", Shape{N});
  wd.value = to_device(w);
  bd.value = to_device(bias);
  auto dx = to_device(x);
  auto view_of = [](auto& t) { return shaped<Permuted>(t.view()); };
  static_assert(std::is_same_v<decltype(gelu_tanh(affine(dx.view(), wd, bd))),
                               AffineGeluTanh<Leaf<float, weft::cuda>, ParamLeaf<float, weft::cuda>>>,
                "gelu_tanh of an affine node is the fused node");

  // Forward.
  Tensor<float> y = eval(gelu_tanh(affine(view_of(x), wc, bc)));
  Tensor<float, weft::cuda> dy(y.shape());
  assign(dy.view(), gelu_tanh(affine(view_of(dx), wd, bd)), ex);
  cudaStreamSynchronize(s);
  double d = rel(dy, y);
  EXPECT(d < 1e-4, "%s: gelu_tanh(affine) forward: rel %g", tc.what, d);

  // Backward twice onto the same gradients, W and b used twice in the loss.
  Tensor<float> c = randn(y.shape(), 4);
  auto dc = to_device(c);
  auto loss_cpu = [&](auto a) {
    return sum(gelu_tanh(affine(shaped<Permuted>(a), wc, bc)) * c.view()) + sum(tanh(affine(shaped<Permuted>(a), wc, bc)));
  };
  auto loss_gpu = [&](auto a) {
    return sum(gelu_tanh(affine(shaped<Permuted>(a), wd, bd)) * dc.view()) + sum(tanh(affine(shaped<Permuted>(a), wd, bd)));
  };
  Workspace<> hws;
  for (int r = 0; r < 2; ++r) backward(loss_cpu(x.view()), hws);
  kernels::fill(ex, wd.grad.view(), 0.0f);
  kernels::fill(ex, bd.grad.view(), 0.0f);
  int hooks = 0;
  for (int r = 0; r < 2; ++r) backward(loss_gpu(dx.view()), ex, [&](Parameter<float, weft::cuda>&) { ++hooks; });
  cudaStreamSynchronize(s);
  d = rel(wd.grad, wc.grad);
  EXPECT(d < 1e-3, "%s: d/dW (accumulated twice): rel %g", tc.what, d);
  d = rel(bd.grad, bc.grad);
  EXPECT(d < 1e-3, "%s: d/db (accumulated twice): rel %g", tc.what, d);
  EXPECT(hooks == 4, "%s: parameter hooks fired %d times, not 4 (W and b, twice)", tc.what, hooks);

  // Input gradient and value through value_and_grad.
  auto [v_cpu, gx_cpu] = value_and_grad([&](auto a) { return loss_cpu(a); }, x);
  auto [v_gpu, gx_gpu] = value_and_grad([&](auto a) { return loss_gpu(a); }, dx);
  cudaDeviceSynchronize();
  const float hv = to_host(v_gpu).item();
  EXPECT(std::fabs(hv - v_cpu.item()) <= 1e-4 * (1 + std::fabs(v_cpu.item())), "%s: loss gpu %g, cpu %g", tc.what, hv,
         v_cpu.item());
  d = rel(gx_gpu, gx_cpu);
  EXPECT(d < 1e-3, "%s: d/dx: rel %g", tc.what, d);
}

// kernels::gemm_bias_grad at the dispatch level: the fused call's overwritten
// bias output added onto db (which holds a previous gradient), against the
// host's fallback (bias_grad then gemm).
static void test_gemm_bias_grad(Exec<weft::cuda>& ex, cudaStream_t s) {
  const index_t R = 70, C = 24, O = 29;
  for (index_t o : {O, index_t(32)}) {
    Tensor<float> x = randn({R, C}, 5), g = randn({R, o}, 6), w0 = randn({C, o}, 7), b0 = randn({o}, 8);
    Workspace<> hws;
    Exec<cpu> hex(hws);
    Tensor<float> w = w0, b = b0;
    kernels::gemm_bias_grad(hex, x.view().transposed(), g.view(), w.view(), 1.0f, 1.0f, b.data());
    auto dxx = to_device(x), dg = to_device(g), dw = to_device(w0), db = to_device(b0);
    kernels::gemm_bias_grad(ex, dxx.view().transposed(), dg.view(), dw.view(), 1.0f, 1.0f, db.data());
    cudaStreamSynchronize(s);
    double d = rel(dw, w);
    EXPECT(d < 1e-4, "gemm_bias_grad (O = %ld): weight gradient rel %g", long(o), d);
    d = rel(db, b);
    EXPECT(d < 1e-4, "gemm_bias_grad (O = %ld): accumulated bias gradient rel %g", long(o), d);
  }
}

// A GPT-2-style block (nn::GeluForm::tanh): its MLP's fc1 reaches the fused
// bias + GELU epilogue (N = 4C = 64, a multiple of 8) and affine's fused
// backward; the same seed gives the host block the same parameters.
static void test_block(Exec<weft::cuda>& ex, cudaStream_t s) {
  using nn::GeluForm;
  const nn::BlockConfig cfg{.dim = 16, .heads = 2, .mlp = 0, .causal = true};
  nn::TransformerBlock<float, cpu, GeluForm::tanh> hb(cfg, 3);
  nn::TransformerBlock<float, weft::cuda, GeluForm::tanh> db(cfg, 3);
  Tensor<float> x = randn({2, 9, 16}, 9), w = randn({2, 9, 16}, 10);
  auto dx = to_device(x), dw = to_device(w);
  Workspace<> hws;
  hb.fc1.weight.zero_grad();
  hb.fc1.bias.zero_grad();
  backward(sum(hb(x.view()) * w.view()), hws);
  kernels::fill(ex, db.fc1.weight.grad.view(), 0.0f);
  kernels::fill(ex, db.fc1.bias.grad.view(), 0.0f);
  backward(sum(db(dx.view()) * dw.view()), ex);
  cudaStreamSynchronize(s);
  double d = rel(db.fc1.weight.grad, hb.fc1.weight.grad);
  EXPECT(d < 1e-3, "tanh-GELU block: fc1 d/dW rel %g", d);
  d = rel(db.fc1.bias.grad, hb.fc1.bias.grad);
  EXPECT(d < 1e-3, "tanh-GELU block: fc1 d/db rel %g", d);
  auto [v_cpu, gx_cpu] = value_and_grad([&](auto a) { return sum(hb(a) * w.view()); }, x);
  auto [v_gpu, gx_gpu] = value_and_grad([&](auto a) { return sum(db(a) * dw.view()); }, dx);
  cudaDeviceSynchronize();
  const float hv = to_host(v_gpu).item();
  EXPECT(std::fabs(hv - v_cpu.item()) <= 1e-4 * (1 + std::fabs(v_cpu.item())), "tanh-GELU block: loss gpu %g, cpu %g", hv,
         v_cpu.item());
  d = rel(gx_gpu, gx_cpu);
  EXPECT(d < 1e-3, "tanh-GELU block: d/dx rel %g", d);
}

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  Workspace<weft::cuda> ws;
  cudaStream_t stream;
  cuda_check(cudaStreamCreate(&stream), "cudaStreamCreate");
  Exec<weft::cuda> ex(ws, stream);
  try {
    test_gemm_bias_grad(ex, stream);
    test_case<false>({"x (45, 32), N 40", Shape{45, 32}, 40}, ex, stream);
    test_case<false>({"x (3, 21, 40), N 24 (rows folded)", Shape{3, 21, 40}, 24}, ex, stream);
    test_case<false>({"x (2, 3, 7, 16), N 29 (rows folded, aux fallback)", Shape{2, 3, 7, 16}, 29}, ex, stream);
    test_case<false>({"x (45, 32), N 29 (aux fallback)", Shape{45, 32}, 29}, ex, stream);
    test_case<true>({"permuted x (5, 4, 24), N 16 (batched)", Shape{5, 4, 24}, 16}, ex, stream);
    test_block(ex, stream);
  } catch (const std::exception& e) {
    ++failures;
    std::printf("FAILED: exception: %s\n", e.what());
  }
  cudaStreamDestroy(stream);
  std::printf("%s (%d failures)\n", failures ? "FAILED" : "passed", failures.load());
  return failures ? 1 : 0;
}
