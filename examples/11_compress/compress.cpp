// Story 11: shrink the trained Fashion-MNIST MLP three ways and compare.
//
//   build/examples/11_compress [epochs = 3] [seed = 1] [--out DIR] [--temperature 4] [--alpha 0.7]   the table
//   build/examples/11_compress --gemm                                  int8 GEMM vs sgemm only
//
// 1. Train the teacher, MLP 784-256-256-10 (as examples/02), f32.
// 2. int8: calibrate activation scales on 512 training images (min/max and
//    99.99th percentile), quantise every Linear per output channel, run the
//    int8 GEMM (AVX-512 VNNI or AVX2, whichever this CPU has); save the model
//    as safetensors and load it back.
// 3. Prune 90% of the weights (global magnitude, Zhu & Gupta's gradual
//    schedule over the first half of a fine-tuning run as long as the
//    teacher's training, with the masks in Adam's step), and 2:4.
// 4. Distil a student half the width (784-128-128-10) from the teacher's
//    logits (T = 4), against the same student trained on labels alone.
// One BLAS thread; latencies are medians of this thread's CPU time. Dimension legend: B batch, D = 784, C = 10.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <numeric>
#include <string>
#include <vector>
#include <weft/compress/distill.hpp>
#include <weft/compress/prune.hpp>
#include <weft/compress/quantize.hpp>
#include <weft/compress/save.hpp>
#include <weft/io/idx.hpp>
#include <weft/kernels/cpu/blas.hpp>
#include <weft/kernels/cpu/int8_gemm.hpp>
#include <weft/expr/let.hpp>
#include <weft/nn/nn.hpp>
#include <weft/weft.hpp>

using namespace weft;
using Clock = std::chrono::steady_clock;
using kernels::cpu::Int8Isa;

namespace {

struct Mlp {
  index_t width;
  nn::Linear<float> l1, l2, l3;
  nn::Registry<float> reg;
  Mlp(index_t d, index_t w, std::uint64_t seed) : width(w), l1(d, w, seed), l2(w, w, seed + 1), l3(w, 10, seed + 2) {
    reg.add("l1", l1).add("l2", l2).add("l3", l3);
  }
  Mlp(const Mlp& o) : Mlp(o.l1.in_features(), o.width, 0) {
    for (std::size_t k = 0; k < reg.size(); ++k) reg[k].value = o.reg[k].value;
  }
  template <class X>
  auto operator()(X&& x) {
    return l3(relu(l2(relu(l1(std::forward<X>(x))))));
  }
  index_t nonzero() {
    index_t n = 0;
    for (Parameter<float>* p : reg)
      for (index_t i = 0; i < p->numel(); ++i) n += p->value.data()[i] != 0.0f;
    return n;
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// This thread's CPU time: everything here runs on one thread (one BLAS
// thread too), and on a machine shared with other work the wall clock mostly
// measures the other work.
double thread_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// Median thread-CPU seconds of f() over `reps` runs after one warm-up.
double time_median(int reps, const std::function<void()>& f) {
  f();
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const double t0 = thread_seconds();
    f();
    t.push_back(thread_seconds() - t0);
  }
  return median(t);
}

// Trains `m` for `epochs` with Adam (cosine lr from `lr`); `loss(x, y)` builds
// the loss expression; `after_step(step)` runs after each optimizer step.
template <class Loss>
void train(Mlp& m, const io::Dataset& data, int epochs, float lr, std::uint64_t seed, Loss&& loss,
           const std::function<void(nn::Adam<float>&, std::int64_t)>& before_step = {}) {
  const index_t n = data.images.size(0), d = data.images.size(1), batch = 128;
  nn::Adam<float> opt(m.reg, {.lr = lr});
  const nn::CosineAnnealing schedule{.lr = lr, .total_steps = epochs * (n / batch)};
  Tensor<float> xb({batch, d});      // (B, D)
  Tensor<std::int32_t> yb({batch});  // (B,)
  Workspace<> ws;
  std::vector<index_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), index_t(0));
  nn::Rng rng(seed);
  for (int e = 0; e < epochs; ++e) {
    for (index_t i = n - 1; i > 0; --i) std::swap(order[static_cast<std::size_t>(i)], order[rng.below(static_cast<std::uint64_t>(i + 1))]);
    for (index_t b = 0; b + batch <= n; b += batch) {
      io::gather_batch(data, order, b, xb, yb);
      if (before_step) before_step(opt, opt.steps());
      opt.set_lr(schedule(opt.steps()));
      opt.zero_grad();
      backward(loss(xb, yb), ws);
      opt.step();
    }
  }
}

