// Elementwise math used by expression nodes, callable on host and device.
//
// Host float versions are written so that GCC (-O3, with or without -march=...)
// auto-vectorizes a fused loop that calls them: straight-line arithmetic, integer
// bit tricks through memcpy, selects instead of branches, no libm calls, no
// tables. Device code (nvcc, __CUDA_ARCH__) uses CUDA's own math functions.
// Double versions always call libm: they serve gradient checks, where accuracy
// matters more than speed.
//
// Measured max error of the host float versions against double libm, from the
// sweeps in tests/test_math.cpp (every 1021st float bit pattern over the whole
// range, denser near the hard spots), GCC 12 -O3 with and without -march=native
// (i.e. with and without FMA contraction), Clang 14 -O2:
//   exp      0.97 ulp  x > 88.7228 -> inf, x < -103.98 -> 0, subnormal results
//                      gradual (abs error <= 1 subnormal ulp), exp(nan) = nan
//   log      1.20 ulp  all positive floats incl. subnormals; log(+-0) = -inf,
//                      log(x < 0) = nan, log(inf) = inf
//   tanh     1.37 ulp  all floats; exactly +-1 from |x| = 9.0109 (as libm), tanh(+-0) = +-0
//   sigmoid  2.78 ulp  for results >= FLT_MIN (below: abs error < 1e-45); always
//                      in [0, 1], no overflow NaN for any x
//   erf      2.29 ulp  all floats; erf(+-0) = +-0, +-1 beyond |x| ~ 3.92
//   sin/cos  abs 9.3e-8 for |x| <= 1e4; abs 9.6e-7 for 1e4 < |x| <= 1e5 without
//            FMA (9.3e-8 with); beyond |x| ~ 6.6e6 only "in [-1, 1]" is promised.
//            sin(+-0) = +-0, sin/cos(inf or nan) = nan.
//   sqrt     0.5 ulp (correctly rounded; the Newton path below was checked on every
//            non-negative float, with and without -march=native)
//   pow      0.97 ulp for normal results (y log|x| is formed in double)
//
// Caveat: -ffast-math (finite-math-only) lets the compiler fold away the NaN/inf
// selects, so special values are then not guaranteed; finite results are.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "config.hpp"

