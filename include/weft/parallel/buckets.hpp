// Buckets: gradients packed into a few large buffers so that a strategy sends
// a few large messages instead of one per parameter, started while backward
// is still running (PyTorch DDP's Reducer). Communication-free: the strategy
// (parallel::DataParallel) says which channel (communicator) each parameter
// uses and starts the collective that a bucket hands back to it.
//
//   - Layout: reverse registration order (the order gradients become final),
//     cut at bucket_bytes and wherever the channel changes; the same on every
//     rank. A bucket's buffer is padded to a multiple of `pad` elements (the
//     rank count under the sharded update, else 1). A bucket with one
//     parameter and no padding needs no buffer: it is reduced in place.
//   - One pass per backward: ready(p) packs p's final gradient; a bucket
//     starts once it is full and every lower-indexed bucket has started, so
//     buckets start in index order on every rank (DDP's rule: a parameter
//     unused on some ranks only becomes final at the end of backward there,
//     and buckets started in readiness order would pair one rank's bucket
//     with another's in same-sized collectives). finish_pass() packs the
//     parameters the loss did not use and starts the rest, in order.
//   - A hook finds its parameter's slot in O(1) (an open-addressing table
//     keyed by the parameter's address, built once); the per-pass state
//     (packed flags, counts, the next bucket to start) lives here, not on
//     the Parameter.
//   - No allocation after build().
//   - Device: where the parameters live (nn::Registry<T, Device>). Buffers
//     are that device's memory and the packing copies are ordered on the
//     queue given to build() (a CUDA stream: the stream the gradients are
//     computed and reduced on), so a hook that fires when a gradient's kernel
//     is queued, not when it has run, still packs the final values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/device.hpp"
#include "../expr/parameter.hpp"
#include "../tensor/tensor.hpp"
#include "../nn/registry.hpp"

namespace weft::parallel {

namespace detail {

// Parameter address -> slot number, open addressing with linear probing at a
// load factor of at most 1/2: a lookup touches one or two entries.
class AddressIndex {
 public:
  static constexpr std::size_t none = static_cast<std::size_t>(-1);

  void build(const std::vector<const void*>& keys) {
    std::size_t cap = 2;
    while (cap < 2 * keys.size()) cap *= 2;
    mask_ = cap - 1;
    table_.assign(cap, Entry{nullptr, none});
    for (std::size_t i = 0; i < keys.size(); ++i) {
      std::size_t h = hash(keys[i]);
      while (table_[h].key) h = (h + 1) & mask_;
      table_[h] = Entry{keys[i], i};
    }
  }

  std::size_t find(const void* key) const {
    if (table_.empty()) return none;
    for (std::size_t h = hash(key);; h = (h + 1) & mask_) {
      if (table_[h].key == key) return table_[h].value;
      if (!table_[h].key) return none;
    }
  }

 private:
  struct Entry {
    const void* key;
    std::size_t value;
  };
  // Fibonacci hashing of the address (its low bits are alignment zeros).
  std::size_t hash(const void* key) const {
    const std::uint64_t a = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(key));
    return static_cast<std::size_t>((a * 0x9E3779B97F4A7C15ull) >> 32) & mask_;
  }

  std::vector<Entry> table_;
  std::size_t mask_ = 0;
};

}  // namespace detail

template <class T, class Device = cpu>
class Buckets {
 public:
  using Param = Parameter<T, Device>;
  using queue_type = typename device_memory<Device>::queue_type;
  struct Slot {  // a parameter's place in its bucket
    Param* p;
    std::size_t bucket;
    std::size_t offset;  // first element in the bucket's buffer
    std::size_t index;   // in the registry (and in an optimizer built from it)
    std::size_t elems() const { return static_cast<std::size_t>(p->numel()); }
  };
  struct Bucket {
    std::size_t channel = 0;       // which communicator (the strategy's numbering)
    std::vector<std::size_t> slots;
    std::size_t elems = 0;         // gradient elements, unpadded
    std::size_t padded = 0;        // elems rounded up to a multiple of pad
    bool in_place = false;         // one parameter, no padding: no staging buffer
    Tensor<T, Device> buffer;      // (padded,) the packed gradients (empty when in place)
    std::size_t ready = 0;         // gradients packed so far this pass
  };

