// PowerSGD's products through CBLAS (opt-in: needs a CBLAS such as OpenBLAS
// at link time; comm/ itself needs none). cblas_gemm is the routine
// PowerSGD::gemm takes; with_blas(c) returns the codec with it set:
//   Communicator<Compressed<PowerSGD, Ring>, T> c{t, {.codec = with_blas(PowerSGD{.rank = 4})}};
// The loops in powersgd.hpp stay the reference (tests/comm/codecs.cpp
// compares the two within float rounding).
#pragma once

// OpenBLAS's cblas.h declares C99 _Complex types, which clang flags in C++.
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wc99-extensions"
#endif
#include <cblas.h>
#if defined(__clang__)
#pragma clang diagnostic pop
#endif

#include "powersgd.hpp"

namespace weft::comm {

inline void cblas_gemm(const PowerSGDGemm& g) {
  const auto m = static_cast<int>(g.m), n = static_cast<int>(g.n), k = static_cast<int>(g.k);
  cblas_sgemm(CblasRowMajor, g.trans_a ? CblasTrans : CblasNoTrans, g.trans_b ? CblasTrans : CblasNoTrans, m, n, k,
              g.alpha, g.a, g.trans_a ? m : k, g.b, g.trans_b ? k : n, g.beta, g.c, n);
}

inline PowerSGD with_blas(PowerSGD c) {
  c.gemm = cblas_gemm;
  return c;
}

}  // namespace weft::comm
