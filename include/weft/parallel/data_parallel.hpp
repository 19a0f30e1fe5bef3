// DataParallel: every rank holds the whole model and a shard of each batch;
// gradients are averaged across ranks during backward. A parallel::Strategy
// (parallel/strategy.hpp): the bucketing lives in parallel/buckets.hpp, the
// sharded update in parallel/sharded_update.hpp; this file holds the DDP
// semantics and runs the collectives.
//
//   - At construction: the ranks check that they hold the same parameter list
//     (names and shapes), rank 0 broadcasts the values, and the ranks check
//     that the values now agree bit for bit.
//   - Gradients are packed into buckets (bucket_bytes, PyTorch DDP's 25 MiB by
//     default) in reverse registration order, the same on every rank. A
//     bucket's allreduce (average) starts, non-blocking, from weft::backward's
//     parameter hook (on_grad_ready) once its last gradient is final, so
//     communication overlaps the rest of backward. Buckets start in index
//     order on every rank: a full bucket waits until every lower-indexed
//     bucket has started (a parameter unused on some ranks only would
//     otherwise reorder the collectives and pair different buckets).
//   - accumulate() runs backward without communication (DDP's no_sync()); the
//     next backward() averages the accumulated gradients.
//   - Per-layer communicators: DataParallel<T, Comms...> holds several
//     communicators; layer("l3").use(c) sends that layer's buckets through c.
//   - A parameter that a step does not use still has a (zero or accumulated)
//     gradient: its bucket starts after backward instead of hanging (the DDP
//     unused-parameter hang cannot happen).
//   - Sharded update (shard_update, ZeRO stage 1 without the memory saving,
//     parallel/sharded_update.hpp): each bucket is reduce-scattered instead of
//     allreduced, dp.step(opt) has each rank run the optimizer on its 1/p of
//     every bucket, and an allgather brings the updated values to every rank.
//     The parameters after a step equal the unsharded ones (bit for bit in
//     deterministic mode); in between, a rank's .grad is averaged only on its
//     own shard.
//   - visit_state(v) (nn/state.hpp): the configuration and, when sharded, this
//     rank's shard layout; restoring checks that they match.
//   - On a GPU: the device is the communicators' (their executor's
//     device_type: NcclTransport's CudaExecutor is weft::cuda), the registry
//     holds that device's parameters (nn::Registry<T, weft::cuda>), and
//     backward(loss, exec) runs the pass on the executor's stream, which must
//     be the communicators' stream (the one NcclTransport was built on): the
//     buckets are packed and reduced in the order the gradients' kernels were
//     queued, with no host wait. One process (or thread) per GPU. Sharded,
//     the shards are copied on that stream and the optimizer must be a
//     multi-tensor one (nn/optim_cuda.cuh), whose step(parts) is one launch
//     over this rank's pieces.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "../autodiff/value_and_grad.hpp"
#include "../comm/algorithm/ring.hpp"
#include "../comm/communicator.hpp"
#include "../comm/transport/thread.hpp"
#include "../core/error.hpp"
#include "../nn/optim.hpp"
#include "../nn/registry.hpp"
#include "../nn/state.hpp"
#include "buckets.hpp"
#include "sharded_update.hpp"
#include "strategy.hpp"

namespace weft::parallel {

namespace detail {
// The device a communicator's collectives take buffers on: its executor's
// device_type (host communicators: weft::cpu).
template <class C>
struct comm_device {
  using type = cpu;
};
template <class C>
  requires requires { typename C::executor_type::device_type; }
struct comm_device<C> {
  using type = typename C::executor_type::device_type;
};
}  // namespace detail

struct DataParallelOptions {
  std::size_t bucket_bytes = std::size_t(25) << 20;
  // Start each bucket's allreduce during backward (non-blocking, on the
  // communicator's progress thread). false: reduce every bucket after backward
  // with blocking calls on the caller's thread, which is faster when there are
  // no spare cores for progress threads (ranks as threads on a small machine).
  bool overlap = true;
  // Reduce-scatter gradients, step the optimizer on this rank's shard, then
  // allgather the values (dp.step(opt)); see the file comment.
  bool shard_update = false;
};

template <class T, class... Comms>
class DataParallel {
  static_assert(sizeof...(Comms) >= 1, "DataParallel needs at least one communicator");
  using Request = std::variant<std::monostate, typename Comms::Request...>;
  using Comm0 = std::tuple_element_t<0, std::tuple<Comms...>>;

