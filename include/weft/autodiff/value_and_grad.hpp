// Compile-time reverse mode. value_and_grad(f, x, y, ...) calls f with leaves
// Arg<0>, Arg<1>, ... so the expression's type says which leaves are
// differentiated and where each occurs. Backward is a fixed sequence of fused
// passes, one per elementwise region, decided by the type: each pass recomputes
// its region's values in registers (the per-node Tape structs) and writes the
// adjoints of all the region's leaves at once. No runtime tape, no allocation
// per node; intermediates live in a Workspace that stops allocating once warm.
//
// A hook, hook(input_index, gradient_view), runs for each input the moment its
// gradient is final, in an order fixed by the expression's type; data-parallel
// training starts communicating a gradient from there while backward goes on.
// The pass owns its state: the executor it runs on, the gradient buffers,
// and how many occurrences of each parameter are still to come (nothing is
// kept on Parameter), so two passes over the same parameters, each with its
// own workspace and gradient buffers, can be in flight at once.
#pragma once

#include <array>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../core/exec.hpp"
#include "../expr/assign.hpp"
#include "../expr/node.hpp"
#include "../expr/parameter.hpp"
#include "../expr/reduce.hpp"
#include "../kernels/dispatch.hpp"

namespace weft {

struct NoHook {
  template <class T, class D>
  void operator()(std::size_t, TensorView<T, D>) const {}
  template <class T, class D>
  void operator()(Parameter<T, D>&) const {}
};

// Where a pass writes parameter gradients: by default each parameter's own
// .grad. A pass can give its own buffers instead (any callable
// Parameter<T, D>& -> TensorView<T, D>), so concurrent passes do not share one.
struct OwnGrad {
  template <class T, class D>
  TensorView<T, D> operator()(Parameter<T, D>& p) const {
    return p.grad.view();
  }
};

// Binding context while differentiating, one per backward pass: the executor,
// where the K inputs' gradients go, which have been written, how many
// occurrences of each are still to come, and the same for the (at most NP
// distinct) parameters of the expression.
template <Executor X, class T, std::size_t K, class Hook, int NP = 0, class Sink = OwnGrad>
struct GradContext {
  using Device = device_of<X>;
  using View = TensorView<T, Device>;
  using Param = Parameter<T, Device>;
  static constexpr bool active = true;
  static constexpr std::size_t slots = K;

  struct ParamState {
    Param* p = nullptr;
    View grad;
    int remaining = 0;  // occurrences whose adjoint is still to come in this pass
  };

  const X* ex;
  View* grads;  // where the kernels write input k's gradient (contiguous)
  Hook* hook;
  Sink* sink;
  View* out = nullptr;  // the caller's buffers, when one of them is strided (else grads)
  std::array<bool, K> written{};
  std::array<int, K> remaining{};
  std::array<ParamState, NP> params{};
  int n_params = 0;

  // A split backward (autodiff/split.hpp) defers the weight gradients of
  // matmul parameter operands: with `deferred` set, param_gemm records its gemm
  // there (room for NP) instead of running it, and the W half runs them later.
  struct DeferredGemm {
    View a, b;
    Param* p = nullptr;
    bool bias = false;  // grad(p) += column sums of a (a bias's gradient); b unused
  };
  DeferredGemm* deferred = nullptr;
  int n_deferred = 0;

  const X& exec() const { return *ex; }

  // Backward through one region (e, evaluated at `shape`) given the adjoint
  // entering it, then on through the materialised nodes below it.
  template <class E, class Seed>
  void run_region(const E& e, typename E::State& st, const Shape& shape, const Seed& seed) {
    region<E, false>(e, st, shape, seed);
  }

  // run_region for a region whose value forward already stored at `val`
  // (contiguous, e's shape): the pass reads it instead of recomputing the
  // root op (kernels::BoundKnownValue).
  template <class E, class Seed>
  void run_region_valued(const E& e, typename E::State& st, const Shape& shape, const Seed& seed, const T* val) {
    const Shape s = e.shape();
    const Strides c = contiguous_strides(s);
    auto inner = e.bind(st, shape, *this);
    region_bound<E, false>(e, st, shape, seed,
                           kernels::BoundKnownValue<decltype(inner)>{inner, {val, nullptr, aligned_strides(s, c, shape), s, c}});
  }

