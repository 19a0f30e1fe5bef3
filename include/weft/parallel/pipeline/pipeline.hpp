// Pipeline<T, L, Transport, Loss, Stages...>: a model cut into S = p v stages
// over the p ranks of a transport; each training step splits the batch into
// m micro-batches and runs this rank's action list of a Schedule
// (schedule.hpp): forwards, backwards (split into B and W by
// autodiff/split.hpp for zero-bubble schedules), and the activations and
// their gradients between stages as non-blocking sends and receives.
//
//   - Stages are callables x -> expression (a layer, a Sequential, a
//     StageRange of one: stages.hpp); stage s runs on rank s % p. Every rank
//     holds the list (building an expression computes nothing, so each rank
//     knows every boundary's shape); it runs only its own stages.
//   - The last stage's output goes through loss(output, labels). The loss of
//     a step is the sum of the micro-batch losses times loss_scale (default
//     1/m: the mean, as gradient accumulation over m micro-batches gives).
//   - Gradients accumulate into the local stages' parameters' .grad (zero
//     them between steps, as with weft::backward), in micro-batch order, so
//     they equal one rank's gradient accumulation over the same micro-batches
//     bit for bit (when m is a power of 2, or loss_scale = 1).
//   - Each message carries a header (step, stages, micro-batch, direction,
//     element count) checked on receipt; every wait has a deadline. Errors
//     name the stage, micro-batch, direction and peer rank:
//     "stage 2 waited 30 s for the activation of micro-batch 5 from stage 1 (rank 1)".
//   - A step that fails (deadline, mismatch, peer failure) leaves the pipeline
//     refusing later steps with that first error (comm::BrokenError).
//   - Tracing: each action's start and end (steady clock, seconds) per rank;
//     gather_trace() brings every rank's to rank 0 (trace.hpp renders it).
// Tags: 1 + (direction, receiving stage, micro-batch); they must fit the
// transport's 15 bits (2 S m < 32767). Give the pipeline its own transport
// (split) when other communicators share the ranks.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../autodiff/split.hpp"
#include "../../comm/deadline.hpp"
#include "../../comm/error.hpp"
#include "../../comm/transport.hpp"
#include "../../core/error.hpp"
#include "../strategy.hpp"
#include "schedule.hpp"
#include "stages.hpp"
#include "trace.hpp"

namespace weft::parallel::pipeline {

struct PipelineOptions {
  // Every wait for an activation or a gradient ends by then.
  comm::Duration timeout = std::chrono::seconds(30);
  // Record each action's start and end (trace()).
  bool trace = false;
  // The step's loss is sum(micro-batch losses) x loss_scale; 0 means 1/m.
  double loss_scale = 0;
  // On a transport whose ranks share one address space (ThreadTransport):
  // a message carries only its header and the payload's address, and the
  // receiver reads the sender's buffer in place (no receive copy; a step
  // ends once its neighbour stages have finished it). false: copy.
  bool zero_copy = true;
};

namespace detail {

// Sent in front of every activation and gradient.
struct MsgHeader {
  std::uint32_t magic = 0x77656674;  // "weft"
  std::uint32_t step = 0;
  std::int32_t from_stage = -1, to_stage = -1, mb = -1, grad = -1;
  std::int64_t numel = -1;
  const void* payload = nullptr;  // zero-copy messages: where the sender's payload lies
};

// Stage I's expression from its input leaf; the last stage's through the loss.
template <std::size_t I, int S, class StageTuple, class Loss, class L>
struct StageBuild {
  StageTuple* stages;
  Loss* loss;
  TensorView<L>* labels;
  template <class In>
  auto operator()(In in) const {
    if constexpr (I + 1 == static_cast<std::size_t>(S))
      return (*loss)(std::get<I>(*stages)(in), *labels);
    else
      return std::get<I>(*stages)(in);
  }
};

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace detail

template <class T, class L, comm::Transport Tr, class Loss, class... Stages>
class Pipeline {
  static constexpr int S = static_cast<int>(sizeof...(Stages));
  static_assert(S >= 1, "Pipeline: give at least one stage");
  static constexpr std::size_t header_elems = (sizeof(detail::MsgHeader) + sizeof(T) - 1) / sizeof(T);

  // The stage's input is a constant for stage 0, differentiated elsewhere.
  template <std::size_t I>
  static constexpr std::size_t K = I == 0 ? 0 : 1;

