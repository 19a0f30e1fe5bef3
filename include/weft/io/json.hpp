// JSON for weft's files: a value, a parser and a writer, shared by the
// checkpoint headers (the safetensors header, checkpoint.json) and tune's
// results files. Written for hostile input (the parser is fuzzed,
// tests/checkpoint/fuzz_header.cpp): bounded nesting depth, no recursion past
// it, duplicate object keys rejected, numbers that are non-negative integers
// kept exactly as std::uint64_t (offsets and shapes must not pass through
// double). Errors are json::Error with the byte offset; callers add the file
// name. Objects keep their keys in file order.
#pragma once

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/error.hpp"

namespace weft::io::json {

struct Error : weft::Error {
  using weft::Error::Error;
};

class Value {
 public:
  enum class Kind : std::uint8_t { null, boolean, integer, number, string, array, object };

  Value() = default;
  static Value make_bool(bool b) { Value j; j.kind_ = Kind::boolean; j.b_ = b; return j; }
  static Value make_uint(std::uint64_t u) { Value j; j.kind_ = Kind::integer; j.u_ = u; j.d_ = static_cast<double>(u); return j; }
  static Value make_number(double d) { Value j; j.kind_ = Kind::number; j.d_ = d; return j; }
  static Value make_string(std::string s) { Value j; j.kind_ = Kind::string; j.s_ = std::move(s); return j; }
  static Value make_array() { Value j; j.kind_ = Kind::array; return j; }
  static Value make_object() { Value j; j.kind_ = Kind::object; return j; }

  Kind kind() const { return kind_; }
  bool is_object() const { return kind_ == Kind::object; }
  bool is_array() const { return kind_ == Kind::array; }
  bool is_string() const { return kind_ == Kind::string; }
  bool is_bool() const { return kind_ == Kind::boolean; }
  bool is_null() const { return kind_ == Kind::null; }
  // Any number: an exact non-negative integer or another number.
  bool is_number() const { return kind_ == Kind::integer || kind_ == Kind::number; }
  // A non-negative integer written without fraction or exponent, exact.
  bool is_uint() const { return kind_ == Kind::integer; }
  std::uint64_t as_uint() const { return u_; }
  bool as_bool() const { return b_; }
  double as_number() const { return d_; }
  const std::string& as_string() const { return s_; }
  const std::vector<Value>& items() const { return items_; }
  const std::vector<std::pair<std::string, Value>>& members() const { return members_; }

  // The member named key, or nullptr.
  const Value* find(std::string_view key) const {
    for (const auto& [k, v] : members_)
      if (k == key) return &v;
    return nullptr;
  }
  // The member named key, or null (for optional fields).
  const Value& operator[](std::string_view key) const {
    static const Value none;
    const Value* v = find(key);
    return v ? *v : none;
  }
  Value& push(Value v) {
    items_.push_back(std::move(v));
    return items_.back();
  }
  Value& set(std::string key, Value v) {
    members_.emplace_back(std::move(key), std::move(v));
    return members_.back().second;
  }

  static const char* kind_name(Kind k) {
    switch (k) {
      case Kind::null: return "null";
      case Kind::boolean: return "a boolean";
      case Kind::integer: return "an integer";
      case Kind::number: return "a number";
      case Kind::string: return "a string";
      case Kind::array: return "an array";
      case Kind::object: return "an object";
    }
    return "?";
  }

 private:
  Kind kind_ = Kind::null;
  bool b_ = false;
  std::uint64_t u_ = 0;
  double d_ = 0;
  std::string s_;
  std::vector<Value> items_;
  std::vector<std::pair<std::string, Value>> members_;
};

namespace detail {

// JSON's two-character escapes: the letter after the backslash, and the
// character it stands for. The reader and the writer both use this table.
inline constexpr std::pair<char, char> short_escapes[] = {{'"', '"'},  {'\\', '\\'}, {'/', '/'},  {'b', '\b'},
                                                          {'f', '\f'}, {'n', '\n'},   {'r', '\r'}, {'t', '\t'}};

class Parser {
 public:
  static constexpr int kMaxDepth = 64;
  explicit Parser(std::string_view s) : s_(s) {}

  Value parse_document() {
    ws();
    Value v = value(0);
    ws();
    if (i_ != s_.size()) fail("unexpected '", printable(s_[i_]), "' after the JSON value");
    return v;
  }

 private:
  std::string_view s_;
  std::size_t i_ = 0;

  static std::string printable(char c) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) return std::string(1, c);
    static const char* hex = "0123456789abcdef";
    return std::string("\\x") + hex[u >> 4] + hex[u & 15];
  }
  template <class... A>
  [[noreturn]] void fail(A&&... a) const {
    throw_error<Error>("JSON syntax error at byte ", i_, ": ", std::forward<A>(a)...);
  }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  char peek() {
    if (i_ >= s_.size()) fail("unexpected end of input");
    return s_[i_];
  }
  void expect(char c) {
    if (peek() != c) fail("expected '", c, "', found '", printable(s_[i_]), "'");
    ++i_;
  }
  void literal(std::string_view w) {
    if (s_.substr(i_, w.size()) != w) fail("invalid literal (expected ", w, ")");
    i_ += w.size();
  }

  Value value(int depth) {
    if (depth > kMaxDepth) fail("nested deeper than ", kMaxDepth, " levels");
    const char c = peek();
    if (c == '{') return object(depth);
    if (c == '[') return array(depth);
    if (c == '"') return Value::make_string(string());
    if (c == 't') { literal("true"); return Value::make_bool(true); }
    if (c == 'f') { literal("false"); return Value::make_bool(false); }
    if (c == 'n') { literal("null"); return Value(); }
    if (c == '-' || (c >= '0' && c <= '9')) return number();
    fail("unexpected '", printable(c), "'");
  }

