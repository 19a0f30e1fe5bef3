// Model compression (weft/compress, kernels/cpu/int8_gemm.hpp): the int8 GEMM
// paths against the reference loop (exact), quantisation against its
// definition, calibration, QuantizedLinear against a plain quantise-GEMM-
// dequantise written here, pruning (exact counts, 2:4 pattern, masks held
// through optimizer steps against a reference update), the gradual schedule,
// the distillation loss (finite differences, a naive double formula, its
// closed-form gradient), and quantised models saved and loaded back exactly.
#include "alloc_counter.hpp"  // first: it replaces operator new for this executable

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include <weft/autodiff/gradcheck.hpp>
#include <weft/compress/distill.hpp>
#include <weft/compress/prune.hpp>
#include <weft/compress/quantize.hpp>
#include <weft/compress/save.hpp>
#include <weft/kernels/cpu/int8_gemm.hpp>
#include <weft/nn/nn.hpp>
#include <weft/weft.hpp>

using namespace weft;
using kernels::cpu::Int8Isa;

namespace {

std::vector<Int8Isa> supported_isas() {
  std::vector<Int8Isa> r;
  for (Int8Isa i : {Int8Isa::reference, Int8Isa::avx2, Int8Isa::avx512_vnni})
    if (kernels::cpu::int8_isa_supported(i)) r.push_back(i);
  return r;
}

std::vector<std::int8_t> random_i8(std::size_t n, std::mt19937& g) {
  std::vector<std::int8_t> v(n);
  for (auto& x : v) x = static_cast<std::int8_t>(static_cast<int>(g() % 256) - 128);
  return v;
}

template <class T>
void fill_normal(Tensor<T>& t, std::uint64_t seed, double sd = 1.0) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(0.0, sd);
  for (index_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(d(g));
}

std::filesystem::path temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path() / ("weft_compress_" + std::to_string(::getpid()) + "_" + name);
}

}  // namespace

TEST_CASE("int8 GEMM: every path this CPU runs equals the reference exactly on odd shapes") {
  const auto isas = supported_isas();
  MESSAGE("int8 paths on this CPU: " << isas.size() << " (best: " << std::string(kernels::cpu::int8_isa_name(kernels::cpu::best_int8_isa()))
                                     << ")");
  std::mt19937 g(7);
  int cases = 0;
  for (index_t m : {1, 2, 3, 4, 5, 17})
    for (index_t n : {1, 7, 15, 16, 17, 33, 63, 64, 65, 130})
      for (index_t k : {0, 1, 3, 4, 5, 31, 257}) {
        const index_t lda = k + 3, ldb = n + 2, ldc = n + 1;  // padded rows: leading dimensions are honoured
        auto a = random_i8(static_cast<std::size_t>(m * lda), g);
        auto b = random_i8(static_cast<std::size_t>(std::max<index_t>(k, 1) * ldb), g);
        std::vector<std::int32_t> want(static_cast<std::size_t>(m * ldc), -1);
        kernels::cpu::int8_gemm_reference(a.data(), lda, b.data(), ldb, want.data(), ldc, m, n, k);
        const kernels::cpu::Int8PackedB pb(b.data(), k, n, ldb);
        for (Int8Isa isa : isas) {
          std::vector<std::int32_t> got(static_cast<std::size_t>(m * ldc), -1);
          kernels::cpu::int8_gemm(isa, a.data(), lda, m, pb, got.data(), ldc);
          INFO(kernels::cpu::int8_isa_name(isa), " M ", m, " N ", n, " K ", k);
          CHECK(got == want);  // also: the padding column (ldc > N) is untouched
          ++cases;
        }
      }
  CHECK(cases == 6 * 10 * 7 * static_cast<int>(isas.size()));

  SUBCASE("extremes: -128 x -128 over the longest K allowed, mixed signs") {
    const index_t k = kernels::cpu::kInt8MaxK, n = 17, m = 2;
    std::vector<std::int8_t> a(static_cast<std::size_t>(m * k), -128), b(static_cast<std::size_t>(k * n), -128);
    for (index_t p = 0; p < k; ++p) b[static_cast<std::size_t>(p * n + 3)] = 127;  // column 3: -128 * 127 each
    const kernels::cpu::Int8PackedB pb(b.data(), k, n, n);
    for (Int8Isa isa : isas) {
      std::vector<std::int32_t> c(static_cast<std::size_t>(m * n));
      kernels::cpu::int8_gemm(isa, a.data(), k, m, pb, c.data(), n);
      CHECK(c[0] == 16384 * static_cast<std::int32_t>(k));
      CHECK(c[3] == -16256 * static_cast<std::int32_t>(k));
      CHECK(c[static_cast<std::size_t>(n + 16)] == 16384 * static_cast<std::int32_t>(k));
    }
  }
  SUBCASE("refused: K that can overflow int32, short leading dimensions, a path this CPU lacks") {
    std::vector<std::int8_t> b(static_cast<std::size_t>(kernels::cpu::kInt8MaxK + 1));
    CHECK_THROWS_WITH_AS(kernels::cpu::Int8PackedB(b.data(), kernels::cpu::kInt8MaxK + 1, 1, 1), doctest::Contains("overflow int32"),
                         ValueError);
    std::vector<std::int8_t> a(12), bb(12);
    const kernels::cpu::Int8PackedB pb(bb.data(), 4, 3, 3);
    std::vector<std::int32_t> c(9);
    CHECK_THROWS_WITH_AS(kernels::cpu::int8_gemm(Int8Isa::reference, a.data(), 3, 3, pb, c.data(), 3),
                         doctest::Contains("leading dimension"), ShapeError);
    for (Int8Isa isa : {Int8Isa::avx2, Int8Isa::avx512_vnni})
      if (!kernels::cpu::int8_isa_supported(isa))
        CHECK_THROWS_WITH_AS(kernels::cpu::int8_gemm(isa, a.data(), 4, 3, pb, c.data(), 3),
                             doctest::Contains("does not run the"), ValueError);
  }
}

