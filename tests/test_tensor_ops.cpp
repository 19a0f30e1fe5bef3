// The tensor operations a transformer needs: views (permute, transpose,
// reshape, slice, split, chunk), batched matmul with broadcast batch axes,
// concat, where and the causal mask, erf and both GELUs. Each value is
// checked against a plain reference written here (index loops), each adjoint
// by finite differences (gradcheck, double), also through non-contiguous
// inputs; shape errors are checked for their sentences.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>
#include <weft/expr/affine.hpp>
#include <weft/expr/attention.hpp>
#include <weft/expr/concat.hpp>
#include <weft/expr/layer_norm.hpp>
#include <weft/expr/let.hpp>
#include <weft/expr/matmul.hpp>
#include <weft/expr/view.hpp>
#include <weft/expr/where.hpp>
#include <weft/weft.hpp>

using namespace weft;

namespace {

template <class T = double>
Tensor<T> randn(const Shape& s, unsigned seed, double scale = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, scale);
  Tensor<T> t(s);
  for (index_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(nd(rng));
  return t;
}

#define CHECK_GRAD(...)               \
  do {                                \
    auto r_ = gradcheck(__VA_ARGS__); \
    INFO(r_.message);                 \
    CHECK(r_.ok);                     \
  } while (0)

// Row-major multi-index of flat position i in shape s, padded to 4.
std::array<index_t, 4> unflat(const Shape& s, index_t i) {
  std::array<index_t, 4> ix{0, 0, 0, 0};
  for (int d = s.rank - 1; d >= 0; --d) {
    ix[static_cast<std::size_t>(d)] = i % s[d];
    i /= s[d];
  }
  return ix;
}
index_t flat(const Shape& s, const std::array<index_t, 4>& ix) {
  index_t f = 0;
  for (int d = 0; d < s.rank; ++d) f = f * s[d] + ix[static_cast<std::size_t>(d)];
  return f;
}

// Reference permute: out[j...] = x[i...] with i[perm[k]] = j[k].
template <class T>
Tensor<T> ref_permute(const Tensor<T>& x, std::vector<int> perm) {
  Shape s = x.shape(), o = s;
  for (int k = 0; k < s.rank; ++k) o[k] = s[perm[static_cast<std::size_t>(k)]];
  Tensor<T> r(o);
  for (index_t j = 0; j < r.numel(); ++j) {
    auto jx = unflat(o, j);
    std::array<index_t, 4> ix{};
    for (int k = 0; k < s.rank; ++k) ix[static_cast<std::size_t>(perm[static_cast<std::size_t>(k)])] = jx[static_cast<std::size_t>(k)];
    r.data()[j] = x.data()[flat(s, ix)];
  }
  return r;
}

// Reference batched matmul with NumPy broadcasting of the batch axes (loops).
template <class T>
Tensor<T> ref_matmul(const Tensor<T>& a, const Tensor<T>& b, bool ta = false, bool tb = false) {
  Shape sa = a.shape(), sb = b.shape();
  const index_t m = ta ? sa.back() : sa.back(2), k = ta ? sa.back(2) : sa.back(), n = tb ? sb.back(2) : sb.back();
  Shape ba, bb, bo;
  ba.rank = sa.rank - 2;
  bb.rank = sb.rank - 2;
  for (int i = 0; i < ba.rank; ++i) ba[i] = sa[i];
  for (int i = 0; i < bb.rank; ++i) bb[i] = sb[i];
  REQUIRE(broadcast_shapes(ba, bb, bo));
  Shape o = bo;
  o.rank = bo.rank + 2;
  o[bo.rank] = m;
  o[bo.rank + 1] = n;
  Tensor<T> r(o);
  const index_t nb = bo.numel();
  auto batch_off = [&](const Shape& bs, index_t ob) {
    auto oix = unflat(bo, ob);
    index_t f = 0;
    for (int d = 0; d < bs.rank; ++d) {
      index_t i = oix[static_cast<std::size_t>(d + bo.rank - bs.rank)];
      f = f * bs[d] + (bs[d] == 1 ? 0 : i);
    }
    return f;
  };
  for (index_t q = 0; q < nb; ++q) {
    const T* pa = a.data() + batch_off(ba, q) * m * k;
    const T* pb = b.data() + batch_off(bb, q) * k * n;
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < n; ++j) {
        T acc = 0;
        for (index_t l = 0; l < k; ++l) acc += (ta ? pa[l * m + i] : pa[i * k + l]) * (tb ? pb[j * k + l] : pb[l * n + j]);
        r.data()[q * m * n + i * n + j] = acc;
      }
  }
  return r;
}

