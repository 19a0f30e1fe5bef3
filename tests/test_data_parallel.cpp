// DataParallel on the thread transport: p ranks with batch b/p each against one
// rank with batch b (float tolerance), and bit for bit in deterministic mode
// against the same gradients combined in rank order; bucket order; unused
// parameters; accumulation; mismatched models; the distributed sampler.
#include "alloc_counter.hpp"  // first: it replaces operator new for this executable

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <set>
#include <string>
#include <utility>
#include <vector>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/algorithm/tree.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/run_local.hpp>
#include <weft/io/sampler.hpp>
#include <weft/nn/nn.hpp>
#include <weft/parallel/data_parallel.hpp>
#include <weft/weft.hpp>

#include "data_parallel_suite.hpp"

using namespace weft;
using comm::Communicator;
using comm::Ring;
using comm::ThreadTransport;

using namespace dp_suite;

TEST_CASE("p ranks with batch b/p train like one rank with batch b") {
  const Data data;
  const std::vector<float> ref = single_rank_adam(data);
  for (int p : {1, 2, 4}) {
    CAPTURE(p);
    std::vector<std::vector<float>> result(static_cast<std::size_t>(p));
    comm::run_local(p, [&](ThreadTransport& t) { result[static_cast<std::size_t>(t.rank())] = data_parallel(t, data, false); });
    for (int r = 0; r < p; ++r) {
      CHECK(result[static_cast<std::size_t>(r)] == result[0]);  // ranks agree exactly
      check_close(result[static_cast<std::size_t>(r)], ref);
    }
  }
  SUBCASE("without overlap (blocking reductions after backward)") {
    std::vector<std::vector<float>> result(2);
    comm::run_local(2, [&](ThreadTransport& t) {
      result[static_cast<std::size_t>(t.rank())] = data_parallel(t, data, false, false);
    });
    check_close(result[1], ref);
  }
}

TEST_CASE("deterministic mode: bit for bit the per-shard gradients combined in rank order") {
  const Data data;
  for (int p : {2, 3, 4}) {
    for (bool shard : {false, true}) {
      CAPTURE(p);
      CAPTURE(shard);
      const std::vector<float> ref = shards_in_rank_order_sgd(data, p);
      std::vector<std::vector<float>> result(static_cast<std::size_t>(p));
      comm::run_local(p, [&](ThreadTransport& t) {
        result[static_cast<std::size_t>(t.rank())] = data_parallel(t, data, true, true, shard);
      });
      for (int r = 0; r < p; ++r) CHECK(result[static_cast<std::size_t>(r)] == ref);
    }
  }
}

// The sharded update: 1/p of the optimizer pass per rank, values allgathered.
// l1.bias (10 elements) does not divide by 4 (nor by 3, in the deterministic
// case above) and goes through a padded staging buffer; the others are
// reduce-scattered and gathered in place.
TEST_CASE("sharded update: p ranks train like one rank, with and without overlap") {
  const Data data;
  const std::vector<float> ref = single_rank_adam(data);
  for (int p : {1, 2, 4})
    for (bool overlap : {true, false}) {
      CAPTURE(p);
      CAPTURE(overlap);
      std::vector<std::vector<float>> result(static_cast<std::size_t>(p));
      comm::run_local(p, [&](ThreadTransport& t) {
        result[static_cast<std::size_t>(t.rank())] = data_parallel(t, data, false, overlap, true);
      });
      for (int r = 0; r < p; ++r) {
        CHECK(result[static_cast<std::size_t>(r)] == result[0]);
        check_close(result[static_cast<std::size_t>(r)], ref);
      }
    }
}