  using StageTuple = std::tuple<Stages...>;
  template <std::size_t I>
  using Build = detail::StageBuild<I, S, StageTuple, Loss, L>;
  template <std::size_t I>
  Build<I> builder() {
    return Build<I>{&stages_, &loss_, &labels_};
  }
  template <std::size_t I>
  using Split = SplitBackward<split_expr_t<Build<I>, T, K<I>>, K<I>>;

  // One in-flight micro-batch of one stage: its saved forward and its messages.
  template <std::size_t I>
  struct Slot {
    Split<I> saved;
    // header + payload: activation in/out, gradient in (of the output)/out (of
    // the input); zero-copy: in and gin hold the header only.
    Tensor<T> in, out, gin, gout;
    const T* in_at = nullptr;   // zero-copy: where this micro-batch's received payloads lie
    const T* gin_at = nullptr;
    typename Tr::Request rin, rgin;
  };
  template <std::size_t I>
  using Slots = std::vector<std::unique_ptr<Slot<I>>>;

 public:
  Pipeline(Tr transport, Schedule schedule, std::tuple<Stages...> stages, Loss loss, PipelineOptions o = {})
      : t_(std::move(transport)), sched_(std::move(schedule)), stages_(stages), loss_(std::move(loss)), opts_(o) {
    report_ = validate(sched_);
    if (sched_.ranks != t_.size())
      throw_error<ValueError>("Pipeline: schedule '", sched_.name, "' is for ", sched_.ranks, " ranks, the transport has ",
                              t_.size());
    if (sched_.stages() != S)
      throw_error<ValueError>("Pipeline: schedule '", sched_.name, "' on ", sched_.ranks, " ranks with ", sched_.chunks,
                              " chunks each runs ", sched_.stages(), " stages, the model is cut into ", S);
    if (2 * S * sched_.micro_batches + 2 > static_cast<int>(comm::max_tag))
      throw_error<ValueError>("Pipeline: ", S, " stages x ", sched_.micro_batches, " micro-batches need more message tags than the transport's ",
                              comm::max_tag);
    if (opts_.timeout.count() < 0) throw_error<ValueError>("Pipeline: the timeout is negative");
    for (int st = 0; st < S; ++st) {
      if (!holds_stage(st)) continue;
      for (int q : {st - 1, st + 1}) {
        if (q < 0 || q >= S || q % ranks() == rank()) continue;
        if (std::find(neighbours_.begin(), neighbours_.end(), q % ranks()) == neighbours_.end()) neighbours_.push_back(q % ranks());
      }
    }
  }

  // The schedule policy form: builds the schedule for the transport's ranks.
  template <SchedulePolicy P>
  Pipeline(Tr transport, P policy, int micro_batches, std::tuple<Stages...> stages, Loss loss, PipelineOptions o = {})
      : Pipeline(transport, policy.build(transport.size(), micro_batches), stages, std::move(loss), o) {}

  int rank() const { return t_.rank(); }
  int ranks() const { return t_.size(); }
  int micro_batches() const { return sched_.micro_batches; }
  const Schedule& schedule() const { return sched_; }
  // Peak activation stashes per rank, from validate().
  const ScheduleReport& report() const { return report_; }
  bool holds_stage(int s) const { return s % ranks() == rank(); }
  bool is_last_rank() const { return holds_stage(S - 1); }

  // One step over a batch: x (B, ...) on the rank of stage 0 and labels (B, ...)
  // on the rank of the last stage (other ranks may pass empty views); B a
  // multiple of m. Returns the step's loss on the last stage's rank, 0 elsewhere.
  T step(TensorView<T> x, TensorView<L> labels) {
    start_step(x, labels);
    return guarded_run();
  }