  // channel_of(name) -> the channel of the parameter named `name`.
  template <class ChannelOf>
  void build(const nn::Registry<T, Device>& params, std::size_t bucket_bytes, std::size_t pad, ChannelOf&& channel_of,
             queue_type queue = {}) {
    if (pad == 0) throw_error<ValueError>("Buckets: padding to a multiple of 0 elements");
    queue_ = queue;
    buckets_.clear();
    slots_.clear();
    for (std::size_t k = params.size(); k-- > 0;) {
      Param& q = params[k];
      const std::size_t c = channel_of(q.name);
      const std::size_t numel = static_cast<std::size_t>(q.numel());
      if (buckets_.empty() || buckets_.back().channel != c ||
          ((buckets_.back().elems + numel) * sizeof(T) > bucket_bytes && !buckets_.back().slots.empty())) {
        buckets_.emplace_back();
        buckets_.back().channel = c;
      }
      Bucket& b = buckets_.back();
      slots_.push_back(Slot{&q, buckets_.size() - 1, b.elems, k});
      b.slots.push_back(slots_.size() - 1);
      b.elems += numel;
    }
    for (Bucket& b : buckets_) {
      b.padded = (b.elems + pad - 1) / pad * pad;
      b.in_place = b.slots.size() == 1 && b.padded == b.elems;
      if (!b.in_place) {  // zero padding: a padded tail is reduced too
        b.buffer = Tensor<T, Device>(Shape{static_cast<index_t>(b.padded)});
        const std::vector<T> zeros(b.padded, T(0));
        device_memory<Device>::copy_from_host(b.buffer.data(), zeros.data(), b.padded * sizeof(T));
      }
    }
    std::vector<const void*> keys;
    keys.reserve(slots_.size());
    for (const Slot& s : slots_) keys.push_back(s.p);
    index_.build(keys);
    packed_.assign(slots_.size(), 0);
    next_ = buckets_.size();
  }

  bool empty() const { return buckets_.empty(); }
  std::size_t size() const { return buckets_.size(); }
  const Bucket& operator[](std::size_t i) const { return buckets_[i]; }
  const Slot& slot(std::size_t s) const { return slots_[s]; }
  // Names of the parameters in bucket i, in packing order.
  std::vector<std::string> names(std::size_t i) const {
    std::vector<std::string> n;
    for (std::size_t s : buckets_.at(i).slots) n.push_back(slots_[s].p->name);
    return n;
  }

  // ---- one pass (one backward) ----------------------------------------------
  void begin_pass() {
    for (Bucket& b : buckets_) b.ready = 0;
    for (unsigned char& f : packed_) f = 0;
    next_ = 0;
  }

  // p's gradient is final: pack it, then start(i) each bucket i that may start
  // now, in index order. A parameter outside the registry is not ours: ignored.
  template <class Start>
  void ready(Param& p, Start&& start) {
    const std::size_t s = index_.find(&p);
    if (s == detail::AddressIndex::none || packed_[s]) return;
    pack(s);
    start_in_order(start);
  }

  // End of backward: pack what the loss did not use (its zero or accumulated
  // gradient) and start every bucket not started yet, in index order.
  template <class Start>
  void finish_pass(Start&& start) {
    for (std::size_t i = next_; i < buckets_.size(); ++i)
      for (std::size_t s : buckets_[i].slots)
        if (!packed_[s]) pack(s);
    start_in_order(start);
  }

  // ---- data --------------------------------------------------------------------
  // Bucket i's gradients: the parameter's own when in place, else the padded buffer.
  std::span<T> grads(std::size_t i) { return data(i, &Param::grad); }
  // Bucket i's values, for a gather of updated values: the parameter's own when
  // in place, else the buffer (the caller stages what it owns into it).
  std::span<T> values(std::size_t i) { return data(i, &Param::value); }
  // Buffer -> every parameter's gradient (after an allreduce).
  void unpack_grads(std::size_t i) { unpack(i, &Param::grad); }
  // Buffer -> every parameter's value (after an allgather of values).
  void unpack_values(std::size_t i) { unpack(i, &Param::value); }

 private:
  std::span<T> data(std::size_t i, Tensor<T, Device> Param::*which) {
    Bucket& b = buckets_[i];
    if (!b.in_place) return std::span<T>(b.buffer.data(), b.padded);
    const Slot& only = slots_[b.slots[0]];
    return std::span<T>((only.p->*which).data(), only.elems());
  }
  void unpack(std::size_t i, Tensor<T, Device> Param::*which) {
    Bucket& b = buckets_[i];
    if (b.in_place) return;
    for (std::size_t s : b.slots) {
      const Slot& sl = slots_[s];
      device_memory<Device>::copy((sl.p->*which).data(), b.buffer.data() + sl.offset, sl.elems() * sizeof(T), queue_);
    }
  }

  void pack(std::size_t s) {
    const Slot& sl = slots_[s];
    Bucket& b = buckets_[sl.bucket];
    if (!b.in_place)
      device_memory<Device>::copy(b.buffer.data() + sl.offset, sl.p->grad.data(), sl.elems() * sizeof(T), queue_);
    ++b.ready;
    packed_[s] = 1;
  }

  template <class Start>
  void start_in_order(Start& start) {
    while (next_ < buckets_.size() && buckets_[next_].ready == buckets_[next_].slots.size()) start(next_++);
  }

  std::vector<Bucket> buckets_;
  std::vector<Slot> slots_;
  detail::AddressIndex index_;
  std::vector<unsigned char> packed_;  // per slot, this pass
  std::size_t next_ = 0;               // the lowest-indexed bucket not started this pass
  queue_type queue_{};                 // what the packing copies are ordered on
};

}  // namespace weft::parallel