TEST_CASE("sharded update: an optimizer over other parameters is refused, naming the rank") {
  comm::run_local(2, [&](ThreadTransport& t) {
    Model m, other;
    Communicator<Ring, ThreadTransport> c{t};
    parallel::DataParallel dp(m.reg, c);
    dp.set_shard_update(true);
    nn::SGD<float> wrong(other.reg, {.lr = 0.1f});
    CHECK_THROWS_WITH_AS(dp.step(wrong), doctest::Contains("no backward() yet"), ValueError);
    Data data;
    Workspace<> ws;
    m.reg.zero_grad();
    dp.backward(m.loss(data.x.slice(0, 8), data.y.slice(0, 8)), ws);
    const std::string where = "rank " + std::to_string(t.rank());
    CHECK_THROWS_WITH_AS(dp.step(wrong), doctest::Contains(where.c_str()), ValueError);
    CHECK_THROWS_AS(dp.set_shard_update(false), ValueError);  // buckets are fixed
  });
}

TEST_CASE("buckets: reverse layer order, same on every rank, per-layer communicators") {
  std::vector<std::vector<std::string>> first(2);
  comm::run_local(2, [&](ThreadTransport& t) {
    Model m;
    Communicator<Ring, ThreadTransport> ring{t};
    Communicator<comm::Tree, ThreadTransport> tree{t.split(0, t.rank(), comm::Clock::now() + std::chrono::seconds(10))};
    parallel::DataParallel dp(m.reg, ring, tree);
    dp.layer("l1").use(tree);
    CHECK_THROWS_AS(dp.layer("l9").use(tree), ValueError);
    Data data;
    Workspace<> ws;
    m.reg.zero_grad();
    dp.backward(m.loss(data.x.slice(0, 8), data.y.slice(0, 8)), ws);
    REQUIRE(dp.buckets() == 2);  // l2 through the ring, l1 through the tree
    first[static_cast<std::size_t>(t.rank())] = dp.bucket_names(0);
    CHECK(dp.bucket_names(1) == std::vector<std::string>{"l1.bias", "l1.weight"});
    CHECK_THROWS_AS(dp.layer("l2").use(ring), ValueError);  // too late
  });
  CHECK(first[0] == std::vector<std::string>{"l2.bias", "l2.weight"});
  CHECK(first[1] == first[0]);
}

TEST_CASE("a parameter unused on some ranks only: buckets start in the same order on every rank") {
  for (int p : {2, 3, 4})
    for (bool c_before_b : {false, true})
      for (bool shard : {false, true}) {
        CAPTURE(p);
        CAPTURE(c_before_b);
        CAPTURE(shard);
        std::vector<std::vector<float>> result(static_cast<std::size_t>(p));
        comm::run_local(p, [&](ThreadTransport& t) {
          result[static_cast<std::size_t>(t.rank())] = unused_on_some_ranks(t, c_before_b, shard);
        });
        for (int r = 0; r < p; ++r) check_unused_on_some_ranks(result[static_cast<std::size_t>(r)], p);
      }
}

