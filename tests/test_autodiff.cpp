// Reverse mode checked by finite differences (weft::gradcheck, double), the
// fused float path against the double path, gradient hooks, and that the
// checker itself catches a wrong adjoint.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>
#include <weft/expr/layer_norm.hpp>
#include <weft/expr/let.hpp>
#include <weft/expr/matmul.hpp>
#include <weft/nn/rng.hpp>
#include <weft/weft.hpp>

using namespace weft;

namespace {

template <class T = double>
Tensor<T> randn(const Shape& s, unsigned seed, double scale = 1.0, double shift = 0.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, scale);
  Tensor<T> t(s);
  for (index_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(nd(rng) + shift);
  return t;
}

// Away from kinks (relu, abs, max ties) finite differences are meaningful.
Tensor<double> away_from_zero(const Shape& s, unsigned seed) {
  Tensor<double> t = randn(s, seed);
  for (index_t i = 0; i < t.numel(); ++i) t.data()[i] += t.data()[i] >= 0 ? 0.2 : -0.2;
  return t;
}

#define CHECK_GRAD(...)                         \
  do {                                          \
    auto r_ = gradcheck(__VA_ARGS__);           \
    INFO(r_.message);                           \
    CHECK(r_.ok);                               \
  } while (0)

}  // namespace

TEST_CASE("every unary node's adjoint") {
  Tensor<double> x = away_from_zero({3, 4}, 1);
  Tensor<double> pos = randn({3, 4}, 2, 0.5, 2.0);
  CHECK_GRAD([](auto a) { return -a; }, x);
  CHECK_GRAD([](auto a) { return abs(a); }, x);
  CHECK_GRAD([](auto a) { return exp(a); }, x);
  CHECK_GRAD([](auto a) { return log(a); }, pos);
  CHECK_GRAD([](auto a) { return sqrt(a); }, pos);
  CHECK_GRAD([](auto a) { return square(a); }, x);
  CHECK_GRAD([](auto a) { return tanh(a); }, x);
  CHECK_GRAD([](auto a) { return sigmoid(a); }, x);
  CHECK_GRAD([](auto a) { return relu(a); }, x);
  CHECK_GRAD([](auto a) { return gelu(a); }, x);
  CHECK_GRAD([](auto a) { return sin(a); }, x);
  CHECK_GRAD([](auto a) { return cos(a); }, x);
}

TEST_CASE("every binary node's adjoint, with broadcasting and scalars") {
  Tensor<double> a = away_from_zero({2, 3, 4}, 3), b = away_from_zero({3, 1}, 4), c = away_from_zero({4}, 5);
  Tensor<double> pa = randn({2, 3, 4}, 6, 0.3, 1.5), pb = randn({3, 1}, 7, 0.3, 1.2);
  CHECK_GRAD([](auto x, auto y) { return x + y; }, a, b);
  CHECK_GRAD([](auto x, auto y) { return x - y; }, a, c);
  CHECK_GRAD([](auto x, auto y) { return x * y; }, a, b);
  CHECK_GRAD([](auto x, auto y) { return x / y; }, a, pb);
  CHECK_GRAD([](auto x, auto y) { return pow(x, y); }, pa, pb);
  CHECK_GRAD([](auto x) { return pow(x, 3.0); }, a);
  CHECK_GRAD([](auto x, auto y) { return maximum(x, y); }, a, c);
  CHECK_GRAD([](auto x, auto y) { return minimum(x, y); }, a, c);
  CHECK_GRAD([](auto x) { return 3.0 * x - x / 2.0 + 1.0; }, a);
  // an input used several times in one region, broadcast and not
  CHECK_GRAD([](auto x, auto y) { return x * y + sin(x) * y * y; }, a, c);
}

TEST_CASE("reductions over everything and each axis") {
  Tensor<double> x = randn({3, 4, 5}, 8);
  CHECK_GRAD([](auto a) { return sum(a); }, x);
  CHECK_GRAD([](auto a) { return mean(square(a)); }, x);
  CHECK_GRAD([](auto a) { return max(a); }, x);
  for (int axis = -3; axis < 3; ++axis) {
    INFO("axis " << axis);
    CHECK_GRAD([axis](auto a) { return sum(a, axis); }, x);
    CHECK_GRAD([axis](auto a) { return mean(tanh(a), axis, true); }, x);
    CHECK_GRAD([axis](auto a) { return max(a, axis); }, x);
    CHECK_GRAD([axis](auto a) { return a / sum(exp(a), axis, true); }, x);
  }
}

