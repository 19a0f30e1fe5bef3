// Accuracy and special cases of weft::math (core/math.hpp): every float function
// is compared with the double-precision libm result over a dense sweep of its
// range (every k-th float bit pattern) plus special values; the bounds checked
// here are the ones stated at the top of math.hpp. Double versions must match libm.
#include <doctest/doctest.h>

#include <weft/core/math.hpp>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();
constexpr float qnan = std::numeric_limits<float>::quiet_NaN();

float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
std::uint32_t to_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
bool same_bits(float a, float b) { return to_bits(a) == to_bits(b); }

// Error of a float result in units of the float ulp at the exact (double) value;
// below FLT_MIN the ulp is the subnormal spacing 2^-149.
double ulp_error(float got, double ref) {
  if (std::isnan(ref)) return std::isnan(got) ? 0.0 : 1e30;
  if (std::isnan(got)) return 1e30;
  float ref_f = static_cast<float>(ref);
  if (std::isinf(ref_f) || std::isinf(got)) return ref_f == got ? 0.0 : 1e30;
  double a = std::fabs(ref);
  double ulp = 0x1p-149;
  if (a >= FLT_MIN) {
    int e;
    std::frexp(a, &e);  // a = m 2^e, m in [0.5, 1)
    ulp = std::ldexp(1.0, e - 24);
  }
  return std::fabs(static_cast<double>(got) - ref) / ulp;
}

struct worst {
  double err = 0;
  float at = 0;
  void add(double e, float x) {
    if (e > err || std::isnan(e)) {
      err = e;
      at = x;
    }
  }
};

// Every `stride`-th float in [lo, hi] (lo, hi of the same sign or zero), in
// bit-pattern order, so each binade is sampled evenly. Inputs are processed in
// blocks so the weft call runs in the same kind of loop the kernels use.
template <class Weft, class Ref, class Err>
worst sweep(float lo, float hi, std::uint32_t stride, Weft weft_fn, Ref ref_fn, Err err_fn) {
  worst w;
  auto run = [&](std::uint32_t b0, std::uint32_t b1) {  // bit patterns, b0 <= b1
    std::vector<float> x, y;
    for (std::uint64_t b = b0; b <= b1; b += stride) {
      x.push_back(from_bits(static_cast<std::uint32_t>(b)));
      if (x.size() == 4096 || b + stride > b1) {
        y.resize(x.size());
        for (std::size_t i = 0; i < x.size(); ++i) y[i] = weft_fn(x[i]);
        for (std::size_t i = 0; i < x.size(); ++i) w.add(err_fn(y[i], ref_fn(static_cast<double>(x[i]))), x[i]);
        x.clear();
      }
    }
  };
  std::uint32_t a = to_bits(lo), b = to_bits(hi);
  if (lo >= 0.0f)
    run(a, b);
  else if (hi <= 0.0f)
    run(b, a);  // negative floats: larger bit pattern = more negative
  else {
    run(to_bits(-0.0f), a);
    run(0u, b);
  }
  return w;
}

template <class Weft, class Ref>
worst sweep_ulp(float lo, float hi, std::uint32_t stride, Weft f, Ref r) {
  return sweep(lo, hi, stride, f, r, ulp_error);
}
template <class Weft, class Ref>
worst sweep_abs(float lo, float hi, std::uint32_t stride, Weft f, Ref r) {
  return sweep(lo, hi, stride, f, r, [](float got, double ref) { return std::fabs(got - ref); });
}

#define REPORT(name, w) MESSAGE(name << ": max error " << (w).err << " at x = " << (w).at)

}  // namespace

namespace wm = weft::math;