// The hook's O(1) lookup: every registered parameter finds its own slot (a
// table keyed by address; 40 parameters fill probe chains), a parameter
// outside the registry and a second report of the same one change nothing,
// and buckets start in index order whatever order gradients arrive in.
TEST_CASE("buckets: each hook finds its slot, buckets start in index order") {
  std::vector<Parameter<float>> ps;
  ps.reserve(40);
  nn::Registry<float> reg;
  for (int k = 0; k < 40; ++k) {
    std::string name(1, 'p');  // not "p" + to_string: GCC 12's -Wrestrict false positive
    name += std::to_string(k);
    ps.emplace_back(name, Shape{k % 3 + 1});
    reg.add(ps.back(), ps.back().name);
  }
  parallel::Buckets<float> b;
  b.build(reg, 6 * sizeof(float), 1, [](const std::string&) { return std::size_t(0); });
  REQUIRE(b.size() > 5);
  std::vector<std::size_t> started;
  auto start = [&](std::size_t i) { started.push_back(i); };
  b.begin_pass();
  Parameter<float> stranger("stranger", {2});
  b.ready(stranger, start);
  CHECK(started.empty());
  for (int k = 0; k < 40; ++k) {  // registration order: the last bucket fills first
    ps[static_cast<std::size_t>(k)].grad.fill(float(k));
    b.ready(ps[static_cast<std::size_t>(k)], start);
    b.ready(ps[static_cast<std::size_t>(k)], start);  // a repeat is ignored
    if (k < 39) CHECK(started.empty());  // bucket 0 holds p39
  }
  std::vector<std::size_t> order(b.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  CHECK(started == order);
  b.finish_pass(start);
  CHECK(started == order);  // nothing left to start
  for (std::size_t i = 0; i < b.size(); ++i) {
    const std::span<float> g = b.grads(i);
    for (std::size_t s : b[i].slots) {
      const auto& sl = b.slot(s);
      CHECK(g[sl.offset] == sl.p->grad(0));  // packed where the slot says
    }
  }
}

TEST_CASE("a steady-state data-parallel step allocates nothing on the ranks' threads") {
  const Data data;
  for (bool overlap : {true, false})
    for (bool shard : {false, true}) {
      CAPTURE(overlap);
      CAPTURE(shard);
      std::vector<long> allocs(2, -1);
      comm::run_local(2, [&](ThreadTransport& t) {
        Model m;
        Communicator<Ring, ThreadTransport> c{t};
        parallel::DataParallel dp(m.reg, c);
        dp.set_bucket_bytes(200);  // several buckets, staged and in place
        dp.set_overlap(overlap);
        dp.set_shard_update(shard);
        nn::Adam<float> opt(m.reg, {.lr = 1e-2f});
        Workspace<> ws;
        auto step = [&](int s) {
          auto [lo, hi] = rows(s, t.rank(), 2);
          opt.zero_grad();
          dp.backward(m.loss(data.x.slice(lo, hi), data.y.slice(lo, hi)), ws);
          dp.step(opt);
        };
        step(0);  // the first step builds buckets, workspace and requests
        // the ranks' own threads, not the communicators' progress threads (tests/comm checks those)
        allocs[static_cast<std::size_t>(t.rank())] = alloc_counter::on_this_thread([&] {
          for (int s = 1; s < 6; ++s) step(s);
        });
      });
      CHECK(allocs[0] == 0);
      CHECK(allocs[1] == 0);
    }
  // and the counter does see an allocation on a counting thread
  CHECK(alloc_counter::on_this_thread([] { std::vector<float> v(100); }) == 1);
}

TEST_CASE("an unused parameter and accumulation without communication") {
  comm::run_local(2, [&](ThreadTransport& t) {
    Model m;
    Parameter<float> unused("unused", {3});
    m.reg.add(unused, "unused");
    unused.grad.fill(float(t.rank() + 1));  // accumulated locally: averaged to 1.5
    Communicator<Ring, ThreadTransport> c{t};
    parallel::DataParallel dp(m.reg, c);
    Data data;
    Workspace<> ws;
    m.reg.zero_grad();
    unused.grad.fill(float(t.rank() + 1));
    // Two micro-batches: the first accumulates locally, the second averages the total.
    dp.accumulate(m.loss(data.x.slice(0, 4), data.y.slice(0, 4)), ws);
    dp.backward(m.loss(data.x.slice(4, 8), data.y.slice(4, 8)), ws);
    CHECK(unused.grad(0) == 1.5f);
    // Both ranks used the same rows, so the average over ranks of
    // g(rows 0-3) + g(rows 4-7) is that sum computed locally.
    Model local;
    Workspace<> ws2;
    local.reg.zero_grad();
    backward(local.loss(data.x.slice(0, 4), data.y.slice(0, 4)), ws2);
    backward(local.loss(data.x.slice(4, 8), data.y.slice(4, 8)), ws2);
    for (index_t i = 0; i < kClasses; ++i) CHECK(m.l2.bias.grad(i) == doctest::Approx(local.l2.bias.grad(i)).epsilon(1e-6));
  });
}

namespace {
// Rank `odd` of p builds a wider layer than the others; every rank's message.
std::vector<std::string> model_check_messages(int p, int odd) {
  std::vector<std::string> msgs(static_cast<std::size_t>(p));
  comm::run_local(p, [&](ThreadTransport& t) {
    nn::Linear<float> l(4, t.rank() == odd ? 5 : 3);
    nn::Registry<float> reg;
    reg.add("l", l);
    Communicator<Ring, ThreadTransport> c{t};
    try {
      parallel::DataParallel dp(reg, c);
    } catch (const ValueError& e) {
      msgs[static_cast<std::size_t>(t.rank())] = e.what();
    }
  });
  return msgs;
}
}  // namespace

TEST_CASE("ranks with different models fail on every rank, naming the odd rank out, rank 0 included") {
  for (const auto& c : {std::pair{2, "ranks 0, 1"}, std::pair{0, "ranks 1, 2"}, std::pair{1, "ranks 0, 2"}}) {
    const int odd = c.first;
    const char* const others = c.second;
    CAPTURE(odd);
    const std::string want = "rank " + std::to_string(odd) + " holds different parameter lists (names and shapes) than " + others;
    for (const std::string& m : model_check_messages(3, odd)) {
      CHECK_MESSAGE(m.find(want) != std::string::npos, m);
      CHECK_MESSAGE(m.find("no value is held by most ranks") == std::string::npos, m);
    }
  }
  // Two ranks that differ: no majority, so rank 0 is the reference and the message says so.
  for (const std::string& m : model_check_messages(2, 1))
    CHECK_MESSAGE(m.find("rank 1 holds different parameter lists (names and shapes) than rank 0 (no value is held by most "
                         "ranks") != std::string::npos,
                  m);
}

TEST_CASE("distributed sampler: disjoint, equal, complete, reproducible shards") {
  const index_t n = 103;
  for (auto rem : {io::Remainder::drop, io::Remainder::pad}) {
    std::multiset<index_t> all;
    std::vector<std::vector<index_t>> shards;
    for (int r = 0; r < 4; ++r) {
      io::DistributedSampler s(n, r, 4, 9, rem);
      auto idx = s.indices(1);
      CHECK(static_cast<index_t>(idx.size()) == s.shard_size());
      CHECK(idx == s.indices(1));
      CHECK(idx != s.indices(2));
      all.insert(idx.begin(), idx.end());
      shards.push_back(idx);
    }
    std::set<index_t> distinct(all.begin(), all.end());
    if (rem == io::Remainder::drop) {
      CHECK(all.size() == 100u);
      CHECK(distinct.size() == 100u);  // disjoint
    } else {
      CHECK(all.size() == 104u);
      CHECK(distinct.size() == 103u);  // complete; one sample repeated to pad
    }
  }
  CHECK_THROWS_AS(io::DistributedSampler(10, 4, 4), ValueError);
  // k-fold: each sample validates exactly once
  std::multiset<index_t> val;
  for (int f = 0; f < 5; ++f) {
    auto s = io::kfold(23, 5, f, 1);
    CHECK(s.train.size() + s.validation.size() == 23u);
    val.insert(s.validation.begin(), s.validation.end());
  }
  CHECK(std::set<index_t>(val.begin(), val.end()).size() == 23u);
  CHECK(val.size() == 23u);
  // stratified: class proportions kept
  Tensor<std::int32_t> labels({100});
  for (index_t i = 0; i < 100; ++i) labels.data()[i] = i < 80 ? 0 : 1;
  auto st = io::stratified_split(labels, 0.25, 2);
  int ones = 0;
  for (index_t i : st.validation) ones += labels.data()[i];
  CHECK(st.validation.size() == 25u);
  CHECK(ones == 5);
}
