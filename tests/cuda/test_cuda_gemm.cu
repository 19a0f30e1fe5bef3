// The CUDA gemm (cuBLASLt), its fused epilogues and the CUDA attention,
// compared with weft's CPU evaluation of the same expressions (values and
// gradients) and with plain loops. Without a GPU: exit 77 (skipped).
// Tolerances (float): |gpu - cpu| <= tol * (1 + max |cpu|) per tensor, tol
// 1e-4 for products and attention values, 1e-3 for gradients (sums of
// longer products in another order).
#include "check.hpp"
#include "host_oracle.hpp"
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>
#include <weft/expr/affine.hpp>
#include <weft/expr/attention.hpp>
#include <weft/expr/matmul.hpp>
#include <weft/kernels/cuda/attention.cuh>
#include <weft/kernels/cuda/gemm.cuh>
#include <weft/kernels/cuda/kernels.cuh>
#include <weft/weft.hpp>

using namespace weft;

// The affine node takes the fused bias path on the GPU only; the host keeps its two steps.
static_assert(kernels::has_gemm_bias<weft::cuda, float>);
static_assert(!kernels::has_gemm_bias<weft::cpu, float>);

using cudatest::checks;
using cudatest::failures;

using cudatest::randn;
using cudatest::rel;

// ------------------------------------------------------------------ gemm

static void test_gemm_transposes(Exec<weft::cuda>& ex, cudaStream_t s) {
  const index_t m = 37, k = 53, n = 29;  // nothing a multiple of 8: unaligned leading dimensions
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      Tensor<float> a = randn(ta ? Shape{k, m} : Shape{m, k}, 1 + ta), b = randn(tb ? Shape{n, k} : Shape{k, n}, 3 + tb);
      auto da = to_device(a), db = to_device(b);
      auto av = ta ? a.view().transposed() : a.view();
      auto bv = tb ? b.view().transposed() : b.view();
      auto dav = ta ? da.view().transposed() : da.view();
      auto dbv = tb ? db.view().transposed() : db.view();
      Tensor<float> c = eval(matmul(av, bv));
      Tensor<float, weft::cuda> dc(Shape{m, n});
      assign(dc.view(), matmul(dav, dbv), ex);
      cudaStreamSynchronize(s);
      const double d = rel(dc, c);
      EXPECT(d < 1e-4, "matmul (transpose a %d, b %d): rel %g", ta, tb, d);
    }
  // alpha, beta and a row-strided operand (every other column of a wider matrix is not
  // readable in place; a row slice with a leading dimension is).
  Tensor<float> wide = randn({m, 2 * k}, 5), b = randn({k, n}, 6), c0 = randn({m, n}, 7);
  auto dwide = to_device(wide), db = to_device(b), dc = to_device(c0);
  TensorView<float> av(wide.data(), Shape{m, k}, Strides{{2 * k, 1}});
  TensorView<float, weft::cuda> dav(dwide.data(), Shape{m, k}, Strides{{2 * k, 1}});
  Workspace<> hws;
  Exec<cpu> hex(hws);
  Tensor<float> c = c0;
  kernels::gemm(hex, av, b.view(), c.view(), 0.5f, -2.0f);
  EXPECT(kernels::gemm_reads_in_place(dav), "a row-strided view should be read in place");
  kernels::gemm(ex, dav, db.view(), dc.view(), 0.5f, -2.0f);
  cudaStreamSynchronize(s);
  double d = rel(dc, c);
  EXPECT(d < 1e-4, "gemm alpha 0.5 beta -2 on a strided a: rel %g", d);
  TensorView<float, weft::cuda> every_other(dwide.data(), Shape{m, k}, Strides{{2 * k, 2}});
  EXPECT(!kernels::gemm_reads_in_place(every_other), "a view with no unit stride cannot be read in place");
}

