// Zero<T, Stage, Comm>: ZeRO (Rajbhandari et al. 2020) as policies of the
// data-parallel axis: each of the N ranks of `Comm` keeps 1/N of what plain
// data parallelism replicates. Stage is a policy tag:
//
//   Zero1   optimizer state for this rank's shard only (Adam's exp_avg and
//           exp_avg_sq, SGD's momentum: 1/N of them exist on this rank);
//           full gradients, reduce-scattered per unit after backward.
//   Zero2   + gradients reduce-scattered unit by unit DURING backward, as
//           soon as a unit's gradients are final, into shard-sized buffers;
//           a unit's full gradient is released (its pages handed back to the
//           kernel) once its reduce-scatter is done.
//   Zero3   + parameters live sharded between steps (the model's value
//           tensors are freed). Two ways to run a step:
//           - per layer (FSDP; parallel::zero_layers, ZeroLayers below): the
//             model given as a sequence of layers, each run as its own split
//             forward / backward (autodiff/split.hpp, as pipeline stages
//             are). A layer's units are all-gathered just before its
//             forward and again before its backward, the next layer's gather
//             issued (non-blocking) before the current layer computes, its
//             values emptied after use; its gradients reduce-scattered as
//             soon as its backward is done, overlapping the next layer's.
//             About two layers' parameters are gathered at a time
//             (zero3_layered_formula).
//           - all at once: backward(make_loss, ws) for a model that is one
//             expression with no hook between layers: every unit is gathered
//             (started together, waited in forward order) before the forward
//             is built (4P gathered at the peak), and each unit's values are
//             freed during backward as soon as its backward is over.
//
// Mixed precision (ZeroOptions{.precision = ZeroPrecision::bf16}, stage 3
// per layer): the master weights, the gradient shards and the optimizer
// state stay f32 in the shard; the all-gather sends the shard rounded to
// bf16 and the layers compute with those bf16 values (held in f32 tensors:
// weft's kernels compute in f32, so the arithmetic and the activations are
// f32, as a bf16 GEMM accumulating in f32 reads bf16 inputs); each layer's
// gradient is rounded to bf16 and reduce-scattered in bf16 (the ring sums
// in f32 and rounds once per hop, comm/codec/cast.hpp), then widened into the
// f32 gradient shard. The rounding is weft::bfloat16's (core/dtype.hpp), the
// conversion comm::BF16 uses. Half the bytes on the wire of f32.
//
// Hybrid sharding (HSDP; ZeRO++'s hpZ, MiCS): Zero<T, Stage, Comm, Replica>
// built with a second communicator shards over `Comm` (a mesh's inner,
// "shard" axis) and keeps one replica of the shards per rank of `Replica`
// (the outer, "replicate" axis): after a unit's reduce-scatter its gradient
// shard is averaged over the replicas (allreduce), so every replica steps
// the same shard. Memory is that of `Comm`'s N; traffic over the replica
// axis is 1/N of DP's.
//
// A unit is a layer: the parameters sharing a name prefix ("l1.weight" and
// "l1.bias" form unit "l1"), flattened in registry order and padded to a
// multiple of N elements; rank r owns elements [r s, (r + 1) s) of each unit.
//
// What is NOT done (see docs/architecture.md): the per-layer path needs the
// model as a sequence of layers (an nn::Sequential or std::tie of
// callables), each unit's parameters read by one layer; a model that is one
// arbitrary expression runs the all-at-once path. Mixed precision is stage 3
// per layer only (stages 1 and 2 keep the model's own f32 value tensors), the
// compute is f32 on bf16-rounded parameters (not bf16 activations), and the
// hybrid replica-axis allreduce of a gradient shard stays f32. A layer
// without for_each_parameter counts as parameter-free: parameters it reads
// anyway are not gathered. No activation checkpointing: each layer's saved
// forward state lives until its backward (not in the ledger). The value and
// gradient tensors of the per-layer path are allocated and freed each step
// (no pool: freeing is the point, but the page faults are paid each step).
//
// Memory accounting (memory()): bytes this rank holds, by category, now and
// at the peak: parameters (the model's value tensors, or the value shards),
// gradients (gradient shards plus the pages of the unit gradient buffer that
// are resident, measured with mincore(2); per layer: the layer's gradient
// tensors and the reduce-scatter buffers), optimizer state, gathered buffers
// (per layer: the all-gather buffers in flight plus the bytes of the gathered
// value tensors in resident pages, mincore(2): between a layer's forward and
// its backward its values are emptied in place with MADV_DONTNEED, because
// the saved forward state points at them). The formulas they are checked
// against are zero_formula and zero3_layered_formula below.
//
// The optimizer runs inside the strategy (its state lives in the shards):
// build Zero with nn::SGDOptions, nn::AdamOptions or nn::AdamWOptions;
// step() applies nn/optim.hpp's own update loops (sgd_pass, adam_pass) with
// the same coefficients nn::SGD / nn::Adam / nn::AdamW use, so the result is
// bit for bit what DataParallel with that optimizer computes in deterministic
// mode. Hence Zero does not model parallel::Strategy's step(opt).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "../autodiff/split.hpp"
#include "../autodiff/value_and_grad.hpp"
#include "../comm/communicator.hpp"
#include "../core/denormals.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../nn/optim.hpp"
#include "../nn/registry.hpp"
#include "../nn/sequential.hpp"
#include "../nn/state.hpp"

