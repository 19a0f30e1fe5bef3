// Pipeline parallelism (include/weft/parallel/pipeline/, autodiff/split.hpp):
// schedules as data and validate() (good and broken schedules), the B/W split
// against the full backward and finite differences, the pipeline on thread
// ranks against one rank's gradient accumulation (bitwise), faults, tracing,
// and pipeline x data parallelism.
#include <doctest/doctest.h>

#include <cmath>
#include <weft/comm/run_local.hpp>

#include "pipeline_suite.hpp"

using namespace weft;
namespace pp = weft::parallel::pipeline;
using pipe_suite::Data;

namespace {

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

std::vector<pp::Schedule> all_schedules(int p, int m) {
  std::vector<pp::Schedule> out{pp::GPipe{}.build(p, m), pp::OneFOneB{}.build(p, m), pp::ZeroBubbleH1{}.build(p, m)};
  if (m <= p || m % p == 0) out.push_back(pp::Interleaved1F1B<2>{}.build(p, m)), out.push_back(pp::Interleaved1F1B<3>{}.build(p, m));
  return out;
}

pp::StageCosts unit_costs(const pp::Schedule& s, double f, double b, double w) {
  const std::size_t n = static_cast<std::size_t>(s.stages());
  const double v = s.chunks;
  return {std::vector<double>(n, f / v), std::vector<double>(n, b / v), std::vector<double>(n, w / v), 0};
}

}  // namespace

TEST_CASE("schedules: every policy validates for p = 1..5 and m = 1..16, each F, B, W once per stage and micro-batch") {
  for (int p = 1; p <= 5; ++p)
    for (int m : {1, 2, 3, 4, 5, 7, 8, 16})
      for (const pp::Schedule& s : all_schedules(p, m)) {
        CAPTURE(s.name);
        CAPTURE(p);
        CAPTURE(m);
        pp::ScheduleReport rep;
        CHECK_NOTHROW(rep = pp::validate(s));
        int computes = 0;
        for (const auto& list : s.actions)
          for (const pp::Action& a : list) computes += pp::is_compute(a.op);
        CHECK(computes == s.stages() * m * (s.split ? 3 : 2));
      }
}

TEST_CASE("schedules: activation bounds (GPipe m on every rank; 1F1B at most p - r on rank r; ZB-H1 at most p)") {
  for (int p : {2, 3, 4})
    for (int m : {1, 4, 8, 16}) {
      CAPTURE(p);
      CAPTURE(m);
      const auto g = pp::validate(pp::GPipe{}.build(p, m));
      const auto o = pp::validate(pp::OneFOneB{}.build(p, m));
      const auto z = pp::validate(pp::ZeroBubbleH1{}.build(p, m));
      for (int r = 0; r < p; ++r) {
        CHECK(g.peak(r) == m);
        CHECK(o.peak(r) == std::min(p - r, m));
        CHECK(z.peak(r) <= std::min(p, m));  // W of micro-batch i waits for the B of i + r
      }
      CHECK(z.peak(0) == std::min(p, m));
      CHECK(o.peak(0) <= p);
    }
}

TEST_CASE("schedules: simulated bubbles are the formulas, and ZB-H1's is at most half of 1F1B's") {
  for (int p : {2, 4})
    for (int m : {4, 8, 16}) {
      CAPTURE(p);
      CAPTURE(m);
      // Uniform stages, B = 2F: GPipe and 1F1B idle (p-1)/(m+p-1) of the time.
      for (const pp::Schedule& s : {pp::GPipe{}.build(p, m), pp::OneFOneB{}.build(p, m)}) {
        const pp::Trace tr = pp::simulate(s, unit_costs(s, 1, 2, 0));
        CHECK(tr.bubble() == doctest::Approx(pp::formula_bubble(p, m)).epsilon(1e-12));
        CHECK(tr.makespan() == doctest::Approx(3.0 * (m + p - 1)));
      }
      // Interleaving over v chunks shrinks the warm-up: (p-1)/v of the stage time, i.e. (p-1)/(v m + p - 1).
      if (m % p == 0) {
        const pp::Schedule s = pp::Interleaved1F1B<2>{}.build(p, m);
        const pp::Trace tr = pp::simulate(s, unit_costs(s, 1, 2, 0));
        CHECK(tr.bubble() == doctest::Approx(pp::formula_bubble(p, m, 2)).epsilon(1e-12));
      }
      // ZB-H1 with F = B = W (the paper's setting) against 1F1B with B+W = 2F.
      const pp::Schedule z = pp::ZeroBubbleH1{}.build(p, m), o = pp::OneFOneB{}.build(p, m);
      const double rz = pp::simulate(z, unit_costs(z, 1, 1, 1)).bubble(), ro = pp::simulate(o, unit_costs(o, 1, 2, 0)).bubble();
      CHECK(rz <= 0.5 * ro);
      // The paper's ZB-H1 bubble, (p-1)(F+B-W) of idle time per rank.
      CHECK(rz == doctest::Approx((p - 1.0) / (3.0 * m + p - 1)).epsilon(1e-12));
      MESSAGE("p=", p, " m=", m, " bubble 1F1B ", ro, " ZB-H1 ", rz);
    }
}

