// Results of a search: one record per trial (id, hyperparameters, the metric
// at every epoch it reported with the time since the search started, status,
// error, wall time), written as JSON (the complete record, read back to
// resume) and as CSV (one row per trial, one column per reported epoch).
//
//   {"search": "<sampler> | <scheduler>", "mode": "max",
//    "trials": [{"id": 0, "group": 1, "status": "stopped", "error": "",
//                "start_s": 0.01, "end_s": 3.2, "config": {"lr": 0.001, "opt": "adam"},
//                "reports": [[1, 0.81, 1.6], [3, 0.84, 3.1]]}, ...]}
//
// `reports` rows are [epoch, metric, seconds since the search started]; a
// metric that is not finite is written as null. tools/plot_tune.py in
// examples/10_tune plots metric against time per trial from this file.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>
#include <set>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "../core/error.hpp"
#include "../io/json.hpp"
#include "scheduler.hpp"
#include "space.hpp"

namespace weft::tune {

enum class Status { pending, running, completed, stopped, failed };

inline const char* status_name(Status s) {
  switch (s) {
    case Status::pending: return "pending";
    case Status::running: return "running";
    case Status::completed: return "completed";
    case Status::stopped: return "stopped";
    case Status::failed: return "failed";
  }
  return "?";
}
// Finished trials are not rerun when a search resumes.
inline bool finished(Status s) { return s == Status::completed || s == Status::stopped || s == Status::failed; }

struct Report {
  int epoch = 0;
  double metric = 0;
  double seconds = 0;  // since the search started
};

struct TrialRecord {
  std::size_t id = 0;
  Config config;
  std::vector<Report> reports;
  Status status = Status::pending;
  std::string error;
  int group = -1;
  double start_s = 0, end_s = 0;  // seconds since the search started; end_s: finished, else last report

  double wall_s() const { return end_s - start_s; }
  // Epochs trained: the last epoch reported.
  int epochs() const { return reports.empty() ? 0 : reports.back().epoch; }
  double last_metric() const {
    return reports.empty() ? std::numeric_limits<double>::quiet_NaN() : reports.back().metric;
  }
};

struct Results {
  std::string search;  // the sampler's and scheduler's description: a resumed search must match it
  Mode mode = Mode::max;
  std::vector<TrialRecord> trials;

  // The trial whose last reported metric is best (failed trials and NaNs
  // excluded); nullptr when no trial reported.
  const TrialRecord* best() const {
    const TrialRecord* b = nullptr;
    for (const TrialRecord& t : trials) {
      if (t.status == Status::failed || t.reports.empty() || std::isnan(t.last_metric())) continue;
      if (!b || better(mode, t.last_metric(), b->last_metric())) b = &t;
    }
    return b;
  }
  // Epochs trained over every trial: the cost of the search.
  long long total_epochs() const {
    long long n = 0;
    for (const TrialRecord& t : trials) n += t.epochs();
    return n;
  }
  std::size_t count(Status s) const {
    std::size_t n = 0;
    for (const TrialRecord& t : trials) n += t.status == s;
    return n;
  }

  std::string to_json() const {
    std::string o = "{\"search\": " + io::json::quote(search) + ", \"mode\": \"" + mode_name(mode) +
                    "\",\n \"trials\": [";
    for (std::size_t i = 0; i < trials.size(); ++i) {
      const TrialRecord& t = trials[i];
      o += i ? ",\n  " : "\n  ";
      o += "{\"id\": " + std::to_string(t.id) + ", \"group\": " + std::to_string(t.group) + ", \"status\": \"" +
           status_name(t.status) + "\", \"error\": " + io::json::quote(t.error) + ", \"start_s\": " + num(t.start_s) +
           ", \"end_s\": " + num(t.end_s) + ", \"config\": {";
      for (std::size_t k = 0; k < t.config.items().size(); ++k) {
        const auto& [name, v] = t.config.items()[k];
        o += (k ? ", " : "") + io::json::quote(name) + ": " +
             (std::holds_alternative<double>(v) ? num(std::get<double>(v)) : io::json::quote(std::get<std::string>(v)));
      }
      o += "}, \"reports\": [";
      for (std::size_t k = 0; k < t.reports.size(); ++k)
        o += (k ? ", [" : "[") + std::to_string(t.reports[k].epoch) + ", " + num(t.reports[k].metric) + ", " +
             num(t.reports[k].seconds) + "]";
      o += "]}";
    }
    return o + "\n]}\n";
  }

