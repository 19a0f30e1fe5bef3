// Cost-model files: what `weft-bench calibrate` writes and what Auto reads
// (CostFile::load, or the file named by WEFT_COST_MODEL). Plain text, one
// section per transport, named as the transport names itself ("threads",
// "mpi"), so calibrations run separately (the MPI one under mpirun) share a
// file:
//
//   # weft cost model: seconds per message, seconds per byte
//   [threads]
//   alpha 3.1e-07
//   beta 9.4e-11
//   gamma 1.2e-10
//   alpha_inter 5e-06
//   beta_inter 8.3e-10
//   ranks_per_node 0
//   # decide OP RANKS FROM_BYTES TO_BYTES ALGORITHM MARGIN RUNNER_UP
//   decide allreduce 2 0 23169 recursive_doubling 1.42 ring
//   decide allreduce 2 23170 inf ring 1.05 recursive_doubling
//
// A `decide` line is one measured Decision (cost_model.hpp): sizes FROM..TO
// bytes inclusive, `inf` for no upper end. Files without decide lines (older
// calibrations) read as before. Ranges of one (op, ranks) must not overlap.
//
// Every rank must load the same file: Auto's choice then depends only on
// values equal on every rank, so all ranks run the same algorithm.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "../../core/error.hpp"
#include "../collective.hpp"
#include "cost_model.hpp"

namespace weft::comm {

struct CostFile {
  std::map<std::string, CostModel, std::less<>> sections;  // by transport name

  // The section for a transport, or nullptr.
  const CostModel* find(std::string_view transport) const {
    auto it = sections.find(transport);
    return it == sections.end() ? nullptr : &it->second;
  }

  // Throws IoError naming the file, and for malformed content its line and
  // what was expected there.
  static CostFile load(const std::string& path);
  void save(const std::string& path) const;

  // The file named by WEFT_COST_MODEL, or an empty CostFile when it is unset
  // or empty. A set variable naming a bad file throws (a typo must not
  // silently fall back to the built-in constants).
  static CostFile from_environment() {
    const char* path = std::getenv("WEFT_COST_MODEL");
    if (!path || !*path) return {};
    return load(path);
  }
};

// One section of a file: the model for one transport.
inline CostModel load_cost_model(const std::string& path, std::string_view transport) {
  CostFile f = CostFile::load(path);
  const CostModel* m = f.find(transport);
  if (!m) {
    std::string have;
    for (const auto& [name, _] : f.sections) have += (have.empty() ? "" : ", ") + name;
    throw_error<IoError>(path, ": no [", transport, "] section (the file has: ", have.empty() ? "none" : have, ")");
  }
  return *m;
}

namespace detail {

inline bool parse_collective(std::string_view s, Collective& out) {
  for (int k = 0; k <= static_cast<int>(Collective::barrier); ++k)
    if (s == collective_name(static_cast<Collective>(k))) {
      out = static_cast<Collective>(k);
      return true;
    }
  return false;
}

inline bool parse_size(const std::string& s, std::size_t& out) {
  if (s == "inf") {
    out = std::numeric_limits<std::size_t>::max();
    return true;
  }
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos) return false;
  char* end = nullptr;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  out = static_cast<std::size_t>(v);
  return *end == '\0';
}

// A whole token as a finite double ("1e-6" yes, "1e-6x" no).
inline bool parse_number(const std::string& s, double& out) {
  char* end = nullptr;
  out = std::strtod(s.c_str(), &end);
  return !s.empty() && *end == '\0' && std::isfinite(out);
}

}  // namespace detail