  // The same, then the gradients of this rank's stages averaged over the
  // ranks holding the same stages (a DataParallel over the data-parallel
  // group, or a Zero of stage 1 or 2), after the last W. A strategy that
  // owns the gradient buffers (GradSink: Zero) receives the stages'
  // gradients there, accumulated over the micro-batches, and reduce-scatters
  // them in finish_backward (the full gradient exists for the step, as the
  // micro-batches accumulate into it; the shards alone between steps).
  template <BackwardSeam D>
  T step(TensorView<T> x, TensorView<L> labels, D& dp) {
    if constexpr (requires { D::stage(); })
      static_assert(D::stage() < 3,
                    "Pipeline::step: ZeRO-3 keeps the parameters sharded between steps, and a pipeline stage reads its whole "
                    "parameters in every micro-batch's forward and backward; shard the data-parallel axis with Zero1 or Zero2");
    static_assert(std::is_same_v<typename D::value_type, T>, "Pipeline::step: the strategy's parameter type is not the pipeline's");
    start_step(x, labels);
    dp.begin_backward();
    if constexpr (GradSink<D>)
      route_ = GradRoute<T>{&dp, [](void* c, Parameter<T>& p) -> TensorView<T> { return static_cast<D*>(c)->grad_sink(p); }};
    T loss{};
    try {
      loss = guarded_run();
    } catch (...) {
      route_ = {};
      throw;
    }
    route_ = {};
    dp.finish_backward();
    return loss;
  }

  // Largest number of bytes this rank's saved forwards held at once in the
  // last step (workspaces of the stashes, received activations included).
  std::size_t peak_activation_bytes() const { return peak_bytes_; }
  // Largest number of micro-batch stashes alive at once in the last step.
  int peak_activations() const { return peak_alive_; }

  // This rank's actions of the last step (empty unless options.trace).
  const std::vector<Event>& events() const { return events_; }

  // Every rank's events at rank 0 (collective; an empty trace elsewhere).
  Trace gather_trace() {
    Trace tr;
    const int p = ranks(), r = rank();
    const auto dl = comm::deadline_after(opts_.timeout);
    const comm::Tag tag = comm::max_tag;
    if (r != 0) {
      std::uint64_t n = events_.size();
      auto a = t_.isend(&n, sizeof n, 0, tag);
      wait(a, dl, "send its trace to rank 0");
      auto b = t_.isend(events_.data(), events_.size() * sizeof(Event), 0, tag);
      wait(b, dl, "send its trace to rank 0");
      return tr;
    }
    tr.ranks.resize(static_cast<std::size_t>(p));
    tr.ranks[0] = events_;
    for (int q = 1; q < p; ++q) {
      std::uint64_t n = 0;
      auto a = t_.irecv(&n, sizeof n, q, tag);
      wait(a, dl, "receive rank " + std::to_string(q) + "'s trace");
      tr.ranks[static_cast<std::size_t>(q)].resize(n);
      auto b = t_.irecv(tr.ranks[static_cast<std::size_t>(q)].data(), n * sizeof(Event), q, tag);
      wait(b, dl, "receive rank " + std::to_string(q) + "'s trace");
    }
    return tr;
  }

 private:
  // ---- per step
  // A step that failed half-way leaves the ranks out of step (messages of one
  // step still posted, stashes half used): every later step is refused with
  // the first failure, as a failed communicator refuses its later calls.
  T guarded_run() {
    try {
      return run();
    } catch (const std::exception& e) {
      broken_ = e.what();
      sends_.clear();  // (a send request given up is withdrawn: no peer reads its buffer)
      if (zero_copy()) abandon_send_buffers();
      throw;
    }
  }

  // Zero-copy, at the end of a step: each neighbour has finished the step
  // (and with it every read of this rank's send buffers), and knows this
  // rank has. Costs nothing in steady state: a stage cannot start its next
  // step's work before its neighbours start theirs. So a pipeline can be
  // destroyed, or its buffers reused, once step() returns.
  void release_neighbours() {
    if (neighbours_.empty()) return;
    const std::uint32_t mine = step_;
    std::vector<std::uint32_t> theirs(neighbours_.size(), 0);
    std::vector<typename Tr::Request> reqs;
    const comm::Tag tag = static_cast<comm::Tag>(2 * S * sched_.micro_batches + 1);
    for (std::size_t i = 0; i < neighbours_.size(); ++i) reqs.push_back(t_.irecv(&theirs[i], sizeof mine, neighbours_[i], tag));
    for (int q : neighbours_) reqs.push_back(t_.isend(&mine, sizeof mine, q, tag));
    const auto dl = comm::deadline_after(opts_.timeout);
    for (auto& q : reqs) wait(q, dl, "hear that its neighbour stages finished step " + std::to_string(step_));
    for (std::size_t i = 0; i < neighbours_.size(); ++i)
      if (theirs[i] != mine)
        throw_error<comm::MismatchError>("pipeline rank ", rank(), " finished step ", mine, " and rank ", neighbours_[i],
                                         " step ", theirs[i], ": the ranks run different numbers of steps");
  }