TEST_CASE("validate: a broken schedule fails with a sentence naming the first blocked action") {
  SUBCASE("a wait cycle: rank 0 waits for a gradient rank 1 computes only after an activation rank 0 sends later") {
    pp::Schedule s = pp::GPipe{}.build(2, 2);
    s.name = "broken";
    using pp::Op;
    s.actions[0] = {{Op::F, 0, 0}, {Op::send_act, 0, 0}, {Op::recv_grad, 0, 0}, {Op::B, 0, 0},
                    {Op::F, 1, 0}, {Op::send_act, 1, 0}, {Op::recv_grad, 1, 0}, {Op::B, 1, 0}};
    const std::string e = error_of([&] { pp::validate(s); });
    CHECK(e.find("schedule 'broken' deadlocks: rank 0, action 2 (recv the gradient of micro-batch 0 from stage 1 (rank 1) on "
                 "stage 0) is blocked; rank 1 sends it only at its action 5") == 0);
    CHECK(e.find("rank 1, action 2 (recv the activation of micro-batch 1 from stage 0 (rank 0) on stage 1)") != std::string::npos);
    CHECK(e.find("a wait cycle") != std::string::npos);
    MESSAGE(e);
  }
  SUBCASE("a missing send") {
    pp::Schedule s = pp::OneFOneB{}.build(2, 4);
    auto& l = s.actions[0];
    l.erase(std::find(l.begin(), l.end(), pp::Action{pp::Op::send_act, 2, 0}));
    CHECK(error_of([&] { pp::validate(s); }) ==
          "schedule '1F1B': rank 0 never runs send the activation of micro-batch 2 to stage 1 (rank 1) on stage 0");
  }
  SUBCASE("a forward before its input arrives") {
    pp::Schedule s = pp::OneFOneB{}.build(2, 2);
    std::swap(s.actions[1][0], s.actions[1][1]);  // F before recv_act
    CHECK(error_of([&] { pp::validate(s); }) ==
          "schedule '1F1B': rank 1, action 0 (F of micro-batch 0 on stage 1) comes before recv the activation of micro-batch 0 "
          "from stage 0 (rank 0) on stage 1, which brings its input");
  }
  SUBCASE("interleaving with a ragged last group of micro-batches is refused (Megatron's rule)") {
    CHECK(error_of([] { pp::Interleaved1F1B<3>{}.build(4, 5); }) ==
          "Interleaved1F1B<3>: the micro-batch count (5) must be a multiple of the pipeline's ranks (4) or at most 4, as in "
          "Megatron-LM's interleaved schedule");
  }
  SUBCASE("duplicates, ranges, W without a split, wrong rank count") {
    pp::Schedule s = pp::GPipe{}.build(2, 2);
    s.actions[0].push_back({pp::Op::F, 1, 0});
    CHECK(error_of([&] { pp::validate(s); }).find("rank 0, action 8 (F of micro-batch 1 on stage 0) appears twice (also action 2)") !=
          std::string::npos);
    s = pp::GPipe{}.build(2, 2);
    s.actions[1][1].mb = 5;
    CHECK(error_of([&] { pp::validate(s); }) == "schedule 'GPipe': rank 1, action 1 (F): micro-batch 5 is out of range (m = 2)");
    s = pp::GPipe{}.build(2, 2);
    s.actions[1].push_back({pp::Op::W, 0, 0});
    CHECK(error_of([&] { pp::validate(s); }).find("a W action in a schedule whose B includes the weight gradient") != std::string::npos);
    s = pp::GPipe{}.build(2, 2);
    s.actions.pop_back();
    CHECK(error_of([&] { pp::validate(s); }) == "schedule 'GPipe': has action lists for 1 ranks, the pipeline has 2");
    s = pp::ZeroBubbleH1{}.build(2, 2);
    auto& l = s.actions[1];
    l.erase(std::find(l.begin(), l.end(), pp::Action{pp::Op::W, 1, 0}));
    CHECK(error_of([&] { pp::validate(s); }) == "schedule 'ZeroBubbleH1': rank 1 never runs W (weight gradient) of micro-batch 1 on stage 1");
  }
}

