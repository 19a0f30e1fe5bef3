// A minimal JSON reader for the results files tune writes (objects, arrays,
// strings with the common escapes, numbers, true/false/null). Not a general
// JSON library: enough to resume a search from its own file, with errors
// that name the file and the byte offset.
#pragma once

#include <charconv>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../../core/error.hpp"

namespace weft::tune::detail {

struct Json {
  enum Type { null, boolean, number, string, array, object };
  Type type = null;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<Json> items;
  // An object's fields in the order written (two vectors: Json is incomplete here).
  std::vector<std::string> keys;
  std::vector<Json> values;

  const Json& operator[](std::string_view key) const {
    static const Json none;
    for (std::size_t i = 0; i < keys.size(); ++i)
      if (keys[i] == key) return values[i];
    return none;
  }
};

class JsonReader {
 public:
  JsonReader(std::string_view text, std::string where) : s_(text), where_(std::move(where)) {}

  Json parse() {
    Json j = value();
    space();
    if (i_ != s_.size()) fail("text after the end of the document");
    return j;
  }

 private:
  [[noreturn]] void fail(const char* what) const {
    throw_error<IoError>(where_, ": not a tune results file (JSON): ", what, " at byte ", i_);
  }
  void space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  bool eat(char c) {
    space();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) fail(c == '"' ? "expected a string" : "unexpected character");
  }
  bool word(std::string_view w) {
    if (s_.substr(i_, w.size()) == w) {
      i_ += w.size();
      return true;
    }
    return false;
  }
  std::string text() {
    expect('"');
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= s_.size()) break;
      char e = s_[i_++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {
          if (i_ + 4 > s_.size()) fail("truncated \\u escape");
          unsigned cp = 0;
          auto r = std::from_chars(s_.data() + i_, s_.data() + i_ + 4, cp, 16);
          if (r.ptr != s_.data() + i_ + 4) fail("bad \\u escape");
          i_ += 4;
          if (cp < 0x80) {
            out += static_cast<char>(cp);
          } else if (cp < 0x800) {
            out += static_cast<char>(0xC0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3F));
          } else {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
          }
          break;
        }
        default: out += e;
      }
    }
    if (i_ >= s_.size()) fail("unterminated string");
    ++i_;
    return out;
  }
  Json value() {
    space();
    if (i_ >= s_.size()) fail("unexpected end");
    Json j;
    const char c = s_[i_];
    if (c == '{') {
      ++i_;
      j.type = Json::object;
      if (eat('}')) return j;
      do {
        space();
        std::string k = text();
        expect(':');
        j.keys.push_back(std::move(k));
        j.values.push_back(value());
      } while (eat(','));
      expect('}');
    } else if (c == '[') {
      ++i_;
      j.type = Json::array;
      if (eat(']')) return j;
      do j.items.push_back(value());
      while (eat(','));
      expect(']');
    } else if (c == '"') {
      j.type = Json::string;
      j.str = text();
    } else if (word("true")) {
      j.type = Json::boolean;
      j.b = true;
    } else if (word("false")) {
      j.type = Json::boolean;
    } else if (word("null")) {
    } else {
      j.type = Json::number;
      auto r = std::from_chars(s_.data() + i_, s_.data() + s_.size(), j.num);
      if (r.ec != std::errc{}) fail("expected a value");
      i_ = static_cast<std::size_t>(r.ptr - s_.data());
    }
    return j;
  }

  std::string_view s_;
  std::string where_;
  std::size_t i_ = 0;
};

// A JSON string literal for s.
inline std::string json_quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          const char* hex = "0123456789abcdef";
          out += "\\u00";
          out += hex[(c >> 4) & 0xF];
          out += hex[c & 0xF];
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

}  // namespace weft::tune::detail