namespace weft::parallel {

template <int S>
struct ZeroStage {
  static_assert(S >= 1 && S <= 3, "ZeRO has stages 1 (optimizer state), 2 (+ gradients) and 3 (+ parameters)");
  static constexpr int stage = S;
};
using Zero1 = ZeroStage<1>;
using Zero2 = ZeroStage<2>;
using Zero3 = ZeroStage<3>;

// Bytes held by one rank, by category.
struct MemoryBytes {
  std::size_t params = 0, grads = 0, optimizer = 0, gathered = 0;
  std::size_t total() const { return params + grads + optimizer + gathered; }
};

// Precision of stage 3's per-layer path (ZeroLayers): f32 everywhere, or
// bf16 parameters and gradients on the wire and in the layers' parameter
// values (f32 master weights, gradient shards and optimizer state).
enum class ZeroPrecision { f32, bf16 };

struct ZeroOptions {
  ZeroPrecision precision = ZeroPrecision::f32;
  bool trace = false;  // record ZeroEvents (trace()): what was issued and waited, in order
  // Stages 2 and 3 (all at once and per layer): true runs each unit's
  // reduce-scatter, and stage 3's gathers, non-blocking on the
  // communicator's progress thread, overlapping the compute that goes on
  // (per layer: the next layer's gather prefetched); false runs them on the
  // calling thread the moment they are needed (a unit's reduce-scatter still
  // as soon as its gradients are final, so the memory is no higher). Overlap pays when a core or a network is idle
  // during compute; when every core already runs a rank (thread ranks
  // filling the machine) the progress thread competes with them, and off is
  // faster (bench/compare_zero.sh prints both). As DataParallelOptions::overlap.
  bool overlap = true;
};

// One entry of Zero::trace(): `index` is a unit for the gather / release /
// reduce kinds and a layer for the forward / backward kinds.
struct ZeroEvent {
  enum Kind : std::uint8_t {
    gather_start,    // a unit's all-gather issued (non-blocking)
    gather_wait,     // ... waited for, its values unpacked
    forward_begin,   // a layer's forward starts (its units gathered, the next layer's gather issued)
    forward_end,     // ... done
    backward_begin,  // a layer's backward starts
    backward_end,    // ... done (input and weight gradients)
    release,         // a unit's gathered values freed
    reduce_start,    // a unit's gradient reduce-scatter issued
    reduce_wait      // ... waited for
  } kind;
  int index;
  bool operator==(const ZeroEvent&) const = default;
};

// The ZeRO formulas for P parameters on N ranks with k bytes of optimizer
// state per parameter (Adam f32: 8; SGD with momentum: 4), f32 everywhere
// (4 bytes per parameter and per gradient), derived from what each stage keeps:
//   DP      4P + 4P + kP
//   stage 1 4P + 4P + kP/N
//   stage 2 4P + (4P + kP)/N
//   stage 3 (4P + 4P + kP)/N
// between steps ("at rest"). During a step ("peak") add the transient
// buffers: stages 2 and 3 a unit's full gradient while it is being reduced
// (at most two units live: `unit_grad`), stage 1 and 2 the gather buffer of
// one unit, stage 3 every unit's values (4P, the all-at-once path; per layer
// see zero3_layered_formula).
// Mixed precision (bf16 parameters and gradients, f32 master weights + Adam
// state: 12 bytes) would be DP 2P + 2P + 12P, stage 1 2P + 2P + 12P/N,
// stage 2 2P + 14P/N (weft implements neither: its layers compute on f32
// tensors), and stage 3 4P/N (master) + 4P/N (f32 gradient shard, as FSDP
// keeps it for the optimizer) + 8P/N (Adam) = 16P/N at rest, the f32 stage-3
// figure: mixed precision changes stage 3's transients (the bf16 wire
// buffers), not its resting bytes; see zero3_layered_formula.
inline double zero_formula(int stage, double P, double N, double k = 8.0) {
  switch (stage) {
    case 0: return 4 * P + 4 * P + k * P;
    case 1: return 4 * P + 4 * P + k * P / N;
    case 2: return 4 * P + (4 * P + k * P) / N;
    default: return (8 * P + k * P) / N;
  }
}

// Stage 3 per layer (ZeroLayers), one unit per layer, u[i] the padded
// elements of layer i's unit in layer order (layers without parameters left
// out), N ranks. The transient bytes on top of the shards, derived from the
// schedule (at most two units' buffers at a time, each phase below):
//   gathered, f32: a unit's values are all-gathered straight into its value
//     tensors (the gather target is the values); layer i computes with its
//     values while layer i+1's (forward) or i-1's (backward) gather lands:
//       4 max_i (u[i] + u[i+1])                     <= 4 (U1 + U2)
//   gathered, bf16: the wire buffer (2 u + 2 u/N for the sent shard) is
//     decoded into f32 values (4 u); unpacking holds both for one unit, then
//     the current values and the next unit's wire buffer:
//       max_i max(6 u[i] + 2 u[i]/N, 4 u[i] + (2 + 2/N) max(u[i-1], u[i+1]))
//   gradients (beyond the 4P/N shards): layer i's full gradient (4 u[i]:
//     the layers compute in f32) while layer i+1's reduce-scatter is in
//     flight, then its own wire buffer once that one landed:
//       f32  4 u[i] + 4 max(u[i], u[i+1])           <= 8 U1
//       bf16 4 u[i] + (2 + 2/N) max(u[i], u[i+1])   <= (6 + 2/N) U1
// where U1 >= U2 are the two largest units. At rest both are 0, and the
// bytes are zero_formula(3, P, N) in either precision: the f32 master
// shard, the f32 gradient shard and Adam's two f32 moments, 16P/N. The peak
// total is at most zero_formula(3) + gathered + gradients (the two peaks
// fall in neighbouring phases, not always the same one). Activations (each
// layer's saved forward state) are not counted in either.
struct Zero3Transients {
  double gathered = 0, grads = 0;
};
inline Zero3Transients zero3_layered_formula(const std::vector<double>& u, double N, bool bf16) {
  Zero3Transients t;
  const std::size_t L = u.size();
  const double w = bf16 ? 2 + 2 / N : 4;  // wire bytes per element
  for (std::size_t i = 0; i < L; ++i) {
    const double next = i + 1 < L ? u[i + 1] : 0, prev = i > 0 ? u[i - 1] : 0;
    const double g = bf16 ? std::max(6 * u[i] + 2 * u[i] / N, 4 * u[i] + w * std::max(prev, next)) : 4 * (u[i] + next);
    t.gathered = std::max(t.gathered, g);
    t.grads = std::max(t.grads, 4 * u[i] + w * std::max(u[i], next));
  }
  return t;
}

namespace detail {

// Map the pages that [p, p + bytes) touches writable now, keeping their
// contents (PageBuffer::populate says why), so the partly covered first and
// last pages are safe to include.
inline void populate_pages(void* p, std::size_t bytes) {
#if defined(__linux__)
  if (!p || bytes == 0) return;
  const std::uintptr_t pg = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  const std::uintptr_t lo = reinterpret_cast<std::uintptr_t>(p) / pg * pg;
  const std::uintptr_t hi = (reinterpret_cast<std::uintptr_t>(p) + bytes + pg - 1) / pg * pg;
#if defined(MADV_POPULATE_WRITE)
  if (madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_POPULATE_WRITE) == 0) return;
#endif
  for (std::uintptr_t a = lo; a < hi; a += pg) __atomic_fetch_or(reinterpret_cast<unsigned char*>(a), 0, __ATOMIC_RELAXED);
#else
  (void)p;
  (void)bytes;
#endif
}

// An anonymous mapping whose pages can be handed back to the kernel
// (MADV_DONTNEED: the range reads as zeros afterwards, without a memset) at
// a fixed address: the gradient views a backward pass binds stay valid.
template <class T>
class PageBuffer {
 public:
  PageBuffer() = default;
  explicit PageBuffer(std::size_t elems) { allocate(elems); }
  PageBuffer(const PageBuffer&) = delete;
  PageBuffer& operator=(const PageBuffer&) = delete;
  ~PageBuffer() { free(); }

  static std::size_t page() {
#if defined(__unix__) || defined(__APPLE__)
    return static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
#else
    return 4096;
#endif
  }

  void allocate(std::size_t elems) {
    free();
    bytes_ = (elems * sizeof(T) + page() - 1) / page() * page();
    if (bytes_ == 0) return;
#if defined(__unix__) || defined(__APPLE__)
    void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw_error<Error>("Zero: could not map ", bytes_, " bytes for gradients");
    data_ = static_cast<T*>(p);
#else
    data_ = static_cast<T*>(::operator new(bytes_));
    std::memset(data_, 0, bytes_);
#endif
  }

  T* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }

  // Zero elements [at, at + n) and hand their whole pages back.
  void release(std::size_t at, std::size_t n) {
    if (n == 0) return;
    char* lo = reinterpret_cast<char*>(data_ + at);
    char* hi = reinterpret_cast<char*>(data_ + at + n);
#if defined(__linux__)
    const std::uintptr_t pg = page();
    char* a = reinterpret_cast<char*>((reinterpret_cast<std::uintptr_t>(lo) + pg - 1) / pg * pg);
    char* b = reinterpret_cast<char*>(reinterpret_cast<std::uintptr_t>(hi) / pg * pg);
    if (a < b) {
      std::memset(lo, 0, static_cast<std::size_t>(a - lo));
      if (madvise(a, static_cast<std::size_t>(b - a), MADV_DONTNEED) != 0) std::memset(a, 0, static_cast<std::size_t>(b - a));
      std::memset(b, 0, static_cast<std::size_t>(hi - b));
      return;
    }
#endif
    std::memset(lo, 0, static_cast<std::size_t>(hi - lo));
  }

  // Map the whole pages of elements [at, at + n) writable now, keeping their
  // contents, before a backward pass writes into them. A released page that
  // is first read (a GEMM accumulating into its output reads it) is mapped to
  // the kernel's shared zero page, and the write that follows copies it and
  // flushes that address from the TLB of every core running this process:
  // an inter-processor interrupt per page while the other ranks' threads
  // compute (measured: a quarter of ZeRO-2's step on 2 thread ranks).
  // MADV_POPULATE_WRITE (Linux 5.14) maps them in one call; elsewhere a
  // locked no-op write per page (a write access: a fresh page, no copy).
  void populate(std::size_t at, std::size_t n) {
    if (n == 0 || !data_) return;
    populate_pages(data_ + at, n * sizeof(T));
  }

  // Bytes of the mapping in memory now (mincore); the whole mapping where
  // that cannot be asked.
  std::size_t resident() const {
#if defined(__linux__)
    if (!data_) return 0;
    const std::size_t pages = bytes_ / page();
    resident_map_.resize(pages);
    if (mincore(data_, bytes_, resident_map_.data()) != 0) return bytes_;
    std::size_t n = 0;
    for (unsigned char c : resident_map_) n += c & 1u;
    return n * page();
#else
    return bytes_;
#endif
  }

 private:
  void free() {
    if (!data_) return;
#if defined(__unix__) || defined(__APPLE__)
    munmap(data_, bytes_);
#else
    ::operator delete(data_);
#endif
    data_ = nullptr;
    bytes_ = 0;
  }
  T* data_ = nullptr;
  std::size_t bytes_ = 0;
  mutable std::vector<unsigned char> resident_map_;
};

