// tune::search: run a hyperparameter search with trials on groups of ranks.
//
//   auto results = tune::search(world, tune::SobolSampler(space, 16), scheduler,
//       [&](tune::Trial& trial, auto& group) {        // group: this trial's ranks, a Transport
//         Model m(trial.config().integer("hidden"));    // build, then train data-parallel on `group`
//         for (int epoch = 1; epoch <= trial.max_epochs(); ++epoch) {
//           double acc = train_one_epoch(m, group, trial.config().number("lr"));
//           if (!trial.report(epoch, acc)) return;      // the scheduler stopped it
//         }
//       }, {.ranks_per_trial = 2, .results = "runs/asha"});
//
// With W ranks and trials of g ranks, the world is split into W/g groups of
// consecutive ranks. World rank 0 is the coordinator: it owns the sampler's
// trial list, the scheduler and the results. Each group's first rank (its
// leader) asks the coordinator for a trial, broadcasts it to its group, and
// after each epoch sends the group's metric and receives the scheduler's
// decision, which it broadcasts; a group whose trial ends asks for the next,
// until none is left. The first W/g trials are set aside one per group, so
// every group trains even if its leader asks late; the rest go to whichever
// group asks first. Every message is point-to-point on a private split of
// the world, every wait has the search's deadline (SearchOptions::timeout).
//
// World rank 0 also trains in group 0, so it answers the other leaders at its
// own report() calls (once per epoch) and between its trials; a leader's
// question waits at most for rank 0's current epoch to end. No rank idles
// waiting for a rung to fill (Asha decides on what has arrived).
//
// A training function that throws is a failed trial: the group agrees on it
// (the highest group rank that threw supplies the message), the coordinator
// records the error, and the group takes the next trial. A rank whose peer
// threw learns it at its next report(), which unwinds its training function;
// a rank waiting for the thrower inside the trial's own communication waits
// until that communication's deadline, then throws in turn. Each trial gets a fresh split of its group's
// ranks, so a failed trial's unmatched messages cannot reach the next one.
// Errors in the search's own communication are not trial failures: they end
// the search on every rank.
//
// Results: rank 0 writes `<results>.json` and `<results>.csv` after every
// finished trial; every rank returns the same Results. With resume (the
// default) and an existing `<results>.json` from the same search (same
// sampler and scheduler descriptions), finished trials are kept and fed to
// the scheduler again, not rerun; a file from another search is an error.
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "../comm/algorithm/ring.hpp"
#include "../comm/communicator.hpp"
#include "../comm/deadline.hpp"
#include "../comm/error.hpp"
#include "../comm/transport.hpp"
#include "../core/error.hpp"
#include "results.hpp"
#include "sampler.hpp"
#include "scheduler.hpp"
#include "space.hpp"

namespace weft::tune {

struct SearchOptions {
  int ranks_per_trial = 1;  // g: must divide the world's size
  std::string results{};    // base path of the results files ("" = none)
  bool resume = true;       // keep finished trials from <results>.json
  // Bound on every wait of the search's own messages, including a finished
  // group's wait for the rest of the search to end: set it above the time
  // the longest trial takes.
  comm::Duration timeout = std::chrono::hours(2);
  bool log = false;         // rank 0 prints a line per finished trial
};

namespace detail {
template <class T, class Smp, class Sch, class F>
class Runner;
}  // namespace detail

// A search's own communication failed (not a trial's failure).
struct SearchError : comm::CommError {
  using comm::CommError::CommError;
};

// What the training function sees: the trial's configuration and the way to
// report progress. Every rank of the group calls report() with the same epochs.
class Trial {
 public:
  std::size_t id() const { return id_; }
  const Config& config() const { return config_; }
  int max_epochs() const { return max_epochs_; }
  int group() const { return group_; }

  // After epoch `epoch` (1-based): the group leader's metric goes to the
  // scheduler. Returns false when the trial should stop (return from the
  // training function). `weights` (optional, same on every rank) is kept by
  // the coordinator for population-based training: when the scheduler has
  // this trial exploit another, report() returns true, exploited() is true,
  // config() holds the new hyperparameters and weights() the other trial's
  // last reported weights, to copy into the model before the next epoch.
  // Let exceptions from report() propagate: when another rank of the group
  // has thrown, report() unwinds this rank's training function too.
  bool report(int epoch, double metric, std::span<const float> weights = {}) { return report_(epoch, metric, weights); }