TEST_CASE("trace: ASCII timeline and Chrome trace JSON of a simulated 1F1B") {
  const pp::Schedule s = pp::OneFOneB{}.build(2, 3);
  const pp::Trace tr = pp::simulate(s, unit_costs(s, 1, 2, 0));
  const std::string a = pp::ascii_timeline(tr, 24);
  // 1F1B on 2 ranks, m = 3, F = 1, B = 2 -> makespan 12: rank 0 idles 2 units after F0 F1... (24 columns).
  CHECK(a ==
        "rank 0 |FFFF....BBBBFFBBBB..BBBB|\n"
        "       |0011    0000221111  2222|\n"
        "rank 1 |..FFBBBBFFBBBBFFBBBB....|\n"
        "       |  000000111111222222    |\n");
  MESSAGE("\n", a);
  const std::string j = pp::chrome_trace_json(tr, "1F1B");
  CHECK(j.find("\"traceEvents\"") != std::string::npos);
  CHECK(j.find("{\"name\":\"F0\",\"cat\":\"F\",\"ph\":\"X\",\"pid\":0,\"tid\":0,\"ts\":0.000,\"dur\":1000000.000") != std::string::npos);
}

// ---------------------------------------------------------------- the B/W split

TEST_CASE("split backward: B then W equals the full backward bit for bit; W holds the weight gemms and bias sums") {
  pipe_suite::Model model = pipe_suite::make_model();
  auto stages = pp::cut<2, 4, 6>(model);
  auto& mid = std::get<1>(stages);  // Block, Block: two Linear layers
  nn::Registry<float> reg;
  reg.add("", mid);
  Tensor<float> x(Shape{8, pipe_suite::kHidden}), seed(Shape{8, pipe_suite::kHidden});
  nn::Rng rng(5);
  for (index_t i = 0; i < x.numel(); ++i) x.data()[i] = rng.normal(), seed.data()[i] = rng.normal();

  // Reference: vjp of the whole stage (input gradient, and parameter gradients into .grad).
  reg.zero_grad();
  auto [dx_ref] = vjp([&](auto a) { return mid(a); }, seed, x);
  const std::vector<float> g_ref = pipe_suite::flat(reg, true);

  reg.zero_grad();
  auto build = [&](auto a) { return mid(a); };
  SplitBackward<split_expr_t<decltype(build), float, 1>, 1> sb;
  Tensor<float> dx(x.shape());
  sb.forward(build, x.view());
  sb.backward_input(seed.view(), dx.view());
  CHECK(sb.deferred() == 4);  // two weight gemms and two bias sums wait for W
  for (const char* name : {"2.weight", "3.weight", "2.bias", "3.bias"})
    for (index_t i = 0; i < reg.at(name).numel(); ++i) REQUIRE(reg.at(name).grad.data()[i] == 0.0f);
  CHECK(std::memcmp(dx.data(), dx_ref.data(), x.bytes()) == 0);
  sb.backward_weights();
  CHECK(sb.deferred() == 0);
  bool bias_done = false;
  for (index_t i = 0; i < reg.at("3.bias").numel(); ++i) bias_done = bias_done || reg.at("3.bias").grad.data()[i] != 0.0f;
  CHECK(bias_done);
  CHECK(pipe_suite::bitwise_equal(pipe_suite::flat(reg, true), g_ref));
  CHECK_THROWS_WITH(sb.backward_weights(), "SplitBackward: backward_weights() twice for one forward");

  // F into a caller's buffer (a pipeline's send buffer): the same value, the
  // same gradients; a buffer of another shape is refused before anything runs.
  Tensor<float> y_ref(Shape{8, pipe_suite::kHidden}), y_into(Shape{8, pipe_suite::kHidden});
  std::memcpy(y_ref.data(), sb.forward(build, x.view()).data, y_ref.bytes());
  CHECK(sb.forward(build, x.view(), y_into.view()).data == y_into.data());
  CHECK(std::memcmp(y_into.data(), y_ref.data(), y_ref.bytes()) == 0);
  reg.zero_grad();
  sb.backward_input(seed.view(), dx.view());
  sb.backward_weights();
  CHECK(pipe_suite::bitwise_equal(pipe_suite::flat(reg, true), g_ref));
  Tensor<float> wrong(Shape{8, pipe_suite::kHidden + 1});
  CHECK_THROWS_WITH(sb.forward(build, x.view(), wrong.view()),
                    doctest::Contains("SplitBackward: the output buffer has shape (8, 17), the output has (8, 16)"));
  CHECK_THROWS_WITH(sb.backward_input(seed.view(), dx.view()), "SplitBackward: backward_input() before forward()");
}

