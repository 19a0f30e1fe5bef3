// State visiting (nn/state.hpp): the registry, SGD/Adam/AdamW, the RNG, the
// distributed sampler and DataParallel hand their state to one visitor.
// Visiting twice gives the same names in the same order; state copied by
// visiting into freshly built objects continues training bit for bit; a
// restore that cannot be right (all-zero RNG, position past the shard, a
// different shard layout) throws, naming the item.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/run_local.hpp>
#include <weft/io/sampler.hpp>
#include <weft/nn/nn.hpp>
#include <weft/nn/state.hpp>
#include <weft/parallel/data_parallel.hpp>
#include <weft/weft.hpp>

using namespace weft;

namespace {

// Every item as (name, bytes): what a checkpoint file would hold.
struct Saved {
  std::vector<std::string> names;
  std::vector<std::vector<unsigned char>> bytes;
};

struct Save {
  Saved* out;
  void operator()(std::string_view name, TensorView<float> t) {
    REQUIRE(t.is_contiguous());
    put(name, t.data, static_cast<std::size_t>(t.numel()) * sizeof(float));
  }
  template <class S>
    requires std::is_arithmetic_v<S>
  void operator()(std::string_view name, S& x) {
    put(name, &x, sizeof(S));
  }
  void put(std::string_view name, const void* p, std::size_t n) {
    out->names.emplace_back(name);
    const unsigned char* b = static_cast<const unsigned char*>(p);
    out->bytes.emplace_back(b, b + n);
  }
};

// Writes the saved items back, in order, checking names and sizes.
struct Load {
  const Saved* in;
  std::size_t at = 0;
  void operator()(std::string_view name, TensorView<float> t) {
    get(name, t.data, static_cast<std::size_t>(t.numel()) * sizeof(float));
  }
  template <class S>
    requires std::is_arithmetic_v<S>
  void operator()(std::string_view name, S& x) {
    get(name, &x, sizeof(S));
  }
  void get(std::string_view name, void* p, std::size_t n) {
    REQUIRE(at < in->names.size());
    REQUIRE(name == in->names[at]);
    REQUIRE(n == in->bytes[at].size());
    std::memcpy(p, in->bytes[at].data(), n);
    ++at;
  }
};

static_assert(nn::StateVisitor<Save, float>);
static_assert(nn::StateVisitor<Load, float>);

constexpr index_t kN = 40, kIn = 6, kHidden = 8, kClasses = 3, kBatch = 4;

struct Data {
  Tensor<float> x{Shape{kN, kIn}};
  Tensor<std::int32_t> y{Shape{kN}};
  Data() {
    nn::Rng rng(11);
    for (index_t i = 0; i < x.numel(); ++i) x.data()[i] = rng.normal();
    for (index_t i = 0; i < kN; ++i) y.data()[i] = static_cast<std::int32_t>(rng.below(kClasses));
  }
};

// A whole single-rank run: model, optimizer, noise RNG, sampler.
template <class Opt, class Options>
struct Run {
  nn::Linear<float> l1, l2;
  nn::Registry<float> reg;
  Opt opt;
  nn::Rng noise;
  io::DistributedSampler sampler;
  Tensor<float> xb{Shape{kBatch, kIn}};
  Tensor<std::int32_t> yb{Shape{kBatch}};
  Workspace<> ws;

  Run(std::uint64_t seed, const Options& o)
      : l1(kIn, kHidden, seed), l2(kHidden, kClasses, seed + 1), reg(make_reg()), opt(reg, o), noise(seed + 2),
        sampler(kN, 0, 1, seed + 3) {}
  nn::Registry<float> make_reg() {
    nn::Registry<float> r;
    r.add("l1", l1).add("l2", l2);
    return r;
  }

  // One step: the sampler's next batch, plus noise from the RNG. 25 normal
  // draws per step (an odd count), so a Box-Muller spare is pending between
  // steps and the restore must carry it.
  void step(const Data& d) {
    if (sampler.position() + kBatch > sampler.shard_size()) sampler.set_epoch(sampler.epoch() + 1);
    const std::vector<index_t> idx = sampler.indices();
    for (index_t b = 0; b < kBatch; ++b) {
      const index_t row = idx[static_cast<std::size_t>(sampler.position() + b)];
      for (index_t j = 0; j < kIn; ++j) xb.data()[b * kIn + j] = d.x.data()[row * kIn + j] + 0.1f * noise.normal();
      yb.data()[b] = d.y.data()[row];
    }
    (void)noise.normal();  // odd count of draws: a spare stays pending across steps
    sampler.advance(kBatch);
    opt.zero_grad();
    backward(cross_entropy(l2(tanh(l1(xb))), yb), ws);
    opt.step();
  }