// Hand back the whole pages inside [p, p + bytes) (their contents are lost;
// the range stays mapped at the same address and reads as zeros until
// written). Used on a layer's gathered values between its forward and its
// backward: the saved forward state keeps pointers to them, so they are
// emptied in place rather than freed.
inline void release_pages(void* p, std::size_t bytes) {
#if defined(__linux__)
  if (!p || bytes == 0) return;
  const std::uintptr_t pg = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  const std::uintptr_t lo = (reinterpret_cast<std::uintptr_t>(p) + pg - 1) / pg * pg;
  const std::uintptr_t hi = (reinterpret_cast<std::uintptr_t>(p) + bytes) / pg * pg;
  if (lo < hi) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
#else
  (void)p;
  (void)bytes;
#endif
}

// Bytes of [p, p + bytes) that lie in resident pages (mincore); all of them
// where that cannot be asked.
inline std::size_t resident_bytes(const void* p, std::size_t bytes) {
#if defined(__linux__)
  if (!p || bytes == 0) return 0;
  const std::uintptr_t pg = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(p), b = a + bytes;
  const std::uintptr_t lo = a / pg * pg, hi = (b + pg - 1) / pg * pg;
  thread_local std::vector<unsigned char> map;
  map.resize((hi - lo) / pg);
  if (mincore(reinterpret_cast<void*>(lo), hi - lo, map.data()) != 0) return bytes;
  std::size_t n = 0;
  for (std::size_t k = 0; k < map.size(); ++k) {
    if (!(map[k] & 1u)) continue;
    const std::uintptr_t s = std::max(a, lo + k * pg), e = std::min(b, lo + (k + 1) * pg);
    n += e - s;
  }
  return n;
#else
  (void)p;
  return bytes;
#endif
}

}  // namespace detail

template <class ZeroT, class L, class Loss, class... Layers>
class ZeroLayers;

// No replica axis: Zero shards over one communicator.
struct NoReplica {};

template <class T, class Stage, class Comm, class Replica = NoReplica>
class Zero {
  static_assert(std::is_floating_point_v<T>, "Zero shards float or double parameters");
  static constexpr int S = Stage::stage;
  static constexpr bool hybrid = !std::is_same_v<Replica, NoReplica>;

 public:
  using value_type = T;
  using Optimizer = std::variant<nn::SGDOptions, nn::AdamOptions, nn::AdamWOptions>;

  Zero(nn::Registry<T>& params, Comm& dp, Optimizer opt, ZeroOptions zo = {})
    requires std::is_same_v<Replica, NoReplica>
      : Zero(params, dp, nullptr, opt, zo) {}
  // Hybrid: shards over `shard`, replicated (gradient shards averaged) over `replica`.
  Zero(nn::Registry<T>& params, Comm& shard, Replica& replica, Optimizer opt, ZeroOptions zo = {})
    requires(!std::is_same_v<Replica, NoReplica>)
      : Zero(params, shard, &replica, opt, zo) {}

 private:
  template <class, class, class, class...>
  friend class ZeroLayers;

  Zero(nn::Registry<T>& params, Comm& dp, Replica* replica, Optimizer opt, ZeroOptions zo)
      : params_(&params), comm_(&dp), replica_(replica), opt_(opt), zo_(zo) {
    if (params.size() == 0) throw_error<ValueError>("Zero on rank ", dp.rank(), ": the registry holds no parameters");
    if (zo.precision == ZeroPrecision::bf16) {
      if (S != 3)
        throw_error<ValueError>("Zero on rank ", dp.rank(), ": mixed precision (bf16) is implemented for stage 3's per-layer path ",
                                "(parallel::zero_layers), not for stage ", S);
      if (!std::is_same_v<T, float>)
        throw_error<ValueError>("Zero on rank ", dp.rank(), ": mixed precision (bf16) keeps f32 master weights: T must be float");
    }
    n_ = static_cast<std::size_t>(dp.size());
    r_ = static_cast<std::size_t>(dp.rank());
    check_options();
    for (Parameter<T>* p : params) {
      const std::span<T> v(p->value.data(), static_cast<std::size_t>(p->numel()));
      if constexpr (hybrid) replica_->broadcast(v, 0);  // replica 0's values, then shard rank 0's
      dp.broadcast(v, 0);
    }
    layout();
    keys_ = std::visit([](const auto& o) -> std::size_t {
      using O = std::decay_t<decltype(o)>;
      if constexpr (std::is_same_v<O, nn::SGDOptions>) return o.momentum != 0.0f ? 1 : 0;
      else return 2;
    }, opt_);
    for (std::size_t k = 0; k < keys_; ++k) state_[k].assign(shard_total_, T(0));
    account(ledger_now_.optimizer, keys_ * shard_total_ * sizeof(T));
    // Gradients: one mapping, each unit page-aligned, released unit by unit.
    gbuf_.allocate(gbuf_elems_);
    for (Parameter<T>* p : params) p->grad = Tensor<T>();  // the engine writes into gbuf_ instead
    if constexpr (S == 1) {
      account(ledger_now_.grads, gbuf_.bytes());
    } else {
      for (Unit& u : units_) u.gshard.assign(u.shard, T(0));
      account(ledger_now_.grads, shard_total_ * sizeof(T));
    }
    if constexpr (S == 3) {
      for (Unit& u : units_) {
        u.vshard.assign(u.shard, T(0));
        for (const Member& m : u.members) {
          const std::size_t lo = std::max(u.mine_lo(r_), m.offset), hi = std::min(u.mine_hi(r_), m.offset + m.elems);
          if (lo < hi) std::memcpy(u.vshard.data() + (lo - u.mine_lo(r_)), m.p->value.data() + (lo - m.offset), (hi - lo) * sizeof(T));
        }
        for (const Member& m : u.members) m.p->value = Tensor<T>();  // parameters live sharded
      }
      account(ledger_now_.params, shard_total_ * sizeof(T));
    } else {
      account(ledger_now_.params, static_cast<std::size_t>(params.numel()) * sizeof(T));
    }
    ledger_peak_ = ledger_now_;
    peak_total_ = ledger_now_.total();
  }

 public:
  Zero(const Zero&) = delete;
  Zero& operator=(const Zero&) = delete;

  int rank() const { return static_cast<int>(r_); }
  int size() const { return static_cast<int>(n_); }
  static constexpr int stage() { return S; }
  std::size_t units() const { return units_.size(); }
  const std::string& unit_name(std::size_t u) const { return units_.at(u).name; }
  // Elements of this rank's shards together (parameters rounded up per unit).
  std::size_t shard_elems() const { return shard_total_; }
  float lr() const { return lr_of(); }
  std::int64_t steps() const { return steps_; }

  // Bytes held now, at the peak since construction (or reset_peak()), and
  // the peak's total (the categories peak at different moments).
  const MemoryBytes& memory() const { return ledger_now_; }
  const MemoryBytes& memory_peak() const { return ledger_peak_; }
  std::size_t peak_total() const { return peak_total_; }
  void reset_peak() {
    ledger_peak_ = ledger_now_;
    peak_total_ = ledger_now_.total();
  }
  // Unit u's elements, padded to a multiple of the rank count.
  std::size_t unit_padded(std::size_t u) const { return units_.at(u).padded; }
  ZeroPrecision precision() const { return zo_.precision; }
  // What the per-layer path issued and waited, in order (ZeroOptions::trace;
  // cleared at the start of each step's backward).
  const std::vector<ZeroEvent>& trace() const { return trace_; }
  // Largest unit's padded elements (the transient terms of the formulas).
  std::size_t largest_unit() const {
    std::size_t m = 0;
    for (const Unit& u : units_) m = std::max(m, u.padded);
    return m;
  }

  // Forward (built by make_loss() after Zero3's gather, since the
  // expression reads the parameters' shapes), backward with the gradients
  // reduce-scattered into the shards; returns this rank's loss.
  template <class MakeLoss>
  T backward(MakeLoss&& make_loss, Workspace<>& ws) {
    if (zo_.precision == ZeroPrecision::bf16)
      throw_error<ValueError>("Zero on rank ", r_, ": mixed precision runs the model layer by layer: ",
                              "use parallel::zero_layers(zero, layers, loss).backward(x, labels), not backward(make_loss)");
    if constexpr (S == 3) gather_all();
    begin_backward();
    auto hook = [this](Parameter<T>& p) { on_grad_ready(p); };
    auto sink = [this](Parameter<T>& p) -> TensorView<T> { return grad_view(p); };
    T value{};
    {
      const auto& loss = make_loss();
      value = weft::backward(loss, ws, hook, sink).item();
    }
    finish_backward();
    return value;
  }