TEST_CASE("split backward: input and weight gradients against central differences (double)") {
  nn::Linear<double> l1(5, 7, 1), l2(7, 3, 2);
  Tensor<double> x(Shape{4, 5}), seed(Shape{4, 3});
  nn::Rng rng(9);
  for (index_t i = 0; i < x.numel(); ++i) x.data()[i] = rng.normal();
  for (index_t i = 0; i < seed.numel(); ++i) seed.data()[i] = rng.normal();
  auto build = [&](auto a) { return l2(tanh(l1(a))); };
  SplitBackward<split_expr_t<decltype(build), double, 1>, 1> sb;
  Tensor<double> dx(x.shape());
  l1.weight.zero_grad(), l1.bias.zero_grad(), l2.weight.zero_grad(), l2.bias.zero_grad();
  sb.forward(build, x.view());
  sb.backward_input(seed.view(), dx.view());
  sb.backward_weights();
  // <seed, f(x)> as a function of one number.
  auto objective = [&] {
    Tensor<double> y(Shape{4, 3});
    assign(y.view(), l2(tanh(l1(x))));
    double s = 0;
    for (index_t i = 0; i < y.numel(); ++i) s += y.data()[i] * seed.data()[i];
    return s;
  };
  auto fd = [&](double& v) {
    const double eps = 1e-6, keep = v;
    v = keep + eps;
    const double hi = objective();
    v = keep - eps;
    const double lo = objective();
    v = keep;
    return (hi - lo) / (2 * eps);
  };
  for (index_t i = 0; i < x.numel(); ++i) CHECK(dx.data()[i] == doctest::Approx(fd(x.data()[i])).epsilon(1e-6));
  for (Parameter<double>* p : {&l1.weight, &l1.bias, &l2.weight, &l2.bias})
    for (index_t i = 0; i < p->numel(); ++i) CHECK(p->grad.data()[i] == doctest::Approx(fd(p->value.data()[i])).epsilon(1e-6));
}

TEST_CASE("split backward: a loss at the root (cross-entropy, and a full mean) seeded with a scale") {
  nn::Linear<float> l(6, 3, 4);
  Tensor<float> x(Shape{8, 6});
  Tensor<std::int32_t> y(Shape{8});
  nn::Rng rng(2);
  for (index_t i = 0; i < x.numel(); ++i) x.data()[i] = rng.normal();
  for (index_t i = 0; i < 8; ++i) y.data()[i] = static_cast<std::int32_t>(rng.below(3));
  Workspace<> ws;
  Tensor<float> seed(Shape{});
  seed.data()[0] = 0.25f;
  auto check = [&](auto build, auto full) {
    l.weight.zero_grad(), l.bias.zero_grad();
    const float want = backward(full(), ws).item();
    std::vector<float> g;
    for (Parameter<float>* p : {&l.weight, &l.bias})
      for (index_t i = 0; i < p->numel(); ++i) g.push_back(p->grad.data()[i] * 0.25f);
    l.weight.zero_grad(), l.bias.zero_grad();
    SplitBackward<split_expr_t<decltype(build), float, 0>, 0> sb;
    sb.forward(build, x.view());
    const float got = sb.backward_input(seed.view()).item();
    sb.backward_weights();
    CHECK(got == want);
    std::vector<float> h;
    for (Parameter<float>* p : {&l.weight, &l.bias})
      for (index_t i = 0; i < p->numel(); ++i) h.push_back(p->grad.data()[i]);
    CHECK(pipe_suite::bitwise_equal(g, h));
  };
  check([&](auto a) { return cross_entropy(l(a), y); }, [&] { return cross_entropy(l(x), y); });
  check([&](auto a) { return mean(square(l(a))); }, [&] { return mean(square(l(x))); });
}