TEST_CASE("matmul with all four transpose combinations") {
  Tensor<double> a = randn({4, 3}, 9), at = randn({3, 4}, 10), b = randn({3, 5}, 11), bt = randn({5, 3}, 12);
  CHECK_GRAD([](auto x, auto y) { return matmul(x, y); }, a, b);
  CHECK_GRAD([](auto x, auto y) { return matmul(transpose(x), y); }, at, b);
  CHECK_GRAD([](auto x, auto y) { return matmul(x, transpose(y)); }, a, bt);
  CHECK_GRAD([](auto x, auto y) { return matmul(transpose(x), transpose(y)); }, at, bt);
  // operands that are regions, and a region of the product
  CHECK_GRAD([](auto x, auto y) { return tanh(matmul(sin(x), y * 2.0)); }, a, b);
  // the same input on both sides
  Tensor<double> sq = randn({4, 4}, 13);
  CHECK_GRAD([](auto x) { return matmul(x, x); }, sq);
  // transpose of a computed expression
  CHECK_GRAD([](auto x) { return transpose(exp(x)) * 2.0; }, a);
}

TEST_CASE("matmul operands: a region's backward reads its stored value, the input's gradient comes from the gemm, float vs naive") {
  // d/dx sum(f(x) @ W) = f'(x) * rowsum(W), per element; the regions' df use
  // y (exp, sigmoid, tanh, sqrt) or x (sin), so a wrong stored value shows.
  const Tensor<float> x = randn<float>({2, 6, 5}, 21, 0.5, 2.0), w = randn<float>({5, 4}, 22);
  std::vector<double> rs(5, 0.0);
  for (int k = 0; k < 5; ++k)
    for (int j = 0; j < 4; ++j) rs[static_cast<std::size_t>(k)] += w.data()[k * 4 + j];
  auto check = [&](auto f, auto df, const char* what) {
    INFO(what);
    auto [v, g] = value_and_grad([&](auto a) { return sum(matmul(f(a), w)); }, x);
    double worst = 0;
    for (index_t i = 0; i < x.numel(); ++i) {
      const double want = df(static_cast<double>(x.data()[i])) * rs[static_cast<std::size_t>(i % 5)];
      const double err = std::fabs(g.data()[i] - want) / (1.0 + std::fabs(want));
      worst = std::isnan(err) ? INFINITY : std::max(worst, err);
    }
    CHECK(worst < 1e-5);
  };
  check([](auto a) { return exp(a); }, [](double t) { return std::exp(t); }, "exp");
  check([](auto a) { return sigmoid(a); }, [](double t) { const double s = 1 / (1 + std::exp(-t)); return s * (1 - s); }, "sigmoid");
  check([](auto a) { return tanh(a * 0.5f); }, [](double t) { const double y = std::tanh(0.5 * t); return 0.5 * (1 - y * y); }, "tanh");
  check([](auto a) { return sqrt(a); }, [](double t) { return 0.5 / std::sqrt(t); }, "sqrt");
  check([](auto a) { return sin(a); }, [](double t) { return std::cos(t); }, "sin");
  // the input itself (its gradient written by the gemm), and read twice (through a region)
  check([](auto a) { return a; }, [](double) { return 1.0; }, "x");
  auto [v2, g2] = value_and_grad([&](auto a) { return sum(matmul(a, w)) + sum(a * a); }, x);
  double worst = 0;
  for (index_t i = 0; i < x.numel(); ++i) {
    const double err = std::fabs(g2.data()[i] - (rs[static_cast<std::size_t>(i % 5)] + 2.0 * x.data()[i]));
    worst = std::isnan(err) ? INFINITY : std::max(worst, err);
  }
  CHECK(worst < 1e-4);
}

TEST_CASE("gelu's gradient (Phi read off the value as y / x) against erf in double, across signs, near 0 and at 0") {
  std::vector<float> xs;
  for (int i = -800; i <= 800; ++i) xs.push_back(static_cast<float>(i) / 100.0f);
  for (float t : {0.0f, -0.0f, 1e-38f, -1e-38f, 1e-31f, -1e-29f, 1e-20f, -1e-6f, 3e-4f, -12.0f, 12.0f}) xs.push_back(t);
  Tensor<float> x(Shape{static_cast<index_t>(xs.size())});
  std::copy(xs.begin(), xs.end(), x.data());
  auto check = [&](const Tensor<float>& g, const char* path) {
    INFO(path);
    double worst = 0;
    float at = 0;
    for (index_t i = 0; i < x.numel(); ++i) {
      const double t = x.data()[i];
      const double want = 0.5 * (1.0 + std::erf(t / std::sqrt(2.0))) + t * std::exp(-0.5 * t * t) / std::sqrt(2.0 * M_PI);
      const double err = std::fabs(g.data()[i] - want) / (2e-7 + 1e-6 * std::fabs(want));  // (float's 1 + erf cancels for x << 0)
      if (!(err <= worst)) worst = std::isnan(err) ? INFINITY : err, at = x.data()[i];  // (NaN counts as worst)
    }
    INFO("worst at x = " << at);
    CHECK(worst <= 1.0);
  };
  auto [v, g] = value_and_grad([](auto a) { return sum(gelu(a)); }, x);  // a region: y recomputed in the pass
  check(g, "region");
  Tensor<float> w(Shape{1, 4}), x2(Shape{x.numel(), 1});
  std::fill(w.data(), w.data() + 4, 1.0f);
  std::copy(x.data(), x.data() + x.numel(), x2.data());
  auto [v2, g2] = value_and_grad([&](auto a) { return sum(matmul(gelu(a), w)); }, x2);  // a matmul operand: y stored
  Tensor<float> g2s(Shape{x.numel()});
  for (index_t i = 0; i < x.numel(); ++i) g2s.data()[i] = g2.data()[i] / 4.0f;  // (exact)
  check(g2s, "matmul operand");
  // double: what gradcheck differentiates
  Tensor<double> xd = randn({64}, 32, 2.0);
  CHECK_GRAD([](auto a) { return gelu(a); }, xd);
}