  // ---- the backward seam (as parallel::Strategy's) ----------------------------
  void begin_backward() {
    for (Unit& u : units_) {
      u.ready = 0;
      u.started = u.finished = false;
    }
    for (Member* m : by_param_) m->ready = false;
    next_ = units_.size();
    started_ = 0;
    if constexpr (S >= 2) prefault(units_.size() - 1);  // backward writes the last unit first
    sample();
  }

  void on_grad_ready(Parameter<T>& p) {
    Member* m = member_of(p);
    if (!m || m->ready) return;
    m->ready = true;
    Unit& u = units_[m->unit];
    ++u.ready;
    sample();
    if constexpr (S == 3) free_finished_values(m->unit);
    if constexpr (S >= 2) {
      poll();
      start_in_order();
    }
  }

  void finish_backward() {
    for (Member* m : by_param_) m->ready = true;  // unused parameters: their gradient is zero
    for (Unit& u : units_) u.ready = u.members.size();
    sample();
    start_in_order();
    for (std::size_t u = units_.size(); u-- > 0;) finish_unit(u);
    if constexpr (S == 3) free_finished_values(units_.size());
    sample();
    reduced_ = true;
  }

  // The optimizer on this rank's shards, then (stages 1, 2) the updated
  // values all-gathered into every rank's parameters.
  void step() {
    if (!reduced_) throw_error<ValueError>("Zero::step on rank ", r_, ": no backward() yet, so no gradient to step with");
    reduced_ = false;
    ++steps_;
    std::visit([&](const auto& o) { update(o); }, opt_);
    if constexpr (S == 1) {
      std::memset(gbuf_.data(), 0, gbuf_.bytes());  // zero_grad; stage 1 keeps its full gradients
    }
    if constexpr (S < 3) gather_values();
  }

  // Where parameter p's gradient goes during backward: its place in the
  // unit buffer (zeroed between steps), accumulated into until
  // finish_backward reduce-scatters it. A pipeline routes its stages'
  // gradients here (parallel::GradSink; pipeline.hpp's step(x, labels, zero)).
  TensorView<T> grad_sink(Parameter<T>& p) { return grad_view(p); }

  void set_lr(float lr) {
    if (!(lr >= 0.0f) || !std::isfinite(lr)) throw_error<ValueError>("Zero: invalid learning rate ", lr);
    std::visit([&](auto& o) { o.lr = lr; }, opt_);
  }

  // This rank's shard of every parameter's value (stage 3: the only copy).
  // Elements of unit u it holds: [lo, hi) of the unit's flat layout.
  std::vector<T> shard_values() const {
    std::vector<T> out;
    for (const Unit& u : units_) {
      if constexpr (S == 3) {
        out.insert(out.end(), u.vshard.begin(), u.vshard.end());
      } else {
        std::vector<T> s(u.shard, T(0));
        for (const Member& m : u.members) copy_mine(u, m, s.data(), true);
        out.insert(out.end(), s.begin(), s.end());
      }
    }
    return out;
  }

  // Every parameter's full value, gathered (a collective; a test and
  // checkpoint helper, not for the training loop). In registry order.
  std::vector<T> full_values() {
    if constexpr (S < 3) {
      std::vector<T> v;
      for (Parameter<T>* p : *params_) v.insert(v.end(), p->value.data(), p->value.data() + p->numel());
      return v;
    } else {
      std::vector<std::vector<T>> per(params_->size());
      for (Unit& u : units_) {
        std::vector<T> buf(u.padded);
        comm_->allgather(std::span<const T>(u.vshard), std::span<T>(buf));
        for (const Member& m : u.members) per[m.index].assign(buf.begin() + m.offset, buf.begin() + m.offset + m.elems);
      }
      std::vector<T> v;
      for (auto& x : per) v.insert(v.end(), x.begin(), x.end());
      return v;
    }
  }

  // Checkpoints: layout items that must match, then step, lr and this rank's
  // shard of the optimizer state and (stage 3) of the values.
  template <class V>
  void visit_state(V& v) {
    constexpr std::string_view who = "Zero";
    nn::visit_fixed(v, "ranks", static_cast<std::int64_t>(n_), who);
    nn::visit_fixed(v, "rank", static_cast<std::int64_t>(r_), who);
    nn::visit_fixed(v, "stage", static_cast<std::int64_t>(S), who);
    v(std::string_view("step"), steps_);
    if (steps_ < 0) throw_error<ValueError>("Zero: restored a negative step count ", steps_);
    std::string name;
    for (std::size_t k = 0; k < keys_; ++k) {
      name.assign("optimizer.state").append(std::to_string(k));
      v(std::string_view(name), TensorView<T>(state_[k].data(), Shape{static_cast<index_t>(shard_total_)}));
    }
    if constexpr (S == 3)
      for (Unit& u : units_) {
        name.assign(u.name).append(".shard");
        v(std::string_view(name), TensorView<T>(u.vshard.data(), Shape{static_cast<index_t>(u.shard)}));
      }
  }

 private:
  struct Member {
    Parameter<T>* p;
    std::size_t index;   // in the registry
    std::size_t unit;
    std::size_t offset;  // in the unit's flat layout
    std::size_t elems;
    Shape shape;
    bool ready = false;
  };
  struct Unit {
    std::string name;
    std::vector<Member> members;
    std::size_t elems = 0, padded = 0, shard = 0;
    std::size_t goff = 0;          // first element in gbuf_
    std::size_t gspan = 0;         // elements of gbuf_ it owns (whole pages)
    std::size_t soff = 0;          // first element of this unit in the shard-wide arrays
    std::vector<T> gshard;         // stages 2, 3: this rank's averaged gradient shard
    std::vector<T> vshard;         // stage 3: this rank's value shard
    std::size_t ready = 0;         // members whose gradient is final this pass
    bool started = false, finished = false, gathered = false;
    typename Comm::Request req{};
    // stage 3 per layer (ZeroLayers)
    bool gathering = false, present = false;          // gather in flight / values unpacked
    std::vector<bfloat16> gwire, gsend;              // bf16: all-gather destination and the sent shard
    std::vector<T> rwire;                            // f32: the full gradient, reduce-scattered
    std::vector<bfloat16> rwire16, rshard16;         // bf16: the full gradient and its reduced shard
    typename Comm::Request greq{}, rreq{};
    std::size_t wire_bytes = 0, vbytes = 0;          // gathered: buffers in flight, values resident
    std::size_t rbytes = 0, pgrad_bytes = 0;         // gradients: reduce wire, layer gradients
    std::size_t mine_lo(std::size_t r) const { return r * shard; }
    std::size_t mine_hi(std::size_t r) const { return (r + 1) * shard; }
  };

  static std::string unit_of(const std::string& name) {
    const std::size_t dot = name.rfind('.');
    return dot == std::string::npos ? name : name.substr(0, dot);
  }

  void check_options() const {
    std::visit([&](const auto& o) {
      if (!(o.lr >= 0.0f) || !std::isfinite(o.lr)) throw_error<ValueError>("Zero: invalid learning rate ", o.lr);
      using O = std::decay_t<decltype(o)>;
      if constexpr (std::is_same_v<O, nn::SGDOptions>) {
        if (o.nesterov && (o.momentum <= 0.0f || o.dampening != 0.0f))
          throw_error<ValueError>("Zero: SGD's Nesterov momentum requires momentum > 0 and dampening = 0");
      } else {
        nn::detail::check_unit_interval("Zero (Adam)", "beta1", o.beta1);
        nn::detail::check_unit_interval("Zero (Adam)", "beta2", o.beta2);
      }
    }, opt_);
  }

