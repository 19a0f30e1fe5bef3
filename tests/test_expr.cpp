// Expressions against plain-loop references: elementwise ops, broadcasting,
// reductions, matmul (all transposes), softmax, cross-entropy, shape errors,
// aliasing.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>
#include <weft/expr/matmul.hpp>
#include <weft/weft.hpp>

using namespace weft;

namespace {

template <class T>
Tensor<T> randn(const Shape& s, unsigned seed, double scale = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, scale);
  Tensor<T> t(s);
  for (index_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(nd(rng));
  return t;
}

template <class T>
void check_close(const Tensor<T>& a, const std::vector<double>& ref, double tol) {
  REQUIRE(a.numel() == static_cast<index_t>(ref.size()));
  for (index_t i = 0; i < a.numel(); ++i) {
    double x = static_cast<double>(a.data()[i]), r = ref[static_cast<std::size_t>(i)];
    INFO("element " << i << ": " << x << " vs reference " << r);
    CHECK(std::abs(x - r) <= tol * (1.0 + std::abs(r)));
  }
}

std::string message_of(auto&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no exception)";
}

}  // namespace

TEST_CASE_TEMPLATE("unary ops match the C library", T, float, double) {
  const double tol = std::is_same_v<T, float> ? 2e-6 : 1e-14;
  Tensor<T> x = randn<T>({4, 33}, 3);
  Tensor<T> p({4, 33});
  for (index_t i = 0; i < p.numel(); ++i) p.data()[i] = std::abs(x.data()[i]) + T(0.1);
  auto ref = [&](auto fn, const Tensor<T>& in) {
    std::vector<double> r;
    for (index_t i = 0; i < in.numel(); ++i) r.push_back(fn(static_cast<double>(in.data()[i])));
    return r;
  };
  check_close(eval(-x), ref([](double v) { return -v; }, x), tol);
  check_close(eval(abs(x)), ref([](double v) { return std::abs(v); }, x), tol);
  check_close(eval(exp(x)), ref([](double v) { return std::exp(v); }, x), tol);
  check_close(eval(log(p)), ref([](double v) { return std::log(v); }, p), tol);
  check_close(eval(sqrt(p)), ref([](double v) { return std::sqrt(v); }, p), tol);
  check_close(eval(square(x)), ref([](double v) { return v * v; }, x), tol);
  check_close(eval(tanh(x)), ref([](double v) { return std::tanh(v); }, x), tol);
  check_close(eval(sigmoid(x)), ref([](double v) { return 1 / (1 + std::exp(-v)); }, x), tol);
  check_close(eval(relu(x)), ref([](double v) { return v > 0 ? v : 0; }, x), tol);
  check_close(eval(gelu(x)), ref([](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); }, x), tol);
  check_close(eval(sin(x)), ref([](double v) { return std::sin(v); }, x), tol);
  check_close(eval(cos(x)), ref([](double v) { return std::cos(v); }, x), tol);
}

TEST_CASE_TEMPLATE("binary ops broadcast like NumPy", T, float, double) {
  const double tol = std::is_same_v<T, float> ? 2e-6 : 1e-14;
  Tensor<T> a = randn<T>({2, 3, 5}, 4), b = randn<T>({3, 1}, 5), c = randn<T>({5}, 6);
  for (index_t i = 0; i < b.numel(); ++i) b.data()[i] = std::abs(b.data()[i]) + T(0.5);
  auto ref2 = [&](auto fn, const Tensor<T>& y) {
    // y broadcast against a: (3,1) -> index [j], (5,) -> index [k]
    std::vector<double> r;
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j)
        for (int k = 0; k < 5; ++k) {
          double yv = y.rank() == 2 ? y(j, 0) : y(k);
          r.push_back(fn(static_cast<double>(a(i, j, k)), yv));
        }
    return r;
  };
  CHECK((a + b).shape() == Shape{2, 3, 5});
  check_close(eval(a + b), ref2([](double u, double v) { return u + v; }, b), tol);
  check_close(eval(a - c), ref2([](double u, double v) { return u - v; }, c), tol);
  check_close(eval(a * b), ref2([](double u, double v) { return u * v; }, b), tol);
  check_close(eval(a / b), ref2([](double u, double v) { return u / v; }, b), tol);
  check_close(eval(pow(b + T(0) * a, a)), ref2([](double u, double v) { return std::pow(v, u); }, b), 10 * tol);
  check_close(eval(maximum(a, c)), ref2([](double u, double v) { return std::max(u, v); }, c), tol);
  check_close(eval(minimum(a, c)), ref2([](double u, double v) { return std::min(u, v); }, c), tol);
  // scalars on either side take the tensor's type
  check_close(eval(2 * a - 1), ref2([](double u, double) { return 2 * u - 1; }, c), tol);
  check_close(eval(1.0 / b + a * 0), ref2([](double, double v) { return 1 / v; }, b), tol);
  // a fused chain gives the same as the step-by-step result
  Tensor<T> s1 = eval(a * b), s2 = eval(s1 + c), s3 = eval(tanh(s2));
  Tensor<T> fused = eval(tanh(a * b + c));
  check_close(fused, std::vector<double>(s3.data(), s3.data() + s3.numel()), tol);
}