double accuracy_f32(Mlp& m, const io::Dataset& test) {
  Workspace<> ws;
  return 100.0 * nn::accuracy(eval(m(test.images), ws), test.labels);
}

struct Int8Mlp {
  std::vector<compress::QuantizedLinear> q;  // 3 layers
  compress::QuantScratch s;
  std::vector<float> h1, h2;
  void forward(const float* x, index_t b, float* y) {
    h1.resize(static_cast<std::size_t>(b * q[0].out_features()));
    h2.resize(static_cast<std::size_t>(b * q[1].out_features()));
    q[0].forward(x, b, h1.data(), s, true);
    q[1].forward(h1.data(), b, h2.data(), s, true);
    q[2].forward(h2.data(), b, y, s, false);
  }
  double accuracy(const io::Dataset& test) {
    Tensor<float> logits({test.images.size(0), 10});
    forward(test.images.data(), test.images.size(0), logits.data());
    return 100.0 * nn::accuracy(logits, test.labels);
  }
  std::size_t bytes() const {
    std::size_t n = 0;
    for (const auto& l : q) n += l.bytes();
    return n;
  }
};

Int8Mlp quantize(Mlp& m, const io::Dataset& train_set, compress::CalibrationOptions how) {
  // The inputs each layer sees, on 512 training images.
  const index_t calib = 512, d = train_set.images.size(1);
  Tensor<float> x({calib, d});
  std::memcpy(x.data(), train_set.images.data(), sizeof(float) * static_cast<std::size_t>(calib * d));
  Tensor<float> h1 = eval(relu(m.l1(x)));
  Tensor<float> h2 = eval(relu(m.l2(h1)));
  compress::ActivationObserver o1("l1", how), o2("l2", how), o3("l3", how);
  o1.observe(x);
  o2.observe(h1);
  o3.observe(h2);
  Int8Mlp q;
  q.q.emplace_back("l1", m.l1, o1.scale());
  q.q.emplace_back("l2", m.l2, o2.scale());
  q.q.emplace_back("l3", m.l3, o3.scale());
  return q;
}

struct Row {
  std::string model;
  index_t params;      // non-zero parameters
  std::size_t bytes;   // as held for inference
  double accuracy;
  double latency_us;   // batch 1, median
  double throughput;   // samples/s at batch 256
};

Row measure_f32(const std::string& name, Mlp& m, const io::Dataset& test) {
  Workspace<> ws;
  Tensor<float> x1({1, test.images.size(1)}), x256({256, test.images.size(1)});
  std::memcpy(x1.data(), test.images.data(), sizeof(float) * static_cast<std::size_t>(x1.numel()));
  std::memcpy(x256.data(), test.images.data(), sizeof(float) * static_cast<std::size_t>(x256.numel()));
  Tensor<float> y1({1, 10}), y256({256, 10});
  const double t1 = time_median(2001, [&] { assign(y1.view(), m(x1), ws); });
  const double t256 = time_median(51, [&] { assign(y256.view(), m(x256), ws); });
  return {name, m.nonzero(), static_cast<std::size_t>(4 * m.reg.numel()), accuracy_f32(m, test), 1e6 * t1, 256 / t256};
}