template <class T>
void check_close(const Tensor<T>& got, const Tensor<T>& want, double tol) {
  REQUIRE(got.shape() == want.shape());
  double worst = 0;
  for (index_t i = 0; i < got.numel(); ++i)
    worst = std::max(worst, std::abs(static_cast<double>(got.data()[i]) - static_cast<double>(want.data()[i])));
  CHECK(worst <= tol);
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

// ---------------------------------------------------------------- views

TEST_CASE("permute and transpose on any axes: values, and views read in place") {
  Tensor<double> x = randn({2, 3, 4, 5}, 1);
  for (auto perm : std::vector<std::vector<int>>{{0, 2, 1, 3}, {3, 2, 1, 0}, {1, 3, 0, 2}, {0, 1, 3, 2}}) {
    Tensor<double> got = eval(permute(x, perm[0], perm[1], perm[2], perm[3]));
    check_close(got, ref_permute(x, perm), 0.0);
  }
  Tensor<double> t = eval(transpose(x, 1, -1));
  check_close(t, ref_permute(x, {0, 3, 2, 1}), 0.0);
  // Of a tensor it is a leaf over permuted strides: no node, no copy.
  auto p = permute(x, 0, 2, 1, 3);
  static_assert(std::is_same_v<decltype(p), Leaf<double, cpu>>);
  CHECK(p.v.data == x.data());
  // Fused with the elementwise region around it.
  Tensor<double> y = randn({2, 4, 3, 5}, 2);
  Tensor<double> z = eval(permute(x, 0, 2, 1, 3) * y + 1.0);
  Tensor<double> zr = ref_permute(x, {0, 2, 1, 3});
  for (index_t i = 0; i < zr.numel(); ++i) zr.data()[i] = zr.data()[i] * y.data()[i] + 1.0;
  check_close(z, zr, 1e-15);
  // Of a computed expression, and stacked views, compose.
  Tensor<double> e = eval(permute(transpose(exp(x), 0, 3), 1, 0, 3, 2));
  Tensor<double> ex = eval(exp(x));
  check_close(e, ref_permute(ref_permute(ex, {3, 1, 2, 0}), {1, 0, 3, 2}), 1e-15);
}

TEST_CASE("reshape: a view where strides allow, one copy where they do not") {
  Tensor<double> x = randn({2, 3, 8}, 3);
  Tensor<double> r = eval(reshape(x, Shape{6, 2, 4}));
  CHECK(r.shape() == Shape{6, 2, 4});
  for (index_t i = 0; i < x.numel(); ++i) CHECK(r.data()[i] == x.data()[i]);  // same elements in row-major order
  // Splitting the last axis of a column slice (q of a fused qkv) is still a view.
  Tensor<double> qkv = randn({2, 5, 12}, 4);
  auto q = reshape(slice(qkv, -1, 4, 8), Shape{2, 5, 2, 2});
  CHECK(q.chain.n == 1);  // the slice of a tensor is a leaf over an offset view; the reshape its one step
  CHECK(q.chain.steps[0].kind == detail::ViewStep::reshape);
  Workspace<> ws;
  Exec<cpu> ex{ws};
  auto s = q.forward(ex);
  CHECK(s.val.data == qkv.data() + 4);  // read in place
  Tensor<double> qv = eval(q);
  for (index_t b = 0; b < 2; ++b)
    for (index_t t = 0; t < 5; ++t)
      for (index_t h = 0; h < 2; ++h)
        for (index_t d = 0; d < 2; ++d) CHECK(qv(b, t, h, d) == qkv(b, t, 4 + h * 2 + d));
  // Merging permuted axes cannot be a view: copied once, right values.
  Tensor<double> m = eval(reshape(permute(x, 0, 2, 1), Shape{2, 24}));
  Tensor<double> pr = ref_permute(x, {0, 2, 1});
  Tensor<double> prr = pr;
  prr.resize(Shape{2, 24});
  check_close(m, prr, 0.0);
  CHECK(error_of([&] { (void)reshape(x, Shape{5, 5}); }).find("reshape: cannot view shape (2, 3, 8) (48 elements) as (5, 5)") !=
        std::string::npos);
}

TEST_CASE("slice, split and chunk along an axis") {
  Tensor<double> x = randn({3, 4, 9}, 5);
  Tensor<double> s = eval(slice(x, 1, 1, 3));
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 2; ++j)
      for (index_t k = 0; k < 9; ++k) CHECK(s(i, j, k) == x(i, j + 1, k));
  auto [a, b, c] = chunk<3>(x, -1);
  Tensor<double> av = eval(a), bv = eval(b), cv = eval(c);
  auto [p, q] = split(x, 2, 2, 7);
  Tensor<double> pv = eval(p), qv = eval(q);
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 4; ++j)
      for (index_t k = 0; k < 3; ++k) {
        CHECK(av(i, j, k) == x(i, j, k));
        CHECK(bv(i, j, k) == x(i, j, k + 3));
        CHECK(cv(i, j, k) == x(i, j, k + 6));
      }
  CHECK(pv.shape() == Shape{3, 4, 2});
  CHECK(qv(2, 3, 6) == x(2, 3, 8));
  CHECK(error_of([&] { (void)chunk<2>(x, -1); }).find("chunk: axis -1 of shape (3, 4, 9) does not split into 2 equal parts") !=
        std::string::npos);
  CHECK(error_of([&] { (void)split(x, 0, 1, 1); }).find("split: sizes adding up to 2 along axis 0 of shape (3, 4, 9)") !=
        std::string::npos);
  CHECK(error_of([&] { (void)slice(x, 1, 2, 5); }).find("slice: [2, 5) along axis 1 is out of range for shape (3, 4, 9)") !=
        std::string::npos);
  CHECK(error_of([&] { (void)permute(x, 0, 0, 1); }).find("permute: axes (0, 0, 1) are not a permutation of the axes of shape (3, 4, 9)") !=
        std::string::npos);
  CHECK(error_of([&] { (void)permute(x, 0, 1); }).find("permute: 2 axes (0, 1) for an operand of shape (3, 4, 9) (rank 3)") !=
        std::string::npos);
}

