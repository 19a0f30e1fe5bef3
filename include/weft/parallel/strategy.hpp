// Strategy: how a parallel training step communicates, as one seam that data
// parallelism (parallel/data_parallel.hpp) models today and tensor-parallel,
// pipeline, ZeRO and parameter-server strategies will model as siblings.
//
// A strategy sees a training step at four points:
//   begin_backward()      before backward: reset its per-pass state
//   on_grad_ready(p)      from weft::backward's hook, the moment parameter p's
//                         gradient is final: start communicating (DataParallel
//                         packs p into its bucket and starts, non-blocking,
//                         each bucket that may start, in index order)
//   finish_backward()     after backward: handle the parameters the loss did
//                         not use, wait for the communication, leave the
//                         gradients the optimizer needs
//   step(opt)             the optimizer step (all of it, or this rank's shard
//                         followed by a gather of the values)
// and offers its state to checkpoints through visit_state(v) (the protocol of
// nn/state.hpp). parallel::backward(s, loss, ws) runs the first three around
// weft::backward. A steady-state step allocates nothing and calls nothing
// virtual: the strategy is a template parameter, the hook a lambda.
#pragma once

#include <concepts>
#include <type_traits>

#include "../autodiff/value_and_grad.hpp"
#include "../expr/parameter.hpp"
#include "../nn/optim.hpp"
#include "../nn/state.hpp"

namespace weft::parallel {

template <class S>
concept Strategy = requires(S& s, Parameter<typename S::value_type>& p, nn::SGD<typename S::value_type>& opt,
                            nn::NullStateVisitor<typename S::value_type>& v) {
  typename S::value_type;
  s.begin_backward();
  s.on_grad_ready(p);
  s.finish_backward();
  s.step(opt);
  s.visit_state(v);
};

// The part of the seam a pipeline drives (pipeline/pipeline.hpp's
// step(x, labels, s)): begin before the step's first backward, finish after
// its last W. DataParallel and Zero (stages 1, 2) model it; Zero has no
// step(opt) (its optimizer runs on its shards), so it is not a Strategy.
template <class S>
concept BackwardSeam = requires(S& s) {
  typename S::value_type;
  s.begin_backward();
  s.finish_backward();
};

// Optional capability: the strategy owns the gradient buffers (Zero's
// page-aligned unit buffer), and grad_sink(p) names where p's gradient goes;
// a pass accumulates into that view instead of p.grad.
template <class S>
concept GradSink = BackwardSeam<S> && requires(S& s, Parameter<typename S::value_type>& p) {
  { s.grad_sink(p) } -> std::same_as<TensorView<typename S::value_type>>;
};

// Forward, backward and the strategy's communication; returns this rank's loss.
template <Strategy S, Expression E>
typename E::value_type backward(S& s, const E& loss, Workspace<>& ws) {
  using T = typename E::value_type;
  static_assert(std::is_same_v<T, typename S::value_type>,
                "parallel::backward: the loss must compute in the strategy's parameter type");
  s.begin_backward();
  auto hook = [&s](Parameter<T>& p) { s.on_grad_ready(p); };
  const T value = weft::backward(loss, ws, hook).item();
  s.finish_backward();
  return value;
}

}  // namespace weft::parallel