// The same loss on both devices: value and the gradients of every input.
template <int N, class F>
static void check_grads(const char* what, F f, const std::vector<Tensor<float>>& xs, double tol) {
  if constexpr (N == 2) {
    auto [v, g0, g1] = value_and_grad(f, xs[0], xs[1]);
    auto d0 = to_device(xs[0]), d1 = to_device(xs[1]);
    auto [dv, dg0, dg1] = value_and_grad(f, d0, d1);
    cudaDeviceSynchronize();
    const float hv = to_host(dv).item();
    EXPECT(std::fabs(hv - v.item()) <= tol * (1 + std::fabs(v.item())), "%s value: gpu %g, cpu %g", what, hv, v.item());
    const double r0 = rel(dg0, g0), r1 = rel(dg1, g1);
    EXPECT(r0 < tol, "%s d/dx0: rel %g", what, r0);
    EXPECT(r1 < tol, "%s d/dx1: rel %g", what, r1);
  } else {
    auto [v, g0, g1, g2] = value_and_grad(f, xs[0], xs[1], xs[2]);
    auto d0 = to_device(xs[0]), d1 = to_device(xs[1]), d2 = to_device(xs[2]);
    auto [dv, dg0, dg1, dg2] = value_and_grad(f, d0, d1, d2);
    cudaDeviceSynchronize();
    const float hv = to_host(dv).item();
    EXPECT(std::fabs(hv - v.item()) <= tol * (1 + std::fabs(v.item())), "%s value: gpu %g, cpu %g", what, hv, v.item());
    const double r0 = rel(dg0, g0), r1 = rel(dg1, g1), r2 = rel(dg2, g2);
    EXPECT(r0 < tol, "%s d/dx0: rel %g", what, r0);
    EXPECT(r1 < tol, "%s d/dx1: rel %g", what, r1);
    EXPECT(r2 < tol, "%s d/dx2: rel %g", what, r2);
  }
}

static void test_batched() {
  auto loss = [](auto a, auto b) { return sum(tanh(matmul(a, b))); };
  const index_t B = 3, H = 2, M = 19, K = 24, N = 13;
  // Full batch on both sides: one strided-batched call.
  check_grads<2>("batched (B, H) @ (B, H)", loss, {randn({B, H, M, K}, 11, 0.3f), randn({B, H, K, N}, 12, 0.3f)}, 1e-3);
  // b broadcast over B (stride 0 on axis 0): one call per index of B forward, its adjoint summed over B.
  check_grads<2>("batched (B, H) @ (1, H)", loss, {randn({B, H, M, K}, 13, 0.3f), randn({1, H, K, N}, 14, 0.3f)}, 1e-3);
  // Rank 3 against rank 4: a broadcast over the leading axis; its adjoint summed.
  check_grads<2>("batched (H) @ (B, H)", loss, {randn({H, M, K}, 15, 0.3f), randn({B, H, K, N}, 16, 0.3f)}, 1e-3);
  // Rank 3 against a matrix: folded into one (B M, K) @ (K, N) gemm.
  check_grads<2>("batched (B) @ matrix", loss, {randn({B, M, K}, 17, 0.3f), randn({K, N}, 18, 0.3f)}, 1e-3);
  // Transposed batched operands.
  auto loss_t = [](auto a, auto b) { return sum(tanh(matmul(transpose(a, -2, -1), b))); };
  check_grads<2>("batched a^T @ b", loss_t, {randn({B, H, K, M}, 19, 0.3f), randn({B, 1, K, N}, 20, 0.3f)}, 1e-3);
}

static void test_affine(Exec<weft::cuda>& ex, cudaStream_t s) {
  const index_t Bn = 3, T = 21, K = 40, N = 24;
  Tensor<float> x = randn({Bn, T, K}, 21), w = randn({K, N}, 22, 0.2f), bias = randn({N}, 23);
  Parameter<float> wc("weight", Shape{K, N}), bc("bias", Shape{N});
  wc.value = w;
  bc.value = bias;
  Parameter<float, weft::cuda> wd("weight", Shape{K, N}), bd("bias", Shape{N});
  wd.value = to_device(w);
  bd.value = to_device(bias);
  auto dx = to_device(x);
  // Forward: the fused bias epilogue on the GPU, the two steps on the host.
  Tensor<float> y = eval(affine(x.view(), wc, bc));
  Tensor<float, weft::cuda> dy(Shape{Bn, T, N});
  assign(dy.view(), affine(dx.view(), wd, bd), ex);
  cudaStreamSynchronize(s);
  double d = rel(dy, y);
  EXPECT(d < 1e-4, "affine forward: rel %g", d);
  // Parameter gradients (bias: kernels::bias_grad, one gemm by ones on the GPU).
  Workspace<> hws;
  backward(sum(tanh(affine(x.view(), wc, bc))), hws);
  kernels::fill(ex, wd.grad.view(), 0.0f);
  kernels::fill(ex, bd.grad.view(), 0.0f);
  int hooks = 0;
  backward(sum(tanh(affine(dx.view(), wd, bd))), ex, [&](Parameter<float, weft::cuda>&) { ++hooks; });
  cudaStreamSynchronize(s);
  d = rel(wd.grad, wc.grad);
  EXPECT(d < 1e-3, "affine d/dW: rel %g", d);
  d = rel(bd.grad, bc.grad);
  EXPECT(d < 1e-3, "affine d/db: rel %g", d);
  EXPECT(hooks == 2, "hooks fired %d times, not twice", hooks);
  // Input gradient through value_and_grad (weight and bias as constants of the loss).
  auto gx_cpu = std::get<1>(value_and_grad([&](auto a) { return sum(tanh(affine(a, wc, bc))); }, x));
  auto gx_gpu = std::get<1>(value_and_grad([&](auto a) { return sum(tanh(affine(a, wd, bd))); }, dx));
  cudaDeviceSynchronize();
  d = rel(gx_gpu, gx_cpu);
  EXPECT(d < 1e-3, "affine d/dx: rel %g", d);
}

