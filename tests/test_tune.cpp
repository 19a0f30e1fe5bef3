// weft::tune without ranks: search spaces, samplers (grid against naive nested
// loops, random, Sobol against published points and net properties),
// schedulers against naive references fed the same reports, results files.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>
#include <string>
#include <vector>
#include <weft/nn/rng.hpp>
#include <weft/tune/asha.hpp>
#include <weft/tune/fifo.hpp>
#include <weft/tune/pbt.hpp>
#include <weft/tune/results.hpp>
#include <weft/tune/sampler.hpp>
#include <weft/tune/sobol.hpp>
#include <weft/tune/space.hpp>

using namespace weft;
using namespace weft::tune;

namespace {

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

Space mlp_space() {
  Space s;
  s.add("lr", log_uniform(1e-4, 1e-1).grid(4)).add("wd", choice({0.0, 1e-4, 1e-3})).add("hidden", integer(32, 256).grid(3));
  return s;
}

}  // namespace

TEST_CASE("space: bad spaces fail with a sentence") {
  Space s;
  CHECK(contains(error_of([&] { s.add("lr", log_uniform(0, 1)); }), "log_uniform needs a positive lower bound"));
  CHECK(contains(error_of([&] { s.add("x", uniform(2, 1)); }), "lower bound 2 must be below the upper bound 1"));
  CHECK(contains(error_of([&] { s.add("c", choice(std::initializer_list<double>{})); }), "at least one value"));
  CHECK(contains(error_of([&] { s.add("a,b", uniform(0, 1)); }), "is not usable"));
  CHECK(contains(error_of([&] { s.add("opt", choice({"adam", "s,gd"})); }), "comma"));
  CHECK(contains(error_of([&] { s.add("g", uniform(0, 1).grid(0)); }), "at least one point"));
  s.add("x", uniform(0, 1));
  CHECK(contains(error_of([&] { s.add("x", uniform(0, 1)); }), "already a hyperparameter"));
  CHECK(contains(error_of([] { GridSampler g{Space{}}; }), "no hyperparameters"));
  CHECK(contains(error_of([&] { (void)s.at({0.1, 0.2}); }), "2 coordinates for a space of 1"));
  Config c = s.at({0.25});
  CHECK(contains(error_of([&] { (void)c.number("y"); }), "no hyperparameter named 'y'"));
}

TEST_CASE("space: coordinates map to values, bounds included") {
  CHECK(std::get<double>(uniform(2, 4).at(0.25)) == 2.5);
  CHECK(std::get<double>(uniform(2, 4).at(1.0)) == 4);
  CHECK(std::get<double>(log_uniform(1e-4, 1e-2).at(0.5)) == doctest::Approx(1e-3));
  CHECK(std::get<double>(log_uniform(1e-4, 1e-2).at(1.0)) == 1e-2);
  CHECK(std::get<double>(log_uniform(1e-3, 1e-2).at(0.0)) == 1e-3);  // exactly, not exp(log(1e-3))
  CHECK(std::get<double>(log_uniform(1e-3, 1e-2).grid(2).grid_values()[0]) == 1e-3);
  // integer(1, 4): four equal quarters of [0, 1)
  for (double u : {0.0, 0.24, 0.25, 0.5, 0.99, 1.0})
    CHECK(std::get<double>(integer(1, 4).at(u)) == std::min(4.0, 1 + std::floor(u * 4)));
  // log_integer(1, 7): 1 takes log 2 / log 8 = 1/3 of the cube.
  CHECK(std::get<double>(log_integer(1, 7).at(0.33)) == 1);
  CHECK(std::get<double>(log_integer(1, 7).at(0.34)) == 2);
  CHECK(std::get<double>(log_integer(1, 7).at(1.0)) == 7);
  CHECK(std::get<std::string>(choice({"a", "b", "c"}).at(0.7)) == "c");
  CHECK(std::get<std::string>(choice({"a", "b", "c"}).at(1.0)) == "c");
}