inline CostFile CostFile::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_error<IoError>("cannot read cost-model file '", path, "'");
  CostFile f;
  CostModel* cur = nullptr;
  std::map<const CostModel*, std::vector<int>> lines;  // source line of each decision, for overlap errors
  std::string line;
  int lineno = 0;
  auto fail = [&](const std::string& what) { throw_error<IoError>(path, ":", lineno, ": ", what); };
  while (std::getline(in, line)) {
    ++lineno;
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream ls(line);
    std::vector<std::string> tok;
    for (std::string t; ls >> t;) tok.push_back(t);
    if (tok.empty()) continue;
    const std::string& key = tok[0];
    if (key.front() == '[') {
      if (tok.size() != 1 || key.size() < 3 || key.back() != ']') fail("expected '[transport]', got '" + line + "'");
      cur = &f.sections[key.substr(1, key.size() - 2)];
      *cur = CostModel{};
      lines[cur].clear();
      continue;
    }
    if (!cur) fail("expected a '[transport]' section header before '" + key + "'");
    if (key == "decide") {
      Decision d;
      if (tok.size() != 8)
        fail("expected 'decide OP RANKS FROM_BYTES TO_BYTES ALGORITHM MARGIN RUNNER_UP' (8 fields), got " +
             std::to_string(tok.size()));
      if (!detail::parse_collective(tok[1], d.op))
        fail("unknown collective '" + tok[1] + "' (accepted: allreduce, reduce_scatter, allgather, broadcast, "
             "reduce, gather, scatter, alltoall, barrier)");
      std::size_t ranks = 0;
      if (!detail::parse_size(tok[2], ranks) || ranks < 1 || ranks > (1u << 24))
        fail("expected a rank count >= 1, got '" + tok[2] + "'");
      d.ranks = static_cast<int>(ranks);
      if (!detail::parse_size(tok[3], d.min_bytes)) fail("expected FROM_BYTES as an integer, got '" + tok[3] + "'");
      if (!detail::parse_size(tok[4], d.max_bytes))
        fail("expected TO_BYTES as an integer or 'inf', got '" + tok[4] + "'");
      if (d.min_bytes > d.max_bytes) fail("FROM_BYTES " + tok[3] + " is larger than TO_BYTES " + tok[4]);
      d.algorithm = tok[5];
      if (!detail::parse_number(tok[6], d.margin) || d.margin <= 0)
        fail("expected MARGIN as a positive number, got '" + tok[6] + "'");
      d.runner_up = tok[7];
      for (std::size_t k = 0; k < cur->decisions.size(); ++k) {
        const Decision& o = cur->decisions[k];
        if (o.op == d.op && o.ranks == d.ranks && d.min_bytes <= o.max_bytes && o.min_bytes <= d.max_bytes)
          fail("range " + tok[3] + ".." + tok[4] + " of " + tok[1] + " at " + tok[2] + " ranks overlaps line " +
               std::to_string(lines[cur][k]));
      }
      cur->decisions.push_back(std::move(d));
      lines[cur].push_back(lineno);
      continue;
    }
    double v = 0;
    if (tok.size() != 2 || !detail::parse_number(tok[1], v))
      fail("expected 'key value' with one number, or 'decide ...', got '" + line + "'");
    if (key == "alpha") cur->alpha = v;
    else if (key == "beta") cur->beta = v;
    else if (key == "gamma") cur->gamma = v;
    else if (key == "alpha_inter") cur->alpha_inter = v;
    else if (key == "beta_inter") cur->beta_inter = v;
    else if (key == "ranks_per_node") cur->ranks_per_node = static_cast<int>(v);
    else
      fail("unknown key '" + key + "' (accepted: alpha beta gamma alpha_inter beta_inter ranks_per_node decide)");
  }
  return f;
}

inline void CostFile::save(const std::string& path) const {
  std::ofstream out(path);
  if (!out) throw_error<IoError>("cannot write cost-model file '", path, "'");
  out << "# weft cost model (weft-bench calibrate): alpha, alpha_inter in s per message;\n"
         "# beta, beta_inter in s per byte moved; gamma in s per byte combined\n";
  char buf[64];
  auto num = [&](double v) {
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return std::string(buf);
  };
  auto size = [](std::size_t s) {
    return s == std::numeric_limits<std::size_t>::max() ? std::string("inf") : std::to_string(s);
  };
  for (const auto& [name, m] : sections) {
    out << '[' << name << "]\n";
    out << "alpha " << num(m.alpha) << "\nbeta " << num(m.beta) << "\ngamma " << num(m.gamma) << "\nalpha_inter "
        << num(m.alpha_inter) << "\nbeta_inter " << num(m.beta_inter) << "\nranks_per_node " << m.ranks_per_node
        << '\n';
    if (m.decisions.empty()) continue;
    out << "# Auto's measured choices: decide OP RANKS FROM_BYTES TO_BYTES ALGORITHM MARGIN RUNNER_UP\n"
           "# (margin: how much slower the runner-up measured than the choice, as a ratio)\n";
    std::vector<const Decision*> ds;
    for (const Decision& d : m.decisions) ds.push_back(&d);
    std::stable_sort(ds.begin(), ds.end(), [](const Decision* a, const Decision* b) {
      if (a->op != b->op) return a->op < b->op;
      if (a->ranks != b->ranks) return a->ranks < b->ranks;
      return a->min_bytes < b->min_bytes;
    });
    for (const Decision* d : ds)
      out << "decide " << collective_name(d->op) << ' ' << d->ranks << ' ' << size(d->min_bytes) << ' '
          << size(d->max_bytes) << ' ' << d->algorithm << ' ' << num(d->margin) << ' '
          << (d->runner_up.empty() ? std::string("-") : d->runner_up) << '\n';
  }
  if (!out) throw_error<IoError>("cannot write cost-model file '", path, "'");
}

}  // namespace weft::comm