  // trial,status,wall_s,<hyperparameters...>,epochs,metric,epoch_<e>...,error
  // `metric` is the last reported; one epoch_<e> column per epoch any trial reported.
  std::string to_csv() const {
    std::vector<std::string> names;
    std::set<int> epochs;
    for (const TrialRecord& t : trials) {
      for (auto& [n, v] : t.config.items())
        if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
      for (const Report& r : t.reports) epochs.insert(r.epoch);
    }
    std::string o = "trial,status,wall_s";
    for (auto& n : names) (o += ',') += n;
    o += ",epochs,metric";
    for (int e : epochs) (o += ",epoch_") += std::to_string(e);
    o += ",error\n";
    for (const TrialRecord& t : trials) {
      ((((o += std::to_string(t.id)) += ',') += status_name(t.status)) += ',') += num(t.wall_s());
      for (auto& n : names) {
        o += ',';
        if (t.config.has(n)) o += detail::format_value(t.config.get(n));
      }
      ((o += ',') += std::to_string(t.epochs())) += ',';
      if (!t.reports.empty()) o += num(t.last_metric());
      for (int e : epochs) {
        o += ',';
        for (const Report& r : t.reports)
          if (r.epoch == e) o += num(r.metric);
      }
      ((o += ',') += csv_field(t.error)) += '\n';
    }
    return o;
  }

  // Writes `<base>.json` and `<base>.csv`, each through a temporary file and
  // a rename, so a reader (or a resumed search) never sees half a file.
  void write(const std::string& base) const {
    write_file(base + ".json", to_json());
    write_file(base + ".csv", to_csv());
  }

  static Results from_json(std::string_view text, const std::string& where) {
    using io::json::Value;
    Value j;
    try {
      j = io::json::parse(text);
    } catch (const io::json::Error& e) {
      throw_error<IoError>(where, ": not a tune results file (", e.what(), ")");
    }
    auto bad = [&](const char* what) { throw_error<IoError>(where, ": not a tune results file: ", what); };
    if (!j.is_object() || !j["search"].is_string() || !j["trials"].is_array())
      bad("expected an object with \"search\" and \"trials\"");
    Results r;
    r.search = j["search"].as_string();
    r.mode = j["mode"].as_string() == "min" ? Mode::min : Mode::max;
    for (const Value& t : j["trials"].items()) {
      if (!t.is_object() || !t["id"].is_number()) bad("a trial without an id");
      TrialRecord rec;
      rec.id = static_cast<std::size_t>(t["id"].as_number());
      rec.group = static_cast<int>(t["group"].as_number());
      const std::string& st = t["status"].as_string();
      bool known = false;
      for (Status s : {Status::pending, Status::running, Status::completed, Status::stopped, Status::failed})
        if (st == status_name(s)) rec.status = s, known = true;
      if (!known) bad("a trial with an unknown status");
      rec.error = t["error"].as_string();
      rec.start_s = t["start_s"].as_number();
      rec.end_s = t["end_s"].as_number();
      for (const auto& [name, v] : t["config"].members()) {
        if (v.is_string())
          rec.config.set(name, v.as_string());
        else
          rec.config.set(name, v.is_number() ? v.as_number() : std::numeric_limits<double>::quiet_NaN());
      }
      for (const Value& row : t["reports"].items()) {
        if (!row.is_array() || row.items().size() != 3) bad("a report that is not [epoch, metric, seconds]");
        rec.reports.push_back({static_cast<int>(row.items()[0].as_number()),
                               row.items()[1].is_number() ? row.items()[1].as_number()
                                                          : std::numeric_limits<double>::quiet_NaN(),
                               row.items()[2].as_number()});
      }
      r.trials.push_back(std::move(rec));
    }
    return r;
  }
  static Results read(const std::string& json_path) {
    std::ifstream f(json_path, std::ios::binary);
    if (!f) throw_error<IoError>(json_path, ": cannot open the results file");
    std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    return from_json(text, json_path);
  }

 private:
  static std::string num(double x) { return std::isfinite(x) ? detail::format_number(x) : "null"; }
  static std::string csv_field(const std::string& s) {
    if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
    std::string o = "\"";
    for (char c : s) o += c == '"' ? std::string("\"\"") : std::string(1, c);
    return o + "\"";
  }
  static void write_file(const std::string& path, const std::string& text) {
    const std::string tmp = path + ".tmp";
    {
      std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
      if (!f) throw_error<IoError>(tmp, ": cannot write the results file (does its directory exist?)");
      f << text;
      if (!f.flush()) throw_error<IoError>(tmp, ": write failed");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) throw_error<IoError>(path, ": cannot replace the results file");
  }
};

}  // namespace weft::tune
