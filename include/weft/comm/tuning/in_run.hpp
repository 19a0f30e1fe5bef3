// In-run selection for Auto (algorithm/auto.hpp): the first calls of each
// (op, size class, placement) on a communicator time Auto's candidates inside
// the user's own run, the ranks agree on the winner, and later calls run it.
//
//   size class   bytes rounded down to a power of two (bit width of the byte
//                count): calls within a factor of two share a decision
//   placement    in-place calls (collectives::is_in_place) decide apart from
//                out-of-place ones: the ranking differs (2 thread ranks,
//                512 KiB: recursive doubling 20 us out of place, 71 us in
//                place, where the ring takes 33 and 52), and a decision from
//                out-of-place trials ran the in-place calls 1.37x the best.
//                Every rank must call with the same placement, as MPI asks of
//                MPI_IN_PLACE; a rank that does not fails at the fingerprint
//                check (the choices differ) or at its deadline
//   trial phase  `calls_per_candidate` rounds; each round runs the starting
//                guess (the cost file's measured decision, else the cheapest
//                formula) first, then every other candidate in order, one
//                call each. Interleaved, so what drifts during the trials (a
//                TCP connection's window, a token bucket's burst, another
//                job on the cores) falls on every candidate alike. (Run one
//                candidate after another, a candidate's calls share one slow
//                or fast spell: on the emulated cluster's 10 Gbit/s links a
//                4 MiB trial timed the leaders' schedule at 11.7 ms where
//                the benchmark's interleaved calls took 21.2.) Each timed
//                call starts together on every rank (sync(): a byte to every
//                other rank) and each rank records its time (its own clock)
//   agreement    after the last trial call every rank sends its times to
//                every other rank (a small allreduce of the timings, max over
//                ranks, on tuning_tag) under the call's deadline; a candidate's
//                time is the lower median of its calls as their slowest rank
//                saw them (a rank's own time alone flatters: the last rank out
//                of a sync finds its peers' data already there, 11 us for a
//                call that takes 340; and the fastest call flatters a
//                candidate whose calls take one or two rounds at random: on
//                the emulated cluster recursive doubling's small calls took
//                340 or 680 us, won its trials on a 340, and ran at 450-690
//                where the leaders' schedule took 350-385; the lower median
//                of 2 calls is the faster, which drops a cold first call),
//                and the winner is the least, ties to the lower index, so
//                every rank picks the same from the same numbers; the
//                starting guess keeps the key unless the winner beats it by
//                more than keep_guess_within (5%): a near-tie in a few trial
//                calls is noise, the table is many calls
//   re-check     with `recheck_every = N`, after N decided calls the key goes
//                back to a trial phase whose guess is the current winner
//
// Every rank of a communicator makes the same calls in the same order, so
// each rank's state machine sits at the same step: the candidate a call runs
// is the same on every rank (it is in the call's fingerprint: a rank whose
// state differs fails naming both choices). Calls bypassed by deterministic
// mode (Ordered's schedules) do not advance it.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../collective.hpp"
#include "../context.hpp"
#include "../deadline.hpp"

namespace weft::comm {

struct InRunOptions {
  // Timed calls per candidate before the ranks agree; 0 turns in-run
  // selection off (the cost file or formulas decide every call).
  int calls_per_candidate = 0;
  // Decided calls of one (op, size class) before its candidates are timed
  // again (conditions drift: other jobs on the links); 0: never.
  std::uint64_t recheck_every = 0;
  // The starting guess (the calibrated table's pick, or on a re-check the
  // current winner) keeps the key unless the fastest candidate beats it by
  // more than this fraction: trials of a few calls each cannot tell apart
  // candidates a few percent apart, and the table was measured over many
  // calls (0: the fastest trial always wins).
  double keep_guess_within = 0.05;
  // Start every trial call together on every rank (sync(): a byte to every
  // other rank first), so a trial times one call's latency; false: trial
  // calls run back to back, as the calls of a loop do, and a trial times
  // that loop's period.
  bool sync_trials = true;
  bool enabled() const { return calls_per_candidate > 0; }
};

// The per-communicator state (Auto's prepare() makes one for its communicator).
class InRunTuner {
 public:
  // What the tuner knows about one (op, size class).
  struct Entry {
    bool decided = false;
    std::size_t guess = 0;   // the candidate the table or formulas pick
    std::size_t step = 0;    // trial phase: position in the round's order (the guess first)
    int calls = 0;           // trial phase: the round (rounds finished)
    std::vector<double> times;  // trial phase: this rank's time of each call (s), (candidates, calls_per_candidate)
    std::size_t winner = 0;
    std::uint64_t since = 0;  // decided calls since the decision
    std::uint64_t decisions = 0;
    std::vector<double> agreed;  // the last agreement's slowest-rank times (s), per candidate
  };

