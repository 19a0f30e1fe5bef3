// Cast codecs: send f32 gradients as f16 or bf16 (2x fewer bytes). Linear:
// the inner algorithm sums the 16-bit payloads directly (each pairwise sum
// computed in f32 and rounded once, as NCCL does).
//
// Bound of decode(encode(x)), u = 2^-11 (f16) or 2^-8 (bf16), round to nearest:
//   |y - x| <= u |x|                 (normal range)
//   |y - x| <= 2^-25                 (f16 subnormals, |x| < 2^-14)
// f16 overflows to inf above 65504 (bf16 has f32's range); that is what the
// hardware cast does, so a too-large gradient shows up as inf, not silently.
// Allreduce of p ranks: p roundings of partial sums of magnitude <= S = sum |x_r|,
// so |result - exact| <= p u S (+ p 2^-25 for f16).
#pragma once

#include <cstddef>
#include <type_traits>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

#include "../../core/dtype.hpp"
#include "codec.hpp"

namespace weft::comm {

template <class T>
struct Cast {
  static_assert(std::is_same_v<T, half> || std::is_same_v<T, bfloat16>,
                "comm::Cast<T> sends f32 as a 16-bit float: T is weft::half or weft::bfloat16");
  static constexpr const char* name = std::is_same_v<T, half> ? "f16" : "bf16";
  static constexpr bool linear = true;
  // Relative rounding bound (unit roundoff) of one cast.
  static constexpr double unit_roundoff = std::is_same_v<T, half> ? 0x1p-11 : 0x1p-8;
  using payload_type = T;
  using State = detail::NoState;

  void check(std::size_t, const CodecCall&) const {}
  int rounds(const State&, std::size_t) const { return 1; }
  std::size_t payload_count(const State&, std::size_t n, int) const { return n; }

  void encode(State&, const float* x, std::size_t n, T* out, int, const CodecCall&) const {
    std::size_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
    // The hardware conversion rounds to nearest even like half(float), 8 at a time.
    if constexpr (std::is_same_v<T, half>)
      for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; ++i) out[i] = T(x[i]);
  }
  void decode(State&, const T* in, float* y, std::size_t n, int, const CodecCall&) const {
    std::size_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
    if constexpr (std::is_same_v<T, half>)
      for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
#endif
    for (; i < n; ++i) y[i] = static_cast<float>(in[i]);
  }
};

using F16 = Cast<half>;
using BF16 = Cast<bfloat16>;

static_assert(LinearCodec<F16>);
static_assert(LinearCodec<BF16>);

}  // namespace weft::comm