TEST_CASE("cross_entropy's gradient is (softmax - onehot) / N at every row and column, against a double reference") {
  // Shapes whose element index crosses many rows: the backward finds an
  // element's row without an integer division (expr/cross_entropy.hpp).
  for (auto rc : {std::pair<index_t, index_t>{1, 1}, {7, 3}, {64, 256}, {33, 10}, {5, 1000}}) {
    const index_t R = rc.first, C = rc.second;
    CAPTURE(R);
    CAPTURE(C);
    Tensor<float> x({R, C});
    nn::Rng rng(static_cast<std::uint64_t>(R * 131 + C));
    for (index_t i = 0; i < x.numel(); ++i) x.data()[i] = 3.0f * rng.normal();
    Tensor<std::int32_t> y({R});
    for (index_t r = 0; r < R; ++r) y.data()[r] = static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(C)));
    auto [v, g] = value_and_grad([&](auto a) { return cross_entropy(a, y); }, x);
    double worst = 0;
    for (index_t r = 0; r < R; ++r) {
      double m = -1e300, z = 0;
      for (index_t c = 0; c < C; ++c) m = std::max(m, static_cast<double>(x(r, c)));
      for (index_t c = 0; c < C; ++c) z += std::exp(static_cast<double>(x(r, c)) - m);
      for (index_t c = 0; c < C; ++c) {
        const double want = (std::exp(static_cast<double>(x(r, c)) - m) / z - (c == y.data()[r] ? 1.0 : 0.0)) / R;
        worst = std::max(worst, std::abs(static_cast<double>(g(r, c)) - want));
      }
    }
    CHECK(worst < 1e-6 / static_cast<double>(R) + 1e-8);
  }
}

TEST_CASE("cross_entropy with label smoothing: value and gradient against a double reference, and gradcheck") {
  // PyTorch's CrossEntropyLoss(label_smoothing=eps): target (1 - eps) onehot + eps / C.
  for (double eps : {0.0, 0.1, 0.5, 1.0}) {
    CAPTURE(eps);
    const index_t R = 9, C = 7;
    Tensor<float> x({R, C});
    nn::Rng rng(static_cast<std::uint64_t>(1000 * eps) + 5);
    for (index_t i = 0; i < x.numel(); ++i) x.data()[i] = 3.0f * rng.normal() + 40.0f;  // an offset: the row max matters
    Tensor<std::int32_t> y({R});
    for (index_t r = 0; r < R; ++r) y.data()[r] = static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(C)));
    auto [v, g] = value_and_grad([&](auto a) { return cross_entropy(a, y, {.label_smoothing = eps}); }, x);
    double loss = 0, worst = 0;
    for (index_t r = 0; r < R; ++r) {
      double m = -1e300, z = 0;
      for (index_t c = 0; c < C; ++c) m = std::max(m, static_cast<double>(x(r, c)));
      for (index_t c = 0; c < C; ++c) z += std::exp(static_cast<double>(x(r, c)) - m);
      for (index_t c = 0; c < C; ++c) {
        const double logp = static_cast<double>(x(r, c)) - m - std::log(z);
        const double target = (1 - eps) * (c == y.data()[r] ? 1.0 : 0.0) + eps / C;
        loss -= target * logp / R;
        const double want = (std::exp(logp) - target) / R;
        worst = std::max(worst, std::abs(static_cast<double>(g(r, c)) - want));
      }
    }
    CHECK(std::abs(static_cast<double>(v.item()) - loss) < 2e-5 * (1 + loss));
    CHECK(worst < 1e-6);
  }
  Tensor<double> xd = randn({4, 6}, 31);
  Tensor<std::int64_t> yd({4}, {5, 0, 3, 3});
  CHECK_GRAD([&](auto a) { return cross_entropy(a * 2.0, yd, {.label_smoothing = 0.2}); }, xd);
  // equal to (1 - eps) cross_entropy - eps mean(log_softmax), composed from other nodes
  auto smooth = eval(cross_entropy(xd, yd, {.label_smoothing = 0.2})).item();
  auto composed = eval(0.8 * cross_entropy(xd, yd) - 0.2 * mean(log_softmax(xd))).item();
  CHECK(std::abs(smooth - composed) < 1e-12);
  CHECK_THROWS_WITH_AS(cross_entropy(xd, yd, {.label_smoothing = 1.5}), doctest::Contains("label_smoothing must lie in [0, 1]"),
                       weft::ValueError);
}

