// parallel::ParameterServer<Consistency, Transport>: parameter-server training
// (Li et al., OSDI 2014) over any transport with any-source receives (thread
// ranks, MPI). Server ranks hold the parameters in pieces (placement.hpp),
// apply the workers' gradients themselves (SGD, Adam, Adagrad per piece) or
// only sum them (Aggregate, BSP), and answer reads under a consistency model
// (consistency.hpp). Worker ranks push gradients and pull weights, both
// non-blocking, dense or as rows of an embedding table.
//
// Wire protocol (all on the transport; `base` is this instance's tag range):
//   worker -> server  tag base+0: Header (kind, key, range, clock, id, payload bytes)
//                     tag base+1: the payload, when the header announces one
//   server -> worker  tag base+16+id: Reply header, then its payload in the same message
// Several instances may live on one transport, in sequence or at once: the
// constructor is collective (rank 0 of the transport gathers every rank's
// view of the tag ranges its live instances hold, on Options::tag_base + 2
// and + 3) and every rank takes the same free range of
// [Options::tag_base, max_tag), so one instance never receives another's
// requests. A count kept per rank could not do this: on thread ranks rank 0
// runs on the caller's thread, and counters of different ranks disagree.
// A server runs one progress thread: it waits for the next header and serves
// it, and parks reads that the consistency model says must wait, answering
// them when the clocks allow. It never leaves a receive posted: on MPI a
// posted any-source receive outlives the loop (a matched receive cannot be
// cancelled) and would swallow a later instance's first request, so the loop
// probes (MPI_Iprobe) and then receives from the sender it found, napping
// between probes (up to 1 ms while requests flow, 10 ms after a second of
// silence), so an idle server burns no core. The thread transport's receives
// only take a message when tested, so there the loop sleeps on its doorbell
// in an any-source wait. Every wait has a deadline; every error names the
// server or the worker.
//
// Faults: a worker that reports a failure (run_worker catches its exception),
// or that sends nothing for Options::worker_timeout while it is not waiting on
// this server, is dead (a worker waiting on another server sends a heartbeat
// every worker_timeout / 4, so its wait is not taken for death). Under SSP and ASP it is dropped (logged with its rank;
// the others go on); under BSP the step cannot complete, and every later
// request on every rank fails naming it. A server that fails or stops
// answering is an error on the workers naming the server and the keys it held.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <limits>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <variant>
#include <vector>

#include "../../comm/deadline.hpp"
#include "../../comm/error.hpp"
#include "../../comm/fingerprint.hpp"  // detail::rank_list
#include "../../comm/transport.hpp"
#include "../../nn/optim.hpp"
#include "../../nn/registry.hpp"
#include "consistency.hpp"
#include "placement.hpp"

namespace weft::parallel {

// Every parameter-server error: what failed, on which rank, naming the server
// (and the keys it held) or the worker at fault.
struct PsError : comm::CommError {
  using comm::CommError::CommError;
};

namespace ps {

// torch.optim.Adagrad (lr_decay, coupled weight decay; initial accumulator 0).
struct AdagradOptions {
  float lr = 1e-2f;
  float lr_decay = 0.0f;
  float weight_decay = 0.0f;
  float eps = 1e-10f;
};
// The server only sums the workers' gradients of each step; a pull returns
// the sum (BSP only: the workers run their own optimizer on it).
struct Aggregate {};

using Update = std::variant<nn::SGDOptions, nn::AdamOptions, AdagradOptions, Aggregate>;

struct Options {
  Update update = nn::SGDOptions{.lr = 0.1f};
  // A worker's wait for a server's answer (a BSP or SSP read waits for the
  // slowest worker too, so this bounds a step).
  std::chrono::milliseconds timeout{60'000};
  // A worker that sends a server nothing for this long while no request of it
  // is parked there is dead (hung, killed).
  std::chrono::milliseconds worker_timeout{30'000};
  // Instances take disjoint ranges of 16 + 1024 tags from here up to
  // comm::max_tag (7 live at once from 0x6000); + 2 and + 3 carry the
  // construction's agreement on the range.
  comm::Tag tag_base = 0x6000;
  bool log_to_stderr = true;  // servers print drops as they happen
  bool record_reads = false;  // servers keep a ReadRecord of every pull (tests)
};

// A read as a server served it: the reader's clock and every live worker's
// clock at that moment (SSP's bound: clock - min(clocks) <= s).
struct ReadRecord {
  int worker = -1;  // rank
  std::int64_t clock = 0, min_clock = 0, max_clock = 0;
};

// What a server saw of a worker's death.
struct DropRecord {
  int worker = -1;  // rank
  std::int64_t clock = 0;
  std::string reason;
};

namespace detail {

enum class Kind : std::uint32_t { push = 1, pull, push_rows, pull_rows, clock, leave, fail, alive };

struct Header {
  Kind kind{};
  std::uint32_t key = 0;
  std::uint64_t begin = 0, end = 0;  // elements (dense) or rows (sparse); rows: `end` = row count
  std::int64_t clock = 0;
  std::uint32_t id = 0;
  std::uint32_t synced = 0;  // pull: wait until every live worker reached `clock`, whatever the consistency model
  std::uint64_t bytes = 0;   // payload that follows on the data tag
};

struct Reply {
  std::uint32_t id = 0;
  std::int32_t status = 0;  // 0 ok; else the payload is the error text
  std::int64_t min_clock = 0;
  std::uint64_t bytes = 0;
};

inline constexpr std::uint32_t reply_ids = 1024;
inline constexpr comm::Tag tag_span = 16 + reply_ids;  // one instance's tags

// The tag ranges that this process's live instances hold, by their first tag
// (once per rank: on thread ranks every rank of an instance holds the same
// range), and the range given out last (the next instance takes the next free
// one, so a late message of a dropped worker meets no new server). Kept as
// absolute tags, so instances built with different Options::tag_base values
// still see each other's ranges.
struct SlotBook {
  std::mutex mu;
  std::vector<comm::Tag> held;
  std::int64_t last = -1;  // first tag of the range given out last
  // Bit k: slot k above `base` overlaps a held range.
  std::uint64_t live_mask(comm::Tag base, std::size_t n_slots) const {
    std::uint64_t m = 0;
    for (std::size_t k = 0; k < n_slots; ++k) {
      const comm::Tag lo = base + static_cast<comm::Tag>(k) * tag_span;
      for (comm::Tag h : held)
        if (h < lo + tag_span && lo < h + tag_span) m |= std::uint64_t{1} << k;
    }
    return m;
  }
  // The slot above `base` given out last (-1: none there).
  std::int64_t last_slot(comm::Tag base, std::size_t n_slots) const {
    if (last < static_cast<std::int64_t>(base)) return -1;
    const auto k = static_cast<std::size_t>(last - static_cast<std::int64_t>(base)) / tag_span;
    return k < n_slots ? static_cast<std::int64_t>(k) : -1;
  }
  void release(comm::Tag base) {
    auto it = std::find(held.begin(), held.end(), base);
    if (it != held.end()) held.erase(it);
  }
};
inline SlotBook& slot_book() {
  static SlotBook b;
  return b;
}
struct SlotVote {
  std::uint64_t live = 0;  // slots held on the voter
  std::int64_t last = -1;
};
inline constexpr std::size_t max_error_text = 4000;

inline const char* kind_name(Kind k) {
  switch (k) {
    case Kind::push: return "push";
    case Kind::pull: return "pull";
    case Kind::push_rows: return "push_rows";
    case Kind::pull_rows: return "pull_rows";
    case Kind::clock: return "clock";
    case Kind::leave: return "leave";
    case Kind::fail: return "fail";
    case Kind::alive: return "alive";
  }
  return "?";
}

// Waits on r until done or the deadline. Shared-memory transports (those that
// count arrivals: the thread transport) sleep on their doorbell inside wait();
// others are polled with a sleep that grows to 1 ms, so an idle wait costs no core.
template <class T>
comm::WaitStatus wait_idle(T& t, typename T::Request& r, comm::Deadline dl) {
  if constexpr (comm::TracksArrival<T>) {
    return t.wait(r, dl);
  } else {
    std::chrono::microseconds nap{0};
    for (int i = 0;; ++i) {
      if (t.test(r)) return comm::WaitStatus::done;
      const auto now = comm::Clock::now();
      if (now >= dl) return t.test(r) ? comm::WaitStatus::done : comm::WaitStatus::timed_out;
      if (i < 64) {
        std::this_thread::yield();
        continue;
      }
      nap = std::min<std::chrono::microseconds>(std::chrono::microseconds(1000), nap + std::chrono::microseconds(20));
      std::this_thread::sleep_for(std::min<comm::Duration>(nap, dl - now));
    }
  }
}

inline std::string status_text(comm::WaitStatus s) {
  switch (s) {
    case comm::WaitStatus::done: return "done";
    case comm::WaitStatus::timed_out: return "timed out";
    case comm::WaitStatus::aborted: return "aborted";
    case comm::WaitStatus::peer_gone: return "peer gone";
  }
  return "?";
}

inline std::string seconds(std::chrono::milliseconds ms) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f s", static_cast<double>(ms.count()) / 1000.0);
  return b;
}

// ---- the update rules, per piece (nn/optim.hpp's loops, so BSP matches DataParallel) ----
struct PieceState {
  std::size_t key = 0, begin = 0, end = 0, cols = 1;
  bool sparse = false;
  std::vector<float> value, s0, s1;  // state: SGD momentum / Adam exp_avg, exp_avg_sq / Adagrad sum
  std::vector<float> accum;          // BSP sum of the step's gradients (and scratch for sparse pushes)
  std::vector<std::uint8_t> touched;  // sparse: rows in accum
  std::vector<std::uint32_t> touched_rows;
  std::vector<std::int64_t> steps;    // dense: [0]; sparse: per row (lazy state, as torch's SparseAdam)
  bool pushed = false;                // dense BSP: accum holds something this step
  // Dense SSP/ASP: pushes received and not yet applied (their sum, in the
  // first one's payload buffer), applied as one step before the piece is read
  // or when no request is waiting (ParameterServer::flush).
  std::vector<std::byte> pending;
  int pending_pushes = 0;
  std::size_t elements() const { return (end - begin) * (sparse ? cols : 1); }
};

// p -= update(g * scale) on n elements with step counter t (incremented).
inline void apply_update(const Update& u, float* p, const float* g_in, float scale, float* s0, float* s1, std::size_t n,
                         std::int64_t& t, std::vector<float>& scratch) {
  if (scratch.size() < n) scratch.resize(n);
  float* g = scratch.data();
  for (std::size_t i = 0; i < n; ++i) g[i] = g_in[i] * scale;
  const auto len = static_cast<index_t>(n);
  if (const auto* o = std::get_if<nn::SGDOptions>(&u)) {
    const std::int64_t step = ++t;
    const float mu = o->momentum;
    if (mu == 0.0f) {
      nn::detail::sgd_pass<float>(p, g, len, o->lr, o->weight_decay);
    } else {
      const float cb = step == 1 ? 0.0f : mu;
      const float cg = step == 1 ? 1.0f : static_cast<float>(1.0 - static_cast<double>(o->dampening));
      const float kg = o->nesterov ? 1.0f : 0.0f, kb = o->nesterov ? mu : 1.0f;
      nn::detail::sgd_momentum_pass<float>(p, g, s0, len, o->lr, o->weight_decay, cb, cg, kg, kb);
    }
  } else if (const auto* a = std::get_if<nn::AdamOptions>(&u)) {
    const std::int64_t step = ++t;
    const double lr = a->lr;
    const double bc1 = 1.0 - std::pow(static_cast<double>(a->beta1), static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(static_cast<double>(a->beta2), static_cast<double>(step));
    nn::detail::adam_pass<float>(p, g, s0, s1, len, 1.0f, a->weight_decay, a->beta2,
                                 static_cast<float>(1.0 - static_cast<double>(a->beta1)),
                                 static_cast<float>(1.0 - static_cast<double>(a->beta2)), static_cast<float>(lr / bc1),
                                 static_cast<float>(std::sqrt(bc2)), a->eps);
  } else if (const auto* ag = std::get_if<AdagradOptions>(&u)) {
    const std::int64_t step = ++t;
    const float clr = ag->lr / (1.0f + static_cast<float>(step - 1) * ag->lr_decay);
    for (std::size_t i = 0; i < n; ++i) {
      const float gi = g[i] + ag->weight_decay * p[i];
      s0[i] += gi * gi;
      p[i] -= clr * gi / (std::sqrt(s0[i]) + ag->eps);
    }
  } else {  // Aggregate: the value is the sum itself
    ++t;
    std::memcpy(p, g, n * sizeof(float));
  }
}

}  // namespace detail
}  // namespace ps

template <Consistency C, comm::AnySource Transport>
class ParameterServer {
  using Header = ps::detail::Header;
  using Reply = ps::detail::Reply;
  using Kind = ps::detail::Kind;

