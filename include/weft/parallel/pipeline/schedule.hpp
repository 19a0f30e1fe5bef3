// Pipeline schedules as data. A schedule gives every rank its list of actions
// (F, B, W, send, recv; each with a micro-batch and a model chunk) for one
// training step; the policies GPipe, OneFOneB, Interleaved1F1B<v> and
// ZeroBubbleH1 build one, and a user can write one by hand. validate() runs
// every list against the others before anything is sent and proves that they
// cannot deadlock, or throws a sentence naming the first blocked action.
//
// Terms (p ranks, v chunks per rank, m micro-batches, S = p v stages):
//   stage s of the model is chunk s / p on rank s % p (Megatron-LM's
//   interleaving; with v = 1 stage s is rank s).
//   F(i, c)          forward of micro-batch i through local chunk c
//   B(i, c)          backward: with a split schedule the input gradient only
//                    (Qi et al. 2023's B), else the whole backward
//   W(i, c)          the weight gradient (split schedules only)
//   send_act/recv_act    the activation of micro-batch i, stage s -> s + 1
//   send_grad/recv_grad  its gradient, stage s + 1 -> s
// Execution model (what validate proves things about, and what the pipeline
// does): sends never block (non-blocking, waited for at the end of the step);
// a receive blocks until the matching send has been posted.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <string>
#include <vector>

#include "../../core/error.hpp"

namespace weft::parallel::pipeline {

// A schedule that cannot run: the sentence names the rank, action and reason.
struct ScheduleError : ValueError {
  using ValueError::ValueError;
};

enum class Op : std::uint8_t { F, B, W, send_act, recv_act, send_grad, recv_grad };

inline const char* op_name(Op op) {
  switch (op) {
    case Op::F: return "F";
    case Op::B: return "B";
    case Op::W: return "W";
    case Op::send_act: return "send_act";
    case Op::recv_act: return "recv_act";
    case Op::send_grad: return "send_grad";
    case Op::recv_grad: return "recv_grad";
  }
  return "?";
}

inline bool is_compute(Op op) { return op == Op::F || op == Op::B || op == Op::W; }

struct Action {
  Op op = Op::F;
  int mb = 0;     // micro-batch
  int chunk = 0;  // local model chunk (0..v-1)
  friend bool operator==(const Action&, const Action&) = default;
};

struct Schedule {
  std::string name;
  int ranks = 1;
  int chunks = 1;         // v: model chunks per rank
  int micro_batches = 1;  // m
  bool split = false;     // B and W are separate actions
  std::vector<std::vector<Action>> actions;  // per rank, in execution order