TEST_CASE("exp: <= 2 ulp over the whole float range, overflow and underflow") {
  auto f = [](float x) { return wm::exp(x); };
  auto r = [](double x) { return std::exp(x); };
  worst w = sweep_ulp(-inf, inf, 1021, f, r);
  REPORT("exp (ulp)", w);
  CHECK(w.err <= 2.0);
  worst near = sweep_ulp(-105.0f, 90.0f, 1021, f, r);
  REPORT("exp on [-105, 90] (ulp)", near);
  CHECK(near.err <= 2.0);
  CHECK(wm::exp(0.0f) == 1.0f);
  CHECK(wm::exp(-0.0f) == 1.0f);
  CHECK(wm::exp(89.0f) == inf);
  CHECK(wm::exp(1e30f) == inf);
  CHECK(wm::exp(inf) == inf);
  CHECK(wm::exp(-105.0f) == 0.0f);
  CHECK(wm::exp(-inf) == 0.0f);
  CHECK(std::isnan(wm::exp(qnan)));
  CHECK(wm::exp(88.72f) > 3.39e38f);
  CHECK(std::isfinite(wm::exp(88.72f)));
}

TEST_CASE("log: <= 2 ulp over all positive floats, special values") {
  worst w = sweep_ulp(0x1p-149f, FLT_MAX, 1021, [](float x) { return wm::log(x); },
                      [](double x) { return std::log(x); });
  REPORT("log (ulp)", w);
  CHECK(w.err <= 2.0);
  worst near1 = sweep_ulp(0.5f, 2.0f, 61, [](float x) { return wm::log(x); }, [](double x) { return std::log(x); });
  REPORT("log on [0.5, 2] (ulp)", near1);
  CHECK(near1.err <= 2.0);
  CHECK(wm::log(1.0f) == 0.0f);
  CHECK(wm::log(0.0f) == -inf);
  CHECK(wm::log(-0.0f) == -inf);
  CHECK(wm::log(inf) == inf);
  CHECK(std::isnan(wm::log(-1.0f)));
  CHECK(std::isnan(wm::log(-inf)));
  CHECK(std::isnan(wm::log(-0x1p-149f)));
  CHECK(std::isnan(wm::log(qnan)));
}

TEST_CASE("sin, cos: absolute error <= 2e-7 for |x| <= 1e4, bounded beyond") {
  auto s = [](float x) { return wm::sin(x); };
  auto c = [](float x) { return wm::cos(x); };
  auto sr = [](double x) { return std::sin(x); };
  auto cr = [](double x) { return std::cos(x); };
  worst ws = sweep_abs(-1e4f, 1e4f, 1021, s, sr);
  worst wc = sweep_abs(-1e4f, 1e4f, 1021, c, cr);
  REPORT("sin |x|<=1e4 (abs)", ws);
  REPORT("cos |x|<=1e4 (abs)", wc);
  CHECK(ws.err <= 2e-7);
  CHECK(wc.err <= 2e-7);
  // Near zero sin keeps relative accuracy (no reduction happens there).
  worst ws_small = sweep_ulp(-0.78f, 0.78f, 1021, s, sr);
  REPORT("sin |x|<=0.78 (ulp)", ws_small);
  CHECK(ws_small.err <= 2.0);
  worst ws_far = sweep_abs(1e4f, 1e5f, 127, s, sr);
  worst wc_far = sweep_abs(1e4f, 1e5f, 127, c, cr);
  REPORT("sin 1e4..1e5 (abs)", ws_far);
  REPORT("cos 1e4..1e5 (abs)", wc_far);
  CHECK(ws_far.err <= 1e-5);
  CHECK(wc_far.err <= 1e-5);
  // Huge arguments: no accuracy promised, but finite and in [-1, 1].
  for (std::uint32_t b = to_bits(1e5f); b < to_bits(FLT_MAX); b += 65537) {
    for (float x : {from_bits(b), -from_bits(b)}) {
      float sv = wm::sin(x), cv = wm::cos(x);
      if (!(std::fabs(sv) <= 1.0f && std::fabs(cv) <= 1.0f)) {
        FAIL_CHECK("sin/cos out of [-1, 1] at x = " << x);
        break;
      }
    }
  }
  CHECK(same_bits(wm::sin(0.0f), 0.0f));
  CHECK(same_bits(wm::sin(-0.0f), -0.0f));
  CHECK(wm::cos(0.0f) == 1.0f);
  CHECK(std::isnan(wm::sin(qnan)));
  CHECK(std::isnan(wm::cos(qnan)));
  CHECK(std::isnan(wm::sin(inf)));
  CHECK(std::isnan(wm::cos(-inf)));
}

