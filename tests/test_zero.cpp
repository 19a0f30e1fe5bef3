// Mesh and ZeRO-1/2/3 on thread ranks: the shared checks of zero_suite.hpp
// at 1, 2 and 4 ranks, the mesh on 8 ranks (pp2 x dp2 x tp2) and its errors,
// and the memory each stage holds against the ZeRO formulas.
#include <doctest/doctest.h>

#include <string>
#include <vector>
#include <weft/comm/run_local.hpp>

#include "zero_suite.hpp"

using namespace weft;
using namespace zero_suite;
using comm::Communicator;
using comm::Ring;
using comm::ThreadTransport;

TEST_CASE("DP, ZeRO-1, -2, -3 at 1, 2, 4 thread ranks: 20 steps like one rank, bit for bit across stages when deterministic") {
  const Data data;
  const std::vector<float> one = single_rank(data);
  for (int p : {1, 2, 4}) {
    CAPTURE(p);
    comm::run_local(p, [&](ThreadTransport& t) { check_stages(t, data, one); });
  }
}

TEST_CASE("hybrid sharding on a replicate2 x shard2 mesh of 4 thread ranks trains like one rank") {
  const Data data;
  const std::vector<float> one = single_rank(data);
  comm::run_local(4, [&](ThreadTransport& t) {
    check_close(train_hybrid<parallel::Zero1>(t, data, 2), one, "HSDP ZeRO-1");
    check_close(train_hybrid<parallel::Zero2>(t, data, 2), one, "HSDP ZeRO-2");
    check_close(train_hybrid<parallel::Zero3>(t, data, 2), one, "HSDP ZeRO-3");
  });
}

TEST_CASE("mesh: coordinates, axis and group communicators on 8 thread ranks") {
  comm::run_local(8, [](ThreadTransport& t) { check_mesh(t, {{"pp", 2}, {"dp", 2}, {"tp", 2}}); });
  comm::run_local(8, [](ThreadTransport& t) { check_mesh(t, {{"dp", 4}, {"tp", 2}}); });
  comm::run_local(6, [](ThreadTransport& t) { check_mesh(t, {{"dp", 3}, {"tp", 2}}); });
}

TEST_CASE("mesh: a size mismatch and bad axes fail with a sentence") {
  comm::run_local(6, [](ThreadTransport& t) {
    using M = parallel::Mesh<ThreadTransport>;
    CHECK_THROWS_WITH_AS(M(t, {{"pp", 2}, {"dp", 2}, {"tp", 2}}),
                         doctest::Contains("a pp2 x dp2 x tp2 mesh holds 8 ranks but the transport has 6"), ValueError);
    CHECK_THROWS_WITH_AS(M(t, {{"dp", 3}, {"dp", 2}}), doctest::Contains("axis 'dp' appears twice"), ValueError);
    CHECK_THROWS_WITH_AS(M(t, {{"dp", 0}, {"tp", 6}}), doctest::Contains("axis 'dp' has size 0"), ValueError);
    M mesh(t, {{"dp", 3}, {"tp", 2}});
    CHECK_THROWS_WITH_AS(mesh.coord("pp"), doctest::Contains("no axis named 'pp' in the dp3 x tp2 mesh"), ValueError);
    CHECK_THROWS_WITH_AS(mesh.comm<Ring>("dp,dp"), doctest::Contains("axis 'dp' is named twice"), ValueError);
  });
}