 public:
  // Collective in spirit (every rank builds it with the same keys and roles;
  // nothing is exchanged). `init[k]`: key k's initial values on server ranks
  // (numel floats; null: zero), the same model every rank built from one seed.
  ParameterServer(Transport t, ps::Roles roles, std::vector<ps::Key> keys, std::vector<const float*> init,
                  ps::Options o = {})
      : t_(std::move(t)), roles_(std::move(roles)), placement_(std::move(keys), static_cast<int>(roles_.servers.size())),
        o_(std::move(o)) {
    if (std::holds_alternative<ps::Aggregate>(o_.update) && !C::aggregate_steps)
      throw_error<ValueError>("ParameterServer<", C::name,
                              ">: Aggregate (servers return the sum of the step's gradients) is defined per step, "
                              "so it needs BSP");
    if (o_.tag_base + ps::detail::tag_span > comm::max_tag)
      throw_error<ValueError>("ParameterServer: tag_base ", o_.tag_base, " leaves no room for one instance's ",
                              ps::detail::tag_span, " tags below ", comm::max_tag);
    if (static_cast<int>(roles_.servers.size() + roles_.workers.size()) != t_.size())
      throw_error<ValueError>("ParameterServer: roles cover ", roles_.servers.size() + roles_.workers.size(),
                              " ranks but the transport has ", t_.size());
    const int s = roles_.server_index(t_.rank());
    if (s >= 0) {
      if (!init.empty() && init.size() != placement_.keys().size())
        throw_error<ValueError>("ParameterServer: ", init.size(), " initial values for ", placement_.keys().size(), " keys");
      server_.emplace();
      server_->index = s;
      for (const ps::Piece& p : placement_.pieces()) {
        if (p.server != s) continue;
        const ps::Key& k = placement_.keys()[p.key];
        ps::detail::PieceState st;
        st.key = p.key;
        st.begin = p.begin;
        st.end = p.end;
        st.sparse = k.sparse;
        st.cols = k.cols;
        const std::size_t n = st.elements();
        const std::size_t first = k.sparse ? p.begin * k.cols : p.begin;
        st.value.assign(n, 0.0f);
        if (!init.empty() && init[p.key]) std::memcpy(st.value.data(), init[p.key] + first, n * sizeof(float));
        st.s0.assign(n, 0.0f);
        if (std::holds_alternative<nn::AdamOptions>(o_.update)) st.s1.assign(n, 0.0f);
        st.accum.assign(n, 0.0f);
        if (k.sparse) {
          st.touched.assign(p.end - p.begin, 0);
          st.steps.assign(p.end - p.begin, 0);
        } else {
          st.steps.assign(1, 0);
        }
        server_->piece_of_key.resize(placement_.keys().size(), -1);
        server_->piece_of_key[p.key] = static_cast<int>(server_->pieces.size());
        server_->spare_limit += 2 * n * sizeof(float);
        server_->pieces.push_back(std::move(st));
      }
      server_->spare_limit += std::size_t{1} << 20;
      const std::size_t w = roles_.workers.size();
      server_->clocks.assign(w, 0);
      server_->state.assign(w, WorkerState::live);
      server_->last_heard.assign(w, comm::Clock::now());
      server_->parked_count.assign(w, 0);
    } else {
      worker_.emplace();
      worker_->index = roles_.worker_index(t_.rank());
    }
    agree_on_tags();
  }

  // Keys and initial values from a registry (every parameter dense, named as registered).
  static std::pair<std::vector<ps::Key>, std::vector<const float*>> keys_of(const nn::Registry<float>& reg) {
    std::pair<std::vector<ps::Key>, std::vector<const float*>> out;
    for (const Parameter<float>* p : reg) {
      out.first.push_back(ps::Key{p->name, static_cast<std::size_t>(p->numel()), 1, false});
      out.second.push_back(p->value.data());
    }
    return out;
  }

  ParameterServer(const ParameterServer&) = delete;
  ParameterServer& operator=(const ParameterServer&) = delete;
  ~ParameterServer() {
    if (thread_.joinable()) {
      stop_.store(true);
      thread_.join();
    }
    ps::detail::SlotBook& book = ps::detail::slot_book();
    std::lock_guard lock(book.mu);
    book.release(base_);
  }

  bool is_server() const { return server_.has_value(); }
  bool is_worker() const { return worker_.has_value(); }
  int rank() const { return t_.rank(); }
  const ps::Roles& roles() const { return roles_; }
  const ps::Placement& placement() const { return placement_; }
  std::size_t key(const std::string& name) const { return placement_.find(name); }
  std::string describe() const { return placement_.describe(roles_.servers); }
  static constexpr const char* consistency() { return C::name; }
  static constexpr std::int64_t staleness() { return C::staleness; }
  // The first tag of the range this instance took (Options::tag_base + k * (16 + 1024)).
  comm::Tag tag_base() const { return base_; }

  // =========================== server side ===========================

