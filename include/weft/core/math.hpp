// Elementwise math used by expression nodes, callable on host and device.
// (Interface placeholder: forwards to libm / CUDA's math library.)
#pragma once

#include <cmath>

#include "config.hpp"

namespace weft::math {

WEFT_HD WEFT_INLINE float exp(float x) { return ::expf(x); }
WEFT_HD WEFT_INLINE double exp(double x) { return ::exp(x); }
WEFT_HD WEFT_INLINE float log(float x) { return ::logf(x); }
WEFT_HD WEFT_INLINE double log(double x) { return ::log(x); }
WEFT_HD WEFT_INLINE float sin(float x) { return ::sinf(x); }
WEFT_HD WEFT_INLINE double sin(double x) { return ::sin(x); }
WEFT_HD WEFT_INLINE float cos(float x) { return ::cosf(x); }
WEFT_HD WEFT_INLINE double cos(double x) { return ::cos(x); }
WEFT_HD WEFT_INLINE float tanh(float x) { return ::tanhf(x); }
WEFT_HD WEFT_INLINE double tanh(double x) { return ::tanh(x); }
WEFT_HD WEFT_INLINE float erf(float x) { return ::erff(x); }
WEFT_HD WEFT_INLINE double erf(double x) { return ::erf(x); }
WEFT_HD WEFT_INLINE float sqrt(float x) { return ::sqrtf(x); }
WEFT_HD WEFT_INLINE double sqrt(double x) { return ::sqrt(x); }
WEFT_HD WEFT_INLINE float pow(float x, float y) { return ::powf(x, y); }
WEFT_HD WEFT_INLINE double pow(double x, double y) { return ::pow(x, y); }
template <class T>
WEFT_HD WEFT_INLINE T sigmoid(T x) { return T(1) / (T(1) + exp(-x)); }

}  // namespace weft::math