TEST_CASE("softmax, log_softmax, cross_entropy and a small MLP") {
  Tensor<double> x = randn({3, 5}, 14);
  Tensor<std::int64_t> y({3}, {4, 0, 2});
  CHECK_GRAD([](auto a) { return softmax(a); }, x);
  CHECK_GRAD([](auto a) { return log_softmax(a * 2.0); }, x);
  CHECK_GRAD([&](auto a) { return cross_entropy(a, y); }, x);
  Tensor<double> in = randn({6, 4}, 15), w1 = randn({4, 5}, 16), b1 = randn({5}, 17), w2 = randn({5, 3}, 18),
                 b2 = randn({3}, 19);
  Tensor<std::int32_t> lab({6}, {0, 1, 2, 2, 1, 0});
  auto mlp = [&](auto W1, auto B1, auto W2, auto B2) {
    return cross_entropy(matmul(relu(matmul(in, W1) + B1), W2) + B2, lab);
  };
  CHECK_GRAD(mlp, w1, b1, w2, b2);
  GradcheckOptions fast;
  fast.fast = true;
  fast.seed = 7;
  CHECK_GRAD(mlp, fast, w1, b1, w2, b2);
}

TEST_CASE("float gradients agree with the double path (fused kernels)") {
  const index_t n = 1000;
  Tensor<float> xf = randn<float>({n}, 20), yf = randn<float>({n}, 21);
  Tensor<double> xd = randn<double>({n}, 20), yd = randn<double>({n}, 21);
  auto f = [](auto x, auto y) { return sum(tanh(x * y + sin(x)) * exp(-y * y)); };
  auto [vf, gxf, gyf] = value_and_grad(f, xf, yf);
  auto [vd, gxd, gyd] = value_and_grad(f, xd, yd);
  CHECK(std::abs(vf.item() - vd.item()) < 1e-4 * (1 + std::abs(vd.item())));
  for (index_t i = 0; i < n; ++i) {
    CHECK(std::abs(gxf.data()[i] - gxd.data()[i]) < 1e-5);
    CHECK(std::abs(gyf.data()[i] - gyd.data()[i]) < 1e-5);
  }
  // mean at the root takes the same fused path
  auto [vm, gm] = value_and_grad([](auto x) { return mean(x * x); }, xd);
  for (index_t i = 0; i < n; ++i) CHECK(std::abs(gm.data()[i] - 2 * xd.data()[i] / n) < 1e-15);
}

TEST_CASE("gradient hooks fire once per input, when final, in an order fixed by the type") {
  Tensor<double> x = randn({4, 3}, 22), w = randn({3, 2}, 23), u = randn({5}, 24), unused = randn({2}, 25);
  auto f = [](auto X, auto W, auto U, auto) { return sum(matmul(X, W)) + sum(U * U); };
  auto [v, gx, gw, gu, gunused] = value_and_grad(f, x, w, u, unused);
  for (int run = 0; run < 2; ++run) {
    std::vector<std::size_t> order;
    std::vector<std::vector<double>> at_hook(4);
    Workspace<> ws;
    std::array<Tensor<double>, 4> g{Tensor<double>(x.shape()), Tensor<double>(w.shape()), Tensor<double>(u.shape()),
                                    Tensor<double>(unused.shape())};
    std::array<TensorView<double>, 4> gv{g[0].view(), g[1].view(), g[2].view(), g[3].view()};
    auto hook = [&](std::size_t k, TensorView<double> grad) {
      order.push_back(k);
      at_hook[k].assign(grad.data, grad.data + grad.numel());
    };
    value_and_grad_into(f, ws, gv.data(), hook, x, w, u, unused);
    // unused input first (final at once), then backward walks the type: the
    // matmul's operands right one first (W, then X), then the sum(U * U) branch
    CHECK(order == std::vector<std::size_t>{3, 1, 0, 2});
    // the gradient handed to the hook was already the final one
    CHECK(at_hook[0] == gx.to_vector());
    CHECK(at_hook[1] == gw.to_vector());
    CHECK(at_hook[2] == gu.to_vector());
    CHECK(at_hook[3] == std::vector<double>{0, 0});
  }
}

