// GPU gemm through cuBLASLt: device_gemm<weft::cuda> for kernels/dispatch.hpp
// (matmul, batched matmul, the affine node's fused bias and fused dW + db,
// gelu_tanh(affine)'s fused bias + GELU: expr/affine.hpp, expr/affine_gelu.hpp),
// with the fused epilogues a linear layer wants (llm.c's use of cuBLASLt):
//   gemm            C = alpha A B + beta C on strided row-major views
//   gemm_batched    rank-4 views, batch axes broadcast with stride 0; where C's
//                   batch stride is 0 the products are summed into it in batch
//                   order (kernels/cpu/blas.hpp is the reference)
//   gemm_bias       C = A B + bias                (CUBLASLT_EPILOGUE_BIAS)
//   gemm_bias_gelu  C = gelu_tanh(A B + bias), optionally saving A B + bias
//                                                 (CUBLASLT_EPILOGUE_GELU_BIAS / GELU_AUX_BIAS)
//   gemm_bias_grad  C = alpha A B + beta C and db = column sums of B over its
//                   K rows (a weight gradient x^T dy with the bias gradient
//                   of dy in the same pass: CUBLASLT_EPILOGUE_BGRADA, see below)
//   bias_grad       db += column sums of dy, as one gemm by a ones vector
// Each fused function falls back to unfused calls (gemm, then a small
// kernel) when cuBLASLt offers no algorithm for the epilogue (double, odd
// alignments); the fallback is also the plain path the tests compare with.
//
// Layout. weft's matrices are row-major; cuBLASLt's default order is
// column-major, and a row-major (m, n) matrix with leading dimension ld is
// the column-major (n, m) matrix with the same ld. So C = A B is run as
// C^T = B^T A^T: cuBLASLt's "A" is our b, its "B" our a, its D (n, m).
// A view whose columns are contiguous instead (a transpose) is the
// column-major matrix itself, read with op T. reads_in_place says which
// views qualify (the same rule as CBLAS in kernels/cpu/blas.hpp).
// Compute: CUBLAS_COMPUTE_32F (no TF32) for float, 64F for double, so the
// results match the CPU's to float rounding.
//
// Handle and workspace. Exec<weft::cuda> carries a stream and a
// Workspace<cuda> only (core/exec.hpp), and the DeviceGemm concept calls
// gemm(ex, ...) with nothing else. So:
//   - the cuBLASLt scratch comes from the executor's workspace, sized per
//     call by cuBLASLt's heuristic (at most lt_workspace_cap bytes, usually
//     0 for FP32): nothing hidden, freed with the workspace, and a repeated
//     step allocates nothing (bump arena);
//   - the cublasLtHandle_t is a per-thread, per-device handle created on
//     first use (lt_handle()): a handle is a host object that holds no
//     stream and no memory of ours, is costly enough to create that it
//     cannot be made per call, and nothing the user passes can carry it
//     without changing Exec. It is destroyed when the thread ends. (When
//     Exec<cuda> grows a context slot this is the one function to change.)
// Opt-in header: compile with nvcc and link cublasLt (Meson's cuda_dep).
// Dimension legend: M rows of C, N columns of C, K the inner dimension;
// B0, B1 batch axes.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../../core/error.hpp"
#include "../../core/math.hpp"
#include "../../tensor/tensor.hpp"
#include "../dispatch.hpp"
#include "exec.cuh"
#include "memory.cuh"

