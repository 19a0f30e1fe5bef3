// CUDA kernels generated from the same expression types as the CPU loops:
// nvcc instantiates the bound evaluators (every node is WEFT_HD) inside these
// kernels, so an elementwise region and its adjoint each become one fused kernel.
//   evaluate(dst, expr)              dst = expr (broadcasting through strides)
//   value_and_grad(f, x, y, ...)     root sum/mean of an elementwise region:
//                                    value and all gradients in one kernel, the
//                                    value reduced deterministically (fixed
//                                    per-block partials, then one ordered sum)
// Opt-in header: compile with nvcc. Materialising nodes (matmul, softmax, ...)
// on the GPU are later work; they are refused at compile time here.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <type_traits>

#include "../../autodiff/value_and_grad.hpp"
#include "../../expr/elementwise.hpp"
#include "../../expr/node.hpp"
#include "../../expr/reduce.hpp"
#include "../cpu/loops.hpp"
#include "memory.cuh"

namespace weft::kernels::cuda {

// Expressions made only of elementwise nodes and leaves.
template <class E>
struct is_elementwise : std::false_type {};
template <class T, class D>
struct is_elementwise<Leaf<T, D>> : std::true_type {};
template <std::size_t I, class T, class D>
struct is_elementwise<Arg<I, T, D>> : std::true_type {};
template <class T, class D>
struct is_elementwise<Scalar<T, D>> : std::true_type {};
template <class Op, class A>
struct is_elementwise<Unary<Op, A>> : is_elementwise<A> {};
template <class Op, class A, class B>
struct is_elementwise<Binary<Op, A, B>> : std::bool_constant<is_elementwise<A>::value && is_elementwise<B>::value> {};

// Binding an elementwise expression needs no workspace.
struct NoWorkspace {};

WEFT_HD inline Index4 unflatten(index_t i, const Shape& p) {
  Index4 ix;
  for (int d = max_rank - 1; d >= 0; --d) {
    ix.i[d] = i % p.dims[d];
    i /= p.dims[d];
  }
  return ix;
}

template <class B, class T>
__global__ void evaluate_linear_kernel(B b, T* out, index_t n) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    out[i] = from_compute<T>(value_at(b, i));
}

template <class B, class T>
__global__ void evaluate_strided_kernel(B b, T* out, Strides out_st, Shape padded_shape, index_t n) {
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    Index4 ix = unflatten(i, padded_shape);
    out[offset(ix, out_st)] = from_compute<T>(value_at(b, ix));
  }
}

inline int grid_for(index_t n, int block) {
  index_t g = (n + block - 1) / block;
  return static_cast<int>(g < 65535 * 8 ? (g > 0 ? g : 1) : 65535 * 8);
}

// dst = e on the device. `e` may broadcast; dst may be a strided view.
template <class T, Expression E>
void evaluate(TensorView<T, weft::cuda> dst, const E& e, cudaStream_t stream = 0) {
  static_assert(is_elementwise<E>::value,
                "weft CUDA evaluate: only elementwise expressions run on the GPU so far; reductions, matmul and "
                "softmax are CPU-only (evaluate them on the host)");
  static_assert(std::is_same_v<typename E::device_type, weft::cuda>, "weft CUDA evaluate: operands must be weft::cuda tensors");
  if (!broadcasts_to(e.shape(), dst.shape))
    throw_error<ShapeError>("cuda evaluate: an expression of shape ", e.shape(), " cannot be assigned to ", dst.shape);
  NoWorkspace ws;
  NoGrad ng;
  auto st = e.forward(ws);
  auto b = e.bind(st, dst.shape, ng);
  const index_t n = dst.numel();
  if (n == 0) return;
  constexpr int block = 256;
  if (dst.is_contiguous() && cpu::linear_ok(b, dst.shape))
    evaluate_linear_kernel<<<grid_for(n, block), block, 0, stream>>>(b, dst.data, n);
  else
    evaluate_strided_kernel<<<grid_for(n, block), block, 0, stream>>>(
        b, dst.data, aligned_strides(dst.shape, dst.strides, dst.shape), padded(dst.shape), n);
  cuda_check(cudaGetLastError(), "evaluate kernel launch");
}

