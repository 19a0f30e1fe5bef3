// Fused scaled dot-product attention (expr/attention.hpp, kernels/cpu/attention.hpp)
// against the materialised reference (plain loops over the whole (Tq, Tk)
// matrix, kernels::cpu::attention_reference_*), values and gradients, causal
// and not, sizes that are not multiples of the tiles, dropout, strided
// operands; finite differences (gradcheck, double); memory O(B H T).
#include <doctest/doctest.h>

#include <cmath>
#include <numbers>
#include <random>
#include <string>
#include <vector>
#include <weft/expr/attention.hpp>
#include <weft/weft.hpp>

using namespace weft;

namespace {

template <class T = double>
Tensor<T> randn(const Shape& s, unsigned seed, double scale = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, scale);
  Tensor<T> t(s);
  for (index_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(nd(rng));
  return t;
}

template <class T>
kernels::AttnOperand<const T> rows_of(const Tensor<T>& x) {
  const Shape s = x.shape();
  return {x.data(), s[1] * s[2] * s[3], s[2] * s[3], s[3]};
}

template <class T>
double max_rel_diff(const T* a, const T* b, index_t n) {
  double worst = 0, scale = 0;
  for (index_t i = 0; i < n; ++i) scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  for (index_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  return scale > 0 ? worst / scale : worst;
}

struct Case {
  index_t b, h, tq, tk, d, dv;
  bool causal;
  float dropout;
};

// Fused forward and backward (through the expression and vjp) against the
// reference loops, with a random output cotangent.
template <class T>
void compare_with_reference(const Case& c, double tol) {
  CAPTURE(c.tq);
  CAPTURE(c.tk);
  CAPTURE(c.causal);
  CAPTURE(c.dropout);
  auto q = randn<T>({c.b, c.h, c.tq, c.d}, 1);
  auto k = randn<T>({c.b, c.h, c.tk, c.d}, 2);
  auto v = randn<T>({c.b, c.h, c.tk, c.dv}, 3);
  auto dout = randn<T>({c.b, c.h, c.tq, c.dv}, 4);
  const AttentionOptions opt{.causal = c.causal, .scale = {}, .dropout = c.dropout, .seed = 99};
  auto f = [&](auto a, auto b, auto w) { return scaled_dot_product_attention(a, b, w, opt); };

  Tensor<T> out({c.b, c.h, c.tq, c.dv});
  out = scaled_dot_product_attention(q, k, v, opt);
  auto g = vjp(f, dout, q, k, v);

  kernels::AttentionParams p{c.b, c.h, c.tq, c.tk, c.d, c.dv, 1.0 / std::sqrt(double(c.d)), c.causal, c.dropout, 99};
  std::vector<T> ro(out.numel()), rdq(q.numel()), rdk(k.numel()), rdv(v.numel()), scratch(2 * c.tq * c.tk);
  kernels::cpu::attention_reference_forward<T>(p, rows_of(q), rows_of(k), rows_of(v), ro.data(), scratch.data());
  kernels::cpu::attention_reference_backward<T>(p, rows_of(q), rows_of(k), rows_of(v), dout.data(), rdq.data(), rdk.data(),
                                                rdv.data(), scratch.data());
  CHECK(max_rel_diff(out.data(), ro.data(), out.numel()) < tol);
  CHECK(max_rel_diff(g[0].data(), rdq.data(), q.numel()) < tol);
  CHECK(max_rel_diff(g[1].data(), rdk.data(), k.numel()) < tol);
  CHECK(max_rel_diff(g[2].data(), rdv.data(), v.numel()) < tol);
}

}  // namespace

TEST_CASE("fused attention equals the materialised reference, values and gradients") {
  // Tiles are 64 queries x 128 keys: these sizes end in partial tiles, span
  // several, and (causal) skip and cut tiles on the diagonal.
  const Case cases[] = {
      {1, 2, 5, 5, 3, 4, false, 0},      {1, 2, 5, 5, 3, 4, true, 0},       {2, 3, 133, 133, 16, 24, false, 0},
      {2, 3, 133, 133, 16, 24, true, 0}, {1, 2, 70, 301, 8, 8, false, 0},   {1, 2, 301, 70, 8, 8, true, 0},
      {1, 1, 200, 257, 64, 64, true, 0}, {1, 2, 97, 131, 16, 16, false, 0.25f}, {1, 2, 97, 97, 16, 16, true, 0.5f},
  };
  for (const Case& c : cases) {
    compare_with_reference<double>(c, 1e-12);
    compare_with_reference<float>(c, 2e-5);
  }
}

TEST_CASE("attention gradients match finite differences (gradcheck, double)") {
  auto q = randn({1, 2, 6, 3}, 11);
  auto k = randn({1, 2, 7, 3}, 12);
  auto v = randn({1, 2, 7, 5}, 13);
  for (bool causal : {false, true})
    for (float drop : {0.0f, 0.3f}) {
      CAPTURE(causal);
      CAPTURE(drop);
      const AttentionOptions opt{.causal = causal, .scale = 0.7, .dropout = drop, .seed = 5};
      // A nonlinear function of the output, so every path of the adjoint is weighted differently.
      auto r = gradcheck([&](auto a, auto b, auto w) { return sum(tanh(scaled_dot_product_attention(a, b, w, opt))); }, q, k,
                         v);
      INFO(r.message);
      CHECK(r.ok);
    }
  // Rank 3 (N, T, D) operands, and attention whose operands are computed expressions.
  auto q3 = randn({3, 4, 2}, 14), k3 = randn({3, 5, 2}, 15), v3 = randn({3, 5, 2}, 16);
  auto r = gradcheck([](auto a, auto b, auto w) { return sum(scaled_dot_product_attention(a * 2.0, sin(b), w * w) * w.shape()[0]); },
                     q3, k3, v3);
  INFO(r.message);
  CHECK(r.ok);
}

TEST_CASE("strided operands are read in place and give the same result") {
  // A (B, T, H, D) projection read as (B, H, T, D) through strides.
  const index_t B = 2, T = 37, H = 3, D = 8;
  auto qt = randn<float>({B, T, H, D}, 21), kt = randn<float>({B, T, H, D}, 22), vt = randn<float>({B, T, H, D}, 23);
  auto perm = [&](Tensor<float>& x) {
    return TensorView<float>(x.data(), Shape{B, H, T, D}, Strides{T * H * D, D, H * D, 1});
  };
  Tensor<float> qc({B, H, T, D}), kc({B, H, T, D}), vc({B, H, T, D});
  qc = perm(qt);
  kc = perm(kt);
  vc = perm(vt);
  Tensor<float> a({B, H, T, D}), b({B, H, T, D});
  a = scaled_dot_product_attention(perm(qt), perm(kt), perm(vt), {.causal = true});
  b = scaled_dot_product_attention(qc, kc, vc, {.causal = true});
  CHECK(max_rel_diff(a.data(), b.data(), a.numel()) == 0.0);
  auto seed = randn<float>({B, H, T, D}, 24);
  auto f = [](auto x, auto y, auto z) { return scaled_dot_product_attention(x, y, z, {.causal = true}); };
  auto g1 = vjp(f, seed, perm(qt), perm(kt), perm(vt));
  auto g2 = vjp(f, seed, qc, kc, vc);
  for (int i = 0; i < 3; ++i) CHECK(max_rel_diff(g1[i].data(), g2[i].data(), g1[i].numel()) == 0.0);
}

TEST_CASE("attention's scratch is O(B H T), not O(B H T^2)") {
  // One forward and backward at T = 2048: the (T, T) matrix alone would be
  // 2 * 2048^2 * 4 B = 32 MiB; the fused pass's whole workspace (operands'
  // gradients, output, lse, two tiles) stays under 3 MiB.
  const index_t B = 1, H = 2, T = 2048, D = 32;
  auto q = randn<float>({B, H, T, D}, 31), k = randn<float>({B, H, T, D}, 32), v = randn<float>({B, H, T, D}, 33);
  Workspace<> ws;
  Tensor<float> gq({B, H, T, D}), gk({B, H, T, D}), gv({B, H, T, D});
  TensorView<float> grads[3] = {gq.view(), gk.view(), gv.view()};
  NoHook hook;
  value_and_grad_into([](auto a, auto b, auto c) { return sum(scaled_dot_product_attention(a, b, c, {.causal = true})); }, ws,
                      grads, hook, q, k, v);
  const std::size_t io = static_cast<std::size_t>(4 * B * H * T * D) * sizeof(float);  // out, dq, dk, dv
  CHECK(ws.capacity() < io + (std::size_t(3) << 20));
  CHECK(ws.capacity() < static_cast<std::size_t>(B * H * T * T) * sizeof(float) / 4);
}

TEST_CASE("attention refuses bad shapes and options with the op and the shapes") {
  Tensor<float> q({1, 2, 4, 8}), k({1, 2, 5, 8}), v({1, 2, 5, 3}), kbad({1, 2, 5, 7}), vbad({1, 2, 6, 3}), hbad({1, 3, 5, 8}),
      r3({2, 4, 8});
  auto msg = [](auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(msg([&] { (void)scaled_dot_product_attention(q, kbad, v); }).find("q and k widths differ: q (1, 2, 4, 8), k (1, 2, 5, 7)") !=
        std::string::npos);
  CHECK(msg([&] { (void)scaled_dot_product_attention(q, k, vbad); }).find("k and v have different key counts") !=
        std::string::npos);
  CHECK(msg([&] { (void)scaled_dot_product_attention(q, hbad, v); }).find("batch axes differ (axis 1)") != std::string::npos);
  CHECK(msg([&] { (void)scaled_dot_product_attention(q, r3, v); }).find("must all be (B, H, T, D)") != std::string::npos);
  CHECK(msg([&] { (void)scaled_dot_product_attention(q, k, v, {.dropout = 1.0f}); }).find("dropout rate 1 is outside [0, 1)") !=
        std::string::npos);
  CHECK(msg([&] { (void)scaled_dot_product_attention(q, k, v); }) == "no error");
}

// ---------------------------------------------------------------- layers
// nn::TransformerBlock (and so MultiHeadAttention) against a plain
// composition: loops for layer norm, the projections, GELU, and the reference
// attention over the (N, T, 3C) projection read through strides.
#include <weft/nn/registry.hpp>
#include <weft/nn/transformer.hpp>

namespace {

using Vec = std::vector<double>;

Vec layer_norm_ref(const Vec& x, index_t rows, index_t c, const Parameter<double>& g, const Parameter<double>& b) {
  Vec y(x.size());
  for (index_t r = 0; r < rows; ++r) {
    double mu = 0, var = 0;
    for (index_t j = 0; j < c; ++j) mu += x[r * c + j];
    mu /= double(c);
    for (index_t j = 0; j < c; ++j) var += (x[r * c + j] - mu) * (x[r * c + j] - mu);
    const double rs = 1.0 / std::sqrt(var / double(c) + 1e-5);
    for (index_t j = 0; j < c; ++j) y[r * c + j] = (x[r * c + j] - mu) * rs * g.value.data()[j] + b.value.data()[j];
  }
  return y;
}

Vec linear_ref(const Vec& x, index_t rows, const nn::Linear<double>& l) {
  const index_t in = l.weight.shape()[0], out = l.weight.shape()[1];
  Vec y(static_cast<std::size_t>(rows * out));
  for (index_t r = 0; r < rows; ++r)
    for (index_t o = 0; o < out; ++o) {
      double acc = l.bias.value.data()[o];
      for (index_t i = 0; i < in; ++i) acc += x[r * in + i] * l.weight.value.data()[i * out + o];
      y[r * out + o] = acc;
    }
  return y;
}

template <nn::GeluForm G = nn::GeluForm::erf>
Vec block_ref(nn::TransformerBlock<double, cpu, G>& blk, const Tensor<double>& xt, index_t h, bool causal) {
  const index_t n = xt.shape()[0], t = xt.shape()[1], c = xt.shape()[2], rows = n * t, dh = c / h;
  Vec x(xt.data(), xt.data() + xt.numel());
  Vec qkv = linear_ref(layer_norm_ref(x, rows, c, blk.ln1.gamma, blk.ln1.beta), rows, blk.attn.qkv);  // (N, T, 3C)
  kernels::AttentionParams p{n, h, t, t, dh, dh, 1.0 / std::sqrt(double(dh)), causal, 0, 0};
  auto part = [&](index_t k) { return kernels::AttnOperand<const double>{qkv.data() + k * c, t * 3 * c, dh, 3 * c}; };
  Vec o(static_cast<std::size_t>(rows * c)), ot(o.size()), scratch(static_cast<std::size_t>(2 * t * t));
  kernels::cpu::attention_reference_forward<double>(p, part(0), part(1), part(2), o.data(), scratch.data());  // (N, H, T, Dh)
  for (index_t b = 0; b < n; ++b)
    for (index_t hh = 0; hh < h; ++hh)
      for (index_t i = 0; i < t; ++i)
        for (index_t d = 0; d < dh; ++d) ot[(b * t + i) * c + hh * dh + d] = o[((b * h + hh) * t + i) * dh + d];
  Vec a = linear_ref(ot, rows, blk.attn.proj);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] += a[i];
  Vec f = linear_ref(layer_norm_ref(x, rows, c, blk.ln2.gamma, blk.ln2.beta), rows, blk.fc1);
  for (double& v : f)
    v = G == nn::GeluForm::erf ? 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)))
                               : 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (v + 0.044715 * v * v * v)));
  Vec m = linear_ref(f, rows, blk.fc2);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] += m[i];
  return x;
}

}  // namespace

