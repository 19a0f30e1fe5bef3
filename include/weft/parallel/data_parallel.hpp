// DataParallel: every rank holds the whole model and a shard of each batch;
// gradients are averaged across ranks during backward.
//
//   - At construction: the ranks check that they hold the same parameter list
//     (names and shapes), rank 0 broadcasts the values, and the ranks check
//     that the values now agree bit for bit.
//   - Gradients are packed into buckets (bucket_bytes, PyTorch DDP's 25 MiB by
//     default) in reverse registration order, the same on every rank. A
//     bucket's allreduce (average) starts, non-blocking, the moment its last
//     gradient is final during backward (weft::backward's parameter hook), so
//     communication overlaps the rest of backward.
//   - accumulate() runs backward without communication (DDP's no_sync()); the
//     next backward() averages the accumulated gradients.
//   - Per-layer communicators: DataParallel<T, Comms...> holds several
//     communicators; layer("l3").use(c) sends that layer's buckets through c.
//   - A parameter that a step does not use still has a (zero or accumulated)
//     gradient: its bucket starts after backward instead of hanging (the DDP
//     unused-parameter hang cannot happen).
//   - Sharded update (shard_update, ZeRO stage 1 without the memory saving:
//     DeepSpeed's ZeRO-1, PyTorch's ZeroRedundancyOptimizer): each bucket is
//     reduce-scattered instead of allreduced, dp.step(opt) has each rank run
//     the optimizer on its 1/p of every bucket, and an allgather brings the
//     updated values to every rank. Same bytes on the wire as an allreduce
//     (reduce-scatter + allgather), and the optimizer pass, memory-bound and
//     otherwise repeated on every rank, shrinks p-fold. The parameters after
//     a step equal the unsharded ones (bit for bit in deterministic mode); in
//     between, a rank's .grad is averaged only on its own shard.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <variant>
#include <vector>

#include "../autodiff/value_and_grad.hpp"
#include "../comm/communicator.hpp"
#include "../core/error.hpp"
#include "../nn/optim.hpp"
#include "../nn/registry.hpp"

namespace weft::parallel {

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

  struct Slot {  // a parameter's place in its bucket
    Parameter<T>* p;
    std::size_t bucket;
    std::size_t offset;
    std::size_t index;  // in the registry (and in the optimizer built from it)
  };
  struct Piece {  // shard_update: this rank's shard within one parameter
    nn::ParamRange part;
    std::size_t at;  // where element part.begin sits in the bucket's buffer
    std::size_t elems() const { return static_cast<std::size_t>(part.end - part.begin); }
  };
  struct Bucket {
    std::size_t comm;            // index into comms_
    std::vector<T> buffer;       // the packed gradients (empty when reduced in place)
    std::vector<std::size_t> slots;
    std::size_t elems = 0;       // gradient elements, unpadded
    std::size_t shard = 0;       // shard_update: elements per rank (elems rounded up to a multiple of p, / p)
    bool in_place = false;       // one parameter (whose size divides by p when sharded): no staging copies
    std::vector<Piece> mine;     // shard_update: this rank's shard, as parts of parameters
    std::size_t ready = 0;       // gradients packed so far this step
    bool started = false;
    Request request;
  };

 public:
  DataParallel(nn::Registry<T>& params, Comms&... comms, DataParallelOptions o = {})
      : params_(&params), comms_(comms...), opts_(o) {
    auto& c0 = std::get<0>(comms_);
    check_same_parameter_lists(c0);
    for (Parameter<T>* p : params) c0.broadcast(std::span<T>(p->value.data(), static_cast<std::size_t>(p->numel())), 0);
    check_equal_values(c0);
  }

  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  void set_overlap(bool on) { opts_.overlap = on; }
  void set_shard_update(bool on) {
    if (!buckets_.empty()) throw_error<ValueError>("DataParallel::set_shard_update: choose before the first backward");
    opts_.shard_update = on;
  }
  bool shard_update() const { return opts_.shard_update; }

