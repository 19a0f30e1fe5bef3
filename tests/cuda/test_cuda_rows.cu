// The CUDA row and reduction primitives (kernels/cuda/kernels.cuh) through
// weft's public expressions on device tensors, compared with the CPU
// evaluation of the same expressions (the oracle): sum/mean/max along axes,
// softmax, log_softmax, cross_entropy (with and without label smoothing),
// layer_norm, embedding and their gradients, broadcast operands in a
// differentiated region, and the same bits twice. Shapes include rows that are
// not a multiple of a block, a row longer than a block, rank 3 and 4, and
// reductions over inner, middle and outer axes.
// Tolerances (float): |gpu - cpu| <= 2e-5 k + 2e-4 |cpu| per element, k = 1
// + sqrt(terms) for an element that sums that many terms (a sum that cancels
// to near 0 keeps the rounding of its terms' magnitude): the GPU sums in
// another order than the CPU's cascades and uses CUDA's expf/logf;
// double: 1e-12 k + 1e-10 |cpu|.
// Without a GPU: exit 77 (skipped).
#include "check.hpp"
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <weft/expr/embedding.hpp>
#include <weft/expr/layer_norm.hpp>
#include <weft/kernels/cuda/kernels.cuh>
#include <weft/weft.hpp>

using namespace weft;

using cudatest::checks;
using cudatest::failures;

template <class T>
struct Tol;
template <>
struct Tol<float> {
  static constexpr double abs = 2e-5, rel = 2e-4;
};
template <>
struct Tol<double> {
  static constexpr double abs = 1e-12, rel = 1e-10;
};

// The worst |gpu - cpu| beyond the tolerance (0 when every element is within);
// terms: how many terms each element sums.
template <class T>
static double excess(const Tensor<T>& gpu, const Tensor<T>& cpu, double terms = 0) {
  const double k = 1 + std::sqrt(terms);
  if (gpu.shape() != cpu.shape()) return 1e30;
  double worst = 0;
  for (index_t i = 0; i < cpu.numel(); ++i) {
    const double g = double(gpu.data()[i]), c = double(cpu.data()[i]);
    const double d = std::fabs(g - c) - (Tol<T>::abs * k + Tol<T>::rel * std::fabs(c));
    if (!(d <= 0)) worst = std::isnan(d) ? 1e30 : std::fmax(worst, d + 1e-300);
  }
  return worst;
}

template <class T>
static bool same_bits(const Tensor<T>& a, const Tensor<T>& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.bytes()) == 0;
}

