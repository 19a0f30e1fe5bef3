// int8 x int8 -> int32 GEMM for quantised inference (weft::compress), with a
// plain reference beside the vector paths, chosen at run time:
//   avx512_vnni  vpdpbusd: 16 columns x 4 k per instruction. It multiplies
//                unsigned by signed bytes, so A is offset to u8 (a + 128) and
//                128 * (column sum of B) is subtracted at the end (the
//                compensation oneDNN and FBGEMM use).
//   avx2         bytes widened to s16, vpmaddwd (2 products per int32 lane);
//                exact, unlike vpmaddubsw, whose s16 sums saturate.
//   reference    the triple loop the tests compare with.
// The vector paths are compiled with function target attributes, so a build
// without -march=native still has them and a CPU without them never runs them.
//
// Results are exact (integer arithmetic): int32 wraps modulo 2^32 in every path,
// so whenever the true sum fits in int32 each path returns it. |a|, |b| <= 128
// gives |sum| <= K * 2^14: K < 2^17 is required and checked.
//
// Dimension legend: M rows of A (batch), K reduction, N columns of B (outputs).
// B is packed once (it is a layer's weight) in panels of 16 columns:
// (N16 / 16, K4, 16, 4) with K4 = ceil(K / 4), N16 = N rounded up to 16, four
// consecutive k of one column side by side, zero-padded. A panel is contiguous
// over K: with rows of B as the stride (4 KiB at N = 1024) every load of a
// column tile fell in the same L1 set and the AVX2 path ran at 2 GOP/s.
// Both vector paths read that layout.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "../../core/config.hpp"
#include "../../core/error.hpp"
#include "../../core/shape.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define WEFT_INT8_X86 1
#else
#define WEFT_INT8_X86 0
#endif

namespace weft::kernels::cpu {

enum class Int8Isa : std::uint8_t { reference, avx2, avx512_vnni };

inline const char* int8_isa_name(Int8Isa isa) {
  switch (isa) {
    case Int8Isa::reference: return "reference";
    case Int8Isa::avx2: return "avx2";
    case Int8Isa::avx512_vnni: return "avx512_vnni";
  }
  return "?";
}

// Whether this CPU (and OS: libgcc's and compiler-rt's checks include XCR0)
// runs the path.
inline bool int8_isa_supported(Int8Isa isa) {
  switch (isa) {
    case Int8Isa::reference: return true;
#if WEFT_INT8_X86
    case Int8Isa::avx2: return __builtin_cpu_supports("avx2");
    case Int8Isa::avx512_vnni:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vnni");
#else
    default: return false;
#endif
  }
  return false;
}

// The fastest path this CPU runs.
inline Int8Isa best_int8_isa() {
  if (int8_isa_supported(Int8Isa::avx512_vnni)) return Int8Isa::avx512_vnni;
  if (int8_isa_supported(Int8Isa::avx2)) return Int8Isa::avx2;
  return Int8Isa::reference;
}

inline constexpr index_t kInt8MaxK = (index_t{1} << 17) - 1;

namespace detail {
inline void check_int8_gemm(const char* what, index_t m, index_t n, index_t k) {
  if (m < 0 || n < 0 || k < 0) throw_error<ShapeError>(what, ": negative size (M, N, K) = (", m, ", ", n, ", ", k, ")");
  if (k > kInt8MaxK)
    throw_error<ValueError>(what, ": K = ", k, " is over ", kInt8MaxK,
                            ": an int8 x int8 sum of that length can overflow int32 (split the reduction)");
}
}  // namespace detail

// C (M, N) = A (M, K) x B (K, N), row-major with leading dimensions.
inline void int8_gemm_reference(const std::int8_t* a, index_t lda, const std::int8_t* b, index_t ldb, std::int32_t* c,
                                index_t ldc, index_t m, index_t n, index_t k) {
  detail::check_int8_gemm("int8_gemm_reference", m, n, k);
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) {
      std::int32_t s = 0;
      for (index_t p = 0; p < k; ++p) s += std::int32_t(a[i * lda + p]) * std::int32_t(b[p * ldb + j]);
      c[i * ldc + j] = s;
    }
}

// B packed for the vector paths, with 128 x its column sums (the VNNI compensation)
// and the unpacked copy the reference path reads.
class Int8PackedB {
 public:
  Int8PackedB() = default;
  // b (K, N) row-major with leading dimension ldb.
  Int8PackedB(const std::int8_t* b, index_t k, index_t n, index_t ldb) : k_(k), n_(n) {
    detail::check_int8_gemm("Int8PackedB", 0, n, k);
    if (ldb < n) throw_error<ShapeError>("Int8PackedB: leading dimension ", ldb, " < N = ", n);
    k4_ = (k + 3) / 4;
    n16_ = (n + 15) / 16 * 16;
    packed_.assign(static_cast<std::size_t>(k4_ * n16_ * 4), 0);  // (N16 / 16, K4, 16, 4)
    plain_.resize(static_cast<std::size_t>(k * n));               // (K, N)
    col_sum_.assign(static_cast<std::size_t>(n16_), 0);           // (N16,)
    for (index_t p = 0; p < k; ++p)
      for (index_t j = 0; j < n; ++j) {
        const std::int8_t v = b[p * ldb + j];
        packed_[static_cast<std::size_t>((((j / 16) * k4_ + p / 4) * 16 + j % 16) * 4 + p % 4)] = v;
        plain_[static_cast<std::size_t>(p * n + j)] = v;
        col_sum_[static_cast<std::size_t>(j)] += 128 * v;
      }
  }

