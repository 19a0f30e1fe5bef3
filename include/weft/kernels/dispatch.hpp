// The seam between expression nodes and devices: the primitive set a device
// provides, and the functions nodes, assignment and autodiff call to reach it,
// keyed by the executor's device. Nodes never name kernels::cpu or
// kernels::cuda; they call kernels::evaluate(ex, ...), and the executor's
// device picks device_kernels<Device> (kernels/cpu/kernels.hpp,
// kernels/cuda/kernels.cuh) or device_gemm<Device> (kernels/cpu/blas.hpp,
// kernels/cuda/gemm.cuh).
//
// The primitive set, as concepts (a device may provide a part):
//   ElementwiseKernels  evaluate a region, reduce it whole, fill, copy, fused
//                       backward of a region
//   DeviceKernels       the above, plus reduce along axes, softmax rows,
//                       cross-entropy rows, layer-norm rows, column sums of rows,
//                       gather/scatter rows (CPU: kernels/cpu/kernels.hpp; CUDA:
//                       kernels/cuda/kernels.cuh)
//   DeviceGemm          gemm on strided matrix views (BLAS, cuBLASLt); optionally
//                       gemm_batched over rank-4 views with broadcast batch axes,
//                       gemm_bias (the bias fused into the gemm's epilogue),
//                       bias_grad (column sums) and gemm_bias_grad (a weight
//                       gradient with its bias gradient), each with a fallback
//                       here; gemm_bias_gelu (bias + GELU epilogue), none
// Calling a primitive a device lacks stops compilation with a sentence.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../core/config.hpp"
#include "../core/exec.hpp"
#include "../core/shape.hpp"
#include "../tensor/tensor.hpp"
#include "../tensor/workspace.hpp"
#include "bound.hpp"