TEST_CASE("view adjoints: inputs, computed expressions, parameters, non-contiguous inputs") {
  Tensor<double> x = randn({2, 3, 4}, 6), w = randn({4, 2, 3}, 7);
  // of an input (slot through permuted strides; reshape and slice through a buffer)
  CHECK_GRAD([&](auto a) { return permute(a, 2, 0, 1) * w; }, x);
  CHECK_GRAD([](auto a) { return sin(transpose(a, 0, 2)); }, x);
  CHECK_GRAD([](auto a) { return reshape(a, Shape{4, 6}) * 2.0; }, x);
  CHECK_GRAD([](auto a) { return exp(slice(a, 2, 1, 3)); }, x);
  CHECK_GRAD([](auto a) {
    auto [p, q, r] = chunk<3>(a, 1);
    return p * q + sin(r);
  }, x);
  // of computed expressions, stacked, and broadcast in the region above
  CHECK_GRAD([](auto a) { return reshape(permute(tanh(a), 1, 0, 2), Shape{3, 8}) * 3.0; }, x);
  CHECK_GRAD([](auto a) { return slice(exp(a), 0, 1, 2) + reshape(a * a, Shape{2, 3, 4}); }, x);
  CHECK_GRAD([](auto a) { return a + slice(sin(a), 1, 2, 3); }, x);  // (2, 1, 4) broadcast over axis 1
  CHECK_GRAD([](auto a) { return a * reshape(slice(a, 2, 0, 1), Shape{2, 3, 1}); }, x);
  // the same input through several views
  CHECK_GRAD([](auto a) { return transpose(a, 0, 1) * slice(transpose(a, 0, 1), 2, 0, 4); }, x);
  // non-contiguous inputs (a transposed view, a column block of a wider matrix)
  Tensor<double> wide = randn({4, 10}, 8);
  TensorView<double> block(wide.data() + 2, Shape{4, 6}, Strides{{10, 1}});
  CHECK_GRAD([](auto a) { return reshape(a, Shape{2, 12}) * 1.5; }, block);
  CHECK_GRAD([](auto a) { return slice(permute(a, 1, 0), 0, 1, 5); }, block);
  CHECK_GRAD([](auto a) { return exp(reshape(a, Shape{5, 8})); }, wide.transposed());
}

TEST_CASE("views of a parameter deliver its gradient") {
  Parameter<double> p("p", {3, 4});
  Tensor<double> v = randn({3, 4}, 9), c = randn({4, 3}, 10), r = randn({12}, 11);
  std::copy(v.data(), v.data() + 12, p.value.data());
  p.zero_grad();
  Workspace<> ws;
  backward(sum(transpose(p, 0, 1) * c) + 2.0 * sum(slice(p, 1, 1, 3)) + sum(reshape(p, Shape{12}) * r), ws);
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 4; ++j) {
      const double want = c(j, i) + ((j == 1 || j == 2) ? 2.0 : 0.0) + r(i * 4 + j);
      CHECK(std::abs(p.grad(i, j) - want) < 1e-12);
    }
}

// ---------------------------------------------------------------- batched matmul

TEST_CASE("batched matmul against the plain reference: ranks 3 and 4, broadcast batch axes, transposes") {
  struct Case {
    Shape a, b;
    bool ta, tb;
  };
  for (const Case& cs : std::vector<Case>{{{3, 4, 5}, {3, 5, 2}, false, false},
                                           {{2, 3, 4, 5}, {2, 3, 5, 6}, false, false},
                                           {{2, 3, 4, 5}, {5, 6}, false, false},       // x @ W: folded into one gemm
                                           {{4, 5}, {2, 3, 5, 6}, false, false},       // A broadcast over (2, 3)
                                           {{2, 1, 4, 5}, {1, 3, 5, 6}, false, false},  // both broadcast
                                           {{3, 4, 5}, {2, 1, 5, 6}, false, false},     // ranks 3 and 4
                                           {{2, 3, 5, 4}, {2, 3, 6, 5}, true, true},    // q k^T style
                                           {{2, 3, 5, 4}, {3, 5, 6}, true, false}}) {
    auto run = [&](const auto& a, const auto& b) {
      return cs.ta ? (cs.tb ? eval(matmul(transpose(a, -2, -1), transpose(b, -1, -2))) : eval(matmul(transpose(a, -2, -1), b)))
                   : (cs.tb ? eval(matmul(a, transpose(b, -2, -1))) : eval(matmul(a, b)));
    };
    Tensor<double> a = randn(cs.a, 11), b = randn(cs.b, 12);
    Tensor<double> want = ref_matmul(a, b, cs.ta, cs.tb);
    check_close(run(a, b), want, 1e-12);
    // float through CBLAS against the double reference
    Tensor<float> af = eval(cast<float>(a)), bf = eval(cast<float>(b));
    Tensor<float> got = run(af, bf);
    Tensor<double> gd = eval(cast<double>(got));
    check_close(gd, want, 1e-4);
  }
  Tensor<double> a = randn({2, 3, 4}, 13), b = randn({2, 5, 6}, 14);
  CHECK(error_of([&] { (void)matmul(a, b); }).find("matmul: inner dimensions differ: (2, 3, 4) @ (2, 5, 6)") != std::string::npos);
  Tensor<double> c = randn({2, 4, 5}, 15), d = randn({3, 5, 2}, 16);
  CHECK(error_of([&] { (void)matmul(c, d); }).find("matmul: the batch dimensions of (2, 4, 5) @ (3, 5, 2) do not broadcast") !=
        std::string::npos);
  Tensor<double> v = randn({5}, 17);
  CHECK(error_of([&] { (void)matmul(c, v); }).find("matmul: operands must be matrices or stacks of matrices (rank 2 to 4), got (2, 4, 5) @ (5,)") !=
        std::string::npos);
}

