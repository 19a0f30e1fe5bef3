// Reduction operators and the element loops that apply them, dispatched once
// per buffer (not per element) on the run-time dtype. f16/bf16 combine in f32
// and round once per pairwise step; integer sum/prod wrap (computed unsigned,
// so overflow is defined, as in NCCL/MPI implementations).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "../core/config.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"

namespace weft::comm {

enum class ReduceOp : std::uint8_t { sum, prod, min, max, avg };

constexpr const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::prod: return "prod";
    case ReduceOp::min: return "min";
    case ReduceOp::max: return "max";
    case ReduceOp::avg: return "avg";
  }
  return "?";
}

namespace detail {

template <class T>
using wrap_t = std::conditional_t<std::is_integral_v<T> && std::is_signed_v<T>, std::make_unsigned_t<T>, T>;

// out[i] = a[i] (op) b[i]; out may alias a or b. avg combines as sum (the
// caller divides once at the end).
template <class T, ReduceOp Op>
inline void combine_loop(const T* a, const T* b, T* out, std::size_t n) {
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
    for (std::size_t i = 0; i < n; ++i) {
      float x = static_cast<float>(a[i]), y = static_cast<float>(b[i]), r;
      if constexpr (Op == ReduceOp::sum || Op == ReduceOp::avg) r = x + y;
      else if constexpr (Op == ReduceOp::prod) r = x * y;
      else if constexpr (Op == ReduceOp::min) r = y < x ? y : x;
      else r = y > x ? y : x;
      out[i] = T(r);
    }
  } else if constexpr (std::is_integral_v<T>) {
    using U = wrap_t<T>;
    for (std::size_t i = 0; i < n; ++i) {
      T x = a[i], y = b[i];
      if constexpr (Op == ReduceOp::sum || Op == ReduceOp::avg)
        out[i] = static_cast<T>(static_cast<U>(static_cast<U>(x) + static_cast<U>(y)));
      else if constexpr (Op == ReduceOp::prod)
        out[i] = static_cast<T>(static_cast<U>(static_cast<U>(x) * static_cast<U>(y)));
      else if constexpr (Op == ReduceOp::min) out[i] = y < x ? y : x;
      else out[i] = y > x ? y : x;
    }
  } else {
    for (std::size_t i = 0; i < n; ++i) {
      T x = a[i], y = b[i];
      if constexpr (Op == ReduceOp::sum || Op == ReduceOp::avg) out[i] = x + y;
      else if constexpr (Op == ReduceOp::prod) out[i] = x * y;
      else if constexpr (Op == ReduceOp::min) out[i] = y < x ? y : x;
      else out[i] = y > x ? y : x;
    }
  }
}

// Outputs at least this large bypass the cache (streaming stores): a
// reduction of a buffer that size evicts it anyway, and skipping the
// read-for-ownership of every output line saves a third of the traffic.
inline constexpr std::size_t streaming_bytes = std::size_t{4} << 20;

#if defined(__AVX__)
template <ReduceOp Op>
inline __m256 vcombine(__m256 x, __m256 y) {
  if constexpr (Op == ReduceOp::sum || Op == ReduceOp::avg) return _mm256_add_ps(x, y);
  else if constexpr (Op == ReduceOp::prod) return _mm256_mul_ps(x, y);
  else if constexpr (Op == ReduceOp::min) return _mm256_min_ps(y, x);  // y < x ? y : x, as the scalar loop
  else return _mm256_max_ps(y, x);
}
template <ReduceOp Op>
inline __m256d vcombine(__m256d x, __m256d y) {
  if constexpr (Op == ReduceOp::sum || Op == ReduceOp::avg) return _mm256_add_pd(x, y);
  else if constexpr (Op == ReduceOp::prod) return _mm256_mul_pd(x, y);
  else if constexpr (Op == ReduceOp::min) return _mm256_min_pd(y, x);
  else return _mm256_max_pd(y, x);
}

// The same loop with non-temporal stores; the fence makes them visible
// before any later release store (a peer reads `out` after that flag).
template <class T, ReduceOp Op>
inline void combine_streaming(const T* a, const T* b, T* out, std::size_t n) {
  constexpr std::size_t w = 32 / sizeof(T);
  std::size_t head = 0;
  while (head < n && (reinterpret_cast<std::uintptr_t>(out + head) & 31) != 0) ++head;
  combine_loop<T, Op>(a, b, out, head);
  std::size_t i = head;
  for (; i + w <= n; i += w) {
    if constexpr (std::is_same_v<T, float>)
      _mm256_stream_ps(out + i, vcombine<Op>(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    else
      _mm256_stream_pd(out + i, vcombine<Op>(_mm256_loadu_pd(a + i), _mm256_loadu_pd(b + i)));
  }
  combine_loop<T, Op>(a + i, b + i, out + i, n - i);
  _mm_sfence();
}
#endif

template <class T, ReduceOp Op>
inline void combine_dispatch(const T* a, const T* b, T* out, std::size_t n) {
#if defined(__AVX__)
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    if (n * sizeof(T) >= streaming_bytes && reinterpret_cast<std::uintptr_t>(out) % sizeof(T) == 0) {
      combine_streaming<T, Op>(a, b, out, n);
      return;
    }
  }
#endif
  combine_loop<T, Op>(a, b, out, n);
}

template <class T>
inline void combine_typed(const void* a, const void* b, void* out, std::size_t n, ReduceOp op) {
  auto* pa = static_cast<const T*>(a);
  auto* pb = static_cast<const T*>(b);
  auto* po = static_cast<T*>(out);
  switch (op) {
    case ReduceOp::sum:
    case ReduceOp::avg: combine_dispatch<T, ReduceOp::sum>(pa, pb, po, n); return;
    case ReduceOp::prod: combine_dispatch<T, ReduceOp::prod>(pa, pb, po, n); return;
    case ReduceOp::min: combine_dispatch<T, ReduceOp::min>(pa, pb, po, n); return;
    case ReduceOp::max: combine_dispatch<T, ReduceOp::max>(pa, pb, po, n); return;
  }
}

// Calls f(T{}) with the C++ type of a run-time dtype.
template <class F>
inline decltype(auto) visit_dtype(dtype d, F&& f) {
  switch (d) {
    case dtype::f32: return f(float{});
    case dtype::f64: return f(double{});
    case dtype::f16: return f(half{});
    case dtype::bf16: return f(bfloat16{});
    case dtype::i32: return f(std::int32_t{});
    case dtype::i64: return f(std::int64_t{});
    case dtype::u8: return f(std::uint8_t{});
  }
  throw_error<ValueError>("comm: unknown dtype tag ", static_cast<int>(d));
}

// out = a (op) b over n elements of dtype d; out may alias a or b.
inline void combine(dtype d, ReduceOp op, const void* a, const void* b, void* out, std::size_t n) {
  if (n == 0) return;
  visit_dtype(d, [&](auto tag) { combine_typed<decltype(tag)>(a, b, out, n, op); });
}

// buf[i] /= p, the last step of avg (integers divide, truncating toward zero).
inline void divide_by(dtype d, void* buf, std::size_t n, int p) {
  if (n == 0 || p == 1) return;
  visit_dtype(d, [&](auto tag) {
    using T = decltype(tag);
    T* x = static_cast<T*>(buf);
    if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
      for (std::size_t i = 0; i < n; ++i) x[i] = T(static_cast<float>(x[i]) / static_cast<float>(p));
    } else {
      for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<T>(x[i] / static_cast<T>(p));
    }
  });
}

}  // namespace detail
}  // namespace weft::comm