  // Starts this server rank's progress thread.
  void start() {
    require_server("start");
    if (thread_.joinable()) throw_error<ValueError>("ParameterServer::start on server rank ", rank(), ": already started");
    thread_ = std::thread([this] {
      try {
        serve_loop();
      } catch (const std::exception& e) {
        std::lock_guard lock(server_->mu);
        server_->error = std::string("ParameterServer: server rank ") + std::to_string(rank()) + " failed: " + e.what();
      }
    });
  }
  // Waits until every worker has left or been dropped, then rethrows a
  // failure (BSP with a dead worker, a transport failure) naming it.
  void finish() {
    require_server("finish");
    if (thread_.joinable()) thread_.join();
    std::lock_guard lock(server_->mu);
    if (!server_->error.empty()) throw PsError(server_->error);
  }
  // start() then finish(): serve until the workers are done.
  void serve() {
    start();
    finish();
  }
  // This server's values of key k's piece (after finish(); tests and checkpoints).
  std::vector<float> server_values(std::size_t k) const {
    require_server("server_values");
    const int i = k < server_->piece_of_key.size() ? server_->piece_of_key[k] : -1;
    if (i < 0) return {};
    return server_->pieces[static_cast<std::size_t>(i)].value;
  }
  std::vector<ps::ReadRecord> reads() const {
    require_server("reads");
    std::lock_guard lock(server_->mu);
    return server_->reads;
  }
  std::vector<ps::DropRecord> drops() const {
    require_server("drops");
    std::lock_guard lock(server_->mu);
    return server_->drops;
  }
  std::uint64_t requests_served() const {
    require_server("requests_served");
    return server_->served.load();
  }

  // =========================== worker side ===========================

  class Handle {
   public:
    Handle() = default;
    Handle(Handle&& o) noexcept : ps_(o.ps_), slots_(std::move(o.slots_)) { o.ps_ = nullptr; }
    Handle& operator=(Handle&& o) noexcept {
      if (this != &o) {
        drop();
        ps_ = o.ps_;
        slots_ = std::move(o.slots_);
        o.ps_ = nullptr;
      }
      return *this;
    }
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;
    // Takes over o's requests (of the same ParameterServer): wait() then waits for both.
    Handle& operator+=(Handle&& o) {
      if (!o.ps_) return *this;
      if (!ps_) return *this = std::move(o);
      if (o.ps_ != ps_)
        throw_error<ValueError>("ParameterServer::Handle += on worker rank ", ps_->rank(),
                                ": the two handles belong to different ParameterServer instances");
      slots_.insert(slots_.end(), o.slots_.begin(), o.slots_.end());
      o.slots_.clear();
      o.ps_ = nullptr;
      return *this;
    }
    // Waits for every server's answer; rethrows the first error (naming the server).
    void wait() {
      if (!ps_) return;
      auto* p = ps_;
      ps_ = nullptr;
      std::string first;
      for (auto [s, g] : slots_) {
        try {
          p->complete(s, g);
        } catch (const std::exception& e) {
          if (first.empty()) first = e.what();
        }
      }
      slots_.clear();
      if (!first.empty()) throw PsError(first);
    }
    bool pending() const { return ps_ != nullptr; }
    // A handle dropped unwaited is waited for; its error surfaces at the worker's next call.
    ~Handle() { drop(); }

   private:
    friend class ParameterServer;
    void drop() noexcept {
      if (!ps_) return;
      auto* p = ps_;
      try {
        wait();
      } catch (const std::exception& e) {
        if (p->worker_->deferred.empty()) p->worker_->deferred = e.what();
      }
    }
    ParameterServer* ps_ = nullptr;
    std::vector<std::pair<std::size_t, std::uint64_t>> slots_;
  };

  // Non-blocking: sends grad (key k's numel floats) to the servers holding k.
  // grad must stay alive until the handle's wait().
  [[nodiscard]] Handle push(std::size_t k, std::span<const float> grad) {
    const ps::Key& key = dense_key(k, grad.size(), "push");
    (void)key;
    Handle h = begin_handle();
    for (std::size_t pi : placement_.pieces_of(k)) {
      const ps::Piece& p = placement_.pieces()[pi];
      h.slots_.push_back(tagged(issue(p.server, Kind::push, k, p.begin, p.end, grad.data() + p.begin,
                               (p.end - p.begin) * sizeof(float), nullptr, 0)));
    }
    return h;
  }
  // Non-blocking: fills out (key k's numel floats) with the servers' values as
  // the consistency model allows at this worker's clock.
  // synced: wait until every live worker has reached this worker's clock
  // (with every worker's pushes before it applied), whatever the consistency
  // model: the final weights after every worker's last step.
  [[nodiscard]] Handle pull(std::size_t k, std::span<float> out, bool synced = false) {
    dense_key(k, out.size(), "pull");
    Handle h = begin_handle();
    for (std::size_t pi : placement_.pieces_of(k)) {
      const ps::Piece& p = placement_.pieces()[pi];
      h.slots_.push_back(tagged(issue(p.server, Kind::pull, k, p.begin, p.end, nullptr, 0, out.data() + p.begin,
                                      p.end - p.begin, {}, synced ? 1u : 0u)));
    }
    return h;
  }
  // Sparse: rows (ids into key k's table) and their gradient rows (rows.size() x cols).
  // Only these rows travel and only they change. Ids may repeat (their rows add).
  [[nodiscard]] Handle push_rows(std::size_t k, std::span<const std::int64_t> rows, std::span<const float> values) {
    const ps::Key& key = sparse_key(k, rows, "push_rows");
    if (values.size() != rows.size() * key.cols)
      throw_error<ValueError>("ParameterServer::push_rows on worker rank ", rank(), ": key '", key.name, "' has ", key.cols,
                              " columns, so ", rows.size(), " rows need ", rows.size() * key.cols, " values, got ",
                              values.size());
    Handle h = begin_handle();
    for (std::size_t pi : placement_.pieces_of(k)) {
      const ps::Piece& p = placement_.pieces()[pi];
      std::vector<std::byte> buf;
      std::size_t n = 0;
      for (std::int64_t r : rows) n += in_piece(r, p);
      if (n == 0) continue;
      buf.resize(n * sizeof(std::int64_t) + n * key.cols * sizeof(float));
      auto* ids = reinterpret_cast<std::int64_t*>(buf.data());
      auto* vals = reinterpret_cast<float*>(buf.data() + n * sizeof(std::int64_t));
      std::size_t j = 0;
      for (std::size_t i = 0; i < rows.size(); ++i) {
        if (!in_piece(rows[i], p)) continue;
        ids[j] = rows[i];
        std::memcpy(vals + j * key.cols, values.data() + i * key.cols, key.cols * sizeof(float));
        ++j;
      }
      h.slots_.push_back(tagged(issue(p.server, Kind::push_rows, k, p.begin, n, nullptr, 0, nullptr, 0, std::move(buf))));
    }
    return h;
  }
  // Sparse: out (rows.size() x cols) gets the listed rows of key k's table.
  [[nodiscard]] Handle pull_rows(std::size_t k, std::span<const std::int64_t> rows, std::span<float> out) {
    const ps::Key& key = sparse_key(k, rows, "pull_rows");
    if (out.size() != rows.size() * key.cols)
      throw_error<ValueError>("ParameterServer::pull_rows on worker rank ", rank(), ": key '", key.name, "' has ", key.cols,
                              " columns, so ", rows.size(), " rows need room for ", rows.size() * key.cols,
                              " values, got ", out.size());
    Handle h = begin_handle();
    for (std::size_t pi : placement_.pieces_of(k)) {
      const ps::Piece& p = placement_.pieces()[pi];
      std::vector<std::byte> buf;
      std::vector<std::size_t> where;
      for (std::size_t i = 0; i < rows.size(); ++i)
        if (in_piece(rows[i], p)) where.push_back(i);
      if (where.empty()) continue;
      buf.resize(where.size() * sizeof(std::int64_t));
      auto* ids = reinterpret_cast<std::int64_t*>(buf.data());
      for (std::size_t j = 0; j < where.size(); ++j) ids[j] = rows[where[j]];
      const std::size_t s = issue(p.server, Kind::pull_rows, k, p.begin, where.size(), nullptr, 0, out.data(),
                                  where.size() * key.cols, std::move(buf));
      worker_->slots[s].scatter = std::move(where);
      worker_->slots[s].cols = key.cols;
      h.slots_.push_back(tagged(s));
    }
    return h;
  }

  // Registry helpers (dense keys named as the registry's parameters, in
  // order). The _async forms return one handle for every parameter's
  // requests: the gradients must stay unchanged (push) and the values
  // unread (pull) until its wait().
  [[nodiscard]] Handle push_async(const nn::Registry<float>& reg) {
    Handle all;
    for (const Parameter<float>* p : reg)
      all += push(key(p->name), std::span<const float>(p->grad.data(), static_cast<std::size_t>(p->numel())));
    return all;
  }
  [[nodiscard]] Handle pull_async(nn::Registry<float>& reg, bool synced = false) {
    Handle all;
    for (Parameter<float>* p : reg)
      all += pull(key(p->name), std::span<float>(p->value.data(), static_cast<std::size_t>(p->numel())), synced);
    return all;
  }
  void push(const nn::Registry<float>& reg) { push_async(reg).wait(); }
  void pull(nn::Registry<float>& reg, bool synced = false) { pull_async(reg, synced).wait(); }