namespace {
// An executor of the user's own: the host device, counting what it is asked
// for. Anything that models weft::Executor is passed down the same way.
struct CountingExec {
  using device_type = cpu;
  using queue_type = HostQueue;
  Workspace<cpu>* ws;
  mutable int workspace_uses = 0;
  Workspace<cpu>& workspace() const {
    ++workspace_uses;
    return *ws;
  }
  HostQueue queue() const { return {}; }
};
static_assert(Executor<CountingExec>);
}  // namespace

TEST_CASE("value_and_grad_into and assign run on any executor, with the workspace's results") {
  Tensor<double> x = randn({6, 4}, 28), w = randn({4, 3}, 29);
  Tensor<std::int32_t> lab({6}, {0, 1, 2, 2, 1, 0});
  auto f = [&](auto X, auto W) { return cross_entropy(softmax(matmul(X, W)) + max(X, 1, true), lab); };
  Tensor<double> g1x(x.shape()), g1w(w.shape()), g2x(x.shape()), g2w(w.shape());
  TensorView<double> gv1[2] = {g1x.view(), g1w.view()}, gv2[2] = {g2x.view(), g2w.view()};
  NoHook hook;
  Workspace<> ws1, ws2;
  double v1 = value_and_grad_into(f, ws1, gv1, hook, x, w).item();
  CountingExec ex{&ws2};
  double v2 = value_and_grad_into(f, ex, gv2, hook, x, w).item();
  CHECK(ex.workspace_uses > 0);
  CHECK(v1 == v2);
  CHECK(g1x.to_vector() == g2x.to_vector());
  CHECK(g1w.to_vector() == g2w.to_vector());
  Tensor<double> y1(Shape{6, 3}), y2(Shape{6, 3});
  assign(y1.view(), log_softmax(matmul(x, w)) * 2.0, ws1);
  assign(y2.view(), log_softmax(matmul(x, w)) * 2.0, ex);
  CHECK(y1.to_vector() == y2.to_vector());
}

TEST_CASE("steady-state value_and_grad allocates nothing in its workspace") {
  Tensor<float> in = randn<float>({8, 4}, 26), w = randn<float>({4, 3}, 27);
  Tensor<std::int32_t> lab({8}, {0, 1, 2, 0, 1, 2, 0, 1});
  Tensor<float> gw(w.shape());
  TensorView<float> gv[1] = {gw.view()};
  Workspace<> ws;
  NoHook hook;
  auto f = [&](auto W) { return cross_entropy(tanh(matmul(in, W)), lab); };
  value_and_grad_into(f, ws, gv, hook, w);
  value_and_grad_into(f, ws, gv, hook, w);
  std::size_t n = ws.allocations();
  for (int i = 0; i < 5; ++i) value_and_grad_into(f, ws, gv, hook, w);
  CHECK(ws.allocations() == n);
}

TEST_CASE("eval through a workspace starts it afresh: an evaluation loop, alone or between backward passes, stops growing it") {
  // Every eval(e, ws) used to bump-allocate past the last one's space (only
  // backward reset the arena), so a test-set loop grew the workspace by its
  // intermediates on every batch.
  Tensor<float> in = randn<float>({64, 32}, 28), w = randn<float>({32, 16}, 29), w2 = randn<float>({16, 8}, 30);
  Tensor<std::int32_t> lab({64});
  for (index_t i = 0; i < 64; ++i) lab.data()[i] = static_cast<std::int32_t>(i % 8);
  auto model = [&] { return matmul(tanh(matmul(in, w)), w2); };  // two materialised products
  const Tensor<float> ref = eval(model());  // its own workspace
  Workspace<> ws;
  for (int warm = 0; warm < 2; ++warm) (void)eval(model(), ws);
  std::size_t n = ws.allocations(), cap = ws.capacity();
  for (int i = 0; i < 10; ++i) {
    Tensor<float> out = eval(model(), ws);
    for (index_t k = 0; k < out.numel(); ++k) REQUIRE(out.data()[k] == ref.data()[k]);
  }
  CHECK(ws.allocations() == n);
  CHECK(ws.capacity() == cap);
  // training steps and evaluations taking turns on one workspace
  Parameter<float> p("w", w.shape());
  std::memcpy(p.value.data(), w.data(), sizeof(float) * static_cast<std::size_t>(w.numel()));
  for (int warm = 0; warm < 2; ++warm) {
    p.grad.fill(0.0f);
    (void)backward(cross_entropy(matmul(tanh(matmul(in, p)), w2), lab), ws).item();
    (void)eval(model(), ws);
  }
  n = ws.allocations();
  cap = ws.capacity();
  for (int i = 0; i < 10; ++i) {
    p.grad.fill(0.0f);
    (void)backward(cross_entropy(matmul(tanh(matmul(in, p)), w2), lab), ws).item();
    Tensor<float> out = eval(model(), ws);
    REQUIRE(out.data()[0] == ref.data()[0]);
  }
  CHECK(ws.allocations() == n);
  CHECK(ws.capacity() == cap);
}