TEST_CASE("mesh: DataParallel on the dp axis of a dp2 x tp2 mesh averages over dp only") {
  comm::run_local(4, [](ThreadTransport& t) {
    parallel::Mesh<ThreadTransport> mesh(t, {{"dp", 2}, {"tp", 2}});
    Parameter<float> w("w", Shape{3});
    nn::Registry<float> reg;
    reg.add(w, "w");
    auto& dp = mesh.comm<Ring>("dp");
    parallel::DataParallel data_parallel(reg, dp);
    // gradient = world rank: the average over dp is the mean of the two ranks sharing this tp coordinate
    auto loss = sum(w * static_cast<float>(t.rank()));
    Workspace<> ws;
    reg.zero_grad();
    data_parallel.backward(loss, ws);
    const float expect = (mesh.rank_of({0, mesh.coord("tp")}) + mesh.rank_of({1, mesh.coord("tp")})) / 2.0f;
    for (index_t i = 0; i < 3; ++i) CHECK(w.grad.data()[i] == expect);
  });
}

namespace {

// The Fashion-MNIST MLP, deeper so that no unit dominates: 784-256-256-256-256-10.
struct BigMlp {
  nn::Linear<float> l1{784, 256, 1}, l2{256, 256, 2}, l3{256, 256, 3}, l4{256, 256, 4}, l5{256, 10, 5};
  nn::Registry<float> reg;
  BigMlp() { reg.add("l1", l1).add("l2", l2).add("l3", l3).add("l4", l4).add("l5", l5); }
  template <class X, class Y>
  auto loss(const X& x, const Y& y) {
    return cross_entropy(l5(tanh(l4(tanh(l3(tanh(l2(tanh(l1(x))))))))), y);
  }
};

template <class Stage>
void check_memory(int n, bool overlap = true) {
  comm::run_local(n, [&](ThreadTransport& t) {
    using C = Communicator<Ring, ThreadTransport>;
    C c{t};
    BigMlp m;
    const double P = static_cast<double>(m.reg.numel());
    parallel::Zero<float, Stage, C> z(m.reg, c, nn::AdamOptions{.lr = 1e-3f}, {.overlap = overlap});
    Tensor<float> x(Shape{8, 784}, 0.5f);
    Tensor<std::int32_t> y(Shape{8}, 3);
    Workspace<> ws;
    for (int s = 0; s < 2; ++s) {
      z.backward([&] { return m.loss(x, y); }, ws);
      z.step();
    }
    const double formula = parallel::zero_formula(Stage::stage, P, n);
    const double rest = static_cast<double>(z.memory().total());
    INFO("stage " << Stage::stage << " on " << n << " ranks: " << rest << " bytes at rest, formula " << formula);
    CHECK(rest / formula > 0.95);
    CHECK(rest / formula < 1.05);
    // Optimizer state is really 1/N: Adam's two f32 moments of the shard only.
    CHECK(static_cast<double>(z.memory().optimizer) / (8 * P / n) < 1.05);
    const double largest = static_cast<double>(z.largest_unit()) * 4;
    const auto& peak = z.memory_peak();
    if constexpr (Stage::stage >= 2) {
      // Full gradients live unit by unit: all released after backward, and at
      // the peak no more than two units' worth (plus a page each) beside the shards.
      CHECK(z.memory().grads == z.shard_elems() * 4);
      CHECK(static_cast<double>(peak.grads) <= z.shard_elems() * 4.0 + 2 * largest + 2 * 4096);
      CHECK(static_cast<double>(peak.grads) < z.shard_elems() * 4.0 + 4 * P);
    }
    if constexpr (Stage::stage == 3) {
      CHECK(z.memory().params == z.shard_elems() * 4);
      CHECK(z.memory().gathered == 0);
      // the forward gathers every unit at once (see zero.hpp)
      CHECK(static_cast<double>(peak.gathered) <= 4 * P + largest + 4.0 * n);
    } else {
      CHECK(static_cast<double>(peak.gathered) <= largest + 4.0 * n);
    }
  });
}

}  // namespace

TEST_CASE("memory: each stage holds what the ZeRO formulas say (f32 Adam, within 5%)") {
  for (int n : {2, 4}) {
    CAPTURE(n);
    check_memory<parallel::Zero1>(n);
    check_memory<parallel::Zero2>(n);
    check_memory<parallel::Zero3>(n);
    check_memory<parallel::Zero2>(n, false);  // overlap off: the same bounds
    check_memory<parallel::Zero3>(n, false);
  }
}