// The fused epilogues against plain loops in double.
static void test_epilogues(Exec<weft::cuda>& ex, cudaStream_t s) {
  const index_t M = 45, K = 32;
  for (index_t N : {40, 29}) {  // 40: GELU_AUX's leading dimension a multiple of 8; 29: the fallback for the aux
    Tensor<float> a = randn({M, K}, 31), b = randn({K, N}, 32, 0.3f), bias = randn({N}, 33);
    auto da = to_device(a), db = to_device(b), dbias = to_device(bias);
    std::vector<double> z(static_cast<std::size_t>(M * N));
    for (index_t i = 0; i < M; ++i)
      for (index_t j = 0; j < N; ++j) {
        double acc = bias.data()[j];
        for (index_t p = 0; p < K; ++p) acc += double(a.data()[i * K + p]) * b.data()[p * N + j];
        z[static_cast<std::size_t>(i * N + j)] = acc;
      }
    Tensor<float> zc({M, N}), gc({M, N});
    for (index_t i = 0; i < M * N; ++i) {
      const double x = z[static_cast<std::size_t>(i)];
      zc.data()[i] = static_cast<float>(x);
      gc.data()[i] = static_cast<float>(0.5 * x * (1 + std::tanh(0.79788456080286535588 * (x + 0.044715 * x * x * x))));
    }
    Tensor<float, weft::cuda> c(Shape{M, N}), pre(Shape{M, N}), c2(Shape{M, N});
    kernels::cuda::gemm_bias(ex, da.view(), db.view(), dbias.data(), c.view());
    kernels::cuda::gemm_bias_gelu(ex, da.view(), db.view(), dbias.data(), c2.view(), pre.data());
    cudaStreamSynchronize(s);
    double d = rel(c, zc);
    EXPECT(d < 1e-4, "gemm_bias (N = %ld): rel %g", long(N), d);
    d = rel(c2, gc);
    EXPECT(d < 1e-4, "gemm_bias_gelu (N = %ld): rel %g", long(N), d);
    d = rel(pre, zc);
    EXPECT(d < 1e-4, "gemm_bias_gelu's pre-activation (N = %ld): rel %g", long(N), d);
    kernels::cuda::gemm_bias_gelu(ex, da.view(), db.view(), dbias.data(), c2.view());
    cudaStreamSynchronize(s);
    d = rel(c2, gc);
    EXPECT(d < 1e-4, "gemm_bias_gelu without aux (N = %ld): rel %g", long(N), d);

    // Weight and bias gradient of a linear layer: dW = beta dW + x^T dy, db = column sums of dy.
    const index_t R = 77;
    Tensor<float> x = randn({R, K}, 34), dyv = randn({R, N}, 35), w0 = randn({K, N}, 36);
    auto dx = to_device(x), ddy = to_device(dyv), dw = to_device(w0);
    Tensor<float> wr({K, N}), br({N});
    for (index_t j = 0; j < N; ++j) {
      double acc = 0;
      for (index_t r = 0; r < R; ++r) acc += dyv.data()[r * N + j];
      br.data()[j] = static_cast<float>(acc);
      for (index_t p = 0; p < K; ++p) {
        double g = w0.data()[p * N + j];
        for (index_t r = 0; r < R; ++r) g += double(x.data()[r * K + p]) * dyv.data()[r * N + j];
        wr.data()[p * N + j] = static_cast<float>(g);
      }
    }
    Tensor<float, weft::cuda> dbias_grad(Shape{N});
    kernels::cuda::gemm_bias_grad(ex, dx.view().transposed(), ddy.view(), dw.view(), 1.0f, 1.0f, dbias_grad.data());
    cudaStreamSynchronize(s);
    d = rel(dw, wr);
    EXPECT(d < 1e-4, "gemm_bias_grad's weight gradient (N = %ld): rel %g", long(N), d);
    d = rel(dbias_grad, br);
    EXPECT(d < 1e-4, "gemm_bias_grad's bias gradient (N = %ld): rel %g", long(N), d);
    // bias_grad accumulates.
    Tensor<float> acc0 = randn({N}, 37), accr({N});
    for (index_t j = 0; j < N; ++j) accr.data()[j] = acc0.data()[j] + br.data()[j];
    auto dacc = to_device(acc0);
    kernels::bias_grad(ex, static_cast<const float*>(ddy.data()), R, N, dacc.data());
    cudaStreamSynchronize(s);
    d = rel(dacc, accr);
    EXPECT(d < 1e-4, "bias_grad (N = %ld): rel %g", long(N), d);
  }
}