  // A failed step under zero-copy: a neighbour may still read this rank's
  // send buffers (until its own deadline), so they are never freed; they
  // stay reachable here until the process ends.
  void abandon_send_buffers() {
    static std::mutex mu;
    static std::vector<Tensor<T>> kept;
    std::lock_guard<std::mutex> lock(mu);
    with_all_slots([&]<std::size_t I>(Slot<I>& sl) {
      for (Tensor<T>* b : {&sl.out, &sl.gout})
        if (b->numel()) kept.push_back(std::move(*b));
    });
  }

  void start_step(TensorView<T> x, TensorView<L> labels) {
    if (!broken_.empty())
      throw_error<comm::BrokenError>("Pipeline (rank ", rank(), "): an earlier step failed (", broken_,
                                     "); the stages are out of step, so later steps are refused");
    const int m = sched_.micro_batches;
    index_t rows = -1;
    if (holds_stage(0)) {
      if (x.shape.rank < 1 || x.shape[0] % m != 0)
        throw_error<ShapeError>("Pipeline (rank ", rank(), ", stage 0): the batch has shape ", x.shape, ", whose ", x.shape.rank ? x.shape[0] : 0,
                                " rows do not split into ", m, " micro-batches");
      rows = x.shape[0];
    }
    if (is_last_rank()) {
      if (labels.shape.rank < 1 || labels.shape[0] % m != 0)
        throw_error<ShapeError>("Pipeline (rank ", rank(), ", stage ", S - 1, "): the labels have shape ", labels.shape, ", whose rows do not split into ",
                                m, " micro-batches");
      if (rows >= 0 && labels.shape[0] != rows)
        throw_error<ShapeError>("Pipeline (rank ", rank(), "): ", rows, " input rows but ", labels.shape[0], " labels");
    }
    x_ = x;
    y_ = labels;
    if (!shapes_known_) {
      // The boundary shapes: every rank builds every stage's expression on an
      // empty view of the micro-batch's shape (building computes nothing).
      if (!holds_stage(0) && x.shape.rank < 1)
        throw_error<ShapeError>("Pipeline (rank ", rank(), "): the first step needs the batch's shape on every rank (pass x; only stage 0 reads it)");
      Shape s = x.shape;
      s[0] = x.shape[0] / m;
      mb_rows_ = s[0];
      in_shape_[0] = s;
      Shape lab = labels.shape;
      if (lab.rank >= 1) lab[0] = mb_rows_;
      shape_pass<0>(s, lab);
      shapes_known_ = true;
      alloc_slots<0>();
    } else if (holds_stage(0) && x.shape[0] / m != mb_rows_) {
      throw_error<ShapeError>("Pipeline (rank ", rank(), "): micro-batches of ", x.shape[0] / m, " rows; the pipeline was built for ", mb_rows_);
    }
  }

  template <std::size_t I>
  void shape_pass(Shape s, const Shape& lab) {
    TensorView<T> v(nullptr, s);
    TensorView<L> lv(nullptr, lab);
    labels_ = lv;
    auto e = builder<I>()(split_input_t<T, K<I>>(v));
    if constexpr (I + 1 < static_cast<std::size_t>(S)) {
      out_shape_[I] = e.shape();
      in_shape_[I + 1] = e.shape();
      shape_pass<I + 1>(e.shape(), lab);
    } else {
      out_shape_[I] = e.shape();
    }
  }

  template <std::size_t I>
  void alloc_slots() {
    if constexpr (I < static_cast<std::size_t>(S)) {
      if (holds_stage(static_cast<int>(I))) {
        auto& v = std::get<I>(slots_);
        v.clear();
        for (int i = 0; i < sched_.micro_batches; ++i) {
          auto sl = std::make_unique<Slot<I>>();
          const index_t hin = static_cast<index_t>(header_elems) + in_shape_[I].numel();
          const index_t hout = static_cast<index_t>(header_elems) + out_shape_[I].numel();
          const index_t hrecv_in = zero_copy() ? static_cast<index_t>(header_elems) : hin;  // (zero-copy: the header alone)
          const index_t hrecv_out = zero_copy() ? static_cast<index_t>(header_elems) : hout;
          if (I > 0) sl->in = Tensor<T>(Shape{hrecv_in}), sl->gout = Tensor<T>(Shape{hin});
          if (I + 1 < static_cast<std::size_t>(S)) sl->out = Tensor<T>(Shape{hout}), sl->gin = Tensor<T>(Shape{hrecv_out});
          v.push_back(std::move(sl));
        }
      }
      alloc_slots<I + 1>();
    }
  }