TEST_CASE("batched matmul adjoints reduce over broadcast batch axes") {
  Tensor<double> q = randn({2, 2, 3, 4}, 20), k = randn({2, 2, 5, 4}, 21), w = randn({4, 3}, 22), x = randn({2, 3, 4}, 23);
  CHECK_GRAD([](auto a, auto b) { return matmul(a, transpose(b, -2, -1)); }, q, k);
  CHECK_GRAD([](auto a, auto b) { return matmul(a, b); }, x, w);  // folded x @ W
  CHECK_GRAD([](auto a, auto b) { return matmul(b, a); }, x, randn({2, 3}, 24));  // W broadcast on the left
  Tensor<double> h = randn({2, 1, 3, 4}, 25), g = randn({1, 3, 4, 2}, 26);
  CHECK_GRAD([](auto a, auto b) { return tanh(matmul(a, b)); }, h, g);
  // operands that are views of computed expressions and of inputs (heads split from a projection)
  Tensor<double> xs = randn({2, 3, 8}, 27);
  CHECK_GRAD([](auto a) {
    auto [qq, kk] = chunk<2>(a, -1);
    auto qh = permute(reshape(qq, Shape{2, 3, 2, 2}), 0, 2, 1, 3);  // (B, H, T, D)
    auto kh = permute(reshape(kk, Shape{2, 3, 2, 2}), 0, 2, 3, 1);  // (B, H, D, T)
    return matmul(qh, kh);
  }, xs);
  CHECK_GRAD([](auto a) { return matmul(permute(exp(a), 0, 2, 1), slice(a, 2, 0, 3)); }, xs);
  // non-contiguous input
  Tensor<double> wide = randn({3, 10}, 28);
  TensorView<double> block(wide.data() + 1, Shape{3, 4}, Strides{{10, 1}});
  CHECK_GRAD([&](auto a) { return matmul(x, transpose(a, 0, 1)); }, block);
}

TEST_CASE("batched matmul: a parameter on the right, float path against double") {
  Parameter<float> W("W", {8, 6});
  Tensor<double> wd = randn({8, 6}, 30);
  for (index_t i = 0; i < 48; ++i) W.value.data()[i] = static_cast<float>(wd.data()[i]);
  W.zero_grad();
  Tensor<double> xd = randn({2, 5, 8}, 31);
  Tensor<float> xf = eval(cast<float>(xd));
  Workspace<> ws;
  backward(sum(matmul(xf, W) * matmul(xf, W)), ws);
  // reference: d/dW sum((xW)^2) = 2 x^T (x W), x flattened to rows
  Tensor<double> y = ref_matmul(xd, wd);
  for (index_t i = 0; i < 8; ++i)
    for (index_t j = 0; j < 6; ++j) {
      double want = 0;
      for (index_t r = 0; r < 10; ++r) want += 2 * xd.data()[r * 8 + i] * y.data()[r * 6 + j];
      CHECK(std::abs(W.grad(i, j) - want) < 1e-3 * (1 + std::abs(want)));
    }
}

// ---------------------------------------------------------------- concat

TEST_CASE("concat along any axis: values against index loops, adjoints, split as its inverse") {
  Tensor<double> a = randn({2, 3, 4}, 40), b = randn({2, 1, 4}, 41), c = randn({2, 2, 4}, 42);
  Tensor<double> y = eval(concat(1, a, b, c));
  REQUIRE(y.shape() == Shape{2, 6, 4});
  for (index_t i = 0; i < 2; ++i)
    for (index_t k = 0; k < 4; ++k) {
      for (index_t j = 0; j < 3; ++j) CHECK(y(i, j, k) == a(i, j, k));
      CHECK(y(i, 3, k) == b(i, 0, k));
      for (index_t j = 0; j < 2; ++j) CHECK(y(i, 4 + j, k) == c(i, j, k));
    }
  Tensor<double> z = eval(concat(-1, a, exp(a)));
  for (index_t i = 0; i < 2; ++i)
    for (index_t j = 0; j < 3; ++j)
      for (index_t k = 0; k < 4; ++k) CHECK(z(i, j, 4 + k) == doctest::Approx(std::exp(a(i, j, k))));
  // split undoes concat
  auto [p, q, r] = split(y, 1, 3, 1, 2);
  Tensor<double> pv = eval(p), rv = eval(r);
  for (index_t i = 0; i < a.numel(); ++i) CHECK(pv.data()[i] == a.data()[i]);
  for (index_t i = 0; i < c.numel(); ++i) CHECK(rv.data()[i] == c.data()[i]);
  (void)q;
  CHECK_GRAD([](auto x, auto w, auto v) { return tanh(concat(1, x, w * 2.0, sin(v))); }, a, b, c);
  CHECK_GRAD([](auto x) { return concat(0, x, exp(x), transpose(x, 0, 0)) * 1.5; }, a);
  CHECK_GRAD([](auto x) { return concat(2, permute(x, 0, 1, 2), slice(x, 2, 1, 3)); }, a);
  Tensor<double> wide = randn({3, 10}, 43);
  TensorView<double> block(wide.data() + 1, Shape{3, 4}, Strides{{10, 1}});
  CHECK_GRAD([](auto x) { return concat(0, x, slice(x * 2.0, 0, 0, 2)); }, block);
  CHECK_GRAD([](auto x) { return concat(1, transpose(x, 0, 1), slice(exp(transpose(x, 0, 1)), 1, 1, 3)); }, block);
  CHECK(error_of([&] { (void)concat(0, a, c); }).find("concat: operand 1 of shape (2, 2, 4) does not match operand 0 of shape (2, 3, 4) outside axis 0") !=
        std::string::npos);
}

// ---------------------------------------------------------------- where, causal mask