 public:
  using value_type = T;
  using device_type = typename detail::comm_device<Comm0>::type;
  using Param = Parameter<T, device_type>;
  using queue_type = typename device_memory<device_type>::queue_type;
  static_assert((std::is_same_v<typename detail::comm_device<Comms>::type, device_type> && ...),
                "DataParallel: every communicator must take buffers on one device (all host, or all NCCL)");

  DataParallel(nn::Registry<T, device_type>& params, Comms&... comms, DataParallelOptions o = {})
      : params_(&params), comms_(comms...), opts_(o) {
    auto& c0 = std::get<0>(comms_);
    if constexpr (!std::is_same_v<device_type, cpu>) queue_ = c0.executor().queue();
    check_same_parameter_lists(c0);
    for (Param* p : params) c0.broadcast(std::span<T>(p->value.data(), static_cast<std::size_t>(p->numel())), 0);
    check_equal_values(c0);
  }

  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  void set_overlap(bool on) { opts_.overlap = on; }
  void set_shard_update(bool on) {
    if (built_) throw_error<ValueError>("DataParallel::set_shard_update: choose before the first backward");
    opts_.shard_update = on;
  }
  bool shard_update() const { return opts_.shard_update; }

  // Bucket size (bytes of gradient per allreduce); before the first backward.
  void set_bucket_bytes(std::size_t bytes) {
    if (built_) throw_error<ValueError>("DataParallel::set_bucket_bytes: buckets are fixed after the first backward");
    if (bytes == 0) throw_error<ValueError>("DataParallel::set_bucket_bytes: need at least one byte");
    opts_.bucket_bytes = bytes;
  }

  int rank() const { return std::get<0>(comms_).rank(); }
  int size() const { return std::get<0>(comms_).size(); }

  // dp.layer("l3").use(comm): parameters whose names start with "l3." (or are
  // "l3") communicate through `comm`, one of this DataParallel's communicators.
  struct LayerChoice {
    DataParallel* dp;
    std::string prefix;
    template <class C>
    void use(C& comm) {
      dp->assign(prefix, dp->index_of(comm));
    }
  };
  LayerChoice layer(std::string prefix) { return LayerChoice{this, std::move(prefix)}; }

  // Forward, backward and the averaged gradient of every parameter (added to
  // whatever accumulate() left there). Returns this rank's loss.
  template <Expression E>
  T backward(const E& loss, Workspace<>& ws)
    requires std::is_same_v<device_type, cpu>
  {
    if (size() == 1) return weft::backward(loss, ws).item();  // nothing to average
    return parallel::backward(*this, loss, ws);
  }

  // The same with an executor (on a GPU: Exec<weft::cuda>{workspace, stream}
  // with the communicators' stream). The loss comes back to the host, so this
  // waits for the stream once, at the end.
  template <Expression E, Executor X>
  T backward(const E& loss, const X& ex) {
    static_assert(std::is_same_v<device_of<X>, device_type>,
                  "DataParallel::backward: the executor's device is not the communicators' (a GPU pass needs NCCL communicators)");
    check_queue(ex.queue());
    if (size() == 1) return loss_to_host(weft::backward(loss, ex), ex.queue());
    begin_backward();
    auto hook = [this](Param& p) { on_grad_ready(p); };
    auto v = weft::backward(loss, ex, hook);
    finish_backward();
    return loss_to_host(v, ex.queue());
  }

  // The optimizer step after backward(). Unsharded: opt.step(). Sharded: opt
  // steps this rank's shard of every bucket, then each bucket's values are
  // allgathered. `opt` must be built on the same registry as this
  // DataParallel (its parameters, in the same order).
  template <class Optimizer>
  void step(Optimizer& opt) {
    if (!opts_.shard_update || size() == 1) {
      opt.step();
      return;
    }
    if (!averaged_)
      throw_error<ValueError>("DataParallel::step on rank ", rank(), ": no backward() yet, so no gradient to step with");
    check_optimizer(opt);
    sharded_.step(opt);
    for (std::size_t bi = 0; bi < buckets_.size(); ++bi) start_gather(bi);
    for (std::size_t bi = 0; bi < buckets_.size(); ++bi) finish_gather(bi);
  }