  template <class E, bool Sum, class Seed>
  T region(const E& e, typename E::State& st, const Shape& shape, const Seed& seed) {
    return region_bound<E, Sum>(e, st, shape, seed, e.bind(st, shape, *this));
  }

  template <class E, bool Sum, class Seed, class Bound>
  T region_bound(const E& e, typename E::State& st, const Shape& shape, const Seed& seed, Bound b) {
    static_assert(std::is_same_v<typename E::value_type, T>,
                  "value_and_grad: every differentiated expression must compute in the inputs' element type");
    constexpr std::array<bool, K> active_k = kernels::active_slots<E, K>();
    kernels::SlotMem<T, K> sinks;
    bool any_written = false;
    if constexpr (K > 0)  // (backward over parameters only has no input slots)
      for (std::size_t k = 0; k < K; ++k)
        if (active_k[k]) {
          sinks.g[k] = grads[k].data;
          any_written = any_written || written[k];
        }
    check_no_overlap(b, active_k);
    const bool linear = kernels::linear_ok(b, shape) && seed.linear(shape);
    // Materialised nodes' new adjoint buffers: stored once per element on the
    // host's contiguous pass; zeroed here for every other pass (broadcast
    // reads, strided ones, a device's kernels), which accumulate.
    if (!(linear && std::is_same_v<Device, weft::cpu>))
      b.adjoints([&]<class U>(U*& adj, Strides&, const Shape& own, bool fresh) {
        if (fresh) kernels::fill(exec(), TensorView<U, Device>(adj, own), U(0));
      });
    const bool assign = linear && !any_written;
    if constexpr (K > 0)
      for (std::size_t k = 0; k < K; ++k)
        if (active_k[k]) {
          if (!assign && !written[k]) zero(k);
          written[k] = true;
        }
    T total = kernels::backward_region<E, Sum, K>(exec(), b, shape, seed, sinks, linear, assign);
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((E::template slots_in_region<I>() > 0 ? done(I, E::template slots_in_region<I>()) : void()), ...);
    }(std::make_index_sequence<K>{});
    b.visit([&](const LeafInfo& l) {
      if (l.param) param_done(*static_cast<Param*>(l.param));
    });
    e.backward_children(st, *this);
    return total;
  }

  // The fused kernels read leaves and write gradients in one pass: a gradient
  // buffer that overlaps anything the region reads would corrupt it.
  template <class B>
  void check_no_overlap(const B& b, const std::array<bool, K>& active_k) const {
    if constexpr (K > 0)
      for (std::size_t k = 0; k < K; ++k) {
        if (!active_k[k]) continue;
        const char* glo = reinterpret_cast<const char*>(grads[k].data);
        const char* ghi = glo + grads[k].numel() * static_cast<index_t>(sizeof(T));
        b.visit([&](const LeafInfo& l) {
          const char *lo, *hi;
          detail::byte_range(l.base, l.shape, l.own_strides, l.elem_size, lo, hi);
          if (lo < ghi && glo < hi && glo != ghi)
            throw_error<ValueError>("value_and_grad: the gradient buffer of input ", k, " (shape ", grads[k].shape,
                                    ") overlaps a tensor the expression reads; give it its own memory");
        });
      }
  }

  void zero(std::size_t k) { kernels::fill(exec(), grads[k], T(0)); }

  // Input k's gradient buffer when a node may write the whole gradient there
  // itself (a matmul's product into dx, beta 0, where a region pass would
  // copy it from a scratch buffer): nothing has written it in this pass and
  // the caller holds its only occurrence. Else a null view. The caller then
  // calls sole_input_grad_done(k).
  View sole_input_grad(std::size_t k) const { return (!written[k] && remaining[k] == 1) ? grads[k] : View{}; }
  void sole_input_grad_done(std::size_t k) {
    written[k] = true;
    done(k, 1);
  }

  // The gradient buffer of parameter p in this pass.
  View grad_of(Param& p) { return state_of(p).grad; }

  // grad(p) += a b, one occurrence of p done: a matmul's parameter operand.
  // Recorded instead when this pass defers weight gradients.
  void param_gemm(Param& p, const View& a, const View& b) {
    if (deferred) {
      if (n_deferred >= NP) throw_error<Error>("backward: more deferred weight gemms than parameter occurrences (internal error)");
      deferred[n_deferred++] = DeferredGemm{a, b, &p};
      return;
    }
    kernels::gemm(exec(), a, b, grad_of(p), T(1), T(1));
    param_done(p);
  }

