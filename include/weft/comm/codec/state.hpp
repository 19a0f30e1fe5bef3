// CodecStates: the codec state (error-feedback residuals, PowerSGD's
// factors) of every buffer a Compressed communicator has reduced, under a
// name a checkpoint can save and restore it by.
//
// A call names what it reduces (CallOptions::name: the parameter or the
// bucket, e.g. DataParallel passes its bucket's first parameter name), and
// its state is kept under that name: "<prefix>/<name>/<field>", e.g.
// "l1/l1.weight/residual". The buffer may move between steps (a gradient
// reallocated, a bucket rebuilt) and keeps its state; a name used for a
// buffer of another size is an error naming both sizes. Names are the
// caller's, so they are stable across runs and ranks by construction.
//
// Calls without a name fall back to the buffer's address and length, states
// numbered in the order buffers first arrive ("<prefix>/<k>/<field>"): stable
// only while the same buffers are reduced every step. Name your calls.
//
// load() before the first step stages values; they are checked against the
// buffer's size when it first arrives. visit(f) walks every array, f(name,
// values), for saving.
//
// Not thread-safe against the communicator's own calls: read and write it
// between calls, with no non-blocking call pending.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../../core/error.hpp"
#include "../context.hpp"
#include "codec.hpp"

namespace weft::comm {

template <class State>
class CodecStates {
 public:
  // More distinct buffers than this is almost certainly a fresh buffer per
  // call (each would start with an empty residual): refuse, saying why.
  static constexpr std::size_t max_buffers = 4096;

  explicit CodecStates(std::string prefix = "compressed") : prefix_(std::move(prefix)) {}

  const std::string& prefix() const { return prefix_; }
  void set_prefix(std::string p) { prefix_ = std::move(p); }
  std::size_t size() const { return entries_.size() + named_.size(); }

  // The state kept under `name` for a buffer of `count` elements: found
  // (wherever the buffer now lives), or created on first use.
  State& by_name(std::string_view name, std::size_t count, const CodecCall& k) {
    auto it = named_.find(name);
    if (it == named_.end()) {
      if (is_number(name))
        k.fail("codec state name \"", name, "\" is only digits; those name unnamed buffers by arrival order, "
               "so give the buffer a name with a letter in it");
      if (size() >= max_buffers) k.fail("more than ", max_buffers, " buffers have codec state");
      it = named_.emplace(std::string(name), Entry{}).first;
    }
    Entry& e = it->second;
    if (e.bound && e.count != count)
      k.fail("codec state \"", name, "\" belongs to a buffer of ", e.count, " elements, but this buffer has ", count,
             ": two different buffers use one name; give each its own (a parameter or bucket name)");
    return bind(e, nullptr, count);
  }

  // The state of an unnamed buffer (key = its address, count): found, or the
  // next numbered one.
  State& at(const void* key, std::size_t count, const CodecCall& k) {
    for (auto& e : entries_)
      if (e->bound && e->key == key && e->count == count) return e->state;
    for (auto& e : entries_)  // staged by load() before the first step
      if (!e->bound) return bind(*e, key, count);
    if (entries_.size() >= max_buffers)
      k.fail("more than ", max_buffers, " distinct buffers were reduced; codec state is kept per buffer "
             "(address and length), so reduce the same buffers every step");
    entries_.push_back(std::make_unique<Entry>());
    return bind(*entries_.back(), key, count);
  }

  // Every array: f(full name, values). Unnamed buffers first, in arrival
  // order, then named ones by name; within a buffer, the codec's field order.
  template <class F>
  void visit(F&& f) {
    for (std::size_t i = 0; i < entries_.size(); ++i)
      entries_[i]->state.visit([&](const char* field, std::vector<float>& v) {
        const std::string full = name(std::to_string(i), field);
        f(full, v);
      });
    for (auto& entry : named_)
      entry.second.state.visit([&](const char* field, std::vector<float>& v) {
        const std::string full = name(entry.first, field);
        f(full, v);
      });
  }

  // Every saved array's name, in visit() order.
  std::vector<std::string> names() {
    std::vector<std::string> out;
    visit([&](const std::string& n, std::vector<float>&) { out.push_back(n); });
    return out;
  }