  template <class V>
  void visit_state(V& v) {
    nn::visit_part(v, "model", reg);
    nn::visit_part(v, "optimizer", opt);
    nn::visit_part(v, "rng", noise);
    nn::visit_part(v, "sampler", sampler);
  }

  std::vector<float> values() const {
    std::vector<float> out;
    for (const Parameter<float>* p : reg) out.insert(out.end(), p->value.data(), p->value.data() + p->numel());
    return out;
  }
};

template <class R>
Saved save(R& r) {
  Saved s;
  Save v{&s};
  r.visit_state(v);
  return s;
}

template <class R>
void load(R& r, const Saved& s) {
  Load v{&s};
  r.visit_state(v);
  CHECK(v.at == s.names.size());
}

template <class Opt, class Options>
void resume_bit_for_bit(const Options& o, const std::vector<std::string>& state_keys) {
  const Data d;
  Run<Opt, Options> a(1, o);
  for (int s = 0; s < 13; ++s) a.step(d);  // past an epoch boundary (10 batches per epoch)
  const Saved first = save(a), again = save(a);
  CHECK(first.names == again.names);  // visiting twice: same names, same order
  CHECK(first.bytes == again.bytes);
  // The names a checkpoint sees.
  std::vector<std::string> expected{"model.l1.weight", "model.l1.bias", "model.l2.weight", "model.l2.bias",
                                    "optimizer.step", "optimizer.lr"};
  for (const char* p : {"l1.weight", "l1.bias", "l2.weight", "l2.bias"})
    for (const std::string& k : state_keys) expected.push_back(std::string("optimizer.") + p + "." + k);
  for (const char* n : {"rng.state0", "rng.state1", "rng.state2", "rng.state3", "rng.spare", "rng.has_spare",
                        "sampler.seed", "sampler.epoch", "sampler.position"})
    expected.emplace_back(n);
  CHECK(first.names == expected);

  Run<Opt, Options> b(99, o);  // built the same way, other seeds: every item differs until restored
  CHECK(b.values() != a.values());
  load(b, first);
  CHECK(save(b).bytes == first.bytes);
  for (int s = 0; s < 12; ++s) {
    a.step(d);
    b.step(d);
  }
  CHECK(a.values() == b.values());  // bit for bit
  CHECK(save(a).bytes == save(b).bytes);
  CHECK(a.noise.next_u64() == b.noise.next_u64());
}

}  // namespace

TEST_CASE("state visiting: a run restored into fresh objects continues bit for bit") {
  SUBCASE("SGD, Nesterov momentum") {
    resume_bit_for_bit<nn::SGD<float>>(nn::SGDOptions{.lr = 0.05f, .momentum = 0.9f, .nesterov = true},
                                       {"momentum_buffer"});
  }
  SUBCASE("SGD without momentum keeps no tensors") {
    resume_bit_for_bit<nn::SGD<float>>(nn::SGDOptions{.lr = 0.05f}, {});
  }
  SUBCASE("Adam") { resume_bit_for_bit<nn::Adam<float>>(nn::AdamOptions{.lr = 1e-2f}, {"exp_avg", "exp_avg_sq"}); }
  SUBCASE("AdamW") {
    resume_bit_for_bit<nn::AdamW<float>>(nn::AdamWOptions{.lr = 1e-2f, .weight_decay = 0.1f}, {"exp_avg", "exp_avg_sq"});
  }
}

namespace {
// Writes `value` into the scalar named `name` (every scalar when name is empty).
struct SetScalar {
  std::string_view name;
  double value;
  void operator()(std::string_view, TensorView<float>) const {}
  template <class S>
    requires std::is_arithmetic_v<S>
  void operator()(std::string_view n, S& x) const {
    if (name.empty() || n == name) x = static_cast<S>(value);
  }
};
}  // namespace