// ------------------------------------------------------------------ attention

struct AttnCase {
  index_t b, h, tq, tk, d;
  bool causal;
  float dropout;
};

// Kernel level, against the CPU's materialised reference: q read through a
// permuted (B, T, H, D) layout, random dout.
static void test_attention_kernels(Exec<weft::cuda>& ex, cudaStream_t s, const AttnCase& c) {
  kernels::AttentionParams p;
  p.n0 = c.b;
  p.n1 = c.h;
  p.tq = c.tq;
  p.tk = c.tk;
  p.d = p.dv = c.d;
  p.scale = 1.0 / std::sqrt(double(c.d));
  p.causal = c.causal;
  p.dropout = c.dropout;
  p.seed = 99;
  Tensor<float> q = randn({c.b, c.tq, c.h, c.d}, 41), k = randn({c.b, c.h, c.tk, c.d}, 42), v = randn({c.b, c.h, c.tk, c.d}, 43),
                dout = randn({c.b, c.h, c.tq, c.d}, 44);
  auto dq_in = to_device(q), dk_in = to_device(k), dv_in = to_device(v), ddout = to_device(dout);
  auto opnd_q = [&](const float* base) {
    return kernels::AttnOperand<const float>{base, c.tq * c.h * c.d, c.d, c.h * c.d};  // (B, T, H, D) as (B, H, T, D)
  };
  auto opnd = [&](const float* base, index_t t) { return kernels::AttnOperand<const float>{base, c.h * t * c.d, t * c.d, c.d}; };
  // CPU reference
  Tensor<float> o_ref({c.b, c.h, c.tq, c.d}), gq_ref({c.b, c.h, c.tq, c.d}), gk_ref({c.b, c.h, c.tk, c.d}),
      gv_ref({c.b, c.h, c.tk, c.d});
  std::vector<float> scratch(static_cast<std::size_t>(2 * c.tq * c.tk));
  kernels::cpu::attention_reference_forward(p, opnd_q(q.data()), opnd(k.data(), c.tk), opnd(v.data(), c.tk), o_ref.data(),
                                            scratch.data());
  kernels::cpu::attention_reference_backward(p, opnd_q(q.data()), opnd(k.data(), c.tk), opnd(v.data(), c.tk), dout.data(),
                                             gq_ref.data(), gk_ref.data(), gv_ref.data(), scratch.data());
  // GPU
  Tensor<float, weft::cuda> o(Shape{c.b, c.h, c.tq, c.d}), lse(Shape{c.b, c.h, c.tq}), gq(Shape{c.b, c.h, c.tq, c.d}),
      gk(Shape{c.b, c.h, c.tk, c.d}), gv(Shape{c.b, c.h, c.tk, c.d});
  ex.workspace().reset();
  kernels::attention_forward(ex, p, opnd_q(dq_in.data()), opnd(dk_in.data(), c.tk), opnd(dv_in.data(), c.tk), o.data(),
                             lse.data());
  kernels::attention_backward(ex, p, opnd_q(dq_in.data()), opnd(dk_in.data(), c.tk), opnd(dv_in.data(), c.tk),
                              static_cast<const float*>(o.data()), static_cast<const float*>(ddout.data()),
                              static_cast<const float*>(lse.data()), gq.data(), gk.data(), gv.data());
  cuda_check(cudaStreamSynchronize(s), "attention test synchronize");
  char what[128];
  std::snprintf(what, sizeof what, "attention kernels (B %ld H %ld Tq %ld Tk %ld D %ld causal %d dropout %g)", long(c.b),
                long(c.h), long(c.tq), long(c.tk), long(c.d), int(c.causal), double(c.dropout));
  double d = rel(o, o_ref);
  EXPECT(d < 1e-4, "%s: o rel %g", what, d);
  d = rel(gq, gq_ref);
  EXPECT(d < 1e-3, "%s: dq rel %g", what, d);
  d = rel(gk, gk_ref);
  EXPECT(d < 1e-3, "%s: dk rel %g", what, d);
  d = rel(gv, gv_ref);
  EXPECT(d < 1e-3, "%s: dv rel %g", what, d);
}