TEST_CASE("where and the causal mask: values, adjoints, fused with the region") {
  Tensor<double> a = randn({2, 3, 4}, 50), b = randn({3, 4}, 51);
  Tensor<bool> m({3, 1});
  m(0, 0) = true;
  m(1, 0) = false;
  m(2, 0) = true;
  Tensor<double> y = eval(where(m, a, b * 2.0));
  for (index_t i = 0; i < 2; ++i)
    for (index_t j = 0; j < 3; ++j)
      for (index_t k = 0; k < 4; ++k) CHECK(y(i, j, k) == (m(j, 0) ? a(i, j, k) : 2.0 * b(j, k)));
  CHECK_GRAD([&](auto x, auto w) { return exp(where(m, x, w * w)); }, a, b);
  CHECK_GRAD([&](auto x) { return where(m, sin(x), 0.5); }, a);
  // causal: keep key j for query i when j <= i + diagonal, as torch.ones(t, s).tril(diagonal)
  for (index_t diag : {0, 1, -1}) {
    Tensor<double> s = randn({2, 4, 5}, 52);
    Tensor<double> c = eval(where(causal_mask(4, 5, diag), s, -1e9));
    for (index_t h = 0; h < 2; ++h)
      for (index_t i = 0; i < 4; ++i)
        for (index_t j = 0; j < 5; ++j) CHECK(c(h, i, j) == (j <= i + diag ? s(h, i, j) : -1e9));
    Tensor<double> c2 = eval(where(causal_mask(4, 5, diag), slice(s, 0, 1, 2), -1e9));  // unbroadcast, contiguous path
    for (index_t i = 0; i < 4; ++i)
      for (index_t j = 0; j < 5; ++j) CHECK(c2(0, i, j) == (j <= i + diag ? s(1, i, j) : -1e9));
  }
  // masked softmax rows over a causal mask: masked entries get no gradient
  Tensor<double> sc = randn({2, 4, 4}, 53);
  CHECK_GRAD([](auto x) { return softmax(where(causal_mask(4, 4), x, -1e30)); }, sc);
  auto [v, g] = value_and_grad([](auto x) { return sum(where(causal_mask(4, 4), x * x, 0.0)); }, sc);
  (void)v;
  for (index_t h = 0; h < 2; ++h)
    for (index_t i = 0; i < 4; ++i)
      for (index_t j = 0; j < 4; ++j) CHECK(g(h, i, j) == (j <= i ? 2 * sc(h, i, j) : 0.0));
  Tensor<double> bad = randn({2, 4, 4}, 54);
  CHECK(error_of([&] { (void)where(m, a, bad); }).find("where: the mask (3, 1) and the operands (2, 3, 4) and (2, 4, 4) do not broadcast") !=
        std::string::npos);
}

// ---------------------------------------------------------------- erf, gelu

TEST_CASE("erf and both GELUs: values against the C library's erf and tanh, adjoints") {
  Tensor<double> x = randn({50}, 60, 2.0);
  Tensor<double> e = eval(erf(x)), g = eval(gelu(x)), t = eval(gelu_tanh(x));
  Tensor<float> xf = eval(cast<float>(x));
  Tensor<float> ef = eval(erf(xf)), gf = eval(gelu(xf)), tf = eval(gelu_tanh(xf));
  for (index_t i = 0; i < 50; ++i) {
    const double v = x(i);
    const double ge = 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
    const double gt = 0.5 * v * (1 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
    CHECK(e(i) == doctest::Approx(std::erf(v)).epsilon(1e-14));
    CHECK(g(i) == doctest::Approx(ge).epsilon(1e-14));
    CHECK(t(i) == doctest::Approx(gt).epsilon(1e-14));
    CHECK(std::abs(ef(i) - std::erf(v)) < 1e-6);
    CHECK(std::abs(gf(i) - ge) < 1e-5 * (1 + std::abs(ge)));
    CHECK(std::abs(tf(i) - gt) < 1e-5 * (1 + std::abs(gt)));
  }
  CHECK_GRAD([](auto a) { return erf(a); }, x);
  CHECK_GRAD([](auto a) { return gelu(a); }, x);
  CHECK_GRAD([](auto a) { return gelu_tanh(a); }, x);
  CHECK_GRAD([](auto a) { return gelu_tanh(transpose(a, 0, 1)); }, randn({3, 4}, 61).transposed());
}

// ---------------------------------------------------------------- layer norm

TEST_CASE("layer_norm: dx by gradcheck (also through views), dgamma and dbeta by central differences") {
  const index_t d = 6;
  Parameter<double> gamma("gamma", {d}), beta("beta", {d});
  Tensor<double> gv = randn({d}, 70), bv = randn({d}, 71);
  std::copy(gv.data(), gv.data() + d, gamma.value.data());
  std::copy(bv.data(), bv.data() + d, beta.value.data());
  Tensor<double> x = randn({2, 3, d}, 72), c = randn({2, 3, d}, 73);
  CHECK_GRAD([&](auto a) { return layer_norm(a, gamma, beta, 1e-5) * c; }, x);
  CHECK_GRAD([&](auto a) { return layer_norm(permute(a, 1, 0, 2), gamma, beta, 1e-5); }, x);
  CHECK_GRAD([&](auto a) { return layer_norm(sin(a) * 2.0, gamma, beta, 1e-5); }, x);
  Tensor<double> xt = randn({d, 4}, 74);
  CHECK_GRAD([&](auto a) { return layer_norm(a, gamma, beta, 1e-5); }, xt.transposed());
  // dgamma, dbeta
  auto loss = [&] { return eval(sum(layer_norm(x, gamma, beta, 1e-5) * c)).item(); };
  gamma.zero_grad();
  beta.zero_grad();
  Workspace<> ws;
  backward(sum(layer_norm(x, gamma, beta, 1e-5) * c), ws);
  for (Parameter<double>* p : {&gamma, &beta})
    for (index_t j = 0; j < d; ++j) {
      const double h = 1e-6, v0 = p->value(j);
      p->value(j) = v0 + h;
      const double up = loss();
      p->value(j) = v0 - h;
      const double down = loss();
      p->value(j) = v0;
      CHECK(std::abs(p->grad(j) - (up - down) / (2 * h)) < 1e-6);
    }
}

// ---------------------------------------------------------------- together: attention through views

// Multi-head causal attention written with the ops above (the README's
// example) against index loops, and its gradient by gradcheck.
TEST_CASE("causal multi-head attention from one projection, through views, against loops") {
  const index_t B = 2, T = 4, H = 2, D = 3, C = H * D;
  Tensor<double> x = randn({B, T, 3 * C}, 80);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto attention = [&](auto qkv) {
    auto [q, k, v] = chunk<3>(qkv, -1);
    auto heads = [&](auto t) { return permute(reshape(t, Shape{B, T, H, D}), 0, 2, 1, 3); };  // (B, H, T, D)
    auto s = matmul(heads(q), transpose(heads(k), -2, -1)) * scale;                           // (B, H, T, T)
    auto p = softmax(where(causal_mask(T, T), s, -1e30));
    return reshape(permute(matmul(p, heads(v)), 0, 2, 1, 3), Shape{B, T, C});  // (B, T, C)
  };
  Tensor<double> got = eval(attention(x));
  Tensor<double> want({B, T, C});
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < T; ++i) {
        std::vector<double> w(static_cast<std::size_t>(T), 0.0);
        double mx = -1e300, z = 0;
        for (index_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (index_t d = 0; d < D; ++d) dot += x(b, i, h * D + d) * x(b, j, C + h * D + d);
          w[static_cast<std::size_t>(j)] = dot * scale;
          mx = std::max(mx, dot * scale);
        }
        for (index_t j = 0; j <= i; ++j) z += std::exp(w[static_cast<std::size_t>(j)] - mx);
        for (index_t d = 0; d < D; ++d) {
          double o = 0;
          for (index_t j = 0; j <= i; ++j) o += std::exp(w[static_cast<std::size_t>(j)] - mx) / z * x(b, j, 2 * C + h * D + d);
          want(b, i, h * D + d) = o;
        }
      }
  check_close(got, want, 1e-12);
  CHECK_GRAD(attention, x);
  // Not checked here: the same with the projection shared through let(). A
  // materialising node (matmul, a view) whose operand is let's leaf decides
  // with needs_grad() that nothing below it needs a gradient, so the shared
  // value gets none through it (a gap in let's protocol, open).
}

