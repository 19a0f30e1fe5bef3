// A hyperparameter search space and the configurations drawn from it.
//
//   tune::Space space;
//   space.add("lr", tune::log_uniform(1e-4, 1e-1))
//        .add("wd", tune::choice({0.0, 1e-4, 1e-3}))
//        .add("hidden", tune::integer(64, 512).grid(4));
//   tune::Config c = space.at({0.5, 0.0, 0.99});   // one point of [0, 1)^3 -> values
//   double lr = c.number("lr"); int h = c.integer("hidden");
//
// Every parameter maps a coordinate u in [0, 1] to a value (at(u)), so a
// sampler only has to produce points of the unit cube: grid, random and Sobol
// samplers share the mapping. For the grid, a parameter contributes its
// grid_values(): every choice, every integer of a small range, or `grid(n)`
// evenly spaced points (in log space for the log kinds), endpoints included.
// Numbers are doubles; a choice holds numbers or strings (not both).
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "../core/error.hpp"

namespace weft::tune {

// A hyperparameter's value: a number or a string (from a choice of strings).
using Value = std::variant<double, std::string>;

namespace detail {
// Shortest text that reads back to the same double (std::to_chars), so files round-trip exactly.
inline std::string format_number(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, r.ptr);
}
inline std::string format_value(const Value& v) {
  return std::holds_alternative<double>(v) ? format_number(std::get<double>(v)) : std::get<std::string>(v);
}
inline bool valid_name(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
          c == '-'))
      return false;
  return true;
}
// Text a choice may hold: printable, and nothing that needs quoting in CSV or escaping in JSON.
inline bool valid_text(std::string_view s) {
  for (char c : s)
    if (c < 0x20 || c == ',' || c == '"' || c == '\\' || c == 0x7f) return false;
  return true;
}
}  // namespace detail

enum class Kind { choice, uniform, log_uniform, integer, log_integer };

inline const char* kind_name(Kind k) {
  switch (k) {
    case Kind::choice: return "choice";
    case Kind::uniform: return "uniform";
    case Kind::log_uniform: return "log_uniform";
    case Kind::integer: return "integer";
    case Kind::log_integer: return "log_integer";
  }
  return "?";
}

// One dimension of the space. Build it with choice(), uniform(), log_uniform(),
// integer() or log_integer(); the space checks it when it is added.
struct Param {
  Kind kind = Kind::uniform;
  double lo = 0, hi = 1;        // bounds (inclusive for the integer kinds)
  std::vector<Value> choices;   // Kind::choice
  int grid_points = 3;          // continuous kinds' points on the grid

  Param& grid(int n) {
    grid_points = n;
    return *this;
  }

  bool is_integer() const { return kind == Kind::integer || kind == Kind::log_integer; }
  bool is_log() const { return kind == Kind::log_uniform || kind == Kind::log_integer; }

  // The value at coordinate u in [0, 1] (u = 1 gives the upper bound or last choice).
  Value at(double u) const {
    u = std::clamp(u, 0.0, 1.0);
    switch (kind) {
      case Kind::choice: {
        const auto n = choices.size();
        return choices[std::min(n - 1, static_cast<std::size_t>(u * static_cast<double>(n)))];
      }
      case Kind::uniform: return u >= 1.0 ? hi : lo + u * (hi - lo);
      case Kind::log_uniform:
        // The bounds exactly (exp(log(x)) may round away from x).
        return u <= 0.0 ? lo : u >= 1.0 ? hi : std::exp(std::log(lo) + u * (std::log(hi) - std::log(lo)));
      case Kind::integer: {
        const double n = hi - lo + 1;
        return std::min(hi, lo + std::floor(u * n));
      }
      case Kind::log_integer: {
        // Uniform in log over [lo, hi + 1), floored: each integer's share is its log-width.
        const double x = std::exp(std::log(lo) + u * (std::log(hi + 1) - std::log(lo)));
        return std::clamp(std::floor(x), lo, hi);
      }
    }
    return 0.0;
  }

  // The values this parameter takes on a grid, in increasing order of u.
  std::vector<Value> grid_values() const {
    if (kind == Kind::choice) return choices;
    std::vector<Value> out;
    if (is_integer() && hi - lo + 1 <= grid_points) {
      for (double v = lo; v <= hi; v += 1) out.emplace_back(v);
      return out;
    }
    if (grid_points == 1) {
      out.push_back(at(0.5));
      return out;
    }
    for (int k = 0; k < grid_points; ++k) {
      const double t = static_cast<double>(k) / (grid_points - 1);
      double v = k == 0 ? lo
                 : k == grid_points - 1 ? hi
                 : is_log() ? std::exp(std::log(lo) + t * (std::log(hi) - std::log(lo)))
                            : lo + t * (hi - lo);
      if (is_integer()) v = std::clamp(std::round(v), lo, hi);
      if (out.empty() || std::get<double>(out.back()) != v) out.emplace_back(v);
    }
    return out;
  }

  std::string describe() const {
    std::string s = kind_name(kind);
    s += '(';
    if (kind == Kind::choice) {
      for (std::size_t i = 0; i < choices.size(); ++i) s += (i ? " " : "") + detail::format_value(choices[i]);
    } else {
      s += detail::format_number(lo) + " " + detail::format_number(hi) + " grid " + std::to_string(grid_points);
    }
    return s + ')';
  }
};