namespace {
// A deliberately wrong adjoint (cos + 0.1): the checker must catch it.
struct WrongSin {
  [[maybe_unused]] static constexpr const char* name = "wrong_sin";
  template <class T> static T f(T x) { return std::sin(x); }
  template <class T> static T df(T x, T) { return std::cos(x) + T(0.1); }
};
}  // namespace

TEST_CASE("gradcheck catches a wrong adjoint, in full and fast mode") {
  Tensor<double> x = randn({5}, 28);
  auto bad = [](auto a) { return make_unary<WrongSin>(a); };
  auto full = gradcheck(bad, x);
  CHECK_FALSE(full.ok);
  CHECK(full.message.find("input 0 element") != std::string::npos);
  GradcheckOptions o;
  o.fast = true;
  CHECK_FALSE(gradcheck(bad, o, x).ok);
  CHECK(gradcheck([](auto a) { return sin(a); }, o, x).ok);
}

TEST_CASE("gradient buffers that value_and_grad and backward refuse, with a sentence") {
  Tensor<float> m({3, 4});
  m.fill(1.0f);
  NoHook hook;
  Workspace<> ws;
  // a gradient buffer whose elements share memory (stride 0)
  Tensor<float> one({1}, 0.0f);
  TensorView<float> bcast(one.data(), Shape{3, 4}, Strides{{0, 0}});
  std::string msg;
  try {
    value_and_grad_into([](auto a) { return sum(a * a); }, ws, &bcast, hook, m);
  } catch (const ValueError& e) {
    msg = e.what();
  }
  CHECK(msg.find("gradient buffer 0 (shape (3, 4)) has elements that share memory") != std::string::npos);
  // a strided gradient buffer overlapping an input read in place
  Tensor<float> wide({3, 8}, 1.0f), a({3, 4}, 1.0f), ga({3, 4});
  const TensorView<float> b_in = wide.view().reshape({24}).slice(0, 12).reshape({3, 4});  // wide's first 12 floats
  TensorView<float> g2[2] = {ga.view(), TensorView<float>(wide.data() + 4, Shape{3, 4}, Strides{{8, 1}})};
  msg.clear();
  try {
    value_and_grad_into([](auto u, auto v) { return sum(u * v); }, ws, g2, hook, a, b_in);
  } catch (const ValueError& e) {
    msg = e.what();
  }
  CHECK(msg.find("the strided gradient buffer 1 (shape (3, 4)) overlaps input 1") != std::string::npos);
  // backward: a parameter's gradient sink must be contiguous
  Parameter<float> p("p", {3, 4});
  Tensor<float> big({4, 3});
  auto strided_sink = [&](Parameter<float>&) { return big.transposed(); };
  msg.clear();
  try {
    backward(sum(param(p) * param(p)), ws, NoHook{}, strided_sink);
  } catch (const ValueError& e) {
    msg = e.what();
  }
  CHECK(msg.find("gradient buffer for parameter 'p' (shape (3, 4)) is a strided view") != std::string::npos);
}

namespace {
// Copies of a strided view, and a (rows, cols) column block of a wider matrix
// with sentinels around it.
struct Block {
  Tensor<double> wide;
  TensorView<double> view;
  Block(index_t rows, index_t cols, index_t width, index_t col0, double fill) : wide({rows, width}, fill) {
    view = TensorView<double>(wide.data() + col0, Shape{rows, cols}, Strides{{width, 1}});
  }
};
Tensor<double> contiguous(const TensorView<double>& v) {
  Tensor<double> t;
  t = v;
  return t;
}
}  // namespace