TEST_CASE("shape errors name the operation and both shapes") {
  Tensor<float> a({2, 3}), b({4}), m({3, 4}), k({5, 2});
  std::string msg = message_of([&] { (void)(a + b); });
  CHECK(msg.find("add") != std::string::npos);
  CHECK(msg.find("(2, 3)") != std::string::npos);
  CHECK(msg.find("(4,)") != std::string::npos);
  msg = message_of([&] { (void)matmul(m, k); });
  CHECK(msg.find("matmul") != std::string::npos);
  CHECK(msg.find("(3, 4) @ (5, 2)") != std::string::npos);
  CHECK_THROWS_AS((void)matmul(b, m), ShapeError);
  Tensor<float> a2 = eval(a * 2.0f);
  msg = message_of([&] { a = a2 + m * 0.0f; });
  CHECK(msg.find("(2, 3)") != std::string::npos);
  Tensor<float> dst({3});
  msg = message_of([&] { dst.view() = a * 2.0f; });
  CHECK(msg.find("assign") != std::string::npos);
  CHECK_THROWS_AS((void)sum(a, 2), ValueError);
  Tensor<std::int32_t> lab({3}, {0, 1, 2});
  CHECK_THROWS_AS((void)cross_entropy(a, lab), ShapeError);
  Tensor<std::int32_t> bad({2}, {0, 3});
  msg = message_of([&] { (void)eval(cross_entropy(a, bad)); });
  CHECK(msg.find("label 3 at row 1") != std::string::npos);
}

TEST_CASE_TEMPLATE("reductions over everything and over each axis", T, float, double) {
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-13;
  Tensor<T> x = randn<T>({3, 4, 5}, 7);
  double s = 0, mx = -1e300;
  for (index_t i = 0; i < x.numel(); ++i) {
    s += x.data()[i];
    mx = std::max(mx, static_cast<double>(x.data()[i]));
  }
  check_close(eval(sum(x)), {s}, tol);
  check_close(eval(mean(x)), {s / 60}, tol);
  check_close(eval(max(x)), {mx}, tol);
  CHECK(sum(x, keepdim).shape() == Shape{1, 1, 1});
  for (int axis = 0; axis < 3; ++axis) {
    Shape out = x.shape();
    out[axis] = 1;
    std::vector<double> rs(static_cast<std::size_t>(out.numel()), 0.0), rm(rs.size(), -1e300);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 4; ++j)
        for (int k = 0; k < 5; ++k) {
          int idx[3] = {i, j, k};
          idx[axis] = 0;
          std::size_t o = static_cast<std::size_t>((idx[0] * out[1] + idx[1]) * out[2] + idx[2]);
          rs[o] += x(i, j, k);
          rm[o] = std::max(rm[o], static_cast<double>(x(i, j, k)));
        }
    std::vector<double> rmean = rs;
    for (auto& v : rmean) v /= static_cast<double>(x.shape()[axis]);
    CHECK(sum(x, axis).shape().rank == 2);
    CHECK(sum(x, axis, true).shape() == out);
    check_close(eval(sum(x, axis)), rs, tol);
    check_close(eval(mean(x, axis, true)), rmean, tol);
    check_close(eval(max(x, axis)), rm, tol);
  }
  // negative axis counts from the end
  Tensor<T> last = eval(sum(x, 2));
  check_close(eval(sum(x, -1)), std::vector<double>(last.data(), last.data() + last.numel()), 0);
  // normalising rows: a reduction with keepdim broadcasts back
  Tensor<T> p = eval(exp(x));
  Tensor<T> q = eval(p / sum(p, 2, true));
  Tensor<T> rowsum = eval(sum(q, 2));
  for (index_t i = 0; i < rowsum.numel(); ++i) CHECK(std::abs(rowsum.data()[i] - T(1)) < 10 * tol);
}