namespace weft::kernels::cuda {

// The most scratch one cuBLASLt call may take from the executor's workspace.
// FP32 algorithms rarely ask for any; split-K ones ask for a few hundred KiB
// at the sizes of a GPT-2 layer. Each call takes its own (the arena never
// frees within a step), so this bounds a step's total too.
inline constexpr std::size_t lt_workspace_cap = std::size_t(1) << 20;
inline constexpr int lt_max_devices = 64;

// This thread's cuBLASLt handle for the current device (see the top of the file).
inline cublasLtHandle_t lt_handle() {
  struct Handles {
    cublasLtHandle_t h[lt_max_devices] = {};
    Handles() = default;
    Handles(const Handles&) = delete;
    Handles& operator=(const Handles&) = delete;
    ~Handles() {
      for (auto& x : h)
        if (x) cublasLtDestroy(x);  // status ignored: the context may be gone at exit
    }
  };
  thread_local Handles handles;
  int dev = 0;
  cuda_check(cudaGetDevice(&dev), "cudaGetDevice (cuBLASLt handle)");
  if (dev < 0 || dev >= lt_max_devices) throw_error<Error>("cuBLASLt handle: device ", dev, " beyond ", lt_max_devices);
  cublasLtHandle_t& h = handles.h[dev];
  if (!h) {
    const cublasStatus_t s = cublasLtCreate(&h);
    if (s != CUBLAS_STATUS_SUCCESS) {
      h = nullptr;
      throw_error<Error>("cuBLASLt: cublasLtCreate failed on device ", dev, ": ", cublasLtGetStatusName(s));
    }
  }
  return h;
}

// A cuBLAS status that is not success, as a sentence naming the call, the
// operation and its shapes.
inline void lt_check(cublasStatus_t s, const char* call, const char* op, const Shape& a, const Shape& b, const Shape& c) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw_error<Error>("cuBLASLt ", call, " failed in ", op, " for ", a, " x ", b, " -> ", c, ": ", cublasLtGetStatusName(s),
                       " (", cublasLtGetStatusString(s), ")");
}

template <class T>
struct lt_types {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "the CUDA gemm handles float and double");
  static constexpr cudaDataType_t data = std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_64F;
  static constexpr cublasComputeType_t compute = std::is_same_v<T, float> ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_64F;
};

// One operand as cuBLASLt reads it: the stored column-major matrix (rows,
// cols, ld) and the op that turns it into the transpose of our row-major
// view (what C^T = B^T A^T needs of both operands).
template <class T>
struct LtMatrix {
  const T* p = nullptr;
  cublasOperation_t op = CUBLAS_OP_N;
  index_t rows = 0, cols = 0, ld = 1;
  index_t batch_stride = 0;
};

// Row-major view x (r, c): rows contiguous (strides (ld, 1)) is the stored
// column-major (c, r) = x^T itself, op N; columns contiguous (strides (1,
// ld)) is the stored (r, c) = x, op T. False for any other layout.
template <class T>
bool lt_matrix(const TensorView<T, weft::cuda>& x, LtMatrix<T>& out) {
  if (x.rank() != 2) return false;
  const index_t r = x.shape[0], c = x.shape[1];
  out.p = x.data;
  if (x.strides[1] == 1 || c == 1) {
    const index_t ld = std::max<index_t>({x.strides[0], c, 1});
    out.op = CUBLAS_OP_N;
    out.rows = c;
    out.cols = r;
    out.ld = ld;
    return r <= 1 || x.strides[0] >= c;
  }
  if (x.strides[0] == 1 || r == 1) {
    const index_t ld = std::max<index_t>({x.strides[1], r, 1});
    out.op = CUBLAS_OP_T;
    out.rows = r;
    out.cols = c;
    out.ld = ld;
    return c <= 1 || x.strides[1] >= r;
  }
  return false;
}

// The largest power of two (at most 256) dividing a pointer and the byte
// strides it is read with: what cuBLASLt may assume of the buffer. Views
// into the middle of a tensor are less aligned than cudaMalloc's 256.
inline std::uint32_t lt_alignment(const void* p, std::size_t elem, index_t ld, index_t batch_stride) {
  std::uintptr_t v = reinterpret_cast<std::uintptr_t>(p) | 256u;
  v |= static_cast<std::uintptr_t>(ld) * elem;
  if (batch_stride) v |= static_cast<std::uintptr_t>(batch_stride) * elem;
  return static_cast<std::uint32_t>(v & (~v + 1));
}