  // f(slot) for every slot of every stage this rank holds.
  template <class F>
  void with_all_slots(F&& f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((holds_stage(static_cast<int>(I)) ? [&] { for (auto& sl : std::get<I>(slots_)) f.template operator()<I>(*sl); }() : void()), ...);
    }(std::make_index_sequence<static_cast<std::size_t>(S)>{});
  }

  // Calls f.template operator()<I>() with I = stage s (a run-time index).
  template <class F>
  void with_stage(int s, F&& f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((s == static_cast<int>(I) ? (f.template operator()<I>(), 0) : 0), ...);
    }(std::make_index_sequence<static_cast<std::size_t>(S)>{});
  }

  comm::Tag tag(bool grad, int to_stage, int mb) const {
    return static_cast<comm::Tag>(1 + ((grad ? 1 : 0) * S + to_stage) * sched_.micro_batches + mb);
  }

  static TensorView<T> payload(Tensor<T>& msg, const Shape& s) {
    return TensorView<T>(msg.data() + header_elems, s);
  }
  // A received payload: in place in the sender's buffer (zero-copy) or here.
  TensorView<T> received(Tensor<T>& msg, const T* at, const Shape& s) const {
    return zero_copy() ? TensorView<T>(const_cast<T*>(at), s) : payload(msg, s);
  }

  // Whether messages carry addresses instead of payloads (a neighbour reads
  // this rank's send buffers until it has finished the step: see
  // release_neighbours()).
  bool zero_copy() const {
    if constexpr (requires { requires Tr::shares_address_space; })
      return opts_.zero_copy;
    else
      return false;
  }

  // "the activation of micro-batch 5 from stage 1 (rank 1)"
  std::string what(bool grad, int from_stage, int mb) const {
    return std::string(grad ? "the gradient" : "the activation") + " of micro-batch " + std::to_string(mb) +
           " from stage " + std::to_string(from_stage) + " (rank " + std::to_string(from_stage % ranks()) + ")";
  }

  void wait(typename Tr::Request& r, comm::Deadline dl, const std::string& doing) {
    const comm::WaitStatus st = t_.wait(r, dl);
    if (st == comm::WaitStatus::done) return;
    if (st == comm::WaitStatus::timed_out)
      throw_error<comm::TimeoutError>("pipeline rank ", rank(), " waited ", seconds(), " s to ", doing);
    throw_error<comm::PeerFailedError>("pipeline rank ", rank(), " could not ", doing, ": ", t_.failure());
  }

  std::string seconds() const {
    const double s = std::chrono::duration<double>(opts_.timeout).count();
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", s);
    return buf;
  }

  const T* receive(typename Tr::Request& r, Tensor<T>& msg, bool grad, int stage, int mb, index_t numel) {
    const int from = grad ? stage + 1 : stage - 1;
    const comm::WaitStatus st = t_.wait(r, comm::deadline_after(opts_.timeout));
    if (st == comm::WaitStatus::timed_out)
      throw_error<comm::TimeoutError>("stage ", stage, " waited ", seconds(), " s for ", what(grad, from, mb), " (step ", step_, ")");
    if (st != comm::WaitStatus::done)
      throw_error<comm::PeerFailedError>("stage ", stage, " (rank ", rank(), ") was waiting for ", what(grad, from, mb), " when ",
                                         t_.failure());
    detail::MsgHeader h;
    std::memcpy(static_cast<void*>(&h), msg.data(), sizeof h);
    if (h.magic != detail::MsgHeader{}.magic || h.step != step_ || h.from_stage != from || h.to_stage != stage || h.mb != mb ||
        h.grad != (grad ? 1 : 0) || h.numel != numel)
      throw_error<comm::MismatchError>("stage ", stage, " (rank ", rank(), ") expected ", what(grad, from, mb), " of step ", step_, " (",
                                       numel, " elements) and received ", h.grad == 1 ? "the gradient" : "the activation",
                                       " of micro-batch ", h.mb, " from stage ", h.from_stage, " for stage ", h.to_stage, " of step ", h.step,
                                       " (", h.numel, " elements): the ranks run different schedules or shapes");
    if (zero_copy() != (h.payload != nullptr))
      throw_error<comm::MismatchError>("stage ", stage, " (rank ", rank(), ") received ", what(grad, from, mb),
                                       h.payload ? " as an address" : " as a copy", " but ", zero_copy() ? "reads" : "copies",
                                       " messages: the ranks disagree on PipelineOptions::zero_copy");
    return static_cast<const T*>(h.payload);
  }

