// The host's primitive set (kernels/dispatch.hpp): device_kernels<cpu>, the
// loops of loops.hpp and rows.hpp behind the dispatch signatures. The host
// queue is the calling thread, so every primitive runs synchronously. gemm is
// the opt-in part (blas.hpp).
#pragma once

#include <algorithm>
#include <cstring>

#include "../dispatch.hpp"
#include "loops.hpp"
#include "rows.hpp"

namespace weft::kernels {

template <>
struct device_kernels<weft::cpu> {
  template <class Ex, class B, class T>
  static void evaluate(const Ex&, const B& b, TensorView<T, weft::cpu> dst) {
    cpu::evaluate(b, dst);
  }
  template <class R, class Ex, class B>
  static void reduce_all(const Ex&, const B& b, const Shape& shape, typename B::value_type* out) {
    *out = cpu::reduce_all<R>(b, shape);
  }
  template <class R, class Ex, class B>
  static void reduce_into(const Ex& ex, const B& b, const Shape& shape, typename B::value_type* out, const Strides& out_st,
                          index_t out_n) {
    cpu::reduce_into<R>(ex.workspace(), b, shape, out, out_st, out_n);
  }
  template <class Ex, class T>
  static void fill(const Ex&, TensorView<T, weft::cpu> dst, T value) {
    if (value == T(0) && dst.is_contiguous()) {
      if (dst.numel() > 0) std::memset(static_cast<void*>(dst.data), 0, static_cast<std::size_t>(dst.numel()) * sizeof(T));
    } else if (dst.is_contiguous()) {
      std::fill(dst.data, dst.data + dst.numel(), value);
    } else {
      cpu::evaluate(BoundScalar<T>{value}, dst);
    }
  }
  template <class Ex, class T>
  static void copy(const Ex&, TensorView<T, weft::cpu> dst, TensorView<T, weft::cpu> src) {
    if (dst.numel() > 0) std::memcpy(static_cast<void*>(dst.data), src.data, static_cast<std::size_t>(dst.numel()) * sizeof(T));
  }
  template <class E, bool Sum, std::size_t K, class Ex, class B, class Seed, class T>
  static T backward_region(const Ex& ex, const B& b, const Shape& shape, const Seed& seed, const SlotMem<T, K>& sinks,
                           bool linear, bool assign) {
    return cpu::backward_region<E, Sum, K>(ex.workspace(), b, shape, seed, sinks, linear, assign);
  }
  template <bool Log, class Ex, class T>
  static void softmax_rows(const Ex&, T* x, index_t rows, index_t cols) {
    cpu::softmax_rows<Log>(x, rows, cols);
  }
  template <bool Log, class Ex, class T>
  static void softmax_rows_backward(const Ex&, const T* y, const T* dy, T* dx, index_t rows, index_t cols) {
    cpu::softmax_rows_backward<Log>(y, dy, dx, rows, cols);
  }
  template <class Ex, class T, class L>
  static void cross_entropy_rows(const Ex&, const T* logits, const L* labels, index_t lab_st, index_t rows, index_t cols,
                                 T eps, T* row_max, T* log_z, T* loss) {
    cpu::cross_entropy_rows(logits, labels, lab_st, rows, cols, eps, row_max, log_z, loss);
  }
  template <class Ex, class T>
  static void layer_norm_rows(const Ex&, const T* x, const T* gamma, const T* beta, T eps, T* y, T* mean, T* rstd,
                              index_t rows, index_t d) {
    cpu::layer_norm_rows(x, gamma, beta, eps, y, mean, rstd, rows, d);
  }
  template <class Ex, class T>
  static void layer_norm_rows_backward(const Ex& ex, const T* x, const T* dy, const T* gamma, const T* mean, const T* rstd,
                                       T* dx, T* dgamma, T* dbeta, index_t rows, index_t d) {
    T* scratch = ex.workspace().template alloc<T>(Shape{cpu::layer_norm_backward_scratch(rows, d)}).data;
    cpu::layer_norm_rows_backward(x, dy, gamma, mean, rstd, dx, dgamma, dbeta, rows, d, scratch);
  }
  template <class Ex, class T>
  static void sum_rows(const Ex& ex, const T* x, index_t rows, index_t d, T* out) {
    T* scratch = ex.workspace().template alloc<T>(Shape{cpu::sum_rows_scratch(rows, d)}).data;
    cpu::sum_rows(x, rows, d, out, scratch);
  }
  template <class Ex, class T, class I>
  static void gather_rows(const Ex&, const T* table, index_t table_rows, const I* idx, index_t n, index_t d, T* out,
                          const char* what) {
    cpu::gather_rows(table, table_rows, idx, n, d, out, what);
  }
  template <class Ex, class T, class I>
  static void scatter_add_rows(const Ex&, const T* src, const I* idx, index_t n, index_t d, T* table) {
    cpu::scatter_add_rows(src, idx, n, d, table);
  }
};

static_assert(DeviceKernels<weft::cpu>, "the host kernels must provide the whole primitive set of kernels/dispatch.hpp");

}  // namespace weft::kernels