// ---------------------------------------------------------------- the pipeline on thread ranks

TEST_CASE("pipeline, threads: every schedule, p = 2 and 4, m = 1, 4, 8: gradients and 20 steps bitwise one rank's") {
  const Data data;
  for (int p : {2, 4}) {
    std::vector<std::string> errs(static_cast<std::size_t>(p));
    comm::run_local(p, [&](comm::ThreadTransport t) { errs[static_cast<std::size_t>(t.rank())] = pipe_suite::check_all_schedules(t, data, 20); });
    for (const std::string& e : errs) CHECK_MESSAGE(e.empty(), e);
  }
}

TEST_CASE("pipeline, threads: messages copied (zero_copy = false) train bitwise like one rank too") {
  // (zero-copy, the default on threads, is what the test above runs)
  const Data data;
  std::vector<std::string> errs(2);
  comm::run_local(2, [&](comm::ThreadTransport t) {
    for (int m : {1, 4}) {
      std::vector<int> mine;
      pipe_suite::Reference got = pipe_suite::run_pipeline<2>(t, pp::ZeroBubbleH1{}, data, m, 5, mine, {.zero_copy = false});
      pipe_suite::Reference want = pipe_suite::reference<2>(data, m, 5, mine);
      if (!pipe_suite::bitwise_equal(got.grads, want.grads) || !pipe_suite::bitwise_equal(got.values, want.values))
        errs[static_cast<std::size_t>(t.rank())] = "m=" + std::to_string(m) + " rank " + std::to_string(t.rank()) + " differs from one rank";
    }
  });
  for (const std::string& e : errs) CHECK_MESSAGE(e.empty(), e);
}

TEST_CASE("pipeline, threads: Sequential cut points and a measured trace; the bubble and activations are reported") {
  const Data data;
  std::string ascii, json;
  double bubble = -1;
  int peak0 = -1;
  comm::run_local(2, [&](comm::ThreadTransport t) {
    pipe_suite::Model model = pipe_suite::make_model();
    auto pipe = pp::make_pipeline<float, std::int32_t>(t, pp::OneFOneB{}, 4, pp::cut<4>(model), pipe_suite::loss_fn(),
                                                       {.trace = true});
    for (int s = 0; s < 3; ++s) pipe.step(data.xs(s), data.ys(s));  // the trace of the last step (the first one allocates)
    const pp::Trace tr = pipe.gather_trace();
    if (t.rank() == 0) {
      ascii = pp::ascii_timeline(tr, 64);
      json = pp::chrome_trace_json(tr, "1F1B");
      bubble = tr.bubble();
      peak0 = pipe.peak_activations();
      CHECK(pipe.peak_activation_bytes() > 0);  // (one thread's check)
    }
    // A split schedule's W takes scratch (the bias sums) from the stash's own
    // workspace; the live count must not fall below zero (it once lost the
    // scratch's bytes at every W and wrapped around to 2^64 - a few bytes).
    auto zb = pp::make_pipeline<float, std::int32_t>(t, pp::ZeroBubbleH1{}, 4, pp::cut<4>(model), pipe_suite::loss_fn());
    for (int s = 0; s < 20; ++s) {
      zb.step(data.xs(s), data.ys(s));
      CHECK(zb.peak_activation_bytes() > 0);
      CHECK(zb.peak_activation_bytes() < (std::size_t(1) << 30));
    }
  });
  MESSAGE("\n", ascii);
  CHECK(ascii.find("rank 0 |") == 0);
  CHECK(ascii.find("rank 1 |") != std::string::npos);
  CHECK(json.find("\"tid\":1") != std::string::npos);
  CHECK(bubble >= 0);
  CHECK(bubble < 1);
  CHECK(peak0 == 2);
}