Row measure_int8(const std::string& name, Int8Mlp& q, const io::Dataset& test) {
  std::vector<float> y(256 * 10);
  const double t1 = time_median(2001, [&] { q.forward(test.images.data(), 1, y.data()); });
  const double t256 = time_median(51, [&] { q.forward(test.images.data(), 256, y.data()); });
  index_t params = 0;
  for (const auto& l : q.q) params += l.in_features() * l.out_features() + static_cast<index_t>(l.bias().size());
  return {name, params, q.bytes(), q.accuracy(test), 1e6 * t1, 256 / t256};
}

// int8 GEMM (each path this CPU runs) against OpenBLAS sgemm at a few shapes.
void gemm_bench() {
  std::printf("\nint8 GEMM vs f32 sgemm (OpenBLAS), one thread; GOP/s = 2 M N K / thread CPU time, median of runs\n");
  std::printf("%6s %6s %6s  %12s %12s %12s %12s  %s\n", "M", "K", "N", "sgemm", "int8 ref", "int8 avx2", "int8 vnni",
              "best int8 / sgemm");
  const index_t shapes[][3] = {{1, 784, 256}, {256, 784, 256}, {256, 1024, 1024}, {1024, 1024, 1024}};
  double last_ratio = 0;
  for (const auto& s : shapes) {
    const index_t m = s[0], k = s[1], n = s[2];
    const double ops = 2.0 * static_cast<double>(m * n * k);
    std::vector<float> af(static_cast<std::size_t>(m * k)), bf(static_cast<std::size_t>(k * n)), cf(static_cast<std::size_t>(m * n));
    std::vector<std::int8_t> a(af.size()), b(bf.size());
    nn::Rng rng(3);
    for (std::size_t i = 0; i < af.size(); ++i) a[i] = static_cast<std::int8_t>(static_cast<int>(rng.below(255)) - 127), af[i] = a[i];
    for (std::size_t i = 0; i < bf.size(); ++i) b[i] = static_cast<std::int8_t>(static_cast<int>(rng.below(255)) - 127), bf[i] = b[i];
    std::vector<std::int32_t> c(cf.size());
    const kernels::cpu::Int8PackedB pb(b.data(), k, n, n);
    const int reps = ops < 1e8 ? 201 : 11;
    const double ts = time_median(reps, [&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.0f,
                  af.data(), static_cast<int>(k), bf.data(), static_cast<int>(n), 0.0f, cf.data(), static_cast<int>(n));
    });
    double gops[3] = {0, 0, 0};
    const Int8Isa isas[3] = {Int8Isa::reference, Int8Isa::avx2, Int8Isa::avx512_vnni};
    for (int i = 0; i < 3; ++i) {
      if (!kernels::cpu::int8_isa_supported(isas[i])) continue;
      if (isas[i] == Int8Isa::reference && ops > 1e9) continue;  // the triple loop takes seconds here
      const double t = time_median(isas[i] == Int8Isa::reference ? 3 : reps,
                                   [&] { kernels::cpu::int8_gemm(isas[i], a.data(), k, m, pb, c.data(), n); });
      gops[i] = ops / t * 1e-9;
    }
    const double best = std::max(gops[1], gops[2]);
    last_ratio = best / (ops / ts * 1e-9);
    auto cell = [](double g) { return g > 0 ? std::to_string(g).substr(0, std::to_string(g).find('.') + 2) : std::string("-"); };
    std::printf("%6lld %6lld %6lld  %12.1f %12s %12s %12s  %.2f\n", static_cast<long long>(m), static_cast<long long>(k),
                static_cast<long long>(n), ops / ts * 1e-9, cell(gops[0]).c_str(), cell(gops[1]).c_str(), cell(gops[2]).c_str(),
                last_ratio);
  }
  std::printf("int8_gemm_vs_sgemm_1024: %.2f\n", last_ratio);
}

}  // namespace