TEST_CASE_TEMPLATE("matmul with every transpose combination", T, float, double) {
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-13;
  const int M = 7, K = 5, N = 3;
  Tensor<T> a = randn<T>({M, K}, 8), at = randn<T>({K, M}, 9), b = randn<T>({K, N}, 10), bt = randn<T>({N, K}, 11);
  auto ref = [&](bool ta, bool tb) {
    std::vector<double> r;
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        double acc = 0;
        for (int k = 0; k < K; ++k) acc += static_cast<double>(ta ? at(k, i) : a(i, k)) * (tb ? bt(j, k) : b(k, j));
        r.push_back(acc);
      }
    return r;
  };
  check_close(eval(matmul(a, b)), ref(false, false), tol);
  check_close(eval(matmul(transpose(at), b)), ref(true, false), tol);
  check_close(eval(matmul(a, transpose(bt))), ref(false, true), tol);
  check_close(eval(matmul(transpose(at), transpose(bt))), ref(true, true), tol);
  // operands that are expressions, and an expression of the product
  auto r = ref(false, false);
  for (auto& v : r) v = std::tanh(2 * v);
  check_close(eval(tanh(matmul(a * 2, b))), r, tol);
  // strided operand: a column slice of a wider matrix is copied for BLAS
  Tensor<T> wide = randn<T>({K, 2 * N}, 12);
  Tensor<T> left = eval(transpose(transpose(wide)));
  CHECK(eval(matmul(a, wide)).shape() == Shape{M, 2 * N});
}

TEST_CASE_TEMPLATE("softmax, log_softmax and cross_entropy match plain loops", T, float, double) {
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-13;
  Tensor<T> x = randn<T>({4, 6}, 13, 3.0);
  Tensor<std::int64_t> y({4}, {5, 0, 2, 2});
  std::vector<double> sm, lsm;
  double ce = 0;
  for (int i = 0; i < 4; ++i) {
    double m = -1e300, z = 0;
    for (int j = 0; j < 6; ++j) m = std::max(m, static_cast<double>(x(i, j)));
    for (int j = 0; j < 6; ++j) z += std::exp(x(i, j) - m);
    for (int j = 0; j < 6; ++j) {
      sm.push_back(std::exp(x(i, j) - m) / z);
      lsm.push_back(x(i, j) - m - std::log(z));
    }
    ce -= lsm[static_cast<std::size_t>(i * 6 + y(i))];
  }
  check_close(eval(softmax(x)), sm, tol);
  check_close(eval(log_softmax(x)), lsm, tol);
  check_close(eval(cross_entropy(x, y)), {ce / 4}, tol);
  // large logits do not overflow
  Tensor<T> big = eval(x * 1000);
  Tensor<T> p = eval(softmax(big));
  for (index_t i = 0; i < p.numel(); ++i) CHECK(std::isfinite(static_cast<double>(p.data()[i])));
}

