// CodecStates: the codec state of every buffer a Compressed communicator has
// reduced (error-feedback residuals, PowerSGD's factors), reachable by name
// so a checkpoint can save and restore it.
//
// A buffer is known by its address and length: the gradient buffers of a
// training step are the same every step (DataParallel's buckets, a layer's
// gradient), so each keeps its own residual. States are numbered in the
// order buffers are first reduced, which is the same on every rank and in
// every run of the same program, so the names are stable:
//   "<prefix>/<k>/<field>"    e.g. "l1/0/residual", "compressed/2/q"
// load() before the first step stages values for buffer k; they are checked
// against the buffer's size when it first arrives.
//
// Not thread-safe against the communicator's own calls: read and write it
// between calls, with no non-blocking call pending.
#pragma once

#include <cstddef>
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
  std::size_t size() const { return entries_.size(); }

  // The state of the buffer (key, count): found, or the next numbered one.
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

  // Every saved array's name, in buffer order.
  std::vector<std::string> names() {
    std::vector<std::string> out;
    for (std::size_t i = 0; i < entries_.size(); ++i)
      entries_[i]->state.visit([&](const char* field, std::vector<float>&) { out.push_back(name(i, field)); });
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

  // Scratch for payloads (grow-only, shared by all buffers of this policy).
  std::byte* scratch(std::size_t bytes) { return scratch_.get(bytes); }

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

  std::string name(std::size_t i, const char* field) const {
    return prefix_ + "/" + std::to_string(i) + "/" + field;
  }

  std::vector<float>* find(std::string_view full, bool create) {
    // "<prefix>/<k>/<field>"
    const std::string head = prefix_ + "/";
    std::size_t slash = full.rfind('/');
    if (full.substr(0, head.size()) != head || slash == std::string_view::npos || slash < head.size())
      throw_error<ValueError>("codec state \"", full, "\": names look like \"", prefix_, "/<buffer>/<field>\"");
    std::string_view idx = full.substr(head.size(), slash - head.size()), field = full.substr(slash + 1);
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
    std::vector<float>* hit = nullptr;
    std::string fields;
    entries_[k]->state.visit([&](const char* f, std::vector<float>& v) {
      if (field == f) hit = &v;
      fields += fields.empty() ? f : std::string(", ") + f;
    });
    if (!hit)
      throw_error<ValueError>("codec state \"", full, "\": this codec keeps ",
                              fields.empty() ? std::string("no state") : fields);
    return hit;
  }

  std::string prefix_;
  std::vector<std::unique_ptr<Entry>> entries_;
  detail::Buffer scratch_;
};

}  // namespace weft::comm