int main(int argc, char** argv) {
  openblas_set_num_threads(1);
  std::vector<std::string> pos;
  std::filesystem::path out = std::filesystem::temp_directory_path() / "weft_11_compress";
  bool gemm_only = false;
  double temperature = 4.0, alpha = 0.7;  // distillation
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--gemm") gemm_only = true;
    else if (a == "--out" && i + 1 < argc) out = argv[++i];
    else if (a == "--temperature" && i + 1 < argc) temperature = std::atof(argv[++i]);
    else if (a == "--alpha" && i + 1 < argc) alpha = std::atof(argv[++i]);
    else if (a.rfind("--", 0) == 0) {
      std::fprintf(stderr, "11_compress: unknown option %s (usage: 11_compress [epochs] [seed] [--out DIR] [--temperature T] [--alpha A] | --gemm)\n", a.c_str());
      return 2;
    } else pos.push_back(a);
  }
  std::printf("int8 path on this CPU: %s\n", kernels::cpu::int8_isa_name(kernels::cpu::best_int8_isa()));
  if (gemm_only) {
    gemm_bench();
    return 0;
  }
  const int epochs = pos.size() > 0 ? std::atoi(pos[0].c_str()) : 3;
  const std::uint64_t seed = pos.size() > 1 ? std::strtoull(pos[1].c_str(), nullptr, 10) : 1;

  auto train_set = io::load_fashion_mnist("train");
  auto test = io::load_fashion_mnist("test");
  const index_t d = train_set.images.size(1);
  const float mu = eval(mean(train_set.images)).item();
  const float sd = std::sqrt(eval(mean(square(train_set.images - mu))).item());
  train_set.images = (train_set.images - mu) / sd;
  test.images = (test.images - mu) / sd;
  auto ce = [](Mlp& m) { return [&m](auto& x, auto& y) { return cross_entropy(m(x), y); }; };
  std::vector<Row> rows;

  // 1. The teacher.
  auto t0 = Clock::now();
  Mlp teacher(d, 256, seed);
  train(teacher, train_set, epochs, 1e-3f, seed, ce(teacher));
  std::printf("teacher 784-256-256-10 trained: %d epochs, %.0f s\n", epochs, std::chrono::duration<double>(Clock::now() - t0).count());
  rows.push_back(measure_f32("f32 teacher 784-256-256-10", teacher, test));
  const double base = rows.back().accuracy;

  // 2. int8, two calibrations; save and reload the second.
  Int8Mlp q_minmax = quantize(teacher, train_set, {.method = compress::Calibration::minmax});
  rows.push_back(measure_int8("int8, min/max calibration", q_minmax, test));
  Int8Mlp q_pct = quantize(teacher, train_set, {.method = compress::Calibration::percentile, .percentile = 99.99});
  rows.push_back(measure_int8("int8, 99.99th percentile", q_pct, test));
  std::filesystem::create_directories(out);
  const auto file = out / "mlp_int8.safetensors";
  const std::uint64_t file_bytes = compress::save_quantized(file, {&q_pct.q[0], &q_pct.q[1], &q_pct.q[2]});
  Int8Mlp reloaded{compress::load_quantized(file), {}, {}, {}};
  const double reload_acc = reloaded.accuracy(test);
  std::printf("saved %s (%llu bytes; f32 parameters: %lld bytes), reloaded: accuracy %.2f%% (%s)\n", file.c_str(),
              static_cast<unsigned long long>(file_bytes), static_cast<long long>(4 * teacher.reg.numel()), reload_acc,
              reload_acc == rows.back().accuracy ? "identical" : "DIFFERENT");

  // 3. Pruning: 90% global magnitude, gradual over the first half of fine-tuning; and 2:4.
  const std::int64_t steps_per_epoch = train_set.images.size(0) / 128;
  const int ft_epochs = epochs;
  {
    Mlp pruned(teacher);
    compress::Pruner<float> pr({&pruned.l1.weight, &pruned.l2.weight, &pruned.l3.weight});
    const std::int64_t prune_steps = ft_epochs * steps_per_epoch / 2;  // prune during the first half, then recover
    const compress::GradualSparsity sched{.initial = 0.0, .final = 0.9, .begin = 0, .frequency = 50,
                                          .rounds = std::max<std::int64_t>(1, prune_steps / 50)};
    bool attached = false;
    train(pruned, train_set, ft_epochs, 1e-3f, seed + 10, ce(pruned), [&](nn::Adam<float>& opt, std::int64_t step) {
      if (!attached) pr.attach(opt), attached = true;
      if (sched.prunes_at(step)) pr.global(sched.at(step));
    });
    pr.global(0.9);  // the schedule ends on 0.9; a no-op unless rounding left it short
    std::printf("pruned: %.4f of the weights are zero after %d epoch(s) of fine-tuning\n", pr.sparsity(), ft_epochs);
    rows.push_back(measure_f32("f32, 90% pruned (global), fine-tuned", pruned, test));
  }
  {
    Mlp pruned(teacher);
    compress::Pruner<float> pr({&pruned.l1.weight, &pruned.l2.weight});  // l3's 256 x 10: 2:4 along its 256 inputs too
    compress::Pruner<float> pr3({&pruned.l3.weight});
    pr.n_m(2, 4);
    pr3.n_m(2, 4);
    rows.push_back(measure_f32("f32, 2:4 pruned, no fine-tuning", pruned, test));
    train(pruned, train_set, ft_epochs, 5e-4f, seed + 11, ce(pruned), [&](nn::Adam<float>& opt, std::int64_t step) {
      if (step == 0) pr.attach(opt), pr3.attach(opt);
    });
    rows.push_back(measure_f32("f32, 2:4 pruned, fine-tuned", pruned, test));
  }

  // 4. Distillation: a student of half the width, from labels alone and from the teacher.
  {
    Mlp alone(d, 128, seed + 20);
    train(alone, train_set, epochs, 1e-3f, seed + 20, ce(alone));
    rows.push_back(measure_f32("f32 student 784-128-128-10, labels only", alone, test));
    Mlp student(d, 128, seed + 20);
    Workspace<> tws;
    Tensor<float> teacher_logits({128, 10});  // (B, C), refreshed every step
    auto kd = [&](auto& x, auto& y) {
      assign(teacher_logits.view(), teacher(x), tws);
      return let(student(x), [&](auto s) {  // the student's logits, evaluated once, used by both terms
        return compress::distillation_loss(s, teacher_logits, temperature) * static_cast<float>(alpha) +
               cross_entropy(s, y) * static_cast<float>(1 - alpha);
      });
    };
    train(student, train_set, epochs, 1e-3f, seed + 20, kd);
    char label[64];
    std::snprintf(label, sizeof label, "f32 student, distilled (T=%g, alpha=%g)", temperature, alpha);
    rows.push_back(measure_f32(label, student, test));
  }

  std::printf("\n%-42s %9s %10s %9s %7s %12s %14s\n", "model", "nonzero", "bytes", "accuracy", "delta", "latency b=1",
              "samples/s b=256");
  for (const Row& r : rows)
    std::printf("%-42s %9lld %10zu %8.2f%% %+7.2f %9.1f us %14.0f\n", r.model.c_str(), static_cast<long long>(r.params), r.bytes,
                r.accuracy, r.accuracy - base, r.latency_us, r.throughput);
  std::printf("int8 size ratio f32/int8: %.2f; int8 latency speed-up at batch 1: %.2fx, at batch 256: %.2fx\n",
              static_cast<double>(rows[0].bytes) / static_cast<double>(rows[2].bytes), rows[0].latency_us / rows[2].latency_us,
              rows[2].throughput / rows[0].throughput);
  gemm_bench();
  return 0;
}