  // Backward without communication: gradients accumulate locally.
  template <Expression E>
  T accumulate(const E& loss, Workspace<>& ws)
    requires std::is_same_v<device_type, cpu>
  {
    return weft::backward(loss, ws).item();
  }
  template <Expression E, Executor X>
  T accumulate(const E& loss, const X& ex) {
    check_queue(ex.queue());
    return loss_to_host(weft::backward(loss, ex), ex.queue());
  }

  // ---- the Strategy seam: parallel::backward calls these around weft::backward
  void begin_backward() {
    if (size() == 1) return;
    if (!built_) build();
    buckets_.begin_pass();
  }
  // From the backward hook: p's gradient is final. O(1): the buckets find p's
  // slot by address; each bucket that may start now starts, in index order.
  void on_grad_ready(Param& p) {
    buckets_.ready(p, [this](std::size_t bi) { start(bi); });
  }
  // Parameters the loss did not use never reported: pack them, start the
  // buckets still waiting (in index order), wait for every bucket.
  void finish_backward() {
    if (size() == 1) return;
    buckets_.finish_pass([this](std::size_t bi) { start(bi); });
    for (std::size_t bi = 0; bi < buckets_.size(); ++bi) finish(bi);
    averaged_ = true;
  }

  // Checkpoints (nn/state.hpp): the rank count, the bucket configuration and,
  // sharded, this rank's shard layout ("shards.*"); restoring checks that they
  // match. Fixes the buckets, as the first backward does.
  template <class V>
  void visit_state(V& v) {
    constexpr std::string_view who = "DataParallel";
    nn::visit_fixed(v, "ranks", static_cast<std::int64_t>(size()), who);
    nn::visit_fixed(v, "bucket_bytes", static_cast<std::uint64_t>(opts_.bucket_bytes), who);
    nn::visit_fixed(v, "shard_update", opts_.shard_update, who);
    if (!opts_.shard_update || size() == 1) return;
    if (!built_) build();
    auto shards = nn::prefixed("shards", v);
    sharded_.visit_state(shards);
  }

  std::size_t buckets() const { return buckets_.size(); }
  // Names of the parameters in bucket i, in packing order (same on every rank).
  std::vector<std::string> bucket_names(std::size_t i) const { return buckets_.names(i); }

 private:
  template <class C>
  std::size_t index_of(C& comm) {
    std::size_t idx = sizeof...(Comms);
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((static_cast<const void*>(&std::get<I>(comms_)) == static_cast<const void*>(&comm) ? (idx = I, 0) : 0), ...);
    }(std::index_sequence_for<Comms...>{});
    if (idx == sizeof...(Comms))
      throw_error<ValueError>("DataParallel::layer(...).use(comm): comm is not one of the communicators given at construction");
    return idx;
  }

  void assign(const std::string& prefix, std::size_t comm) {
    if (built_)
      throw_error<ValueError>("DataParallel::layer(\"", prefix, "\").use(): choose communicators before the first backward");
    bool any = false;
    for (Param* p : *params_) any = any || matches(p->name, prefix);
    if (!any) throw_error<ValueError>("DataParallel::layer(\"", prefix, "\"): no parameter has that name or prefix");
    choices_.emplace_back(prefix, comm);
  }

  static bool matches(const std::string& name, const std::string& prefix) {
    return name == prefix || (name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0 &&
                              name[prefix.size()] == '.');
  }

  std::size_t comm_for(const std::string& name) const {
    std::size_t best = 0, len = 0;
    for (auto& [prefix, c] : choices_)
      if (matches(name, prefix) && prefix.size() >= len) {
        best = c;
        len = prefix.size();
      }
    return best;
  }

  // Buckets cut wherever the communicator changes; sharded, padded to p equal shards.
  void build() {
    const std::size_t p = static_cast<std::size_t>(size());
    buckets_.build(*params_, opts_.bucket_bytes, opts_.shard_update ? p : 1,
                   [this](const std::string& name) { return comm_for(name); }, queue_);
    if (opts_.shard_update) sharded_.layout(buckets_, rank(), size());
    requests_ = std::vector<Request>(buckets_.size());  // requests move, never copy
    built_ = true;
  }