// RAII for the descriptor objects of one call (host objects; destroying
// them after cublasLtMatmul has been enqueued is allowed).
struct LtDesc {
  cublasLtMatmulDesc_t d = nullptr;
  ~LtDesc() {
    if (d) cublasLtMatmulDescDestroy(d);
  }
};
struct LtLayout {
  cublasLtMatrixLayout_t l = nullptr;
  ~LtLayout() {
    if (l) cublasLtMatrixLayoutDestroy(l);
  }
};
struct LtPref {
  cublasLtMatmulPreference_t p = nullptr;
  ~LtPref() {
    if (p) cublasLtMatmulPreferenceDestroy(p);
  }
};

// One cuBLASLt call in row-major terms: C (M, N; ldc) = alpha A B + beta C,
// `batch` times with the operands' batch strides, with an epilogue.
template <class T>
struct LtCall {
  const char* op = "gemm";  // named in errors
  Shape sa, sb, sc;         // the caller's shapes, for errors
  LtMatrix<T> a, b;         // from lt_matrix(a view), lt_matrix(b view)
  T* c = nullptr;
  index_t m = 0, n = 0, k = 0, ldc = 0, c_batch_stride = 0;
  int batch = 1;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // bias (N) to add, or bias gradient (N) to write
  void* aux = nullptr;         // GELU_AUX: the pre-activation (M, N; aux_ld)
  index_t aux_ld = 0;
};

// Run one call. With `required` false, returns false (having enqueued
// nothing) when cuBLASLt has no algorithm for it, so the caller can fall
// back to unfused calls; every other failure throws.
template <class Ex, class T>
bool lt_matmul(const Ex& ex, const LtCall<T>& call, T alpha, T beta, bool required = true) {
  using L = lt_types<T>;
  const auto chk = [&](cublasStatus_t s, const char* what) { lt_check(s, what, call.op, call.sa, call.sb, call.sc); };
  cublasLtHandle_t h = lt_handle();
  // Column-major: D' (N, M) = op(A') op(B'), A' = our b (op(A') = b^T, (N, K)), B' = our a (op(B') = a^T, (K, M)).
  LtDesc desc;
  chk(cublasLtMatmulDescCreate(&desc.d, L::compute, L::data), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = call.b.op, tb = call.a.op;
  chk(cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "set TRANSA");
  chk(cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "set TRANSB");
  if (call.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    chk(cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_EPILOGUE, &call.epilogue, sizeof(call.epilogue)),
        "set EPILOGUE");
    if (call.bias) {
      const cudaDataType_t bt = L::data;
      chk(cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &call.bias, sizeof(call.bias)),
          "set BIAS_POINTER");
      chk(cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)), "set BIAS_DATA_TYPE");
    }
    if (call.aux) {
      const std::int64_t ld = call.aux_ld;
      chk(cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &call.aux, sizeof(call.aux)),
          "set EPILOGUE_AUX_POINTER");
      chk(cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)),
          "set EPILOGUE_AUX_LD");
    }
  }
  LtLayout la, lb, lc;
  const auto layout = [&](LtLayout& l, index_t rows, index_t cols, index_t ld, index_t stride, const char* what) {
    chk(cublasLtMatrixLayoutCreate(&l.l, L::data, static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(cols),
                                   static_cast<std::int64_t>(ld)),
        what);
    if (call.batch > 1) {
      const std::int32_t count = call.batch;
      const std::int64_t st = stride;
      chk(cublasLtMatrixLayoutSetAttribute(l.l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)), "set BATCH_COUNT");
      chk(cublasLtMatrixLayoutSetAttribute(l.l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &st, sizeof(st)),
          "set STRIDED_BATCH_OFFSET");
    }
  };
  layout(la, call.b.rows, call.b.cols, call.b.ld, call.b.batch_stride, "cublasLtMatrixLayoutCreate (A)");
  layout(lb, call.a.rows, call.a.cols, call.a.ld, call.a.batch_stride, "cublasLtMatrixLayoutCreate (B)");
  layout(lc, call.n, call.m, call.ldc, call.c_batch_stride, "cublasLtMatrixLayoutCreate (C)");

  LtPref pref;
  chk(cublasLtMatmulPreferenceCreate(&pref.p), "cublasLtMatmulPreferenceCreate");
  const std::size_t cap = lt_workspace_cap;
  chk(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &cap, sizeof(cap)),
      "set MAX_WORKSPACE_BYTES");
  const std::uint32_t al_a = lt_alignment(call.b.p, sizeof(T), call.b.ld, call.b.batch_stride);
  const std::uint32_t al_b = lt_alignment(call.a.p, sizeof(T), call.a.ld, call.a.batch_stride);
  const std::uint32_t al_c = lt_alignment(call.c, sizeof(T), call.ldc, call.c_batch_stride);
  chk(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a)),
      "set MIN_ALIGNMENT_A_BYTES");
  chk(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b)),
      "set MIN_ALIGNMENT_B_BYTES");
  chk(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c)),
      "set MIN_ALIGNMENT_C_BYTES");
  chk(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c)),
      "set MIN_ALIGNMENT_D_BYTES");

  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(h, desc.d, la.l, lb.l, lc.l, lc.l, pref.p, 1, &result, &found);
  // An optional (fused) call falls back on any refusal here: cuBLASLt reports
  // an unsupported epilogue / type / alignment combination as NOT_SUPPORTED or
  // INVALID_VALUE, depending on the version.
  if (!required && (hs != CUBLAS_STATUS_SUCCESS || found == 0)) return false;
  if (hs == CUBLAS_STATUS_NOT_SUPPORTED || (hs == CUBLAS_STATUS_SUCCESS && found == 0)) {
    throw_error<Error>("cuBLASLt has no algorithm for ", call.op, " of ", call.sa, " x ", call.sb, " -> ", call.sc,
                       " (epilogue ", static_cast<int>(call.epilogue), ", alignment ", al_a, "/", al_b, "/", al_c, " bytes)");
  }
  chk(hs, "cublasLtMatmulAlgoGetHeuristic");
  void* work = nullptr;
  if (result.workspaceSize > 0)
    work = ex.workspace().template alloc<unsigned char>(Shape{static_cast<index_t>(result.workspaceSize)}).data;
  chk(cublasLtMatmul(h, desc.d, &alpha, call.b.p, la.l, call.a.p, lb.l, &beta, call.c, lc.l, call.c, lc.l, &result.algo, work,
                     result.workspaceSize, ex.queue()),
      "cublasLtMatmul");
  return true;
}