  int stages() const { return ranks * chunks; }
  int stage(int rank, int chunk) const { return chunk * ranks + rank; }
  int rank_of(int stage) const { return stage % ranks; }
  int chunk_of(int stage) const { return stage / ranks; }
};

// "F micro-batch 3, chunk 0 (stage 2)" and the like, for errors and traces.
inline std::string describe(const Schedule& s, int rank, const Action& a) {
  const int st = s.stage(rank, a.chunk);
  std::string out;
  auto mb = std::to_string(a.mb);
  switch (a.op) {
    case Op::F: out = "F of micro-batch " + mb; break;
    case Op::B: out = std::string(s.split ? "B (input gradient)" : "B") + " of micro-batch " + mb; break;
    case Op::W: out = "W (weight gradient) of micro-batch " + mb; break;
    case Op::send_act:
      out = "send the activation of micro-batch " + mb + " to stage " + std::to_string(st + 1) + " (rank " +
            std::to_string(s.rank_of(st + 1)) + ")";
      break;
    case Op::recv_act:
      out = "recv the activation of micro-batch " + mb + " from stage " + std::to_string(st - 1) + " (rank " +
            std::to_string(s.rank_of(st - 1)) + ")";
      break;
    case Op::send_grad:
      out = "send the gradient of micro-batch " + mb + " to stage " + std::to_string(st - 1) + " (rank " +
            std::to_string(s.rank_of(st - 1)) + ")";
      break;
    case Op::recv_grad:
      out = "recv the gradient of micro-batch " + mb + " from stage " + std::to_string(st + 1) + " (rank " +
            std::to_string(s.rank_of(st + 1)) + ")";
      break;
  }
  return out + " on stage " + std::to_string(st);
}

// What validate() learned about a schedule that can run.
struct ScheduleReport {
  std::vector<int> peak_activations;  // per rank: most micro-batch stashes alive at once
  int peak(int rank) const { return peak_activations[static_cast<std::size_t>(rank)]; }
};

namespace detail {

// The message an action sends or receives: (is gradient, receiving stage, micro-batch).
struct MsgKey {
  bool grad;
  int to_stage;
  int mb;
};

inline int msg_index(const Schedule& s, const MsgKey& k) {
  return ((k.grad ? 1 : 0) * s.stages() + k.to_stage) * s.micro_batches + k.mb;
}

inline MsgKey msg_of(const Schedule& s, int rank, const Action& a) {
  const int st = s.stage(rank, a.chunk);
  switch (a.op) {
    case Op::send_act: return {false, st + 1, a.mb};
    case Op::recv_act: return {false, st, a.mb};
    case Op::send_grad: return {true, st - 1, a.mb};
    case Op::recv_grad: return {true, st, a.mb};
    default: return {false, -1, -1};
  }
}

}  // namespace detail

// Checks the schedule and proves it cannot deadlock; returns the peak number
// of activation stashes per rank (F opens one, W closes it; B does without a split).
inline ScheduleReport validate(const Schedule& s) {
  const std::string who = "schedule '" + s.name + "'";
  if (s.ranks < 1 || s.chunks < 1 || s.micro_batches < 1)
    throw_error<ScheduleError>(who, ": ranks (", s.ranks, "), chunks (", s.chunks, ") and micro-batches (", s.micro_batches,
                               ") must be positive");
  if (static_cast<int>(s.actions.size()) != s.ranks)
    throw_error<ScheduleError>(who, ": has action lists for ", s.actions.size(), " ranks, the pipeline has ", s.ranks);
  const int S = s.stages(), m = s.micro_batches;
  auto at = [&](int r, std::size_t i) {
    return "rank " + std::to_string(r) + ", action " + std::to_string(i) + " (" + describe(s, r, s.actions[r][i]) + ")";
  };
  // 1. Every action in range; each one appears as often as it must, and in an order its data allows.
  for (int r = 0; r < s.ranks; ++r) {
    const auto& list = s.actions[static_cast<std::size_t>(r)];
    // done[c][i][op]: the position of the action, -1 if not (yet) seen.
    std::vector<int> pos(static_cast<std::size_t>(s.chunks * m * 7), -1);
    auto slot = [&](int c, int i, Op op) -> int& {
      return pos[static_cast<std::size_t>((c * m + i) * 7 + static_cast<int>(op))];
    };
    for (std::size_t k = 0; k < list.size(); ++k) {
      const Action& a = list[k];
      if (a.chunk < 0 || a.chunk >= s.chunks)
        throw_error<ScheduleError>(who, ": rank ", r, ", action ", k, " (", op_name(a.op), "): chunk ", a.chunk,
                                   " is out of range (", s.chunks, " chunks per rank)");
      if (a.mb < 0 || a.mb >= m)
        throw_error<ScheduleError>(who, ": rank ", r, ", action ", k, " (", op_name(a.op), "): micro-batch ", a.mb,
                                   " is out of range (m = ", m, ")");
      const int st = s.stage(r, a.chunk);
      if (a.op == Op::W && !s.split)
        throw_error<ScheduleError>(who, ": ", at(r, k), ": a W action in a schedule whose B includes the weight gradient (split = false)");
      if ((a.op == Op::recv_act || a.op == Op::send_grad) && st == 0)
        throw_error<ScheduleError>(who, ": ", at(r, k), ": stage 0 has no previous stage");
      if ((a.op == Op::send_act || a.op == Op::recv_grad) && st == S - 1)
        throw_error<ScheduleError>(who, ": ", at(r, k), ": the last stage has no next stage");
      int& p = slot(a.chunk, a.mb, a.op);
      if (p >= 0) throw_error<ScheduleError>(who, ": ", at(r, k), " appears twice (also action ", p, ")");
      p = static_cast<int>(k);
      auto need_before = [&](Op dep, const char* why) {
        if (slot(a.chunk, a.mb, dep) < 0)
          throw_error<ScheduleError>(who, ": ", at(r, k), " comes before ", describe(s, r, Action{dep, a.mb, a.chunk}), ", ",
                                     why);
      };
      switch (a.op) {
        case Op::F:
          if (st > 0) need_before(Op::recv_act, "which brings its input");
          break;
        case Op::send_act: need_before(Op::F, "which computes it"); break;
        case Op::B:
          need_before(Op::F, "whose saved state it differentiates");
          if (st < S - 1) need_before(Op::recv_grad, "which brings its output's gradient");
          break;
        case Op::send_grad: need_before(Op::B, "which computes it"); break;
        case Op::W: need_before(Op::B, "which computes the adjoints it needs"); break;
        default: break;
      }
    }
    for (int c = 0; c < s.chunks; ++c)
      for (int i = 0; i < m; ++i) {
        const int st = s.stage(r, c);
        auto must = [&](Op op) {
          if (slot(c, i, op) < 0)
            throw_error<ScheduleError>(who, ": rank ", r, " never runs ", describe(s, r, Action{op, i, c}));
        };
        must(Op::F);
        must(Op::B);
        if (s.split) must(Op::W);
        if (st > 0) must(Op::recv_act), must(Op::send_grad);
        if (st < S - 1) must(Op::send_act), must(Op::recv_grad);
      }
  }

  // 2. Run the lists: sends never block; a receive waits for its send.
  std::vector<char> sent(static_cast<std::size_t>(2 * S * m), 0);
  std::vector<std::size_t> pc(static_cast<std::size_t>(s.ranks), 0);
  std::vector<std::size_t> send_pos(static_cast<std::size_t>(2 * S * m), 0);
  for (int r = 0; r < s.ranks; ++r)
    for (std::size_t k = 0; k < s.actions[r].size(); ++k) {
      const Action& a = s.actions[r][k];
      if (a.op == Op::send_act || a.op == Op::send_grad)
        send_pos[static_cast<std::size_t>(detail::msg_index(s, detail::msg_of(s, r, a)))] = k;
    }
  ScheduleReport rep;
  rep.peak_activations.assign(static_cast<std::size_t>(s.ranks), 0);
  std::vector<int> alive(static_cast<std::size_t>(s.ranks), 0);
  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < s.ranks; ++r) {
      auto& k = pc[static_cast<std::size_t>(r)];
      const auto& list = s.actions[static_cast<std::size_t>(r)];
      while (k < list.size()) {
        const Action& a = list[k];
        const int idx = (a.op == Op::recv_act || a.op == Op::recv_grad || a.op == Op::send_act || a.op == Op::send_grad)
                            ? detail::msg_index(s, detail::msg_of(s, r, a))
                            : -1;
        if ((a.op == Op::recv_act || a.op == Op::recv_grad) && !sent[static_cast<std::size_t>(idx)]) break;
        if (a.op == Op::send_act || a.op == Op::send_grad) sent[static_cast<std::size_t>(idx)] = 1;
        int& al = alive[static_cast<std::size_t>(r)];
        if (a.op == Op::F) al += 1;
        if ((a.op == Op::W) || (a.op == Op::B && !s.split)) al -= 1;
        rep.peak_activations[static_cast<std::size_t>(r)] = std::max(rep.peak_activations[static_cast<std::size_t>(r)], al);
        ++k;
        progress = true;
      }
    }
  }
  // 3. Stuck: follow who waits on whom from the first blocked rank to a cycle, and say it.
  int first = -1;
  for (int r = 0; r < s.ranks && first < 0; ++r)
    if (pc[static_cast<std::size_t>(r)] < s.actions[static_cast<std::size_t>(r)].size()) first = r;
  if (first < 0) return rep;
  std::string msg = who + " deadlocks: ";
  std::vector<int> seen(static_cast<std::size_t>(s.ranks), 0);
  int r = first;
  for (int hop = 0;; ++hop) {
    const std::size_t k = pc[static_cast<std::size_t>(r)];
    const Action& a = s.actions[static_cast<std::size_t>(r)][k];
    const detail::MsgKey key = detail::msg_of(s, r, a);
    const int from_stage = a.op == Op::recv_act ? key.to_stage - 1 : key.to_stage + 1;
    const int q = s.rank_of(from_stage);
    const std::size_t sp = send_pos[static_cast<std::size_t>(detail::msg_index(s, key))];
    msg += std::string(hop ? ", which is blocked at " : "") + at(r, k) + (hop ? "" : " is blocked") + "; rank " +
           std::to_string(q) + " sends it only at its action " + std::to_string(sp);
    seen[static_cast<std::size_t>(r)] = 1;
    if (seen[static_cast<std::size_t>(q)]) {
      msg += ", and rank " + std::to_string(q) + " is blocked at its action " +
             std::to_string(pc[static_cast<std::size_t>(q)]) + " (a wait cycle)";
      break;
    }
    r = q;
  }
  throw_error<ScheduleError>(msg);
}