  void post(Tensor<T>& msg, bool grad, int stage, int mb, index_t numel) {
    detail::MsgHeader h;
    h.step = step_;
    h.from_stage = stage;
    h.to_stage = grad ? stage - 1 : stage + 1;
    h.mb = mb;
    h.grad = grad ? 1 : 0;
    h.numel = numel;
    if (zero_copy()) h.payload = msg.data() + header_elems;
    std::memcpy(static_cast<void*>(msg.data()), &h, sizeof h);
    const std::size_t bytes = zero_copy() ? header_elems * sizeof(T) : static_cast<std::size_t>(msg.bytes());
    sends_.push_back(t_.isend(msg.data(), bytes, h.to_stage % ranks(), tag(grad, h.to_stage, mb)));
  }

  T run() {
    ++step_;
    const int p = ranks(), r = rank(), m = sched_.micro_batches;
    const T scale = static_cast<T>(opts_.loss_scale > 0 ? opts_.loss_scale : 1.0 / m);
    seed_.data()[0] = scale;
    T loss = 0;
    events_.clear();
    sends_.clear();
    alive_ = 0;
    peak_alive_ = 0;
    peak_bytes_ = 0;
    const auto& list = sched_.actions[static_cast<std::size_t>(r)];
    // Post every receive of the step up front (each into its own buffer).
    for (const Action& a : list) {
      if (a.op != Op::recv_act && a.op != Op::recv_grad) continue;
      const int s = sched_.stage(r, a.chunk);
      with_stage(s, [&]<std::size_t I>() {
        Slot<I>& sl = *std::get<I>(slots_)[static_cast<std::size_t>(a.mb)];
        if (a.op == Op::recv_act)
          sl.rin = t_.irecv(sl.in.data(), sl.in.bytes(), (s - 1) % p, tag(false, s, a.mb));
        else
          sl.rgin = t_.irecv(sl.gin.data(), sl.gin.bytes(), (s + 1) % p, tag(true, s, a.mb));
      });
    }
    for (const Action& a : list) {
      const double t0 = opts_.trace ? detail::now_s() : 0;
      const int s = sched_.stage(r, a.chunk);
      with_stage(s, [&]<std::size_t I>() {
        Slot<I>& sl = *std::get<I>(slots_)[static_cast<std::size_t>(a.mb)];
        constexpr bool first = I == 0, last = I + 1 == static_cast<std::size_t>(S);
        switch (a.op) {
          case Op::recv_act: sl.in_at = receive(sl.rin, sl.in, false, s, a.mb, in_shape_[I].numel()); break;
          case Op::recv_grad: sl.gin_at = receive(sl.rgin, sl.gin, true, s, a.mb, out_shape_[I].numel()); break;
          case Op::send_act: post(sl.out, false, s, a.mb, out_shape_[I].numel()); break;
          case Op::send_grad: post(sl.gout, true, s, a.mb, in_shape_[I].numel()); break;
          case Op::F: {
            TensorView<T> in = first ? x_.slice(a.mb * mb_rows_, (a.mb + 1) * mb_rows_) : received(sl.in, sl.in_at, in_shape_[I]);
            if constexpr (last) labels_ = y_.slice(a.mb * mb_rows_, (a.mb + 1) * mb_rows_);
            // (evaluated straight into the send buffer, but at the last stage)
            if constexpr (last)
              sl.saved.forward(builder<I>(), in);
            else
              sl.saved.forward(builder<I>(), in, payload(sl.out, out_shape_[I]));
            ++alive_;
            peak_alive_ = std::max(peak_alive_, alive_);
            live_bytes_ += stash_bytes(sl);
            peak_bytes_ = std::max(peak_bytes_, live_bytes_);
            break;
          }
          case Op::B: {
            TensorView<T> dy = last ? seed_.view() : received(sl.gin, sl.gin_at, out_shape_[I]);
            TensorView<T> dx = first ? TensorView<T>() : payload(sl.gout, in_shape_[I]);
            const std::size_t before = stash_bytes(sl);
            sl.saved.route_grads(route_);
            TensorView<T> v = sl.saved.backward_input(dy, dx);
            if constexpr (last) loss += v.item() * scale;
            live_bytes_ += stash_bytes(sl) - before;  // B's adjoints live until W
            peak_bytes_ = std::max(peak_bytes_, live_bytes_);
            if (!sched_.split) release(sl);
            break;
          }
          case Op::W: release(sl); break;
        }
      });
      if (opts_.trace) events_.push_back(Event{a, t0, detail::now_s()});
    }
    const auto dl = comm::deadline_after(opts_.timeout);
    for (auto& q : sends_) wait(q, dl, "deliver its sends of step " + std::to_string(step_) + " (a peer stopped receiving)");
    sends_.clear();
    if (zero_copy()) release_neighbours();
    return loss;
  }