// The per-element row formulas of kernels/cpu/rows.hpp are the ones the CUDA
// row kernels call (WEFT_HD): checked here in double against their
// definitions (explicit Jacobians, the smoothed target's cross-entropy, and
// central differences of a layer-norm row), so the GPU's arithmetic is
// covered by a test that runs without a GPU.
TEST_CASE("the row formulas shared with the CUDA kernels match their definitions") {
  const int c = 7;
  std::mt19937 rng(5);
  std::normal_distribution<double> nd;
  double x[c], dy[c], g[c], b[c];
  for (int j = 0; j < c; ++j) {
    x[j] = 2 * nd(rng);
    dy[j] = nd(rng);
    g[j] = 1 + 0.5 * nd(rng);
    b[j] = nd(rng);
  }
  double m = x[0], z = 0;
  for (int j = 1; j < c; ++j) m = std::max(m, x[j]);
  for (int j = 0; j < c; ++j) z += std::exp(x[j] - m);
  double p[c], lp[c];
  for (int j = 0; j < c; ++j) {
    lp[j] = kernels::log_softmax_at(x[j], m, std::log(z));
    p[j] = std::exp(x[j] - m) / z;
    CHECK(lp[j] == doctest::Approx(std::log(p[j])).epsilon(1e-12));
  }
  // softmax: dx_i = sum_j dy_j y_j (delta_ij - y_i); log_softmax: dx_i = dy_i - p_i sum_j dy_j
  double acc_s = 0, acc_l = 0;
  for (int j = 0; j < c; ++j) {
    acc_s += dy[j] * p[j];
    acc_l += dy[j];
  }
  for (int i = 0; i < c; ++i) {
    double js = 0;
    for (int j = 0; j < c; ++j) js += dy[j] * p[j] * ((i == j ? 1.0 : 0.0) - p[i]);
    CHECK(kernels::softmax_grad_at<false>(p[i], dy[i], acc_s) == doctest::Approx(js).epsilon(1e-12));
    CHECK(kernels::softmax_grad_at<true>(lp[i], dy[i], acc_l) == doctest::Approx(dy[i] - p[i] * acc_l).epsilon(1e-12));
  }
  // cross-entropy against the target (1 - eps) onehot + eps / C
  double total = 0;
  for (int j = 0; j < c; ++j) total += x[j];
  for (double eps : {0.0, 0.1, 1.0}) {
    const int label = 3;
    double want = 0;
    for (int j = 0; j < c; ++j) want -= ((j == label ? 1 - eps : 0.0) + eps / c) * std::log(p[j]);
    CHECK(kernels::cross_entropy_row_loss(m, x[label], std::log(z), eps, total, index_t(c)) ==
          doctest::Approx(want).epsilon(1e-12));
  }
  // layer norm: y from its definition; dx = J^T dy by central differences
  auto row = [&](const double* xs, double* ys) {
    double mu = 0, var = 0;
    for (int j = 0; j < c; ++j) mu += xs[j] / c;
    for (int j = 0; j < c; ++j) var += (xs[j] - mu) * (xs[j] - mu);
    const double rs = kernels::layer_norm_rstd(var, index_t(c), 1e-5);
    CHECK(rs == doctest::Approx(1 / std::sqrt(var / c + 1e-5)).epsilon(1e-12));
    for (int j = 0; j < c; ++j) ys[j] = kernels::layer_norm_at(xs[j], mu, rs, g[j], b[j]);
    return std::pair{mu, rs};
  };
  double y[c];
  const auto [mu, rs] = row(x, y);
  double mg = 0, mgx = 0;
  for (int j = 0; j < c; ++j) {
    CHECK(y[j] == doctest::Approx((x[j] - mu) / std::sqrt(1 / (rs * rs)) * g[j] + b[j]).epsilon(1e-12));
    mg += dy[j] * g[j] / c;
    mgx += dy[j] * g[j] * ((x[j] - mu) * rs) / c;
  }
  for (int i = 0; i < c; ++i) {
    const double h = 1e-6;
    double xp[c], xm[c], yp[c], ym[c];
    std::copy(x, x + c, xp);
    std::copy(x, x + c, xm);
    xp[i] += h;
    xm[i] -= h;
    row(xp, yp);
    row(xm, ym);
    double fd = 0;
    for (int j = 0; j < c; ++j) fd += dy[j] * (yp[j] - ym[j]) / (2 * h);
    CHECK(kernels::layer_norm_dx_at(dy[i], g[i], (x[i] - mu) * rs, rs, mg, mgx) == doctest::Approx(fd).epsilon(1e-6));
  }
}

TEST_CASE("aliasing is handled, never silently wrong") {
  Tensor<float> x({3, 3});
  for (int i = 0; i < 9; ++i) x.data()[i] = static_cast<float>(i);
  Tensor<float> expect = eval(transpose(x) * 1.0f);
  x = transpose(x);
  CHECK(x.to_vector() == expect.to_vector());
  Tensor<float> r({2, 3}, {1, 2, 3, 4, 5, 6});
  r = transpose(r);  // non-square: resized
  CHECK(r.shape() == Shape{3, 2});
  CHECK(r(2, 1) == 6.0f);
  Tensor<float> v({4}, {1, 2, 3, 4});
  v = v / sum(v);
  CHECK(v.to_vector() == std::vector<float>{0.1f, 0.2f, 0.3f, 0.4f});
  // overlapping shifted views: out[i] = in[i] + 1 with out = in shifted by one
  Tensor<float> s({5}, {0, 1, 2, 3, 4});
  s.slice(1, 5) = s.slice(0, 4) + 0.5f;
  CHECK(s.to_vector() == std::vector<float>{0, 0.5f, 1.5f, 2.5f, 3.5f});
  // same-element reads need no copy and are right
  Tensor<float> t({3}, {1, 2, 3});
  t = t * t + t;
  CHECK(t.to_vector() == std::vector<float>{2, 6, 12});
}

