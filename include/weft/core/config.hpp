// Macros that let one header serve host and device: every node, evaluator and
// math function in weft is marked WEFT_HD so nvcc can instantiate it in kernels.
#pragma once

#if defined(__CUDACC__)
#define WEFT_HD __host__ __device__
#define WEFT_DEVICE_COMPILE 1
#else
#define WEFT_HD
#define WEFT_DEVICE_COMPILE 0
#endif

#if defined(__CUDA_ARCH__)
#define WEFT_IN_DEVICE_CODE 1
#else
#define WEFT_IN_DEVICE_CODE 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define WEFT_INLINE inline __attribute__((always_inline))
#define WEFT_RESTRICT __restrict__
#else
#define WEFT_INLINE inline
#define WEFT_RESTRICT
#endif

// Loop hints for the CPU kernels' lane loops: keep the loop (no full unroll
// before vectorisation) and skip alias versioning, which is safe because
// kernels never write memory they read in the same pass (checked by callers).
// WEFT_IVDEP: the same promise about aliasing, unrolling left to the compiler.
#if defined(__clang__)
#define WEFT_SIMD_LOOP _Pragma("clang loop vectorize(assume_safety) unroll(disable)")
#define WEFT_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__) && !defined(__CUDACC__)
#define WEFT_SIMD_LOOP _Pragma("GCC ivdep") _Pragma("GCC unroll 1")
#define WEFT_IVDEP _Pragma("GCC ivdep")
#else
#define WEFT_SIMD_LOOP
#define WEFT_IVDEP
#endif

// The CPU loops that carry those hints are kept out of line under clang
// (WEFT_LOOP_FN): clang reports a hinted loop it could not vectorise (for some
// expression: a gather through strides, a function with no vector form) at the
// function it ended up in, and out of line that is weft's own, where the
// report is silenced (kernels/cpu/loops.hpp). One call per region costs nothing.
#if defined(__clang__)
#define WEFT_LOOP_FN __attribute__((noinline))
#else
#define WEFT_LOOP_FN
#endif

namespace weft {

// Largest tensor rank weft handles. Shapes are runtime values; the rank bound
// keeps index arithmetic in fixed-size arrays (no allocation, device-friendly).
inline constexpr int max_rank = 4;

// Used in static_asserts of primary templates that have no valid instantiation.
template <class...>
inline constexpr bool dependent_false = false;

}  // namespace weft