  Value object(int depth) {
    expect('{');
    Value o = Value::make_object();
    ws();
    if (peek() == '}') { ++i_; return o; }
    for (;;) {
      ws();
      if (peek() != '"') fail("expected a string key");
      std::string k = string();
      if (o.find(k)) fail("duplicate key \"", k, "\"");
      ws();
      expect(':');
      ws();
      o.set(std::move(k), value(depth + 1));
      ws();
      if (peek() == ',') { ++i_; continue; }
      expect('}');
      return o;
    }
  }

  Value array(int depth) {
    expect('[');
    Value a = Value::make_array();
    ws();
    if (peek() == ']') { ++i_; return a; }
    for (;;) {
      ws();
      a.push(value(depth + 1));
      ws();
      if (peek() == ',') { ++i_; continue; }
      expect(']');
      return a;
    }
  }

  unsigned hex4() {
    if (s_.size() - i_ < 4) fail("truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s_[i_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<unsigned>(c - 'A' + 10);
      else fail("invalid hex digit in \\u escape");
    }
    return v;
  }
  static void utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xc0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xe0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }

  std::string string() {
    expect('"');
    std::string out;
    for (;;) {
      const char c = peek();
      ++i_;
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') { out += c; continue; }
      const char e = peek();
      ++i_;
      bool short_escape = false;
      for (const auto& [letter, ch] : short_escapes)
        if (e == letter) {
          out += ch;
          short_escape = true;
        }
      if (short_escape) continue;
      if (e != 'u') fail("invalid escape '\\", printable(e), "'");
      unsigned cp = hex4();
      if (cp >= 0xd800 && cp < 0xdc00) {
        if (s_.substr(i_, 2) != "\\u") fail("unpaired surrogate in \\u escape");
        i_ += 2;
        const unsigned lo = hex4();
        if (lo < 0xdc00 || lo >= 0xe000) fail("invalid low surrogate in \\u escape");
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
      } else if (cp >= 0xdc00 && cp < 0xe000) {
        fail("unpaired surrogate in \\u escape");
      }
      utf8(out, cp);
    }
  }

  Value number() {
    const std::size_t start = i_;
    bool integer = true;
    if (s_[i_] == '-') { integer = false; ++i_; }
    auto digits = [&] {
      const std::size_t d = i_;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
      if (i_ == d) fail("expected a digit");
    };
    if (peek() == '0') ++i_; else digits();
    if (i_ < s_.size() && s_[i_] == '.') { integer = false; ++i_; digits(); }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      integer = false;
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      digits();
    }
    const char* b = s_.data() + start;
    const char* e = s_.data() + i_;
    if (integer) {
      std::uint64_t u = 0;
      const auto r = std::from_chars(b, e, u);
      if (r.ec != std::errc() || r.ptr != e) fail("integer ", std::string(b, e), " does not fit in 64 bits");
      return Value::make_uint(u);
    }
    double d = 0;
    const auto r = std::from_chars(b, e, d);
    if (r.ec != std::errc() || r.ptr != e) fail("number ", std::string(b, e), " is out of range");
    return Value::make_number(d);
  }
};

// Short escapes where JSON has them (as Python's json.dumps writes), \u00XX for other controls.
inline void write_string(std::string& out, std::string_view s) {
  static const char* hex = "0123456789abcdef";
  out += '"';
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    char letter = 0;
    for (const auto& [l, ch] : short_escapes)
      if (c == ch && c != '/') letter = l;  // '/' may stand as it is
    if (letter) {
      out += '\\';
      out += letter;
    } else if (u < 0x20) {
      out += "\\u00";
      out += hex[u >> 4];
      out += hex[u & 15];
    } else {
      out += c;
    }
  }
  out += '"';
}

inline void write_value(std::string& out, const Value& j) {
  switch (j.kind()) {
    case Value::Kind::null: out += "null"; return;
    case Value::Kind::boolean: out += j.as_bool() ? "true" : "false"; return;
    case Value::Kind::integer: out += std::to_string(j.as_uint()); return;
    case Value::Kind::number: {
      char buf[32];
      const auto r = std::to_chars(buf, buf + sizeof buf, j.as_number());  // shortest round-trip form
      out.append(buf, r.ptr);
      return;
    }
    case Value::Kind::string: write_string(out, j.as_string()); return;
    case Value::Kind::array: {
      out += '[';
      bool first = true;
      for (const Value& v : j.items()) {
        if (!first) out += ',';
        first = false;
        write_value(out, v);
      }
      out += ']';
      return;
    }
    case Value::Kind::object: {
      out += '{';
      bool first = true;
      for (const auto& [k, v] : j.members()) {
        if (!first) out += ',';
        first = false;
        write_string(out, k);
        out += ':';
        write_value(out, v);
      }
      out += '}';
      return;
    }
  }
}

}  // namespace detail

// Parses one JSON document (whitespace around it allowed); throws json::Error.
inline Value parse(std::string_view text) { return detail::Parser(text).parse_document(); }

// Compact JSON text (no whitespace), keys in insertion order.
inline std::string write(const Value& j) {
  std::string out;
  detail::write_value(out, j);
  return out;
}

// A JSON string literal for s (for writers that assemble their text by hand).
inline std::string quote(std::string_view s) {
  std::string out;
  detail::write_string(out, s);
  return out;
}

}  // namespace weft::io::json