TEST_CASE("zero: a stage 3 parameter is freed between steps and the loss builds only after the gather") {
  comm::run_local(2, [](ThreadTransport& t) {
    using C = Communicator<Ring, ThreadTransport>;
    C c{t};
    Model m;
    parallel::Zero<float, parallel::Zero3, C> z(m.reg, c, nn::SGDOptions{.lr = 0.1f, .momentum = 0.9f});
    CHECK(m.l1.weight.value.data() == nullptr);
    CHECK(m.l1.weight.grad.data() == nullptr);
    const Data data;
    Workspace<> ws;
    z.backward([&] {
      CHECK(m.l1.weight.value.numel() == kIn * kHidden);  // gathered before the forward is built
      return m.loss(data.x.slice(0, 8), data.y.slice(0, 8));
    }, ws);
    CHECK(m.l1.weight.value.data() == nullptr);  // freed during backward
    z.step();
    CHECK_THROWS_WITH_AS(z.step(), doctest::Contains("no backward() yet"), ValueError);
    // A loss over a parameter Zero does not shard is refused, naming it.
    Parameter<float> stray("stray", Shape{kClasses});
    CHECK_THROWS_WITH_AS(z.backward([&] { return m.loss(data.x.slice(0, 8), data.y.slice(0, 8)) + sum(stray); }, ws),
                         doctest::Contains("the loss uses parameter 'stray', which is not in the registry"), ValueError);
  });
}

// ---- stage 3 layer by layer (parallel::zero_layers) and mixed precision --------

TEST_CASE("ZeRO-3 per layer, bf16 mixed precision at 1, 2, 4 thread ranks: like the bf16 reference, away from f32") {
  const Data data;
  const auto ref_f32 = mixed_reference(data, 1, kAdamMixed, false);
  for (int p : {1, 2, 4}) {
    CAPTURE(p);
    const auto ref = mixed_reference(data, p, kAdamMixed, true);
    comm::run_local(p, [&](ThreadTransport& t) { check_mixed(t, data, ref, ref_f32); });
  }
}

TEST_CASE("ZeRO-3 per layer: hybrid sharding on a replicate2 x shard2 mesh trains like one rank") {
  const Data data;
  const std::vector<float> one = single_rank(data);
  comm::run_local(4, [&](ThreadTransport& t) { check_close(train_hybrid_layers(t, data, 2), one, "HSDP ZeRO-3 per layer"); });
}

TEST_CASE("ZeRO-3 per layer from an nn::Sequential: bit for bit DataParallel in deterministic mode (2 thread ranks)") {
  const Data data;
  comm::run_local(2, [&](ThreadTransport& t) {
    using C = Communicator<Ring, ThreadTransport>;
    C c{t, options(true)};
    // the suite's Model as a Sequential (same seeds, same registry order)
    nn::Sequential seq(nn::Linear<float>(kIn, kHidden, 1), nn::Tanh{}, nn::Linear<float>(kHidden, kHidden, 2), nn::Tanh{},
                       nn::Linear<float>(kHidden, kClasses, 3));
    nn::Registry<float> reg;
    reg.add("mlp", seq);
    parallel::Zero<float, parallel::Zero3, C> z(reg, c, kAdam);
    CHECK(z.units() == 3);  // "mlp.0", "mlp.2", "mlp.4"
    auto fsdp = parallel::zero_layers<std::int32_t>(z, seq, xent());
    CHECK(fsdp.layers() == 5);
    CHECK(fsdp.units_of(1).empty());
    for (int s = 0; s < kSteps; ++s) {
      auto [lo, hi] = rows(s, c.rank(), c.size());
      fsdp.backward(data.x.slice(lo, hi), data.y.slice(lo, hi));
      z.step();
    }
    CHECK(z.full_values() == train_dp(t, data, true));
  });
}