  // Average bucket bi (allreduce; sharded: reduce-scatter, this rank's shard
  // at r * shard, NCCL's in-place layout), blocking or not.
  void reduce(std::size_t bi, bool blocking) {
    std::span<T> data = buckets_.grads(bi);
    Request& req = requests_[bi];
    // Named after its first parameter: a compressed communicator keeps the bucket's codec state under it.
    const comm::CallOptions named{.name = buckets_.slot(buckets_[bi].slots[0]).p->name};
    with_comm(buckets_[bi].channel, [&]<std::size_t I>(auto& comm, std::integral_constant<std::size_t, I>) {
      if (!opts_.shard_update) {
        if (blocking)
          comm.allreduce(data, comm::ReduceOp::avg, named);
        else
          req.template emplace<I + 1>(comm.iallreduce(data, comm::ReduceOp::avg, named));
        return;
      }
      std::span<T> out = sharded_.mine(data, bi);
      if (blocking)
        comm.reduce_scatter(std::span<const T>(data), out, comm::ReduceOp::avg, named);
      else
        req.template emplace<I + 1>(comm.ireduce_scatter(std::span<const T>(data), out, comm::ReduceOp::avg, named));
    });
  }

  void wait(std::size_t bi) {
    Request& req = requests_[bi];
    std::visit([](auto& r) {
      if constexpr (!std::is_same_v<std::decay_t<decltype(r)>, std::monostate>) r.wait();
    }, req);
    req = std::monostate{};
  }

  void start(std::size_t bi) {
    if (opts_.overlap) reduce(bi, false);  // else reduced in finish()
  }

  void finish(std::size_t bi) {
    if (!opts_.overlap) reduce(bi, true);
    wait(bi);
    if (opts_.shard_update) {
      sharded_.unpack_grads(buckets_, *params_, bi, queue_);  // only this rank's shard is averaged
      return;
    }
    buckets_.unpack_grads(bi);
  }

  // Sharded step: every rank's updated shard of the bucket's values to every rank.
  void start_gather(std::size_t bi) {
    sharded_.stage_values(buckets_, *params_, bi, queue_);
    std::span<T> data = buckets_.values(bi);
    std::span<const T> in = sharded_.mine(data, bi);
    Request& req = requests_[bi];
    with_comm(buckets_[bi].channel, [&]<std::size_t I>(auto& comm, std::integral_constant<std::size_t, I>) {
      if (opts_.overlap)
        req.template emplace<I + 1>(comm.iallgather(in, data));
      else
        comm.allgather(in, data);
    });
  }

  void finish_gather(std::size_t bi) {
    wait(bi);
    buckets_.unpack_values(bi);
  }


  template <class Optimizer>
  void check_optimizer(Optimizer& opt) const {
    bool same = opt.size() == params_->size();
    for (std::size_t k = 0; same && k < params_->size(); ++k) same = &opt.parameter(k) == &(*params_)[k];
    if (!same)
      throw_error<ValueError>("DataParallel::step on rank ", rank(), ": the optimizer holds ", opt.size(),
                              " parameters that are not this DataParallel's ", params_->size(),
                              " in registry order (build both from the same registry)");
  }