namespace detail {

// Compute order -> actions: each receive right before the compute that needs
// it, each send right after the compute that produces it.
inline void add_with_comm(Schedule& s, int r, Op op, int mb, int c) {
  auto& list = s.actions[static_cast<std::size_t>(r)];
  const int st = s.stage(r, c), S = s.stages();
  if (op == Op::F && st > 0) list.push_back({Op::recv_act, mb, c});
  if (op == Op::B && st < S - 1) list.push_back({Op::recv_grad, mb, c});
  list.push_back({op, mb, c});
  if (op == Op::F && st < S - 1) list.push_back({Op::send_act, mb, c});
  if (op == Op::B && st > 0) list.push_back({Op::send_grad, mb, c});
}

inline Schedule empty_schedule(const char* name, int p, int v, int m, bool split) {
  if (p < 1 || m < 1 || v < 1)
    throw_error<ScheduleError>(name, ": ranks (", p, "), chunks (", v, ") and micro-batches (", m, ") must be positive");
  Schedule s;
  s.name = name;
  s.ranks = p;
  s.chunks = v;
  s.micro_batches = m;
  s.split = split;
  s.actions.resize(static_cast<std::size_t>(p));
  return s;
}

}  // namespace detail

// GPipe (Huang et al. 2019): every forward, then every backward.
// Bubble (p-1)/(m+p-1); each rank keeps all m activations.
struct GPipe {
  static constexpr const char* name = "GPipe";
  static constexpr int chunks = 1;
  Schedule build(int p, int m) const {
    Schedule s = detail::empty_schedule(name, p, 1, m, false);
    for (int r = 0; r < p; ++r) {
      for (int i = 0; i < m; ++i) detail::add_with_comm(s, r, Op::F, i, 0);
      for (int i = 0; i < m; ++i) detail::add_with_comm(s, r, Op::B, i, 0);
    }
    return s;
  }
};