namespace {

// Layers of unequal sizes (the largest, l2, between smaller ones), so that
// counting a unit's values twice or gathering a third layer would show
// against the formula; large enough (0.8 MB) that the few pages a released
// layer keeps (its tensors' partial edge pages, its bias) stay within the 5%.
struct DeepMlp {
  nn::Linear<float> l1{64, 256, 1}, l2{256, 768, 2}, l3{768, 128, 3}, l4{128, 256, 4}, l5{256, 256, 5}, l6{256, 256, 6},
      l7{256, 10, 7};
  nn::ReLU act;
  nn::Registry<float> reg;
  double P = 0;  // counted before Zero frees the values
  DeepMlp() {
    reg.add("l1", l1).add("l2", l2).add("l3", l3).add("l4", l4).add("l5", l5).add("l6", l6).add("l7", l7);
    P = static_cast<double>(reg.numel());
  }
};

// Runs two per-layer steps with the ledger (and optionally the trace) on.
template <class F>
void deep_steps(int n, parallel::ZeroPrecision prec, bool trace, F&& check) {
  comm::run_local(n, [&](ThreadTransport& t) {
    using C = Communicator<Ring, ThreadTransport>;
    C c{t};
    DeepMlp m;
    parallel::Zero<float, parallel::Zero3, C> z(m.reg, c, nn::AdamOptions{.lr = 1e-3f}, {.precision = prec, .trace = trace});
    auto fsdp = parallel::zero_layers<std::int32_t>(z, std::tie(m.l1, m.act, m.l2, m.act, m.l3, m.act, m.l4, m.act, m.l5, m.act, m.l6, m.act, m.l7),
                                                    [](auto out, TensorView<std::int32_t> y) { return cross_entropy(out, y); });
    Tensor<float> x(Shape{8, 64}, 0.25f);
    Tensor<std::int32_t> y(Shape{8}, 3);
    const std::uint64_t before = c.sent_bytes();
    for (int s = 0; s < 2; ++s) {
      fsdp.backward(x.view(), y.view());
      z.step();
    }
    const std::uint64_t step_bytes = c.sent_bytes() - before;  // the two steps' gathers and reduce-scatters
    check(t, step_bytes, m, z, fsdp);
  });
}

}  // namespace