// ---------------------------------------------------------------- affine, in-place values and adjoints

// affine(x, W, b) puts the bias inside the product (expr/affine.hpp): its
// values and all three gradients against matmul(x, W) + b written out, and
// by finite differences; also under an elementwise region (the GELU of an MLP).
TEST_CASE("affine equals matmul + bias: values, gradients of x, W and b, shape errors") {
  const index_t K = 5, N = 7;
  Parameter<double> W("W", {K, N}), b("b", {N}), W2("W2", {K, N}), b2("b2", {N});
  Tensor<double> wv = randn({K, N}, 90), bv = randn({N}, 91);
  std::copy(wv.data(), wv.data() + K * N, W.value.data());
  std::copy(wv.data(), wv.data() + K * N, W2.value.data());
  std::copy(bv.data(), bv.data() + N, b.value.data());
  std::copy(bv.data(), bv.data() + N, b2.value.data());
  for (const Shape& xs : {Shape{6, K}, Shape{2, 3, K}, Shape{2, 2, 3, K}}) {
    CAPTURE(xs);
    Tensor<double> x = randn(xs, 92), c = randn(eval(matmul(x, W)).shape(), 93);
    Tensor<double> got = eval(affine(x, W, b)), want = eval(matmul(x, W) + b);
    for (index_t i = 0; i < got.numel(); ++i) CHECK(std::abs(got.data()[i] - want.data()[i]) < 1e-12);
    for (auto* p : {&W, &b, &W2, &b2}) p->zero_grad();
    Workspace<> ws;
    backward(sum(gelu(affine(x, W, b)) * c), ws);
    backward(sum(gelu(matmul(x, W2) + b2) * c), ws);
    for (index_t i = 0; i < K * N; ++i) CHECK(std::abs(W.grad.data()[i] - W2.grad.data()[i]) < 1e-10);
    for (index_t i = 0; i < N; ++i) CHECK(std::abs(b.grad.data()[i] - b2.grad.data()[i]) < 1e-10);
    CHECK_GRAD([&](auto a) { return gelu(affine(a, W, b)) * c; }, x);
  }
  // The bias gradient by central differences.
  Tensor<double> x = randn({4, 3, K}, 94), c = randn({4, 3, N}, 95);
  auto loss = [&] { return eval(sum(affine(x, W, b) * c)).item(); };
  b.zero_grad();
  Workspace<> ws;
  backward(sum(affine(x, W, b) * c), ws);
  for (index_t j = 0; j < N; ++j) {
    const double h = 1e-6, v0 = b.value(j);
    b.value(j) = v0 + h;
    const double up = loss();
    b.value(j) = v0 - h;
    const double down = loss();
    b.value(j) = v0;
    CHECK(std::abs(b.grad(j) - (up - down) / (2 * h)) < 1e-6);
  }
  Parameter<double> bad("bad", {N + 1});
  CHECK(error_of([&] { (void)affine(x, W, bad); }).find("affine: bias (8,) is not (7,)") != std::string::npos);
}

// gelu_tanh(affine(x, W, b)) builds the fused node (expr/affine_gelu.hpp); on
// the host it must compute what the unfused expression does, to the bit:
// values, dx, dW and db, also when gradients accumulate (the bias used twice,
// backward run twice). The unfused form is the elementwise node written out
// (make_unary bypasses the overload). Then central differences in double.
namespace {
template <class T>
bool same_bits(const T* a, const T* b, index_t n) {
  return std::memcmp(a, b, static_cast<std::size_t>(n) * sizeof(T)) == 0;
}
}  // namespace