// 1F1B, PipeDream-Flush (Narayanan et al. 2021): rank r runs p-1-r warm-up
// forwards, then alternates one forward and one backward, then drains.
// Bubble (p-1)/(m+p-1) as GPipe, with at most p - r activations alive on rank r.
struct OneFOneB {
  static constexpr const char* name = "1F1B";
  static constexpr int chunks = 1;
  Schedule build(int p, int m) const {
    Schedule s = detail::empty_schedule(name, p, 1, m, false);
    for (int r = 0; r < p; ++r) {
      const int warm = std::min(p - 1 - r, m);
      for (int i = 0; i < warm; ++i) detail::add_with_comm(s, r, Op::F, i, 0);
      for (int i = 0; i < m - warm; ++i) {
        detail::add_with_comm(s, r, Op::F, warm + i, 0);
        detail::add_with_comm(s, r, Op::B, i, 0);
      }
      for (int i = m - warm; i < m; ++i) detail::add_with_comm(s, r, Op::B, i, 0);
    }
    return s;
  }
};

// Megatron-LM's interleaved 1F1B (Narayanan et al. 2021): V model chunks per
// rank (stage s = chunk * p + rank); forwards go through the chunks in groups
// of p micro-batches, backwards through the chunks in reverse. Bubble
// time divided by V: (p-1)/(V m + p - 1). m must be a multiple of p, as Megatron-LM
// requires, or at most p (then every forward runs first, as Megatron does for
// m == p): with a shorter last group the warm-up count no longer matches and
// validate() finds wait cycles (p = 4, m = 5, V = 3, for one).
template <int V>
struct Interleaved1F1B {
  static_assert(V >= 1, "Interleaved1F1B<V>: V (model chunks per rank) must be at least 1");
  static constexpr const char* name = "Interleaved1F1B";
  static constexpr int chunks = V;
  Schedule build(int p, int m) const {
    Schedule s = detail::empty_schedule(name, p, V, m, false);
    s.name = "Interleaved1F1B<" + std::to_string(V) + ">";
    if (m > p && m % p != 0)
      throw_error<ScheduleError>(s.name, ": the micro-batch count (", m, ") must be a multiple of the pipeline's ranks (", p,
                                 ") or at most ", p, ", as in Megatron-LM's interleaved schedule");
    // The k-th forward (or backward) of a rank: micro-batch and chunk.
    std::vector<Action> fwd, bwd;
    for (int g = 0; g < m; g += p) {
      const int n = std::min(p, m - g);  // (m <= p: one group of m)
      for (int c = 0; c < V; ++c)
        for (int i = 0; i < n; ++i) {
          fwd.push_back({Op::F, g + i, c});
          bwd.push_back({Op::B, g + i, V - 1 - c});
        }
    }
    const int total = m * V;
    for (int r = 0; r < p; ++r) {
      const int warm = m <= p ? total : std::min(total, (p - r - 1) * 2 + (V - 1) * p);
      for (int k = 0; k < warm; ++k) detail::add_with_comm(s, r, Op::F, fwd[k].mb, fwd[k].chunk);
      for (int k = 0; k < total - warm; ++k) {
        detail::add_with_comm(s, r, Op::F, fwd[warm + k].mb, fwd[warm + k].chunk);
        detail::add_with_comm(s, r, Op::B, bwd[k].mb, bwd[k].chunk);
      }
      for (int k = total - warm; k < total; ++k) detail::add_with_comm(s, r, Op::B, bwd[k].mb, bwd[k].chunk);
    }
    return s;
  }
};