TEST_CASE("strided inputs and gradient buffers: transposed views and column blocks, in every entry point") {
  auto f = [](auto a, auto b) { return sum(tanh(a) * b + a * a); };
  Tensor<double> base = randn({4, 3}, 40);                  // its transpose is a (3, 4) input
  Block blk(3, 4, 7, 2, 0.0);                                // a (3, 4) column block of a (3, 7) matrix
  Tensor<double> bsrc = randn({3, 4}, 41);
  assign(blk.view, bsrc);  // the values, written through the view
  const TensorView<double> xt = base.transposed();
  Tensor<double> xc = contiguous(xt), bc = contiguous(blk.view);
  auto [v_ref, gx_ref, gb_ref] = value_and_grad(f, xc, bc);
  // value_and_grad: strided inputs are read where they lie, gradients come back row-major
  auto [v, gx, gb] = value_and_grad(f, xt, blk.view);
  CHECK(v.item() == doctest::Approx(v_ref.item()).epsilon(1e-14));
  CHECK(gx.shape() == Shape{3, 4});
  for (index_t i = 0; i < 12; ++i) {
    CHECK(gx.data()[i] == doctest::Approx(gx_ref.data()[i]).epsilon(1e-14));
    CHECK(gb.data()[i] == doctest::Approx(gb_ref.data()[i]).epsilon(1e-14));
  }
  // vjp, likewise
  Tensor<double> seed({3, 4}, 1.0);
  auto g = vjp([](auto a, auto b) { return tanh(a) * b + a * a; }, seed, xt, blk.view);
  for (index_t i = 0; i < 12; ++i) {
    CHECK(g[0].data()[i] == doctest::Approx(gx_ref.data()[i]).epsilon(1e-14));
    CHECK(g[1].data()[i] == doctest::Approx(gb_ref.data()[i]).epsilon(1e-14));
  }
  // value_and_grad_into writing a transposed buffer and a column block of a
  // wider matrix: exactly the view's elements change, in the view's layout,
  // before the hook sees them
  Tensor<double> gxt_store({4, 3}, -7.0);
  Block gblk(3, 4, 9, 3, -7.0);
  TensorView<double> gv[2] = {gxt_store.transposed(), gblk.view};
  std::vector<std::vector<double>> at_hook(2);
  auto hook = [&](std::size_t k, TensorView<double> grad) { at_hook[k] = contiguous(grad).to_vector(); };
  Workspace<> ws;
  for (int run = 0; run < 2; ++run) {  // (the second run reuses the workspace)
    value_and_grad_into(f, ws, gv, hook, xt, blk.view);
    CHECK(contiguous(gv[0]).to_vector() == gx.to_vector());
    CHECK(contiguous(gv[1]).to_vector() == gb.to_vector());
    CHECK(at_hook[0] == gx.to_vector());
    CHECK(at_hook[1] == gb.to_vector());
    for (index_t r = 0; r < 3; ++r)
      for (index_t c = 0; c < 9; ++c)
        if (c < 3 || c >= 7) CHECK(gblk.wide(r, c) == -7.0);
  }
  // gradcheck over strided inputs (it differentiates copies; checked here for the record)
  CHECK_GRAD([](auto a, auto b) { return tanh(a) * b; }, xt, blk.view);
}

namespace {
// square, counting its forward evaluations (to see let evaluate a value once)
struct CountedSquare {
  [[maybe_unused]] static constexpr const char* name = "counted_square";
  static inline long calls = 0;
  template <class T> static T f(T x) {
    ++calls;
    return x * x;
  }
  template <class T> static T df(T x, T) { return T(2) * x; }
};
}  // namespace

TEST_CASE("let shares a sub-expression: evaluated once, the same value and gradient as copies") {
  Tensor<double> x = randn({5, 4}, 42), w = randn({4, 3}, 43);
  auto copied = [](auto a, auto b) {
    auto h = tanh(matmul(a, b));
    return sum(h * h + sin(h) * h);
  };
  auto shared = [](auto a, auto b) {
    return sum(let(tanh(matmul(a, b)), [](auto h) { return h * h + sin(h) * h; }));
  };
  auto [v1, ga1, gb1] = value_and_grad(copied, x, w);
  auto [v2, ga2, gb2] = value_and_grad(shared, x, w);
  CHECK(v2.item() == doctest::Approx(v1.item()).epsilon(1e-13));
  for (index_t i = 0; i < ga1.numel(); ++i) CHECK(ga2.data()[i] == doctest::Approx(ga1.data()[i]).epsilon(1e-12));
  for (index_t i = 0; i < gb1.numel(); ++i) CHECK(gb2.data()[i] == doctest::Approx(gb1.data()[i]).epsilon(1e-12));
  // through materialised nodes in the body, and as a non-scalar output
  CHECK_GRAD([](auto a) { return let(sin(a), [](auto s) { return s * softmax(s) + sum(s, 1, true); }); }, x);
  CHECK_GRAD([](auto a, auto b) { return let(matmul(a, b), [&](auto m) { return m * m; }) + 1.0; }, x, w);
  // evaluated once: three uses, one evaluation per element
  CountedSquare::calls = 0;
  (void)eval(let(make_unary<CountedSquare>(x), [](auto s) { return s * s + s; }));
  CHECK(CountedSquare::calls == x.numel());
  CountedSquare::calls = 0;
  auto sq = make_unary<CountedSquare>(x);
  (void)eval(sq * sq + sq);
  CHECK(CountedSquare::calls == 3 * x.numel());
}