  // Ends this worker's step: its clock advances on every server (after the
  // step's pushes, which the servers see first: one sender's headers stay in order).
  // clock_async: the same without waiting for the servers' answers (a server
  // handles it before any later request of this worker; the handle reports errors).
  void clock() { clock_async().wait(); }
  [[nodiscard]] Handle clock_async() {
    require_worker("clock");
    ++worker_->clock;
    Handle h = begin_handle();
    for (int s = 0; s < placement_.servers(); ++s)
      h.slots_.push_back(tagged(issue(s, Kind::clock, 0, 0, 0, nullptr, 0, nullptr, 0)));
    return h;
  }
  std::int64_t worker_clock() const {
    require_worker("worker_clock");
    return worker_->clock;
  }
  // This worker is done: the servers stop counting it (call once, at the end).
  void leave() {
    require_worker("leave");
    if (worker_->left) return;
    worker_->left = true;
    Handle h = begin_handle();
    for (int s = 0; s < placement_.servers(); ++s) h.slots_.push_back(tagged(issue(s, Kind::leave, 0, 0, 0, nullptr, 0, nullptr, 0)));
    h.wait();
  }
  // Runs fn(*this) on a worker rank, then leave(). If fn throws, the servers
  // are told (dropped under SSP/ASP, a failed step under BSP) and the error
  // comes back as text instead of an exception: on thread ranks an exception
  // leaving the rank's function would abort every rank of the run.
  template <class F>
  std::optional<std::string> run_worker(F&& fn) {
    require_worker("run_worker");
    std::string why;
    try {
      fn(*this);
      leave();
      return std::nullopt;
    } catch (const std::exception& e) {
      why = e.what();
    } catch (...) {
      why = "unknown exception";
    }
    report_failure(why);
    return why;
  }
  // Tells every server this worker is dead (best effort, bounded by the timeout).
  void report_failure(const std::string& why) {
    require_worker("report_failure");
    if (worker_->left) return;
    worker_->left = true;
    const std::string text = why.substr(0, ps::detail::max_error_text);
    for (int s = 0; s < placement_.servers(); ++s) {
      Header h{Kind::fail, 0, 0, 0, worker_->clock, 0, 0, text.size()};
      const int peer = roles_.servers[static_cast<std::size_t>(s)];
      auto a = t_.isend(&h, sizeof h, peer, base_);
      auto b = t_.isend(text.data(), text.size(), peer, base_ + 1);
      const auto dl = comm::deadline_after(std::chrono::milliseconds(std::min<long long>(o_.timeout.count(), 5000)));
      ps::detail::wait_idle(t_, a, dl);
      ps::detail::wait_idle(t_, b, dl);
    }
  }

 private:
  enum class WorkerState : std::uint8_t { live, left, dropped };

  struct Parked {
    int worker = 0;  // index
    int peer = 0;    // rank
    Header h;
    std::vector<std::byte> payload;
  };
  struct Outgoing {
    typename Transport::Request req;
    std::vector<std::byte> buf;
    int worker = 0;
    comm::Deadline deadline;
  };
  struct Server {
    int index = 0;
    std::vector<ps::detail::PieceState> pieces;
    std::vector<int> piece_of_key;
    std::vector<std::int64_t> clocks;
    std::vector<WorkerState> state;
    std::vector<comm::Clock::time_point> last_heard;
    std::vector<int> parked_count;
    std::vector<Parked> parked;
    std::vector<Outgoing> outgoing;
    std::int64_t bsp_step = 0;  // BSP: the step whose gradients accumulate
    std::string broken;         // BSP after a worker died: every request fails with this
    std::vector<float> scratch;
    // Buffers of finished requests and sent replies, reused by size: in steady
    // state a request or a reply allocates and zeroes nothing (a fresh 1 MiB
    // vector costs a zeroing pass, and page faults, per push and per pull).
    std::vector<std::vector<std::byte>> spare;
    std::size_t spare_bytes = 0, spare_limit = 0;
    std::atomic<std::uint64_t> served{0};
    mutable std::mutex mu;  // guards what other threads read: error, reads, drops
    std::string error;
    std::vector<ps::ReadRecord> reads;
    std::vector<ps::DropRecord> drops;
  };
  struct Slot {
    bool busy = false;
    std::uint64_t gen = 0;  // which request occupies it (handles hold slot and generation)
    std::uint32_t id = 0;
    int server = 0;
    Kind kind{};
    std::size_t key = 0;
    Header h;
    std::vector<std::byte> out;  // packed payload (sparse)
    std::vector<std::byte> in;   // reply staging
    float* dst = nullptr;
    std::size_t dst_n = 0;
    std::vector<std::size_t> scatter;  // pull_rows: output row of each received row
    std::size_t cols = 1;
    typename Transport::Request hreq, dreq, rreq;
  };
  struct Beat {
    Header h;
    typename Transport::Request req;
  };
  struct Worker {
    std::deque<Beat> beats;  // heartbeats in flight (their headers must outlive the sends)
    int index = 0;
    std::int64_t clock = 0;
    bool left = false;
    std::uint32_t next_id = 0;
    std::deque<Slot> slots;  // stable addresses: pending sends point into them
    std::vector<int> outstanding;  // per server
    std::string deferred;          // error of a handle dropped unwaited
  };

  void require_server(const char* what) const {
    if (!server_)
      throw_error<ValueError>("ParameterServer::", what, " called on rank ", t_.rank(), ", a worker (servers: ",
                              comm::detail::rank_list(roles_.servers), ")");
  }
  void require_worker(const char* what) const {
    if (!worker_)
      throw_error<ValueError>("ParameterServer::", what, " called on rank ", t_.rank(), ", a server (workers: ",
                              comm::detail::rank_list(roles_.workers), ")");
  }
  const ps::Key& dense_key(std::size_t k, std::size_t n, const char* what) const {
    require_worker(what);
    if (k >= placement_.keys().size())
      throw_error<ValueError>("ParameterServer::", what, " on worker rank ", rank(), ": no key ", k, " (",
                              placement_.keys().size(), " keys)");
    const ps::Key& key = placement_.keys()[k];
    if (key.sparse)
      throw_error<ValueError>("ParameterServer::", what, " on worker rank ", rank(), ": key '", key.name,
                              "' is a sparse table: use push_rows / pull_rows");
    if (n != key.numel())
      throw_error<ValueError>("ParameterServer::", what, " on worker rank ", rank(), ": key '", key.name, "' has ",
                              key.numel(), " elements, got a buffer of ", n);
    return key;
  }
  const ps::Key& sparse_key(std::size_t k, std::span<const std::int64_t> rows, const char* what) const {
    require_worker(what);
    if (k >= placement_.keys().size())
      throw_error<ValueError>("ParameterServer::", what, " on worker rank ", rank(), ": no key ", k);
    const ps::Key& key = placement_.keys()[k];
    if (!key.sparse)
      throw_error<ValueError>("ParameterServer::", what, " on worker rank ", rank(), ": key '", key.name,
                              "' is dense: use push / pull");
    for (std::int64_t r : rows)
      if (r < 0 || static_cast<std::size_t>(r) >= key.rows)
        throw_error<ValueError>("ParameterServer::", what, " on worker rank ", rank(), ": row ", r, " of key '", key.name,
                                "' is outside its ", key.rows, " rows");
    return key;
  }
  static bool in_piece(std::int64_t r, const ps::Piece& p) {
    return static_cast<std::size_t>(r) >= p.begin && static_cast<std::size_t>(r) < p.end;
  }
  Handle begin_handle() {
    if (!worker_->deferred.empty()) {
      std::string e = std::move(worker_->deferred);
      worker_->deferred.clear();
      throw PsError(e);
    }
    Handle h;
    h.ps_ = this;
    return h;
  }
  std::string server_name(int s) const {
    return "server rank " + std::to_string(roles_.servers[static_cast<std::size_t>(s)]) + " (holding " +
           placement_.held_by(s) + ")";
  }

