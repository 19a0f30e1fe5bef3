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
void check_memory(int n) {
  comm::run_local(n, [&](ThreadTransport& t) {
    using C = Communicator<Ring, ThreadTransport>;
    C c{t};
    BigMlp m;
    const double P = static_cast<double>(m.reg.numel());
    parallel::Zero<float, Stage, C> z(m.reg, c, nn::AdamOptions{.lr = 1e-3f});
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