TEST_CASE("grid sampler: every combination, in the order of naive nested loops") {
  const Space s = mlp_space();
  GridSampler g(s);
  std::vector<Config> naive;
  const double lrs[] = {1e-4, 1e-3, 1e-2, 1e-1};
  for (double lr : lrs)
    for (double wd : {0.0, 1e-4, 1e-3})
      for (double h : {32.0, 144.0, 256.0}) {
        Config c;
        c.set("lr", lr);
        c.set("wd", wd);
        c.set("hidden", h);
        naive.push_back(c);
      }
  REQUIRE(g.size() == naive.size());
  for (std::size_t i = 0; i < naive.size(); ++i) {
    CAPTURE(i);
    CHECK(g.at(i).number("lr") == doctest::Approx(naive[i].number("lr")).epsilon(1e-12));
    CHECK(g.at(i).number("wd") == naive[i].number("wd"));
    CHECK(g.at(i).number("hidden") == naive[i].number("hidden"));
  }
  // A small integer range is enumerated whole.
  Space t;
  t.add("k", integer(1, 3).grid(5));
  CHECK(GridSampler(t).size() == 3);
}

TEST_CASE("random sampler: portable draws from nn::hash, reproducible, inside the bounds") {
  const Space s = mlp_space();
  RandomSampler a(s, 50, 7), b(s, 50, 7), c(s, 50, 8);
  bool differs = false;
  for (std::size_t i = 0; i < 50; ++i) {
    CHECK(a.at(i) == b.at(i));
    differs |= !(a.at(i) == c.at(i));
    const Config x = a.at(i);
    CHECK(x.number("lr") >= 1e-4);
    CHECK(x.number("lr") <= 1e-1);
    CHECK(x.number("hidden") >= 32);
    CHECK(x.number("hidden") <= 256);
    // Coordinate j of point i is hash(seed, i * d + j) in [0, 1) (documented, so any platform agrees).
    const double u0 = nn::to_unit_double(nn::hash(7, i * 3));
    CHECK(x.number("lr") == std::get<double>(s.params()[0].second.at(u0)));
  }
  CHECK(differs);
  CHECK(contains(error_of([&] { (void)a.at(50); }), "configuration 50 requested of 50"));
}

TEST_CASE("sobol: the published first points of dimensions 1 to 3") {
  // Joe & Kuo's sequence (as SciPy's unscrambled Sobol gives it), points 0..7.
  const double ref[8][3] = {{0, 0, 0},           {0.5, 0.5, 0.5},       {0.75, 0.25, 0.25},   {0.25, 0.75, 0.75},
                            {0.375, 0.375, 0.625}, {0.875, 0.875, 0.125}, {0.625, 0.125, 0.875}, {0.125, 0.625, 0.375}};
  Sobol s(3);
  for (int i = 0; i < 8; ++i) {
    auto p = s.point(static_cast<std::uint64_t>(i));
    for (int j = 0; j < 3; ++j) CHECK(p[static_cast<std::size_t>(j)] == ref[i][j]);
  }
  CHECK(contains(error_of([] { Sobol t(20); }), "1 to 19"));
}

TEST_CASE("sobol: all 19 dimensions match Joe & Kuo's own recursion") {
  // Points 5, 37 and 63 from a separate transcription of Joe & Kuo's sobol.cc
  // (X_i = X_{i-1} ^ V_{c(i-1)}, c = index of the lowest zero bit), fed the
  // same new-joe-kuo-6.21201 rows; Sobol::point uses the direct Gray-code form.
  const std::pair<int, std::vector<double>> ref[] = {
      {5, {0.875, 0.875, 0.125, 0.375, 0.875, 0.625, 0.875, 0.375, 0.375, 0.125, 0.375, 0.875, 0.875, 0.125, 0.875,
           0.375, 0.875, 0.375, 0.375}},
      {37, {0.921875, 0.640625, 0.578125, 0.921875, 0.765625, 0.296875, 0.171875, 0.796875, 0.609375, 0.171875,
            0.015625, 0.078125, 0.578125, 0.859375, 0.109375, 0.484375, 0.796875, 0.421875, 0.046875}},
      {63, {0.015625, 0.796875, 0.359375, 0.453125, 0.859375, 0.140625, 0.578125, 0.140625, 0.828125, 0.578125,
            0.421875, 0.671875, 0.546875, 0.765625, 0.328125, 0.765625, 0.078125, 0.390625, 0.953125}},
  };
  Sobol s(Sobol::max_dimensions);
  for (const auto& r : ref) {
    CAPTURE(r.first);
    CHECK(s.point(static_cast<std::uint64_t>(r.first)) == r.second);
  }
}