TEST_CASE("per-channel symmetric quantisation follows its definition") {
  const index_t in = 9, out = 5;
  Tensor<float> w(Shape{in, out});
  fill_normal(w, 3);
  for (index_t i = 0; i < in; ++i) w.data()[i * out + 4] = 0.0f;  // an all-zero channel
  w.data()[2 * out + 1] = -3.5f;                                 // channel 1's largest magnitude is negative
  const auto q = compress::quantize_per_channel(w.data(), in, out);
  for (index_t o = 0; o < out; ++o) {
    float amax = 0;
    for (index_t i = 0; i < in; ++i) amax = std::max(amax, std::fabs(w.data()[i * out + o]));
    const float s = q.scale[static_cast<std::size_t>(o)];
    CHECK(s == (amax > 0 ? amax / 127.0f : 1.0f));
    bool hit127 = false;
    for (index_t i = 0; i < in; ++i) {
      const float v = w.data()[i * out + o];
      const int qi = q.q[static_cast<std::size_t>(i * out + o)];
      CHECK(qi >= -127);
      CHECK(qi <= 127);
      CHECK(std::fabs(static_cast<float>(qi) * s - v) <= 0.5f * s * (1 + 1e-6f));  // rounding error at most half a step
      hit127 |= std::abs(qi) == 127;
    }
    CHECK(hit127 == (amax > 0));
  }
  CHECK(q.q[2 * out + 1] == -127);
  CHECK(compress::quantize_value(2.5f, 1.0f) == 2);  // half to even, as torch.round
  CHECK(compress::quantize_value(-3.5f, 1.0f) == -4);
  CHECK(compress::quantize_value(1e9f, 1.0f) == 127);
  CHECK(compress::quantize_value(-1e9f, 1.0f) == -127);
  Tensor<float> bad(Shape{2, 2}, 0.0f);
  bad.data()[3] = std::nanf("");
  CHECK_THROWS_WITH_AS(compress::quantize_per_channel(bad.data(), 2, 2), doctest::Contains("element (1, 1)"), ValueError);
}

