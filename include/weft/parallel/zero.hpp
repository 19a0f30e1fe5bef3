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
//           tensors are freed). backward(make_loss, ws) all-gathers every
//           unit (started together, waited in forward order) before the
//           forward is built, and frees each unit's values during backward
//           as soon as its backward is over (the first gradient of the next
//           unit down arrives); gradients as in Zero2.
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
// What is NOT done (see docs/architecture.md): weft's forward is one
// expression evaluated in one call, with no hook between layers, so Zero3
// cannot free a layer after its forward and gather it again before its
// backward: during a step every unit is gathered at once (the "gathered"
// bytes below are 4P at the peak). Mixed precision (bf16 on the wire, f32
// master) is not implemented.
//
// Memory accounting (memory()): bytes this rank holds, by category, now and
// at the peak: parameters (the model's value tensors, or the value shards),
// gradients (gradient shards plus the pages of the unit gradient buffer that
// are resident, measured with mincore(2)), optimizer state, gathered buffers.
// The formulas they are checked against are formula(P, N) below.
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

#include "../autodiff/value_and_grad.hpp"
#include "../comm/communicator.hpp"
#include "../core/denormals.hpp"
#include "../core/error.hpp"
#include "../nn/optim.hpp"
#include "../nn/registry.hpp"
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
// one unit, stage 3 every unit's values (4P: the forward is one expression).
// Mixed precision (not implemented here) would be, with bf16 parameters and
// gradients and f32 master weights + Adam state (12 bytes): DP 2P + 2P + 12P,
// stage 1 2P + 2P + 12P/N, stage 2 2P + 14P/N, stage 3 16P/N.
inline double zero_formula(int stage, double P, double N, double k = 8.0) {
  switch (stage) {
    case 0: return 4 * P + 4 * P + k * P;
    case 1: return 4 * P + 4 * P + k * P / N;
    case 2: return 4 * P + (4 * P + k * P) / N;
    default: return (8 * P + k * P) / N;
  }
}

namespace detail {

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

}  // namespace detail

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

  Zero(nn::Registry<T>& params, Comm& dp, Optimizer opt)
    requires std::is_same_v<Replica, NoReplica>
      : Zero(params, dp, nullptr, opt) {}
  // Hybrid: shards over `shard`, replicated (gradient shards averaged) over `replica`.
  Zero(nn::Registry<T>& params, Comm& shard, Replica& replica, Optimizer opt)
    requires(!std::is_same_v<Replica, NoReplica>)
      : Zero(params, shard, &replica, opt) {}

 private:
  Zero(nn::Registry<T>& params, Comm& dp, Replica* replica, Optimizer opt)
      : params_(&params), comm_(&dp), replica_(replica), opt_(opt) {
    if (params.size() == 0) throw_error<ValueError>("Zero on rank ", dp.rank(), ": the registry holds no parameters");
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
      u.req = comm_->ireduce_scatter(std::span<const T>(in), out, comm::ReduceOp::avg, named);
    }
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
    std::vector<std::vector<T>>& bufs = gather_bufs_;
    bufs.resize(units_.size());
    // Start every unit's allgather, then unpack in forward order as each lands.
    std::vector<typename Comm::Request> reqs(units_.size());
    for (std::size_t ui = 0; ui < units_.size(); ++ui) {
      Unit& u = units_[ui];
      bufs[ui].resize(u.padded);
      account(ledger_now_.gathered, u.padded * sizeof(T));
      reqs[ui] = comm_->iallgather(std::span<const T>(u.vshard), std::span<T>(bufs[ui]));
    }
    note_peak();
    for (std::size_t ui = 0; ui < units_.size(); ++ui) {
      Unit& u = units_[ui];
      reqs[ui].wait();
      for (const Member& m : u.members) {
        m.p->value = Tensor<T>(m.shape);
        std::memcpy(m.p->value.data(), bufs[ui].data() + m.offset, m.elems * sizeof(T));
      }
      account(ledger_now_.gathered, u.elems * sizeof(T));
      note_peak();
      unaccount(ledger_now_.gathered, u.padded * sizeof(T));
      std::vector<T>().swap(bufs[ui]);
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

}  // namespace weft::parallel
