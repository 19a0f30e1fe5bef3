// What the CUDA tests that compare a device result with weft's host
// evaluation (the oracle) share: normal random host tensors, and the
// relative error of a device tensor against the host one.
#pragma once

#include <cmath>
#include <random>

#include <weft/kernels/cuda/memory.cuh>
#include <weft/tensor/tensor.hpp>

namespace cudatest {

// A host tensor of shape s, elements drawn from N(0, scale^2) by seed.
inline weft::Tensor<float> randn(const weft::Shape& s, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  weft::Tensor<float> t(s);
  for (weft::index_t i = 0; i < t.numel(); ++i) t.data()[i] = nd(rng);
  return t;
}

// max |a - b| / (1 + max |b|) over host buffers of n elements; infinite where
// either holds a NaN.
inline double rel(const float* a, const float* b, weft::index_t n) {
  double m = 0, s = 0;
  for (weft::index_t i = 0; i < n; ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return INFINITY;
    m = std::fmax(m, std::fabs(double(a[i]) - double(b[i])));
    s = std::fmax(s, std::fabs(double(b[i])));
  }
  return m / (1 + s);
}
// The device result against the host oracle (infinite where the shapes differ).
inline double rel(const weft::Tensor<float, weft::cuda>& gpu, const weft::Tensor<float>& cpu) {
  if (gpu.shape() != cpu.shape()) return INFINITY;
  return rel(to_host(gpu).data(), cpu.data(), cpu.numel());
}

}  // namespace cudatest