TEST_CASE("ZeRO-3 per layer: the next layer's gather is issued before the current layer's compute ends (event order)") {
  deep_steps(2, parallel::ZeroPrecision::f32, true, [](auto&, std::uint64_t, auto&, auto& z, auto& fsdp) {
    const auto& ev = z.trace();
    auto at = [&](parallel::ZeroEvent::Kind k, int i) {
      for (std::size_t e = 0; e < ev.size(); ++e)
        if (ev[e].kind == k && ev[e].index == i) return static_cast<std::ptrdiff_t>(e);
      return std::ptrdiff_t(-1);
    };
    auto nth = [&](parallel::ZeroEvent::Kind k, int i, int which) {  // which-th occurrence
      int seen = 0;
      for (std::size_t e = 0; e < ev.size(); ++e)
        if (ev[e].kind == k && ev[e].index == i && seen++ == which) return static_cast<std::ptrdiff_t>(e);
      return std::ptrdiff_t(-1);
    };
    using E = parallel::ZeroEvent;
    // layers 0, 2, ..., 12 hold units 0..6 (the ReLUs none)
    constexpr int U = 7;
    for (int l = 0; l < U; ++l) CHECK(fsdp.units_of(static_cast<std::size_t>(2 * l)) == std::vector<std::size_t>{static_cast<std::size_t>(l)});
    for (int u = 0; u + 1 < U; ++u) {
      CAPTURE(u);
      const int layer = 2 * u;
      // forward: unit u+1's gather issued after layer u's gather landed and before its forward ended;
      // waited only after that forward
      CHECK(nth(E::gather_wait, u, 0) < nth(E::gather_start, u + 1, 0));
      CHECK(nth(E::gather_start, u + 1, 0) < at(E::forward_end, layer));
      CHECK(at(E::forward_end, layer) < nth(E::gather_wait, u + 1, 0));
      // layer u's values emptied after its forward (the last layer's are kept for its backward)
      CHECK(at(E::forward_end, layer) < nth(E::release, u, 0));
      CHECK(nth(E::release, u, 0) < at(E::forward_begin, layer + 2));
    }
    CHECK(nth(E::release, U - 1, 0) > at(E::backward_end, 2 * (U - 1)));  // the last unit: no regather
    for (int u = U - 1; u > 0; --u) {
      CAPTURE(u);
      const int layer = 2 * u;
      // backward: unit u-1's gather issued before layer u's backward ended, waited after it
      const auto regather = nth(E::gather_start, u - 1, 1);
      CHECK(at(E::backward_begin, layer) > regather);
      CHECK(regather < at(E::backward_end, layer));
      CHECK(at(E::backward_end, layer) < nth(E::gather_wait, u - 1, 1));
      // unit u's reduce-scatter issued after its backward, waited after layer u-1's backward
      CHECK(at(E::backward_end, layer) < at(E::reduce_start, u));
      CHECK(at(E::reduce_start, u) < at(E::backward_end, layer - 2));
      CHECK(at(E::backward_end, layer - 2) < at(E::reduce_wait, u));
    }
    // every event the comparisons above read exists (none compared as -1)
    for (int u = 0; u < U; ++u) {
      CAPTURE(u);
      CHECK(nth(E::gather_wait, u, 0) >= 0);
      CHECK(nth(E::release, u, 0) >= 0);
      CHECK(at(E::reduce_wait, u) >= 0);
      for (auto k : {E::forward_begin, E::forward_end, E::backward_begin, E::backward_end}) CHECK(at(k, 2 * u) >= 0);
    }
    // each unit gathered twice per step (the last once: kept from its forward), reduce-scattered once
    for (int u = 0; u < U; ++u) {
      CAPTURE(u);
      CHECK(nth(E::gather_start, u, 0) >= 0);
      CHECK((nth(E::gather_start, u, 1) >= 0) == (u < U - 1));
      CHECK(nth(E::gather_start, u, 2) == -1);
      CHECK(nth(E::reduce_start, u, 0) >= 0);
      CHECK(nth(E::reduce_start, u, 1) == -1);
    }
  });
}

TEST_CASE("ZeRO-3 per layer: bytes at rest, gathered and gradient peaks match the per-layer formulas (f32 and bf16, within 5%)") {
  for (auto prec : {parallel::ZeroPrecision::f32, parallel::ZeroPrecision::bf16})
    for (int n : {2, 4}) {
      CAPTURE(n);
      CAPTURE(prec == parallel::ZeroPrecision::bf16);
      deep_steps(n, prec, false, [&](auto&, std::uint64_t, auto& m, auto& z, auto&) {
        const double P = m.P;
        const bool bf = prec == parallel::ZeroPrecision::bf16;
        std::vector<double> u;
        for (std::size_t k = 0; k < z.units(); ++k) u.push_back(static_cast<double>(z.unit_padded(k)));
        const auto f = parallel::zero3_layered_formula(u, n, bf);
        const double rest = static_cast<double>(z.memory().total()), rest_f = parallel::zero_formula(3, P, n);
        const auto& peak = z.memory_peak();
        const double shards = static_cast<double>(z.shard_elems()) * 4;
        INFO("rest " << rest << " formula " << rest_f << "; gathered peak " << peak.gathered << " formula " << f.gathered
                     << "; gradient peak " << peak.grads << " formula " << shards + f.grads << "; total peak " << z.peak_total());
        CHECK(rest / rest_f > 0.95);
        CHECK(rest / rest_f < 1.05);
        CHECK(z.memory().gathered == 0);
        CHECK(z.memory().grads == z.shard_elems() * 4);
        CHECK(static_cast<double>(peak.gathered) / f.gathered > 0.95);
        CHECK(static_cast<double>(peak.gathered) / f.gathered < 1.05);
        CHECK(static_cast<double>(peak.grads) / (shards + f.grads) > 0.95);
        CHECK(static_cast<double>(peak.grads) / (shards + f.grads) < 1.05);
        CHECK(static_cast<double>(z.peak_total()) <= 1.02 * (rest_f + f.gathered + f.grads));
        // two neighbouring layers gathered, not every layer at once (4P, the all-at-once path)
        CHECK(static_cast<double>(peak.gathered) < 0.8 * 4 * P);
      });
    }
}

