// Optimizers, learning-rate schedules, initialisers and the RNG (weft/nn/optim.hpp,
// schedule.hpp, init.hpp, rng.hpp).
//
// Optimizers are checked two ways: against plain double-precision loops written
// here from the torch.optim documentation pseudo-code, over several steps with
// changing gradients; and against parameter values produced by real PyTorch
// (constants below, with the script that printed them).
#include "alloc_counter.hpp"  // first: it replaces operator new for this executable

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <new>
#include <numbers>
#include <string>
#include <type_traits>
#include <vector>

#include <weft/nn/init.hpp>
#include <weft/nn/optim.hpp>
#include <weft/nn/registry.hpp>
#include <weft/nn/rng.hpp>
#include <weft/nn/schedule.hpp>

using namespace weft;

namespace {

// ---- Independent references (double, one element at a time, from the docs) ----

struct RefSGD {
  double lr, momentum, dampening, wd;
  bool nesterov;
  std::vector<double> buf;
  int t = 0;
  void step(std::vector<double>& p, const std::vector<double>& grad) {
    ++t;
    if (buf.empty()) buf.assign(p.size(), 0.0);
    for (std::size_t i = 0; i < p.size(); ++i) {
      double g = grad[i];
      if (wd != 0) g = g + wd * p[i];
      if (momentum != 0) {
        if (t > 1)
          buf[i] = momentum * buf[i] + (1 - dampening) * g;
        else
          buf[i] = g;
        if (nesterov)
          g = g + momentum * buf[i];
        else
          g = buf[i];
      }
      p[i] = p[i] - lr * g;
    }
  }
};

struct RefAdam {
  double lr, beta1, beta2, eps, wd;
  bool decoupled;
  std::vector<double> m, v;
  int t = 0;
  void step(std::vector<double>& p, const std::vector<double>& grad) {
    ++t;
    if (m.empty()) m.assign(p.size(), 0.0), v.assign(p.size(), 0.0);
    for (std::size_t i = 0; i < p.size(); ++i) {
      double g = grad[i];
      if (decoupled)
        p[i] = p[i] - lr * wd * p[i];
      else
        g = g + wd * p[i];
      m[i] = beta1 * m[i] + (1 - beta1) * g;
      v[i] = beta2 * v[i] + (1 - beta2) * g * g;
      const double mhat = m[i] / (1 - std::pow(beta1, t));
      const double vhat = v[i] / (1 - std::pow(beta2, t));
      // torch adds eps to sqrt(v) / sqrt(1 - beta2^t), i.e. to sqrt(vhat)
      p[i] = p[i] - lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
};

// Deterministic, changing gradients: a different pattern each step, signs mixed.
std::vector<double> gradient_at(int step, std::size_t n) {
  std::vector<double> g(n);
  for (std::size_t i = 0; i < n; ++i)
    g[i] = std::sin(0.7 * static_cast<double>(i) + 1.3 * step) * (0.5 + 0.1 * static_cast<double>(i % 5)) + 0.05 * step;
  return g;
}

std::vector<double> initial_values(std::size_t n) {
  std::vector<double> p(n);
  for (std::size_t i = 0; i < n; ++i) p[i] = std::cos(0.37 * static_cast<double>(i)) * 1.5;
  return p;
}

template <class T>
struct Model {
  Parameter<T> w{"w", Shape{5, 7}};  // 35 elements: vector body and a scalar tail
  Parameter<T> b{"b", Shape{3}};
  nn::Registry<T> reg;
  Model() {
    reg.add(w, "l1.weight").add(b, "l1.bias");
    const std::vector<double> pw = initial_values(35), pb = initial_values(3);
    for (std::size_t i = 0; i < 35; ++i) w.value.data()[i] = static_cast<T>(pw[i]);
    for (std::size_t i = 0; i < 3; ++i) b.value.data()[i] = static_cast<T>(-pb[i]);
  }
  void set_grads(int step) {
    const std::vector<double> gw = gradient_at(step, 35), gb = gradient_at(step + 11, 3);
    for (std::size_t i = 0; i < 35; ++i) w.grad.data()[i] = static_cast<T>(gw[i]);
    for (std::size_t i = 0; i < 3; ++i) b.grad.data()[i] = static_cast<T>(gb[i]);
  }
};

// Runs `steps` steps of optimizer Opt (built on a Model<T>) and of the reference
// Ref (one instance per parameter), then compares: |ours - ref| <= tol * (1 + |ref|).
template <class T, class Opt, class Options, class Ref>
void compare_with_reference(const Options& options, Ref ref_w, Ref ref_b, double tol, int steps = 6) {
  Model<T> m;
  Opt opt{m.reg, options};
  std::vector<double> pw = initial_values(35), pb = initial_values(3);
  for (double& x : pb) x = -x;
  for (std::size_t i = 0; i < 35; ++i) pw[i] = static_cast<double>(static_cast<T>(pw[i]));
  for (std::size_t i = 0; i < 3; ++i) pb[i] = static_cast<double>(static_cast<T>(pb[i]));
  for (int s = 0; s < steps; ++s) {
    m.set_grads(s);
    std::vector<double> gw(35), gb(3);
    for (std::size_t i = 0; i < 35; ++i) gw[i] = static_cast<double>(m.w.grad.data()[i]);
    for (std::size_t i = 0; i < 3; ++i) gb[i] = static_cast<double>(m.b.grad.data()[i]);
    opt.step();
    ref_w.step(pw, gw);
    ref_b.step(pb, gb);
  }
  CHECK(opt.steps() == steps);
  double worst = 0;
  for (std::size_t i = 0; i < 35; ++i)
    worst = std::max(worst, std::abs(static_cast<double>(m.w.value.data()[i]) - pw[i]) / (1 + std::abs(pw[i])));
  for (std::size_t i = 0; i < 3; ++i)
    worst = std::max(worst, std::abs(static_cast<double>(m.b.value.data()[i]) - pb[i]) / (1 + std::abs(pb[i])));
  INFO("worst relative error ", worst, " (tolerance ", tol, ")");
  CHECK(worst <= tol);
}

// float: a handful of float roundings per step, six steps: 1e-5 relative.
// double: the same loops in double: 1e-12.
template <class T>
constexpr double tolerance = std::is_same_v<T, float> ? 1e-5 : 1e-12;

}  // namespace

TEST_CASE_TEMPLATE("SGD variants match the double-precision reference", T, float, double) {
  struct Case {
    const char* name;
    nn::SGDOptions o;
  };
  const Case cases[] = {
      {"plain", {.lr = 0.1f}},
      {"momentum", {.lr = 0.1f, .momentum = 0.9f}},
      {"dampening", {.lr = 0.1f, .momentum = 0.9f, .dampening = 0.3f}},
      {"nesterov", {.lr = 0.05f, .momentum = 0.8f, .nesterov = true}},
      {"weight decay, no momentum", {.lr = 0.1f, .weight_decay = 0.05f}},
      {"weight decay, nesterov", {.lr = 0.1f, .momentum = 0.9f, .nesterov = true, .weight_decay = 0.01f}},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const nn::SGDOptions& o = c.o;
    const RefSGD ref{o.lr, o.momentum, o.dampening, o.weight_decay, o.nesterov, {}};
    compare_with_reference<T, nn::SGD<T>>(o, ref, ref, tolerance<T>);
  }
}

TEST_CASE_TEMPLATE("Adam and AdamW match the double-precision reference", T, float, double) {
  SUBCASE("Adam") {
    const nn::AdamOptions o{.lr = 1e-2f};
    const RefAdam ref{o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, false, {}, {}};
    compare_with_reference<T, nn::Adam<T>>(o, ref, ref, tolerance<T>, 8);
  }
  SUBCASE("Adam with L2 weight decay and other betas") {
    const nn::AdamOptions o{.lr = 3e-2f, .beta1 = 0.8f, .beta2 = 0.99f, .eps = 1e-6f, .weight_decay = 0.1f};
    const RefAdam ref{o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, false, {}, {}};
    compare_with_reference<T, nn::Adam<T>>(o, ref, ref, tolerance<T>, 8);
  }
  SUBCASE("AdamW") {
    const nn::AdamWOptions o{.lr = 1e-2f, .weight_decay = 0.1f};
    const RefAdam ref{o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, true, {}, {}};
    compare_with_reference<T, nn::AdamW<T>>(o, ref, ref, tolerance<T>, 8);
  }
  SUBCASE("AdamW default weight decay is 1e-2") { CHECK(nn::AdamWOptions{}.weight_decay == 1e-2f); }
}

// ---- Real PyTorch numbers ------------------------------------------------------
//
// Produced with Debian's /usr/bin/python3 and python3-torch 1.13.0a0:
//
//   import torch
//   torch.set_num_threads(1)
//   p0 = [0.5, -1.0, 0.25, 2.0, -0.75]
//   G = [[0.1, -0.2, 0.3, -0.4, 0.5],
//        [-0.3, 0.1, 0.2, 0.05, -0.6],
//        [0.25, 0.25, -0.5, 0.125, 0.0]]
//   cfgs = [
//       ("sgd_plain", torch.optim.SGD, dict(lr=0.1)),
//       ("sgd_momentum", torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
//       ("sgd_dampening", torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.5)),
//       ("sgd_nesterov", torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
//       ("sgd_weight_decay", torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
//       ("adam", torch.optim.Adam, dict(lr=0.01)),
//       ("adam_weight_decay", torch.optim.Adam, dict(lr=0.01, weight_decay=0.1)),
//       ("adamw", torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
//   ]
//   for name, cls, kw in cfgs:
//       p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float32))
//       opt = cls([p], **kw)
//       for g in G:
//           p.grad = torch.tensor(g, dtype=torch.float32)
//           opt.step()
//       print(name, ", ".join("%.9ef" % v for v in p.detach().tolist()))
namespace {

constexpr float torch_p0[5] = {0.5f, -1.0f, 0.25f, 2.0f, -0.75f};
constexpr float torch_grads[3][5] = {
    {0.1f, -0.2f, 0.3f, -0.4f, 0.5f}, {-0.3f, 0.1f, 0.2f, 0.05f, -0.6f}, {0.25f, 0.25f, -0.5f, 0.125f, 0.0f}};

template <class Opt, class Options>
std::vector<float> run_like_torch(const Options& o) {
  Parameter<float> p{"p", Shape{5}};
  for (int i = 0; i < 5; ++i) p.value.data()[i] = torch_p0[i];
  nn::Registry<float> reg;
  reg.add(p, "p");
  Opt opt{reg, o};
  for (const auto& g : torch_grads) {
    for (int i = 0; i < 5; ++i) p.grad.data()[i] = g[i];
    opt.step();
  }
  return p.value.to_vector();
}

// float32 results of a few roundings on values of order 1: within 2e-6 absolute
// (about 16 ulp at 2.0; observed differences are 0-2 ulp).
void check_close_to_torch(const std::vector<float>& ours, const std::vector<float>& torch) {
  REQUIRE(ours.size() == torch.size());
  for (std::size_t i = 0; i < ours.size(); ++i) {
    CAPTURE(i);
    CHECK(std::abs(ours[i] - torch[i]) <= 2e-6f);
  }
}

}  // namespace

TEST_CASE("optimizers reproduce PyTorch's parameter values after 3 steps") {
  SUBCASE("SGD") {
    check_close_to_torch(run_like_torch<nn::SGD<float>>(nn::SGDOptions{.lr = 0.1f}),
                         {4.950000346e-01f, -1.014999986e+00f, 2.500000000e-01f, 2.022499800e+00f, -7.400000095e-01f});
  }
  SUBCASE("SGD momentum") {
    check_close_to_torch(run_like_torch<nn::SGD<float>>(nn::SGDOptions{.lr = 0.1f, .momentum = 0.9f}),
                         {5.049000382e-01f, -9.897999763e-01f, 1.806999892e-01f, 2.086399794e+00f, -7.715000510e-01f});
  }
  SUBCASE("SGD dampening") {
    check_close_to_torch(
        run_like_torch<nn::SGD<float>>(nn::SGDOptions{.lr = 0.1f, .momentum = 0.9f, .dampening = 0.5f}),
        {4.889000356e-01f, -9.678000212e-01f, 1.746999919e-01f, 2.097399950e+00f, -8.284999728e-01f});
  }
  SUBCASE("SGD Nesterov") {
    check_close_to_torch(
        run_like_torch<nn::SGD<float>>(nn::SGDOptions{.lr = 0.1f, .momentum = 0.9f, .nesterov = true}),
        {4.994100034e-01f, -1.005820036e+00f, 1.876300126e-01f, 2.100260019e+00f, -7.593500018e-01f});
  }
  SUBCASE("SGD weight decay") {
    check_close_to_torch(
        run_like_torch<nn::SGD<float>>(nn::SGDOptions{.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f}),
        {5.021053553e-01f, -9.842607379e-01f, 1.794326752e-01f, 2.075042725e+00f, -7.671661377e-01f});
  }
  SUBCASE("Adam") {
    check_close_to_torch(run_like_torch<nn::Adam<float>>(nn::AdamOptions{.lr = 0.01f}),
                         {4.939749241e-01f, -9.907281399e-01f, 2.310946584e-01f, 2.018058538e+00f, -7.574656010e-01f});
  }
  SUBCASE("Adam weight decay") {
    check_close_to_torch(run_like_torch<nn::Adam<float>>(nn::AdamOptions{.lr = 0.01f, .weight_decay = 0.1f}),
                         {4.899760485e-01f, -9.816043973e-01f, 2.303845435e-01f, 2.002907991e+00f, -7.545557618e-01f});
  }
  SUBCASE("AdamW") {
    check_close_to_torch(run_like_torch<nn::AdamW<float>>(nn::AdamWOptions{.lr = 0.01f, .weight_decay = 0.1f}),
                         {4.924914837e-01f, -9.877538681e-01f, 2.303751111e-01f, 2.012038946e+00f, -7.551993132e-01f});
  }
}

// ---- Optimizer API ---------------------------------------------------------------

TEST_CASE("optimizer state by parameter name, lr, steps, zero_grad") {
  Model<float> m;
  nn::Adam opt{m.reg, {.lr = 1e-3f}};  // class template argument deduction from the registry
  static_assert(std::is_same_v<decltype(opt), nn::Adam<float>>);
  CHECK(opt.lr() == 1e-3f);
  opt.set_lr(5e-4f);
  CHECK(opt.lr() == 5e-4f);
  CHECK(opt.size() == 2);
  m.set_grads(0);
  opt.step();
  CHECK(opt.steps() == 1);
  // After one step m = (1 - beta1) g and v = (1 - beta2) g^2.
  const float g0 = m.w.grad.data()[3];
  CHECK(opt.state("l1.weight", "exp_avg").data()[3] == doctest::Approx(0.1 * g0).epsilon(1e-6));
  CHECK(opt.state("l1.weight", "exp_avg_sq").data()[3] == doctest::Approx(0.001 * g0 * g0).epsilon(1e-5));
  CHECK(opt.state("l1.bias", "exp_avg").shape() == Shape{3});
  opt.zero_grad();
  for (float g : m.w.grad.to_vector()) CHECK(g == 0.0f);

  CHECK_THROWS_WITH_AS(opt.state("l2.weight", "exp_avg"), doctest::Contains("no parameter named 'l2.weight'"), ValueError);
  CHECK_THROWS_WITH_AS(opt.state("l1.weight", "momentum_buffer"), doctest::Contains("unknown state 'momentum_buffer'"),
                       ValueError);
  CHECK_THROWS_WITH_AS(opt.set_lr(-1.0f), doctest::Contains("invalid learning rate"), ValueError);

  // Restoring a checkpoint: state tensors are writable, the step count settable.
  opt.state("l1.weight", "exp_avg").fill(0.0f);
  opt.set_steps(10);
  CHECK(opt.steps() == 10);

  nn::SGD sgd_plain{m.reg, {.lr = 0.1f}};
  CHECK_THROWS_WITH_AS(sgd_plain.state("l1.weight", "momentum_buffer"), doctest::Contains("keeps: no state"), ValueError);
  nn::SGD sgd{m.reg, {.lr = 0.1f, .momentum = 0.9f}};
  m.set_grads(1);
  sgd.step();
  // First step: the buffer is the gradient itself (torch: b_1 = g_1).
  CHECK(sgd.state("l1.bias", "momentum_buffer").to_vector() == m.b.grad.to_vector());
}

// step(parts): the sharded data-parallel update. Every element stepped once,
// in pieces, is the same as step(); elements outside the parts stay put.
TEST_CASE_TEMPLATE("step(parts) equals step() piece by piece, and leaves other elements alone", Opt, nn::SGD<float>,
                   nn::Adam<float>, nn::AdamW<float>) {
  auto options = [] {
    if constexpr (std::is_same_v<Opt, nn::SGD<float>>)
      return nn::SGDOptions{.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f};
    else if constexpr (std::is_same_v<Opt, nn::Adam<float>>)
      return nn::AdamOptions{.lr = 1e-2f};
    else
      return nn::AdamWOptions{.lr = 1e-2f};
  }();
  Model<float> whole, parts, half;
  Opt a{whole.reg, options}, b{parts.reg, options}, c{half.reg, options};
  // Cuts at 0, 13, 17 (odd offsets: vector bodies and scalar tails) and 35.
  const std::vector<nn::ParamRange> pieces{{1, 0, 3}, {0, 13, 17}, {0, 0, 13}, {0, 17, 35}};
  const std::vector<nn::ParamRange> first_half{{0, 0, 17}};
  for (int step = 0; step < 4; ++step) {
    whole.set_grads(step);
    parts.set_grads(step);
    half.set_grads(step);
    a.step();
    b.step(pieces);
    c.step(first_half);
  }
  CHECK(b.steps() == 4);
  CHECK(parts.w.value.to_vector() == whole.w.value.to_vector());
  CHECK(parts.b.value.to_vector() == whole.b.value.to_vector());
  Model<float> untouched;
  for (int i = 0; i < 35; ++i)
    CHECK(half.w.value.data()[i] == (i < 17 ? whole.w.value.data()[i] : untouched.w.value.data()[i]));
  CHECK(half.b.value.to_vector() == untouched.b.value.to_vector());
  CHECK_THROWS_WITH_AS(c.step({{2, 0, 1}}), doctest::Contains("optimizer holds 2"), ValueError);
  CHECK_THROWS_WITH_AS(c.step({{0, 30, 36}}), doctest::Contains("elements [30, 36) of parameter 'l1.weight' (35 elements)"),
                       ValueError);
}

// State that decays without fresh gradient (a dead unit) would sink into
// subnormals, which cost ~100 cycles per operation on x86: it is stored as zero.
TEST_CASE_TEMPLATE("optimizer state never holds subnormals", T, float, double) {
  Model<T> m;
  nn::Adam<T> adam{m.reg, {.lr = 1e-3f}};
  nn::SGD<T> sgd{m.reg, {.lr = 1e-3f, .momentum = 0.5f}};
  m.set_grads(0);
  adam.step();
  sgd.step();
  m.w.grad.fill(T(0));
  m.b.grad.fill(T(0));
  // m = 0.9^t m passes the smallest normal after ~840 steps in float, ~6700 in double.
  auto subnormals = [](const Tensor<T>& s) {
    int n = 0;
    for (index_t i = 0; i < s.numel(); ++i) n += std::fpclassify(s.data()[i]) == FP_SUBNORMAL;
    return n;
  };
  bool reached_zero = false;
  for (int t = 0; t < (std::is_same_v<T, float> ? 1000 : 7000); ++t) {
    adam.step();
    sgd.step();
    CHECK(subnormals(adam.state("l1.weight", "exp_avg")) == 0);
    CHECK(subnormals(adam.state("l1.bias", "exp_avg_sq")) == 0);
    CHECK(subnormals(sgd.state("l1.weight", "momentum_buffer")) == 0);
    // Zero where m + (1 - beta1)(g - m) is contracted into one FMA (-O2 and
    // up with -march=native); computed in two roundings, the flushed product
    // leaves m at its last normal value below min() / (1 - beta1), which never
    // becomes subnormal either.
    const T m3 = adam.state("l1.weight", "exp_avg").data()[3];
    reached_zero = m3 == T(0) || std::fabs(m3) < std::numeric_limits<T>::min() / T(0.1);
  }
  CHECK(reached_zero);
  CHECK(sgd.state("l1.bias", "momentum_buffer").data()[0] == T(0));
}

TEST_CASE("optimizer errors") {
  Model<float> m;
  CHECK_THROWS_WITH_AS((nn::SGD<float>{m.reg, {.lr = 0.1f, .nesterov = true}}),
                       doctest::Contains("Nesterov momentum requires momentum > 0 and dampening = 0"), ValueError);
  CHECK_THROWS_WITH_AS((nn::SGD<float>{m.reg, {.lr = 0.1f, .momentum = 0.9f, .dampening = 0.1f, .nesterov = true}}),
                       doctest::Contains("Nesterov"), ValueError);
  CHECK_THROWS_WITH_AS((nn::Adam<float>{m.reg, {.beta1 = 1.0f}}), doctest::Contains("beta1"), ValueError);
  CHECK_THROWS_WITH_AS((nn::AdamW<float>{m.reg, {.eps = -1.0f}}), doctest::Contains("eps"), ValueError);
  CHECK_THROWS_WITH_AS((nn::SGD<float>{m.reg, {.lr = std::numeric_limits<float>::quiet_NaN()}}),
                       doctest::Contains("invalid learning rate"), ValueError);

  // A parameter resized after the optimizer was built is named in the error.
  nn::Adam opt{m.reg};
  m.b.value.resize(Shape{4});
  m.b.grad.resize(Shape{4});
  CHECK_THROWS_WITH_AS(opt.step(), doctest::Contains("parameter 'l1.bias' has shape (4,)"), ShapeError);
}

// ---- No allocation in step() --------------------------------------------------------
//
// The counting operator new (tests/alloc_counter.hpp, included first) sees
// every heap allocation, tensor storage included; step() creates no tensor
// (it works on the data pointers of tensors built with the optimizer).

TEST_CASE("step() and zero_grad() allocate nothing") {
  Model<float> m;
  nn::SGD sgd{m.reg, {.lr = 0.1f, .momentum = 0.9f, .nesterov = true}};
  nn::Adam adam{m.reg};
  nn::AdamW adamw{m.reg};
  m.set_grads(0);
  CHECK(alloc_counter::on_every_thread([&] {
          for (int s = 0; s < 3; ++s) {
            sgd.step();
            adam.step();
            adamw.step();
            sgd.zero_grad();
          }
        }) == 0);

  // The counter does see allocations: building an optimizer allocates its slots.
  CHECK(alloc_counter::on_every_thread([&] { nn::Adam more{m.reg}; }) > 0);
}

// ---- Schedules ---------------------------------------------------------------------

TEST_CASE("learning-rate schedules against their closed forms") {
  const double pi = std::numbers::pi;
  SUBCASE("constant") {
    nn::ConstantLR c{.lr = 0.25f};
    CHECK(c(0) == 0.25f);
    CHECK(c(1000000) == 0.25f);
  }
  SUBCASE("linear warm-up (torch LinearLR with end_factor 1)") {
    nn::LinearWarmup w{.lr = 1e-2f, .warmup_steps = 10, .start_factor = 0.1f};
    CHECK(w(0) == doctest::Approx(1e-3).epsilon(1e-6));
    CHECK(w(5) == doctest::Approx(1e-2 * (0.1 + 0.9 * 0.5)).epsilon(1e-6));
    CHECK(w(10) == 1e-2f);
    CHECK(w(500) == 1e-2f);
    nn::LinearWarmup none{.lr = 3e-3f};
    CHECK(none(0) == 3e-3f);
  }
  SUBCASE("cosine annealing (torch CosineAnnealingLR closed form)") {
    nn::CosineAnnealing c{.lr = 1e-1f, .total_steps = 100, .min_lr = 1e-3f};
    auto closed = [&](double t) { return 1e-3 + 0.5 * (double(1e-1f) - double(1e-3f)) * (1 + std::cos(pi * t / 100)); };
    for (std::int64_t t : {0, 1, 25, 50, 73, 99, 100}) {
      CAPTURE(t);
      CHECK(c(t) == doctest::Approx(closed(double(t))).epsilon(1e-6));
    }
    CHECK(c(0) == 1e-1f);
    CHECK(c(100) == doctest::Approx(1e-3).epsilon(1e-6));
    CHECK(c(250) == c(100));  // held at min_lr after total_steps
  }
  SUBCASE("cosine with warm-up") {
    nn::CosineAnnealing c{.lr = 1e-3f, .total_steps = 1100, .warmup_steps = 100};
    CHECK(c(0) == 0.0f);
    CHECK(c(50) == doctest::Approx(5e-4).epsilon(1e-6));
    CHECK(c(100) == 1e-3f);
    CHECK(c(600) == doctest::Approx(0.5e-3 * (1 + std::cos(pi * 0.5))).epsilon(1e-6));
    CHECK(c(1100) == doctest::Approx(0.0).epsilon(1e-6));
  }
  SUBCASE("bad schedules fail with a sentence") {
    CHECK_THROWS_WITH_AS((nn::CosineAnnealing{.lr = 1e-3f, .total_steps = 10, .warmup_steps = 10}(0)),
                         doctest::Contains("must exceed warmup_steps"), ValueError);
    CHECK_THROWS_WITH_AS((nn::CosineAnnealing{.lr = 1e-3f, .total_steps = 10, .min_lr = 1.0f}(0)),
                         doctest::Contains("min_lr"), ValueError);
    CHECK_THROWS_WITH_AS(nn::LinearWarmup{.warmup_steps = 5}(-1), doctest::Contains("negative step"), ValueError);
  }
}

// ---- Initialisers ---------------------------------------------------------------------

namespace {

struct Moments {
  double mean, var, lo, hi;
};
Moments moments(const Tensor<float>& t) {
  double s = 0, s2 = 0, lo = 1e300, hi = -1e300;
  const index_t n = t.numel();
  for (index_t i = 0; i < n; ++i) {
    const double x = t.data()[i];
    s += x;
    s2 += x * x;
    lo = std::min(lo, x);
    hi = std::max(hi, x);
  }
  const double mean = s / double(n);
  return {mean, s2 / double(n) - mean * mean, lo, hi};
}

// Sample mean within 5 standard errors of 0; sample variance within 5 standard
// errors of the target (se of the variance: var * sqrt(2/n) for a normal,
// var * sqrt(0.8/n) for a uniform; 2/n covers both).
void check_moments(const Moments& m, double target_var, index_t n) {
  const double se_mean = std::sqrt(target_var / double(n));
  const double se_var = target_var * std::sqrt(2.0 / double(n));
  CHECK(std::abs(m.mean) <= 5 * se_mean);
  CHECK(std::abs(m.var - target_var) <= 5 * se_var);
}

}  // namespace

TEST_CASE("initialisers: deterministic, seeded, with the stated moments and bounds") {
  const index_t fan_in = 512, fan_out = 256, n = fan_in * fan_out;
  Tensor<float> a(Shape{fan_in, fan_out}), b(Shape{fan_in, fan_out});

  SUBCASE("same seed -> identical, different seed -> different") {
    nn::kaiming_uniform(a, 7);
    nn::kaiming_uniform(b, 7);
    CHECK(a.to_vector() == b.to_vector());
    nn::kaiming_uniform(b, 8);
    CHECK(a.to_vector() != b.to_vector());
    nn::xavier_normal(a, 3);
    nn::xavier_normal(b, 3);
    CHECK(a.to_vector() == b.to_vector());
  }
  SUBCASE("kaiming_uniform: U(-b, b), b = sqrt(2) sqrt(3 / fan_in)") {
    nn::kaiming_uniform(a, 1);
    const double bound = std::sqrt(2.0) * std::sqrt(3.0 / fan_in);
    const Moments m = moments(a);
    CHECK(m.lo >= -bound);
    CHECK(m.hi < bound);
    CHECK(m.hi > 0.99 * bound);  // the range is used
    check_moments(m, bound * bound / 3, n);
  }
  SUBCASE("kaiming_uniform fan_out mode and custom gain") {
    nn::kaiming_uniform(a, 1, {.gain = 1.0, .mode = nn::FanMode::fan_out});
    const double bound = std::sqrt(3.0 / fan_out);
    const Moments m = moments(a);
    CHECK(m.lo >= -bound);
    CHECK(m.hi < bound);
    check_moments(m, 1.0 / fan_out, n);
  }
  SUBCASE("kaiming_normal: N(0, 2 / fan_in)") {
    nn::kaiming_normal(a, 2);
    check_moments(moments(a), 2.0 / fan_in, n);
  }
  SUBCASE("xavier_uniform: U(-b, b), b = sqrt(6 / (fan_in + fan_out))") {
    nn::xavier_uniform(a, 3);
    const double bound = std::sqrt(6.0 / (fan_in + fan_out));
    const Moments m = moments(a);
    CHECK(m.lo >= -bound);
    CHECK(m.hi < bound);
    check_moments(m, 2.0 / (fan_in + fan_out), n);
  }
  SUBCASE("xavier_normal: N(0, 2 / (fan_in + fan_out))") {
    nn::xavier_normal(a, 4);
    check_moments(moments(a), 2.0 / (fan_in + fan_out), n);
  }
  SUBCASE("explicit fans for other ranks; constants") {
    Tensor<float> bias(Shape{1000});
    nn::kaiming_uniform(bias, 5, {.fans = {.fan_in = 64, .fan_out = 1000}});
    const Moments m = moments(bias);
    CHECK(m.hi < std::sqrt(2.0) * std::sqrt(3.0 / 64));
    nn::constant(bias, 0.5);
    CHECK(moments(bias).lo == 0.5);
    nn::zeros(bias);
    CHECK(moments(bias).hi == 0.0);
  }
  SUBCASE("parameters: filled in place; errors name the parameter") {
    Parameter<float> w{"w", Shape{64, 32}}, bias{"b", Shape{32}};
    nn::Registry<float> reg;
    reg.add(w, "l1.weight").add(bias, "l1.bias");
    nn::Rng rng(11);
    nn::xavier_uniform(w, rng);
    CHECK(moments(w.value).hi > 0.0);
    CHECK_THROWS_WITH_AS(nn::kaiming_uniform(bias, rng), doctest::Contains("parameter l1.bias with shape (32,)"), ValueError);
    nn::zeros(bias);
    // One generator threaded through several initialisers: the stream continues.
    nn::Rng r1(11), r2(11);
    Tensor<float> x(Shape{4, 4}), y(Shape{4, 4});
    nn::kaiming_normal(x, r1);
    nn::kaiming_normal(y, r1);
    Tensor<float> x2(Shape{4, 4});
    nn::kaiming_normal(x2, r2);
    CHECK(x.to_vector() == x2.to_vector());
    CHECK(x.to_vector() != y.to_vector());
  }
}

// ---- RNG -------------------------------------------------------------------------------
//
// Expected words from an independent Python model of SplitMix64 and xoshiro256**
// (Debian /usr/bin/python3), which itself reproduces the published test vectors
// (SplitMix64 seed 1234567: 6457827717110365317, 3203168211198807973, ...;
// xoshiro256** from state {1, 2, 3, 4}: 11520, 0, 1509978240, 1215971899390074240):
//
//   M = (1 << 64) - 1; GOLD = 0x9E3779B97F4A7C15
//   def mix64(z):
//       z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
//       z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
//       return z ^ (z >> 31)
//   def rotl(x, k): return ((x << k) | (x >> (64 - k))) & M
//   def xoshiro(s):
//       while True:
//           r = (rotl((s[1] * 5) & M, 7) * 9) & M
//           t = (s[1] << 17) & M
//           s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45)
//           yield r
//   def seeded(seed): return xoshiro([mix64((seed + GOLD * (k + 1)) & M) for k in range(4)])
//   g = seeded(42); print([next(g) for _ in range(3)])
//   g = seeded(42); print(["%.9ef" % ((next(g) >> 40) * 2.0**-24) for _ in range(3)])
//   print([mix64((mix64(7) + GOLD * (c + 1)) & M) for c in range(3)])

TEST_CASE("RNG: known outputs, ranges, statelessness") {
  SUBCASE("SplitMix64 and xoshiro256** reference vectors") {
    constexpr std::uint64_t g = nn::golden_gamma;
    CHECK(nn::mix64(1234567 + g) == 6457827717110365317ull);
    CHECK(nn::mix64(1234567 + 2 * g) == 3203168211198807973ull);
    CHECK(nn::mix64(1234567 + 3 * g) == 9817491932198370423ull);
    nn::Rng r = nn::Rng::from_state({1, 2, 3, 4});
    CHECK(r.next_u64() == 11520ull);
    CHECK(r.next_u64() == 0ull);
    CHECK(r.next_u64() == 1509978240ull);
    CHECK(r.next_u64() == 1215971899390074240ull);
    CHECK_THROWS_WITH_AS(nn::Rng::from_state({0, 0, 0, 0}), doctest::Contains("all-zero"), ValueError);
  }
  SUBCASE("seeded stream is fixed") {
    nn::Rng r(42);
    CHECK(r.next_u64() == 1546998764402558742ull);
    CHECK(r.next_u64() == 6990951692964543102ull);
    CHECK(r.next_u64() == 12544586762248559009ull);
    nn::Rng u(42);
    CHECK(u.uniform() == 8.386296034e-02f);
    CHECK(u.uniform() == 3.789802194e-01f);
    CHECK(u.uniform() == 6.800433993e-01f);
    CHECK(nn::hash(7, 0) == 9672475392221035855ull);
    CHECK(nn::hash(7, 1) == 5573481420429128725ull);
    CHECK(nn::hash(7, 2) == 17358316652931856208ull);
    static_assert(nn::hash(7, 0) == 9672475392221035855ull);  // constexpr: usable in device code and constant expressions
  }
  SUBCASE("uniform in [0, 1), also at the extremes of the bits") {
    CHECK(nn::to_unit_float(~0ull) < 1.0f);
    CHECK(nn::to_unit_double(~0ull) < 1.0);
    CHECK(nn::to_unit_float(0) == 0.0f);
    nn::Rng r(3);
    double s = 0;
    const int n = 200000;
    for (int i = 0; i < n; ++i) {
      const float u = r.uniform();
      REQUIRE(u >= 0.0f);
      REQUIRE(u < 1.0f);
      s += u;
    }
    CHECK(std::abs(s / n - 0.5) < 5 * std::sqrt(1.0 / 12 / n));
    for (int i = 0; i < 1000; ++i) {
      const float h = nn::hash_uniform(9, static_cast<std::uint64_t>(i));
      REQUIRE(h >= 0.0f);
      REQUIRE(h < 1.0f);
    }
  }
  SUBCASE("normal moments; copies continue identically") {
    nn::Rng r(5);
    double s = 0, s2 = 0;
    const int n = 200000;
    for (int i = 0; i < n; ++i) {
      const double x = r.normal_double();
      s += x;
      s2 += x * x;
    }
    CHECK(std::abs(s / n) < 5 * std::sqrt(1.0 / n));
    CHECK(std::abs(s2 / n - 1) < 5 * std::sqrt(2.0 / n));
    nn::Rng a(6);
    (void)a.normal();  // leaves the pair's second value pending
    nn::Rng b = a;
    CHECK(a.normal() == b.normal());
    CHECK(a.next_u64() == b.next_u64());
  }
  SUBCASE("below(n) stays below n; n = 0 is an error") {
    nn::Rng r(8);
    for (int i = 0; i < 1000; ++i) REQUIRE(r.below(7) < 7);
    CHECK_THROWS_WITH_AS(r.below(0), doctest::Contains("at least 1"), ValueError);
  }
}