TEST_CASE("integer tensors and strided operands") {
  Tensor<std::int32_t> a({3}, {1, 2, 3});
  Tensor<std::int32_t> b = eval(a * a + 1);
  CHECK(b.to_vector() == std::vector<std::int32_t>{2, 5, 10});
  Tensor<float> m({2, 3}, {1, 2, 3, 4, 5, 6});
  Tensor<float> col = eval(m.transposed().row(1) * 10.0f);  // column 1 of m
  CHECK(col.to_vector() == std::vector<float>{20, 50});
  Tensor<float> f = eval(cast<float>(a) / 2.0f);
  CHECK(f.to_vector() == std::vector<float>{0.5f, 1.0f, 1.5f});
}

namespace {
// n floats in [0, 1) from a counter hash (fast enough for 2^24), and their sum
// in double: all-positive data, so a relative error means what it says.
Tensor<float> uniform01(const Shape& s, std::uint64_t seed) {
  Tensor<float> t(s);
  for (index_t i = 0; i < t.numel(); ++i) {
    std::uint64_t z = (static_cast<std::uint64_t>(i) + seed * 0x9E3779B97F4A7C15ull) * 0xBF58476D1CE4E5B9ull;
    z ^= z >> 31;
    z *= 0x94D049BB133111EBull;
    z ^= z >> 29;
    t.data()[i] = static_cast<float>(z >> 40) * 0x1p-24f;
  }
  return t;
}
double rel(double x, double ref) { return std::abs(x - ref) / std::abs(ref); }
}  // namespace

// One running sum per output lost 3.3e-2 (axis) and 5.7e-4 (whole) at 2^24
// float32 elements; cascades keep the error near JAX's/NumPy's. Bound: 1e-6,
// about 16 float32 epsilons (a cascade's worst case over 2^24 is ~32 eps; the
// measured errors are ~1e-7 and below).
TEST_CASE("float32 sums stay accurate from 2^20 to 2^24 elements, whole and along each axis") {
  const double bound = 1e-6;
  for (int lg : {20, 22, 24}) {
    const index_t n = index_t(1) << lg, cols = 16;
    INFO("n = 2^" << lg);
    Tensor<float> x = uniform01({n / cols, cols}, static_cast<std::uint64_t>(lg));
    std::vector<double> col(cols, 0.0), row(static_cast<std::size_t>(n / cols), 0.0);
    double total = 0;
    for (index_t i = 0; i < n / cols; ++i)
      for (index_t j = 0; j < cols; ++j) {
        double v = x(i, j);
        col[static_cast<std::size_t>(j)] += v;
        row[static_cast<std::size_t>(i)] += v;
        total += v;
      }
    CHECK(rel(eval(sum(x)).item(), total) < bound);
    CHECK(rel(eval(mean(x)).item(), total / static_cast<double>(n)) < bound);
    // along the outer axis: 2^(lg-4) values per output
    Tensor<float> s0 = eval(sum(x, 0));
    double worst = 0;
    for (index_t j = 0; j < cols; ++j) worst = std::max(worst, rel(s0.data()[j], col[static_cast<std::size_t>(j)]));
    CHECK(worst < bound);
    // along the last axis of the transposed layout: 2^(lg-4) values per row
    Tensor<float> xt = eval(transpose(x) * 1.0f);  // (16, n / 16), contiguous
    Tensor<float> s1 = eval(sum(xt, 1));
    worst = 0;
    for (index_t j = 0; j < cols; ++j) worst = std::max(worst, rel(s1.data()[j], col[static_cast<std::size_t>(j)]));
    CHECK(worst < bound);
    // one output of all n values, along an outer axis and along the last one
    CHECK(rel(eval(sum(x.reshape({n, 1}), 0)).item(), total) < bound);
    CHECK(rel(eval(sum(x.reshape({1, n}), 1)).item(), total) < bound);
    CHECK(rel(eval(mean(x.reshape({n, 1}), 0)).item(), total / static_cast<double>(n)) < bound);
    // a strided read (the general path) of the same sums
    Tensor<float> s2 = eval(sum(x.transposed(), 1));
    worst = 0;
    for (index_t j = 0; j < cols; ++j) worst = std::max(worst, rel(s2.data()[j], col[static_cast<std::size_t>(j)]));
    CHECK(worst < bound);
    // the full sum over a broadcast operand (general path)
    Tensor<float> ones({cols}, 1.0f);
    CHECK(rel(eval(sum(x * ones)).item(), total) < bound);
    // max is exact whichever the order
    CHECK(eval(max(x)).item() == *std::max_element(x.data(), x.data() + n));
  }
}