namespace weft::math {

namespace detail {

// Bit casts through memcpy: GCC and Clang turn these into register moves and
// vectorize them; std::bit_cast would do too, but this also works under nvcc's host pass.
WEFT_INLINE std::uint32_t to_bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
WEFT_INLINE float from_bits(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}
WEFT_INLINE std::uint64_t to_bits64(double x) {
  std::uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
WEFT_INLINE double from_bits64(std::uint64_t u) {
  double x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// Branch-free selects. A C++ ?: on floats becomes a branch in GIMPLE, and jump
// threading then duplicates the trapping float arithmetic behind it into separate
// paths, which the vectorizer cannot if-convert under the default -ftrapping-math.
// A bitwise blend of two already-computed values never creates that branch.
WEFT_INLINE float select(bool c, float a, float b) {
  std::uint32_t m = 0u - static_cast<std::uint32_t>(c);
  return from_bits((to_bits(a) & m) | (to_bits(b) & ~m));
}
WEFT_INLINE float abs_f32(float x) { return from_bits(to_bits(x) & 0x7fffffffu); }
// Returns m with the sign bit of s copied in.
WEFT_INLINE float copysign_f32(float m, float s) {
  return from_bits((to_bits(m) & 0x7fffffffu) | (to_bits(s) & 0x80000000u));
}

inline constexpr float inf_f32 = __builtin_huge_valf();
inline constexpr float nan_f32 = __builtin_nanf("");

// Round to nearest (ties away from zero) for |v| < 2^31 via truncating conversion.
// Unlike the add-and-subtract-1.5*2^23 trick this survives -fassociative-math.
// The caller guarantees v is finite and in range (NaN would be UB in the conversion).
WEFT_INLINE std::int32_t round_to_int(float v) {
  return static_cast<std::int32_t>(v + copysign_f32(0.5f, v));
}

// ln 2 split so that k * ln2_hi is exact for |k| < 2^15 (ln2_hi has 9 significant bits).
inline constexpr float ln2_hi = 0x1.63p-1f;            // 0.693359375
inline constexpr float ln2_lo = -2.12194440e-4f;        // ln 2 - ln2_hi
inline constexpr float log2e = 1.44269504088896341f;

// e^r for |r| <= ~ln2/2: 1 + r + r^2 P(r), P a degree-5 relative-minimax fit
// (error 2.7e-9).
WEFT_INLINE float exp_poly(float r) {
  float p = 0x1.9c5b82p-13f;  // 1.98577837e-4
  p = p * r + 1.39336043e-3f;
  p = p * r + 8.33336075e-3f;
  p = p * r + 4.16664655e-2f;
  p = p * r + 1.66666665e-1f;
  p = p * r + 5.00000001e-1f;
  return 1.0f + (r + r * r * p);
}
// 2^k * e^r for |r| <= ~ln2/2, k in [-150, 128]. 2^k is applied as two
// factors 2^(k/2) * 2^(k - k/2) so that no k in range needs a special case:
// overflow and gradual underflow fall out of the multiplies.
WEFT_INLINE float exp_reduced(float r, std::int32_t k) {
  float er = exp_poly(r);
  std::int32_t k1 = k >> 1;  // arithmetic shift (C++20): floor(k / 2)
  std::int32_t k2 = k - k1;
  float s1 = from_bits(static_cast<std::uint32_t>(k1 + 127) << 23);
  float s2 = from_bits(static_cast<std::uint32_t>(k2 + 127) << 23);
  return er * s1 * s2;
}

// exp(x) = 2^k * e^r, k = round(x / ln 2), r = x - k ln2 (Cody-Waite), |r| <= ln2 / 2.
WEFT_INLINE float exp_f32(float x) {
  float xc = select(x < -104.0f, -104.0f, x);  // NaN passes both clamps unchanged
  xc = select(xc > 89.0f, 89.0f, xc);
  float v = xc * log2e;
  v = select(v == v, v, 0.0f);  // keep NaN out of the integer conversion
  std::int32_t k = round_to_int(v);
  float kf = static_cast<float>(k);
  float r = (xc - kf * ln2_hi) - kf * ln2_lo;
  return exp_reduced(r, k);
}

// log(x) = e ln2 + log(m), m in [sqrt(1/2), sqrt(2)), f = m - 1, s = f / (2 + f):
// log(1 + f) = f - f^2/2 + s (f^2/2 + R), R = 2 (s^2/3 + s^4/5 + s^6/7 + s^8/9)
// (atanh series; |s| <= 0.1716, so truncation error is below 2e-9).
WEFT_INLINE float log_f32(float x) {
  bool sub = x < 0x1p-126f;  // subnormals: rescale by 2^23 (negatives are replaced below)
  float xs = select(sub, x * 0x1p23f, x);
  std::uint32_t ix = to_bits(xs) - 0x3f3504f3u;  // bits of sqrt(1/2)
  std::int32_t e = (static_cast<std::int32_t>(ix) >> 23) - 23 * static_cast<std::int32_t>(sub);
  float m = from_bits((ix & 0x007fffffu) + 0x3f3504f3u);
  float f = m - 1.0f;
  float s = f / (2.0f + f);
  float z = s * s;
  float R = 2.0f / 9.0f;
  R = R * z + 2.0f / 7.0f;
  R = R * z + 2.0f / 5.0f;
  R = R * z + 2.0f / 3.0f;
  R = R * z;
  float hfsq = 0.5f * f * f;
  float ef = static_cast<float>(e);
  float r = ef * ln2_hi + ((f - hfsq) + (s * (hfsq + R) + ef * ln2_lo));
  r = select(x == inf_f32, inf_f32, r);
  r = select(x == 0.0f, -inf_f32, r);
  r = select(x >= 0.0f, r, nan_f32);  // negative or NaN
  return r;
}

// pi/2 in four parts: the first three have 11 significant bits, so q * part is
// exact for |q| < 2^13 even when the compiler does not contract to FMA.
inline constexpr float pio2_1 = 0x1.92p+0f;
inline constexpr float pio2_2 = 0x1.fb4p-12f;
inline constexpr float pio2_3 = 0x1.444p-24f;
inline constexpr float pio2_4 = 0x1.68c234p-39f;

// Reduces x to r in [-pi/4, pi/4] and quadrant q (x ~ q pi/2 + r).
WEFT_INLINE float reduce_pio2(float x, std::int32_t& q) {
  float v = x * 0.636619772367581343f;  // 2 / pi
  bool small = abs_f32(v) < 0x1p22f;    // false for inf and NaN
  std::int32_t qi = round_to_int(select(small, v, 0.0f));
  float qf = select(small, static_cast<float>(qi), v);  // huge v is an integer already
  float r = x - qf * pio2_1;  // exact (Sterbenz)
  r = r - qf * pio2_2;
  r = r - (qf * pio2_3 + qf * pio2_4);
  // Only for |x| beyond ~6.6e6 can r leave [-pi/4, pi/4] noticeably; the clamp
  // keeps the polynomials bounded there (NaN passes through).
  r = select(r > 0.8f, 0.8f, r);
  r = select(r < -0.8f, -0.8f, r);
  q = qi;
  return r;
}

// Taylor polynomials on |r| <= pi/4 (truncation error < 2e-9 and < 5e-11).
WEFT_INLINE float sin_poly(float r) {
  float z = r * r;
  float p = 1.0f / 362880.0f;
  p = p * z - 1.0f / 5040.0f;
  p = p * z + 1.0f / 120.0f;
  p = p * z - 1.0f / 6.0f;
  return select(r == 0.0f, r, r + r * z * p);  // keeps sin(-0) = -0
}
WEFT_INLINE float cos_poly(float r) {
  float z = r * r;
  float p = -1.0f / 3628800.0f;
  p = p * z + 1.0f / 40320.0f;
  p = p * z - 1.0f / 720.0f;
  p = p * z + 1.0f / 24.0f;
  return (1.0f - 0.5f * z) + z * z * p;
}

// sin(q pi/2 + r) for quadrant q: odd q swaps to cos, bit 1 of q flips the sign.
WEFT_INLINE float sincos_quadrant(float r, std::int32_t q) {
  float s = sin_poly(r);
  float c = cos_poly(r);
  float y = select((q & 1) != 0, c, s);
  return from_bits(to_bits(y) ^ (static_cast<std::uint32_t>(q & 2) << 30));
}

WEFT_INLINE float sin_f32(float x) {
  std::int32_t q;
  float r = reduce_pio2(x, q);
  return sincos_quadrant(r, q);
}
WEFT_INLINE float cos_f32(float x) {
  std::int32_t q;
  float r = reduce_pio2(x, q);
  return sincos_quadrant(r, q + 1);
}

// tanh: |x| < 0.55: x + x^3 P(x^2), P a degree-4 relative-minimax fit (4e-8);
// otherwise 1 - 2 / (e^{2|x|} + 1) with the sign restored (no cancellation
// trouble since the result is >= 0.5). |x| is clamped at 10, where tanh rounds
// to 1, so 2|x| lies in [1.1, 20] and e^{2|x|} needs none of exp_f32's range
// handling: k = round(2|x| / ln 2) is in [2, 29] and 2^k one exponent field
// (~17% faster than calling exp_f32 over 65,536 floats; the same 1.37 ulp). NaN is
// clamped to 10 on the e^ path and comes out of the polynomial path.
WEFT_INLINE float tanh_f32(float x) {
  float ax = abs_f32(x);
  float u = x * x;
  float p = -6.61034185e-3f;
  p = p * u + 2.13094559e-2f;
  p = p * u - 5.39094409e-2f;
  p = p * u + 1.33331138e-1f;
  p = p * u - 3.33333320e-1f;
  float small = select(x == 0.0f, x, x + x * u * p);  // keeps tanh(-0) = -0
  float a2 = 2.0f * select(ax < 10.0f, ax, 10.0f);   // NaN -> 20
  // a2 >= 0, so + 0.5 rounds to nearest: round_to_int's copysign would cost ~12% of tanh
  std::int32_t k = static_cast<std::int32_t>(a2 * log2e + 0.5f);
  float kf = static_cast<float>(k);
  float r = (a2 - kf * ln2_hi) - kf * ln2_lo;
  float e = exp_poly(r) * from_bits(static_cast<std::uint32_t>(k + 127) << 23);
  float big = copysign_f32(1.0f - 2.0f / (e + 1.0f), x);
  return select(ax >= 0.55f, big, small);  // NaN takes the polynomial path and stays NaN
}

// erf: |x| < 1: x P(x^2), P a degree-6 relative-minimax fit (1.2e-9);
// otherwise 1 - e^{-x^2} Q(1/|x|), Q a degree-7 relative-minimax fit of
// erfc(x) e^{x^2} on [1, 4] (1.4e-7, times erfc <= 0.16). |x| is clamped at 4,
// where erf rounds to 1.
WEFT_INLINE float erf_f32(float x) {
  float ax = abs_f32(x);
  float u = x * x;
  float p = 7.85182815e-5f;
  p = p * u - 8.00956506e-4f;
  p = p * u + 5.18825431e-3f;
  p = p * u - 2.68537721e-2f;
  p = p * u + 1.12835842e-1f;
  p = p * u - 3.76126257e-1f;
  p = p * u + 1.12837917e+0f;
  float small = x * p;
  float a = select(ax > 4.0f, 4.0f, ax);  // NaN passes
  a = select(a < 1.0f, 1.0f, a);          // keep the unused branch finite
  float t = 1.0f / a;
  float q = -1.66842089e-2f;
  q = q * t + 1.15826326e-1f;
  q = q * t - 3.45783394e-1f;
  q = q * t + 5.67867278e-1f;
  q = q * t - 5.01572487e-1f;
  q = q * t + 4.96189164e-2f;
  q = q * t + 5.57978205e-1f;
  q = q * t + 3.33001811e-4f;
  float erfc = exp_f32(-(a * a)) * q;
  float big = copysign_f32(1.0f - erfc, x);
  return select(ax < 1.0f, small, big);
}

// sqrt. Under -fno-math-errno (or -ffast-math) the hardware instruction
// vectorizes and is used. With GCC's default -fmath-errno every sqrtf keeps a
// scalar call for the errno case (even on a fabs'd argument), which blocks
// vectorization; then sqrt is computed in double with Newton's iteration for
// 1/sqrt, which vectorizes: about 1 double ulp before rounding to float, so the
// float result is correctly rounded (no exceptions over all 2^31 non-negative
// floats, checked with GCC 12 -O3 with and without -march=native). Vectorized
// it costs ~1 ns/element with AVX-512, ~3.9 ns with plain SSE2, where a scalar
// sqrtss loop is faster on its own; what it buys is that a fused loop that
// contains a sqrt still vectorizes.
#if defined(__NO_MATH_ERRNO__) || defined(__FAST_MATH__)
WEFT_INLINE float sqrt_f32(float x) { return __builtin_sqrtf(x); }
#else
WEFT_INLINE float sqrt_f32(float x) {
  double d = x;
  double y = from_bits64(std::uint64_t{0x5fe6eb50c7b537a9} - (to_bits64(d) >> 1));  // 1/sqrt(d) to 3.5%
  double hd = 0.5 * d;
  y = y * (1.5 - hd * y * y);  // each step squares the relative error
  y = y * (1.5 - hd * y * y);
  y = y * (1.5 - hd * y * y);
  y = y * (1.5 - hd * y * y);
  double s = d * y;
  s = s + (d - s * s) * (0.5 * y);  // Heron correction in the sqrt itself
  float r = static_cast<float>(s);
  r = select(x == inf_f32, inf_f32, r);
  r = select(x == 0.0f, x, r);  // keeps -0
  return select(x < 0.0f, nan_f32, r);
}
#endif

// Integer tests on y for pow, as 0/1 ints: is y an integer, is it an odd one.
// (Kept as ints rather than bools: GCC 12 fails to find vector types for
// bool chains mixing float and int comparisons here.)
struct parity {
  std::int32_t is_int, is_odd;
};
WEFT_INLINE parity integer_parity(float y) {
  float ay = abs_f32(y);
  std::int32_t exact = ay < 0x1p24f;  // every float >= 2^24 is an even integer
  std::int32_t yi = static_cast<std::int32_t>(select(exact != 0, ay, 0.0f));  // truncation
  std::int32_t same = static_cast<float>(yi) == ay;
  std::int32_t finite = ay < inf_f32;  // false for inf and NaN
  return {(finite & (exact ^ 1)) | (exact & same), exact & same & yi};
}

// pow(x, y) = exp(y log|x|) with the sign and special cases of C's powf:
//   pow(x, +-0) = 1 and pow(1, y) = 1 for any x, y (NaN included);
//   pow(-1, +-inf) = 1;
//   x < 0: integer y gives (-1)^y |x|^y, non-integer y gives NaN;
//   x = +-0: y > 0 gives +0 (-0 for odd y and x = -0), y < 0 gives +inf (-inf likewise);
//   overflow -> inf, underflow -> 0 (gradual, as exp).
// y log|x| is formed in double (log|x| = e ln2 + log(m) by the atanh series to
// 3e-14), because in float its rounding error, multiplied by up to |y ln x| ~ 100,
// would cost up to ~100 ulp; only the reduced argument r goes back to float.
WEFT_INLINE float pow_f32(float x, float y) {
  auto [is_int, is_odd] = integer_parity(y);
  float ax = abs_f32(x);
  bool sub = ax < 0x1p-126f;
  float xs = select(sub, ax * 0x1p23f, ax);
  std::uint32_t ix = to_bits(xs) - 0x3f3504f3u;
  std::int32_t e = (static_cast<std::int32_t>(ix) >> 23) - 23 * static_cast<std::int32_t>(sub);
  double f = static_cast<double>(from_bits((ix & 0x007fffffu) + 0x3f3504f3u)) - 1.0;
  double s = f / (2.0 + f);
  double z = s * s;
  double R = 2.0 / 15.0;
  R = R * z + 2.0 / 13.0;
  R = R * z + 2.0 / 11.0;
  R = R * z + 2.0 / 9.0;
  R = R * z + 2.0 / 7.0;
  R = R * z + 2.0 / 5.0;
  R = R * z + 2.0 / 3.0;
  double lg = static_cast<double>(e) * 0.69314718055994530942 + (2.0 * s + s * (R * z));
  double t = static_cast<double>(y) * lg;
  // Range decisions are made on a float copy of t: selects on doubles keyed by
  // double compares do not vectorize next to float data with GCC 12 on SSE2.
  float tf = static_cast<float>(t);
  float tc = select(tf < -104.0f, -104.0f, tf);
  tc = select(tc > 89.0f, 89.0f, tc);
  float v = tc * log2e;
  std::int32_t k = round_to_int(select(v == v, v, 0.0f));
  float r = exp_reduced(static_cast<float>(t - static_cast<double>(k) * 0.69314718055994530942), k);
  r = select(tf > 89.0f, inf_f32, r);  // as exp_f32; NaN passes
  r = select(tf < -104.0f, 0.0f, r);
  // x = 0, inf, NaN (lg above is meaningless there).
  bool huge = (ax == inf_f32) != (y < 0.0f);  // 0^-y and inf^y overflow
  r = select((ax == 0.0f) | (ax == inf_f32), select(huge, inf_f32, 0.0f), r);
  r = select(ax == ax, r, ax);
  std::uint32_t sign = to_bits(x) & (static_cast<std::uint32_t>(is_odd) << 31);
  r = from_bits(to_bits(r) ^ sign);
  r = select((x < 0.0f) & (is_int == 0), nan_f32, r);
  r = select((ax == 1.0f) & (abs_f32(y) == inf_f32), 1.0f, r);
  r = select((y == 0.0f) | (x == 1.0f), 1.0f, r);
  return r;
}

// sigmoid through e^{-|x|} <= 1 (see weft::math::sigmoid).
WEFT_INLINE float sigmoid_f32(float x) {
  float e = exp_f32(-abs_f32(x));
  float s = 1.0f / (1.0f + e);
  return select(x < 0.0f, e * s, s);
}

}  // namespace detail

#if defined(__CUDA_ARCH__)
#define WEFT_MATH_F32(device_call, host_call) return device_call;
#else
#define WEFT_MATH_F32(device_call, host_call) return host_call;
#endif

WEFT_HD WEFT_INLINE float exp(float x) { WEFT_MATH_F32(::expf(x), detail::exp_f32(x)) }
WEFT_HD WEFT_INLINE double exp(double x) { return ::exp(x); }
WEFT_HD WEFT_INLINE float log(float x) { WEFT_MATH_F32(::logf(x), detail::log_f32(x)) }
WEFT_HD WEFT_INLINE double log(double x) { return ::log(x); }
WEFT_HD WEFT_INLINE float sin(float x) { WEFT_MATH_F32(::sinf(x), detail::sin_f32(x)) }
WEFT_HD WEFT_INLINE double sin(double x) { return ::sin(x); }
WEFT_HD WEFT_INLINE float cos(float x) { WEFT_MATH_F32(::cosf(x), detail::cos_f32(x)) }
WEFT_HD WEFT_INLINE double cos(double x) { return ::cos(x); }
WEFT_HD WEFT_INLINE float tanh(float x) { WEFT_MATH_F32(::tanhf(x), detail::tanh_f32(x)) }
WEFT_HD WEFT_INLINE double tanh(double x) { return ::tanh(x); }
WEFT_HD WEFT_INLINE float erf(float x) { WEFT_MATH_F32(::erff(x), detail::erf_f32(x)) }
WEFT_HD WEFT_INLINE double erf(double x) { return ::erf(x); }
WEFT_HD WEFT_INLINE float sqrt(float x) { WEFT_MATH_F32(::sqrtf(x), detail::sqrt_f32(x)) }
WEFT_HD WEFT_INLINE double sqrt(double x) { return ::sqrt(x); }
WEFT_HD WEFT_INLINE float pow(float x, float y) { WEFT_MATH_F32(::powf(x, y), detail::pow_f32(x, y)) }
WEFT_HD WEFT_INLINE double pow(double x, double y) { return ::pow(x, y); }

#undef WEFT_MATH_F32

// Logistic function 1 / (1 + e^{-x}), evaluated through e^{-|x|} <= 1 so that
// neither side overflows: the result is in [0, 1] for every x, NaN only for NaN.
template <class T>
WEFT_HD WEFT_INLINE T sigmoid(T x) {
#if !defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, float>) return detail::sigmoid_f32(x);
  else
#endif
  {
    T e = exp(-(x < T(0) ? -x : x));
    T s = T(1) / (T(1) + e);
    return x < T(0) ? e * s : s;
  }
}

// GELU's derivative Phi(x) + x phi(x) given its value y = x Phi(x): Phi(x) is
// read off the value as y / x, so no second erf; below |x| = 1e-30 (and at
// 0), where y / x runs out of digits, Phi's Taylor terms 1/2 + x / sqrt(2 pi)
// are exact. Phi from y carries y's own error (for x << 0 the forward's
// 1 + erf cancels, as Phi computed directly from erf does).
template <class T>
WEFT_HD WEFT_INLINE T gelu_grad(T x, T y) {
  const T c = T(0.39894228040143267794);  // 1 / sqrt(2 pi)
  const T pdf = c * exp(T(-0.5) * x * x);
  const T near = T(0.5) + x * c;
  const T q = y / x;
#if !defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, float>) return detail::select(detail::abs_f32(x) < 1e-30f, near, q) + x * pdf;
  else
#endif
    return ((x < T(0) ? -x : x) < T(1e-30) ? near : q) + x * pdf;
}

}  // namespace weft::math