  void layout() {
    for (std::size_t k = 0; k < params_->size(); ++k) {
      Parameter<T>& p = (*params_)[k];
      const std::string un = unit_of(p.name);
      std::size_t u = 0;
      while (u < units_.size() && units_[u].name != un) ++u;
      if (u == units_.size()) {
        units_.emplace_back();
        units_.back().name = un;
      }
      Unit& U = units_[u];
      U.members.push_back(Member{&p, k, u, U.elems, static_cast<std::size_t>(p.numel()), p.shape()});
      U.elems += static_cast<std::size_t>(p.numel());
    }
    const std::size_t per_page = detail::PageBuffer<T>::page() / sizeof(T);
    for (Unit& U : units_) {
      U.padded = (U.elems + n_ - 1) / n_ * n_;
      if (U.padded == 0) U.padded = n_;
      U.shard = U.padded / n_;
      U.goff = gbuf_elems_;
      U.gspan = (U.padded + per_page - 1) / per_page * per_page;
      gbuf_elems_ += U.gspan;
      U.soff = shard_total_;
      shard_total_ += U.shard;
    }
    for (Unit& U : units_)
      for (Member& m : U.members) by_param_.push_back(&m);
    std::sort(by_param_.begin(), by_param_.end(), [](Member* a, Member* b) { return a->p < b->p; });
  }

  Member* member_of(Parameter<T>& p) {
    auto it = std::lower_bound(by_param_.begin(), by_param_.end(), &p, [](Member* m, Parameter<T>* q) { return m->p < q; });
    return it != by_param_.end() && (*it)->p == &p ? *it : nullptr;
  }

  TensorView<T> grad_view(Parameter<T>& p) {
    Member* m = member_of(p);
    if (!m)
      throw_error<ValueError>("Zero on rank ", r_, ": the loss uses parameter '", p.name,
                              "', which is not in the registry this Zero shards");
    return TensorView<T>(gbuf_.data() + units_[m->unit].goff + m->offset, m->shape);
  }

  std::span<T> unit_grads(Unit& u) { return std::span<T>(gbuf_.data() + u.goff, u.padded); }

  // Units start in reverse index order (the order backward finishes them),
  // each once it is complete and every higher-indexed one has started: the
  // same order on every rank.
  void start_in_order() {
    while (next_ > 0 && units_[next_ - 1].ready == units_[next_ - 1].members.size()) start(--next_);
  }

  void start(std::size_t ui) {
    Unit& u = units_[ui];
    u.started = true;
    u.finished = false;
    const comm::CallOptions named{.name = u.name};
    std::span<T> in = unit_grads(u);
    std::span<T> out = S == 1 ? in.subspan(u.mine_lo(r_), u.shard) : std::span<T>(u.gshard);
    if constexpr (S == 1) {
      (void)named;  // stage 1 reduces after backward, in finish_unit
    } else {
      // At most one unit in flight besides this one: wait for the earlier
      // ones and release their buffers, so at most two units' full gradients
      // exist while the next unit is computed (FSDP bounds its in-flight
      // collectives the same way, limit_all_gathers).
      for (std::size_t k = units_.size(); k-- > ui + 1;)
        if (units_[k].started && !units_[k].finished) finish_unit(k);
      u.req = reduce_scatter_avg(std::span<const T>(in), out, named);
      if (!zo_.overlap) finish_unit(ui);  // already reduced: release its pages now
      if (ui > 0) prefault(ui - 1);  // the unit backward computes next
    }
  }

  // The collectives of stages 2 and 3: non-blocking on the communicator's
  // progress thread with overlap on; with it off they run here and the
  // request returned is already complete (its wait() returns at once).
  template <class In, class Out>
  typename Comm::Request gather(const In& in, Out&& out, comm::CallOptions o = {}) {
    if (zo_.overlap) return comm_->iallgather(in, std::forward<Out>(out), o);
    comm_->allgather(in, std::forward<Out>(out), o);
    return {};
  }
  template <class In, class Out>
  typename Comm::Request reduce_scatter_avg(const In& in, Out&& out, comm::CallOptions o) {
    if (zo_.overlap) return comm_->ireduce_scatter(in, std::forward<Out>(out), comm::ReduceOp::avg, o);
    comm_->reduce_scatter(in, std::forward<Out>(out), comm::ReduceOp::avg, o);
    return {};
  }

  // Unit ui's gradient pages, mapped writable before backward writes them
  // (PageBuffer::populate): one of the two units the bound above allows.
  void prefault(std::size_t ui) {
    Unit& u = units_[ui];
    if (!u.started) gbuf_.populate(u.goff, u.gspan);
  }

  void finish_unit(std::size_t ui) {
    Unit& u = units_[ui];
    if (u.finished) return;
    std::span<T> in = unit_grads(u);
    if constexpr (S == 1) {
      const comm::CallOptions named{.name = u.name};
      comm_->reduce_scatter(std::span<const T>(in), in.subspan(u.mine_lo(r_), u.shard), comm::ReduceOp::avg, named);
    } else {
      u.req.wait();
      gbuf_.release(u.goff, u.gspan);  // the full gradient does not outlive its reduce-scatter
    }
    landed(u);
  }

  // Unit u's gradient shard is averaged over this shard group: average it
  // over the replicas too (in unit order on every rank: units land in order).
  void landed(Unit& u) {
    if constexpr (hybrid) {
      const comm::CallOptions named{.name = u.name};
      std::span<T> mine = S == 1 ? unit_grads(u).subspan(u.mine_lo(r_), u.shard) : std::span<T>(u.gshard);
      replica_->allreduce(mine, comm::ReduceOp::avg, named);
    }
    u.finished = true;
  }

  // Release the units whose reduce-scatter has completed, in the order they
  // started (so the replica allreduces run in the same order on every rank).
  void poll() {
    for (std::size_t ui = units_.size(); ui-- > next_;) {
      Unit& u = units_[ui];
      if (u.finished) continue;
      if (!u.started || !u.req.test()) return;
      gbuf_.release(u.goff, u.gspan);
      landed(u);
    }
  }

  // ---- stage 3: values ------------------------------------------------------------
  void gather_all() {
    // Start every unit's allgather straight into its first member's value
    // tensor (which holds the padded unit, as on the per-layer path), then
    // unpack in forward order as each lands: the other members copy their
    // ranges out and the rest of that storage is handed back.
    // Local: if a wait throws, the other requests wait for their calls while
    // the value tensors they write are still alive.
    std::vector<typename Comm::Request> reqs(units_.size());
    for (std::size_t ui = 0; ui < units_.size(); ++ui) {
      Unit& u = units_[ui];
      allocate_values(u);
      account(ledger_now_.gathered, u.padded * sizeof(T));
      reqs[ui] = gather(std::span<const T>(u.vshard), std::span<T>(u.members[0].p->value.data(), u.padded));
    }
    note_peak();
    for (std::size_t ui = 0; ui < units_.size(); ++ui) {
      Unit& u = units_[ui];
      reqs[ui].wait();
      T* all = u.members[0].p->value.data();
      const std::size_t first = u.members[0].elems;
      for (std::size_t k = 1; k < u.members.size(); ++k) {
        const Member& m = u.members[k];
        std::memcpy(m.p->value.data(), all + m.offset, m.elems * sizeof(T));
      }
      account(ledger_now_.gathered, (u.elems - first) * sizeof(T));
      note_peak();
      detail::release_pages(all + first, (u.padded - first) * sizeof(T));
      unaccount(ledger_now_.gathered, (u.padded - first) * sizeof(T));
      u.gathered = true;
    }
  }

  // Free the values of every gathered unit other than `current` whose
  // gradients are all final: its backward is over.
  void free_finished_values(std::size_t current) {
    for (std::size_t ui = 0; ui < units_.size(); ++ui) {
      Unit& u = units_[ui];
      if (ui == current || !u.gathered || u.ready != u.members.size()) continue;
      for (const Member& m : u.members) m.p->value = Tensor<T>();
      unaccount(ledger_now_.gathered, u.elems * sizeof(T));
      u.gathered = false;
    }
  }