  // Bucket size (bytes of gradient per allreduce); before the first backward.
  void set_bucket_bytes(std::size_t bytes) {
    if (!buckets_.empty()) throw_error<ValueError>("DataParallel::set_bucket_bytes: buckets are fixed after the first backward");
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
  T backward(const E& loss, Workspace<>& ws) {
    if (size() == 1) return weft::backward(loss, ws).item();  // nothing to average
    if (buckets_.empty()) build_buckets();
    for (Bucket& b : buckets_) {
      b.ready = 0;
      b.started = false;
    }
    auto hook = [this](Parameter<T>& p) { packed(p); };
    T value = weft::backward(loss, ws, hook).item();
    // Parameters the loss did not use never reported: pack them now.
    for (std::size_t bi = 0; bi < buckets_.size(); ++bi) {
      Bucket& b = buckets_[bi];
      if (b.started) continue;
      for (std::size_t s : b.slots) {
        const Slot& sl = slots_[s];
        if (!sl_packed_[s]) pack(sl);
      }
      start(bi);
    }
    for (std::size_t bi = 0; bi < buckets_.size(); ++bi) finish(bi);
    return value;
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
    if (buckets_.empty())
      throw_error<ValueError>("DataParallel::step on rank ", rank(), ": no backward() yet, so no gradient to step with");
    check_optimizer(opt);
    opt.step(mine_);
    for (std::size_t bi = 0; bi < buckets_.size(); ++bi) start_gather(bi);
    for (std::size_t bi = 0; bi < buckets_.size(); ++bi) finish_gather(bi);
  }

  // Backward without communication: gradients accumulate locally.
  template <Expression E>
  T accumulate(const E& loss, Workspace<>& ws) {
    return weft::backward(loss, ws).item();
  }

  std::size_t buckets() const { return buckets_.size(); }
  // Names of the parameters in bucket i, in packing order (same on every rank).
  std::vector<std::string> bucket_names(std::size_t i) const {
    std::vector<std::string> n;
    for (std::size_t s : buckets_.at(i).slots) n.push_back(slots_[s].p->name);
    return n;
  }

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
    if (!buckets_.empty())
      throw_error<ValueError>("DataParallel::layer(\"", prefix, "\").use(): choose communicators before the first backward");
    bool any = false;
    for (Parameter<T>* p : *params_) any = any || matches(p->name, prefix);
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

  // Reverse registration order (the order gradients become final), cut at
  // bucket_bytes and wherever the communicator changes.
  void build_buckets() {
    const std::size_t n = params_->size(), p = static_cast<std::size_t>(size()), r = static_cast<std::size_t>(rank());
    for (std::size_t k = n; k-- > 0;) {
      Parameter<T>& q = (*params_)[k];
      const std::size_t c = comm_for(q.name);
      const std::size_t numel = static_cast<std::size_t>(q.numel());
      if (buckets_.empty() || buckets_.back().comm != c ||
          ((buckets_.back().elems + numel) * sizeof(T) > opts_.bucket_bytes && !buckets_.back().slots.empty())) {
        buckets_.emplace_back();
        buckets_.back().comm = c;
      }
      Bucket& b = buckets_.back();
      slots_.push_back(Slot{&q, buckets_.size() - 1, b.elems, k});
      b.slots.push_back(slots_.size() - 1);
      b.elems += numel;
    }
    for (Bucket& b : buckets_) {
      if (!opts_.shard_update) {
        b.in_place = b.slots.size() == 1;
        if (!b.in_place) b.buffer.assign(b.elems, T(0));
        continue;
      }
      // Padded to p equal shards (the padding reduces zeros and is never read).
      b.shard = (b.elems + p - 1) / p;
      b.in_place = b.slots.size() == 1 && b.elems % p == 0;
      if (!b.in_place) b.buffer.assign(b.shard * p, T(0));
      const std::size_t lo = std::min(r * b.shard, b.elems), hi = std::min(lo + b.shard, b.elems);
      for (std::size_t s : b.slots) {
        const Slot& sl = slots_[s];
        const std::size_t a = std::max(lo, sl.offset), e = std::min(hi, sl.offset + static_cast<std::size_t>(sl.p->numel()));
        if (a < e) {
          b.mine.push_back(Piece{{sl.index, static_cast<index_t>(a - sl.offset), static_cast<index_t>(e - sl.offset)}, a});
          mine_.push_back(b.mine.back().part);
        }
      }
    }
    sl_packed_.assign(slots_.size(), false);
  }

  void packed(Parameter<T>& p) {
    for (std::size_t s = 0; s < slots_.size(); ++s)
      if (slots_[s].p == &p) {
        pack(slots_[s]);
        Bucket& b = buckets_[slots_[s].bucket];
        if (b.ready == b.slots.size()) start(slots_[s].bucket);
        return;
      }
  }

  void pack(const Slot& sl) {
    Bucket& b = buckets_[sl.bucket];
    if (!b.in_place)
      std::memcpy(b.buffer.data() + sl.offset, sl.p->grad.data(), static_cast<std::size_t>(sl.p->numel()) * sizeof(T));
    ++b.ready;
    sl_packed_[static_cast<std::size_t>(&sl - slots_.data())] = true;
  }

  // The bucket's gradients: the parameter's own in place, else the staging buffer.
  std::span<T> grads(Bucket& b) {
    if (!b.in_place) return std::span<T>(b.buffer);
    Parameter<T>* only = slots_[b.slots[0]].p;
    return std::span<T>(only->grad.data(), static_cast<std::size_t>(only->numel()));
  }

  // Average the bucket (allreduce; sharded: reduce-scatter, this rank's
  // shard at r * shard, NCCL's in-place layout), blocking or not.
  void reduce(Bucket& b, bool blocking) {
    std::span<T> data = grads(b);
    // Named after its first parameter: a compressed communicator keeps the bucket's codec state under it.
    const comm::CallOptions named{.name = slots_[b.slots[0]].p->name};
    with_comm(b.comm, [&]<std::size_t I>(auto& comm, std::integral_constant<std::size_t, I>) {
      if (!opts_.shard_update) {
        if (blocking)
          comm.allreduce(data, comm::ReduceOp::avg, named);
        else
          b.request.template emplace<I + 1>(comm.iallreduce(data, comm::ReduceOp::avg, named));
        return;
      }
      std::span<T> out = data.subspan(static_cast<std::size_t>(rank()) * b.shard, b.shard);
      if (blocking)
        comm.reduce_scatter(std::span<const T>(data), out, comm::ReduceOp::avg);
      else
        b.request.template emplace<I + 1>(comm.ireduce_scatter(std::span<const T>(data), out, comm::ReduceOp::avg));
    });
  }

  void wait(Bucket& b) {
    std::visit([](auto& r) {
      if constexpr (!std::is_same_v<std::decay_t<decltype(r)>, std::monostate>) r.wait();
    }, b.request);
    b.request = std::monostate{};
  }

  void start(std::size_t bi) {
    Bucket& b = buckets_[bi];
    b.started = true;
    if (opts_.overlap) reduce(b, false);  // else reduced in finish()
  }

  void finish(std::size_t bi) {
    Bucket& b = buckets_[bi];
    if (!opts_.overlap) reduce(b, true);
    wait(b);
    for (std::size_t s : b.slots) sl_packed_[s] = false;
    if (b.in_place) return;
    if (opts_.shard_update) {  // only this rank's shard is averaged: copy just that back
      for (const Piece& m : b.mine)
        std::memcpy((*params_)[m.part.param].grad.data() + m.part.begin, b.buffer.data() + m.at, m.elems() * sizeof(T));
      return;
    }
    for (std::size_t s : b.slots) {
      const Slot& sl = slots_[s];
      std::memcpy(sl.p->grad.data(), b.buffer.data() + sl.offset, static_cast<std::size_t>(sl.p->numel()) * sizeof(T));
    }
  }

  // Sharded step: every rank's updated shard of the bucket's values to every rank.
  void start_gather(std::size_t bi) {
    Bucket& b = buckets_[bi];
    std::span<T> data;
    if (b.in_place) {
      Parameter<T>* only = slots_[b.slots[0]].p;
      data = std::span<T>(only->value.data(), static_cast<std::size_t>(only->numel()));
    } else {
      for (const Piece& m : b.mine)
        std::memcpy(b.buffer.data() + m.at, (*params_)[m.part.param].value.data() + m.part.begin, m.elems() * sizeof(T));
      data = std::span<T>(b.buffer);
    }
    std::span<const T> in = data.subspan(static_cast<std::size_t>(rank()) * b.shard, b.shard);
    with_comm(b.comm, [&]<std::size_t I>(auto& comm, std::integral_constant<std::size_t, I>) {
      if (opts_.overlap)
        b.request.template emplace<I + 1>(comm.iallgather(in, data));
      else
        comm.allgather(in, data);
    });
  }

  void finish_gather(std::size_t bi) {
    Bucket& b = buckets_[bi];
    wait(b);
    if (b.in_place) return;
    for (std::size_t s : b.slots) {
      const Slot& sl = slots_[s];
      std::memcpy(sl.p->value.data(), b.buffer.data() + sl.offset, static_cast<std::size_t>(sl.p->numel()) * sizeof(T));
    }
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
    for (Parameter<T>* p : *params_) {
      mix(p->name.data(), p->name.size());
      for (int d = 0; d < p->shape().rank; ++d) mix(&p->shape().dims[d], sizeof(index_t));
    }
    agree(c, static_cast<std::int64_t>(h >> 1), "parameter lists (names and shapes)");
  }

  template <class C>
  void check_equal_values(C& c) {
    std::uint64_t h = 1469598103934665603ull;
    for (Parameter<T>* p : *params_) {
      const unsigned char* b = reinterpret_cast<const unsigned char*>(p->value.data());
      for (std::size_t i = 0; i < p->value.bytes(); ++i) h = (h ^ b[i]) * 1099511628211ull;
    }
    agree(c, static_cast<std::int64_t>(h >> 1), "parameter values after the broadcast from rank 0");
  }

  // Every rank holds the same value, or every rank throws naming the ranks that differ.
  template <class C>
  void agree(C& c, std::int64_t mine, const char* what) {
    std::vector<std::int64_t> all(static_cast<std::size_t>(c.size()));
    c.allgather(std::span<const std::int64_t>(&mine, 1), std::span<std::int64_t>(all));
    std::string differ;
    for (std::size_t r = 0; r < all.size(); ++r)
      if (all[r] != all[0]) differ += (differ.empty() ? "" : ",") + std::to_string(r);
    if (!differ.empty())
      throw_error<ValueError>("DataParallel on rank ", c.rank(), ": ranks ", differ, " hold different ", what,
                              " than rank 0");
  }

  nn::Registry<T>* params_;
  std::tuple<Comms&...> comms_;
  DataParallelOptions opts_;
  std::vector<std::pair<std::string, std::size_t>> choices_;
  std::vector<Bucket> buckets_;
  std::vector<Slot> slots_;
  std::vector<bool> sl_packed_;
  std::vector<nn::ParamRange> mine_;  // shard_update: every bucket's `mine`, for the optimizer
};

template <class T, class... Comms>
DataParallel(nn::Registry<T>&, Comms&...) -> DataParallel<T, Comms...>;

}  // namespace weft::parallel