TEST_CASE("ZeRO-3 per layer: bf16 sends half the bytes of f32") {
  std::uint64_t sent[2] = {0, 0};
  for (int k = 0; k < 2; ++k)
    deep_steps(2, k ? parallel::ZeroPrecision::bf16 : parallel::ZeroPrecision::f32, false,
               [&](ThreadTransport& t, std::uint64_t bytes, auto&, auto&, auto&) {
                 if (t.rank() == 0) sent[k] = bytes;
               });
  INFO("f32 " << sent[0] << " bytes, bf16 " << sent[1]);
  CHECK(static_cast<double>(sent[1]) / static_cast<double>(sent[0]) > 0.48);
  CHECK(static_cast<double>(sent[1]) / static_cast<double>(sent[0]) < 0.52);
}

namespace {
struct Both {  // a layer reaching into two registered layers
  nn::Linear<float>* a;
  nn::Linear<float>* b;
  template <class X>
  auto operator()(X x) {
    return (*b)((*a)(x));
  }
  template <class F>
  void for_each_parameter(F&& f) {
    a->for_each_parameter(f);
    b->for_each_parameter(f);
  }
};
}  // namespace

TEST_CASE("ZeRO-3 per layer: misuse fails with a sentence") {
  comm::run_local(2, [](ThreadTransport& t) {
    using C = Communicator<Ring, ThreadTransport>;
    C c{t};
    const Data data;
    auto ce = [](auto out, TensorView<std::int32_t> y) { return cross_entropy(out, y); };
    {
      Model m;
      parallel::Zero<float, parallel::Zero3, C> z(m.reg, c, kAdam);
      nn::Tanh act;
      Both both{&m.l1, &m.l2};
      CHECK_THROWS_WITH_AS(parallel::zero_layers<std::int32_t>(z, std::tie(m.l1, act, m.l2, both, m.l3), ce),
                           doctest::Contains("unit 'l1' holds parameters of layers 0 and 3"), ValueError);
    }
    {
      Model m;
      nn::Linear<float> outsider(kIn, kHidden, 9);
      parallel::Zero<float, parallel::Zero3, C> z(m.reg, c, kAdam);
      nn::Tanh act;
      CHECK_THROWS_WITH_AS(parallel::zero_layers<std::int32_t>(z, std::tie(outsider, act, m.l2, act, m.l3), ce),
                           doctest::Contains("layer 0's parameter 'weight'"), ValueError);
    }
    {
      Model m;
      CHECK_THROWS_WITH_AS((parallel::Zero<float, parallel::Zero2, C>(m.reg, c, kAdam, {.precision = parallel::ZeroPrecision::bf16})),
                           doctest::Contains("mixed precision (bf16) is implemented for stage 3's per-layer path"), ValueError);
    }
    {
      Model m;
      parallel::Zero<float, parallel::Zero3, C> z(m.reg, c, kAdam, {.precision = parallel::ZeroPrecision::bf16});
      Workspace<> ws;
      CHECK_THROWS_WITH_AS(z.backward([&] { return m.loss(data.x.slice(0, 8), data.y.slice(0, 8)); }, ws),
                           doctest::Contains("use parallel::zero_layers"), ValueError);
    }
  });
}