TEST_CASE("a constant tensor made inside the function given to value_and_grad stays valid for the pass") {
  Tensor<float> x = randn<float>({4}, 44);
  Tensor<float> c_out({4}, {1, 2, 3, 4});
  auto [v_ref, g_ref] = value_and_grad([&](auto a) { return sum(a * c_out + c_out); }, x);
  // c dies at the lambda's }, before the expression it is in is evaluated
  auto inside = [](auto a) {
    Tensor<float> c({4}, {1, 2, 3, 4});
    return sum(a * c + c);
  };
  auto [v, g] = value_and_grad(inside, x);
  CHECK(v.item() == v_ref.item());
  CHECK(g.to_vector() == g_ref.to_vector());
  Tensor<float> seed({}, 1.0f);
  CHECK(vjp(inside, seed, x)[0].to_vector() == g_ref.to_vector());
  Tensor<float> gi({4});
  TensorView<float> gv[1] = {gi.view()};
  Workspace<> ws;
  NoHook hook;
  CHECK(value_and_grad_into(inside, ws, gv, hook, x).item() == v_ref.item());
  CHECK(gi.to_vector() == g_ref.to_vector());
  CHECK_GRAD([](auto a) {
    Tensor<double> c({4}, {1, 2, 3, 4});
    return a * c;
  }, randn({4}, 45));
  // more than the guard can keep: refused with a sentence, not read after free
  auto many = [](auto a) {
    for (int i = 0; i < 70; ++i) Tensor<float> t({4}, 1.0f);
    return sum(a);
  };
  std::string msg;
  try {
    value_and_grad(many, x);
  } catch (const ValueError& e) {
    msg = e.what();
  }
  CHECK(msg.find("value_and_grad: more than 64 tensors were created and destroyed inside the function") != std::string::npos);
}

TEST_CASE("float32 backward sums stay accurate to 2^24 elements: fused value, bias-style gradients") {
  // Each reference in double; bound 1e-6 as for forward sums (test_expr.cpp).
  const index_t n = index_t(1) << 24, cols = 16, rows = n / cols;
  Tensor<float> x({rows, cols}), b({cols}, 1.0f), r({rows, 1}, 1.0f);
  for (index_t i = 0; i < n; ++i) x.data()[i] = static_cast<float>((i * 2654435761u) % 1000003u) / 1000003.0f;
  std::vector<double> col(cols, 0.0);
  double total = 0, sq = 0;
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) {
      double v = x(i, j);
      col[static_cast<std::size_t>(j)] += v;
      total += v;
      sq += v * v;
    }
  auto rel = [](double a, double ref) { return std::abs(a - ref) / std::abs(ref); };
  // the fused value of sum at the root (contiguous path)
  auto [v, gx] = value_and_grad([](auto a) { return sum(a * a); }, x);
  CHECK(rel(v.item(), sq) < 1e-6);
  // an input broadcast along rows: its gradient sums 2^20 values per element
  auto [v2, gx2, gb] = value_and_grad([](auto a, auto c) { return sum(a * c); }, x, b);
  CHECK(rel(v2.item(), total) < 1e-6);
  for (index_t j = 0; j < cols; ++j) CHECK(rel(gb.data()[j], col[static_cast<std::size_t>(j)]) < 1e-6);
  // a parameter broadcast the same way (nn's bias), through backward()
  Parameter<float> bias("bias", {cols});
  Workspace<> ws;
  backward(sum(x * param(bias)), ws);
  for (index_t j = 0; j < cols; ++j) CHECK(rel(bias.grad.data()[j], col[static_cast<std::size_t>(j)]) < 1e-6);
  // broadcast along the last axis (keep-dims style): 16 values per element, in every row
  auto [v3, gx3, gr] = value_and_grad([](auto a, auto c) { return sum(a * c); }, x, r);
  CHECK(rel(v3.item(), total) < 1e-6);
  double worst = 0;
  for (index_t i = 0; i < rows; ++i) {
    double s = 0;
    for (index_t j = 0; j < cols; ++j) s += x(i, j);
    worst = std::max(worst, std::abs(gr(i, 0) - s));
  }
  CHECK(worst < 1e-5);
}

TEST_CASE("layer norm's dbeta sums 2^20 rows as a cascade") {
  const index_t rows = index_t(1) << 20, d = 16;
  Tensor<float> x = randn<float>({rows, d}, 46), c({rows, d});
  for (index_t i = 0; i < c.numel(); ++i) c.data()[i] = static_cast<float>((i * 2654435761u) % 1000003u) / 1000003.0f;
  Parameter<float> gamma("gamma", {d}), beta("beta", {d});
  gamma.value.fill(1.0f);
  Workspace<> ws;
  backward(sum(layer_norm(x, gamma, beta, 1e-5f) * c), ws);
  for (index_t j = 0; j < d; ++j) {
    double ref = 0;
    for (index_t r = 0; r < rows; ++r) ref += c(r, j);
    CHECK(std::abs(beta.grad.data()[j] - ref) / ref < 1e-6);
  }
}