inline Param choice(std::initializer_list<double> values) {
  Param p;
  p.kind = Kind::choice;
  for (double v : values) p.choices.emplace_back(v);
  return p;
}
inline Param choice(std::initializer_list<const char*> values) {
  Param p;
  p.kind = Kind::choice;
  for (const char* v : values) p.choices.emplace_back(std::string(v));
  return p;
}
inline Param uniform(double lo, double hi) { return Param{Kind::uniform, lo, hi, {}, 3}; }
inline Param log_uniform(double lo, double hi) { return Param{Kind::log_uniform, lo, hi, {}, 3}; }
inline Param integer(std::int64_t lo, std::int64_t hi) {
  return Param{Kind::integer, static_cast<double>(lo), static_cast<double>(hi), {}, 3};
}
inline Param log_integer(std::int64_t lo, std::int64_t hi) {
  return Param{Kind::log_integer, static_cast<double>(lo), static_cast<double>(hi), {}, 3};
}

// One configuration: a value per parameter, in the space's order.
class Config {
 public:
  Config() = default;

  void set(std::string name, Value v) {
    for (auto& [n, x] : items_)
      if (n == name) {
        x = std::move(v);
        return;
      }
    items_.emplace_back(std::move(name), std::move(v));
  }
  bool has(std::string_view name) const { return find(name) != nullptr; }
  const Value& get(std::string_view name) const {
    const Value* v = find(name);
    if (!v) throw_error<ValueError>("tune::Config: no hyperparameter named '", name, "' in ", to_string());
    return *v;
  }
  double number(std::string_view name) const {
    const Value& v = get(name);
    if (!std::holds_alternative<double>(v))
      throw_error<ValueError>("tune::Config: hyperparameter '", name, "' is the string '", std::get<std::string>(v),
                              "', not a number");
    return std::get<double>(v);
  }
  std::int64_t integer(std::string_view name) const { return static_cast<std::int64_t>(std::llround(number(name))); }
  const std::string& text(std::string_view name) const {
    const Value& v = get(name);
    if (!std::holds_alternative<std::string>(v))
      throw_error<ValueError>("tune::Config: hyperparameter '", name, "' is a number, not a string");
    return std::get<std::string>(v);
  }

  const std::vector<std::pair<std::string, Value>>& items() const { return items_; }
  std::size_t size() const { return items_.size(); }
  bool operator==(const Config&) const = default;

  // "lr=0.001 wd=0 hidden=128": for messages and logs.
  std::string to_string() const {
    std::string s;
    for (std::size_t i = 0; i < items_.size(); ++i)
      s += (i ? " " : "") + items_[i].first + "=" + detail::format_value(items_[i].second);
    return s;
  }

 private:
  const Value* find(std::string_view name) const {
    for (auto& [n, x] : items_)
      if (n == name) return &x;
    return nullptr;
  }
  std::vector<std::pair<std::string, Value>> items_;
};

// An ordered set of named parameters.
class Space {
 public:
  Space& add(std::string name, Param p) {
    if (!detail::valid_name(name))
      throw_error<ValueError>("tune::Space: the name '", name,
                              "' is not usable: use letters, digits, '_', '.' or '-' (it becomes a CSV column)");
    for (auto& [n, q] : params_)
      if (n == name) throw_error<ValueError>("tune::Space: '", name, "' is already a hyperparameter of this space");
    check(name, p);
    params_.emplace_back(std::move(name), std::move(p));
    return *this;
  }

  std::size_t size() const { return params_.size(); }
  bool empty() const { return params_.empty(); }
  const std::vector<std::pair<std::string, Param>>& params() const { return params_; }
  const Param& param(std::string_view name) const {
    for (auto& [n, p] : params_)
      if (n == name) return p;
    throw_error<ValueError>("tune::Space: no hyperparameter named '", name, "'");
  }

  // The configuration at a point u of [0, 1]^size().
  Config at(const std::vector<double>& u) const {
    if (u.size() != params_.size())
      throw_error<ValueError>("tune::Space::at: a point of ", u.size(), " coordinates for a space of ", params_.size(),
                              " hyperparameters");
    Config c;
    for (std::size_t i = 0; i < params_.size(); ++i) c.set(params_[i].first, params_[i].second.at(u[i]));
    return c;
  }

  // One line per parameter: identifies the space in a results file.
  std::string describe() const {
    std::string s;
    for (auto& [n, p] : params_) s += (s.empty() ? "" : "; ") + n + " " + p.describe();
    return s;
  }

 private:
  static void check(const std::string& name, const Param& p) {
    auto bad = [&](auto&&... why) { throw_error<ValueError>("tune::Space: '", name, "': ", why...); };
    if (p.kind == Kind::choice) {
      if (p.choices.empty()) bad("a choice needs at least one value");
      const bool text = std::holds_alternative<std::string>(p.choices[0]);
      for (const Value& v : p.choices) {
        if (std::holds_alternative<std::string>(v) != text) bad("a choice holds numbers or strings, not both");
        if (text && !detail::valid_text(std::get<std::string>(v)))
          bad("the choice '", std::get<std::string>(v), "' holds a comma, quote, backslash or control character");
        if (!text && !std::isfinite(std::get<double>(v))) bad("a choice of numbers must hold finite numbers");
      }
      return;
    }
    if (!std::isfinite(p.lo) || !std::isfinite(p.hi)) bad("bounds must be finite, got [", p.lo, ", ", p.hi, "]");
    if (p.is_integer() ? p.lo > p.hi : p.lo >= p.hi)
      bad("the lower bound ", p.lo, " must be below the upper bound ", p.hi);
    if (p.is_log() && p.lo <= 0) bad(kind_name(p.kind), " needs a positive lower bound, got ", p.lo);
    if (p.grid_points < 1) bad("grid(n) needs at least one point, got ", p.grid_points);
  }

  std::vector<std::pair<std::string, Param>> params_;
};

}  // namespace weft::tune