  // grad(p) += the column sums of dc (any rank, contiguous; its last axis is
  // p's): a bias's gradient (expr/affine.hpp). Recorded like param_gemm's
  // gemm when this pass defers weight gradients: a bias's gradient is a
  // weight gradient, and nothing in B needs it.
  void param_bias_grad(Param& p, const View& dc) {
    if (deferred) {
      if (n_deferred >= NP) throw_error<Error>("backward: more deferred weight gradients than parameter occurrences (internal error)");
      deferred[n_deferred++] = DeferredGemm{dc, {}, &p, true};
      return;
    }
    bias_grad(p, dc);
    param_done(p);
  }

  // The W half of a split backward: the recorded gemms and bias sums, in the
  // order recorded (the order the full backward runs them in).
  void run_deferred() {
    for (int i = 0; i < n_deferred; ++i) {
      DeferredGemm& d = deferred[i];
      if (d.bias)
        bias_grad(*d.p, d.a);
      else
        kernels::gemm(exec(), d.a, d.b, grad_of(*d.p), T(1), T(1));
      param_done(*d.p);
    }
    n_deferred = 0;
  }

  void bias_grad(Param& p, const View& dc) {
    const index_t n = dc.shape.rank ? dc.shape.back() : 0, r = n ? dc.numel() / n : 0;
    kernels::bias_grad(exec(), static_cast<const T*>(dc.data), r, n, grad_of(p).data);  // (R, N) -> (N,)
  }

  // One occurrence of parameter p has delivered its adjoint; the last one makes it final.
  void param_done(Param& p) {
    if (--state_of(p).remaining == 0) {
      if constexpr (std::is_invocable_v<Hook&, Param&>) (*hook)(p);
    }
  }

  // Before backward: count each parameter's occurrences (how many, known from
  // the type; which parameters, at run time) so param_done knows when its
  // gradient is final. The count the nodes state must match what they visit.
  template <class E>
  void count_params(const E& e) {
    int visits = 0;
    e.for_each_param([&](Param& p) {
      if (visits++ >= NP) return;
      if constexpr (NP > 0) {
        for (int i = 0; i < n_params; ++i)
          if (params[static_cast<std::size_t>(i)].p == &p) {
            ++params[static_cast<std::size_t>(i)].remaining;
            return;
          }
        ParamState& s = params[static_cast<std::size_t>(n_params++)];
        s.p = &p;
        s.remaining = 1;
        s.grad = (*sink)(p);
        if (s.grad.shape != p.shape())
          throw_error<ShapeError>("backward: the gradient buffer for parameter '", p.name, "' has shape ", s.grad.shape,
                                  ", the parameter has ", p.shape());
        // Kernels (gemm, the fused loops, layer norm) write a parameter's
        // gradient in its own contiguous layout.
        if (!s.grad.is_contiguous())
          throw_error<ValueError>("backward: the gradient buffer for parameter '", p.name, "' (shape ", s.grad.shape,
                                  ") is a strided view; give each parameter a contiguous gradient buffer");
      }
    });
    if (visits != NP)
      throw_error<Error>("backward: the expression's nodes state ", NP, " parameter occurrences (param_occurrences) but visit ",
                         visits, " in for_each_param: a node's param_occurrences disagrees with its for_each_param");
  }

  void done(std::size_t k, int occurrences) {
    remaining[k] -= occurrences;
    if (remaining[k] == 0) finish(k);
  }

  // Input k's gradient is final: into the caller's (strided) buffer if it has
  // one, then the hook.
  void finish(std::size_t k) {
    if (out && out[k].data != grads[k].data) {
      const Shape& s = grads[k].shape;
      const Strides c = contiguous_strides(s);
      kernels::evaluate(exec(), kernels::BoundTensor<T>{grads[k].data, aligned_strides(s, c, s), s, c}, out[k]);
    }
    (*hook)(k, out ? out[k] : grads[k]);
  }

 private:
  ParamState& state_of(Param& p) {
    for (int i = 0; i < n_params; ++i)
      if (params[static_cast<std::size_t>(i)].p == &p) return params[static_cast<std::size_t>(i)];
    throw_error<Error>("backward: parameter '", p.name, "' was not counted before backward (internal error)");
  }
};