// ---------------------------------------------------------------- small kernels
// What the fallbacks and the edge cases need beside cuBLASLt.

inline constexpr int gemm_block = 256;
inline int gemm_grid(index_t n) {
  const index_t g = (n + gemm_block - 1) / gemm_block;
  return static_cast<int>(g < 65535 * 8 ? (g > 0 ? g : 1) : 65535 * 8);
}

// GELU, tanh form, as expr/elementwise.hpp's op::GeluTanh and cuBLASLt's epilogue.
template <class T>
WEFT_HD WEFT_INLINE T gelu_tanh_value(T x) {
  return T(0.5) * x * (T(1) + math::tanh(T(0.79788456080286535588) * (x + T(0.044715) * x * x * x)));
}

// c (m, n; ldc) = beta c (beta 0: zeros, whatever c held).
template <class T>
__global__ void scale_rows_kernel(T* c, index_t m, index_t n, index_t ldc, T beta) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < m * n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    T& x = c[(i / n) * ldc + i % n];
    x = beta == T(0) ? T(0) : beta * x;
  }
}
// c (m, n; ldc) = bias (n) on every row.
template <class T>
__global__ void broadcast_rows_kernel(T* c, const T* bias, index_t m, index_t n, index_t ldc) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < m * n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    c[(i / n) * ldc + i % n] = bias[i % n];
}
// y (m, n) = gelu_tanh(x (m, n)), both with leading dimension n (may alias).
template <class T>
__global__ void gelu_tanh_kernel(const T* x, T* y, index_t count) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    y[i] = gelu_tanh_value(x[i]);
}
template <class T>
__global__ void fill_value_kernel(T* x, index_t count, T v) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    x[i] = v;
}