  // ---- stage 3 per layer (driven by ZeroLayers) ------------------------------------
  bool bf16() const { return zo_.precision == ZeroPrecision::bf16; }
  void event(ZeroEvent::Kind k, std::size_t i) {
    if (zo_.trace) trace_.push_back(ZeroEvent{k, static_cast<int>(i)});
  }
  // Gathered = wire buffers + resident value bytes; gradients = shards +
  // layer gradients + reduce wire buffers.
  void lay_sample() {
    std::size_t g = 0, d = 0;
    for (const Unit& u : units_) {
      g += u.wire_bytes + u.vbytes;
      d += u.rbytes + u.pgrad_bytes;
    }
    ledger_now_.gathered = g;
    ledger_now_.grads = shard_total_ * sizeof(T) + d;
    note_peak();
  }
  // The first member's tensor holds the whole padded unit (the all-gather
  // lands in it); the others are copies of their ranges.
  std::size_t measure_values(const Unit& u) const {
    std::size_t n = 0;
    for (std::size_t k = 0; k < u.members.size(); ++k) {
      const Member& m = u.members[k];
      n += detail::resident_bytes(m.p->value.data(), (k == 0 ? u.padded : m.elems) * sizeof(T));
    }
    return n;
  }
  void allocate_values(Unit& u) {
    Member& m0 = u.members[0];
    m0.p->value = Tensor<T>(Shape{static_cast<index_t>(u.padded)});
    m0.p->value.resize(m0.shape);  // keeps the padded storage
    for (std::size_t k = 1; k < u.members.size(); ++k) u.members[k].p->value = Tensor<T>(u.members[k].shape);
  }

  void lay_begin() {
    if (zo_.trace) trace_.clear();
    for (Unit& u : units_)
      if (u.present || u.gathering)
        throw_error<Error>("Zero on rank ", r_, ": a per-layer backward started while unit '", u.name, "' is still in use");
  }

  // Issue unit ui's all-gather (the value tensors' storage is kept from this
  // step's forward when the backward gathers it again: the saved forward
  // state points into it).
  // With overlap off there is no prefetch: the gather runs on the calling
  // thread when the layer needs it (now = true, from lay_gather_finish).
  void lay_gather_start(std::size_t ui, bool now = false) {
    Unit& u = units_[ui];
    if (u.present || u.gathering) return;
    if (!zo_.overlap && !now) return;
    event(ZeroEvent::gather_start, ui);
    const comm::CallOptions named{.name = u.name};
    if (!bf16()) {
      if (u.members[0].p->value.empty()) allocate_values(u);
      // Storage kept from this step's forward had its pages handed back: map
      // them in one call rather than a fault per page during the gather.
      for (std::size_t k = 0; k < u.members.size(); ++k)
        detail::populate_pages(u.members[k].p->value.data(), (k == 0 ? u.padded : u.members[k].elems) * sizeof(T));
      u.vbytes = 0;
      u.wire_bytes = u.padded * sizeof(T);  // the destination, being written
      u.greq = gather(std::span<const T>(u.vshard), std::span<T>(u.members[0].p->value.data(), u.padded), named);
    } else {
      u.gsend.resize(u.shard);
      for (std::size_t i = 0; i < u.shard; ++i) u.gsend[i] = bfloat16(static_cast<float>(u.vshard[i]));
      u.gwire.resize(u.padded);
      u.wire_bytes = (u.shard + u.padded) * sizeof(bfloat16);
      u.greq = gather(std::span<const bfloat16>(u.gsend), std::span<bfloat16>(u.gwire), named);
    }
    u.gathering = true;
    lay_sample();
  }

  void lay_gather_finish(std::size_t ui) {
    Unit& u = units_[ui];
    if (u.present) return;
    if (!u.gathering) lay_gather_start(ui, true);
    u.greq.wait();
    u.gathering = false;
    event(ZeroEvent::gather_wait, ui);
    if (!bf16()) {
      u.wire_bytes = 0;  // the gather target is the values themselves, measured below
      const T* all = u.members[0].p->value.data();
      for (std::size_t k = 1; k < u.members.size(); ++k) {
        const Member& m = u.members[k];
        std::memcpy(m.p->value.data(), all + m.offset, m.elems * sizeof(T));
      }
    } else {
      if (u.members[0].p->value.empty()) allocate_values(u);
      for (const Member& m : u.members) {
        T* v = m.p->value.data();
        const bfloat16* w = u.gwire.data() + m.offset;
        for (std::size_t i = 0; i < m.elems; ++i) v[i] = static_cast<T>(static_cast<float>(w[i]));
      }
    }
    u.vbytes = measure_values(u);
    lay_sample();  // wire and values together: the unpacking peak
    std::vector<bfloat16>().swap(u.gwire);
    std::vector<bfloat16>().swap(u.gsend);
    u.wire_bytes = 0;
    u.present = true;
    lay_sample();
  }

  // keep_storage: between forward and backward (pages handed back, the
  // address kept); otherwise the tensors are freed.
  void lay_release(std::size_t ui, bool keep_storage) {
    Unit& u = units_[ui];
    if (!u.present) return;
    event(ZeroEvent::release, ui);
    for (std::size_t k = 0; k < u.members.size(); ++k) {
      Member& m = u.members[k];
      if (keep_storage)
        detail::release_pages(m.p->value.data(), (k == 0 ? u.padded : m.elems) * sizeof(T));
      else
        m.p->value = Tensor<T>();
    }
    u.present = false;
    u.vbytes = keep_storage ? measure_values(u) : 0;
    lay_sample();
  }

  void lay_grads_begin(std::size_t ui) {
    Unit& u = units_[ui];
    for (const Member& m : u.members) m.p->grad = Tensor<T>(m.shape, T(0));
    u.pgrad_bytes = u.elems * sizeof(T);
    lay_sample();
  }

  // Unit ui's layer gradients are final: wait for the reduce-scatters in
  // flight (the previous layer's, overlapped with this layer's backward),
  // pack this one (bf16: encode), free the layer gradients, issue.
  void lay_grads_done(std::size_t ui) {
    lay_finish_reduces();
    Unit& u = units_[ui];
    const comm::CallOptions named{.name = u.name};
    if (!bf16()) {
      u.rwire.assign(u.padded, T(0));
      for (const Member& m : u.members) std::memcpy(u.rwire.data() + m.offset, m.p->grad.data(), m.elems * sizeof(T));
      u.rbytes = u.padded * sizeof(T);
    } else {
      u.rwire16.assign(u.padded, bfloat16(0.0f));
      for (const Member& m : u.members) {
        const T* g = m.p->grad.data();
        for (std::size_t i = 0; i < m.elems; ++i) u.rwire16[m.offset + i] = bfloat16(static_cast<float>(g[i]));
      }
      u.rshard16.resize(u.shard);
      u.rbytes = (u.padded + u.shard) * sizeof(bfloat16);
    }
    lay_sample();
    for (const Member& m : u.members) m.p->grad = Tensor<T>();
    u.pgrad_bytes = 0;
    event(ZeroEvent::reduce_start, ui);
    if (!bf16())
      u.rreq = reduce_scatter_avg(std::span<const T>(u.rwire), std::span<T>(u.gshard), named);
    else
      u.rreq = reduce_scatter_avg(std::span<const bfloat16>(u.rwire16), std::span<bfloat16>(u.rshard16), named);
    u.started = true;
    inflight_.push_back(ui);
    lay_sample();
  }

  void lay_finish_reduces() {
    for (std::size_t ui : inflight_) {
      Unit& u = units_[ui];
      u.rreq.wait();
      event(ZeroEvent::reduce_wait, ui);
      if (bf16())
        for (std::size_t i = 0; i < u.shard; ++i) u.gshard[i] = static_cast<T>(static_cast<float>(u.rshard16[i]));
      std::vector<T>().swap(u.rwire);
      std::vector<bfloat16>().swap(u.rwire16);
      std::vector<bfloat16>().swap(u.rshard16);
      u.rbytes = 0;
      u.started = false;
      landed(u);  // hybrid: the f32 shard averaged over the replicas
    }
    inflight_.clear();
    lay_sample();
  }

  // After the last layer's backward: every reduce-scatter waited; units no
  // layer reads get a zero gradient (their average over the ranks).
  void lay_end(const std::vector<char>& covered) {
    lay_finish_reduces();
    for (std::size_t ui = 0; ui < units_.size(); ++ui)
      if (!covered[ui]) std::fill(units_[ui].gshard.begin(), units_[ui].gshard.end(), T(0));
    reduced_ = true;
    lay_sample();
  }

  // A layer threw: wait for what this rank issued, then free it all.
  void lay_abort() noexcept {
    for (std::size_t ui = 0; ui < units_.size(); ++ui) {
      Unit& u = units_[ui];
      try {
        if (u.gathering) u.greq.wait();
      } catch (...) {
      }
      u.gathering = false;
      u.present = true;
      lay_release(ui, false);
      for (const Member& m : u.members) m.p->grad = Tensor<T>();
      u.pgrad_bytes = 0;
    }
    for (std::size_t ui : inflight_) {
      try {
        units_[ui].rreq.wait();
      } catch (...) {
      }
      units_[ui].started = false;
      units_[ui].rbytes = 0;
    }
    inflight_.clear();
    lay_sample();
  }