  bool exploited() const { return exploited_; }
  std::size_t exploited_from() const { return source_; }
  const std::vector<float>& weights() const { return weights_; }

 private:
  template <class T, class Smp, class Sch, class F>
  friend class detail::Runner;
  std::size_t id_ = 0;
  Config config_;
  int max_epochs_ = 0;
  int group_ = 0;
  bool exploited_ = false;
  std::size_t source_ = 0;
  std::vector<float> weights_;
  std::function<bool(int, double, std::span<const float>)> report_;
};

namespace detail {

inline std::vector<std::uint8_t> bytes_of(std::string_view s) { return {s.begin(), s.end()}; }
inline std::string string_of(const std::vector<std::uint8_t>& b) { return {b.begin(), b.end()}; }
inline std::vector<std::uint8_t> bytes_of(std::span<const float> w) {
  std::vector<std::uint8_t> b(w.size_bytes());
  if (!b.empty()) std::memcpy(b.data(), w.data(), b.size());
  return b;
}
inline std::vector<float> floats_of(const std::vector<std::uint8_t>& b) {
  std::vector<float> w(b.size() / sizeof(float));
  if (!w.empty()) std::memcpy(w.data(), b.data(), w.size() * sizeof(float));
  return w;
}

// Config as text for the wire: "name\tn\t<number>\n" or "name\ts\t<text>\n"
// (names and choice strings hold no tab or newline: Space checks them).
inline std::string encode(const Config& c) {
  std::string s;
  for (auto& [n, v] : c.items())
    s += n + (std::holds_alternative<double>(v) ? "\tn\t" : "\ts\t") + format_value(v) + "\n";
  return s;
}
inline Config decode(std::string_view s) {
  Config c;
  while (!s.empty()) {
    auto nl = s.find('\n');
    std::string_view line = s.substr(0, nl);
    s = nl == std::string_view::npos ? std::string_view() : s.substr(nl + 1);
    auto t1 = line.find('\t'), t2 = line.find('\t', t1 + 1);
    std::string name(line.substr(0, t1)), text(line.substr(t2 + 1));
    if (line.substr(t1 + 1, 1) == "n") {
      double x = 0;
      std::from_chars(text.data(), text.data() + text.size(), x);
      c.set(name, x);
    } else {
      c.set(name, text);
    }
  }
  return c;
}

// The decision a group acts on after a report.
struct Decision {
  Action::Kind kind = Action::go_on;
  std::size_t source = 0;
  Config config;
  std::vector<std::uint8_t> weights;
};

// World rank 0's state: the trial list, the scheduler, the records.
template <class Smp, class Sch>
class Coordinator {
 public:
  Coordinator(const Smp& sampler, Sch& scheduler, const SearchOptions& o, comm::Clock::time_point t0)
      : sampler_(sampler), sched_(scheduler), o_(o), t0_(t0) {
    results_.search = sampler.describe() + " | " + scheduler.describe();
    results_.mode = scheduler.mode();
    if (o.results.empty() || !o.resume || !std::filesystem::exists(o.results + ".json")) return;
    Results old = Results::read(o.results + ".json");
    if (old.search != results_.search)
      throw_error<ValueError>("tune::search: the results file ", o.results, ".json is from another search: it was "
                              "written by '", old.search, "', this search is '", results_.search,
                              "'; choose another results path or remove the file");
    for (TrialRecord& t : old.trials) {
      if (t.id >= sampler.size())
        throw_error<ValueError>("tune::search: the results file ", o.results, ".json holds trial ", t.id,
                                " but this search has ", sampler.size(), " trials");
      if (!finished(t.status)) continue;  // interrupted: run it again
      sched_.on_start(t.id, t.config);
      for (const Report& r : t.reports) (void)sched_.on_report(t.id, r.epoch, r.metric);
      sched_.on_finish(t.id);
      // The resumed search's clock continues after the kept trials' last event.
      t0_ = std::min(t0_, comm::Clock::now() - std::chrono::duration_cast<comm::Clock::duration>(
                                                   std::chrono::duration<double>(t.end_s)));
      const std::size_t id = t.id;
      records_[id] = std::move(t);
      ++resumed_;
    }
  }