// ---------------------------------------------------------------- gemm

// c's shape against a (m, k) and b (k, n), and c's layout (rows contiguous).
template <class T>
void check_gemm(const char* op, const TensorView<T, weft::cuda>& a, const TensorView<T, weft::cuda>& b,
                const TensorView<T, weft::cuda>& c) {
  if (a.rank() != 2 || b.rank() != 2 || c.rank() != 2 || b.shape[0] != a.shape[1] || c.shape[0] != a.shape[0] ||
      c.shape[1] != b.shape[1])
    throw_error<ShapeError>(op, ": ", a.shape, " x ", b.shape, " -> ", c.shape, " do not fit");
  if ((c.strides[1] != 1 && c.shape[1] > 1) || (c.shape[0] > 1 && c.strides[0] < c.shape[1]))
    throw_error<ShapeError>(op, ": the output ", c.shape, " with strides (", c.strides[0], ", ", c.strides[1],
                            ") must have contiguous rows (internal error)");
}

// The call for c (m, n) = a b, or throws naming the operand cuBLASLt cannot read in place.
template <class T>
LtCall<T> make_call(const char* op, const TensorView<T, weft::cuda>& a, const TensorView<T, weft::cuda>& b,
                    const TensorView<T, weft::cuda>& c) {
  LtCall<T> call;
  call.op = op;
  call.sa = a.shape;
  call.sb = b.shape;
  call.sc = c.shape;
  if (!lt_matrix(a, call.a) || !lt_matrix(b, call.b))
    throw_error<ShapeError>(op, ": an operand of ", a.shape, " x ", b.shape,
                            " has neither contiguous rows nor contiguous columns (internal error: copy first)");
  call.c = c.data;
  call.m = c.shape[0];
  call.n = c.shape[1];
  call.k = a.shape[1];
  call.ldc = std::max<index_t>({c.shape[0] > 1 ? c.strides[0] : c.shape[1], c.shape[1], 1});
  return call;
}

// c (M, N, rows contiguous) = alpha a (M, K) b (K, N) + beta c.
template <class Ex, class T>
void gemm(const Ex& ex, const TensorView<T, weft::cuda>& a, const TensorView<T, weft::cuda>& b,
          const TensorView<T, weft::cuda>& c, T alpha, T beta) {
  check_gemm("gemm", a, b, c);
  const index_t m = c.shape[0], n = c.shape[1];
  if (m == 0 || n == 0) return;
  LtCall<T> call = make_call("gemm", a, b, c);
  if (call.k == 0) {  // cuBLASLt refuses K = 0; the product is empty
    scale_rows_kernel<<<gemm_grid(m * n), gemm_block, 0, ex.queue()>>>(c.data, m, n, call.ldc, beta);
    cuda_check(cudaGetLastError(), "gemm (K = 0) scale kernel launch");
    return;
  }
  lt_matmul(ex, call, alpha, beta);
}