  InRunTuner(InRunOptions o, std::size_t candidates) : opts_(o), k_(candidates) {}

  static int size_class(std::size_t bytes) { return static_cast<int>(std::bit_width(bytes)); }

  // The candidate the next call of (op, bytes, in_place) runs; `guess` is the table's pick. Does not advance.
  std::size_t next(Collective op, std::size_t bytes, bool in_place, std::size_t guess) const {
    const Entry* e = find(op, bytes, in_place);
    if (!e) return guess;  // the first call: the guess starts the trials
    return e->decided ? e->winner : order(e->guess, e->step);
  }

  // After this rank ran candidate `ran` for (op, bytes, in_place) in
  // `seconds`: advances the state, and after the last trial call agrees with
  // the other ranks of `ctx` on the winner (collective over ctx, under its
  // call's deadline).
  template <class Ctx>
  void record(Ctx& ctx, Collective op, std::size_t bytes, bool in_place, std::size_t guess, std::size_t ran,
              double seconds) {
    auto [it, fresh] = entries_.try_emplace(key(op, bytes, in_place));
    Entry& e = it->second;
    if (fresh) start(e, guess);
    if (e.decided) {
      if (opts_.recheck_every && ++e.since >= opts_.recheck_every) start(e, e.winner);
      return;
    }
    const auto calls = static_cast<std::size_t>(opts_.calls_per_candidate);
    e.times[ran * calls + static_cast<std::size_t>(e.calls)] = seconds;
    if (++e.step < k_) return;  // the round's next candidate
    e.step = 0;
    if (++e.calls < opts_.calls_per_candidate) return;  // the next round
    e.calls = 0;
    // Each call's slowest rank, then each candidate's lower median of those.
    const std::vector<double> slowest = agree(ctx, e.times);
    e.agreed.resize(k_);  // every element set below
    for (std::size_t i = 0; i < k_; ++i) {
      std::vector<double> mine(slowest.begin() + static_cast<std::ptrdiff_t>(i * calls),
                               slowest.begin() + static_cast<std::ptrdiff_t>((i + 1) * calls));
      const auto mid = mine.begin() + static_cast<std::ptrdiff_t>((calls - 1) / 2);
      std::nth_element(mine.begin(), mid, mine.end());
      e.agreed[i] = *mid;
    }
    e.winner = 0;
    for (std::size_t i = 1; i < k_; ++i)
      if (e.agreed[i] < e.agreed[e.winner]) e.winner = i;
    if (e.agreed[e.guess] <= e.agreed[e.winner] * (1 + opts_.keep_guess_within)) e.winner = e.guess;
    e.decided = true;
    e.since = 0;
    ++e.decisions;
  }

  // Is the next call of (op, bytes, in_place) a timed trial (a first call, or
  // a key not decided yet or being re-checked)? The same answer on every rank.
  bool trialing(Collective op, std::size_t bytes, bool in_place) const {
    const Entry* e = find(op, bytes, in_place);
    return !e || !e->decided;
  }

  // Before a timed trial: every rank of ctx sends one byte to every other and
  // waits for theirs, so the trial starts together on every rank and times
  // the call's latency, as a call between two computations sees it. Timed
  // back to back without it, calls overlap across ranks and a trial measures
  // the period of a stream of calls instead: on the emulated cluster (2 hosts
  // x 2 ranks, 1 Gbit/s) halving-doubling's two rounds timed 323-335 us in
  // its trials, like the one-round schedules, against 675 us per call when
  // the benchmark starts every call together, so Auto picked it at 8 B and
  // 16 B and ran 1.97x the best policy there.
  template <class Ctx>
  static void sync(Ctx& ctx) {
    const unsigned char one = 1;
    std::vector<unsigned char> got(static_cast<std::size_t>(ctx.size()));
    exchange(ctx, &one, 1, got.data());
  }