TEST_CASE("calibration: min/max and percentile of |x|") {
  std::vector<float> x(1000);
  for (int i = 0; i < 1000; ++i) x[static_cast<std::size_t>(i)] = static_cast<float>((i % 2 ? -1 : 1) * (i + 1));  // |x| = 1..1000
  compress::ActivationObserver mm("l1");
  mm.observe(x.data(), 400);
  mm.observe(x.data() + 400, 600);
  CHECK(mm.count() == 1000);
  CHECK(mm.amax() == 1000.0f);
  CHECK(mm.scale() == 1000.0f / 127.0f);
  compress::ActivationObserver pc("l1", {.method = compress::Calibration::percentile, .percentile = 99.0});
  pc.observe(x.data(), 1000);
  CHECK(pc.amax() == 990.0f);  // rank ceil(0.99 * 1000) = 990 of 1..1000
  compress::ActivationObserver p100("l1", {.method = compress::Calibration::percentile, .percentile = 100.0});
  p100.observe(x.data(), 1000);
  CHECK(p100.amax() == 1000.0f);
  compress::ActivationObserver none("l2");
  CHECK_THROWS_WITH_AS(none.scale(), doctest::Contains("'l2': no calibration data"), ValueError);
  CHECK_THROWS_AS(compress::ActivationObserver("l3", {.method = compress::Calibration::percentile, .percentile = 0.0}),
                  ValueError);
}

TEST_CASE("QuantizedLinear equals quantise, reference GEMM, dequantise; and stays near the f32 layer") {
  nn::Linear<float> lin(37, 21, 5);
  Tensor<float> x(Shape{13, 37});
  fill_normal(x, 11);
  compress::ActivationObserver obs("l");
  obs.observe(x);
  const float sx = obs.scale();
  const auto qw = compress::quantize_per_channel(lin.weight.value.data(), 37, 21);
  // The plain computation, written out here.
  std::vector<std::int8_t> xq(13 * 37);
  for (std::size_t i = 0; i < xq.size(); ++i) {
    const float r = std::nearbyint(x.data()[i] / sx);
    xq[i] = static_cast<std::int8_t>(std::clamp(r, -127.0f, 127.0f));
  }
  std::vector<std::int32_t> acc(13 * 21);
  kernels::cpu::int8_gemm_reference(xq.data(), 37, qw.q.data(), 21, acc.data(), 21, 13, 21, 37);
  Tensor<float> f32 = eval(lin(x));
  for (Int8Isa isa : supported_isas())
    for (bool relu : {false, true}) {
      compress::QuantizedLinear ql("l", lin, sx, isa);
      compress::QuantScratch s;
      Tensor<float> y = ql(x, s, relu);
      double worst = 0;
      for (index_t r = 0; r < 13; ++r)
        for (index_t o = 0; o < 21; ++o) {
          const std::size_t at = static_cast<std::size_t>(r * 21 + o);
          float want = static_cast<float>(acc[at]) * (sx * qw.scale[static_cast<std::size_t>(o)]) + lin.bias.value.data()[o];
          if (relu) want = std::max(want, 0.0f);
          CHECK(y.data()[at] == want);
          const float ref = relu ? std::max(f32.data()[at], 0.0f) : f32.data()[at];
          worst = std::max(worst, static_cast<double>(std::fabs(y.data()[at] - ref)));
        }
      // Error bound: sum_i |x_i| s_o / 2 + |w_i| s_x / 2 (+ the product of halves); a loose but real check.
      CHECK(worst < 0.05);
      CHECK(ql.bytes() == 37 * 21 + 4 * (21 + 21 + 1));
    }
  compress::QuantScratch s;
  compress::QuantizedLinear ql("l", lin, sx);
  std::vector<float> y(13 * 21);
  ql.forward(x.data(), 13, y.data(), s);  // sizes the scratch
  CHECK(alloc_counter::on_this_thread([&] { ql.forward(x.data(), 13, y.data(), s, true); }) == 0);  // then allocates nothing
  CHECK_THROWS_WITH_AS(ql(Tensor<float>(Shape{2, 36}), s), doctest::Contains("'l': input (2, 36)"), ShapeError);
  CHECK_THROWS_AS(compress::QuantizedLinear("l", lin, 0.0f), ValueError);
}