// The batched form of kernels::gemm_batched (dispatch.hpp): a (B0, B1, M, K),
// b (B0, B1, K, N), c (B0, B1, M, N), batch stride 0 = broadcast; where c's
// is 0 the products are summed into it in batch order, beta once.
//   no summing, batch axes that fold into one stride: one strided-batched call
//   no summing, otherwise: one strided-batched call per index of B0
//   summing: one call per matrix, in batch order (as the CPU)
template <class Ex, class T>
void gemm_batched(const Ex& ex, const TensorView<T, weft::cuda>& a, const TensorView<T, weft::cuda>& b,
                  const TensorView<T, weft::cuda>& c, T alpha, T beta) {
  using V = TensorView<T, weft::cuda>;
  if (a.rank() != 4 || b.rank() != 4 || c.rank() != 4)
    throw_error<ShapeError>("gemm_batched: operands must be rank-4 views, got ", a.shape, " x ", b.shape, " -> ", c.shape);
  for (int d = 0; d < 2; ++d)
    if (a.shape[d] != c.shape[d] || b.shape[d] != c.shape[d])
      throw_error<ShapeError>("gemm_batched: batch axes of ", a.shape, " x ", b.shape, " -> ", c.shape, " differ");
  const index_t b0 = c.shape[0], b1 = c.shape[1];
  if (b0 == 0 || b1 == 0 || c.shape[2] == 0 || c.shape[3] == 0) return;
  auto mat = [](const V& v, index_t i0, index_t i1) {
    return V(v.data + i0 * v.strides[0] + i1 * v.strides[1], Shape{v.shape[2], v.shape[3]},
             Strides{{v.strides[2], v.strides[3]}});
  };
  const V c00 = mat(c, 0, 0);
  if ((c00.strides[1] != 1 && c00.shape[1] > 1) || (c00.shape[0] > 1 && c00.strides[0] != c00.shape[1]))
    throw_error<ShapeError>("gemm_batched: the output's matrices must be contiguous (internal error), got ", c.shape);
  const bool sums = (c.strides[0] == 0 && b0 > 1) || (c.strides[1] == 0 && b1 > 1);
  if (sums || a.shape[3] == 0) {
    for (index_t i0 = 0; i0 < b0; ++i0)
      for (index_t i1 = 0; i1 < b1; ++i1) {
        const bool first = (c.strides[0] != 0 || i0 == 0) && (c.strides[1] != 0 || i1 == 0);
        V cm = mat(c, i0, i1);
        cm.strides = contiguous_strides(cm.shape);
        gemm(ex, mat(a, i0, i1), mat(b, i0, i1), cm, alpha, first ? beta : T(1));
      }
    return;
  }
  // One stride over the flattened batch index i0 B1 + i1, where there is one.
  auto flat = [&](const V& v, index_t& st) {
    if (b0 == 1) st = v.strides[1];
    else if (b1 == 1) st = v.strides[0];
    else if (v.strides[0] == b1 * v.strides[1]) st = v.strides[1];
    else return false;
    return true;
  };
  auto run = [&](index_t i0, index_t count, index_t sa, index_t sb, index_t sc) {
    V cm = mat(c, i0, 0);
    cm.strides = contiguous_strides(cm.shape);
    LtCall<T> call = make_call("gemm_batched", mat(a, i0, 0), mat(b, i0, 0), cm);
    call.sa = a.shape;
    call.sb = b.shape;
    call.sc = c.shape;
    call.batch = static_cast<int>(count);
    call.a.batch_stride = sa;
    call.b.batch_stride = sb;
    call.c_batch_stride = sc;
    lt_matmul(ex, call, alpha, beta);
  };
  index_t fa, fb, fc;
  if (b0 * b1 <= 65535 && flat(a, fa) && flat(b, fb) && flat(c, fc)) {
    run(0, b0 * b1, fa, fb, fc);
  } else {
    for (index_t i0 = 0; i0 < b0; ++i0) run(i0, b1, a.strides[1], b.strides[1], c.strides[1]);
  }
}

// ---------------------------------------------------------------- fused epilogues

// c (M, N, contiguous) = a (M, K) b (K, N) + bias (N) on every row.
// Fused (CUBLASLT_EPILOGUE_BIAS) where cuBLASLt offers it, else the bias is
// written first and the gemm accumulates onto it (the CPU's two steps).
template <class Ex, class T>
void gemm_bias(const Ex& ex, const TensorView<T, weft::cuda>& a, const TensorView<T, weft::cuda>& b, const T* bias,
               const TensorView<T, weft::cuda>& c) {
  check_gemm("gemm_bias", a, b, c);
  const index_t m = c.shape[0], n = c.shape[1];
  if (m == 0 || n == 0) return;
  LtCall<T> call = make_call("gemm_bias", a, b, c);
  if (call.k > 0) {
    call.epilogue = CUBLASLT_EPILOGUE_BIAS;
    call.bias = bias;
    if (lt_matmul(ex, call, T(1), T(0), false)) return;
  }
  broadcast_rows_kernel<<<gemm_grid(m * n), gemm_block, 0, ex.queue()>>>(c.data, bias, m, n, call.ldc);
  cuda_check(cudaGetLastError(), "gemm_bias broadcast kernel launch");
  gemm(ex, a, b, c, T(1), T(1));
}