  // The state of (op, size class of bytes, in_place), or nullptr before its
  // first call. The last key found is remembered (the fingerprint's choice
  // and the call itself ask for the same key, and a training loop repeats
  // it); entries are never erased, so the pointer stays valid.
  const Entry* find(Collective op, std::size_t bytes, bool in_place) const {
    const Key k = key(op, bytes, in_place);
    if (last_ && k == last_key_) return last_;
    auto it = entries_.find(k);
    if (it == entries_.end()) return nullptr;
    last_key_ = k;
    last_ = &it->second;
    return last_;
  }

  // The winner of a decided key whose calls advance no state (no re-check
  // counting), or -1: such a call needs no guess, no clock and no record(),
  // so a decided call costs Auto one lookup (8 B on 2 thread ranks: 1.86 us
  // against recursive doubling's own 1.58 before this path, which looked the
  // key up six times, asked the cost table for a guess twice, read the clock
  // and recorded the call).
  std::ptrdiff_t settled(Collective op, std::size_t bytes, bool in_place) const {
    if (opts_.recheck_every) return -1;
    const Entry* e = find(op, bytes, in_place);
    return e && e->decided ? static_cast<std::ptrdiff_t>(e->winner) : -1;
  }
  const InRunOptions& options() const { return opts_; }

 private:
  // Trial order: the guess first, then the others by index.
  std::size_t order(std::size_t guess, std::size_t step) const {
    if (step == 0) return guess;
    return step <= guess ? step - 1 : step;
  }
  void start(Entry& e, std::size_t guess) {
    e.decided = false;
    e.guess = guess;
    e.step = 0;
    e.calls = 0;
    e.since = 0;
    e.times.assign(k_ * static_cast<std::size_t>(std::max(opts_.calls_per_candidate, 1)), std::numeric_limits<double>::infinity());
  }

  // Every rank sends `bytes` at `mine` to every other rank of ctx and
  // receives each peer r's into all + r * bytes (its own slot untouched), on
  // tuning_tag, bounded by the current call's deadline; failures are named
  // like the call's own (Context::fail). sync() and agree() are built on it.
  template <class Ctx>
  static void exchange(Ctx& ctx, const void* mine, std::size_t bytes, void* all) {
    const int p = ctx.size(), me = ctx.rank();
    auto& t = ctx.transport();
    using Request = typename std::remove_reference_t<decltype(t)>::Request;
    std::vector<Request> rq(static_cast<std::size_t>(2 * p));
    for (int r = 0; r < p; ++r) {
      if (r == me) continue;
      rq[static_cast<std::size_t>(r)] = t.irecv(static_cast<unsigned char*>(all) + static_cast<std::size_t>(r) * bytes, bytes, r, tuning_tag);
      rq[static_cast<std::size_t>(p + r)] = t.isend(mine, bytes, r, tuning_tag);
    }
    for (int i = 0; i < 2 * p; ++i) {
      if (i % p == me) continue;
      auto& q = rq[static_cast<std::size_t>(i)];
      if (WaitStatus s = t.wait(q, ctx.call.deadline); s != WaitStatus::done) {
        for (auto& x : rq) t.cancel(x);
        ctx.fail(s, i % p);
      }
    }
  }

  // Max over the ranks of ctx of each element (a call's time): every rank
  // sends its vector to every other one. Bounded by the current call's deadline;
  // failures are named like the call's own (Context::fail).
  template <class Ctx>
  static std::vector<double> agree(Ctx& ctx, const std::vector<double>& mine) {
    const int p = ctx.size(), me = ctx.rank();
    const std::size_t k = mine.size();
    std::vector<double> all(k * static_cast<std::size_t>(p));
    exchange(ctx, mine.data(), k * sizeof(double), all.data());
    std::vector<double> out = mine;
    for (int r = 0; r < p; ++r)
      if (r != me)
        for (std::size_t i = 0; i < k; ++i) out[i] = std::max(out[i], all[static_cast<std::size_t>(r) * k + i]);
    return out;
  }

  using Key = std::tuple<int, int, bool>;  // (op, size class, in place)
  static Key key(Collective op, std::size_t bytes, bool in_place) {
    return {static_cast<int>(op), size_class(bytes), in_place};
  }

  InRunOptions opts_;
  std::size_t k_;
  std::map<Key, Entry> entries_;
  mutable Key last_key_{};
  mutable const Entry* last_ = nullptr;  // find()'s last hit
};

}  // namespace weft::comm