  // The values of one array (empty if the codec has not used it yet).
  std::vector<float> save(std::string_view full) {
    std::vector<float>* v = find(full, false);
    return *v;
  }

  // Restores one array; a buffer not reduced yet is created (unbound) and
  // takes the values when it first arrives.
  void load(std::string_view full, std::span<const float> values) {
    std::vector<float>* v = find(full, true);
    v->assign(values.begin(), values.end());
  }

  // Host scratch (grow-only, shared by all buffers of this policy): slot 0
  // for payloads; over a device transport slots 1 and 2 hold the host copies
  // of the input and the decoded result (comm::Compressed).
  std::byte* scratch(std::size_t bytes, int slot = 0) { return scratch_[slot % 3].get(bytes); }

 private:
  struct Entry {
    const void* key = nullptr;
    std::size_t count = 0;
    bool bound = false;
    State state;
  };

  State& bind(Entry& e, const void* key, std::size_t count) {
    e.key = key;
    e.count = count;
    e.bound = true;
    return e.state;
  }

  std::string name(const std::string& buffer, const char* field) const { return prefix_ + "/" + buffer + "/" + field; }

  static bool is_number(std::string_view s) {
    return !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos;
  }

  // The array `field` of `e`, or an error listing the fields the codec keeps.
  static std::vector<float>* field_of(Entry& e, std::string_view full, std::string_view field) {
    std::vector<float>* hit = nullptr;
    std::string fields;
    e.state.visit([&](const char* f, std::vector<float>& v) {
      if (field == f) hit = &v;
      fields += fields.empty() ? f : std::string(", ") + f;
    });
    if (!hit)
      throw_error<ValueError>("codec state \"", full, "\": this codec keeps ",
                              fields.empty() ? std::string("no state") : fields);
    return hit;
  }

  std::vector<float>* find(std::string_view full, bool create) {
    // "<prefix>/<name>/<field>", or "<prefix>/<k>/<field>" for unnamed buffers
    const std::string head = prefix_ + "/";
    std::size_t slash = full.rfind('/');
    if (full.substr(0, head.size()) != head || slash == std::string_view::npos || slash < head.size())
      throw_error<ValueError>("codec state \"", full, "\": names look like \"", prefix_, "/<buffer>/<field>\"");
    std::string_view idx = full.substr(head.size(), slash - head.size()), field = full.substr(slash + 1);
    if (!idx.empty() && !is_number(idx)) {  // a named buffer
      auto it = named_.find(idx);
      if (it == named_.end()) {
        if (!create) {
          std::string have;
          for (const auto& [n, _] : named_) have += (have.empty() ? "" : ", ") + n;
          throw_error<ValueError>("codec state \"", full, "\": no buffer named \"", idx, "\" has state (named: ",
                                  have.empty() ? std::string("none") : have, ")");
        }
        if (size() >= max_buffers) throw_error<ValueError>("codec state \"", full, "\": too many buffers");
        it = named_.emplace(std::string(idx), Entry{}).first;
      }
      return field_of(it->second, full, field);
    }
    std::size_t k = 0;
    for (char c : idx) {
      if (c < '0' || c > '9' || idx.size() > 6)
        throw_error<ValueError>("codec state \"", full, "\": \"", idx, "\" is not a buffer number");
      k = k * 10 + static_cast<std::size_t>(c - '0');
    }
    if (idx.empty()) throw_error<ValueError>("codec state \"", full, "\": no buffer number");
    if (k >= entries_.size()) {
      if (!create || k >= max_buffers)
        throw_error<ValueError>("codec state \"", full, "\": only ", entries_.size(), " buffers have state");
      while (entries_.size() <= k) entries_.push_back(std::make_unique<Entry>());
    }
    return field_of(*entries_[k], full, field);
  }

  std::string prefix_;
  std::vector<std::unique_ptr<Entry>> entries_;                  // unnamed buffers, by arrival
  std::map<std::string, Entry, std::less<>> named_;              // named buffers (nodes never move)
  detail::Buffer scratch_[3];
};

}  // namespace weft::comm