  // ---- stages 1, 2: gather updated values ---------------------------------------
  void gather_values() {
    std::vector<T>& buf = gather_bufs_.empty() ? gather_bufs_.emplace_back() : gather_bufs_[0];
    buf.resize(largest_unit());
    account(ledger_now_.gathered, buf.size() * sizeof(T));
    note_peak();
    for (Unit& u : units_) {
      std::span<T> all(buf.data(), u.padded);
      std::span<T> mine = all.subspan(u.mine_lo(r_), u.shard);
      std::fill(mine.begin(), mine.end(), T(0));
      for (const Member& m : u.members) copy_mine(u, m, all.data(), false);
      comm_->allgather(std::span<const T>(mine), all);
      for (const Member& m : u.members) std::memcpy(m.p->value.data(), all.data() + m.offset, m.elems * sizeof(T));
    }
    unaccount(ledger_now_.gathered, buf.size() * sizeof(T));
    std::vector<T>().swap(buf);
  }

  // Member m's elements in this rank's shard: value -> dst (at its place in
  // the unit's layout, or at its place in the shard when `shard_relative`).
  void copy_mine(const Unit& u, const Member& m, T* dst, bool shard_relative) const {
    const std::size_t lo = std::max(u.mine_lo(r_), m.offset), hi = std::min(u.mine_hi(r_), m.offset + m.elems);
    if (lo >= hi) return;
    const std::size_t at = shard_relative ? lo - u.mine_lo(r_) : lo;
    std::memcpy(dst + at, m.p->value.data() + (lo - m.offset), (hi - lo) * sizeof(T));
  }

  // f(value, grad, state0, state1, n) over every piece of this rank's shards
  // (stages 1, 2: pieces of the model's value tensors; stage 3: the value shard).
  template <class F>
  void for_each_piece(F&& f) {
    const ScopedFlushDenormals flush;  // as nn optimizers do (nn/optim.hpp)
    for (Unit& u : units_) {
      T* g = S == 1 ? gbuf_.data() + u.goff + u.mine_lo(r_) : u.gshard.data();
      T* s0 = keys_ > 0 ? state_[0].data() + u.soff : nullptr;
      T* s1 = keys_ > 1 ? state_[1].data() + u.soff : nullptr;
      if constexpr (S == 3) {
        const std::size_t n = std::min(u.shard, u.elems > u.mine_lo(r_) ? u.elems - u.mine_lo(r_) : 0);
        if (n) f(u.vshard.data(), g, s0, s1, static_cast<index_t>(n));
      } else {
        for (const Member& m : u.members) {
          const std::size_t lo = std::max(u.mine_lo(r_), m.offset), hi = std::min(u.mine_hi(r_), m.offset + m.elems);
          if (lo >= hi) continue;
          const std::size_t at = lo - u.mine_lo(r_);
          f(m.p->value.data() + (lo - m.offset), g + at, s0 ? s0 + at : nullptr, s1 ? s1 + at : nullptr,
            static_cast<index_t>(hi - lo));
        }
      }
    }
  }

  // nn::SGD's step (nn/optim.hpp), coefficient for coefficient.
  void update(const nn::SGDOptions& o) {
    const std::int64_t t = steps_;
    const T lr = static_cast<T>(o.lr), wd = static_cast<T>(o.weight_decay), mu = static_cast<T>(o.momentum);
    const T cb = t == 1 ? T(0) : mu;
    const T cg = t == 1 ? T(1) : static_cast<T>(1.0 - static_cast<double>(o.dampening));
    const T kg = o.nesterov ? T(1) : T(0);
    const T kb = o.nesterov ? mu : T(1);
    for_each_piece([&](T* p, T* g, T* b, T*, index_t n) {
      if (o.momentum == 0.0f)
        nn::detail::sgd_pass(p, g, n, lr, wd);
      else
        nn::detail::sgd_momentum_pass(p, g, b, n, lr, wd, cb, cg, kg, kb);
    });
  }
  // nn::Adam's and nn::AdamW's step (nn::detail::AdamBase::adam_step).
  void update(const nn::AdamOptions& o) { adam(o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, 0.0f); }
  void update(const nn::AdamWOptions& o) { adam(o.lr, o.beta1, o.beta2, o.eps, 0.0f, o.weight_decay); }
  void adam(float lr_f, float beta1, float beta2, float eps, float coupled_wd, float decoupled_wd) {
    const std::int64_t t = steps_;
    const double lr = lr_f;
    const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(t));
    const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t));
    const T step_size = static_cast<T>(lr / bc1);
    const T bc2_sqrt = static_cast<T>(std::sqrt(bc2));
    const T decay = static_cast<T>(1.0 - lr * static_cast<double>(decoupled_wd));
    const T one_minus_beta1 = static_cast<T>(1.0 - static_cast<double>(beta1));
    const T one_minus_beta2 = static_cast<T>(1.0 - static_cast<double>(beta2));
    for_each_piece([&](T* p, T* g, T* m, T* v, index_t n) {
      nn::detail::adam_pass<T>(p, g, m, v, n, decay, static_cast<T>(coupled_wd), static_cast<T>(beta2), one_minus_beta1,
                               one_minus_beta2, step_size, bc2_sqrt, static_cast<T>(eps));
    });
  }

  float lr_of() const {
    return std::visit([](const auto& o) { return o.lr; }, opt_);
  }

  // ---- accounting ------------------------------------------------------------------
  void account(std::size_t& c, std::size_t bytes) {
    c += bytes;
    note_peak();
  }
  void unaccount(std::size_t& c, std::size_t bytes) { c -= std::min(c, bytes); }
  void note_peak() {
    ledger_peak_.params = std::max(ledger_peak_.params, ledger_now_.params);
    ledger_peak_.grads = std::max(ledger_peak_.grads, ledger_now_.grads);
    ledger_peak_.optimizer = std::max(ledger_peak_.optimizer, ledger_now_.optimizer);
    ledger_peak_.gathered = std::max(ledger_peak_.gathered, ledger_now_.gathered);
    peak_total_ = std::max(peak_total_, ledger_now_.total());
  }
  // Stages 2, 3: the gradient bytes are the shards plus the unit buffer's
  // resident pages, measured.
  void sample() {
    if constexpr (S >= 2) {
      ledger_now_.grads = shard_total_ * sizeof(T) + gbuf_.resident();
      note_peak();
    }
  }

  nn::Registry<T>* params_;
  Comm* comm_;
  Replica* replica_;
  Optimizer opt_;
  ZeroOptions zo_;
  std::vector<ZeroEvent> trace_;
  std::vector<std::size_t> inflight_;  // per-layer path: units whose reduce-scatter is in flight, in issue order
  std::size_t n_ = 1, r_ = 0;
  std::vector<Unit> units_;
  std::vector<Member*> by_param_;  // sorted by address
  std::size_t gbuf_elems_ = 0, shard_total_ = 0, keys_ = 0;
  detail::PageBuffer<T> gbuf_;
  std::vector<T> state_[2];
  std::vector<std::vector<T>> gather_bufs_;
  std::size_t next_ = 0, started_ = 0;
  bool reduced_ = false;
  std::int64_t steps_ = 0;
  MemoryBytes ledger_now_, ledger_peak_;
  std::size_t peak_total_ = 0;
};

// Stage 3 layer by layer (FSDP): the model as a sequence of layers (an
// nn::Sequential, or std::tie(layer, ...) of callables expression ->
// expression) and a loss(output, labels). Each layer runs as its own split
// forward / backward (autodiff/split.hpp, as a pipeline stage does), which
// gives the hooks one expression lacks:
//   forward, layer i:  wait for its units' all-gather (issued while layer
//                      i-1 computed), issue layer i+1's, compute, empty
//                      layer i's values (pages handed back in place: the
//                      saved state points at them) unless it is the last
//   backward, layer i: wait for its units' gather (issued during layer
//                      i+1's backward), issue layer i-1's, compute the input
//                      and weight gradients, free the values, wait for
//                      layer i+1's reduce-scatter, issue layer i's
// so at most two layers' parameters are gathered at a time, each gather
// overlaps the previous layer's compute and each reduce-scatter the next
// layer's backward. A layer's parameters are those its for_each_parameter
// names (nn layers; a callable without one has none); each unit must belong
// to one layer. Build with parallel::zero_layers<L>(zero, layers, loss).
template <class ZeroT, class L, class Loss, class... Layers>
class ZeroLayers {
  using T = typename ZeroT::value_type;
  static constexpr std::size_t NL = sizeof...(Layers);
  static_assert(NL >= 1, "zero_layers: give at least one layer");
  static_assert(ZeroT::stage() == 3, "zero_layers runs stage 3 (parameters sharded) layer by layer: build Zero with Zero3");
  static constexpr std::size_t none = static_cast<std::size_t>(-1);