TEST_CASE("global magnitude pruning zeroes exactly the smallest weights") {
  nn::Linear<float> a(16, 12, 1), b(12, 8, 2);
  compress::Pruner<float> pr({&a.weight, &b.weight});
  const index_t total = 16 * 12 + 12 * 8;
  CHECK(pr.total() == total);
  std::vector<float> before;
  for (auto* p : {&a.weight, &b.weight}) before.insert(before.end(), p->value.data(), p->value.data() + p->numel());
  std::vector<float> mags;
  for (float v : before) mags.push_back(std::fabs(v));
  std::sort(mags.begin(), mags.end());
  for (double s : {0.0, 0.3, 0.5, 0.9}) {
    pr.global(s);
    const auto k = static_cast<index_t>(std::llround(s * static_cast<double>(total)));
    CHECK(pr.masked() == k);
    CHECK(pr.sparsity() == doctest::Approx(static_cast<double>(k) / static_cast<double>(total)));
    // Every survivor is at least as large as every pruned weight.
    float max_pruned = 0, min_kept = 1e30f;
    std::size_t at = 0;
    for (auto* p : {&a.weight, &b.weight})
      for (index_t i = 0; i < p->numel(); ++i, ++at) {
        if (p->value.data()[i] == 0) max_pruned = std::max(max_pruned, std::fabs(before[at]));
        else {
          min_kept = std::min(min_kept, std::fabs(p->value.data()[i]));
          CHECK(p->value.data()[i] == before[at]);  // survivors untouched
        }
      }
    if (k > 0) CHECK(max_pruned <= min_kept);
    if (k > 0) CHECK(max_pruned == mags[static_cast<std::size_t>(k - 1)]);
  }
  CHECK_THROWS_AS(pr.global(1.0), ValueError);
}

TEST_CASE("2:4 pruning keeps the two largest of every four inputs of each output") {
  nn::Linear<float> l(12, 7, 3);
  std::vector<float> before(l.weight.value.data(), l.weight.value.data() + l.weight.numel());
  compress::Pruner<float> pr({&l.weight});
  pr.n_m(2, 4);
  CHECK(pr.masked() == 12 * 7 / 2);
  for (index_t g = 0; g < 12; g += 4)
    for (index_t c = 0; c < 7; ++c) {
      int kept = 0;
      float min_kept = 1e30f, max_pruned = 0;
      for (index_t r = g; r < g + 4; ++r) {
        const float v = l.weight.value.data()[r * 7 + c], o = before[static_cast<std::size_t>(r * 7 + c)];
        if (v != 0) {
          ++kept;
          CHECK(v == o);
          min_kept = std::min(min_kept, std::fabs(o));
        } else {
          max_pruned = std::max(max_pruned, std::fabs(o));
        }
      }
      CHECK(kept == 2);
      CHECK(max_pruned <= min_kept);
    }
  nn::Linear<float> odd(10, 4, 1);
  compress::Pruner<float> bad({&odd.weight});
  CHECK_THROWS_WITH_AS(bad.n_m(2, 4), doctest::Contains("'weight' has shape (10, 4)"), ShapeError);
}