template <class E, std::size_t K, class B, class T, int Block>
__global__ void value_and_grad_kernel(B b, cpu::SlotMem<T, K> g, T seed, index_t n, T* partials) {
  constexpr std::array<bool, K> active = cpu::active_slots<E, K>();
  __shared__ T red[Block];
  T local = 0;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    typename B::Tape t;
    b.fwd(i, t);
    cpu::SlotAcc<T, K> acc;
    for (std::size_t k = 0; k < (K > 0 ? K : 1); ++k) acc.v[k] = T(0);
    b.bwd(i, t, seed, acc);
    for (std::size_t k = 0; k < K; ++k)
      if (active[k]) g.g[k][i] = acc.v[k];
    local += t.v;
  }
  red[threadIdx.x] = local;
  __syncthreads();
  for (int w = Block / 2; w > 0; w /= 2) {
    if (static_cast<int>(threadIdx.x) < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.x] = red[0];
}

template <class T>
__global__ void ordered_sum_kernel(const T* partials, int count, T scale, T* out) {
  T s = 0;
  for (int i = 0; i < count; ++i) s += partials[i];
  *out = s * scale;
}

}  // namespace weft::kernels::cuda

namespace weft::cuda_ad {

// value_and_grad on the GPU for f(xs...) = sum(region) or mean(region), where
// region is elementwise and every input has the region's shape. Returns the
// value (copied to the host) and the gradients as device tensors.
template <class F, class T, class... Ts>
auto value_and_grad(F&& f, const Tensor<T, weft::cuda>& x0, const Tensor<Ts, weft::cuda>&... xs) {
  static_assert((std::is_same_v<T, Ts> && ...), "cuda value_and_grad: all inputs must have one element type");
  using namespace weft::kernels::cuda;
  constexpr std::size_t K = 1 + sizeof...(Ts);
  std::array<TensorView<T, weft::cuda>, K> views{x0.view(), xs.view()...};
  auto e = [&]<std::size_t... I>(std::index_sequence<I...>) {
    return f(Arg<I, T, weft::cuda>(views[I])...);
  }(std::make_index_sequence<K>{});
  using E = decltype(e);
  static_assert(is_full_sum<E>::value && is_elementwise<decltype(e.a)>::value,
                "cuda value_and_grad: the GPU path handles sum(...) or mean(...) of an elementwise expression of the "
                "inputs; use the CPU value_and_grad for other graphs");
  using A = decltype(e.a);
  Shape s = e.a.shape();
  for (std::size_t k = 0; k < K; ++k)
    if (views[k].shape != s)
      throw_error<ShapeError>("cuda value_and_grad: input ", k, " has shape ", views[k].shape, " but the expression has shape ", s,
                              " (broadcast inputs are CPU-only so far)");
  std::array<Tensor<T, weft::cuda>, K> grads;
  for (std::size_t k = 0; k < K; ++k) grads[k] = Tensor<T, weft::cuda>(views[k].shape);
  kernels::cpu::SlotMem<T, K> sinks;
  for (std::size_t k = 0; k < K; ++k) sinks.g[k] = grads[k].data();
  NoWorkspace ws;
  NoGrad ng;
  auto st = e.a.forward(ws);
  auto b = e.a.bind(st, s, ng);
  const index_t n = s.numel();
  const T scale = std::is_same_v<E, Reduce<ReduceKind::mean, A, true>> ? (n ? T(1) / static_cast<T>(n) : T(0)) : T(1);
  constexpr int block = 256;
  const int grid = kernels::cuda::grid_for(n, block) < 1024 ? kernels::cuda::grid_for(n, block) : 1024;
  // Unused inputs have zero gradient.
  constexpr std::array<bool, K> active = kernels::cpu::active_slots<A, K>();
  for (std::size_t k = 0; k < K; ++k)
    if (!active[k] && grads[k].numel() > 0) cuda_check(cudaMemset(grads[k].data(), 0, grads[k].bytes()), "cudaMemset");
  Tensor<T, weft::cuda> partials(Shape{grid}), value(Shape{});
  value_and_grad_kernel<A, K, decltype(b), T, block><<<grid, block>>>(b, sinks, scale, n, partials.data());
  cuda_check(cudaGetLastError(), "value_and_grad kernel launch");
  ordered_sum_kernel<<<1, 1>>>(partials.data(), grid, scale, value.data());
  cuda_check(cudaGetLastError(), "sum kernel launch");
  Tensor<T> host_value = to_host(value);
  return std::make_pair(host_value.item(), std::move(grads));
}

}  // namespace weft::cuda_ad
