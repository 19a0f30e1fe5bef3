// Tensors, views, f16/bf16 storage types, workspace.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <weft/weft.hpp>

using namespace weft;

TEST_CASE("tensor storage is 64-byte aligned and shaped") {
  for (int rank = 0; rank <= 4; ++rank) {
    Shape s;
    s.rank = rank;
    for (int d = 0; d < rank; ++d) s[d] = d + 2;
    Tensor<float> t(s, 1.5f);
    CHECK(reinterpret_cast<std::uintptr_t>(t.data()) % 64 == 0);
    CHECK(t.rank() == rank);
    CHECK(t.numel() == s.numel());
    CHECK(t.view().is_contiguous());
  }
  Tensor<double> d({3, 4});
  CHECK(reinterpret_cast<std::uintptr_t>(d.data()) % 64 == 0);
  Tensor<std::int64_t> i({5}, 7);
  CHECK(i(4) == 7);
  CHECK_THROWS_AS(Shape({1, 2, 3, 4, 5}), ShapeError);
}

TEST_CASE("views: slices, rows, transposes, reshape") {
  Tensor<int> t({3, 4});
  for (int k = 0; k < 12; ++k) t.data()[k] = k;
  auto s = t.slice(1, 3);
  CHECK(s.shape == Shape{2, 4});
  CHECK(s(0, 0) == 4);
  CHECK(s(1, 3) == 11);
  auto r = t.row(2);
  CHECK(r.shape == Shape{4});
  CHECK(r(1) == 9);
  auto tr = t.transposed();
  CHECK(tr.shape == Shape{4, 3});
  CHECK(tr(3, 1) == t(1, 3));
  CHECK_FALSE(tr.is_contiguous());
  CHECK(t.reshape({2, 6})(1, 0) == 6);
  CHECK_THROWS_AS(tr.reshape({12}), ShapeError);
  CHECK_THROWS_AS(t(3, 0), ShapeError);
  CHECK_THROWS_AS(t(0), ShapeError);
  CHECK_THROWS_AS(t.slice(2, 5), ShapeError);
  // writing through a view writes the tensor
  t.row(0)(2) = 100;
  CHECK(t(0, 2) == 100);
  // copying a strided view materialises it in row-major order
  Tensor<int> c;
  c = t.transposed();
  CHECK(c.shape() == Shape{4, 3});
  CHECK(c(2, 0) == 100);
  CHECK(c(3, 2) == 11);
}

TEST_CASE("copy, move and resize keep data and storage right") {
  Tensor<float> a({2, 2}, {1, 2, 3, 4});
  Tensor<float> b = a;
  b(0, 0) = 9;
  CHECK(a(0, 0) == 1);
  Tensor<float> m = std::move(b);
  CHECK(m(0, 0) == 9);
  const float* before = m.data();
  m.resize({3});  // fits: no reallocation
  CHECK(m.data() == before);
  CHECK_THROWS_AS((Tensor<float>({2, 2}, {1, 2, 3})), ShapeError);
  CHECK_THROWS_AS(m.item(), ShapeError);
  Tensor<float> scalar(Shape{}, 2.5f);
  CHECK(scalar.item() == 2.5f);
}

TEST_CASE("half: every f16 value round-trips and conversion matches the hardware type") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    half h = half::from_bits(static_cast<std::uint16_t>(b));
    float f = static_cast<float>(h);
    _Float16 ref;
    std::uint16_t bits16 = static_cast<std::uint16_t>(b);
    std::memcpy(&ref, &bits16, 2);
    float fr = static_cast<float>(ref);
    if (std::isnan(fr)) {
      CHECK(std::isnan(f));
      continue;
    }
    REQUIRE(std::memcmp(&f, &fr, 4) == 0);
    REQUIRE(half(f).bits == b);
  }
  std::mt19937 rng(1);
  std::uniform_int_distribution<std::uint32_t> bits;
  int mismatches = 0;
  for (int k = 0; k < 1000000; ++k) {
    std::uint32_t u = bits(rng);
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f)) continue;
    _Float16 r = static_cast<_Float16>(f);
    std::uint16_t rb;
    std::memcpy(&rb, &r, 2);
    mismatches += half(f).bits != rb;
  }
  CHECK(mismatches == 0);
}

// Independent bf16 reference: the nearest of the two candidates, ties to even.
static std::uint16_t bf16_reference(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  std::uint16_t lo = static_cast<std::uint16_t>(u >> 16), hi = static_cast<std::uint16_t>(lo + 1);
  auto val = [](std::uint16_t b) {
    std::uint32_t w = static_cast<std::uint32_t>(b) << 16;
    float g;
    std::memcpy(&g, &w, 4);
    return static_cast<double>(g);
  };
  double dl = std::abs(static_cast<double>(f) - val(lo)), dh = std::abs(static_cast<double>(f) - val(hi));
  if (std::isinf(val(hi))) dh = std::abs(static_cast<double>(f)) >= 3.3961775292304610e38 ? 0 : 1e300;
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return (lo & 1) ? hi : lo;
}

TEST_CASE("bfloat16 rounds to nearest even") {
  std::mt19937 rng(2);
  std::uniform_int_distribution<std::uint32_t> bits;
  int mismatches = 0;
  for (int k = 0; k < 1000000; ++k) {
    std::uint32_t u = bits(rng);
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f) || std::isinf(f)) continue;
    mismatches += bfloat16(f).bits != bf16_reference(f);
  }
  CHECK(mismatches == 0);
  CHECK(std::isnan(static_cast<float>(bfloat16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(static_cast<float>(bfloat16(1.0f)) == 1.0f);
  CHECK(dtype_name(dtype_v<bfloat16>) == std::string("bf16"));
  CHECK(dtype_size(dtype_v<half>) == 2);
}

TEST_CASE("f16 and bf16 tensors are read and written through expressions in f32") {
  Tensor<half> h({3});
  Tensor<float> f({3}, {0.5f, -2.0f, 1024.0f});
  h = f * 2.0f;
  CHECK(static_cast<float>(h(1)) == -4.0f);
  Tensor<float> back = eval(h + 1.0f);
  CHECK(back(2) == 2049.0f);
  Tensor<bfloat16> b({3});
  b = f;
  CHECK(static_cast<float>(b(0)) == 0.5f);
}

TEST_CASE("workspace stops allocating once warm") {
  Workspace<> ws;
  for (int step = 0; step < 5; ++step) {
    ws.reset();
    auto a = ws.alloc<float>({1000});
    auto b = ws.zeros<double>({50, 50});
    CHECK(reinterpret_cast<std::uintptr_t>(a.data) % 64 == 0);
    CHECK(reinterpret_cast<std::uintptr_t>(b.data) % 64 == 0);
    CHECK(b(49, 49) == 0.0);
    if (step == 1) CHECK(ws.allocations() >= 1);
  }
  std::size_t n = ws.allocations();
  for (int step = 0; step < 5; ++step) {
    ws.reset();
    ws.alloc<float>({1000});
    ws.zeros<double>({50, 50});
  }
  CHECK(ws.allocations() == n);
}
