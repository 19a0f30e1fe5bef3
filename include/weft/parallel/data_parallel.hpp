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
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include "../autodiff/value_and_grad.hpp"
#include "../comm/communicator.hpp"
#include "../core/error.hpp"
#include "../nn/registry.hpp"

namespace weft::parallel {

struct DataParallelOptions {
  std::size_t bucket_bytes = std::size_t(25) << 20;
  // Start each bucket's allreduce during backward (non-blocking, on the
  // communicator's progress thread). false: reduce every bucket after backward
  // with blocking calls on the caller's thread, which is faster when there are
  // no spare cores for progress threads (ranks as threads on a small machine).
  bool overlap = true;
};

template <class T, class... Comms>
class DataParallel {
  static_assert(sizeof...(Comms) >= 1, "DataParallel needs at least one communicator");
  using Request = std::variant<std::monostate, typename Comms::Request...>;

  struct Slot {  // a parameter's place in its bucket
    Parameter<T>* p;
    std::size_t bucket;
    std::size_t offset;
  };
  struct Bucket {
    std::size_t comm;            // index into comms_
    std::vector<T> buffer;       // the packed gradients
    std::vector<std::size_t> slots;
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
    const std::size_t n = params_->size();
    for (std::size_t k = n; k-- > 0;) {
      Parameter<T>& p = (*params_)[k];
      const std::size_t c = comm_for(p.name);
      const std::size_t bytes = static_cast<std::size_t>(p.numel()) * sizeof(T);
      if (buckets_.empty() || buckets_.back().comm != c ||
          (buckets_.back().buffer.size() * sizeof(T) + bytes > opts_.bucket_bytes && !buckets_.back().slots.empty())) {
        buckets_.emplace_back();
        buckets_.back().comm = c;
      }
      Bucket& b = buckets_.back();
      slots_.push_back(Slot{&p, buckets_.size() - 1, b.buffer.size()});
      b.slots.push_back(slots_.size() - 1);
      b.buffer.resize(b.buffer.size() + static_cast<std::size_t>(p.numel()));
    }
    // One-parameter buckets reduce the gradient in place: drop their staging memory.
    for (Bucket& b : buckets_)
      if (b.slots.size() == 1) {
        b.buffer.clear();
        b.buffer.shrink_to_fit();
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
    if (b.slots.size() > 1)  // a one-parameter bucket is reduced in place, without copies
      std::memcpy(b.buffer.data() + sl.offset, sl.p->grad.data(), static_cast<std::size_t>(sl.p->numel()) * sizeof(T));
    ++b.ready;
    sl_packed_[static_cast<std::size_t>(&sl - slots_.data())] = true;
  }

  void start(std::size_t bi) {
    Bucket& b = buckets_[bi];
    b.started = true;
    if (!opts_.overlap) return;  // reduced in finish()
    Parameter<T>* only = b.slots.size() == 1 ? slots_[b.slots[0]].p : nullptr;
    std::span<T> data = only ? std::span<T>(only->grad.data(), static_cast<std::size_t>(only->numel())) : std::span<T>(b.buffer);
    with_comm(b.comm, [&]<std::size_t I>(auto& comm, std::integral_constant<std::size_t, I>) {
      b.request.template emplace<I + 1>(comm.iallreduce(data, comm::ReduceOp::avg));
    });
  }

  void finish(std::size_t bi) {
    Bucket& b = buckets_[bi];
    if (!opts_.overlap) {
      Parameter<T>* only = b.slots.size() == 1 ? slots_[b.slots[0]].p : nullptr;
      std::span<T> data = only ? std::span<T>(only->grad.data(), static_cast<std::size_t>(only->numel())) : std::span<T>(b.buffer);
      with_comm(b.comm, [&]<std::size_t I>(auto& comm, std::integral_constant<std::size_t, I>) {
        comm.allreduce(data, comm::ReduceOp::avg);
      });
    }
    std::visit([](auto& r) {
      if constexpr (!std::is_same_v<std::decay_t<decltype(r)>, std::monostate>) r.wait();
    }, b.request);
    b.request = std::monostate{};
    for (std::size_t s : b.slots) {
      const Slot& sl = slots_[s];
      if (b.slots.size() > 1)
        std::memcpy(sl.p->grad.data(), b.buffer.data() + sl.offset, static_cast<std::size_t>(sl.p->numel()) * sizeof(T));
      sl_packed_[s] = false;
    }
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
};

template <class T, class... Comms>
DataParallel(nn::Registry<T>&, Comms&...) -> DataParallel<T, Comms...>;

}  // namespace weft::parallel