template <class T>
static Tensor<T> randn(const Shape& s, std::mt19937& rng, double scale = 1) {
  std::normal_distribution<double> nd;
  Tensor<T> t(s);
  for (index_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(scale * nd(rng));
  return t;
}

static std::string str(const Shape& s) {
  std::string r = "(";
  for (int d = 0; d < s.rank; ++d) r += (d ? ", " : "") + std::to_string(s[d]);
  return r + ")";
}

struct Gpu {
  Workspace<weft::cuda> ws;
  cudaStream_t stream;
  Gpu() { cudaStreamCreate(&stream); }
  ~Gpu() { cudaStreamDestroy(stream); }
  Exec<weft::cuda> ex() { return Exec<weft::cuda>(ws, stream); }
  // The expression's value evaluated on the device, copied to the host.
  template <class E>
  Tensor<typename E::value_type> eval(const E& e) {
    Tensor<typename E::value_type, weft::cuda> out(e.shape());
    ws.reset();
    assign(out.view(), e, ex());
    cuda_check(cudaStreamSynchronize(stream), "test sync");
    return to_host(out);
  }
};

// sum, mean, max along every axis of shape s, of a leaf and of a computed
// region; twice on the GPU for the same bits.
template <class T>
static void check_reductions(Gpu& gpu, const Shape& s, std::mt19937& rng) {
  Tensor<T> x = randn<T>(s, rng);
  auto dx = to_device(x);
  for (int axis = 0; axis < s.rank; ++axis) {
    const std::string at = str(s) + " axis " + std::to_string(axis);
    const double m = static_cast<double>(s[axis]);
    double e = excess(gpu.eval(sum(dx, axis)), weft::eval(sum(x, axis)), m);
    EXPECT(e == 0, "sum %s: beyond tolerance by %g", at.c_str(), e);
    e = excess(gpu.eval(mean(dx * T(2) + T(1), axis)), weft::eval(mean(x * T(2) + T(1), axis)));
    EXPECT(e == 0, "mean %s: beyond tolerance by %g", at.c_str(), e);
    Tensor<T> m1 = gpu.eval(max(tanh(dx), axis, keepdim));
    e = excess(m1, weft::eval(max(tanh(x), axis, keepdim)));
    EXPECT(e == 0, "max %s: beyond tolerance by %g", at.c_str(), e);
    EXPECT(same_bits(gpu.eval(sum(dx, axis)), gpu.eval(sum(dx, axis))), "sum %s: not the same bits twice", at.c_str());
    EXPECT(same_bits(gpu.eval(max(tanh(dx), axis, keepdim)), m1), "max %s: not the same bits twice", at.c_str());
  }
  const double e = excess(gpu.eval(max(dx)), weft::eval(max(x)));  // (max rounds nothing)
  EXPECT(e == 0, "max of all of %s: beyond tolerance by %g", str(s).c_str(), e);
}

template <class T>
static void check_softmax(Gpu& gpu, const Shape& s, std::mt19937& rng) {
  Tensor<T> x = randn<T>(s, rng, 3);
  auto dx = to_device(x);
  double e = excess(gpu.eval(softmax(dx)), weft::eval(softmax(x)));
  EXPECT(e == 0, "softmax %s: beyond tolerance by %g", str(s).c_str(), e);
  Tensor<T> l1 = gpu.eval(log_softmax(dx));
  e = excess(l1, weft::eval(log_softmax(x)));
  EXPECT(e == 0, "log_softmax %s: beyond tolerance by %g", str(s).c_str(), e);
  EXPECT(same_bits(gpu.eval(log_softmax(dx)), l1), "log_softmax %s: not the same bits twice", str(s).c_str());
  // Gradients through both (softmax_rows_backward), the seed a weighted sum.
  Tensor<T> w = randn<T>(s, rng);
  auto dw = to_device(w);
  auto f = [](const auto& wt) { return [&wt](auto a) { return sum(softmax(a) * wt + log_softmax(a * T(0.5)) * wt); }; };
  auto [cv, cg] = value_and_grad(f(w), x);
  auto [gv, gg] = value_and_grad(f(dw), dx);
  e = excess(to_host(gv), cv, static_cast<double>(s.numel())) + excess(to_host(gg), cg, static_cast<double>(s.back()));
  EXPECT(e == 0, "softmax gradients %s: beyond tolerance by %g", str(s).c_str(), e);
  auto [gv2, gg2] = value_and_grad(f(dw), dx);
  EXPECT(same_bits(to_host(gg2), to_host(gg)) && same_bits(to_host(gv2), to_host(gv)),
         "softmax gradients %s: not the same bits twice", str(s).c_str());
}

template <class T, class L>
static void check_cross_entropy(Gpu& gpu, index_t rows, index_t cols, double eps, std::mt19937& rng) {
  Tensor<T> x = randn<T>(Shape{rows, cols}, rng, 2);
  Tensor<L> lab(Shape{rows});
  std::uniform_int_distribution<int> cls(0, static_cast<int>(cols) - 1);
  for (index_t r = 0; r < rows; ++r) lab.data()[r] = static_cast<L>(cls(rng));
  auto dx = to_device(x);
  auto dlab = to_device(lab);
  const CrossEntropyOptions o{eps};
  const std::string at = "(" + std::to_string(rows) + ", " + std::to_string(cols) + ") eps " + std::to_string(eps);
  double e = excess(gpu.eval(cross_entropy(dx, dlab, o)), weft::eval(cross_entropy(x, lab, o)), static_cast<double>(cols));
  EXPECT(e == 0, "cross_entropy %s: beyond tolerance by %g", at.c_str(), e);
  auto f = [o](const auto& lb) { return [&lb, o](auto a) { return cross_entropy(a, lb, o); }; };
  auto [cv, cg] = value_and_grad(f(lab), x);
  auto [gv, gg] = value_and_grad(f(dlab), dx);
  e = excess(to_host(gv), cv, static_cast<double>(cols)) + excess(to_host(gg), cg);
  EXPECT(e == 0, "cross_entropy value and gradient %s: beyond tolerance by %g", at.c_str(), e);
  auto [gv2, gg2] = value_and_grad(f(dlab), dx);
  EXPECT(same_bits(to_host(gv2), to_host(gv)) && same_bits(to_host(gg2), to_host(gg)),
         "cross_entropy %s: not the same bits twice", at.c_str());
}

// Parameters with the same values on the host and the device, gradients zeroed.
template <class T>
struct Twin {
  Parameter<T> h;
  Parameter<T, weft::cuda> d;
  Twin(const char* name, const Tensor<T>& v, Gpu& gpu) : h(name, v.shape()), d(name, v.shape()) {
    h.value = v;
    d.value = to_device(v);
    zero(gpu);
  }
  void zero(Gpu& gpu) {
    h.zero_grad();
    kernels::fill(gpu.ex(), d.grad.view(), T(0));
    cuda_check(cudaStreamSynchronize(gpu.stream), "test sync");
  }
};

template <class T>
static void check_layer_norm(Gpu& gpu, const Shape& s, std::mt19937& rng) {
  const index_t d = s.back();
  Twin<T> g("ln.gamma", randn<T>(Shape{d}, rng, 0.5), gpu), b("ln.beta", randn<T>(Shape{d}, rng), gpu);
  for (index_t j = 0; j < d; ++j) g.h.value.data()[j] += T(1);
  g.d.value = to_device(g.h.value);
  Tensor<T> x = randn<T>(s, rng, 2), w = randn<T>(s, rng);
  auto dx = to_device(x), dw = to_device(w);
  const T eps = T(1e-5);
  double e = excess(gpu.eval(layer_norm(dx, g.d, b.d, eps)), weft::eval(layer_norm(x, g.h, b.h, eps)));
  EXPECT(e == 0, "layer_norm %s: beyond tolerance by %g", str(s).c_str(), e);
  auto f = [eps](auto& gm, auto& bt, const auto& wt) {
    return [&gm, &bt, &wt, eps](auto a) { return sum(layer_norm(a, gm, bt, eps) * wt); };
  };
  auto [cv, cg] = value_and_grad(f(g.h, b.h, w), x);
  auto [gv, gg] = value_and_grad(f(g.d, b.d, dw), dx);
  const double rows = static_cast<double>(s.numel() / d);
  e = excess(to_host(gv), cv, static_cast<double>(s.numel())) + excess(to_host(gg), cg, static_cast<double>(d));
  EXPECT(e == 0, "layer_norm value and d/dx %s: beyond tolerance by %g", str(s).c_str(), e);
  e = excess(to_host(g.d.grad), g.h.grad, rows) + excess(to_host(b.d.grad), b.h.grad, rows);
  EXPECT(e == 0, "layer_norm dgamma, dbeta %s: beyond tolerance by %g", str(s).c_str(), e);
  const Tensor<T> dg1 = to_host(g.d.grad), dx1 = to_host(gg);
  g.zero(gpu);
  b.zero(gpu);
  auto [gv2, gg2] = value_and_grad(f(g.d, b.d, dw), dx);
  EXPECT(same_bits(to_host(gg2), dx1) && same_bits(to_host(g.d.grad), dg1), "layer_norm %s: not the same bits twice",
         str(s).c_str());
}

template <class T, class I>
static void check_embedding(Gpu& gpu, index_t e_rows, index_t d, const Shape& is, std::mt19937& rng) {
  Twin<T> table("tok.weight", randn<T>(Shape{e_rows, d}, rng), gpu);
  Tensor<I> idx(is);
  std::uniform_int_distribution<int> row(0, static_cast<int>(e_rows) - 1);
  for (index_t i = 0; i < idx.numel(); ++i) idx.data()[i] = static_cast<I>(row(rng) % 5);  // many repeats
  if (idx.numel() > 1) idx.data()[1] = static_cast<I>(e_rows - 1);
  auto didx = to_device(idx);
  const std::string at = str(is) + " of (" + std::to_string(e_rows) + ", " + std::to_string(d) + ")";
  double e = excess(gpu.eval(embedding(table.d, didx.view())), weft::eval(embedding(table.h, idx.view())));
  EXPECT(e == 0, "embedding %s: beyond tolerance by %g", at.c_str(), e);
  Shape os = is;
  os[os.rank++] = d;
  Tensor<T> w = randn<T>(os, rng);
  auto dw = to_device(w);
  Workspace<> hws;
  backward(sum(embedding(table.h, idx.view()) * w), hws);
  backward(sum(embedding(table.d, didx.view()) * dw), gpu.ex());
  cuda_check(cudaStreamSynchronize(gpu.stream), "test sync");
  const Tensor<T> g1 = to_host(table.d.grad);
  e = excess(g1, table.h.grad, static_cast<double>(is.numel()));
  EXPECT(e == 0, "embedding gradient (scatter-add) %s: beyond tolerance by %g", at.c_str(), e);
  table.zero(gpu);
  backward(sum(embedding(table.d, didx.view()) * dw), gpu.ex());
  cuda_check(cudaStreamSynchronize(gpu.stream), "test sync");
  EXPECT(same_bits(to_host(table.d.grad), g1), "embedding gradient %s: not the same bits twice", at.c_str());
}

// An index out of range is a ValueError naming the table, the index, its
// position and the table's size, as on the CPU; so is a bad label.
static void check_bad_indices(Gpu& gpu) {
  Parameter<float, weft::cuda> table("tok.weight", Shape{7, 5});
  kernels::fill(gpu.ex(), table.value.view(), 1.0f);
  Tensor<std::int32_t> idx(Shape{4});
  for (index_t i = 0; i < 4; ++i) idx.data()[i] = static_cast<std::int32_t>(i);
  idx.data()[2] = 9;
  auto didx = to_device(idx);
  std::string msg;
  try {
    gpu.eval(embedding(table, didx.view()));
  } catch (const ValueError& err) {
    msg = err.what();
  }
  EXPECT(msg.find("tok.weight") != std::string::npos && msg.find("index 9 at position 2") != std::string::npos &&
             msg.find("7 embeddings") != std::string::npos,
         "bad embedding index: message \"%s\"", msg.c_str());
  Tensor<float, weft::cuda> logits(Shape{3, 4});
  kernels::fill(gpu.ex(), logits.view(), 0.5f);
  Tensor<std::int64_t> lab(Shape{3});
  lab.data()[0] = 1;
  lab.data()[1] = -1;
  lab.data()[2] = 4;
  auto dlab = to_device(lab);
  msg.clear();
  try {
    gpu.eval(cross_entropy(logits, dlab));
  } catch (const ValueError& err) {
    msg = err.what();
  }
  EXPECT(msg.find("label -1 at row 1 is out of range for 4 classes") != std::string::npos, "bad label: message \"%s\"",
         msg.c_str());
}

// sum_rows (the bias gradient's column sums) against its plain reference.
template <class T>
static void check_sum_rows(Gpu& gpu, index_t rows, index_t d, std::mt19937& rng) {
  Tensor<T> x = randn<T>(Shape{rows, d}, rng), acc = randn<T>(Shape{d}, rng);
  Tensor<T> ref(acc.shape());
  std::memcpy(ref.data(), acc.data(), acc.bytes());
  kernels::cpu::sum_rows_reference(x.data(), rows, d, ref.data());
  auto dxs = to_device(x), dacc = to_device(acc);
  gpu.ws.reset();
  kernels::sum_rows(gpu.ex(), dxs.data(), rows, d, dacc.data());
  cuda_check(cudaStreamSynchronize(gpu.stream), "test sync");
  const double e = excess(to_host(dacc), ref, static_cast<double>(rows));
  EXPECT(e == 0, "sum_rows (%lld, %lld): beyond tolerance by %g", (long long)rows, (long long)d, e);
}

// Broadcast operands in a differentiated region (scratch, then reduce_into),
// and the seed of a reduction along an axis (the general backward path).
template <class T>
static void check_broadcast_backward(std::mt19937& rng) {
  Tensor<T> x = randn<T>(Shape{6, 300}, rng), b = randn<T>(Shape{6, 1}, rng), c = randn<T>(Shape{300}, rng);
  auto dx = to_device(x), db = to_device(b), dc = to_device(c);
  auto f = [](auto a, auto bb, auto cc) { return sum(tanh(a * bb + cc) * bb); };
  auto [v, gx, gb, gc] = value_and_grad(f, x, b, c);
  auto [dv, dgx, dgb, dgc] = value_and_grad(f, dx, db, dc);
  double e = excess(to_host(dv), v, 1800) + excess(to_host(dgx), gx) + excess(to_host(dgb), gb, 300) + excess(to_host(dgc), gc, 6);
  EXPECT(e == 0, "broadcast operands' gradients: beyond tolerance by %g", e);
  auto [dv2, dgx2, dgb2, dgc2] = value_and_grad(f, dx, db, dc);
  EXPECT(same_bits(to_host(dgb2), to_host(dgb)) && same_bits(to_host(dgc2), to_host(dgc)),
         "broadcast operands' gradients: not the same bits twice");
  // Broadcast along two axes (scratch reduced over several axes at once), and
  // the tie count of a whole max (every axis reduced).
  Tensor<T> a3 = randn<T>(Shape{3, 5, 700}, rng), u = randn<T>(Shape{700}, rng), v3 = randn<T>(Shape{3, 1, 1}, rng);
  auto da3 = to_device(a3), du = to_device(u), dv3 = to_device(v3);
  auto f2 = [](auto a, auto uu, auto vv) { return sum(tanh(a + uu) * vv) + max(sin(a)) * T(3); };
  auto [w2, ga2, gu2, gv2] = value_and_grad(f2, a3, u, v3);
  auto [dw2, dga2, dgu2, dgv2] = value_and_grad(f2, da3, du, dv3);
  e = excess(to_host(dw2), w2, 10500) + excess(to_host(dga2), ga2) + excess(to_host(dgu2), gu2, 15) +
      excess(to_host(dgv2), gv2, 3500);
  EXPECT(e == 0, "gradients of operands broadcast along two axes: beyond tolerance by %g", e);
  Tensor<T> y = randn<T>(Shape{3, 5, 70}, rng);
  auto dy = to_device(y);
  for (int axis = 0; axis < 3; ++axis) {
    auto g = [axis](auto a) { return sum(exp(mean(sin(a), axis)) + max(a * a, axis)); };
    auto [cv, cg] = value_and_grad(g, y);
    auto [gv, gg] = value_and_grad(g, dy);
    e = excess(to_host(gv), cv, 1050) + excess(to_host(gg), cg, 70);
    EXPECT(e == 0, "gradient through mean and max along axis %d of (3, 5, 70): beyond tolerance by %g", axis, e);
  }
}

// A small loss built from all of them, with parameters: value, d/dx, and
// the parameters' gradients.
template <class T>
static void check_small_model(Gpu& gpu, std::mt19937& rng) {
  static constexpr index_t n = 2, t = 9, c = 40, vocab = 30;
  Twin<T> emb("tok", randn<T>(Shape{vocab, c}, rng), gpu), g("ln.g", randn<T>(Shape{c}, rng), gpu),
      b("ln.b", randn<T>(Shape{c}, rng), gpu);
  Tensor<std::int64_t> tok(Shape{n, t}), lab(Shape{n * t});
  std::uniform_int_distribution<int> vd(0, static_cast<int>(vocab) - 1), cd(0, static_cast<int>(c) - 1);
  for (index_t i = 0; i < n * t; ++i) {
    tok.data()[i] = vd(rng);
    lab.data()[i] = cd(rng);
  }
  auto dtok = to_device(tok);
  auto dlab = to_device(lab);
  Tensor<T> x = randn<T>(Shape{n * t, c}, rng);
  auto dx = to_device(x);
  auto loss = [](auto& e, auto& gm, auto& bt, const auto& tk, const auto& lb) {
    return [&e, &gm, &bt, &tk, &lb](auto a) {
      auto h = layer_norm(reshape(embedding(e, tk.view()), Shape{n * t, c}) + a, gm, bt, T(1e-5));
      return cross_entropy(h, lb, {.label_smoothing = 0.1}) + mean(max(softmax(h), 1)) * T(0.5) +
             sum(mean(log_softmax(h), 0)) * T(0.01);
    };
  };
  auto [cv, cg] = value_and_grad(loss(emb.h, g.h, b.h, tok, lab), x);
  auto [gv, gg] = value_and_grad(loss(emb.d, g.d, b.d, dtok, dlab), dx);
  double e = excess(to_host(gv), cv, n * t * c) + excess(to_host(gg), cg, c);
  EXPECT(e == 0, "small model: value and d/dx beyond tolerance by %g (gpu %g, cpu %g)", e, double(to_host(gv).item()),
         double(cv.item()));
  e = excess(to_host(emb.d.grad), emb.h.grad, n * t) + excess(to_host(g.d.grad), g.h.grad, n * t) +
      excess(to_host(b.d.grad), b.h.grad, n * t);
  EXPECT(e == 0, "small model: parameter gradients beyond tolerance by %g", e);
  const Tensor<T> ge = to_host(emb.d.grad), gx = to_host(gg), v1 = to_host(gv);
  emb.zero(gpu);
  g.zero(gpu);
  b.zero(gpu);
  auto [gv2, gg2] = value_and_grad(loss(emb.d, g.d, b.d, dtok, dlab), dx);
  EXPECT(same_bits(to_host(gv2), v1) && same_bits(to_host(gg2), gx) && same_bits(to_host(emb.d.grad), ge),
         "small model: not the same bits twice");
}

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  std::mt19937 rng(11);
  Gpu gpu;
  try {
    for (const Shape& s : {Shape{5, 300}, Shape{1000, 3}, Shape{3, 7, 1100}, Shape{2, 3, 5, 67}, Shape{4099}, Shape{3, 5000}})
      check_reductions<float>(gpu, s, rng);
    check_reductions<double>(gpu, Shape{3, 70, 9}, rng);
    for (const Shape& s : {Shape{4, 10}, Shape{3, 5, 300}, Shape{2, 1500}, Shape{2, 2, 3, 33}}) check_softmax<float>(gpu, s, rng);
    check_softmax<double>(gpu, Shape{7, 129}, rng);
    for (double eps : {0.0, 0.1}) {
      check_cross_entropy<float, std::int32_t>(gpu, 37, 10, eps, rng);
      check_cross_entropy<float, std::int64_t>(gpu, 8, 1000, eps, rng);
      check_cross_entropy<float, std::int64_t>(gpu, 600, 33, eps, rng);
    }
    check_cross_entropy<double, std::int32_t>(gpu, 9, 300, 0.1, rng);
    for (const Shape& s : {Shape{6, 300}, Shape{2, 3, 40}, Shape{700, 20}, Shape{3, 1031}}) check_layer_norm<float>(gpu, s, rng);
    check_embedding<float, std::int64_t>(gpu, 50, 33, Shape{4, 7}, rng);
    check_embedding<float, std::int32_t>(gpu, 11, 300, Shape{2, 3, 90}, rng);
    check_bad_indices(gpu);
    check_sum_rows<float>(gpu, 5, 300, rng);
    check_sum_rows<float>(gpu, 70000, 3, rng);
    check_broadcast_backward<float>(rng);
    check_small_model<float>(gpu, rng);
  } catch (const std::exception& err) {
    std::printf("FAILED: exception: %s\n", err.what());
    ++failures;
  }
  std::printf("%s (%ld checks, %d failures)\n", failures ? "FAILED" : "passed", checks.load(), failures.load());
  return failures ? 1 : 0;
}