TEST_CASE("gelu_tanh(affine(x, W, b)) is the fused node, with the unfused expression's bits on the host") {
  const index_t K = 9, N = 13;  // N not a multiple of 8: CUDA's aux fallback shape, here for symmetry
  Parameter<float> W("W", {K, N}), b("b", {N}), W2("W2", {K, N}), b2("b2", {N});
  Tensor<float> wv = randn<float>({K, N}, 110, 0.4), bv = randn<float>({N}, 111);
  for (auto* p : {&W, &W2}) std::copy(wv.data(), wv.data() + K * N, p->value.data());
  for (auto* p : {&b, &b2}) std::copy(bv.data(), bv.data() + N, p->value.data());
  {
    Tensor<float> x = randn<float>({4, K}, 112);
    static_assert(std::is_same_v<decltype(gelu_tanh(affine(x, W, b))),
                                 AffineGeluTanh<Leaf<float, cpu>, ParamLeaf<float, cpu>>>);
    static_assert(!std::is_same_v<decltype(gelu(affine(x, W, b))), AffineGeluTanh<Leaf<float, cpu>, ParamLeaf<float, cpu>>>,
                  "only the tanh form is fused: gelu() is the erf form");
    auto h = affine(x, W, b);  // an lvalue affine node is matched too
    static_assert(std::is_same_v<decltype(gelu_tanh(h)), AffineGeluTanh<Leaf<float, cpu>, ParamLeaf<float, cpu>>>);
  }
  static_assert(!kernels::has_gemm_bias_gelu<cpu, float> && !kernels::has_gemm_bias_grad<cpu, float>,
                "the host keeps its unfused steps");
  for (const Shape& xs : {Shape{6, K}, Shape{2, 3, K}, Shape{2, 2, 3, K}}) {
    CAPTURE(xs);
    Tensor<float> x = randn<float>(xs, 113), c = randn<float>(eval(matmul(x, W)).shape(), 114);
    Tensor<float> got = eval(gelu_tanh(affine(x, W, b)));
    Tensor<float> want = eval(make_unary<op::GeluTanh>(affine(x, W2, b2)));
    CHECK(same_bits(got.data(), want.data(), got.numel()));
    check_close(eval(cast<double>(got)), eval(cast<double>(gelu_tanh(matmul(x, W2) + b2))), 1e-5);
    for (auto* p : {&W, &b, &W2, &b2}) p->zero_grad();
    // The node under a region, twice in one loss (the bias and weight used
    // twice: their adjoints accumulate), and a second backward on top.
    auto [v1, dx1] = value_and_grad([&](auto a) { return sum(gelu_tanh(affine(a, W, b)) * c) + sum(gelu_tanh(affine(a, W, b))); }, x);
    auto [v2, dx2] = value_and_grad(
        [&](auto a) { return sum(make_unary<op::GeluTanh>(affine(a, W2, b2)) * c) + sum(make_unary<op::GeluTanh>(affine(a, W2, b2))); },
        x);
    CHECK(v1.item() == v2.item());
    CHECK(same_bits(dx1.data(), dx2.data(), dx1.numel()));
    CHECK(same_bits(W.grad.data(), W2.grad.data(), K * N));
    CHECK(same_bits(b.grad.data(), b2.grad.data(), N));
    Workspace<> ws;
    backward(sum(gelu_tanh(affine(x, W, b)) * c), ws);
    backward(sum(make_unary<op::GeluTanh>(affine(x, W2, b2)) * c), ws);
    CHECK(same_bits(W.grad.data(), W2.grad.data(), K * N));
    CHECK(same_bits(b.grad.data(), b2.grad.data(), N));
    // Read in place by a second product (the MLP's shape) and by let().
    Parameter<float> V("V", {N, K}), V2("V2", {N, K});
    Tensor<float> vv = randn<float>({N, K}, 115, 0.3);
    for (auto* p : {&V, &V2}) std::copy(vv.data(), vv.data() + N * K, p->value.data());
    for (auto* p : {&W, &b, &W2, &b2}) p->zero_grad();
    auto [v3, dx3] = value_and_grad([&](auto a) { return sum(matmul(gelu_tanh(affine(a, W, b)), V) * x); }, x);
    auto [v4, dx4] = value_and_grad([&](auto a) { return sum(matmul(make_unary<op::GeluTanh>(affine(a, W2, b2)), V2) * x); }, x);
    CHECK(v3.item() == v4.item());
    CHECK(same_bits(dx3.data(), dx4.data(), dx3.numel()));
    CHECK(same_bits(V.grad.data(), V2.grad.data(), N * K));
    CHECK(same_bits(W.grad.data(), W2.grad.data(), K * N));
    CHECK(same_bits(b.grad.data(), b2.grad.data(), N));
  }
  // Central differences in double: x through gradcheck, W and b one element at a time.
  Parameter<double> Wd("Wd", {K, N}), bd("bd", {N});
  Tensor<double> wdv = randn({K, N}, 116, 0.4), bdv = randn({N}, 117);
  std::copy(wdv.data(), wdv.data() + K * N, Wd.value.data());
  std::copy(bdv.data(), bdv.data() + N, bd.value.data());
  Tensor<double> x = randn({2, 3, K}, 118), c = randn({2, 3, N}, 119);
  CHECK_GRAD([&](auto a) { return gelu_tanh(affine(a, Wd, bd)) * c; }, x);
  CHECK_GRAD([&](auto a) { return let(gelu_tanh(affine(a, Wd, bd)), [](auto h) { return h * h + h; }) * c; }, x);
  auto loss = [&] { return eval(sum(gelu_tanh(affine(x, Wd, bd)) * c)).item(); };
  Wd.zero_grad();
  bd.zero_grad();
  Workspace<> ws;
  backward(sum(gelu_tanh(affine(x, Wd, bd)) * c), ws);
  for (auto* p : {&Wd, &bd})
    for (index_t i = 0; i < p->numel(); ++i) {
      CAPTURE(p->name);
      CAPTURE(i);
      double& w = p->value.data()[i];
      const double h = 1e-6, w0 = w;
      w = w0 + h;
      const double up = loss();
      w = w0 - h;
      const double down = loss();
      w = w0;
      CHECK(std::abs(p->grad.data()[i] - (up - down) / (2 * h)) < 1e-6);
    }
}