  template <std::size_t I>
  static constexpr std::size_t K = I == 0 ? 0 : 1;

  // Layer I's expression from its input leaf; the last one's through the loss.
  template <std::size_t I>
  struct Build {
    std::tuple<Layers&...>* layers;
    Loss* loss;
    TensorView<L>* labels;
    template <class In>
    auto operator()(In in) const {
      if constexpr (I + 1 == NL)
        return (*loss)(std::get<I>(*layers)(in), *labels);
      else
        return std::get<I>(*layers)(in);
    }
  };
  template <std::size_t I>
  using Split = SplitBackward<split_expr_t<Build<I>, T, K<I>>, K<I>>;
  template <class Seq>
  struct splits_of;
  template <std::size_t... I>
  struct splits_of<std::index_sequence<I...>> {
    using type = std::tuple<Split<I>...>;
  };
  using Splits = typename splits_of<std::make_index_sequence<NL>>::type;

 public:
  ZeroLayers(ZeroT& z, std::tuple<Layers&...> layers, Loss loss)
      : z_(&z), layers_(layers), loss_(std::move(loss)), splits_(std::make_unique<Splits>()) {
    seed_.data()[0] = T(1);
    units_.resize(NL);
    covered_.assign(z.units_.size(), 0);
    owner_.assign(z.units_.size(), -1);
    map_layers(std::make_index_sequence<NL>{});
    for (std::size_t i = 0; i < NL; ++i)
      if (!units_[i].empty()) last_ = i;
    next_.assign(NL, none);
    prev_.assign(NL, none);
    for (std::size_t i = 0; i < NL; ++i) {
      for (std::size_t j = i + 1; j < NL && next_[i] == none; ++j)
        if (!units_[j].empty()) next_[i] = j;
      for (std::size_t j = i; j-- > 0 && prev_[i] == none;)
        if (!units_[j].empty()) prev_[i] = j;
    }
    dgrad_.resize(NL);
  }

  // One step's forward and backward on this rank's batch: gradients
  // reduce-scattered into the shards, ready for zero.step(). Returns the loss.
  T backward(TensorView<T> x, TensorView<L> labels) {
    labels_ = labels;
    z_->lay_begin();
    try {
      TensorView<T> in = x;
      [&]<std::size_t... I>(std::index_sequence<I...>) { (forward<I>(in), ...); }(std::make_index_sequence<NL>{});
      [&]<std::size_t... I>(std::index_sequence<I...>) { (backward<NL - 1 - I>(), ...); }(std::make_index_sequence<NL>{});
    } catch (...) {
      [&]<std::size_t... I>(std::index_sequence<I...>) { (std::get<I>(*splits_).clear(), ...); }(std::make_index_sequence<NL>{});
      z_->lay_abort();
      throw;
    }
    z_->lay_end(covered_);
    return loss_value_;
  }

  // The units (indices into the Zero) layer i gathers, in registry order.
  const std::vector<std::size_t>& units_of(std::size_t layer) const { return units_.at(layer); }
  std::size_t layers() const { return NL; }

 private:
  template <std::size_t... I>
  void map_layers(std::index_sequence<I...>) {
    (map_layer<I>(), ...);
  }
  template <std::size_t I>
  void map_layer() {
    auto& layer = std::get<I>(layers_);
    if constexpr (requires { layer.for_each_parameter([](const std::string&, Parameter<T>&) {}); }) {
      layer.for_each_parameter([&](const std::string& local, Parameter<T>& p) {
        auto* m = z_->member_of(p);
        if (!m)
          throw_error<ValueError>("zero_layers on rank ", z_->rank(), ": layer ", I, "'s parameter '", local, "' ('", p.name,
                                  "') is not in the registry the Zero shards");
        const auto& u = z_->units_[m->unit];
        int& owner = owner_[m->unit];
        if (owner >= 0 && owner != static_cast<int>(I))
          throw_error<ValueError>("zero_layers on rank ", z_->rank(), ": unit '", u.name, "' holds parameters of layers ", owner,
                                  " and ", I, "; gathering per layer needs each unit in one layer (register each layer ",
                                  "under its own name)");
        if (owner < 0) {
          owner = static_cast<int>(I);
          units_[I].push_back(m->unit);
          covered_[m->unit] = 1;
        }
      });
    }
  }

  template <std::size_t I>
  void forward(TensorView<T>& in) {
    for (std::size_t u : units_[I]) z_->lay_gather_finish(u);
    if (next_[I] != none)
      for (std::size_t u : units_[next_[I]]) z_->lay_gather_start(u);  // the prefetch, overlapping this layer
    z_->event(ZeroEvent::forward_begin, I);
    if constexpr (I > 0)
      if (dgrad_[I].shape() != in.shape || dgrad_[I].empty()) dgrad_[I] = Tensor<T>(in.shape);
    in = std::get<I>(*splits_).forward(Build<I>{&layers_, &loss_, &labels_}, in);
    z_->event(ZeroEvent::forward_end, I);
    if (I != last_)
      for (std::size_t u : units_[I]) z_->lay_release(u, true);
  }

  template <std::size_t I>
  void backward() {
    auto& sp = std::get<I>(*splits_);
    for (std::size_t u : units_[I]) z_->lay_gather_finish(u);
    if (prev_[I] != none)
      for (std::size_t u : units_[prev_[I]]) z_->lay_gather_start(u);
    for (std::size_t u : units_[I]) z_->lay_grads_begin(u);
    z_->event(ZeroEvent::backward_begin, I);
    TensorView<T> dy = I + 1 == NL ? seed_.view() : dgrad_[I + 1].view();
    TensorView<T> dx = I == 0 ? TensorView<T>() : dgrad_[I].view();
    TensorView<T> v = sp.backward_input(dy, dx);
    if constexpr (I + 1 == NL) loss_value_ = v.item();
    sp.backward_weights();
    z_->event(ZeroEvent::backward_end, I);
    for (std::size_t u : units_[I]) z_->lay_release(u, false);
    for (std::size_t u : units_[I]) z_->lay_grads_done(u);
    sp.clear();
  }

  ZeroT* z_;
  std::tuple<Layers&...> layers_;
  Loss loss_;
  TensorView<L> labels_;
  std::unique_ptr<Splits> splits_;
  std::vector<std::vector<std::size_t>> units_;
  std::vector<char> covered_;
  std::vector<int> owner_;  // the layer each unit belongs to (-1: none)
  std::vector<std::size_t> next_, prev_;
  std::size_t last_ = none;
  std::vector<Tensor<T>> dgrad_;  // dgrad_[i]: the gradient of layer i's input (= of layer i-1's output)
  Tensor<T> seed_{Shape{}};
  T loss_value_{};
};

// zero_layers<L>(zero, std::tie(layer0, layer1, ...), loss) or
// zero_layers<L>(zero, sequential, loss): L is the labels' element type,
// loss(output expression, TensorView<L> labels) a scalar expression.
template <class L, class ZeroT, class... Layers, class Loss>
ZeroLayers<ZeroT, L, Loss, Layers...> zero_layers(ZeroT& z, std::tuple<Layers&...> layers, Loss loss) {
  return ZeroLayers<ZeroT, L, Loss, Layers...>(z, layers, std::move(loss));
}
template <class L, class ZeroT, class... Layers, class Loss>
ZeroLayers<ZeroT, L, Loss, Layers...> zero_layers(ZeroT& z, nn::Sequential<Layers...>& seq, Loss loss) {
  return ZeroLayers<ZeroT, L, Loss, Layers...>(
      z, std::apply([](auto&... l) { return std::tuple<Layers&...>(l...); }, seq.layers), std::move(loss));
}

}  // namespace weft::parallel