// Expression level: the fused attention node on both devices, values and gradients.
static void test_attention_expr(const AttnCase& c) {
  const AttentionOptions opt{.causal = c.causal, .scale = {}, .dropout = c.dropout, .seed = 5};
  Tensor<float> w = randn({c.b, c.h, c.tq, c.d}, 51);
  auto dw = to_device(w);
  auto loss_cpu = [&](auto q, auto k, auto v) { return sum(scaled_dot_product_attention(q, k, v, opt) * w.view()); };
  auto loss_gpu = [&](auto q, auto k, auto v) { return sum(scaled_dot_product_attention(q, k, v, opt) * dw.view()); };
  Tensor<float> q = randn({c.b, c.h, c.tq, c.d}, 52), k = randn({c.b, c.h, c.tk, c.d}, 53), v = randn({c.b, c.h, c.tk, c.d}, 54);
  auto [val, gq, gk, gv] = value_and_grad(loss_cpu, q, k, v);
  auto dq = to_device(q), dk = to_device(k), dv = to_device(v);
  auto [dval, dgq, dgk, dgv] = value_and_grad(loss_gpu, dq, dk, dv);
  cudaDeviceSynchronize();
  const float hv = to_host(dval).item();
  EXPECT(std::fabs(hv - val.item()) <= 1e-3 * (1 + std::fabs(val.item())), "attention expr (T %ld, D %ld, causal %d): value %g vs %g",
         long(c.tq), long(c.d), int(c.causal), hv, val.item());
  const double r0 = rel(dgq, gq), r1 = rel(dgk, gk), r2 = rel(dgv, gv);
  EXPECT(r0 < 1e-3 && r1 < 1e-3 && r2 < 1e-3, "attention expr (T %ld, D %ld, causal %d): dq %g dk %g dv %g", long(c.tq),
         long(c.d), int(c.causal), r0, r1, r2);
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
    test_gemm_transposes(ex, stream);
    test_batched();
    test_affine(ex, stream);
    test_epilogues(ex, stream);
    for (index_t d : {32, 64})
      for (bool causal : {false, true}) {
        test_attention_kernels(ex, stream, {2, 3, 77, 77, d, causal, 0.0f});
        test_attention_expr({2, 3, 77, 77, d, causal, 0.0f});
      }
    test_attention_kernels(ex, stream, {1, 2, 50, 83, 64, false, 0.0f});  // Tq != Tk
    test_attention_kernels(ex, stream, {1, 2, 83, 50, 32, true, 0.0f});   // causal, Tq > Tk
    test_attention_kernels(ex, stream, {2, 2, 45, 45, 32, true, 0.2f});   // dropout: the CPU's mask
    test_attention_kernels(ex, stream, {1, 1, 33, 40, 128, false, 0.0f});  // D = 128: the widest, > 48 KiB shared
  } catch (const std::exception& e) {
    ++failures;
    std::printf("FAILED: exception: %s\n", e.what());
  }
  cudaStreamDestroy(stream);
  std::printf("%s (%d failures)\n", failures ? "FAILED" : "passed", failures.load());
  return failures ? 1 : 0;
}