TEST_CASE("TransformerBlock equals the plain composition; its gradients match finite differences") {
  const index_t n = 2, t = 5, c = 8, h = 2;
  for (bool causal : {false, true}) {
    CAPTURE(causal);
    nn::TransformerBlock<double> blk({.dim = c, .heads = h, .mlp = 12, .causal = causal}, 7);
    // Non-trivial norms, so their parameters' gradients are exercised.
    for (index_t j = 0; j < c; ++j) {
      blk.ln1.gamma.value.data()[j] = 1.0 + 0.1 * double(j);
      blk.ln2.beta.value.data()[j] = 0.05 * double(j);
    }
    auto x = randn({n, t, c}, 41);
    Tensor<double> y({n, t, c});
    Workspace<> ws;
    y = blk(x);
    Vec ref = block_ref(blk, x, h, causal);
    CHECK(max_rel_diff(y.data(), ref.data(), y.numel()) < 1e-12);

    // Input gradient: gradcheck through every node of the block.
    auto r = gradcheck([&](auto a) { return sum(tanh(blk(a))); }, x);
    INFO(r.message);
    CHECK(r.ok);

    // Parameter gradients against central differences of the loss, a few entries each.
    nn::Registry<double> reg;
    reg.add("block", blk);
    auto w = randn({n, t, c}, 42);
    auto loss = [&] { return eval(sum(blk(x) * w), ws).item(); };
    reg.zero_grad();
    backward(sum(blk(x) * w), ws);
    for (std::size_t pi = 0; pi < reg.size(); ++pi) {
      Parameter<double>& p = reg[pi];
      for (index_t e : {index_t(0), p.numel() / 2, p.numel() - 1}) {
        CAPTURE(p.name);
        CAPTURE(e);
        const double keep = p.value.data()[e], eps = 1e-6;
        p.value.data()[e] = keep + eps;
        const double up = loss();
        p.value.data()[e] = keep - eps;
        const double down = loss();
        p.value.data()[e] = keep;
        const double numeric = (up - down) / (2 * eps);
        CHECK(p.grad.data()[e] == doctest::Approx(numeric).epsilon(1e-5).scale(1.0));
      }
    }
  }
}

