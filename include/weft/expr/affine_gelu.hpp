// gelu_tanh(affine(x, W, b)) as one node: a linear layer and the tanh-form
// GELU after it (GPT-2's MLP), so a device whose gemm has a bias + GELU
// epilogue runs both in one call. The user's expression is unchanged: the
// gelu_tanh overload below (more constrained than expr/elementwise.hpp's)
// builds this node whenever its operand is an affine node.
//   forward   CUDA (kernels::has_gemm_bias_gelu): one cuBLASLt call with
//             CUBLASLT_EPILOGUE_GELU_AUX_BIAS writes y = gelu_tanh(x W + b)
//             and saves pre = x W + b for backward (gemm.cuh falls back to
//             gemm_bias + a GELU kernel where cuBLASLt offers no algorithm,
//             e.g. N not a multiple of 8);
//             elsewhere (the CPU): affine's forward, then y = gelu_tanh(pre)
//             by the elementwise evaluator, the unfused expression's
//             arithmetic and bits.
//   backward  dpre = dy * gelu_tanh'(pre) (op::GeluTanhBackward below, one
//             elementwise pass shared by both devices), then affine's backward
//             with dpre as its adjoint (dW and db in one gemm on CUDA).
// Only the tanh form is matched: weft's gelu() is the exact erf form, which
// cuBLASLt's GELU epilogue does not compute, so gelu(affine(...)) stays an
// elementwise node over affine's value. cuBLASLt documents its epilogue only
// as "GELU"; PyTorch's CUDA _addmm_activation(use_gelu) relies on it being
// the tanh approximation, and tests/cuda/test_cuda_epilogue.cu measures it
// against op::GeluTanh.
// Not used: cuBLASLt's DGELU_BGRAD epilogue (the GELU gradient fused into the
// gemm that produces dy, llm.c's backward): dy comes from whatever consumes
// this node, not from a gemm this node runs.
// Dimension legend: R rows (all leading axes of the output), K inner, N out.
#pragma once

#include <concepts>
#include <type_traits>

#include "affine.hpp"
#include "elementwise.hpp"

namespace weft {
namespace op {

// The adjoint of gelu_tanh's input from its output's: dy * GeluTanh'(x), the
// product the elementwise backward forms for a gelu_tanh node (BoundUnary:
// g * df), so the fused node's gradients have the unfused expression's bits.
struct GeluTanhBackward {
  static constexpr const char* name = "gelu_tanh_backward";
  template <class T> WEFT_HD WEFT_INLINE static T f(T dy, T x) { return dy * GeluTanh::df(x, x); }
};

}  // namespace op

template <class A, class B>
struct AffineGeluTanh : ExprTag {
  using Aff = Affine<A, B>;
  using M = typename Aff::M;
  using value_type = typename Aff::value_type;
  using device_type = typename Aff::device_type;
  using T = value_type;
  using View = TensorView<T, device_type>;
  static constexpr int static_rank = Aff::static_rank;
  static constexpr int param_occurrences = Aff::param_occurrences;

  // Its value is State::val (contiguous, its shape) and, in backward, its
  // adjoint State::adj, as MatMul's: let(), views and matmul read the value
  // where it lies (the MLP's second product reads y in place).
  static constexpr bool value_in_state = true;

  Aff aff;

  explicit AffineGeluTanh(Aff a) : aff(a) {}
  Shape shape() const { return aff.shape(); }

  struct State {
    typename Aff::State aff;  // aff.val: pre = x W + b (R, N); aff.adj: dpre in backward
    View val, adj;            // y = gelu_tanh(pre) and its adjoint (R, N)
  };

  template <class X>
  State forward(const X& ex) const {
    if constexpr (kernels::has_gemm_bias_gelu<device_type, T>) {
      State st{aff.operands(ex), kernels::alloc<T>(ex, aff.shape()), {}};
      if (Aff::one_gemm(st.aff)) {
        kernels::gemm_bias_gelu(ex, st.aff.av, st.aff.bv, static_cast<const T*>(aff.bias->value.data()),
                                M::rows(st.aff, st.val), st.aff.val.data);  // y (R, N), pre (R, N)
        return st;
      }
      aff.bias_then_product(ex, st.aff);  // a batched product: the GELU apart, as on the host
      gelu(ex, st);
      return st;
    } else {
      State st{aff.forward(ex), {}, {}};
      st.val = kernels::alloc<T>(ex, aff.shape());
      gelu(ex, st);
      return st;
    }
  }

  template <class G>
  auto bind(State& st, const Shape& o, G& g) const {
    return bind_materialised(st.val.data, st.adj, aff.shape(), o, g);
  }

  template <class G>
  void backward_children(State& st, G& g) const {
    auto dpre = kernels::alloc<T>(g.exec(), aff.shape());
    kernels::evaluate(g.exec(),
                      BoundBinary<op::GeluTanhBackward, BoundTensor<T>, BoundTensor<T>>{contiguous(st.adj.data),
                                                                                        contiguous(st.aff.val.data)},
                      dpre);
    detail::backward_into(g, aff, st.aff, dpre);
  }

  template <class F>
  void for_each_param(F&& f) const {
    aff.for_each_param(f);
  }
  template <std::size_t I>
  static constexpr int slots_in_region() {
    return 0;
  }
  template <std::size_t I>
  static constexpr int slots_total() {
    return Aff::template slots_total<I>();
  }

 private:
  // y = gelu_tanh(pre), elementwise: what the unfused expression evaluates.
  template <class X>
  void gelu(const X& ex, State& st) const {
    kernels::evaluate(ex, BoundUnary<op::GeluTanh, BoundTensor<T>>{contiguous(st.aff.val.data)}, st.val);
  }
  // A contiguous buffer of the node's shape, read as a region leaf.
  BoundTensor<T> contiguous(const T* p) const {
    const Shape s = aff.shape();
    const Strides c = contiguous_strides(s);
    return BoundTensor<T>{p, aligned_strides(s, c, s), s, c};
  }
};

static_assert(Expression<AffineGeluTanh<Leaf<float, cpu>, ParamLeaf<float, cpu>>>);

namespace detail {
template <class E>
struct is_affine : std::false_type {};
template <class A, class B>
struct is_affine<Affine<A, B>> : std::true_type {};
template <class A, class B>
AffineGeluTanh<A, B> fuse_gelu_tanh(const Affine<A, B>& a) {
  return AffineGeluTanh<A, B>(a);
}
}  // namespace detail

template <class X>
concept AffineExpr = detail::is_affine<std::remove_cvref_t<X>>::value;

// gelu_tanh of an affine node: the fused node (see the top of this file).
// Chosen over elementwise.hpp's gelu_tanh by its added constraint.
template <Operand X>
  requires AffineExpr<X>
auto gelu_tanh(X&& x) {
  return detail::fuse_gelu_tanh(x);
}

}  // namespace weft