TEST_CASE("state visiting: restores that cannot be right throw, naming the item") {
  nn::Rng rng(5);
  SetScalar zero{"", 0.0};
  CHECK_THROWS_WITH_AS(rng.visit_state(zero), doctest::Contains("all-zero state"), ValueError);
  CHECK(rng.next_u64() == nn::Rng(5).next_u64());  // unchanged by the failed restore

  io::DistributedSampler s(10, 0, 2, 3);
  SetScalar far{"position", 1000.0};
  CHECK_THROWS_WITH_AS(s.visit_state(far), doctest::Contains("restoring position 1000"), ValueError);
  CHECK(s.position() == 0);
  CHECK_THROWS_AS(s.advance(6), ValueError);  // a shard of 5
  s.advance(5);
  CHECK(s.position() == 5);

  nn::Linear<float> l(3, 2, 1);
  nn::Registry<float> reg;
  reg.add("l", l);
  nn::Adam<float> adam(reg);
  SetScalar negative{"step", -1.0};
  CHECK_THROWS_WITH_AS(adam.visit_state(negative), doctest::Contains("cannot be negative"), ValueError);
}

// DataParallel on 2 and 3 thread ranks, sharded and not: the strategy's state
// (configuration and shard layout) with the model's and the optimizer's,
// copied into a DataParallel built afresh on the same communicator.
TEST_CASE("state visiting: data-parallel training resumes bit for bit; a different layout is refused") {
  using comm::Communicator;
  using comm::Ring;
  using comm::ThreadTransport;
  const Data d;
  for (int p : {2, 3})
    for (bool shard : {false, true}) {
      CAPTURE(p);
      CAPTURE(shard);
      comm::run_local(p, [&](ThreadTransport& t) {
        Communicator<Ring, ThreadTransport> c{t};
        struct Model {
          nn::Linear<float> l1, l2;
          nn::Registry<float> reg;
          explicit Model(std::uint64_t seed) : l1(kIn, kHidden, seed), l2(kHidden, kClasses, seed + 1) {
            reg.add("l1", l1).add("l2", l2);
          }
        };
        auto make = [&](auto& dp) {
          dp.set_bucket_bytes(64 * sizeof(float));  // several buckets; l1.bias pads when sharded over 3
          dp.set_shard_update(shard);
        };
        Model ma(1), mb(7);
        parallel::DataParallel dpa(ma.reg, c);
        make(dpa);
        nn::Adam<float> oa(ma.reg, {.lr = 1e-2f});
        Workspace<> ws;
        auto step = [&](Model& m, auto& dp, auto& opt, int s) {
          const index_t lo = (s * kBatch * p + t.rank() * kBatch) % kN;
          opt.zero_grad();
          dp.backward(cross_entropy(m.l2(tanh(m.l1(d.x.slice(lo, lo + kBatch)))), d.y.slice(lo, lo + kBatch)), ws);
          dp.step(opt);
        };
        for (int s = 0; s < 4; ++s) step(ma, dpa, oa, s);
        auto visit_all = [](Model& m, auto& dp, auto& opt, auto& v) {
          nn::visit_part(v, "model", m.reg);
          nn::visit_part(v, "optimizer", opt);
          nn::visit_part(v, "dp", dp);
        };
        Saved first, again;
        Save sv1{&first}, sv2{&again};
        visit_all(ma, dpa, oa, sv1);
        visit_all(ma, dpa, oa, sv2);
        CHECK(first.names == again.names);
        CHECK(first.bytes == again.bytes);
        CHECK(std::count(first.names.begin(), first.names.end(), "dp.shard_update") == 1);
        CHECK((std::find(first.names.begin(), first.names.end(), "dp.shards.pieces") != first.names.end()) == shard);

        parallel::DataParallel dpb(mb.reg, c);  // broadcasts rank 0's fresh values: overwritten below
        make(dpb);
        nn::Adam<float> ob(mb.reg, {.lr = 1e-2f});
        Load ld{&first};
        visit_all(mb, dpb, ob, ld);
        CHECK(ld.at == first.names.size());
        for (int s = 4; s < 8; ++s) {
          step(ma, dpa, oa, s);
          step(mb, dpb, ob, s);
        }
        for (std::size_t k = 0; k < ma.reg.size(); ++k)
          CHECK(ma.reg[k].value.to_vector() == mb.reg[k].value.to_vector());  // bit for bit

        // Restoring into a DataParallel built differently names what differs.
        Model mc(3);
        parallel::DataParallel dpc(mc.reg, c);
        dpc.set_bucket_bytes(64 * sizeof(float));
        dpc.set_shard_update(!shard);
        Saved dp_only;
        Save sv{&dp_only};
        dpa.visit_state(sv);
        Load bad{&dp_only};
        CHECK_THROWS_WITH_AS(dpc.visit_state(bad), doctest::Contains("restoring 'shard_update'"), ValueError);
      });
    }
}