// ZB-H1 (Qi et al. 2023, "Zero Bubble Pipeline Parallelism"): backward split
// into B (input gradient, on the critical path) and W (weight gradient, which
// nothing downstream waits for). The F and B order is 1F1B's; rank r runs the
// W of micro-batch i after the B of micro-batch i + r, so B reaches the
// earlier stages sooner and the deferred W fill the cool-down. Rank r keeps
// (p - r) + r = p micro-batches in flight at most: 1F1B's peak (rank 0's).
// Bubble (p-1)(F+B-W) per rank instead of 1F1B's (p-1)(F+B+W).
struct ZeroBubbleH1 {
  static constexpr const char* name = "ZeroBubbleH1";
  static constexpr int chunks = 1;
  Schedule build(int p, int m) const {
    Schedule s = detail::empty_schedule(name, p, 1, m, true);
    for (int r = 0; r < p; ++r) {
      const int warm = std::min(p - 1 - r, m);
      int w = 0;  // next W
      auto backward = [&](int i) {
        detail::add_with_comm(s, r, Op::B, i, 0);
        if (i - r >= 0) detail::add_with_comm(s, r, Op::W, w++, 0);
      };
      for (int i = 0; i < warm; ++i) detail::add_with_comm(s, r, Op::F, i, 0);
      for (int i = 0; i < m - warm; ++i) {
        detail::add_with_comm(s, r, Op::F, warm + i, 0);
        backward(i);
      }
      for (int i = m - warm; i < m; ++i) backward(i);
      while (w < m) detail::add_with_comm(s, r, Op::W, w++, 0);
    }
    return s;
  }
};

// A policy builds a schedule for p ranks and m micro-batches.
template <class P>
concept SchedulePolicy = requires(const P& policy, int p, int m) {
  { policy.build(p, m) } -> std::same_as<Schedule>;
  { P::chunks } -> std::convertible_to<int>;
};
static_assert(SchedulePolicy<GPipe> && SchedulePolicy<OneFOneB> && SchedulePolicy<Interleaved1F1B<2>> &&
              SchedulePolicy<ZeroBubbleH1>);

// The textbook bubble fraction of a schedule with uniform stage times:
// (p-1)/(m+p-1); interleaving over v chunks divides the bubble's time by v,
// ((p-1)/v)/(m+(p-1)/v) = (p-1)/(v m + p - 1). (ZB-H1's depends on the F, B
// and W times; simulate() it.)
inline double formula_bubble(int p, int m, int v = 1) {
  return static_cast<double>(p - 1) / static_cast<double>(v * m + p - 1);
}

}  // namespace weft::parallel::pipeline