namespace detail {

template <class X>
auto input_view(const X& x) {
  if constexpr (is_tensor<X>::value)
    return x.view();
  else
    return x;
}

template <class X>
using input_t = typename decltype(input_view(std::declval<const X&>()))::value_type;

// No two elements of v share an address (a stride of 0, or interleaved axes,
// would make a gradient buffer's elements alias each other).
template <class T, class D>
bool elements_distinct(const TensorView<T, D>& v) {
  int order[max_rank];
  int n = 0;
  for (int d = 0; d < v.shape.rank; ++d)
    if (v.shape[d] > 1) order[n++] = d;
  auto mag = [&](int d) { return v.strides[d] < 0 ? -v.strides[d] : v.strides[d]; };
  for (int i = 1; i < n; ++i)  // by stride magnitude, smallest first
    for (int j = i; j > 0 && mag(order[j]) < mag(order[j - 1]); --j) std::swap(order[j], order[j - 1]);
  index_t span = 1;  // elements covered by the smaller axes
  for (int i = 0; i < n; ++i) {
    if (mag(order[i]) < span) return false;
    span = mag(order[i]) * v.shape[order[i]];
  }
  return true;
}

// Inputs and gradient buffers in any layout. The fused kernels read input k
// and write its gradient through the same (contiguous) indexing, so:
//   a strided input (a transposed view, a column block of a wider matrix) is
//     copied once into contiguous workspace memory, and differentiated there;
//   a strided gradient buffer gets contiguous workspace memory to be written,
//     copied into the caller's buffer through its strides when final (before
//     the hook sees it); nothing outside the view is touched.
// work[k] is where the kernels write input k's gradient.
template <Executor X, class T, std::size_t K>
void prepare_inputs(const char* op, const X& ex, std::array<TensorView<T, device_of<X>>, K>& views,
                    const TensorView<T, device_of<X>>* grads, std::array<TensorView<T, device_of<X>>, K>& work) {
  std::array<bool, K> copied{};
  for (std::size_t k = 0; k < K; ++k) {
    const Shape s = views[k].shape;
    if (grads) {
      if (grads[k].shape != s)
        throw_error<ShapeError>(op, ": gradient buffer ", k, " has shape ", grads[k].shape, ", input has ", s);
      if (!elements_distinct(grads[k]))
        throw_error<ValueError>(op, ": gradient buffer ", k, " (shape ", s,
                                ") has elements that share memory (a stride of 0?); give it one element per input element");
    }
    if (!views[k].is_contiguous()) {
      auto c = kernels::alloc<T>(ex, s);
      kernels::evaluate(ex, kernels::BoundTensor<T>{views[k].data, aligned_strides(s, views[k].strides, s), s, views[k].strides}, c);
      views[k] = c;
      copied[k] = true;
    }
    work[k] = grads && grads[k].is_contiguous() ? grads[k] : kernels::alloc<T>(ex, s);
  }
  if (!grads) return;
  // A strided gradient buffer is written when its gradient is final, while
  // other inputs may still be read: it must not overlap one read in place.
  for (std::size_t k = 0; k < K; ++k) {
    if (work[k].data == grads[k].data) continue;
    const char *glo, *ghi;
    detail::byte_range(grads[k].data, grads[k].shape, grads[k].strides, sizeof(T), glo, ghi);
    for (std::size_t j = 0; j < K; ++j) {
      if (copied[j]) continue;
      const char *lo, *hi;
      detail::byte_range(views[j].data, views[j].shape, views[j].strides, sizeof(T), lo, hi);
      if (lo < hi && glo < ghi && lo < ghi && glo < hi)
        throw_error<ValueError>(op, ": the strided gradient buffer ", k, " (shape ", grads[k].shape, ") overlaps input ", j,
                                "; give it its own memory");
    }
  }
}

// f called with the leaves Arg<0>, Arg<1>, ... over `views`. Tensors that die
// inside f are kept alive by `keep` (tensor.hpp) until the caller's pass ends.
template <class T, class D, class F, std::size_t K>
auto call_with_args(const char* op, F& f, std::array<TensorView<T, D>, K>& views, DeferredFrees& keep) {
  auto e = [&]<std::size_t... I>(std::index_sequence<I...>) {
    return f(Arg<I, T, D>(views[I])...);
  }(std::make_index_sequence<K>{});
  keep.stop();
  if (keep.overflowed())
    throw_error<ValueError>(op, ": more than ", DeferredFrees::capacity,
                            " tensors were created and destroyed inside the function it was given, which can keep only ",
                            DeferredFrees::capacity, " alive for the pass; create constant tensors outside it");
  return e;
}

}  // namespace detail