namespace weft::kernels {

// A device's primitives: specialised by kernels/<device>/. Empty = none.
template <class Device>
struct device_kernels {};
// A device's gemm: specialised where a BLAS is available (opt-in header).
template <class Device>
struct device_gemm {};

namespace detail {
// A region type for the concept checks (no differentiated input).
struct ProbeRegion {
  template <std::size_t>
  static constexpr int slots_in_region() {
    return 0;
  }
};
}  // namespace detail

template <class D>
concept ElementwiseKernels = requires(const Exec<D>& ex, const BoundScalar<float>& b, TensorView<float, D> v, const Shape& s,
                                      float* p, const ConstSeed<float>& seed, const SlotMem<float, 1>& sinks) {
  device_kernels<D>::evaluate(ex, b, v);
  device_kernels<D>::template reduce_all<SumOp>(ex, b, s, p);
  device_kernels<D>::fill(ex, v, 0.0f);
  device_kernels<D>::copy(ex, v, v);
  { device_kernels<D>::template backward_region<detail::ProbeRegion, true, 1>(ex, b, s, seed, sinks, true, true) } -> std::same_as<float>;
};

template <class D>
concept DeviceKernels = ElementwiseKernels<D> && requires(const Exec<D>& ex, const BoundScalar<float>& b, const Shape& s,
                                                          const Strides& st, float* p, const int* ip, index_t n) {
  device_kernels<D>::template reduce_into<MaxOp>(ex, b, s, p, st, n);
  device_kernels<D>::template softmax_rows<true>(ex, p, n, n);
  device_kernels<D>::template softmax_rows_backward<true>(ex, p, p, p, n, n);
  device_kernels<D>::cross_entropy_rows(ex, p, ip, n, n, n, 0.0f, p, p, p);
  device_kernels<D>::layer_norm_rows(ex, p, p, p, 1.0f, p, p, p, n, n);
  device_kernels<D>::layer_norm_rows_backward(ex, p, p, p, p, p, p, p, p, n, n);
  device_kernels<D>::sum_rows(ex, p, n, n, p);
  device_kernels<D>::gather_rows(ex, p, n, ip, n, n, p, "probe");
  device_kernels<D>::scatter_add_rows(ex, p, ip, n, n, p);
};

template <class D>
concept DeviceGemm = requires(const Exec<D>& ex, const TensorView<float, D>& m) {
  device_gemm<D>::gemm(ex, m, m, m, 1.0f, 0.0f);
  { device_gemm<D>::reads_in_place(m) } -> std::same_as<bool>;
};

// ---------------------------------------------------------------- scratch

template <class T, Executor X>
TensorView<T, device_of<X>> alloc(const X& ex, const Shape& s) {
  return ex.workspace().template alloc<T>(s);
}

// ---------------------------------------------------------------- entry points
// Each forwards to the executor's device, or says which primitive is missing.

#define WEFT_KERNEL_MISSING(prim)                                                                                        \
  static_assert(dependent_false<X>, "weft::kernels::" prim                                                              \
                                    ": the executor's device provides no such primitive (device_kernels<Device> in "   \
                                    "kernels/<device>/; for weft::cuda include <weft/kernels/cuda/kernels.cuh>, which " \
                                    "provides the whole DeviceKernels set)")

// dst = the bound region (dst has the region's shape).
template <Executor X, class B, class T>
void evaluate(const X& ex, const B& b, TensorView<T, device_of<X>> dst) {
  using K = device_kernels<device_of<X>>;
  if constexpr (requires { K::evaluate(ex, b, dst); })
    K::evaluate(ex, b, dst);
  else
    WEFT_KERNEL_MISSING("evaluate");
}

// *out (device memory) = the region reduced with R (SumOp, MaxOp).
template <class R, Executor X, class B>
void reduce_all(const X& ex, const B& b, const Shape& shape, typename B::value_type* out) {
  using K = device_kernels<device_of<X>>;
  if constexpr (requires { K::template reduce_all<R>(ex, b, shape, out); })
    K::template reduce_all<R>(ex, b, shape, out);
  else
    WEFT_KERNEL_MISSING("reduce_all");
}

// The region reduced with R into out (contiguous, keep-dims shape) read through
// out_st (strides aligned to the region's shape, 0 along reduced axes).
template <class R, Executor X, class B>
void reduce_into(const X& ex, const B& b, const Shape& shape, typename B::value_type* out, const Strides& out_st, index_t out_n) {
  using K = device_kernels<device_of<X>>;
  if constexpr (requires { K::template reduce_into<R>(ex, b, shape, out, out_st, out_n); })
    K::template reduce_into<R>(ex, b, shape, out, out_st, out_n);
  else
    WEFT_KERNEL_MISSING("reduce_into");
}

template <Executor X, class T>
void fill(const X& ex, TensorView<T, device_of<X>> dst, T value) {
  using K = device_kernels<device_of<X>>;
  if constexpr (requires { K::fill(ex, dst, value); })
    K::fill(ex, dst, value);
  else
    WEFT_KERNEL_MISSING("fill");
}

// New workspace memory of shape s, zeroed.
template <class T, Executor X>
TensorView<T, device_of<X>> zeros(const X& ex, const Shape& s) {
  auto v = alloc<T>(ex, s);
  fill(ex, v, T(0));
  return v;
}

// dst = src, both contiguous and of one shape.
template <Executor X, class T>
void copy(const X& ex, TensorView<T, device_of<X>> dst, TensorView<T, device_of<X>> src) {
  using K = device_kernels<device_of<X>>;
  if constexpr (requires { K::copy(ex, dst, src); })
    K::copy(ex, dst, src);
  else
    WEFT_KERNEL_MISSING("copy");
}

// One fused backward pass over a region (see kernels/cpu/loops.hpp): values
// recomputed, adjoints of every leaf written; with Sum, returns the sum of the
// region's values (on the host).
template <class E, bool Sum, std::size_t K, Executor X, class B, class Seed, class T>
T backward_region(const X& ex, const B& b, const Shape& shape, const Seed& seed, const SlotMem<T, K>& sinks, bool linear,
                  bool assign) {
  using Ks = device_kernels<device_of<X>>;
  if constexpr (requires { Ks::template backward_region<E, Sum, K>(ex, b, shape, seed, sinks, linear, assign); })
    return Ks::template backward_region<E, Sum, K>(ex, b, shape, seed, sinks, linear, assign);
  else
    WEFT_KERNEL_MISSING("backward_region");
}

template <bool Log, Executor X, class T>
void softmax_rows(const X& ex, T* x, index_t rows, index_t cols) {
  using K = device_kernels<device_of<X>>;
  if constexpr (requires { K::template softmax_rows<Log>(ex, x, rows, cols); })
    K::template softmax_rows<Log>(ex, x, rows, cols);
  else
    WEFT_KERNEL_MISSING("softmax_rows");
}

template <bool Log, Executor X, class T>
void softmax_rows_backward(const X& ex, const T* y, const T* dy, T* dx, index_t rows, index_t cols) {
  using K = device_kernels<device_of<X>>;
  if constexpr (requires { K::template softmax_rows_backward<Log>(ex, y, dy, dx, rows, cols); })
    K::template softmax_rows_backward<Log>(ex, y, dy, dx, rows, cols);
  else
    WEFT_KERNEL_MISSING("softmax_rows_backward");
}

// Per row of logits (rows, cols): its maximum and log sum exp(x - max) apart
// (folded together they would round at the largest logit's magnitude), and
// the mean loss in *loss, against labels smoothed by eps (0: one-hot).
template <Executor X, class T, class L>
void cross_entropy_rows(const X& ex, const T* logits, const L* labels, index_t lab_st, index_t rows, index_t cols, T eps,
                        T* row_max, T* log_z, T* loss) {
  using K = device_kernels<device_of<X>>;
  if constexpr (requires { K::cross_entropy_rows(ex, logits, labels, lab_st, rows, cols, eps, row_max, log_z, loss); })
    K::cross_entropy_rows(ex, logits, labels, lab_st, rows, cols, eps, row_max, log_z, loss);
  else
    WEFT_KERNEL_MISSING("cross_entropy_rows");
}

template <Executor X, class T>
void layer_norm_rows(const X& ex, const T* x, const T* gamma, const T* beta, T eps, T* y, T* mean, T* rstd, index_t rows,
                     index_t d) {
  using K = device_kernels<device_of<X>>;
  if constexpr (requires { K::layer_norm_rows(ex, x, gamma, beta, eps, y, mean, rstd, rows, d); })
    K::layer_norm_rows(ex, x, gamma, beta, eps, y, mean, rstd, rows, d);
  else
    WEFT_KERNEL_MISSING("layer_norm_rows");
}

template <Executor X, class T>
void layer_norm_rows_backward(const X& ex, const T* x, const T* dy, const T* gamma, const T* mean, const T* rstd, T* dx,
                              T* dgamma, T* dbeta, index_t rows, index_t d) {
  using K = device_kernels<device_of<X>>;
  if constexpr (requires { K::layer_norm_rows_backward(ex, x, dy, gamma, mean, rstd, dx, dgamma, dbeta, rows, d); })
    K::layer_norm_rows_backward(ex, x, dy, gamma, mean, rstd, dx, dgamma, dbeta, rows, d);
  else
    WEFT_KERNEL_MISSING("layer_norm_rows_backward");
}

// out (D) += the column sums of x (R, D), contiguous (a bias gradient).
template <Executor X, class T>
void sum_rows(const X& ex, const T* x, index_t rows, index_t d, T* out) {
  using K = device_kernels<device_of<X>>;
  if constexpr (requires { K::sum_rows(ex, x, rows, d, out); })
    K::sum_rows(ex, x, rows, d, out);
  else
    WEFT_KERNEL_MISSING("sum_rows");
}

template <Executor X, class T, class I>
void gather_rows(const X& ex, const T* table, index_t table_rows, const I* idx, index_t n, index_t d, T* out, const char* what) {
  using K = device_kernels<device_of<X>>;
  if constexpr (requires { K::gather_rows(ex, table, table_rows, idx, n, d, out, what); })
    K::gather_rows(ex, table, table_rows, idx, n, d, out, what);
  else
    WEFT_KERNEL_MISSING("gather_rows");
}

template <Executor X, class T, class I>
void scatter_add_rows(const X& ex, const T* src, const I* idx, index_t n, index_t d, T* table) {
  using K = device_kernels<device_of<X>>;
  if constexpr (requires { K::scatter_add_rows(ex, src, idx, n, d, table); })
    K::scatter_add_rows(ex, src, idx, n, d, table);
  else
    WEFT_KERNEL_MISSING("scatter_add_rows");
}

#undef WEFT_KERNEL_MISSING

// c (m, n, contiguous) = alpha * a (m, k) b (k, n) + beta * c; a and b in any
// layout gemm_reads_in_place accepts.
template <Executor X, class T>
void gemm(const X& ex, const TensorView<T, device_of<X>>& a, const TensorView<T, device_of<X>>& b,
          const TensorView<T, device_of<X>>& c, T alpha, T beta) {
  using G = device_gemm<device_of<X>>;
  if constexpr (requires { G::gemm(ex, a, b, c, alpha, beta); })
    G::gemm(ex, a, b, c, alpha, beta);
  else
    static_assert(dependent_false<X>,
                  "weft::kernels::gemm: no gemm for the executor's device: matmul on the host needs "
                  "<weft/expr/matmul.hpp> (CBLAS, kernels/cpu/blas.hpp); on weft::cuda include <weft/kernels/cuda/gemm.cuh> "
                  "(cuBLASLt)");
}

// Batched gemm: for every index (i0, i1) of the batch shape (c.shape[0], c.shape[1]),
//   c[i0, i1] = alpha * a[i0, i1] b[i0, i1] + beta * c[i0, i1]
// a (B0, B1, M, K), b (B0, B1, K, N), c (B0, B1, M, N) are rank-4 views whose
// two leading axes are batch axes (stride 0 where an operand is broadcast) and
// whose matrices are in any layout gemm_reads_in_place accepts (c's matrices
// contiguous). Where c's batch stride is 0 the products are summed into it in
// batch order, beta applying once: the adjoint of a broadcast batch axis.
// Devices provide device_gemm<Device>::gemm_batched (CPU: one CBLAS call per
// matrix, kernels/cpu/blas.hpp).
template <Executor X, class T>
void gemm_batched(const X& ex, const TensorView<T, device_of<X>>& a, const TensorView<T, device_of<X>>& b,
                  const TensorView<T, device_of<X>>& c, T alpha, T beta) {
  using G = device_gemm<device_of<X>>;
  if constexpr (requires { G::gemm_batched(ex, a, b, c, alpha, beta); })
    G::gemm_batched(ex, a, b, c, alpha, beta);
  else
    static_assert(dependent_false<X>,
                  "weft::kernels::gemm_batched: no batched gemm for the executor's device: batched matmul on the host "
                  "needs <weft/expr/matmul.hpp> (CBLAS, kernels/cpu/blas.hpp); on weft::cuda include "
                  "<weft/kernels/cuda/gemm.cuh> (cuBLASLt)");
}

// Does the device fuse a bias into its gemm (device_gemm<D>::gemm_bias)? The
// affine node (expr/affine.hpp) takes the fused path only then, so a device
// without it (the CPU) keeps its own two steps unchanged.
template <class Device, class T>
inline constexpr bool has_gemm_bias =
    requires(const Exec<Device>& ex, const TensorView<T, Device>& m, const T* bias) {
      device_gemm<Device>::gemm_bias(ex, m, m, bias, m);
    };

// c (M, N, rows contiguous) = a (M, K) b (K, N) + bias (N,) on every row: one
// gemm with the bias in its epilogue where the device has one (cuBLASLt's
// CUBLASLT_EPILOGUE_BIAS), else the bias written into c and the gemm
// accumulated onto it (beta 1).
template <Executor X, class T>
void gemm_bias(const X& ex, const TensorView<T, device_of<X>>& a, const TensorView<T, device_of<X>>& b, const T* bias,
               const TensorView<T, device_of<X>>& c) {
  using G = device_gemm<device_of<X>>;
  if constexpr (requires { G::gemm_bias(ex, a, b, bias, c); }) {
    G::gemm_bias(ex, a, b, bias, c);
  } else {
    const TensorView<T, device_of<X>> bv(const_cast<T*>(bias), Shape{c.shape[1]});
    evaluate(ex, BoundTensor<T>{bv.data, aligned_strides(bv.shape, bv.strides, c.shape), bv.shape, bv.strides}, c);
    gemm(ex, a, b, c, T(1), T(1));
  }
}

// out (D) += the column sums of x (R, D), contiguous: a bias gradient. The
// device's gemm provides it where that is the better tool (CUDA: one gemm by
// a ones vector), else the device's sum_rows.
template <Executor X, class T>
void bias_grad(const X& ex, const T* x, index_t rows, index_t d, T* out) {
  using G = device_gemm<device_of<X>>;
  if constexpr (requires { G::bias_grad(ex, x, rows, d, out); })
    G::bias_grad(ex, x, rows, d, out);
  else
    sum_rows(ex, x, rows, d, out);
}

// Does the device compute a weight gradient and its bias gradient in one gemm
// (device_gemm<D>::gemm_bias_grad; CUDA: cuBLASLt's BGRADA epilogue)? The
// affine node's backward takes the fused path only then, so the CPU keeps
// its two steps (bias_grad, then the weight's gemm) and its bits.
template <class Device, class T>
inline constexpr bool has_gemm_bias_grad =
    requires(const Exec<Device>& ex, const TensorView<T, Device>& m, T* db) {
      device_gemm<Device>::gemm_bias_grad(ex, m, m, m, T(1), T(1), db);
    };

// c (M, N, rows contiguous) = alpha a (M, K) b (K, N) + beta c, and
// db (N) += the column sums of b over its K rows: with a = x^T and b = dy
// (K = R rows, contiguous) a linear layer's weight and bias gradients.
// The device's fused call overwrites its bias output (the epilogue cannot
// accumulate), while a bias gradient must accumulate (a bias used twice,
// gradients summed over micro-batches: the slot is never known to be fresh),
// so the fused call writes a workspace vector (N,) that is then added to db.
// Fallback (the CPU): today's two steps, bias_grad then gemm.
template <Executor X, class T>
void gemm_bias_grad(const X& ex, const TensorView<T, device_of<X>>& a, const TensorView<T, device_of<X>>& b,
                    const TensorView<T, device_of<X>>& c, T alpha, T beta, T* db) {
  using G = device_gemm<device_of<X>>;
  if (b.rank() != 2 || (b.shape[1] > 1 && b.strides[1] != 1) || (b.shape[0] > 1 && b.strides[0] != b.shape[1]))
    throw_error<ShapeError>("gemm_bias_grad: b ", b.shape,
                            " must be a contiguous matrix (the adjoint the bias gradient sums; internal error)");
  const index_t k = b.shape[0], n = b.shape[1];
  if constexpr (has_gemm_bias_grad<device_of<X>, T>) {
    auto fresh = alloc<T>(ex, Shape{n});  // (N,)
    G::gemm_bias_grad(ex, a, b, c, alpha, beta, fresh.data);
    sum_rows(ex, static_cast<const T*>(fresh.data), index_t(1), n, db);  // db += fresh (one row's column sums)
  } else {
    bias_grad(ex, static_cast<const T*>(b.data), k, n, db);
    gemm(ex, a, b, c, alpha, beta);
  }
}

// Does the device fuse bias + GELU (tanh form) into its gemm's epilogue,
// saving the pre-activation (device_gemm<D>::gemm_bias_gelu; CUDA: cuBLASLt's
// GELU_AUX_BIAS)? The fused affine + gelu_tanh node (expr/affine_gelu.hpp)
// takes that path only then; elsewhere it runs affine then the elementwise
// GELU, the unfused expression's arithmetic.
template <class Device, class T>
inline constexpr bool has_gemm_bias_gelu =
    requires(const Exec<Device>& ex, const TensorView<T, Device>& m, const T* bias, T* pre) {
      device_gemm<Device>::gemm_bias_gelu(ex, m, m, bias, m, pre);
    };

// c (M, N, contiguous) = gelu_tanh(a (M, K) b (K, N) + bias (N)), and pre
// (M, N, contiguous) = a b + bias, what GELU's backward reads. No fallback
// here: the kernels layer does not know GELU; callers test has_gemm_bias_gelu.
template <Executor X, class T>
void gemm_bias_gelu(const X& ex, const TensorView<T, device_of<X>>& a, const TensorView<T, device_of<X>>& b, const T* bias,
                    const TensorView<T, device_of<X>>& c, T* pre) {
  using G = device_gemm<device_of<X>>;
  if constexpr (has_gemm_bias_gelu<device_of<X>, T>)
    G::gemm_bias_gelu(ex, a, b, bias, c, pre);
  else
    static_assert(dependent_false<X>,
                  "weft::kernels::gemm_bias_gelu: the executor's device fuses no GELU into its gemm (test "
                  "kernels::has_gemm_bias_gelu first; on weft::cuda include <weft/kernels/cuda/gemm.cuh>)");
}

// Can gemm read matrix view m where it lies (a layout with a leading dimension)?
template <class Device, class T>
bool gemm_reads_in_place(const TensorView<T, Device>& m) {
  using G = device_gemm<Device>;
  if constexpr (requires { { G::reads_in_place(m) } -> std::same_as<bool>; })
    return G::reads_in_place(m);
  else
    return false;
}

// ---------------------------------------------------------------- attention
// Fused scaled dot-product attention (expr/attention.hpp), keyed by device
// like gemm: device_attention<cpu> is in kernels/cpu/attention.hpp (opt-in,
// CBLAS), device_attention<cuda> in kernels/cuda/attention.cuh (opt-in, nvcc).

// Sizes and options of one attention call: batch axes (N0, N1), Tq queries,
// Tk keys, widths D (q, k) and Dv (v).
struct AttentionParams {
  index_t n0 = 1, n1 = 1, tq = 0, tk = 0, d = 0, dv = 0;
  double scale = 1;
  bool causal = false;
  float dropout = 0;  // inverted dropout rate on the probabilities
  std::uint64_t seed = 0;
};

// An operand (N0, N1, T, W) whose last axis is contiguous: row r of batch
// (b0, b1) starts at p + b0 s0 + b1 s1 + r st. Views such as (B, T, H, D)
// permuted to (B, H, T, D) are read in place.
template <class T>
struct AttnOperand {
  T* p;
  index_t s0, s1, st;
  WEFT_HD T* at(index_t b0, index_t b1) const { return p + b0 * s0 + b1 * s1; }  // (WEFT_HD: read in CUDA kernels)
};

template <class Device>
struct device_attention {};

template <class D>
concept DeviceAttention = requires(const Exec<D>& ex, const AttentionParams& p, AttnOperand<const float> a, float* f) {
  device_attention<D>::forward(ex, p, a, a, a, f, f);
  device_attention<D>::backward(ex, p, a, a, a, f, f, f, f, f, f);
};

// o (N0, N1, Tq, Dv) and the rows' log-sum-exp lse (N0, N1, Tq), contiguous.
template <Executor X, class T>
void attention_forward(const X& ex, const AttentionParams& p, AttnOperand<const T> q, AttnOperand<const T> k,
                       AttnOperand<const T> v, T* o, T* lse) {
  using A = device_attention<device_of<X>>;
  if constexpr (requires { A::forward(ex, p, q, k, v, o, lse); })
    A::forward(ex, p, q, k, v, o, lse);
  else
    static_assert(dependent_false<X>,
                  "weft::kernels::attention_forward: no attention for the executor's device: on the host include "
                  "<weft/expr/attention.hpp> (CBLAS, kernels/cpu/attention.hpp); on weft::cuda include "
                  "<weft/kernels/cuda/attention.cuh>");
}

// dq, dk, dv (contiguous, overwritten) from dout, recomputing the
// probabilities from q, k and lse.
template <Executor X, class T>
void attention_backward(const X& ex, const AttentionParams& p, AttnOperand<const T> q, AttnOperand<const T> k,
                        AttnOperand<const T> v, const T* o, const T* dout, const T* lse, T* dq, T* dk, T* dv) {
  using A = device_attention<device_of<X>>;
  if constexpr (requires { A::backward(ex, p, q, k, v, o, dout, lse, dq, dk, dv); })
    A::backward(ex, p, q, k, v, o, dout, lse, dq, dk, dv);
  else
    static_assert(dependent_false<X>,
                  "weft::kernels::attention_backward: no attention for the executor's device: on the host include "
                  "<weft/expr/attention.hpp> (CBLAS, kernels/cpu/attention.hpp); on weft::cuda include "
                  "<weft/kernels/cuda/attention.cuh>");
}

}  // namespace weft::kernels