TEST_CASE("sobol: every dimension is stratified, dimensions 1-2 form a (0, m, 2)-net") {
  const int m = 8, n = 1 << m;
  Sobol s(Sobol::max_dimensions);
  std::vector<std::vector<double>> pts;
  for (int i = 0; i < n; ++i) pts.push_back(s.point(static_cast<std::uint64_t>(i)));
  // One point in each interval [k/n, (k+1)/n) of every dimension.
  for (int j = 0; j < Sobol::max_dimensions; ++j) {
    std::vector<int> seen(static_cast<std::size_t>(n), 0);
    for (auto& p : pts) ++seen[static_cast<std::size_t>(p[static_cast<std::size_t>(j)] * n)];
    CAPTURE(j);
    CHECK(std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; }));
  }
  // Every elementary box of area 1/n (2^a x 2^(m-a) cells) holds exactly one point.
  for (int a = 0; a <= m; ++a) {
    const int nx = 1 << a, ny = 1 << (m - a);
    std::vector<int> box(static_cast<std::size_t>(n), 0);
    for (auto& p : pts) ++box[static_cast<std::size_t>(static_cast<int>(p[0] * nx) * ny + static_cast<int>(p[1] * ny))];
    CAPTURE(a);
    CHECK(std::all_of(box.begin(), box.end(), [](int c) { return c == 1; }));
  }
}

TEST_CASE("sobol: lower discrepancy than random points, by a naive box count") {
  // Star discrepancy estimated on a 32 x 32 grid of anchored boxes, every pair of dimensions up to 6.
  const int n = 128, d = 6;
  auto discrepancy = [&](const std::vector<std::vector<double>>& pts, int j, int k) {
    double worst = 0;
    for (int a = 1; a <= 32; ++a)
      for (int b = 1; b <= 32; ++b) {
        const double x = a / 32.0, y = b / 32.0;
        int in = 0;
        for (auto& p : pts) in += p[static_cast<std::size_t>(j)] < x && p[static_cast<std::size_t>(k)] < y;
        worst = std::max(worst, std::abs(in / double(n) - x * y));
      }
    return worst;
  };
  Sobol s(d);
  nn::Rng rng(1);
  std::vector<std::vector<double>> sob, rnd;
  for (int i = 0; i < n; ++i) {
    sob.push_back(s.point(static_cast<std::uint64_t>(i)));
    std::vector<double> r(d);
    for (double& v : r) v = rng.uniform_double();
    rnd.push_back(r);
  }
  double sob_worst = 0, rnd_worst = 0;
  for (int j = 0; j < d; ++j)
    for (int k = j + 1; k < d; ++k) {
      sob_worst = std::max(sob_worst, discrepancy(sob, j, k));
      rnd_worst = std::max(rnd_worst, discrepancy(rnd, j, k));
    }
  CHECK(sob_worst < rnd_worst);
  CHECK(sob_worst < 0.08);  // random 128 points sit near 0.1-0.15
}

TEST_CASE("sobol sampler: maps the sequence through the space, skip shifts it") {
  Space s;
  s.add("a", uniform(0, 8)).add("b", uniform(0, 8));
  SobolSampler p(s, 4), q(s, 4, 1);
  CHECK(p.at(2).number("a") == 6);
  CHECK(p.at(2).number("b") == 2);
  CHECK(q.at(1) == p.at(2));
}

// ---- schedulers against naive references --------------------------------------------------

namespace {
// Naive ASHA rung rule: sort the rung's metrics best first; keep the reporter if its metric
// is at least as good as the k-th best, k = max(1, floor(n / eta)).
struct NaiveAsha {
  int r, eta, R;
  Mode mode;
  std::vector<std::vector<double>> rungs;
  bool keep(int epoch, double metric) {
    if (epoch >= R) return false;
    int k = 0;
    for (long long e = r; e < R; e *= eta, ++k) {
      if (e != epoch) continue;
      if (rungs.size() <= static_cast<std::size_t>(k)) rungs.resize(static_cast<std::size_t>(k) + 1);
      auto& v = rungs[static_cast<std::size_t>(k)];
      v.push_back(metric);
      std::vector<double> sorted = v;
      std::sort(sorted.begin(), sorted.end());
      if (mode == Mode::max) std::reverse(sorted.begin(), sorted.end());
      const std::size_t top = std::max<std::size_t>(1, v.size() / static_cast<std::size_t>(eta));
      const double cut = sorted[top - 1];
      return mode == Mode::max ? metric >= cut : metric <= cut;
    }
    return true;
  }
};
}  // namespace