  // Sends one request to server s and posts the receive of its reply.
  std::size_t issue(int s, Kind kind, std::size_t k, std::size_t begin, std::size_t end, const void* payload,
                    std::size_t payload_bytes, float* dst, std::size_t dst_n, std::vector<std::byte> packed = {},
                    std::uint32_t synced = 0) {
    Worker& w = *worker_;
    if (w.outstanding.empty()) w.outstanding.assign(static_cast<std::size_t>(placement_.servers()), 0);
    if (w.left && kind != Kind::leave)
      throw_error<PsError>("ParameterServer: worker rank ", rank(), " has left; ", ps::detail::kind_name(kind),
                           " is no longer possible");
    // Bounded in-flight requests per server (the thread transport's mailbox holds 64 messages).
    while (w.outstanding[static_cast<std::size_t>(s)] >= 24) {
      for (std::size_t i = 0; i < w.slots.size(); ++i)
        if (w.slots[i].busy && w.slots[i].server == s) {
          try {
            complete(i, w.slots[i].gen);
          } catch (const std::exception& e) {
            if (w.deferred.empty()) w.deferred = e.what();
          }
          break;
        }
    }
    std::size_t i = 0;
    while (i < w.slots.size() && w.slots[i].busy) ++i;
    if (i == w.slots.size()) {
      if (w.slots.size() >= ps::detail::reply_ids)
        throw_error<PsError>("ParameterServer: worker rank ", rank(), " has ", ps::detail::reply_ids,
                             " requests in flight; wait on handles");
      w.slots.emplace_back();
    }
    Slot& sl = w.slots[i];
    sl.busy = true;
    ++sl.gen;
    sl.id = static_cast<std::uint32_t>(i);
    sl.server = s;
    sl.kind = kind;
    sl.key = k;
    sl.dst = dst;
    sl.dst_n = dst_n;
    sl.scatter.clear();
    sl.cols = 1;
    sl.out = std::move(packed);
    if (!sl.out.empty()) {
      payload = sl.out.data();
      payload_bytes = sl.out.size();
    }
    sl.h = Header{kind, static_cast<std::uint32_t>(k), begin, end, w.clock, sl.id, synced, payload_bytes};
    const int peer = roles_.servers[static_cast<std::size_t>(s)];
    const std::size_t reply_payload = std::max(dst_n * sizeof(float), ps::detail::max_error_text);
    sl.in.resize(sizeof(Reply) + reply_payload);
    sl.rreq = t_.irecv(sl.in.data(), sl.in.size(), peer, reply_tag(sl.id));
    sl.hreq = t_.isend(&sl.h, sizeof(Header), peer, base_);
    sl.dreq = payload_bytes ? t_.isend(payload, payload_bytes, peer, base_ + 1) : typename Transport::Request{};
    ++w.outstanding[static_cast<std::size_t>(s)];
    return i;
  }
  comm::Tag reply_tag(std::uint32_t id) const { return base_ + 16 + id; }
  std::pair<std::size_t, std::uint64_t> tagged(std::size_t i) const { return {i, worker_->slots[i].gen}; }

  // Waits for slot i's reply; copies a pull's values out; throws on an error reply.
  void complete(std::size_t i, std::uint64_t gen) {
    Worker& w = *worker_;
    Slot& sl = w.slots[i];
    if (!sl.busy || sl.gen != gen) return;  // completed already (to make room for another request)
    struct Free {
      Worker& w;
      Slot& sl;
      ~Free() {
        sl.busy = false;
        --w.outstanding[static_cast<std::size_t>(sl.server)];
      }
    } free{w, sl};
    const auto dl = comm::deadline_after(o_.timeout);
    // "pull of key 'w'"; a clock or a leave concerns no key
    const std::string what = std::string(ps::detail::kind_name(sl.kind)) +
                             (sl.kind == Kind::clock || sl.kind == Kind::leave
                                  ? std::string()
                                  : " of key '" + placement_.keys()[sl.key].name + "'");
    auto fail = [&](comm::WaitStatus st, const char* stage) {
      std::string why = st == comm::WaitStatus::timed_out ? "no answer within " + ps::detail::seconds(o_.timeout)
                                                           : ps::detail::status_text(st) + ": " + t_.failure();
      throw_error<PsError>("ParameterServer: worker rank ", rank(), ": ", what, " at clock ", sl.h.clock, " (", stage,
                           ") failed: ", server_name(sl.server), ": ", why);
    };
    // a transport that reports the failure itself (MPI, once the server's process died) still names the server
    auto await = [&](typename Transport::Request& r, const char* stage) {
      comm::WaitStatus st;
      try {
        // in slices of worker_timeout / 4: a worker waiting here (a parked read, a slow server) tells the
        // other servers it is alive, or they would take its silence for death
        for (;;) {
          const auto slice = comm::deadline_after(std::max<std::chrono::milliseconds>(
              std::chrono::milliseconds(1), o_.worker_timeout / 4));
          st = ps::detail::wait_idle(t_, r, std::min(dl, slice));
          if (st != comm::WaitStatus::timed_out || comm::Clock::now() >= dl) break;
          heartbeat(sl.server);
        }
      } catch (const std::exception& e) {
        throw_error<PsError>("ParameterServer: worker rank ", rank(), ": ", what, " at clock ", sl.h.clock, " (", stage,
                             ") failed: ", server_name(sl.server), ": ", e.what());
      }
      if (st != comm::WaitStatus::done) fail(st, stage);
    };
    await(sl.hreq, "sending the request");
    await(sl.dreq, "sending the payload");
    await(sl.rreq, "waiting for the reply");
    Reply rp;
    std::memcpy(&rp, sl.in.data(), sizeof rp);
    const std::byte* body = sl.in.data() + sizeof(Reply);
    if (rp.status != 0) {
      throw_error<PsError>("ParameterServer: worker rank ", rank(), ": ", what, " refused by server rank ", roles_.servers[static_cast<std::size_t>(sl.server)], ": ",
                           std::string(reinterpret_cast<const char*>(body), rp.bytes));
    }
    if (sl.kind == Kind::pull) {
      if (rp.bytes != sl.dst_n * sizeof(float))
        throw_error<PsError>("ParameterServer: worker rank ", rank(), ": pull of key '", placement_.keys()[sl.key].name,
                             "': server rank ", roles_.servers[static_cast<std::size_t>(sl.server)], " sent ", rp.bytes,
                             " bytes, expected ", sl.dst_n * sizeof(float));
      std::memcpy(sl.dst, body, rp.bytes);
    } else if (sl.kind == Kind::pull_rows) {
      const std::size_t c = sl.cols;
      const auto* v = reinterpret_cast<const float*>(body);
      for (std::size_t j = 0; j < sl.scatter.size(); ++j) std::memcpy(sl.dst + sl.scatter[j] * c, v + j * c, c * sizeof(float));
    }
  }

  // ---- construction: every rank takes the same free tag range ----
  // Rank 0 gathers each rank's live slots and last slot (Options::tag_base + 2),
  // picks the first slot after the last one given out that no rank holds, and
  // sends it back (+ 3); every rank then holds it until its instance is destroyed.
  // Also a barrier: no worker sends a request before every server rank has
  // built this instance (so, used in sequence, the previous one has finished).
  void agree_on_tags() {
    const std::size_t n_slots = std::min<std::size_t>(64, (comm::max_tag - o_.tag_base) / ps::detail::tag_span);
    ps::detail::SlotBook& book = ps::detail::slot_book();
    ps::detail::SlotVote mine;
    {
      std::lock_guard lock(book.mu);
      // the agreement's own tags must not be tags a live instance uses (its base + 0, + 1, + 16 on; + 2
      // and + 3 of a range are free for this). A tag_base a multiple of 1040 away from every live
      // instance's never clashes; another one is refused here, before anything is sent
      for (comm::Tag h : book.held)
        for (comm::Tag v : {o_.tag_base + 2, o_.tag_base + 3})
          if (v == h || v == h + 1 || (v >= h + 16 && v < h + ps::detail::tag_span))
            throw_error<ValueError>("ParameterServer on rank ", rank(), ": Options::tag_base ", o_.tag_base,
                                    " puts the construction's tags on tags [", h, ", ", h + ps::detail::tag_span,
                                    ") that a live instance uses; choose a tag_base outside every live instance's "
                                    "range, or the same one");
      mine = {book.live_mask(o_.tag_base, n_slots), book.last_slot(o_.tag_base, n_slots)};
    }
    const comm::Tag vote_tag = o_.tag_base + 2, answer_tag = o_.tag_base + 3;
    const auto dl = comm::deadline_after(o_.timeout);
    const int p = t_.size();
    std::int64_t slot = -1;
    auto fail = [&](int peer, comm::WaitStatus st, const char* what) {
      throw_error<PsError>("ParameterServer<", C::name, "> construction on rank ", rank(), ": ", what, " rank ", peer,
                           " ", st == comm::WaitStatus::timed_out ? "within " + ps::detail::seconds(o_.timeout)
                                                                   : "(" + ps::detail::status_text(st) + ": " + t_.failure() + ")",
                           " (every rank of the transport builds each ParameterServer, in the same order)");
    };
    if (rank() == 0) {
      std::vector<ps::detail::SlotVote> votes(static_cast<std::size_t>(p));
      std::vector<typename Transport::Request> rq(static_cast<std::size_t>(p));
      for (int q = 1; q < p; ++q)
        rq[static_cast<std::size_t>(q)] = t_.irecv(&votes[static_cast<std::size_t>(q)], sizeof(ps::detail::SlotVote), q, vote_tag);
      votes[0] = mine;
      for (int q = 1; q < p; ++q)
        if (auto st = ps::detail::wait_idle(t_, rq[static_cast<std::size_t>(q)], dl); st != comm::WaitStatus::done)
          fail(q, st, "no word from");
      std::uint64_t live = 0;
      std::int64_t last = -1;
      for (const auto& v : votes) {
        live |= v.live;
        last = std::max(last, v.last);
      }
      for (std::size_t k = 1; k <= n_slots && slot < 0; ++k) {
        const std::size_t c = static_cast<std::size_t>(last + static_cast<std::int64_t>(k)) % n_slots;
        if (!(live >> c & 1)) slot = static_cast<std::int64_t>(c);
      }
      std::vector<typename Transport::Request> sq;
      for (int q = 1; q < p; ++q) sq.push_back(t_.isend(&slot, sizeof slot, q, answer_tag));
      for (std::size_t i = 0; i < sq.size(); ++i)
        if (auto st = ps::detail::wait_idle(t_, sq[i], dl); st != comm::WaitStatus::done)
          fail(static_cast<int>(i) + 1, st, "could not answer");
    } else {
      auto sr = t_.isend(&mine, sizeof mine, 0, vote_tag);
      auto rr = t_.irecv(&slot, sizeof slot, 0, answer_tag);
      if (auto st = ps::detail::wait_idle(t_, sr, dl); st != comm::WaitStatus::done) fail(0, st, "no answer from");
      if (auto st = ps::detail::wait_idle(t_, rr, dl); st != comm::WaitStatus::done) fail(0, st, "no answer from");
    }
    if (slot < 0)
      throw_error<PsError>("ParameterServer<", C::name, "> on rank ", rank(), ": all ", n_slots,
                           " tag ranges above Options::tag_base ", o_.tag_base, " are held by live instances on this "
                           "transport; destroy one first or lower tag_base (each instance takes ", ps::detail::tag_span,
                           " tags)");
    base_ = o_.tag_base + static_cast<comm::Tag>(slot) * ps::detail::tag_span;
    std::lock_guard lock(book.mu);
    book.held.push_back(base_);
    book.last = base_;
  }