  index_t k() const { return k_; }
  index_t n() const { return n_; }
  index_t k4() const { return k4_; }
  index_t n16() const { return n16_; }
  const std::int8_t* packed() const { return packed_.data(); }
  const std::int8_t* plain() const { return plain_.data(); }  // (K, N), ld N
  const std::int32_t* col_sum_x128() const { return col_sum_.data(); }  // (N16,) 128 * sum_k B[k, j]
  std::size_t bytes() const { return plain_.size(); }

 private:
  index_t k_ = 0, n_ = 0, k4_ = 0, n16_ = 0;
  std::vector<std::int8_t> packed_, plain_;
  std::vector<std::int32_t> col_sum_;
};

#if WEFT_INT8_X86
namespace detail {

// Four consecutive bytes of a row of A from k = 4 q, as an int32; the last,
// partial quad (Tail) reads only up to K and is zero beyond.
template <bool Tail>
WEFT_INLINE std::int32_t a_quad(const std::int8_t* row, index_t q, index_t k) {
  std::int32_t v = 0;
  if constexpr (Tail)
    std::memcpy(&v, row + 4 * q, static_cast<std::size_t>(k - 4 * q));
  else
    std::memcpy(&v, row + 4 * q, 4);
  return v;
}

template <int MR, int NV, bool Tail>
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) inline void vnni_step(
    __m512i (&acc)[MR][NV], const std::int8_t* a, index_t lda, const std::int8_t* bp, index_t q, index_t k4, index_t k) {
  const __m512i flip = _mm512_set1_epi32(static_cast<std::int32_t>(0x80808080u));
  __m512i bv[NV];
  for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(bp + (v * k4 + q) * 64);  // panel v, quad q
  for (int r = 0; r < MR; ++r) {
    const __m512i av = _mm512_xor_si512(_mm512_set1_epi32(a_quad<Tail>(a + r * lda, q, k)), flip);  // u8 = s8 + 128
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], av, bv[v]);
  }
}

template <int MR, bool Tail>
__attribute__((target("avx2"), always_inline)) inline void avx2_step(__m256i (&acc)[MR][4], const std::int8_t* a, index_t lda,
                                                                    const std::int8_t* bp, index_t q, index_t k) {
  __m256i bv[4];
  for (int v = 0; v < 4; ++v)
    bv[v] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bp + q * 64 + 16 * v)));
  for (int r = 0; r < MR; ++r) {
    const __m128i a16 = _mm_cvtepi8_epi16(_mm_cvtsi32_si128(a_quad<Tail>(a + r * lda, q, k)));  // (a0 a1 a2 a3) as s16
    const __m256i av = _mm256_broadcastq_epi64(a16);
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm256_add_epi32(acc[r][v], _mm256_madd_epi16(av, bv[v]));
  }
}

// MR rows x NV vectors of 16 columns: acc += (a + 128) . b over all of K, then
// C = acc - 128 * colsum. `cols` (<= 16 NV) columns are stored.
template <int MR, int NV>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void vnni_tile(const std::int8_t* a, index_t lda, const Int8PackedB& b,
                                                                      index_t j0, index_t cols, std::int32_t* c,
                                                                      index_t ldc) {
  __m512i acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_si512();
  const index_t k = b.k(), k4 = b.k4();
  const std::int8_t* bp = b.packed() + (j0 / 16) * k4 * 64;  // j0 is a multiple of 16
  index_t q = 0;
  for (; q < k / 4; ++q) vnni_step<MR, NV, false>(acc, a, lda, bp, q, k4, k);
  if (q < k4) vnni_step<MR, NV, true>(acc, a, lda, bp, q, k4, k);
  for (int v = 0; v < NV; ++v) {
    const __m512i comp = _mm512_loadu_si512(b.col_sum_x128() + j0 + 16 * v);
    const index_t left = cols - 16 * v;
    const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
    for (int r = 0; r < MR; ++r)
      _mm512_mask_storeu_epi32(c + r * ldc + j0 + 16 * v, mask, _mm512_sub_epi32(acc[r][v], comp));
  }
}