TEST_CASE("asha: rungs at r * eta^k below R") {
  CHECK(Asha({.min_epochs = 1, .eta = 3, .max_epochs = 27}).rungs() == std::vector<int>{1, 3, 9});
  CHECK(Asha({.min_epochs = 2, .eta = 2, .max_epochs = 16}).rungs() == std::vector<int>{2, 4, 8});
  CHECK(contains(error_of([] { Asha a({.eta = 1}); }), "eta must be at least 2"));
}

TEST_CASE("asha: promotes exactly what a naive sort-the-rung reference promotes") {
  for (Mode mode : {Mode::max, Mode::min})
    for (std::uint64_t seed = 1; seed <= 20; ++seed) {
      CAPTURE(seed);
      Asha asha({.min_epochs = 1, .eta = 3, .max_epochs = 27, .mode = mode});
      NaiveAsha naive{1, 3, 27, mode, {}};
      nn::Rng rng(seed);
      // 40 trials, run in an interleaved random order, metrics from a small set (ties happen).
      struct Live {
        std::size_t id;
        int epoch;
        double quality;
      };
      std::vector<Live> live;
      std::size_t next = 0;
      int stops = 0, completes = 0;
      while (next < 40 || !live.empty()) {
        if (next < 40 && (live.size() < 4 || rng.below(3) == 0)) {
          asha.on_start(next, Config{});
          live.push_back({next++, 0, static_cast<double>(rng.below(8))});
        }
        if (live.empty()) continue;
        auto i = static_cast<std::size_t>(rng.below(live.size()));
        Live& t = live[i];
        ++t.epoch;
        const double metric = t.quality + static_cast<double>(rng.below(3)) + t.epoch * 0.125;
        const bool want = naive.keep(t.epoch, metric);
        const Action a = asha.on_report(t.id, t.epoch, metric);
        CHECK((a.kind == Action::go_on) == want);
        if (a.kind == Action::stop) {
          (t.epoch >= 27 ? completes : stops) += 1;
          asha.on_finish(t.id);
          live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
        }
      }
      CHECK(stops + completes == 40);
      CHECK(stops > 0);
    }
}

TEST_CASE("fifo: every trial goes to max_epochs") {
  Fifo f(5);
  for (int e = 1; e < 5; ++e) CHECK(f.on_report(0, e, -1e9).kind == Action::go_on);
  CHECK(f.on_report(0, 5, 1).kind == Action::stop);
}

TEST_CASE("pbt: the bottom quantile exploits the top one, explore perturbs by 0.8 / 1.2 or resamples") {
  Space s;
  s.add("lr", log_uniform(1e-4, 1e-1)).add("h", integer(8, 64)).add("opt", choice({"sgd", "adam", "adamw"}));
  const PbtOptions o{.interval = 2, .quantile = 0.25, .resample_probability = 0.25, .max_epochs = 20, .seed = 5};
  Pbt pbt(s, o), again(s, o);
  RandomSampler smp(s, 8, 3);
  for (std::size_t t = 0; t < 8; ++t) {
    pbt.on_start(t, smp.at(t));
    again.on_start(t, smp.at(t));
  }
  std::vector<double> latest(8, 0);
  std::vector<bool> reported(8, false);
  int exploits = 0, perturbed = 0, resampled = 0;
  nn::Rng rng(9);
  for (int epoch = 1; epoch <= 8; ++epoch)
    for (std::size_t t = 0; t < 8; ++t) {
      const double metric = static_cast<double>(t) + static_cast<double>(rng.below(4));
      const Config before = pbt.config(t);
      latest[t] = metric;
      reported[t] = true;
      // Naive: rank the latest metrics best first (ties: lower index), q = max(1, floor(n / 4)).
      std::vector<std::size_t> order;
      for (std::size_t u = 0; u < 8; ++u)
        if (reported[u]) order.push_back(u);
      std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return latest[a] > latest[b]; });
      const std::size_t q = std::max<std::size_t>(1, order.size() / 4);
      const auto pos = static_cast<std::size_t>(std::find(order.begin(), order.end(), t) - order.begin());
      const bool naive_exploit = epoch % 2 == 0 && order.size() >= 2 && pos >= q && pos >= order.size() - q;
      const Action a = pbt.on_report(t, epoch, metric);
      const Action b = again.on_report(t, epoch, metric);
      CHECK(a.kind == b.kind);  // same reports, same decisions
      CHECK((a.kind == Action::exploit) == naive_exploit);
      if (a.kind != Action::exploit) continue;
      ++exploits;
      CHECK(a.source == b.source);
      CHECK(a.config == b.config);
      const auto spos = static_cast<std::size_t>(std::find(order.begin(), order.end(), a.source) - order.begin());
      CHECK(spos < q);  // from the top quantile
      const Config& from = pbt.config(a.source);
      CHECK(pbt.config(t) == a.config);
      (void)before;
      // lr: x0.8 or x1.2 of the source's (clamped), or a fresh draw inside the bounds.
      const double lr = a.config.number("lr"), src = from.number("lr");
      const bool pert = lr == std::clamp(src * 0.8, 1e-4, 1e-1) || lr == std::clamp(src * 1.2, 1e-4, 1e-1);
      (pert ? perturbed : resampled) += 1;
      CHECK(lr >= 1e-4);
      CHECK(lr <= 1e-1);
      CHECK(a.config.number("h") >= 8);
      CHECK(a.config.number("h") <= 64);
      latest[t] = latest[a.source];  // t now holds the source's weights
    }
  CHECK(exploits > 0);
  CHECK(perturbed > 0);
}

