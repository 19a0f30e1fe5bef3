// Element types: the scalar types tensors store, their run-time tags (for
// messages, files and fingerprints), and f16/bf16 storage types with a host
// emulation that also compiles in device code. Arithmetic on f16/bf16 happens
// in f32 (compute_t), as it does in cuBLAS and NCCL reductions.
#pragma once

#include <cstdint>
#include <cstring>
#include <ostream>
#include <type_traits>

#include "config.hpp"

namespace weft {

namespace detail {
template <class To, class From>
WEFT_HD inline To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From));
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}
}  // namespace detail

// IEEE 754 binary16, stored as bits; converts to and from float exactly as the
// hardware does (round to nearest even, subnormals, inf and NaN kept).
struct half {
  std::uint16_t bits = 0;

  half() = default;
  WEFT_HD explicit half(float f) : bits(from_float(f)) {}
  WEFT_HD explicit operator float() const { return to_float(bits); }
  WEFT_HD static half from_bits(std::uint16_t b) {
    half h;
    h.bits = b;
    return h;
  }

  WEFT_HD static std::uint16_t from_float(float f) {
    std::uint32_t x = detail::bit_cast<std::uint32_t>(f);
    std::uint32_t sign = (x >> 16) & 0x8000u;
    std::uint32_t mag = x & 0x7fffffffu;
    if (mag >= 0x7f800000u) {  // inf or nan
      return static_cast<std::uint16_t>(sign | 0x7c00u | (mag > 0x7f800000u ? 0x200u : 0u));
    }
    if (mag >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to inf
    if (mag < 0x38800000u) {  // result is subnormal or zero in f16
      if (mag < 0x33000000u) return static_cast<std::uint16_t>(sign);  // below half the smallest subnormal
      std::uint32_t mant = (mag & 0x7fffffu) | 0x800000u;
      int shift = 126 - static_cast<int>(mag >> 23);  // 14 + (113 - e) + ...
      // value = mant * 2^(e-150); subnormal unit is 2^-24 -> shift right by (126 - e)
      std::uint32_t q = mant >> shift;
      std::uint32_t rem = mant & ((1u << shift) - 1u);
      std::uint32_t halfway = 1u << (shift - 1);
      if (rem > halfway || (rem == halfway && (q & 1u))) ++q;
      return static_cast<std::uint16_t>(sign | q);
    }
    // normal: rebias exponent 127 -> 15, round mantissa 23 -> 10 bits (nearest even)
    std::uint32_t r = mag - 0x38000000u;
    std::uint32_t q = r >> 13;
    std::uint32_t rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) ++q;
    return static_cast<std::uint16_t>(sign | q);
  }

  WEFT_HD static float to_float(std::uint16_t h) {
    std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    std::uint32_t exp = (h >> 10) & 0x1fu;
    std::uint32_t mant = h & 0x3ffu;
    std::uint32_t out;
    if (exp == 0x1fu) {
      out = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
      out = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
      out = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      out = sign | (static_cast<std::uint32_t>(112 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
    return detail::bit_cast<float>(out);
  }
};

// bfloat16: the upper 16 bits of an f32, rounded to nearest even.
struct bfloat16 {
  std::uint16_t bits = 0;

  bfloat16() = default;
  WEFT_HD explicit bfloat16(float f) : bits(from_float(f)) {}
  WEFT_HD explicit operator float() const { return to_float(bits); }
  WEFT_HD static bfloat16 from_bits(std::uint16_t b) {
    bfloat16 h;
    h.bits = b;
    return h;
  }

  WEFT_HD static std::uint16_t from_float(float f) {
    std::uint32_t x = detail::bit_cast<std::uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet nan
    std::uint32_t lsb = (x >> 16) & 1u;
    x += 0x7fffu + lsb;
    return static_cast<std::uint16_t>(x >> 16);
  }
  WEFT_HD static float to_float(std::uint16_t b) {
    return detail::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
  }
};

inline std::ostream& operator<<(std::ostream& os, half h) { return os << static_cast<float>(h); }
inline std::ostream& operator<<(std::ostream& os, bfloat16 h) { return os << static_cast<float>(h); }

// Run-time tag of an element type (messages, file headers, collective fingerprints).
enum class dtype : std::uint8_t { f32, f64, f16, bf16, i32, i64, u8 };

template <class T>
struct dtype_of {
  static_assert(dependent_false<T>,
                "weft tensors hold float, double, weft::half, weft::bfloat16, int32_t, int64_t or uint8_t");
};
template <> struct dtype_of<float> { static constexpr dtype value = dtype::f32; };
template <> struct dtype_of<double> { static constexpr dtype value = dtype::f64; };
template <> struct dtype_of<half> { static constexpr dtype value = dtype::f16; };
template <> struct dtype_of<bfloat16> { static constexpr dtype value = dtype::bf16; };
template <> struct dtype_of<std::int32_t> { static constexpr dtype value = dtype::i32; };
template <> struct dtype_of<std::int64_t> { static constexpr dtype value = dtype::i64; };
template <> struct dtype_of<std::uint8_t> { static constexpr dtype value = dtype::u8; };
template <class T>
inline constexpr dtype dtype_v = dtype_of<T>::value;

constexpr const char* dtype_name(dtype d) {
  switch (d) {
    case dtype::f32: return "f32";
    case dtype::f64: return "f64";
    case dtype::f16: return "f16";
    case dtype::bf16: return "bf16";
    case dtype::i32: return "i32";
    case dtype::i64: return "i64";
    case dtype::u8: return "u8";
  }
  return "?";
}

constexpr std::size_t dtype_size(dtype d) {
  switch (d) {
    case dtype::f32: case dtype::i32: return 4;
    case dtype::f64: case dtype::i64: return 8;
    case dtype::f16: case dtype::bf16: return 2;
    case dtype::u8: return 1;
  }
  return 0;
}

inline std::ostream& operator<<(std::ostream& os, dtype d) { return os << dtype_name(d); }

// The type arithmetic is done in: f16/bf16 compute in f32, everything else in itself.
template <class T> struct compute_type { using type = T; };
template <> struct compute_type<half> { using type = float; };
template <> struct compute_type<bfloat16> { using type = float; };
template <class T>
using compute_t = typename compute_type<T>::type;

// Storage <-> compute conversions usable in kernels.
template <class T>
WEFT_HD WEFT_INLINE compute_t<T> to_compute(T v) {
  return static_cast<compute_t<T>>(v);
}
template <class T, class C>
WEFT_HD WEFT_INLINE T from_compute(C v) {
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>)
    return T(static_cast<float>(v));
  else
    return static_cast<T>(v);
}

template <class T>
inline constexpr bool is_floating_v =
    std::is_floating_point_v<T> || std::is_same_v<T, half> || std::is_same_v<T, bfloat16>;

}  // namespace weft