// c (M, N, contiguous) = gelu_tanh(a b + bias); pre (M, N, contiguous), when
// given, receives a b + bias (what GELU's backward needs). Fused
// (CUBLASLT_EPILOGUE_GELU_BIAS, or GELU_AUX_BIAS with pre: cuBLASLt wants
// N a multiple of 8 then) where cuBLASLt offers it, else gemm_bias and a
// GELU kernel.
template <class Ex, class T>
void gemm_bias_gelu(const Ex& ex, const TensorView<T, weft::cuda>& a, const TensorView<T, weft::cuda>& b, const T* bias,
                    const TensorView<T, weft::cuda>& c, T* pre = nullptr) {
  check_gemm("gemm_bias_gelu", a, b, c);
  const index_t m = c.shape[0], n = c.shape[1];
  if (m == 0 || n == 0) return;
  if (c.shape[0] > 1 && c.strides[0] != n)
    throw_error<ShapeError>("gemm_bias_gelu: the output ", c.shape, " must be contiguous");
  LtCall<T> call = make_call("gemm_bias_gelu", a, b, c);
  if (call.k > 0 && (pre == nullptr || n % 8 == 0)) {
    call.epilogue = pre ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_BIAS;
    call.bias = bias;
    call.aux = pre;
    call.aux_ld = n;  // the aux matrix is (N, M) column-major: ld >= N rows
    if (lt_matmul(ex, call, T(1), T(0), false)) return;
  }
  T* z = pre ? pre : c.data;
  gemm_bias(ex, a, b, bias, TensorView<T, weft::cuda>(z, c.shape));
  gelu_tanh_kernel<<<gemm_grid(m * n), gemm_block, 0, ex.queue()>>>(z, c.data, m * n);
  cuda_check(cudaGetLastError(), "gemm_bias_gelu GELU kernel launch");
}

// db (N) += the column sums of dy (R, N), contiguous: db^T += 1^T dy, one gemm
// by a ones vector from the workspace (the bias gradient of affine; the
// order of the sums is cuBLASLt's, fixed for a given algorithm and shape).
template <class Ex, class T>
void bias_grad(const Ex& ex, const T* dy, index_t rows, index_t n, T* db) {
  if (n == 0 || rows == 0) return;
  using V = TensorView<T, weft::cuda>;
  V ones = ex.workspace().template alloc<T>(Shape{1, rows});
  fill_value_kernel<<<gemm_grid(rows), gemm_block, 0, ex.queue()>>>(ones.data, rows, T(1));
  cuda_check(cudaGetLastError(), "bias_grad ones kernel launch");
  gemm(ex, ones, V(const_cast<T*>(dy), Shape{rows, n}), V(db, Shape{1, n}), T(1), T(1));
}