TEST_CASE("pbt: perturbing integers and choices") {
  CHECK(std::get<double>(Pbt::perturb(integer(1, 10), 2.0, true)) == 3);   // round(2.4) = 2: moved by one
  CHECK(std::get<double>(Pbt::perturb(integer(1, 10), 1.0, false)) == 1);  // clamped at the bound
  CHECK(std::get<double>(Pbt::perturb(integer(1, 100), 50.0, true)) == 60);
  const Param c = choice({"a", "b", "c"});
  CHECK(std::get<std::string>(Pbt::perturb(c, std::string("b"), true)) == "c");
  CHECK(std::get<std::string>(Pbt::perturb(c, std::string("a"), false)) == "a");
}

// ---- results ----------------------------------------------------------------------------------

TEST_CASE("results: JSON round trip, CSV columns, best and total epochs") {
  Results r;
  r.search = "grid over x | fifo \"quoted\"";
  r.mode = Mode::max;
  TrialRecord a;
  a.id = 0;
  a.config.set("lr", 0.001);
  a.config.set("opt", std::string("adam"));
  a.reports = {{1, 0.5, 1.25}, {2, 0.75, 2.5}};
  a.status = Status::completed;
  a.group = 1;
  a.start_s = 0.125;
  a.end_s = 2.5;
  TrialRecord b = a;
  b.id = 1;
  b.config.set("lr", 0.1);
  b.reports = {{1, std::nan(""), 3.0}};
  b.status = Status::failed;
  b.error = "loss is NaN, \"diverged\"\nat step 3";
  TrialRecord c = a;
  c.id = 2;
  c.reports = {{1, 0.625, 1.5}};
  c.status = Status::stopped;
  r.trials = {a, b, c};

  CHECK(r.best()->id == 0);
  CHECK(r.total_epochs() == 4);
  const Results back = Results::from_json(r.to_json(), "test");
  CHECK(back.search == r.search);
  REQUIRE(back.trials.size() == 3);
  CHECK(back.trials[0].config == a.config);
  CHECK(back.trials[0].config.items()[0].first == "lr");  // order kept
  CHECK(back.trials[1].error == b.error);
  CHECK(std::isnan(back.trials[1].reports[0].metric));
  CHECK(back.trials[2].status == Status::stopped);
  CHECK(back.trials[0].reports[1].seconds == 2.5);
  CHECK(back.to_json() == r.to_json());

  const std::string csv = r.to_csv();
  CHECK(csv.substr(0, csv.find('\n')) == "trial,status,wall_s,lr,opt,epochs,metric,epoch_1,epoch_2,error");
  CHECK(contains(csv, "0,completed,2.375,0.001,adam,2,0.75,0.5,0.75,\n"));
  CHECK(contains(csv, "\"loss is NaN, \"\"diverged\"\"\nat step 3\""));

  CHECK(contains(error_of([] { (void)Results::from_json("{\"x\": 1}", "f.json"); }), "f.json: not a tune results file"));
  CHECK(contains(error_of([] { (void)Results::from_json("{\"search\": ", "f.json"); }), "f.json"));
  CHECK(contains(error_of([] { (void)Results::read("/nonexistent/r.json"); }), "cannot open"));
}