TEST_CASE("tanh: <= 3 ulp over the whole float range, saturation, signed zero") {
  worst w = sweep_ulp(-inf, inf, 1021, [](float x) { return wm::tanh(x); }, [](double x) { return std::tanh(x); });
  REPORT("tanh (ulp)", w);
  CHECK(w.err <= 3.0);
  worst mid = sweep_ulp(-10.0f, 10.0f, 1021, [](float x) { return wm::tanh(x); }, [](double x) { return std::tanh(x); });
  REPORT("tanh on [-10, 10] (ulp)", mid);
  CHECK(mid.err <= 3.0);
  CHECK(same_bits(wm::tanh(0.0f), 0.0f));
  CHECK(same_bits(wm::tanh(-0.0f), -0.0f));
  CHECK(wm::tanh(20.0f) == 1.0f);
  CHECK(wm::tanh(-20.0f) == -1.0f);
  CHECK(wm::tanh(inf) == 1.0f);
  CHECK(wm::tanh(-inf) == -1.0f);
  CHECK(wm::tanh(FLT_MAX) == 1.0f);
  CHECK(std::isnan(wm::tanh(qnan)));
}

TEST_CASE("sigmoid: <= 4 ulp for results >= FLT_MIN, always in [0, 1]") {
  auto f = [](float x) { return wm::sigmoid(x); };
  auto r = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  worst w = sweep(-87.0f, inf, 1021, f, r, ulp_error);
  REPORT("sigmoid x >= -87 (ulp)", w);
  CHECK(w.err <= 4.0);
  // Below -87 the result is subnormal or zero: check range and absolute error.
  worst tiny = sweep(-inf, -87.0f, 1021, f, r, [](float got, double ref) {
    return got >= 0.0f && got <= 1.0f ? std::fabs(got - ref) : 1e30;
  });
  REPORT("sigmoid x < -87 (abs)", tiny);
  CHECK(tiny.err <= 0x1p-126);
  CHECK(wm::sigmoid(0.0f) == 0.5f);
  CHECK(wm::sigmoid(inf) == 1.0f);
  CHECK(wm::sigmoid(-inf) == 0.0f);
  CHECK(wm::sigmoid(FLT_MAX) == 1.0f);
  CHECK(wm::sigmoid(-FLT_MAX) == 0.0f);
  CHECK(std::isnan(wm::sigmoid(qnan)));
  CHECK(wm::sigmoid(-800.0) == 0.0);  // double: no overflow NaN either
  CHECK(wm::sigmoid(800.0) == 1.0);
}

TEST_CASE("erf: <= 3 ulp over the whole float range") {
  worst w = sweep_ulp(-inf, inf, 1021, [](float x) { return wm::erf(x); }, [](double x) { return std::erf(x); });
  REPORT("erf (ulp)", w);
  CHECK(w.err <= 3.0);
  worst mid = sweep_ulp(-5.0f, 5.0f, 1021, [](float x) { return wm::erf(x); }, [](double x) { return std::erf(x); });
  REPORT("erf on [-5, 5] (ulp)", mid);
  CHECK(mid.err <= 3.0);
  CHECK(same_bits(wm::erf(0.0f), 0.0f));
  CHECK(same_bits(wm::erf(-0.0f), -0.0f));
  CHECK(wm::erf(inf) == 1.0f);
  CHECK(wm::erf(-inf) == -1.0f);
  CHECK(std::isnan(wm::erf(qnan)));
}

TEST_CASE("sqrt: correctly rounded") {
  worst w = sweep_ulp(0.0f, inf, 509, [](float x) { return wm::sqrt(x); }, [](double x) { return std::sqrt(x); });
  REPORT("sqrt (ulp)", w);
  CHECK(w.err <= 0.5);
  CHECK(same_bits(wm::sqrt(0.0f), 0.0f));
  CHECK(same_bits(wm::sqrt(-0.0f), -0.0f));
  CHECK(wm::sqrt(inf) == inf);
  CHECK(wm::sqrt(4.0f) == 2.0f);
  CHECK(std::isnan(wm::sqrt(-1.0f)));
  CHECK(std::isnan(wm::sqrt(qnan)));
}