// c (M, N, contiguous) = alpha a (M, K) b (K, N) + beta c, and db (N) = the
// column sums of b over its K rows, overwritten. With a = x^T (C, R) and
// b = dy (R, O) that is a linear layer's weight gradient and bias gradient
// in one pass over dy. In cuBLASLt's column-major terms b is its A (op(A) =
// b^T, (N, K)), so the epilogue is CUBLASLT_EPILOGUE_BGRADA (sum over K of
// op(A), length N = D's rows); llm.c, computing dW^T, uses BGRADB for the
// same thing. Fused where cuBLASLt offers it (it may not for FP32 or every
// transpose), else gemm then bias_grad into zeros.
template <class Ex, class T>
void gemm_bias_grad(const Ex& ex, const TensorView<T, weft::cuda>& a, const TensorView<T, weft::cuda>& b,
                    const TensorView<T, weft::cuda>& c, T alpha, T beta, T* db) {
  check_gemm("gemm_bias_grad", a, b, c);
  const index_t m = c.shape[0], n = c.shape[1], k = a.shape[1];
  if (n == 0) return;
  if (m > 0 && k > 0) {
    LtCall<T> call = make_call("gemm_bias_grad", a, b, c);
    call.epilogue = CUBLASLT_EPILOGUE_BGRADA;
    call.bias = db;
    if (lt_matmul(ex, call, alpha, beta, false)) return;
  }
  if (m > 0) gemm(ex, a, b, c, alpha, beta);
  fill_value_kernel<<<gemm_grid(n), gemm_block, 0, ex.queue()>>>(db, n, T(0));
  cuda_check(cudaGetLastError(), "gemm_bias_grad zero kernel launch");
  if (k == 0) return;
  if (b.strides[1] != 1 || (k > 1 && b.strides[0] != n)) {
    // bias_grad reads dy contiguous; a strided b is summed by a gemm of its own.
    using V = TensorView<T, weft::cuda>;
    V ones = ex.workspace().template alloc<T>(Shape{1, k});
    fill_value_kernel<<<gemm_grid(k), gemm_block, 0, ex.queue()>>>(ones.data, k, T(1));
    cuda_check(cudaGetLastError(), "gemm_bias_grad ones kernel launch");
    gemm(ex, ones, b, V(db, Shape{1, n}), T(1), T(0));
    return;
  }
  bias_grad(ex, b.data, k, n, db);
}

}  // namespace weft::kernels::cuda

namespace weft::kernels {

// The GPU's gemm for kernels/dispatch.hpp.
template <>
struct device_gemm<weft::cuda> {
  template <class Ex, class T>
  static void gemm(const Ex& ex, const TensorView<T, weft::cuda>& a, const TensorView<T, weft::cuda>& b,
                   const TensorView<T, weft::cuda>& c, T alpha, T beta) {
    cuda::gemm(ex, a, b, c, alpha, beta);
  }
  template <class Ex, class T>
  static void gemm_batched(const Ex& ex, const TensorView<T, weft::cuda>& a, const TensorView<T, weft::cuda>& b,
                           const TensorView<T, weft::cuda>& c, T alpha, T beta) {
    cuda::gemm_batched(ex, a, b, c, alpha, beta);
  }
  template <class Ex, class T>
  static void gemm_bias(const Ex& ex, const TensorView<T, weft::cuda>& a, const TensorView<T, weft::cuda>& b, const T* bias,
                        const TensorView<T, weft::cuda>& c) {
    cuda::gemm_bias(ex, a, b, bias, c);
  }
  template <class Ex, class T>
  static void bias_grad(const Ex& ex, const T* dy, index_t rows, index_t n, T* db) {
    cuda::bias_grad(ex, dy, rows, n, db);
  }
  // db overwritten (kernels::gemm_bias_grad in dispatch.hpp adds it where a gradient accumulates).
  template <class Ex, class T>
  static void gemm_bias_grad(const Ex& ex, const TensorView<T, weft::cuda>& a, const TensorView<T, weft::cuda>& b,
                             const TensorView<T, weft::cuda>& c, T alpha, T beta, T* db) {
    cuda::gemm_bias_grad(ex, a, b, c, alpha, beta, db);
  }
  template <class Ex, class T>
  static void gemm_bias_gelu(const Ex& ex, const TensorView<T, weft::cuda>& a, const TensorView<T, weft::cuda>& b,
                             const T* bias, const TensorView<T, weft::cuda>& c, T* pre) {
    cuda::gemm_bias_gelu(ex, a, b, bias, c, pre);
  }
  template <class T>
  static bool reads_in_place(const TensorView<T, weft::cuda>& m) {
    cuda::LtMatrix<T> l;
    return cuda::lt_matrix(m, l);
  }
};
static_assert(DeviceGemm<weft::cuda>, "the CUDA gemm must satisfy DeviceGemm of kernels/dispatch.hpp");

}  // namespace weft::kernels