template <int MR>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void vnni_rows(const std::int8_t* a, index_t lda, const Int8PackedB& b,
                                                                      std::int32_t* c, index_t ldc) {
  const index_t n = b.n();
  index_t j = 0;
  for (; j + 64 <= n; j += 64) vnni_tile<MR, 4>(a, lda, b, j, 64, c, ldc);
  const index_t left = n - j;
  if (left > 48) vnni_tile<MR, 4>(a, lda, b, j, left, c, ldc);
  else if (left > 32) vnni_tile<MR, 3>(a, lda, b, j, left, c, ldc);
  else if (left > 16) vnni_tile<MR, 2>(a, lda, b, j, left, c, ldc);
  else if (left > 0) vnni_tile<MR, 1>(a, lda, b, j, left, c, ldc);
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) inline void gemm_vnni(const std::int8_t* a, index_t lda, index_t m,
                                                                            const Int8PackedB& b, std::int32_t* c,
                                                                            index_t ldc) {
  index_t i = 0;
  for (; i + 4 <= m; i += 4) vnni_rows<4>(a + i * lda, lda, b, c + i * ldc, ldc);
  for (; i < m; ++i) vnni_rows<1>(a + i * lda, lda, b, c + i * ldc, ldc);
}

// AVX2: per 16 columns and 4 k, four 16-byte pieces (4 columns x 4 k) widened
// to s16 and multiplied by (a0 a1 a2 a3) with vpmaddwd: int32 lanes hold
// (column, k 0-1) and (column, k 2-3); hadd + permute put columns in order.
template <int MR>
__attribute__((target("avx2"))) void avx2_tile(const std::int8_t* a, index_t lda, const Int8PackedB& b, index_t j0,
                                               index_t cols, std::int32_t* c, index_t ldc) {
  __m256i acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm256_setzero_si256();
  const index_t k = b.k(), k4 = b.k4();
  const std::int8_t* bp = b.packed() + (j0 / 16) * k4 * 64;  // j0 is a multiple of 16
  index_t q = 0;
  for (; q < k / 4; ++q) avx2_step<MR, false>(acc, a, lda, bp, q, k);
  if (q < k4) avx2_step<MR, true>(acc, a, lda, bp, q, k);
  for (int r = 0; r < MR; ++r) {
    alignas(32) std::int32_t out[16];
    // hadd(cols 0-3, cols 4-7) = (c0 c1 c4 c5 | c2 c3 c6 c7); qwords (0 2 1 3) restore the order.
    _mm256_store_si256(reinterpret_cast<__m256i*>(out),
                       _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][0], acc[r][1]), 0xD8));
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + 8),
                       _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][2], acc[r][3]), 0xD8));
    std::memcpy(c + r * ldc + j0, out, static_cast<std::size_t>(cols) * 4);
  }
}

__attribute__((target("avx2"))) inline void gemm_avx2(const std::int8_t* a, index_t lda, index_t m, const Int8PackedB& b,
                                                      std::int32_t* c, index_t ldc) {
  const index_t n = b.n();
  for (index_t j = 0; j < n; j += 16) {
    const index_t cols = n - j < 16 ? n - j : 16;
    index_t i = 0;
    for (; i + 2 <= m; i += 2) avx2_tile<2>(a + i * lda, lda, b, j, cols, c + i * ldc, ldc);
    for (; i < m; ++i) avx2_tile<1>(a + i * lda, lda, b, j, cols, c + i * ldc, ldc);
  }
}

}  // namespace detail
#endif

// C (M, N) = A (M, K) x B, on the path `isa` (refused with a sentence when this
// CPU lacks it). A row-major with leading dimension lda >= K; C with ldc >= N.
inline void int8_gemm(Int8Isa isa, const std::int8_t* a, index_t lda, index_t m, const Int8PackedB& b, std::int32_t* c,
                      index_t ldc) {
  detail::check_int8_gemm("int8_gemm", m, b.n(), b.k());
  if (lda < b.k() || ldc < b.n())
    throw_error<ShapeError>("int8_gemm: A (", m, ", ", b.k(), ") with lda ", lda, ", C (", m, ", ", b.n(), ") with ldc ", ldc,
                            ": a leading dimension is smaller than its row");
  if (!int8_isa_supported(isa))
    throw_error<ValueError>("int8_gemm: this CPU does not run the ", int8_isa_name(isa), " path (best here: ",
                            int8_isa_name(best_int8_isa()), ")");
  if (m == 0 || b.n() == 0) return;
  switch (isa) {
#if WEFT_INT8_X86
    case Int8Isa::avx512_vnni: detail::gemm_vnni(a, lda, m, b, c, ldc); return;
    case Int8Isa::avx2: detail::gemm_avx2(a, lda, m, b, c, ldc); return;
#endif
    default: int8_gemm_reference(a, lda, b.plain(), b.n(), c, ldc, m, b.n(), b.k()); return;
  }
}

}  // namespace weft::kernels::cpu
