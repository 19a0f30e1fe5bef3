// The calibration file written by `weft-bench calibrate` and read by every
// run (predicted times, the Auto policy's CostModel) and by `weft-bench
// project`. Plain text, one section per transport, so thread and MPI
// calibrations (run separately, the second under mpirun) share one file:
//
//   # weft cost model: seconds per message, seconds per byte
//   [threads]
//   alpha 3.1e-07
//   beta 9.4e-11
//   gamma 1.2e-10
//   alpha_inter 5e-06
//   beta_inter 8.3e-10
//   ranks_per_node 0
#pragma once

#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>

#include <weft/comm/cost_model.hpp>

namespace weft_bench {

using Sections = std::map<std::string, weft::comm::CostModel>;

inline Sections read_cost_file(const std::string& path) {
  Sections s;
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read cost-model file '" + path + "'");
  std::string line, section;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    auto hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    std::istringstream ls(line);
    std::string key;
    if (!(ls >> key)) continue;
    if (key.front() == '[' && key.back() == ']') {
      section = key.substr(1, key.size() - 2);
      s[section] = weft::comm::CostModel{};
      continue;
    }
    double v = 0;
    if (section.empty() || !(ls >> v))
      throw std::runtime_error(path + ":" + std::to_string(lineno) + ": expected '[transport]' or 'key value'");
    auto& m = s[section];
    if (key == "alpha") m.alpha = v;
    else if (key == "beta") m.beta = v;
    else if (key == "gamma") m.gamma = v;
    else if (key == "alpha_inter") m.alpha_inter = v;
    else if (key == "beta_inter") m.beta_inter = v;
    else if (key == "ranks_per_node") m.ranks_per_node = static_cast<int>(v);
    else
      throw std::runtime_error(path + ":" + std::to_string(lineno) + ": unknown key '" + key +
                               "' (accepted: alpha beta gamma alpha_inter beta_inter ranks_per_node)");
  }
  return s;
}

inline void write_cost_file(const std::string& path, const Sections& s) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot write cost-model file '" + path + "'");
  out << "# weft cost model (weft-bench calibrate): alpha, alpha_inter in s per message;\n"
         "# beta, beta_inter in s per byte moved; gamma in s per byte combined\n";
  char buf[64];
  auto put = [&](const char* k, double v) {
    std::snprintf(buf, sizeof buf, "%.6g", v);
    out << k << ' ' << buf << '\n';
  };
  for (const auto& [name, m] : s) {
    out << '[' << name << "]\n";
    put("alpha", m.alpha);
    put("beta", m.beta);
    put("gamma", m.gamma);
    put("alpha_inter", m.alpha_inter);
    put("beta_inter", m.beta_inter);
    out << "ranks_per_node " << m.ranks_per_node << '\n';
  }
}

}  // namespace weft_bench
