// A backward in two halves from one forward's saved state (the B/W split of
// Qi et al. 2023, "Zero Bubble Pipeline Parallelism"):
//   forward(build, x)   y = f(x): the expression's materialised values (its
//                       State) stay in this object's own workspace
//   backward_input(dy)  B: the vjp with respect to the input x (written to dx)
//                       and everything on the way to it; the weight gradients
//                       of matmul parameter operands (the weight gemms,
//                       grad(W) += x^T dy) and of affine's biases (column
//                       sums of dy) are recorded, not run
//   backward_weights()  W: runs the recorded gemms and sums into the
//                       parameters' gradients, from the adjoints B left in
//                       the workspace
// B then W computes exactly the operations of one weft::backward (the same
// kernels on the same values), so the parameters' gradients are bitwise those
// of the full backward. Parameters read inside fused elementwise regions
// (`x + b` written out, a positional embedding) and the row-kernel
// parameters of layer norm and embeddings get their gradient in B: the fused
// pass that yields the input's adjoint yields theirs at no extra pass. An
// affine node's bias (nn::Linear's) is a separate pass over dy, so it moves
// to W with the gemm (on bench_pipeline's 256-wide layers, ~4% of B).
//
// K = 1: the input is differentiated (an Arg<0> leaf); K = 0: it is a constant
// (the first pipeline stage: a Leaf, and its gemm is skipped altogether).
// Neither the input nor the parameters may change until backward_weights().
// Gradients go to each parameter's .grad unless route_grads() names other
// buffers (a GradRoute: a ZeRO strategy's unit buffer under a pipeline).
#pragma once

#include <array>
#include <optional>
#include <type_traits>
#include <utility>

#include "../expr/reduce.hpp"
#include "value_and_grad.hpp"

namespace weft {

// The input leaf a split backward builds its expression from.
template <class T, std::size_t K>
using split_input_t = std::conditional_t<K == 1, Arg<0, T, cpu>, Leaf<T, cpu>>;

// The expression type `build(input leaf)` returns.
template <class Build, class T, std::size_t K>
using split_expr_t = std::remove_cvref_t<std::invoke_result_t<Build&, split_input_t<T, K>>>;

// Where a split backward writes parameter gradients: p.grad, or the buffer a
// callback names (set at run time, so the SplitBackward's type, and the
// pipeline's, do not depend on who owns the gradients). One indirect call per
// parameter per backward, when the route is set.
template <class T>
struct GradRoute {
  void* ctx = nullptr;
  TensorView<T, cpu> (*fn)(void*, Parameter<T, cpu>&) = nullptr;
  TensorView<T, cpu> operator()(Parameter<T, cpu>& p) const { return fn ? fn(ctx, p) : p.grad.view(); }
};

namespace detail {
// What the forward keeps: a full sum or mean at the root keeps its child's
// state (B's fused pass computes the sum), any other root its own.
template <class E, bool = is_full_sum<E>::value>
struct split_state {
  using type = typename E::State;
};
template <class E>
struct split_state<E, true> {
  using type = typename std::remove_cvref_t<decltype(std::declval<E&>().a)>::State;
};
}  // namespace detail

template <class E, std::size_t K>
class SplitBackward {
  static_assert(K == 0 || K == 1, "SplitBackward: K is 1 (differentiate the input) or 0 (the input is a constant)");

 public:
  using T = typename E::value_type;
  using View = TensorView<T, cpu>;
  static constexpr bool full_sum = is_full_sum<E>::value;
  static constexpr int NP = param_occurrences_of<E>();

  SplitBackward() = default;
  SplitBackward(const SplitBackward&) = delete;
  SplitBackward& operator=(const SplitBackward&) = delete;

  // F: builds e = build(input leaf over x) and runs its forward. Returns the
  // value (valid until clear()), except for a full sum or mean at the root,
  // whose value comes out of B's fused pass (then an empty view). With
  // `into` (contiguous, the output's shape) the value is evaluated there
  // instead of into this object's workspace (a pipeline stage's send
  // buffer: no copy); B does not read it. It must not overlap x or anything
  // the expression reads.
  template <class Build>
  View forward(Build&& build, View x, View into = {}) {
    if (full_sum && into.data)
      throw_error<ValueError>("SplitBackward: a full sum or mean at the root has its value only after B; no output buffer "
                              "can take it at F");
    clear();
    ws_.reset();
    e_.emplace(build(split_input_t<T, K>(x)));
    in_shape_ = x.shape;
    if constexpr (full_sum) {
      st_.emplace(e_->a.forward(ex_));
      return {};
    } else {
      Shape s = e_->shape();
      if (into.data && (into.shape != s || !into.is_contiguous())) {
        clear();
        throw_error<ShapeError>("SplitBackward: the output buffer has shape ", into.shape, into.is_contiguous() ? "" : " (strided)",
                                ", the output has ", s, " (contiguous)");
      }
      st_.emplace(e_->forward(ex_));
      value_ = into.data ? into : kernels::alloc<T>(ex_, s);
      NoGrad ng;
      kernels::evaluate(ex_, e_->bind(*st_, s, ng), value_);
      return value_;
    }
  }