  // Tells every server but `waiting_on` that this worker is alive (no reply).
  // Never after leave() or a failure report: one sender's messages on one tag
  // arrive in order, so every beat reaches a server before the leave, and no
  // beat is left for a later instance on the same tags.
  void heartbeat(int waiting_on) {
    Worker& w = *worker_;
    if (w.left) return;
    while (!w.beats.empty() && t_.test(w.beats.front().req)) w.beats.pop_front();
    if (w.beats.size() > 8 * static_cast<std::size_t>(placement_.servers())) return;  // a server takes none: it will not miss more
    for (int s = 0; s < placement_.servers(); ++s) {
      if (s == waiting_on) continue;
      Beat& b = w.beats.emplace_back();
      b.h = Header{Kind::alive, 0, 0, 0, w.clock, 0, 0, 0};
      b.req = t_.isend(&b.h, sizeof(Header), roles_.servers[static_cast<std::size_t>(s)], base_);
    }
  }

  // ---- the server's progress loop ----
  // The next request header (a header, its sender), without leaving a receive
  // posted when it returns (see the top of this file): thread ranks sleep on
  // their doorbell in an any-source wait (a thread receive only takes a
  // message when tested); others probe, nap, and receive from the sender found.
  comm::WaitStatus next_header(Header& h, int& peer, comm::Deadline dl, comm::Clock::time_point& last_request) {
    if constexpr (comm::TracksArrival<Transport>) {
      auto req = t_.irecv_any(&h, sizeof h, base_);
      const auto st = t_.wait(req, dl);
      if (st == comm::WaitStatus::done) peer = req.peer();
      return st;
    } else {
      std::chrono::microseconds nap{0};
      for (int i = 0;; ++i) {
        if (auto pr = t_.iprobe(base_)) {
          if (pr->bytes != sizeof h)
            throw_error<PsError>("a ", pr->bytes, "-byte message from rank ", pr->peer, " on the request tag ", base_,
                                 " (a request header has ", sizeof h, " bytes): another user of tags [", base_, ", ",
                                 base_ + ps::detail::tag_span, ") on this transport?");
          peer = pr->peer;
          auto req = t_.irecv(&h, sizeof h, peer, base_);
          const auto st = ps::detail::wait_idle(t_, req, comm::deadline_after(o_.worker_timeout));
          last_request = comm::Clock::now();
          return st;
        }
        const auto now = comm::Clock::now();
        if (now >= dl) return comm::WaitStatus::timed_out;
        if (i < 64) {
          std::this_thread::yield();
          continue;
        }
        const auto cap = now - last_request > std::chrono::seconds(1) ? std::chrono::microseconds(10'000)
                                                                       : std::chrono::microseconds(1'000);
        nap = std::min<std::chrono::microseconds>(cap, nap + std::chrono::microseconds(20));
        std::this_thread::sleep_for(std::min<comm::Duration>(nap, dl - now));
      }
    }
  }

  void serve_loop() {
    Server& S = *server_;
    Header h;
    auto last_request = comm::Clock::now();
    const auto slice = std::chrono::milliseconds(50);
    for (;;) {
      progress_outgoing();
      if (done_serving()) {
        // every worker left or was dropped: deliver the last replies, then stop
        while (!S.outgoing.empty() && !stop_.load()) {
          std::this_thread::sleep_for(std::chrono::microseconds(200));
          progress_outgoing();
        }
        break;
      }
      if (stop_.load()) break;
      int peer = -1;
      // While pushes are held, only look for a waiting request: with none,
      // apply them now rather than at the next read.
      const bool held = holds_pushes();
      const auto st = next_header(h, peer, comm::Clock::now() + (held ? comm::Duration{} : comm::Duration{slice}),
                                  last_request);
      if (held && st != comm::WaitStatus::done) flush_all();
      if (st == comm::WaitStatus::timed_out) {
        if (!held) check_deadlines();
        continue;
      }
      if (st == comm::WaitStatus::peer_gone) {
        // thread ranks: every other rank has returned, so no request can come any more
        for (std::size_t w = 0; w < S.state.size(); ++w)
          if (S.state[w] == WorkerState::live) drop_worker(static_cast<int>(w), "it returned without leave()");
        continue;
      }
      if (st != comm::WaitStatus::done) {
        // thread transport: a rank failed outside the protocol, every wait now ends at once
        throw_error<PsError>("receiving requests: ", ps::detail::status_text(st), ": ", t_.failure());
      }
      const Header got = h;
      const int w = roles_.worker_index(peer);
      if (w < 0 && got.kind == Kind::alive) continue;  // a stray heartbeat of an earlier instance: harmless
      if (w < 0)
        throw_error<PsError>("a request from rank ", peer, ", which is not a worker (workers: ",
                             comm::detail::rank_list(roles_.workers), ")");
      std::vector<std::byte> payload = take_buffer(got.bytes);
      if (got.bytes) {
        auto d = t_.irecv(payload.data(), payload.size(), peer, base_ + 1);
        if (auto s2 = ps::detail::wait_idle(t_, d, comm::deadline_after(o_.worker_timeout)); s2 != comm::WaitStatus::done) {
          drop_worker(w, "its " + std::string(ps::detail::kind_name(got.kind)) + " payload did not arrive (" +
                             ps::detail::status_text(s2) + ")");
          continue;
        }
      }
      S.last_heard[static_cast<std::size_t>(w)] = comm::Clock::now();
      handle(w, peer, got, payload);
      give_back(std::move(payload));  // unless a parked read or held push kept it
      S.served.fetch_add(1, std::memory_order_relaxed);
      check_deadlines();
    }
    flush_all();  // the final values (server_values) include every accepted push
  }

  bool done_serving() const {
    for (WorkerState s : server_->state)
      if (s == WorkerState::live) return false;
    return true;
  }

  std::int64_t min_clock() const {
    std::int64_t m = std::numeric_limits<std::int64_t>::max();
    for (std::size_t i = 0; i < server_->clocks.size(); ++i)
      if (server_->state[i] == WorkerState::live) m = std::min(m, server_->clocks[i]);
    return m;
  }
  std::int64_t max_clock() const {
    std::int64_t m = 0;
    for (std::size_t i = 0; i < server_->clocks.size(); ++i)
      if (server_->state[i] == WorkerState::live) m = std::max(m, server_->clocks[i]);
    return m;
  }
  std::size_t live_workers() const {
    std::size_t n = 0;
    for (WorkerState s : server_->state) n += s == WorkerState::live;
    return n;
  }

  void reply(int w, int peer, std::uint32_t id, int status, const void* body, std::size_t bytes) {
    reply_with(w, peer, id, status, bytes, [&](std::byte* d) {
      if (bytes) std::memcpy(d, body, bytes);
    });
  }
  // A reply whose `bytes` of body fill(d) writes in place.
  template <class Fill>
  void reply_with(int w, int peer, std::uint32_t id, int status, std::size_t bytes, Fill&& fill) {
    Outgoing o;
    o.buf = take_buffer(sizeof(Reply) + bytes);
    Reply rp{id, status, min_clock(), bytes};
    std::memcpy(o.buf.data(), &rp, sizeof rp);
    fill(o.buf.data() + sizeof rp);
    o.worker = w;
    o.deadline = comm::deadline_after(o_.worker_timeout);
    o.req = t_.isend(o.buf.data(), o.buf.size(), peer, reply_tag(id));
    server_->outgoing.push_back(std::move(o));
  }
  void reply_error(int w, int peer, const Header& h, const std::string& text) {
    const std::string t = text.substr(0, ps::detail::max_error_text);
    reply(w, peer, h.id, 1, t.data(), t.size());
  }

  void progress_outgoing() {
    auto& out = server_->outgoing;
    for (std::size_t i = 0; i < out.size();) {
      bool done = false;
      try {
        done = t_.test(out[i].req);
      } catch (const std::exception& e) {
        drop_worker(out[i].worker, std::string("a reply to it failed: ") + e.what());
        done = true;
      }
      if (!done && comm::Clock::now() > out[i].deadline) {
        const int w = out[i].worker;
        t_.cancel(out[i].req);
        drop_worker(w, "it did not take a reply within " + ps::detail::seconds(o_.worker_timeout));
        done = true;
      }
      if (done) {
        give_back(std::move(out[i].buf));
        out[i] = std::move(out.back());
        out.pop_back();
      } else {
        ++i;
      }
    }
  }

  void check_deadlines() {
    Server& S = *server_;
    const auto now = comm::Clock::now();
    for (std::size_t w = 0; w < S.state.size(); ++w)
      if (S.state[w] == WorkerState::live && S.parked_count[w] == 0 && now - S.last_heard[w] > o_.worker_timeout)
        drop_worker(static_cast<int>(w), "it sent nothing for " + ps::detail::seconds(o_.worker_timeout) +
                                             " while no request of it was waiting here (hung or killed)");
  }

  void drop_worker(int w, const std::string& why) {
    Server& S = *server_;
    const auto wi = static_cast<std::size_t>(w);
    if (S.state[wi] != WorkerState::live) return;
    S.state[wi] = WorkerState::dropped;
    const int rank_w = roles_.workers[wi];
    {
      std::lock_guard lock(S.mu);
      S.drops.push_back(ps::DropRecord{rank_w, S.clocks[wi], why});
    }
    if constexpr (C::aggregate_steps) {
      if (S.broken.empty()) {
        S.broken = "worker rank " + std::to_string(rank_w) + " died at clock " + std::to_string(S.clocks[wi]) + ": " +
                   why + "; under BSP no step can complete without its gradients";
        if (o_.log_to_stderr) std::fprintf(stderr, "ParameterServer<BSP>: server rank %d: %s\n", rank(), S.broken.c_str());
      }
      // every parked request fails now; later ones fail as they come
      std::vector<Parked> parked = std::move(S.parked);
      S.parked.clear();
      for (Parked& p : parked) {
        --S.parked_count[static_cast<std::size_t>(p.worker)];
        if (S.state[static_cast<std::size_t>(p.worker)] != WorkerState::dropped)
          reply_error(p.worker, p.peer, p.h, "server rank " + std::to_string(rank()) + ": " + S.broken);
      }
      {
        std::lock_guard lock(S.mu);
        if (S.error.empty()) S.error = "ParameterServer<BSP>: server rank " + std::to_string(rank()) + ": " + S.broken;
      }
    } else {
      if (o_.log_to_stderr)
        std::fprintf(stderr,
                     "ParameterServer<%s>: server rank %d dropped worker rank %d at clock %lld: %s; training continues "
                     "with %zu workers\n",
                     C::name, rank(), rank_w, static_cast<long long>(S.clocks[wi]), why.c_str(), live_workers());
      // its parked requests are void; others may now be answerable
      for (std::size_t i = 0; i < S.parked.size();) {
        if (S.parked[i].worker == w) {
          --S.parked_count[wi];
          S.parked.erase(S.parked.begin() + static_cast<std::ptrdiff_t>(i));
        } else {
          ++i;
        }
      }
      serve_parked();
    }
  }

  ps::detail::PieceState* piece(const Header& h, std::string& err) {
    Server& S = *server_;
    if (h.key >= placement_.keys().size()) {
      err = "no key " + std::to_string(h.key);
      return nullptr;
    }
    const int i = h.key < S.piece_of_key.size() ? S.piece_of_key[h.key] : -1;
    if (i < 0) {
      err = "key '" + placement_.keys()[h.key].name + "' has no piece on this server (it holds " +
            placement_.held_by(S.index) + ")";
      return nullptr;
    }
    ps::detail::PieceState& p = S.pieces[static_cast<std::size_t>(i)];
    return &p;
  }

  // payload: moved from when a read is parked; else the caller reuses it.
  void handle(int w, int peer, const Header& h, std::vector<std::byte>& payload) {
    Server& S = *server_;
    const auto wi = static_cast<std::size_t>(w);
    const std::string who = "worker rank " + std::to_string(peer);
    if (h.kind == Kind::alive) return;  // last_heard is updated: nothing else to do, no reply
    if (h.kind == Kind::fail) {
      drop_worker(w, "it failed: " + std::string(reinterpret_cast<const char*>(payload.data()), payload.size()));
      return;
    }
    if (S.state[wi] == WorkerState::dropped) {
      reply_error(w, peer, h, "server rank " + std::to_string(rank()) + ": " + who +
                                  " was dropped earlier (see the server's log); it can no longer take part");
      return;
    }
    if (!S.broken.empty()) {
      reply_error(w, peer, h, "server rank " + std::to_string(rank()) + ": " + S.broken);
      if (h.kind == Kind::leave) S.state[wi] = WorkerState::left;
      return;
    }
    switch (h.kind) {
      case Kind::clock: {
        S.clocks[wi] = h.clock;
        reply(w, peer, h.id, 0, nullptr, 0);
        advance();
        return;
      }
      case Kind::leave: {
        S.state[wi] = WorkerState::left;
        reply(w, peer, h.id, 0, nullptr, 0);
        advance();
        return;
      }
      case Kind::push:
      case Kind::push_rows: {
        std::string err;
        ps::detail::PieceState* p = piece(h, err);
        if (p && !check_push(*p, h, payload, err)) p = nullptr;
        if (!p) {
          reply_error(w, peer, h, "server rank " + std::to_string(rank()) + ": " + ps::detail::kind_name(h.kind) + " from " +
                                      who + ": " + err);
          return;
        }
        if constexpr (C::aggregate_steps) {
          if (h.clock != S.bsp_step) {
            reply_error(w, peer, h, "server rank " + std::to_string(rank()) + ": " + who + " pushed key '" +
                                        placement_.keys()[h.key].name + "' for step " + std::to_string(h.clock) +
                                        " while the servers are at step " + std::to_string(S.bsp_step) +
                                        " (under BSP: pull, compute, push, clock() each step)");
            return;
          }
        }
        if constexpr (!C::aggregate_steps) {
          if (!p->sparse) {
            // Held, not applied: pushes that arrive together (the server was
            // busy, or several workers finished at once) become one step of
            // their sum; a read of the piece, or an empty queue, applies them.
            if (p->pending_pushes++ == 0)
              p->pending = std::move(payload);
            else
              add_floats(reinterpret_cast<float*>(p->pending.data()), payload.data(), p->value.size());
          } else {
            accumulate(*p, h, payload);
            apply(*p, per_push_scale());
          }
        } else {
          accumulate(*p, h, payload);
        }
        reply(w, peer, h.id, 0, nullptr, 0);
        return;
      }
      case Kind::pull:
      case Kind::pull_rows: {
        std::string err;
        ps::detail::PieceState* p = piece(h, err);
        if (p && !check_pull(*p, h, payload, err)) p = nullptr;
        if (!p) {
          reply_error(w, peer, h, "server rank " + std::to_string(rank()) + ": " + ps::detail::kind_name(h.kind) + " from " +
                                      who + ": " + err);
          return;
        }
        if (readable(h)) {
          answer_pull(w, peer, h, payload);
        } else {
          ++S.parked_count[wi];
          S.parked.push_back(Parked{w, peer, h, std::move(payload)});
        }
        return;
      }
      default:
        reply_error(w, peer, h, "server rank " + std::to_string(rank()) + ": unknown request kind " +
                                    std::to_string(static_cast<unsigned>(h.kind)) + " from " + who);
    }
  }

  bool check_push(const ps::detail::PieceState& p, const Header& h, const std::vector<std::byte>& payload,
                  std::string& err) const {
    const ps::Key& k = placement_.keys()[h.key];
    if (!p.sparse) {
      if (h.kind != Kind::push || h.begin != p.begin || h.end != p.end || payload.size() != (p.end - p.begin) * sizeof(float)) {
        err = "key '" + k.name + "' piece [" + std::to_string(h.begin) + ":" + std::to_string(h.end) + ") with " +
              std::to_string(payload.size()) + " bytes does not match the piece held here [" + std::to_string(p.begin) +
              ":" + std::to_string(p.end) + ")";
        return false;
      }
      return true;
    }
    const std::size_t n = h.end;
    if (h.kind != Kind::push_rows || payload.size() != n * (sizeof(std::int64_t) + k.cols * sizeof(float))) {
      err = "sparse key '" + k.name + "': " + std::to_string(n) + " rows do not match " + std::to_string(payload.size()) +
            " bytes of payload";
      return false;
    }
    return rows_in_piece(p, payload.data(), n, err);
  }
  bool check_pull(const ps::detail::PieceState& p, const Header& h, const std::vector<std::byte>& payload,
                  std::string& err) const {
    const ps::Key& k = placement_.keys()[h.key];
    if (!p.sparse) {
      if (h.kind != Kind::pull || h.begin != p.begin || h.end != p.end) {
        err = "key '" + k.name + "' piece [" + std::to_string(h.begin) + ":" + std::to_string(h.end) +
              ") does not match the piece held here";
        return false;
      }
      return true;
    }
    if (h.kind != Kind::pull_rows || payload.size() != h.end * sizeof(std::int64_t)) {
      err = "sparse key '" + k.name + "': pull_rows payload does not hold " + std::to_string(h.end) + " row ids";
      return false;
    }
    return rows_in_piece(p, payload.data(), h.end, err);
  }
  bool rows_in_piece(const ps::detail::PieceState& p, const std::byte* ids_bytes, std::size_t n, std::string& err) const {
    for (std::size_t i = 0; i < n; ++i) {
      std::int64_t r;
      std::memcpy(&r, ids_bytes + i * sizeof r, sizeof r);
      if (r < static_cast<std::int64_t>(p.begin) || r >= static_cast<std::int64_t>(p.end)) {
        err = "row " + std::to_string(r) + " of '" + placement_.keys()[p.key].name + "' is not among the rows held here [" +
              std::to_string(p.begin) + ":" + std::to_string(p.end) + ")";
        return false;
      }
    }
    return true;
  }

  void accumulate(ps::detail::PieceState& p, const Header& h, const std::vector<std::byte>& payload) {
    if (!p.sparse) {
      add_floats(p.accum.data(), payload.data(), p.accum.size());
      p.pushed = true;
      return;
    }
    const std::size_t n = h.end, c = p.cols;
    const auto* vals = reinterpret_cast<const float*>(payload.data() + n * sizeof(std::int64_t));
    for (std::size_t i = 0; i < n; ++i) {
      std::int64_t r;
      std::memcpy(&r, payload.data() + i * sizeof r, sizeof r);
      const auto local = static_cast<std::size_t>(r) - p.begin;
      if (!p.touched[local]) {
        p.touched[local] = 1;
        p.touched_rows.push_back(static_cast<std::uint32_t>(local));
      }
      float* a = p.accum.data() + local * c;
      for (std::size_t j = 0; j < c; ++j) a[j] += vals[i * c + j];
    }
  }

  // Dense SSP/ASP: applies the held pushes of p as one step (their sum / workers).
  void flush(ps::detail::PieceState& p) {
    if (p.pending_pushes == 0) return;
    Server& S = *server_;
    ps::detail::apply_update(o_.update, p.value.data(), reinterpret_cast<const float*>(p.pending.data()),
                             per_push_scale(), p.s0.data(), p.s1.empty() ? nullptr : p.s1.data(), p.value.size(),
                             p.steps[0], S.scratch);
    p.pending_pushes = 0;
    give_back(std::move(p.pending));
    p.pending.clear();
  }
  // SSP/ASP: each worker's gradient counts 1/W (W = the worker count at start).
  float per_push_scale() const { return 1.0f / static_cast<float>(roles_.workers.size()); }
  // acc[i] += the i-th float of a payload, i < n.
  static void add_floats(float* acc, const std::byte* payload, std::size_t n) {
    const auto* g = reinterpret_cast<const float*>(payload);
    for (std::size_t i = 0; i < n; ++i) acc[i] += g[i];
  }
  bool holds_pushes() const {
    for (const ps::detail::PieceState& p : server_->pieces)
      if (p.pending_pushes) return true;
    return false;
  }
  void flush_all() {
    for (ps::detail::PieceState& p : server_->pieces) flush(p);
  }

  // Applies the accumulated gradient (times scale) and clears it; sparse: touched rows only.
  void apply(ps::detail::PieceState& p, float scale) {
    Server& S = *server_;
    float* s1 = p.s1.empty() ? nullptr : p.s1.data();
    if (!p.sparse) {  // a piece nobody pushed this step steps with a zero gradient, as DataParallel's unused parameters
      ps::detail::apply_update(o_.update, p.value.data(), p.accum.data(), scale, p.s0.data(), s1, p.accum.size(),
                               p.steps[0], S.scratch);
      std::fill(p.accum.begin(), p.accum.end(), 0.0f);
      p.pushed = false;
      return;
    }
    const std::size_t c = p.cols;
    std::sort(p.touched_rows.begin(), p.touched_rows.end());
    for (std::uint32_t local : p.touched_rows) {
      const std::size_t off = static_cast<std::size_t>(local) * c;
      ps::detail::apply_update(o_.update, p.value.data() + off, p.accum.data() + off, scale, p.s0.data() + off,
                               s1 ? s1 + off : nullptr, c, p.steps[local], S.scratch);
      std::fill(p.accum.begin() + static_cast<std::ptrdiff_t>(off), p.accum.begin() + static_cast<std::ptrdiff_t>(off + c),
                0.0f);
      p.touched[local] = 0;
    }
    p.touched_rows.clear();
  }

  // After a clock or a leave: BSP closes every step all live workers have
  // finished; then parked reads that have become readable are answered.
  void advance() {
    Server& S = *server_;
    if constexpr (C::aggregate_steps) {
      const std::size_t live = live_workers();
      while (live > 0 && min_clock() >= S.bsp_step + 1 && min_clock() != std::numeric_limits<std::int64_t>::max()) {
        const float scale = std::holds_alternative<ps::Aggregate>(o_.update) ? 1.0f : 1.0f / static_cast<float>(live);
        for (ps::detail::PieceState& p : S.pieces) apply(p, scale);
        ++S.bsp_step;
      }
    }
    serve_parked();
  }

  bool readable(const Header& h) const {
    const std::int64_t clock = h.clock;
    if constexpr (C::aggregate_steps) return server_->bsp_step >= clock;
    const std::int64_t m = min_clock();
    if (m == std::numeric_limits<std::int64_t>::max()) return true;
    return h.synced ? m >= clock : clock - m <= C::staleness;
  }

  void serve_parked() {
    Server& S = *server_;
    for (std::size_t i = 0; i < S.parked.size();) {
      if (readable(S.parked[i].h)) {
        Parked p = std::move(S.parked[i]);
        S.parked.erase(S.parked.begin() + static_cast<std::ptrdiff_t>(i));
        --S.parked_count[static_cast<std::size_t>(p.worker)];
        S.last_heard[static_cast<std::size_t>(p.worker)] = comm::Clock::now();  // it was waiting on us until now
        answer_pull(p.worker, p.peer, p.h, p.payload);
        give_back(std::move(p.payload));
      } else {
        ++i;
      }
    }
  }

  void answer_pull(int w, int peer, const Header& h, const std::vector<std::byte>& payload) {
    Server& S = *server_;
    std::string err;
    ps::detail::PieceState& p = *piece(h, err);
    if (o_.record_reads) {
      std::lock_guard lock(S.mu);
      const std::int64_t m = min_clock();
      S.reads.push_back(ps::ReadRecord{peer, h.clock, m == std::numeric_limits<std::int64_t>::max() ? h.clock : m,
                                       std::max(max_clock(), h.clock)});
    }
    if (!p.sparse) {
      flush(p);
      reply(w, peer, h.id, 0, p.value.data(), p.value.size() * sizeof(float));
      return;
    }
    const std::size_t n = h.end, c = p.cols;
    reply_with(w, peer, h.id, 0, n * c * sizeof(float), [&](std::byte* d) {
      for (std::size_t i = 0; i < n; ++i) {
        std::int64_t r;
        std::memcpy(&r, payload.data() + i * sizeof r, sizeof r);
        std::memcpy(d + i * c * sizeof(float), p.value.data() + (static_cast<std::size_t>(r) - p.begin) * c,
                    c * sizeof(float));
      }
    });
  }

  // A buffer of n bytes, contents unspecified: a spare one of that size when there is one.
  std::vector<std::byte> take_buffer(std::size_t n) {
    auto& sp = server_->spare;
    for (std::size_t i = sp.size(); i-- > 0;) {
      if (sp[i].size() != n) continue;
      std::vector<std::byte> b = std::move(sp[i]);
      sp.erase(sp.begin() + static_cast<std::ptrdiff_t>(i));  // keeps the others oldest first
      server_->spare_bytes -= b.capacity();
      return b;
    }
    return std::vector<std::byte>(n);
  }
  // Keeps b for reuse; the spares stay within twice the bytes this server
  // holds (+ 1 MiB) by dropping the oldest first, so the sizes in use now
  // stay: a reply is a few bytes longer than a push's payload, and spares
  // full of payload-sized buffers once made every 64 MiB pull allocate and
  // zero its reply (1.2 GB/s against 3.7 at 16 MiB).
  void give_back(std::vector<std::byte>&& b) {
    Server& S = *server_;
    const std::size_t c = b.capacity();
    if (c == 0 || c > S.spare_limit) return;
    std::size_t drop = 0;
    while (S.spare_bytes + c > S.spare_limit) S.spare_bytes -= S.spare[drop++].capacity();
    S.spare.erase(S.spare.begin(), S.spare.begin() + static_cast<std::ptrdiff_t>(drop));
    S.spare_bytes += c;
    S.spare.push_back(std::move(b));
  }

  Transport t_;
  ps::Roles roles_;
  ps::Placement placement_;
  ps::Options o_;
  std::optional<Server> server_;
  std::optional<Worker> worker_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  comm::Tag base_ = 0;
};

}  // namespace weft::parallel