TEST_CASE("log_softmax and cross_entropy are exact to float32 for logits with a large offset") {
  // x - (m + log z) rounds at the magnitude of m (1e4: ulp ~1e-3); (x - m) - log z does not.
  const index_t rows = 4, cols = 6;
  Tensor<float> x = randn<float>({rows, cols}, 31, 2.0);
  for (index_t i = 0; i < x.numel(); ++i) x.data()[i] += 10000.0f;
  Tensor<std::int64_t> y({rows}, {5, 0, 2, 3});
  Tensor<float> ls = eval(log_softmax(x));
  double ce = 0;
  for (index_t i = 0; i < rows; ++i) {
    double m = -1e300, z = 0;
    for (index_t j = 0; j < cols; ++j) m = std::max(m, static_cast<double>(x(i, j)));
    for (index_t j = 0; j < cols; ++j) z += std::exp(x(i, j) - m);
    for (index_t j = 0; j < cols; ++j) {
      double ref = (x(i, j) - m) - std::log(z);
      INFO("log_softmax(" << i << ", " << j << ") = " << ls(i, j) << " vs " << ref);
      CHECK(std::abs(ls(i, j) - ref) <= 2e-6 * (1 + std::abs(ref)));
    }
    ce -= (x(i, y(i)) - m) - std::log(z);
  }
  ce /= rows;
  float got = eval(cross_entropy(x, y)).item();
  INFO("cross_entropy " << got << " vs " << ce);
  CHECK(std::abs(got - ce) <= 2e-6 * (1 + std::abs(ce)));
  // its gradient, (softmax - onehot) / N, from the same kept quantities
  auto [v, g] = value_and_grad([&](auto a) { return cross_entropy(a, y); }, x);
  for (index_t i = 0; i < rows; ++i) {
    double m = -1e300, z = 0;
    for (index_t j = 0; j < cols; ++j) m = std::max(m, static_cast<double>(x(i, j)));
    for (index_t j = 0; j < cols; ++j) z += std::exp(x(i, j) - m);
    for (index_t j = 0; j < cols; ++j) {
      double ref = (std::exp(x(i, j) - m) / z - (j == y(i) ? 1.0 : 0.0)) / rows;
      CHECK(std::abs(g(i, j) - ref) <= 1e-6);
    }
  }
}

TEST_CASE("reduction arguments: any integer axis, keepdim as a bool or a tag, bad axes named") {
  Tensor<float> x = randn<float>({3, 4}, 32);
  const std::vector<float> ref = eval(sum(x, 1)).to_vector();
  CHECK(eval(sum(x, index_t{1})).to_vector() == ref);
  CHECK(eval(sum(x, std::size_t{1})).to_vector() == ref);
  CHECK(eval(sum(x, 1u)).to_vector() == ref);
  CHECK(eval(sum(x, std::int8_t{-1})).to_vector() == ref);
  CHECK(eval(mean(x, index_t{0})).shape() == Shape{4});
  CHECK(eval(max(x, std::size_t{0}, true)).shape() == Shape{1, 4});
  CHECK(sum(x, 1, /*keepdim=*/true).shape() == Shape{3, 1});
  CHECK(sum(x, 1, keepdim).shape() == Shape{3, 1});
  CHECK(mean(x, keepdim).shape() == Shape{1, 1});
  CHECK(max(x).shape() == Shape{});
  const std::string msg = message_of([&] { (void)sum(x, std::size_t{1} << 40); });
  CHECK(msg.find("sum: axis 1099511627776 is out of range") != std::string::npos);
  CHECK_THROWS_AS((void)mean(x, -5), ValueError);
}