  // B: dy is the adjoint of the output (its shape; for a scalar output one
  // element, the seed). With K = 1, dx (contiguous, the input's shape)
  // receives the input's gradient. Returns the value for a full-sum root.
  View backward_input(View dy, View dx = {}) {
    if (!e_) throw_error<Error>("SplitBackward: backward_input() before forward()");
    if (done_b_) throw_error<Error>("SplitBackward: backward_input() twice for one forward");
    if (dy.shape != e_->shape())
      throw_error<ShapeError>("SplitBackward: the output's adjoint has shape ", dy.shape, ", the output has ", e_->shape());
    if constexpr (K == 1) {
      if (dx.shape != in_shape_ || !dx.is_contiguous())
        throw_error<ShapeError>("SplitBackward: the input gradient buffer has shape ", dx.shape,
                                dx.is_contiguous() ? "" : " (strided)", ", the input has ", in_shape_, " (contiguous)");
      dx_[0] = dx;
    }
    g_.emplace(G{&ex_, K ? dx_.data() : nullptr, &hook_, &sink_, nullptr});
    G& g = *g_;
    g.deferred = gemms_.data();
    g.count_params(*e_);
    detail::count_inputs<E, G, K>(g);
    if constexpr (K == 1)
      if (g.remaining[0] == 0) {  // the stage does not read its input
        g.zero(0);
        g.written[0] = true;
        g.finish(0);
      }
    done_b_ = true;
    if constexpr (full_sum) {
      using A = decltype(e_->a);
      const T sigma = dy.data[0];
      const bool mean = std::is_same_v<E, Reduce<ReduceKind::mean, A, true>>;
      const T scale = e_->count() ? (mean ? T(1) / static_cast<T>(e_->count()) : T(1)) : T(0);
      Shape s = e_->a.shape();
      const T total = g.template region<A, true>(e_->a, *st_, s, kernels::ConstSeed<T>{sigma * scale});
      value_ = kernels::alloc<T>(ex_, e_->shape());
      kernels::fill(ex_, value_, total * scale);
    } else {
      Shape s = e_->shape();
      if (s.numel() == 1 && s.rank == 0)
        g.run_region(*e_, *st_, s, kernels::ConstSeed<T>{dy.data[0]});
      else
        g.run_region(*e_, *st_, s, kernels::BufferSeed<T>{dy.data, aligned_strides(s, contiguous_strides(s), s), T(1)});
    }
    return value_;
  }

  // W: the weight gemms B recorded, accumulated into the parameters' .grad.
  void backward_weights() {
    if (!done_b_) throw_error<Error>("SplitBackward: backward_weights() before backward_input()");
    if (done_w_) throw_error<Error>("SplitBackward: backward_weights() twice for one forward");
    g_->run_deferred();
    done_w_ = true;
  }

  // The gradient buffers of the next backward_input() (and its W); the
  // default route is each parameter's .grad.
  void route_grads(GradRoute<T> r) { sink_ = r; }

  // Weight gemms B deferred to W (0 once W ran).
  int deferred() const { return g_ ? g_->n_deferred : 0; }
  // Bytes this forward keeps alive (materialised values, adjoints of B).
  std::size_t bytes() const { return e_ ? ws_.used() : 0; }
  bool active() const { return e_.has_value(); }

  // Forget the forward (its workspace is kept for the next one).
  void clear() {
    g_.reset();
    st_.reset();
    e_.reset();
    value_ = {};
    done_b_ = done_w_ = false;
  }

 private:
  using G = GradContext<Exec<cpu>, T, K, NoHook, NP, GradRoute<T>>;
  using State = typename detail::split_state<E>::type;

  Workspace<cpu> ws_;
  Exec<cpu> ex_{ws_};
  std::optional<E> e_;
  std::optional<State> st_;
  std::optional<G> g_;
  std::array<typename G::DeferredGemm, NP> gemms_{};
  std::array<View, K> dx_{};
  View value_;
  Shape in_shape_;
  NoHook hook_;
  GradRoute<T> sink_;
  bool done_b_ = false, done_w_ = false;
};

}  // namespace weft