TEST_CASE("pipeline, threads: errors name the stage, micro-batch, direction and peer") {
  const Data data;
  SUBCASE("a deadline: the last stage never runs its step; later steps are refused") {
    std::string err, again;
    comm::run_local(2, [&](comm::ThreadTransport t) {
      pipe_suite::Model model = pipe_suite::make_model();
      auto pipe = pp::make_pipeline<float, std::int32_t>(t, pp::GPipe{}, 4, pp::cut<4>(model), pipe_suite::loss_fn(),
                                                         {.timeout = std::chrono::milliseconds(300)});
      if (t.rank() == 0) {
        err = error_of([&] { pipe.step(data.xs(0), data.ys(0)); });
        again = error_of([&] { pipe.step(data.xs(1), data.ys(1)); });
      } else {
        std::this_thread::sleep_for(std::chrono::seconds(2));
      }
    });
    CHECK(err == "stage 0 waited 0.3 s for the gradient of micro-batch 0 from stage 1 (rank 1) (step 1)");
    CHECK(again == "Pipeline (rank 0): an earlier step failed (" + err + "); the stages are out of step, so later steps are refused");
  }
  SUBCASE("ranks that disagree on the micro-batch shape: the header names both sides") {
    std::string err;
    try {
      comm::run_local(2, [&](comm::ThreadTransport t) {
        pipe_suite::Model model = pipe_suite::make_model();
        auto pipe = pp::make_pipeline<float, std::int32_t>(t, pp::OneFOneB{}, 2, pp::cut<4>(model), pipe_suite::loss_fn(),
                                                           {.timeout = std::chrono::seconds(5)});
        const index_t rows = t.rank() == 0 ? 32 : 64;  // rank 1 believes in micro-batches of 32 rows
        pipe.step(data.x.slice(0, rows), data.y.slice(0, rows));
      });
    } catch (const std::exception& e) {
      err = e.what();
    }
    CHECK(err ==
          "stage 1 (rank 1) expected the activation of micro-batch 0 from stage 0 (rank 0) of step 1 (512 elements) and received "
          "the activation of micro-batch 0 from stage 0 for stage 1 of step 1 (256 elements): the ranks run different schedules "
          "or shapes");
  }
  SUBCASE("ranks that disagree on zero-copy messages: the receiver names the option") {
    std::string err1;
    comm::run_local(2, [&](comm::ThreadTransport t) {
      pipe_suite::Model model = pipe_suite::make_model();
      pp::PipelineOptions o{.timeout = std::chrono::seconds(5)};
      o.zero_copy = t.rank() == 0;  // rank 0 sends addresses, rank 1 expects copies
      auto pipe = pp::make_pipeline<float, std::int32_t>(t, pp::OneFOneB{}, 2, pp::cut<4>(model), pipe_suite::loss_fn(), o);
      const std::string e = error_of([&] { pipe.step(data.xs(0), data.ys(0)); });
      if (t.rank() == 1) err1 = e;
    });
    CHECK(err1 == "stage 1 (rank 1) received the activation of micro-batch 0 from stage 0 (rank 0) as an address but copies "
                  "messages: the ranks disagree on PipelineOptions::zero_copy");
  }
  SUBCASE("the schedule does not fit the model or the transport") {
    comm::run_local(2, [&](comm::ThreadTransport t) {
      pipe_suite::Model model = pipe_suite::make_model();
      const std::string e = error_of([&] {
        auto pipe = pp::make_pipeline<float, std::int32_t>(t, pp::OneFOneB{}, 4, pp::cut<2, 4, 6>(model), pipe_suite::loss_fn());
      });
      if (t.rank() == 0)
        CHECK(e == "Pipeline: schedule '1F1B' on 2 ranks with 1 chunks each runs 2 stages, the model is cut into 4");
      const std::string e2 = error_of([&] {
        auto pipe = pp::make_pipeline<float, std::int32_t>(t, pp::OneFOneB{}, 3, pp::cut<4>(model), pipe_suite::loss_fn());
        pipe.step(data.xs(0), data.ys(0));
      });
      if (t.rank() == 0)
        CHECK(e2 == "Pipeline (rank 0, stage 0): the batch has shape (32, 12), whose 32 rows do not split into 3 micro-batches");
    });
  }
}

TEST_CASE("pipeline x data parallel, threads: 2 stages x 2 replicas train like one rank, bitwise in deterministic mode") {
  const Data data;
  std::vector<std::string> errs(4);
  comm::run_local(4, [&](comm::ThreadTransport world) {
    errs[static_cast<std::size_t>(world.rank())] = pipe_suite::check_pipeline_data_parallel(world, data);
  });
  for (const std::string& e : errs) CHECK_MESSAGE(e.empty(), e);
}
