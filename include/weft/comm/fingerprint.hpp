// What a rank says it is calling: (op, dtype, count, root, reduce op, sequence
// number, mode, and the algorithm it will run). Ranks exchange these before
// moving data so a mismatched call fails on every rank with a message naming
// who called what, instead of hanging or returning garbage. The algorithm is
// there for policies that choose per call (Auto): ranks that loaded different
// cost files choose differently, and their schedules would never meet.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "../core/dtype.hpp"
#include "collective.hpp"
#include "reduce_op.hpp"

namespace weft::comm {

struct Fingerprint {
  std::uint64_t seq = 0;
  std::uint64_t count = 0;
  std::int32_t root = -1;
  Collective op = Collective::barrier;
  dtype type = dtype::u8;
  ReduceOp reduce = ReduceOp::sum;
  std::uint8_t deterministic = 0;
  char algorithm[23] = {};  // the policy's name, or the candidate Auto chose (truncated, NUL-terminated)

  friend bool operator==(const Fingerprint&, const Fingerprint&) = default;

  void set_algorithm(const char* name) {
    std::size_t i = 0;
    for (; name && name[i] && i + 1 < sizeof algorithm; ++i) algorithm[i] = name[i];
    for (; i < sizeof algorithm; ++i) algorithm[i] = '\0';
  }

  // "allreduce(f32 x 1025)", with root / reduce op / mode / algorithm when they matter.
  std::string describe(bool with_reduce = false, bool with_mode = false, bool with_algorithm = false) const {
    std::ostringstream os;
    os << collective_name(op) << '(';
    if (op != Collective::barrier) os << dtype_name(type) << " x " << count;
    if (has_root(op)) os << ", root " << root;
    if (with_reduce && is_reduction(op)) os << ", " << reduce_op_name(reduce);
    if (with_mode) os << (deterministic ? ", deterministic" : ", fast");
    if (with_algorithm) os << ", algorithm " << algorithm;
    os << ')';
    if (seq) os << " #" << seq;
    return os.str();
  }
};

namespace detail {

inline std::string rank_list(const std::vector<int>& ranks) {
  std::string s;
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ranks[i]);
  }
  return s;
}

// "rank 3 did not arrive (ranks 0,1,2 did)".
inline std::string did_not_arrive(const std::vector<int>& missing, const std::vector<int>& here) {
  if (missing.empty()) return "every rank arrived, but not every rank's messages did";
  std::string s = (missing.size() == 1 ? "rank " : "ranks ") + rank_list(missing) + " did not arrive";
  if (!here.empty()) s += std::string(here.size() == 1 ? " (rank " : " (ranks ") + rank_list(here) + " did)";
  return s;
}

// "" when all equal, else "rank 2 called allreduce(f32 x 1025), ranks 0,1,3 called allreduce(f32 x 262144)".
inline std::string mismatch_message(const Fingerprint* all, int n) {
  std::vector<std::pair<Fingerprint, std::vector<int>>> groups;
  for (int r = 0; r < n; ++r) {
    auto it = std::find_if(groups.begin(), groups.end(), [&](auto& g) { return g.first == all[r]; });
    if (it == groups.end()) groups.push_back({all[r], {r}});
    else it->second.push_back(r);
  }
  if (groups.size() <= 1) return {};
  bool reduce_differs = false, mode_differs = false, seq_differs = false, algorithm_differs = false;
  for (auto& g : groups) {
    reduce_differs |= g.first.reduce != groups[0].first.reduce;
    mode_differs |= g.first.deterministic != groups[0].first.deterministic;
    seq_differs |= g.first.seq != groups[0].first.seq;
    algorithm_differs |= std::string_view(g.first.algorithm) != groups[0].first.algorithm;
  }
  std::stable_sort(groups.begin(), groups.end(), [](auto& a, auto& b) { return a.second.size() < b.second.size(); });
  std::string msg;
  for (auto& g : groups) {
    Fingerprint f = g.first;
    if (!seq_differs) f.seq = 0;
    msg += (msg.empty() ? "" : ", ") + std::string(g.second.size() == 1 ? "rank " : "ranks ") + rank_list(g.second) +
           " called " + f.describe(reduce_differs, mode_differs, algorithm_differs);
  }
  if (algorithm_differs)
    msg += " (the algorithm is chosen per call: give every rank the same policy and the same cost model)";
  return msg;
}

// The algorithm a call of `a` runs: the candidate a per-call chooser (Auto)
// picks, else the policy's name.
template <class A>
const char* algorithm_of_call(const A& a, Collective op, dtype type, std::uint64_t count, int p,
                              const char* transport, bool in_place) {
  if constexpr (requires { a.chosen(op, type, std::size_t{}, p, transport, in_place); })
    return a.chosen(op, type, static_cast<std::size_t>(count), p, transport, in_place);
  else
    return A::name;
}

}  // namespace detail
}  // namespace weft::comm
