// What the GPU benches share: the median over `repeats` timings, each of
// `iters` calls of fn, timed by CUDA events on the stream the calls queue on
// (after three untimed calls: workspace grown, kernels loaded).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include <weft/kernels/cuda/memory.cuh>

namespace gpubench {

template <class F>
double median_ms(cudaStream_t s, int repeats, int iters, F&& fn) {
  cudaEvent_t a, b;
  weft::cuda_check(cudaEventCreate(&a), "cudaEventCreate");
  weft::cuda_check(cudaEventCreate(&b), "cudaEventCreate");
  for (int i = 0; i < 3; ++i) fn();
  weft::cuda_check(cudaStreamSynchronize(s), "warm-up");
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    weft::cuda_check(cudaEventRecord(a, s), "cudaEventRecord");
    for (int i = 0; i < iters; ++i) fn();
    weft::cuda_check(cudaEventRecord(b, s), "cudaEventRecord");
    weft::cuda_check(cudaEventSynchronize(b), "cudaEventSynchronize");
    float ms = 0;
    weft::cuda_check(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
    t.push_back(ms / iters);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace gpubench