namespace detail {

// Forward, then backward from a seed of ones. A sum or mean at the root has a
// constant adjoint, so value and gradient come out of one pass over the region
// below it.
template <class E, class G>
auto forward_backward(const E& e, G& g) {
  using T = typename E::value_type;
  const auto& ex = g.exec();
  g.count_params(e);
  if constexpr (is_full_sum<E>::value) {
    using A = decltype(e.a);
    auto st = e.a.forward(ex);
    Shape s = e.a.shape();
    T scale = e.count() ? (std::is_same_v<E, Reduce<ReduceKind::mean, A, true>> ? T(1) / static_cast<T>(e.count()) : T(1)) : T(0);
    T total = g.template region<A, true>(e.a, st, s, kernels::ConstSeed<T>{scale});
    auto out = kernels::alloc<T>(ex, e.shape());
    kernels::fill(ex, out, total * scale);
    return out;
  } else {
    auto st = e.forward(ex);
    Shape s = e.shape();
    auto out = kernels::alloc<T>(ex, s);
    NoGrad ng;
    kernels::evaluate(ex, e.bind(st, s, ng), out);
    g.run_region(e, st, s, kernels::ConstSeed<T>{T(1)});
    return out;
  }
}

template <class E, class G, std::size_t K>
void count_inputs(G& g) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((g.remaining[I] = E::template slots_total<I>()), ...);
  }(std::make_index_sequence<K>{});
}

}  // namespace detail

// The core: value of f(xs...) (a view into the executor's workspace, valid
// until it is reset) with the gradient of sum(f) with respect to each input
// written into grads[i] (preallocated, shapes of the inputs, on the
// executor's device). Inputs and gradient buffers may be strided views
// (transposed, column blocks of wider matrices): see detail::prepare_inputs.
// Tensors created inside f live until this call returns (detail::DeferredFrees).
template <class F, class Hook, Executor X, class T, class... Xs>
TensorView<T, device_of<X>> value_and_grad_into(F&& f, const X& ex, TensorView<T, device_of<X>>* grads, Hook& hook,
                                                const Xs&... xs) {
  using D = device_of<X>;
  static_assert(std::is_floating_point_v<T>, "value_and_grad differentiates float or double inputs");
  static_assert((std::is_same_v<detail::input_t<Xs>, T> && ...), "value_and_grad: all inputs must have one element type");
  constexpr std::size_t K = sizeof...(Xs);
  ex.workspace().reset();
  std::array<TensorView<T, D>, K> views{detail::input_view(xs)...};
  std::array<TensorView<T, D>, K> work;
  detail::prepare_inputs("value_and_grad", ex, views, grads, work);
  detail::DeferredFrees keep;
  auto e = detail::call_with_args<T, D>("value_and_grad", f, views, keep);
  using E = decltype(e);
  static_assert(Expression<E>, "the function given to value_and_grad must return a weft expression built from its arguments");

  OwnGrad own;
  GradContext<X, T, K, Hook, param_occurrences_of<E>()> g{&ex, work.data(), &hook, &own, grads};
  detail::count_inputs<E, decltype(g), K>(g);
  for (std::size_t k = 0; k < K; ++k)
    if (g.remaining[k] == 0) {  // f does not use input k: its gradient is zero, and final now
      g.zero(k);
      g.written[k] = true;
      g.finish(k);
    }

  return detail::forward_backward(e, g);
}

// The same on the host with a workspace (the executor is the calling thread).
template <class F, class Hook, class T, class D, class... Xs>
TensorView<T, D> value_and_grad_into(F&& f, Workspace<D>& ws, TensorView<T, D>* grads, Hook& hook, const Xs&... xs) {
  return value_and_grad_into(std::forward<F>(f), Exec<D>(ws), grads, hook, xs...);
}