  std::size_t resumed() const { return resumed_; }

  // Sets the first trials aside, one per group in order, so that every group
  // gets work even when one group's leader asks for its first trial after
  // another group has finished several (short trials, a leader scheduled late).
  void reserve_first(int groups) {
    for (int l = 0; l < groups; ++l) {
      auto id = take_next();
      if (!id) return;
      reserved_[l] = *id;
    }
  }

  std::optional<std::pair<std::size_t, Config>> assign(int group) {
    std::size_t id = 0;
    if (auto r = reserved_.find(group); r != reserved_.end()) {
      id = r->second;
      reserved_.erase(r);
    } else if (auto n = take_next()) {
      id = *n;
    } else {
      return std::nullopt;
    }
    TrialRecord& t = records_[id];
    t.id = id;
    t.config = sampler_.at(t.id);
    t.status = Status::running;
    t.group = group;
    t.start_s = t.end_s = now();
    sched_.on_start(t.id, t.config);
    return std::pair{t.id, t.config};
  }

  Decision report(std::size_t id, int epoch, double metric, std::vector<std::uint8_t> weights) {
    TrialRecord& t = records_.at(id);
    t.reports.push_back({epoch, metric, now()});
    t.end_s = t.reports.back().seconds;  // wall time so far, until it finishes
    if (!weights.empty()) weights_[id] = std::move(weights);
    Action a = sched_.on_report(id, epoch, metric);
    Decision d{a.kind, a.source, a.config, {}};
    if (a.kind == Action::stop) stopped_[id] = true;
    if (a.kind == Action::exploit) {
      t.config = a.config;
      auto w = weights_.find(a.source);
      if (w != weights_.end()) d.weights = w->second;
    }
    return d;
  }

  void finish(std::size_t id, bool failed, std::string error) {
    TrialRecord& t = records_.at(id);
    t.end_s = now();
    if (failed) {
      t.status = Status::failed;
      t.error = std::move(error);
    } else {
      t.status = stopped_.count(id) && t.epochs() < sched_.max_epochs() ? Status::stopped : Status::completed;
    }
    sched_.on_finish(id);
    weights_.erase(id);
    if (o_.log)
      std::printf("tune: trial %zu %s after %d epochs, metric %s (%s)%s%s\n", id, status_name(t.status), t.epochs(),
                  t.reports.empty() ? "-" : format_number(t.last_metric()).c_str(), t.config.to_string().c_str(),
                  failed ? ": " : "", failed ? t.error.c_str() : "");
    save();
  }

  Results results() const {
    Results r;
    r.search = results_.search;
    r.mode = results_.mode;
    for (auto& [id, t] : records_) r.trials.push_back(t);
    return r;
  }
  void save() const {
    if (!o_.results.empty()) results().write(o_.results);
  }

 private:
  double now() const { return std::chrono::duration<double>(comm::Clock::now() - t0_).count(); }

  // The next trial neither resumed from the results file nor handed out yet.
  std::optional<std::size_t> take_next() {
    while (next_ < sampler_.size() && records_.count(next_)) ++next_;
    if (next_ >= sampler_.size()) return std::nullopt;
    return next_++;
  }

  const Smp& sampler_;
  Sch& sched_;
  const SearchOptions& o_;
  comm::Clock::time_point t0_;
  Results results_;
  std::map<std::size_t, TrialRecord> records_;
  std::map<std::size_t, bool> stopped_;
  std::map<std::size_t, std::vector<std::uint8_t>> weights_;
  std::map<int, std::size_t> reserved_;  // group -> its first trial, until it asks
  std::size_t next_ = 0, resumed_ = 0;
};

// Thrown out of report() on the ranks of a group when another of its ranks
// threw: unwinds the training function to the group's agreement. Not a
// std::exception, so a training function's catch (const std::exception&)
// lets it through; a catch (...) that swallows it breaks the protocol.
struct GroupFailed {
  std::int32_t who;  // 1 + the highest group rank that threw
};

// Message kinds and tags on the control communicator.
enum : int { ask_work = 1, ask_report = 2, give_trial = 1, give_done = 2, give_decision = 3 };
enum : int { tag_ask = 1, tag_ask_payload = 2, tag_give = 3, tag_give_config = 4, tag_give_weights = 5 };
using Header = std::array<double, 6>;

// The per-rank state of one search (a class so the pieces can share it).
template <class T, class Smp, class Sch, class F>
class Runner {
  using Comm = comm::Communicator<comm::Ring, T>;

