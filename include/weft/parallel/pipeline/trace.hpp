// Pipeline timelines: each action's start and end per rank, measured by the
// pipeline or simulated from per-stage F/B/W times; the bubble (idle share of
// the ranks' time), a Chrome trace JSON (chrome://tracing, Perfetto) and an
// ASCII timeline.
#pragma once

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "schedule.hpp"

namespace weft::parallel::pipeline {

struct Event {
  Action action;
  double start = 0;  // seconds, on a clock shared by the ranks
  double end = 0;
};

struct Trace {
  std::vector<std::vector<Event>> ranks;  // per rank, in execution order

  double begin() const {
    double b = 1e300;
    for (const auto& r : ranks)
      for (const Event& e : r) b = std::min(b, e.start);
    return b == 1e300 ? 0 : b;
  }
  double end() const {
    double t = -1e300;
    for (const auto& r : ranks)
      for (const Event& e : r) t = std::max(t, e.end);
    return t == -1e300 ? 0 : t;
  }
  double makespan() const { return end() - begin(); }
  // Time rank r spent in F, B and W.
  double busy(int r) const {
    double b = 0;
    for (const Event& e : ranks[static_cast<std::size_t>(r)])
      if (is_compute(e.action.op)) b += e.end - e.start;
    return b;
  }
  // Idle share of p ranks x makespan: 1 - sum(busy) / (p x makespan).
  double bubble() const {
    const double t = makespan();
    if (t <= 0 || ranks.empty()) return 0;
    double b = 0;
    for (int r = 0; r < static_cast<int>(ranks.size()); ++r) b += busy(r);
    return 1.0 - b / (static_cast<double>(ranks.size()) * t);
  }
};

// Times of F, B and W on each stage (seconds); with an unsplit schedule B is
// the whole backward, so give b = B + W there. latency: from a send to the
// matching receive's data.
struct StageCosts {
  std::vector<double> f, b, w;
  double latency = 0;
};

// Runs the schedule's lists in time: a compute action starts when its rank is
// free and, for a receive, when the message has arrived. The schedule must
// have passed validate().
inline Trace simulate(const Schedule& s, const StageCosts& c) {
  const int S = s.stages(), m = s.micro_batches;
  if (static_cast<int>(c.f.size()) != S || static_cast<int>(c.b.size()) != S || (s.split && static_cast<int>(c.w.size()) != S))
    throw_error<ValueError>("simulate: give F, B", s.split ? " and W" : "", " times for each of the ", S, " stages");
  validate(s);
  Trace tr;
  tr.ranks.resize(static_cast<std::size_t>(s.ranks));
  std::vector<double> arrive(static_cast<std::size_t>(2 * S * m), -1);
  std::vector<std::size_t> pc(static_cast<std::size_t>(s.ranks), 0);
  std::vector<double> clock(static_cast<std::size_t>(s.ranks), 0);
  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < s.ranks; ++r) {
      const auto& list = s.actions[static_cast<std::size_t>(r)];
      auto& k = pc[static_cast<std::size_t>(r)];
      double& t = clock[static_cast<std::size_t>(r)];
      while (k < list.size()) {
        const Action& a = list[k];
        const int st = s.stage(r, a.chunk);
        double start = t, dur = 0;
        if (a.op == Op::recv_act || a.op == Op::recv_grad) {
          const double at = arrive[static_cast<std::size_t>(detail::msg_index(s, detail::msg_of(s, r, a)))];
          if (at < 0) break;
          start = std::max(t, at);
        } else if (a.op == Op::send_act || a.op == Op::send_grad) {
          arrive[static_cast<std::size_t>(detail::msg_index(s, detail::msg_of(s, r, a)))] = t + c.latency;
        } else {
          dur = a.op == Op::F ? c.f[static_cast<std::size_t>(st)]
                              : a.op == Op::B ? c.b[static_cast<std::size_t>(st)] : c.w[static_cast<std::size_t>(st)];
        }
        tr.ranks[static_cast<std::size_t>(r)].push_back({a, start, start + dur});
        t = start + dur;
        ++k;
        progress = true;
      }
    }
  }
  return tr;
}

// One line per rank, `width` columns over the makespan: F, B, W (lower case
// for odd chunks), '.' idle; below it the micro-batch of each column (mod 10).
inline std::string ascii_timeline(const Trace& tr, int width = 96) {
  const double t0 = tr.begin(), span = tr.makespan();
  std::string out;
  if (span <= 0) return out;
  for (std::size_t r = 0; r < tr.ranks.size(); ++r) {
    std::string ops(static_cast<std::size_t>(width), '.'), mbs(static_cast<std::size_t>(width), ' ');
    for (const Event& e : tr.ranks[r]) {
      if (!is_compute(e.action.op)) continue;
      int a = static_cast<int>((e.start - t0) / span * width + 0.5), b = static_cast<int>((e.end - t0) / span * width + 0.5);
      a = std::clamp(a, 0, width - 1);
      b = std::clamp(std::max(b, a + 1), 1, width);
      char ch = op_name(e.action.op)[0];
      if (e.action.chunk % 2) ch = static_cast<char>(ch - 'A' + 'a');
      for (int i = a; i < b; ++i) {
        ops[static_cast<std::size_t>(i)] = ch;
        mbs[static_cast<std::size_t>(i)] = static_cast<char>('0' + e.action.mb % 10);
      }
    }
    char head[32];
    std::snprintf(head, sizeof head, "rank %zu |", r);
    out += head + ops + "|\n";
    out += std::string(std::string(head).size() - 1, ' ') + "|" + mbs + "|\n";
  }
  return out;
}

// Chrome's trace event format: one complete event ("ph":"X") per action,
// microseconds from the first action, pid 0, tid = rank.
inline std::string chrome_trace_json(const Trace& tr, const char* schedule_name = "") {
  const double t0 = tr.begin();
  std::string out = "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"schedule\":\"" + std::string(schedule_name) +
                    "\"},\"traceEvents\":[";
  bool first = true;
  char buf[256];
  for (std::size_t r = 0; r < tr.ranks.size(); ++r) {
    std::snprintf(buf, sizeof buf, "%s{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":0,\"tid\":%zu,\"args\":{\"name\":\"rank %zu\"}}",
                  first ? "" : ",", r, r);
    out += buf;
    first = false;
    for (const Event& e : tr.ranks[r]) {
      std::snprintf(buf, sizeof buf,
                    ",{\"name\":\"%s%d\",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":0,\"tid\":%zu,\"ts\":%.3f,\"dur\":%.3f,"
                    "\"args\":{\"micro_batch\":%d,\"chunk\":%d}}",
                    op_name(e.action.op), e.action.mb, op_name(e.action.op), r, (e.start - t0) * 1e6,
                    (e.end - e.start) * 1e6, e.action.mb, e.action.chunk);
      out += buf;
    }
  }
  return out + "]}\n";
}

}  // namespace weft::parallel::pipeline