TEST_CASE_TEMPLATE("masked optimizer steps keep pruned weights at zero and match a reference update", Opt, nn::SGD<double>,
                   nn::Adam<double>, nn::AdamW<double>) {
  // Two identical models: A masked through the optimizer; B unmasked, with the
  // masked gradient zeroed and value *= mask after each step, written out here.
  nn::Linear<double> la(8, 6, 4), lb(8, 6, 4);
  nn::Registry<double> ra, rb;
  ra.add("l", la);
  rb.add("l", lb);
  auto make = [](nn::Registry<double>& r) {
    if constexpr (std::is_same_v<Opt, nn::SGD<double>>) return Opt(r, {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f});
    else return Opt(r, {.lr = 0.05f, .weight_decay = 0.01f});
  };
  Opt oa = make(ra), ob = make(rb);
  compress::Pruner<double> pa({&la.weight}), pb({&lb.weight});
  // Build state first, then prune mid-training (momentum is non-zero at masked places).
  std::mt19937_64 g(9);
  std::normal_distribution<double> d;
  auto random_grads = [&] {
    for (index_t i = 0; i < la.weight.numel(); ++i) la.weight.grad.data()[i] = lb.weight.grad.data()[i] = d(g);
    for (index_t i = 0; i < la.bias.numel(); ++i) la.bias.grad.data()[i] = lb.bias.grad.data()[i] = d(g);
  };
  for (int t = 0; t < 3; ++t) {
    random_grads();
    oa.step();
    ob.step();
  }
  pa.global(0.75);
  pb.global(0.75);
  pa.attach(oa);
  const Tensor<double>& mask = pb.mask(0);
  for (int t = 0; t < 20; ++t) {
    random_grads();
    for (index_t i = 0; i < lb.weight.numel(); ++i) lb.weight.grad.data()[i] *= mask.data()[i];
    oa.step();
    ob.step();
    for (index_t i = 0; i < lb.weight.numel(); ++i) lb.weight.value.data()[i] *= mask.data()[i];
    CHECK(pa.masked() == 36);
    for (index_t i = 0; i < la.weight.numel(); ++i)
      if (mask.data()[i] == 0) REQUIRE(la.weight.value.data()[i] == 0.0);
  }
  // Kept weights: the masked pass equals the reference up to rounding of mask
  // multiplications by 1 (exact) -- so exactly.
  for (index_t i = 0; i < la.weight.numel(); ++i) CHECK(la.weight.value.data()[i] == lb.weight.value.data()[i]);
  for (index_t i = 0; i < la.bias.numel(); ++i) CHECK(la.bias.value.data()[i] == lb.bias.value.data()[i]);
  CHECK(pa.sparsity() == 0.75);
  nn::Linear<double> other(2, 2, 1);
  CHECK_THROWS_WITH_AS(oa.set_mask(other.weight, nullptr), doctest::Contains("not one this optimizer updates"), ValueError);
}

TEST_CASE("gradual sparsity follows Zhu & Gupta's cubic") {
  const compress::GradualSparsity z{.initial = 0.0, .final = 0.9, .begin = 100, .frequency = 10, .rounds = 20};
  CHECK(z.at(0) == 0.0);
  CHECK(z.at(100) == 0.0);
  CHECK(z.at(300) == doctest::Approx(0.9));
  CHECK(z.at(1000) == doctest::Approx(0.9));
  CHECK(z.at(200) == doctest::Approx(0.9 - 0.9 * 0.125));  // half way: s_f + (s_i - s_f) (1/2)^3
  for (std::int64_t t = 101; t <= 300; ++t) CHECK(z.at(t) >= z.at(t - 1));
  CHECK(z.prunes_at(100));
  CHECK(z.prunes_at(110));
  CHECK_FALSE(z.prunes_at(105));
  CHECK(z.prunes_at(300));
  CHECK_FALSE(z.prunes_at(310));
  CHECK_THROWS_AS(compress::GradualSparsity{.final = 1.0}.at(0), ValueError);
}