 public:
  Runner(T& world, const Smp& sampler, Sch& sched, F& train, const SearchOptions& o)
      : world_(world), sampler_(sampler), sched_(sched), train_(train), o_(o), t0_(comm::Clock::now()) {}

  Results run() {
    const int W = world_.size(), g = o_.ranks_per_trial;
    if (g < 1) throw_error<ValueError>("tune::search: ranks_per_trial must be at least 1, got ", g);
    if (W % g != 0)
      throw_error<ValueError>("tune::search: trials of ", g, " ranks do not divide the world of ", W,
                              " ranks evenly; choose ranks_per_trial among the divisors of ", W);
    groups_ = W / g;
    rank_ = world_.rank();
    group_ = rank_ / g;
    grank_ = rank_ % g;
    const auto dl = comm::deadline_after(o_.timeout);
    const comm::CommOptions co{.timeout = o_.timeout, .fingerprints = false, .deterministic = false};
    Comm ctl{world_.split(0, rank_, dl), co};
    Comm gctl{world_.split(group_, rank_, dl), co};
    T base = world_.split(group_, rank_, dl);
    ctl_ = &ctl;
    gctl_ = &gctl;

    // The coordinator reads the results file; every rank learns whether that worked.
    std::string setup_error;
    if (rank_ == 0) {
      try {
        coord_.emplace(sampler_, sched_, o_, t0_);
        coord_->reserve_first(groups_);
        coord_->save();  // a results path that cannot be written fails now, on every rank
      } catch (const std::exception& e) {
        setup_error = e.what();
      }
    }
    std::string err = share_text(ctl, setup_error, 0);
    if (!err.empty()) throw_error<ValueError>(err);
    if (rank_ == 0) for (int l = 1; l < groups_; ++l) post(l);

    std::optional<std::pair<std::size_t, std::string>> prev;  // (trial, error) of the last trial, leader only
    bool prev_failed = false;
    for (;;) {
      // The leader gets a trial (or "done"), the group learns it.
      Header h{};
      std::string config_text;
      if (grank_ == 0) {
        auto a = ask_work(prev, prev_failed);
        if (a) {
          h = {1, static_cast<double>(a->first), 0, 0, 0, 0};
          config_text = detail::encode(a->second);
        }
      }
      gctl.broadcast(h, 0);
      config_text = share_text(gctl, config_text, 0);
      if (h[0] == 0) break;

      Trial trial;
      trial.id_ = static_cast<std::size_t>(h[1]);
      trial.config_ = detail::decode(config_text);
      trial.max_epochs_ = sched_.max_epochs();
      trial.group_ = group_;
      std::exception_ptr control_error;  // the search's own messages failed: not the trial's fault
      trial.report_ = [&](int epoch, double metric, std::span<const float> w) {
        try {
          return report(trial, epoch, metric, w);
        } catch (const detail::GroupFailed&) {
          throw;
        } catch (...) {
          control_error = std::current_exception();
          throw;
        }
      };
      std::string error;
      bool failed = false;
      std::int32_t who = -1;  // set when report() already took part in the group's agreement
      try {
        T sub = base.split(0, grank_, comm::deadline_after(o_.timeout));
        train_(trial, sub);
      } catch (const detail::GroupFailed& g) {
        who = g.who;
      } catch (const std::exception& e) {
        failed = true;
        error = e.what();
      } catch (...) {
        failed = true;
        error = "unknown exception";
      }
      if (control_error) std::rethrow_exception(control_error);
      // The group agrees: the highest group rank that threw supplies the message. This
      // allreduce is the one every report() opens with, so ranks still reporting learn of
      // the failure there (GroupFailed) instead of waiting for a decision that never comes.
      if (who < 0) {
        who = failed ? grank_ + 1 : 0;
        gctl.allreduce(std::span<std::int32_t>(&who, 1), comm::ReduceOp::max);
      }
      if (who > 0) error = share_text(gctl, error, who - 1);
      prev = std::pair{trial.id_, error};
      prev_failed = who > 0;
    }

    // Rank 0 answers the other leaders until each has been told "done".
    if (rank_ == 0) {
      auto last = comm::Clock::now();
      while (done_told_ < groups_ - 1) {
        if (service()) {
          last = comm::Clock::now();
        } else {
          if (comm::Clock::now() - last > o_.timeout)
            throw_error<SearchError>("tune::search on rank 0: no group leader spoke for the whole timeout with ",
                                     groups_ - 1 - done_told_, " groups still working");
          std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
      }
      coord_->save();
    }
    std::string json = rank_ == 0 ? coord_->results().to_json() : std::string();
    json = share_text(ctl, json, 0);
    return rank_ == 0 ? coord_->results() : Results::from_json(json, "tune::search results from rank 0");
  }

 private:
  // Broadcast a string from `root` over c (length, then bytes).
  static std::string share_text(Comm& c, const std::string& s, int root) {
    std::int64_t n = static_cast<std::int64_t>(s.size());
    c.broadcast(std::span<std::int64_t>(&n, 1), root);
    std::vector<std::uint8_t> b = c.rank() == root ? detail::bytes_of(s) : std::vector<std::uint8_t>(static_cast<std::size_t>(n));
    if (n) c.broadcast(b, root);
    return detail::string_of(b);
  }

  int leader_rank(int l) const { return l * o_.ranks_per_trial; }

  // ---- rank 0: the coordinator's mailbox
  void post(int l) {
    inbox_[l].header = {};
    inbox_[l].req = ctl_->irecv(inbox_[l].header, leader_rank(l), detail::tag_ask);
  }
  // Answers every leader whose question has arrived; true if any had.
  bool service() {
    bool any = false;
    for (int l = 1; l < groups_; ++l) {
      auto it = inbox_.find(l);
      if (it == inbox_.end() || !it->second.req.test()) continue;
      any = true;
      const detail::Header h = it->second.header;
      const int peer = leader_rank(l);
      std::vector<std::uint8_t> payload(static_cast<std::size_t>(h[5]));
      if (!payload.empty()) ctl_->recv(payload, peer, detail::tag_ask_payload);
      if (static_cast<int>(h[0]) == detail::ask_work) {
        if (h[1] >= 0) coord_->finish(static_cast<std::size_t>(h[1]), h[4] != 0, detail::string_of(payload));
        auto a = coord_->assign(l);
        if (a) {
          reply(peer, {detail::give_trial, static_cast<double>(a->first), 0, 0, 0, 0}, detail::encode(a->second), {});
          post(l);
        } else {
          reply(peer, {detail::give_done, 0, 0, 0, 0, 0}, {}, {});
          inbox_.erase(it);
          ++done_told_;
        }
      } else {
        detail::Decision d = coord_->report(static_cast<std::size_t>(h[1]), static_cast<int>(h[2]), h[3], std::move(payload));
        reply(peer, {detail::give_decision, static_cast<double>(d.kind), static_cast<double>(d.source), 0, 0, 0},
              d.kind == Action::exploit ? detail::encode(d.config) : std::string(), d.weights);
        post(l);
      }
    }
    return any;
  }
  void reply(int peer, detail::Header h, const std::string& config, const std::vector<std::uint8_t>& weights) {
    h[4] = static_cast<double>(config.size());
    h[5] = static_cast<double>(weights.size());
    ctl_->send(h, peer, detail::tag_give);
    if (!config.empty()) ctl_->send(detail::bytes_of(config), peer, detail::tag_give_config);
    if (!weights.empty()) ctl_->send(weights, peer, detail::tag_give_weights);
  }

  // ---- a leader's questions (rank 0 answers its own directly)
  std::optional<std::pair<std::size_t, Config>> ask_work(const std::optional<std::pair<std::size_t, std::string>>& prev,
                                                         bool prev_failed) {
    if (rank_ == 0) {
      if (prev) coord_->finish(prev->first, prev_failed, prev->second);
      service();
      return coord_->assign(0);
    }
    const std::string err = prev && prev_failed ? prev->second : std::string();
    detail::Header h{detail::ask_work, prev ? static_cast<double>(prev->first) : -1.0, 0, 0, prev_failed ? 1.0 : 0.0,
                     static_cast<double>(err.size())};
    ctl_->send(h, 0, detail::tag_ask);
    if (!err.empty()) ctl_->send(detail::bytes_of(err), 0, detail::tag_ask_payload);
    detail::Header r{};
    std::string config;
    std::vector<std::uint8_t> weights;
    receive_reply(r, config, weights);
    if (static_cast<int>(r[0]) == detail::give_done) return std::nullopt;
    return std::pair{static_cast<std::size_t>(r[1]), detail::decode(config)};
  }
  void receive_reply(detail::Header& r, std::string& config, std::vector<std::uint8_t>& weights) {
    ctl_->recv(r, 0, detail::tag_give);
    std::vector<std::uint8_t> c(static_cast<std::size_t>(r[4]));
    if (!c.empty()) ctl_->recv(c, 0, detail::tag_give_config);
    config = detail::string_of(c);
    weights.assign(static_cast<std::size_t>(r[5]), 0);
    if (!weights.empty()) ctl_->recv(weights, 0, detail::tag_give_weights);
  }

  bool report(Trial& trial, int epoch, double metric, std::span<const float> w) {
    // Has a rank of the group left the trial by throwing? (It waits in the same allreduce.)
    std::int32_t who = 0;
    gctl_->allreduce(std::span<std::int32_t>(&who, 1), comm::ReduceOp::max);
    if (who > 0) throw detail::GroupFailed{who};
    detail::Decision d;
    if (grank_ == 0) {
      if (rank_ == 0) {
        d = coord_->report(trial.id_, epoch, metric, detail::bytes_of(w));
        service();
      } else {
        std::vector<std::uint8_t> wb = detail::bytes_of(w);
        detail::Header h{detail::ask_report, static_cast<double>(trial.id_), static_cast<double>(epoch), metric, 0,
                         static_cast<double>(wb.size())};
        ctl_->send(h, 0, detail::tag_ask);
        if (!wb.empty()) ctl_->send(wb, 0, detail::tag_ask_payload);
        detail::Header r{};
        std::string config;
        receive_reply(r, config, d.weights);
        d.kind = static_cast<Action::Kind>(static_cast<int>(r[1]));
        d.source = static_cast<std::size_t>(r[2]);
        if (d.kind == Action::exploit) d.config = detail::decode(config);
      }
    }
    // The group acts on the leader's decision.
    std::array<double, 2> k{static_cast<double>(d.kind), static_cast<double>(d.source)};
    gctl_->broadcast(k, 0);
    d.kind = static_cast<Action::Kind>(static_cast<int>(k[0]));
    d.source = static_cast<std::size_t>(k[1]);
    trial.exploited_ = false;
    if (d.kind == Action::exploit) {
      trial.config_ = detail::decode(share_text(*gctl_, detail::encode(d.config), 0));
      trial.weights_ = detail::floats_of(detail::bytes_of(share_text(*gctl_, detail::string_of(d.weights), 0)));
      trial.exploited_ = true;
      trial.source_ = d.source;
    }
    return d.kind != Action::stop;
  }

  struct Mailbox {
    detail::Header header{};
    typename Comm::Request req;
  };

  T& world_;
  const Smp& sampler_;
  Sch& sched_;
  F& train_;
  const SearchOptions& o_;
  comm::Clock::time_point t0_;
  int groups_ = 1, rank_ = 0, group_ = 0, grank_ = 0, done_told_ = 0;
  Comm* ctl_ = nullptr;
  Comm* gctl_ = nullptr;
  std::optional<detail::Coordinator<Smp, Sch>> coord_;
  std::map<int, Mailbox> inbox_;
};

}  // namespace detail

// Runs the search on every rank of `world` (collective: every rank calls it
// with the same sampler, scheduler and options). `train(trial, group)` is
// called on every rank of a group with the group's Transport. Only world rank
// 0 drives the scheduler (the others read max_epochs()), so ranks as threads
// may share one scheduler object.
template <comm::Transport T, Sampler Smp, Scheduler Sch, class F>
  requires std::invocable<F&, Trial&, T&>
Results search(T& world, const Smp& sampler, Sch& scheduler, F&& train, SearchOptions o = {}) {
  detail::Runner<T, Smp, Sch, std::remove_reference_t<F>> r(world, sampler, scheduler, train, o);
  return r.run();
}

}  // namespace weft::tune