  template <std::size_t I>
  std::size_t stash_bytes(const Slot<I>& sl) const {
    // (the input counts wherever it lies: here, or in place in the sender's buffer)
    return sl.saved.bytes() + (I > 0 ? static_cast<std::size_t>(in_shape_[I].numel()) * sizeof(T) : 0);
  }

  template <std::size_t I>
  void release(Slot<I>& sl) {
    const std::size_t held = stash_bytes(sl);  // (W's bias sums take scratch from the same workspace)
    sl.saved.backward_weights();
    live_bytes_ -= held;
    sl.saved.clear();
    --alive_;
  }

  Tr t_;
  Schedule sched_;
  ScheduleReport report_;
  std::tuple<Stages...> stages_;
  Loss loss_;
  PipelineOptions opts_;
  TensorView<L> labels_;
  TensorView<T> x_;
  TensorView<L> y_;
  template <class Seq>
  struct SlotTuple;
  template <std::size_t... I>
  struct SlotTuple<std::index_sequence<I...>> {
    using type = std::tuple<Slots<I>...>;
  };
  typename SlotTuple<std::make_index_sequence<static_cast<std::size_t>(S)>>::type slots_;
  std::array<Shape, static_cast<std::size_t>(S)> in_shape_{}, out_shape_{};
  index_t mb_rows_ = 0;
  bool shapes_known_ = false;
  std::uint32_t step_ = 0;
  Tensor<T> seed_{Shape{}};
  GradRoute<T> route_;  // where B and W write gradients (a GradSink strategy's buffers, or .grad)
  std::vector<typename Tr::Request> sends_;
  std::vector<int> neighbours_;  // the other ranks this rank's stages exchange messages with
  std::vector<Event> events_;
  int alive_ = 0, peak_alive_ = 0;
  std::size_t live_bytes_ = 0, peak_bytes_ = 0;
  std::string broken_;
};

}  // namespace weft::parallel::pipeline

namespace weft::parallel::pipeline {

// make_pipeline<T, L>(transport, policy or schedule, [m,] stages, loss, options):
// T the activations' element type, L the labels'.
template <class T, class L, comm::Transport Tr, SchedulePolicy P, class Loss, class... Stages>
Pipeline<T, L, Tr, Loss, Stages...> make_pipeline(Tr transport, P policy, int micro_batches, std::tuple<Stages...> stages,
                                                   Loss loss, PipelineOptions o = {}) {
  Schedule s = policy.build(transport.size(), micro_batches);
  return Pipeline<T, L, Tr, Loss, Stages...>(std::move(transport), std::move(s), stages, std::move(loss), o);
}
template <class T, class L, comm::Transport Tr, class Loss, class... Stages>
Pipeline<T, L, Tr, Loss, Stages...> make_pipeline(Tr transport, Schedule schedule, std::tuple<Stages...> stages, Loss loss,
                                                   PipelineOptions o = {}) {
  return Pipeline<T, L, Tr, Loss, Stages...>(std::move(transport), std::move(schedule), stages, std::move(loss), o);
}

}  // namespace weft::parallel::pipeline

namespace weft::parallel {
using pipeline::Pipeline;
}  // namespace weft::parallel