TEST_CASE("distillation loss: naive formula, finite differences, closed-form gradient") {
  const index_t batch = 5, classes = 7;
  Tensor<double> s(Shape{batch, classes}), t(Shape{batch, classes});
  fill_normal(s, 21, 2.0);
  fill_normal(t, 22, 2.0);
  for (double temp : {1.0, 2.0, 4.0}) {
    // Naive: T^2 / B * sum p (log p - log q), p = softmax(t / T), q = softmax(s / T), in double loops.
    double want = 0;
    std::vector<double> grad(static_cast<std::size_t>(batch * classes));
    for (index_t b = 0; b < batch; ++b) {
      double mt = -1e300, ms = -1e300;
      for (index_t c = 0; c < classes; ++c) {
        mt = std::max(mt, t.data()[b * classes + c] / temp);
        ms = std::max(ms, s.data()[b * classes + c] / temp);
      }
      double zt = 0, zs = 0;
      for (index_t c = 0; c < classes; ++c) {
        zt += std::exp(t.data()[b * classes + c] / temp - mt);
        zs += std::exp(s.data()[b * classes + c] / temp - ms);
      }
      for (index_t c = 0; c < classes; ++c) {
        const double lp = t.data()[b * classes + c] / temp - mt - std::log(zt);
        const double lq = s.data()[b * classes + c] / temp - ms - std::log(zs);
        want += std::exp(lp) * (lp - lq);
        grad[static_cast<std::size_t>(b * classes + c)] = temp / static_cast<double>(batch) * (std::exp(lq) - std::exp(lp));
      }
    }
    want *= temp * temp / static_cast<double>(batch);
    const double got = eval(compress::distillation_loss(s, t, temp)).item();
    CHECK(got == doctest::Approx(want).epsilon(1e-12));
    auto [value, g] = value_and_grad([&](auto x) { return compress::distillation_loss(x, t, temp); }, s);
    CHECK(value.item() == doctest::Approx(want).epsilon(1e-12));
    for (std::size_t i = 0; i < grad.size(); ++i) CHECK(g.data()[i] == doctest::Approx(grad[i]).epsilon(1e-10));
    const auto r = gradcheck([&](auto x) { return compress::distillation_loss(x, t, temp); }, s);
    CHECK_MESSAGE(r.ok, r.message);
  }
  CHECK(eval(compress::distillation_loss(t, t, 3.0)).item() == doctest::Approx(0.0).epsilon(1e-12));
  CHECK_THROWS_AS(compress::distillation_loss(s, t, 0.0), ValueError);
  Tensor<double> wrong(Shape{batch, classes + 1});
  CHECK_THROWS_WITH_AS(compress::distillation_loss(wrong, t, 1.0), doctest::Contains("must both be (B, C)"), ShapeError);
}

TEST_CASE("quantised models saved as safetensors load back exactly") {
  nn::Linear<float> l1(20, 16, 1), l2(16, 3, 2);
  nn::Linear<float, false> l3(3, 5, 3);
  const compress::QuantizedLinear q1("l1", l1, 0.02f), q2("l2", l2, 0.5f), q3("l3", l3, 0.125f);
  const auto path = temp_path("model.safetensors");
  const std::uint64_t bytes = compress::save_quantized(path, {&q1, &q2, &q3});
  CHECK(bytes == std::filesystem::file_size(path));
  const auto back = compress::load_quantized(path);
  REQUIRE(back.size() == 3);
  Tensor<float> x(Shape{4, 20});
  fill_normal(x, 5);
  const compress::QuantizedLinear* orig[] = {&q1, &q2, &q3};
  for (std::size_t k = 0; k < 3; ++k) {
    CHECK(back[k].name() == orig[k]->name());
    CHECK(back[k].weight().q == orig[k]->weight().q);
    CHECK(back[k].weight().scale == orig[k]->weight().scale);
    CHECK(back[k].input_scale() == orig[k]->input_scale());
    CHECK(back[k].bias() == orig[k]->bias());
  }
  compress::QuantScratch s;
  Tensor<float> a = q3(q2(q1(x, s, true), s, true), s), b = back[2](back[1](back[0](x, s, true), s, true), s);
  for (index_t i = 0; i < a.numel(); ++i) CHECK(a.data()[i] == b.data()[i]);
  // The file is plain safetensors: I8 weights, F32 scales.
  const io::checkpoint::SafetensorsReader r(path);
  CHECK(r.info("l1.weight").dtype == io::checkpoint::Dtype::I8);
  CHECK(r.info("l1.weight_scale").dtype == io::checkpoint::Dtype::F32);
  CHECK(r.header().find("l3.bias") == nullptr);

  SUBCASE("a flipped byte is a checksum error naming the tensor") {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-3, std::ios::end);  // inside the last tensor: l3.input_scale
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(-3, std::ios::end);
    f.write(&c, 1);
    f.close();
    CHECK_THROWS_WITH_AS(compress::load_quantized(path), doctest::Contains("checksum mismatch"), IoError);
  }
  SUBCASE("a safetensors file that is not a quantised model") {
    io::checkpoint::SafetensorsWriter w;
    float v = 1;
    w.add("x", &v, {1});
    w.write(path);
    CHECK_THROWS_WITH_AS(compress::load_quantized(path), doctest::Contains("not a weft quantised model"), IoError);
  }
  std::filesystem::remove(path);
}