// Gradients of sum(e) with respect to every Parameter in e, accumulated into
// the buffers `sink(parameter)` names (by default each parameter's .grad: zero
// them between steps; optimizers' zero_grad() does). Returns the value of e (a
// view into the executor's workspace, valid until it is reset). hook(parameter)
// runs for each parameter the moment its gradient is final. Every piece of
// backward state lives in this call: passes with their own executors
// (workspaces) and sinks may run concurrently over the same parameters.
template <Expression E, Executor X, class Hook = NoHook, class Sink = OwnGrad>
TensorView<typename E::value_type, device_of<X>> backward(const E& e, const X& ex, Hook&& hook = {}, Sink&& sink = {}) {
  using T = typename E::value_type;
  static_assert(std::is_floating_point_v<T>, "backward needs a float or double expression");
  static_assert(std::is_same_v<typename E::device_type, device_of<X>>,
                "backward: the expression's tensors live on another device than the executor's");
  ex.workspace().reset();
  using H = std::remove_reference_t<Hook>;
  using S = std::remove_reference_t<Sink>;
  GradContext<X, T, 0, H, param_occurrences_of<E>(), S> g{&ex, nullptr, &hook, &sink};
  return detail::forward_backward(e, g);
}

template <Expression E, class D, class Hook = NoHook, class Sink = OwnGrad>
TensorView<typename E::value_type, D> backward(const E& e, Workspace<D>& ws, Hook&& hook = {}, Sink&& sink = {}) {
  return backward(e, Exec<D>(ws), std::forward<Hook>(hook), std::forward<Sink>(sink));
}

// (value, d value / d x0, d value / d x1, ...) as new tensors on the inputs'
// device. For a non-scalar f the gradients are those of sum(f), as a seed of
// ones in PyTorch's backward.
template <class F, class... Xs>
auto value_and_grad(F&& f, const Xs&... xs) {
  using T = std::common_type_t<detail::input_t<Xs>...>;
  using D = std::common_type_t<typename decltype(detail::input_view(xs))::device_type...>;
  Workspace<D> ws;
  Exec<D> ex(ws);
  std::array<Tensor<T, D>, sizeof...(Xs)> grads{Tensor<T, D>(detail::input_view(xs).shape)...};
  std::array<TensorView<T, D>, sizeof...(Xs)> gv;
  for (std::size_t k = 0; k < sizeof...(Xs); ++k) gv[k] = grads[k].view();
  NoHook hook;
  TensorView<T, D> v = value_and_grad_into(f, ex, gv.data(), hook, xs...);
  Tensor<T, D> value;
  value = v;
  return [&]<std::size_t... I>(std::index_sequence<I...>) {
    return std::tuple<Tensor<T, D>, decltype((void)I, Tensor<T, D>())...>(std::move(value), std::move(grads[I])...);
  }(std::make_index_sequence<sizeof...(Xs)>{});
}

// Vector-Jacobian product: gradients of sum(seed * f(xs...)), one contiguous
// tensor per input in the input's shape (strided inputs included).
template <class F, class T, class... Xs>
auto vjp(F&& f, const Tensor<T>& seed, const Xs&... xs) {
  Workspace<cpu> ws;
  Exec<cpu> ex(ws);
  constexpr std::size_t K = sizeof...(Xs);
  std::array<Tensor<T>, K> grads{Tensor<T>(detail::input_view(xs).shape)...};
  std::array<TensorView<T>, K> views{detail::input_view(xs)...};
  std::array<TensorView<T>, K> gv;
  for (std::size_t k = 0; k < K; ++k) gv[k] = grads[k].view();
  std::array<TensorView<T>, K> work;
  detail::prepare_inputs("vjp", ex, views, gv.data(), work);
  detail::DeferredFrees keep;
  auto e = detail::call_with_args<T, cpu>("vjp", f, views, keep);
  using E = decltype(e);
  if (seed.shape() != e.shape())
    throw_error<ShapeError>("vjp: seed of shape ", seed.shape(), " for an output of shape ", e.shape());
  NoHook hook;
  OwnGrad own;
  GradContext<Exec<cpu>, T, K, NoHook, param_occurrences_of<E>()> g{&ex, work.data(), &hook, &own, gv.data()};
  g.count_params(e);
  detail::count_inputs<E, decltype(g), K>(g);
  for (std::size_t k = 0; k < K; ++k)
    if (g.remaining[k] == 0) {
      g.zero(k);
      g.written[k] = true;
    }
  auto st = e.forward(ex);
  Shape s = e.shape();
  g.run_region(e, st, s, kernels::BufferSeed<T>{seed.data(), aligned_strides(s, contiguous_strides(s), s), T(1)});
  return grads;
}

}  // namespace weft