// GeluForm::tanh (GPT-2's MLP): gelu_tanh over fc1's affine node, the fused
// node of expr/affine_gelu.hpp, against the plain composition with the tanh
// GELU; gradients by gradcheck and, for the MLP's parameters, central differences.
TEST_CASE("TransformerBlock with the tanh GELU equals the plain composition; its gradients match finite differences") {
  const index_t n = 2, t = 5, c = 8, h = 2;
  nn::TransformerBlock<double, cpu, nn::GeluForm::tanh> blk({.dim = c, .heads = h, .mlp = 12, .causal = true}, 7);
  static_assert(std::is_same_v<decltype(blk.activation(blk.fc1(std::declval<Tensor<double>&>()))),
                               AffineGeluTanh<Leaf<double, cpu>, ParamLeaf<double, cpu>>>,
                "the tanh form builds the fused affine + GELU node");
  auto x = randn({n, t, c}, 43);
  Tensor<double> y({n, t, c});
  y = blk(x);
  Vec ref = block_ref(blk, x, h, true);
  CHECK(max_rel_diff(y.data(), ref.data(), y.numel()) < 1e-12);
  auto r = gradcheck([&](auto a) { return sum(tanh(blk(a))); }, x);
  INFO(r.message);
  CHECK(r.ok);
  Workspace<> ws;
  auto w = randn({n, t, c}, 44);
  auto loss = [&] { return eval(sum(blk(x) * w), ws).item(); };
  for (auto* p : {&blk.fc1.weight, &blk.fc1.bias, &blk.fc2.weight, &blk.ln2.gamma}) p->zero_grad();
  backward(sum(blk(x) * w), ws);
  for (auto* p : {&blk.fc1.weight, &blk.fc1.bias, &blk.fc2.weight, &blk.ln2.gamma})
    for (index_t e : {index_t(0), p->numel() / 2, p->numel() - 1}) {
      CAPTURE(p->name);
      CAPTURE(e);
      const double keep = p->value.data()[e], eps = 1e-6;
      p->value.data()[e] = keep + eps;
      const double up = loss();
      p->value.data()[e] = keep - eps;
      const double down = loss();
      p->value.data()[e] = keep;
      CHECK(p->grad.data()[e] == doctest::Approx((up - down) / (2 * eps)).epsilon(1e-5).scale(1.0));
    }
}