// The gemm_bias_grad hook (kernels/dispatch.hpp) on the host: its fallback,
// bias_grad then gemm, against plain loops; the bias gradient accumulates.
TEST_CASE("kernels::gemm_bias_grad: dW = alpha x^T dy + beta dW and db += column sums of dy") {
  const index_t R = 37, C = 5, O = 11;
  Tensor<double> x = randn({R, C}, 120), dy = randn({R, O}, 121), dw = randn({C, O}, 122), db = randn({O}, 123);
  Tensor<double> dw_want = dw, db_want = db;
  for (index_t i = 0; i < C; ++i)
    for (index_t j = 0; j < O; ++j) {
      double acc = 0;
      for (index_t r = 0; r < R; ++r) acc += x.data()[r * C + i] * dy.data()[r * O + j];
      dw_want.data()[i * O + j] = 0.5 * acc - 2.0 * dw.data()[i * O + j];
    }
  for (index_t j = 0; j < O; ++j)
    for (index_t r = 0; r < R; ++r) db_want.data()[j] += dy.data()[r * O + j];
  Workspace<> ws;
  Exec<cpu> ex(ws);
  kernels::gemm_bias_grad(ex, x.view().transposed(), dy.view(), dw.view(), 0.5, -2.0, db.data());
  check_close(dw, dw_want, 1e-12);
  check_close(db, db_want, 1e-12);
  TensorView<double> strided(dy.data(), Shape{R / 2, O}, Strides{{2 * O, 1}});
  CHECK(error_of([&] { kernels::gemm_bias_grad(ex, x.view().transposed(), strided, dw.view(), 1.0, 1.0, db.data()); })
            .find("gemm_bias_grad: b (18, 11) must be a contiguous matrix") != std::string::npos);
}

// The column sums of the bias gradient (kernels/cpu/rows.hpp) against the
// plain loop in double, over row counts that end in partial blocks of 16.
TEST_CASE("sum_rows: cascaded column sums against the plain reference") {
  for (index_t rows : {1, 15, 16, 17, 300, 1037}) {
    CAPTURE(rows);
    const index_t d = 37;
    Tensor<double> xd = randn({rows, d}, 96);
    Tensor<float> x = eval(cast<float>(xd));
    std::vector<float> got(static_cast<std::size_t>(d), 1.0f), want(static_cast<std::size_t>(d), 1.0f);
    std::vector<float> scratch(static_cast<std::size_t>(kernels::cpu::sum_rows_scratch(rows, d)));
    kernels::cpu::sum_rows(x.data(), rows, d, got.data(), scratch.data());
    kernels::cpu::sum_rows_reference(x.data(), rows, d, want.data());
    for (index_t j = 0; j < d; ++j) CHECK(std::abs(got[j] - want[j]) < 1e-5f * (1.0f + static_cast<float>(rows) * 0.01f));
  }
}

// Nodes whose value lies in their state (matmul, affine, attention, layer
// norm) are read in place by let(), views, matmul and attention, and take the
// adjoint their consumer computed as their own: gradients through each pairing.
TEST_CASE("values and adjoints handed over in place: let, views, matmul and attention of materialised nodes") {
  const index_t d = 4;
  Parameter<double> gamma("gamma", {d}), beta("beta", {d}), W("W", {d, 3 * d}), b("b", {3 * d});
  Tensor<double> gv = randn({d}, 100), wv = randn({d, 3 * d}, 101, 0.5), bv = randn({3 * d}, 102);
  std::copy(gv.data(), gv.data() + d, gamma.value.data());
  std::copy(wv.data(), wv.data() + 3 * d * d, W.value.data());
  std::copy(bv.data(), bv.data() + 3 * d, b.value.data());
  Tensor<double> x = randn({2, 3, d}, 103), c = randn({2, 3, 3 * d}, 104);
  // let of an affine node, the shared value used twice.
  CHECK_GRAD([&](auto a) { return let(affine(a, W, b), [](auto h) { return h * h + h; }) * c; }, x);
  // matmul of a layer norm, layer norm of a matmul.
  CHECK_GRAD([&](auto a) { return matmul(layer_norm(a, gamma, beta, 1e-5), W) * c; }, x);
  Parameter<double> g3("g3", {3 * d}), b3("b3", {3 * d});
  std::copy(bv.data(), bv.data() + 3 * d, g3.value.data());
  CHECK_GRAD([&](auto a) { return layer_norm(matmul(a, W), g3, b3, 1e-5) * c; }, x);
  // attention over heads sliced from one let() projection, its output merged
  // by a view of the attention node itself, then projected (MultiHeadAttention's shape).
  auto mha = [&](auto a) {
    return let(affine(a, W, b), [&](auto p) {
      auto heads = [](auto part) { return permute(reshape(part, Shape{2, 3, 2, 2}), 0, 2, 1, 3); };
      auto [q, k, v] = chunk<3>(p, -1);
      auto o = scaled_dot_product_attention(heads(q), heads(k), heads(v), {.causal = true});  // (2, 2, 3, 2)
      return matmul(reshape(permute(o, 0, 2, 1, 3), Shape{2, 3, d}), W);
    });
  };
  CHECK_GRAD([&](auto a) { return mha(a) * c; }, x);
  // attention of matmul outputs (nodes with their value in their state).
  Tensor<double> c3 = randn({2, 1, 3, 3 * d}, 105);
  CHECK_GRAD(
      [&](auto a) {
        auto m = [&] { return matmul(reshape(a, Shape{2, 1, 3, d}), W); };  // (2, 1, 3, 3d)
        return scaled_dot_product_attention(m(), m(), m()) * c3;
      },
      x);
}