TEST_CASE("pow: <= 2 ulp for normal results, C's special cases") {
  worst w;
  float wy = 0;
  const float ys[] = {-100.f, -10.f, -3.f, -2.5f, -2.f, -1.f, -0.5f, -0.25f, 0.25f, 0.5f, 1.f,
                      1.5f,   2.f,   3.f,  7.f,   10.f,  33.3f, 100.f, 1e-3f, -1e-3f, 1e3f};
  for (float y : ys) {
    for (std::uint32_t b = to_bits(1e-30f); b <= to_bits(1e30f); b += 32749) {
      for (float x : {from_bits(b), -from_bits(b)}) {
        double ref = std::pow(static_cast<double>(x), static_cast<double>(y));
        if (std::fabs(ref) < FLT_MIN) continue;  // underflowed: covered by the zero checks
        double e = ulp_error(wm::pow(x, y), ref);
        if (e > w.err || std::isnan(e)) wy = y;
        w.add(e, x);
      }
    }
  }
  MESSAGE("pow: max error " << w.err << " ulp at x = " << w.at << ", y = " << wy);
  CHECK(w.err <= 2.0);
  CHECK(std::fabs(wm::pow(2.0f, 10.0f) - 1024.0f) <= 1024.0f * 4e-7f);
  CHECK(std::fabs(wm::pow(-2.0f, 3.0f) + 8.0f) <= 8.0f * 4e-7f);
  CHECK(std::fabs(wm::pow(-2.0f, 2.0f) - 4.0f) <= 4.0f * 4e-7f);
  CHECK(std::fabs(wm::pow(-2.0f, -1.0f) + 0.5f) <= 0.5f * 4e-7f);
  CHECK(std::isnan(wm::pow(-2.0f, 0.5f)));
  CHECK(wm::pow(qnan, 0.0f) == 1.0f);
  CHECK(wm::pow(1.0f, qnan) == 1.0f);
  CHECK(wm::pow(-1.0f, inf) == 1.0f);
  CHECK(std::isnan(wm::pow(qnan, 1.0f)));
  CHECK(std::isnan(wm::pow(2.0f, qnan)));
  CHECK(same_bits(wm::pow(0.0f, 2.0f), 0.0f));
  CHECK(same_bits(wm::pow(-0.0f, 3.0f), -0.0f));
  CHECK(same_bits(wm::pow(-0.0f, 2.0f), 0.0f));
  CHECK(wm::pow(0.0f, -1.0f) == inf);
  CHECK(wm::pow(-0.0f, -1.0f) == -inf);
  CHECK(wm::pow(0.0f, 0.5f) == 0.0f);
  CHECK(wm::pow(10.0f, 50.0f) == inf);
  CHECK(wm::pow(10.0f, -50.0f) == 0.0f);
  CHECK(wm::pow(inf, 2.0f) == inf);
  CHECK(wm::pow(inf, -2.0f) == 0.0f);
  CHECK(wm::pow(-inf, 3.0f) == -inf);
  CHECK(wm::pow(2.0f, 1e30f) == inf);
  CHECK(wm::pow(-2.0f, 1e30f) == inf);  // huge |y| is an even integer
  CHECK(wm::pow(-2.0f, 16777215.0f) == -inf);  // 2^24 - 1 is odd
}

TEST_CASE("double versions are libm") {
  for (double x : {-3.5, -1.0, -1e-3, 0.0, 1e-300, 0.3, 1.0, 2.5, 40.0, 700.0}) {
    CHECK(wm::exp(x) == std::exp(x));
    CHECK(wm::sin(x) == std::sin(x));
    CHECK(wm::cos(x) == std::cos(x));
    CHECK(wm::tanh(x) == std::tanh(x));
    CHECK(wm::erf(x) == std::erf(x));
    if (x > 0) {
      CHECK(wm::log(x) == std::log(x));
      CHECK(wm::sqrt(x) == std::sqrt(x));
      CHECK(wm::pow(x, 1.7) == std::pow(x, 1.7));
    }
    double s = wm::sigmoid(x);
    CHECK(std::fabs(s - 1.0 / (1.0 + std::exp(-x))) <= 1e-15);
  }
}