TEST_CASE("PatchEmbedding cuts patches like a stride-p convolution's input; mean_pool and positions") {
  nn::PatchEmbedding<double> pe(2, 2, 3, 1);
  // Two images (2 channels, 4 x 6): value = 1000 b + 100 c + 10 y + x.
  Tensor<double> img({2, 2, 4, 6}), patches({2, 6, 8});
  for (index_t b = 0; b < 2; ++b)
    for (index_t ch = 0; ch < 2; ++ch)
      for (index_t y = 0; y < 4; ++y)
        for (index_t x = 0; x < 6; ++x) img.data()[((b * 2 + ch) * 4 + y) * 6 + x] = 1000.0 * b + 100.0 * ch + 10.0 * y + x;
  pe.patchify(img.data(), 2, 4, 6, patches.data());
  CHECK(pe.patches(4, 6) == 6);
  // Image 1, patch (row 1, col 2) = patch 5; its element (c=1, y=0, x=1) = pixel (1, 1, 2, 5).
  CHECK(patches.data()[(1 * 6 + 5) * 8 + (1 * 4 + 0 * 2 + 1)] == 1000.0 + 100.0 + 20.0 + 5.0);
  CHECK_THROWS_AS(pe.patchify(img.data(), 2, 4, 5, patches.data()), ShapeError);
  Tensor<double> tokens({2, 6, 3});
  tokens = pe(patches);
  nn::PositionalEmbedding<double> pos(6, 3, 2);
  Tensor<double> pooled({2, 3});
  pooled = nn::mean_pool(pos(tokens));
  for (index_t b = 0; b < 2; ++b)
    for (index_t j = 0; j < 3; ++j) {
      double acc = 0;
      for (index_t i = 0; i < 6; ++i) acc += tokens.data()[(b * 6 + i) * 3 + j] + pos.weight.value.data()[i * 3 + j];
      CHECK(pooled.data()[b * 3 + j] == doctest::Approx(acc / 6).epsilon(1e-12));
    }
}

TEST_CASE("views and matmul of a let() value pass its gradient on (needs_grad sees the shared leaf)") {
  // Found through MultiHeadAttention: q, k, v are views of one let() value;
  // a view or matmul whose operand was a let()'s leaf skipped its backward.
  auto x = randn({4, 6}, 51);
  auto r = gradcheck(
      [](auto a) {
        return sum(tanh(let(a * 1.5, [](auto s) { return matmul(reshape(s, Shape{6, 4}), s) + matmul(permute(s, 1, 0), s); })));
      },
      x);
  INFO(r.message);
  CHECK(r.ok);
}