  template <class F>
  void with_comm(std::size_t c, F&& f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((c == I ? (f(std::get<I>(comms_), std::integral_constant<std::size_t, I>{}), 0) : 0), ...);
    }(std::index_sequence_for<Comms...>{});
  }

  // FNV-1a over names and shapes: equal lists give equal hashes on every rank.
  template <class C>
  void check_same_parameter_lists(C& c) {
    std::uint64_t h = 1469598103934665603ull;
    auto mix = [&](const void* data, std::size_t n) {
      const unsigned char* b = static_cast<const unsigned char*>(data);
      for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
    };
    for (Param* p : *params_) {
      mix(p->name.data(), p->name.size());
      for (int d = 0; d < p->shape().rank; ++d) mix(&p->shape().dims[d], sizeof(index_t));
    }
    agree(c, static_cast<std::int64_t>(h >> 1), "parameter lists (names and shapes)");
  }

  template <class C>
  void check_equal_values(C& c) {
    std::uint64_t h = 1469598103934665603ull;
    std::vector<unsigned char> host;  // a device's values, copied once at construction
    device_memory<device_type>::synchronize(queue_);
    for (Param* p : *params_) {
      const unsigned char* b = reinterpret_cast<const unsigned char*>(p->value.data());
      if constexpr (!std::is_same_v<device_type, cpu>) {
        host.resize(p->value.bytes());
        device_memory<device_type>::copy_to_host(host.data(), p->value.data(), host.size());
        b = host.data();
      }
      for (std::size_t i = 0; i < p->value.bytes(); ++i) h = (h ^ b[i]) * 1099511628211ull;
    }
    agree(c, static_cast<std::int64_t>(h >> 1), "parameter values after the broadcast from rank 0");
  }

  // Every rank holds the same value, or every rank throws the same error
  // naming the odd ranks out: those whose value differs from the one most
  // ranks hold (rank 0 is as likely to be wrong as any other). Where no value
  // has a majority, the reference is the most common value held first in rank
  // order (rank 0's where it is among them), and the message says so.
  template <class C>
  void agree(C& c, std::int64_t mine, const char* what) {
    std::vector<std::int64_t> all(static_cast<std::size_t>(c.size()));
    if constexpr (std::is_same_v<device_type, cpu>) {
      c.allgather(std::span<const std::int64_t>(&mine, 1), std::span<std::int64_t>(all));
    } else {  // the communicator takes device buffers: stage through them
      Tensor<std::int64_t, device_type> in(Shape{1}), out(Shape{static_cast<index_t>(all.size())});
      device_memory<device_type>::copy_from_host(in.data(), &mine, sizeof mine);
      c.allgather(std::span<const std::int64_t>(in.data(), 1), std::span<std::int64_t>(out.data(), all.size()));
      device_memory<device_type>::synchronize(queue_);
      device_memory<device_type>::copy_to_host(all.data(), out.data(), all.size() * sizeof(std::int64_t));
    }
    std::map<std::int64_t, std::size_t> count;
    for (std::int64_t v : all) ++count[v];
    if (count.size() == 1) return;
    std::size_t ref = 0;
    for (std::size_t r = 1; r < all.size(); ++r)
      if (count[all[r]] > count[all[ref]]) ref = r;
    std::vector<std::size_t> odd, usual;
    for (std::size_t r = 0; r < all.size(); ++r) (all[r] == all[ref] ? usual : odd).push_back(r);
    auto ranks = [](const std::vector<std::size_t>& rs) {
      std::string s = rs.size() == 1 ? "rank " : "ranks ";
      for (std::size_t k = 0; k < rs.size(); ++k) s += (k ? ", " : "") + std::to_string(rs[k]);
      return s;
    };
    const bool majority = 2 * usual.size() > all.size();
    throw_error<ValueError>("DataParallel on rank ", c.rank(), ": ", ranks(odd), odd.size() == 1 ? " holds" : " hold",
                            " different ", what, " than ", ranks(usual),
                            majority ? "" : " (no value is held by most ranks: build the same model on every rank)");
  }

  // A GPU pass must run on the communicators' stream (see the file comment).
  void check_queue(queue_type q) const {
    if constexpr (!std::is_same_v<device_type, cpu>)
      if (q != queue_)
        throw_error<ValueError>("DataParallel::backward on rank ", rank(), ": the executor's stream is not the communicators' (",
                                "build the NcclTransport on the stream the pass runs on): the buckets would be reduced "
                                "before their gradients are computed");
  }
  // The rank-0 loss to the host, after the stream's work.
  T loss_to_host(TensorView<T, device_type> v, queue_type q) const {
    if constexpr (std::is_same_v<device_type, cpu>) {
      (void)q;
      return v.data[0];
    } else {
      T host{};
      device_memory<device_type>::synchronize(q);
      device_memory<device_type>::copy_to_host(&host, v.data, sizeof(T));
      return host;
    }
  }

  nn::Registry<T, device_type>* params_;
  std::tuple<Comms&...> comms_;
  DataParallelOptions opts_;
  std::vector<std::pair<std::string, std::size_t>> choices_;
  Buckets<T, device_type> buckets_;  // channel = index into comms_
  ShardedUpdate<T, device_type> sharded_;  // shard_update only
  std::vector<Request> requests_;  // per bucket, in flight
  bool built_ = false;             // buckets fixed (by the first backward or visit_state)
  bool averaged_ = false;          // a backward() has averaged gradients
  queue_type queue_{};             // the communicators' stream (a GPU's), what bucket copies are ordered on
};

template <class T, class D, class... Comms>
DataParallel(nn::Registry<T, D>&, Comms&...) -> DataParallel<T, Comms...>;

static_assert(Strategy<DataParallel<float, comm::Communicator<comm::Ring, comm::ThreadTransport>>>);

}  // namespace weft::parallel
