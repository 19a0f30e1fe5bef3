// Checkpoints: a training run's state (nn/state.hpp's visit_state) saved to a
// directory on every rank together, and loaded back on the same or another
// number of ranks.
//
//   <dir>/rank-00000.safetensors ...   one safetensors file per rank: the tensors and
//                                      pieces it holds; its scalars in __metadata__
//                                      ("scalar:<name>" = "i64:13", "f32:0x3c23d70a", ...)
//   <dir>/checkpoint.json              written last, by rank 0: format, version, step,
//                                      ranks, save id, each file's size, and for each
//                                      logical tensor (full name, global shape, dtype)
//                                      the pieces each file holds (element ranges
//                                      [begin, end) of the flattened tensor)
//
// Which rank stores what: a tensor is replicated (every rank holds the same
// values; stored once, by rank i % p for the i-th tensor, to spread the
// writes) unless the Sharding says this rank holds only some element ranges
// of it (ZeRO optimizer state: data_parallel_sharding), in which case each
// rank stores its ranges. Scalars (step, lr, RNG, sampler) are per rank.
//
// Atomic: every file goes to a temporary name, is fsync'd and renamed, and
// the directory fsync'd (file.hpp); rank 0 removes an older checkpoint.json
// from the directory before any rank writes, and writes the new one only
// after every rank's file is durable. A crash at any moment leaves the
// directory without checkpoint.json (load says it is incomplete), and
// checkpoints in other directories untouched: save each step to its own
// directory (step_dir) and resume from latest(root). A file left over from
// another save is detected by the save id every file carries.
//
// Loading checks everything before using it: each file's header (safetensors.hpp),
// its size and save id against checkpoint.json, each tensor's dtype and shape
// against the model's, that the pieces cover what this rank needs, and each
// piece's CRC-32. Errors name the file, the tensor and the problem.
// Resharding: loading p ranks' checkpoint on q ranks reassembles each
// sharded tensor from the pieces overlapping this rank's new ranges;
// items under a Sharding::layout prefix (DataParallel's rank count and shard
// layout) are then left as the new objects built them. Scalars come from the
// rank's own file (rank 0's for ranks the checkpoint did not have).
// A failed load may leave the objects partly restored: rebuild them.
//
// Codec state (error-feedback residuals, PowerSGD factors) joins through
// codec_state.hpp's CodecState, keyed by its stable name: visit it under a
// prefix ("codec.") and declare that prefix Sharding::per_rank, since
// residuals differ from rank to rank. Per-rank tensors the objects do not
// visit are skipped on another world size (they would start at zero). A
// tensor that differs across ranks but is declared neither per_rank nor
// sharded is caught at save (SaveOptions::check_replicated), never saved as
// rank i mod p's copy.
//
// Opt-in: needs zlib and POSIX (not included by weft.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../comm/reduce_op.hpp"
#include "../../core/error.hpp"
#include "../../nn/registry.hpp"
#include "../../nn/state.hpp"
#include "../../tensor/tensor.hpp"
#include "../json.hpp"
#include "file.hpp"
#include "safetensors.hpp"

namespace weft::io::checkpoint {

inline constexpr std::uint64_t kFormatVersion = 1;
inline constexpr std::string_view kFormatName = "weft-checkpoint";
inline constexpr std::string_view kMetadataFile = "checkpoint.json";

// Elements [begin, end) of a flattened tensor.
struct Range {
  std::uint64_t begin = 0, end = 0;
};

// Which items a rank holds only in part, and which describe the rank layout.
class Sharding {
 public:
  // Items whose name starts with `prefix` hold meaningful values on this rank
  // only in `ranges` (the rest is zero, as the sharded update keeps it).
  Sharding& shard(std::string prefix, std::vector<Range> ranges) {
    shards_.emplace_back(std::move(prefix), std::move(ranges));
    return *this;
  }
  // Items under `prefix` describe the layout (rank count, shard pieces): on
  // loading at another world size they are left as the new objects have them.
  Sharding& layout(std::string prefix) {
    layouts_.push_back(std::move(prefix));
    return *this;
  }
  // The ranges of the longest matching shard prefix, or nullptr (replicated).
  const std::vector<Range>* ranges(std::string_view item) const {
    const std::vector<Range>* best = nullptr;
    std::size_t len = 0;
    for (const auto& [p, r] : shards_)
      if (item.starts_with(p) && (best == nullptr || p.size() > len)) {
        best = &r;
        len = p.size();
      }
    return best;
  }
  bool is_layout(std::string_view item) const {
    for (const std::string& p : layouts_)
      if (item.starts_with(p)) return true;
    return false;
  }
  // Tensors under `prefix` differ from rank to rank (a codec's error-feedback
  // residual): every rank stores its own; a load on the same ranks gives each
  // rank its own back, a load on another number of ranks starts them at zero.
  Sharding& per_rank(std::string prefix) {
    per_rank_.push_back(std::move(prefix));
    return *this;
  }
  bool is_per_rank(std::string_view item) const {
    for (const std::string& p : per_rank_)
      if (item.starts_with(p)) return true;
    return false;
  }

 private:
  std::vector<std::pair<std::string, std::vector<Range>>> shards_;
  std::vector<std::string> layouts_, per_rank_;
};

namespace detail {

// Reads a strategy's scalars without changing them.
struct ScalarCapture {
  std::map<std::string, std::int64_t, std::less<>> values;
  template <class T>
  void operator()(std::string_view, TensorView<T>) {}
  template <class S>
    requires std::is_arithmetic_v<S>
  void operator()(std::string_view name, S& x) {
    values[std::string(name)] = static_cast<std::int64_t>(x);
  }
};

}  // namespace detail

// The Sharding of a parallel::DataParallel `dp` over `reg`, as visited under
// `dp_prefix` and the optimizer under `optimizer_prefix`: with the sharded
// update, "<optimizer>.<param>." items hold this rank's pieces of <param>;
// "<dp>." items are the layout. Call on every rank (it may build dp's buckets).
template <class T, class DP>
Sharding data_parallel_sharding(DP& dp, const nn::Registry<T>& reg, std::string_view dp_prefix = "dp",
                                std::string_view optimizer_prefix = "optimizer") {
  detail::ScalarCapture cap;
  dp.visit_state(cap);
  Sharding s;
  s.layout(std::string(dp_prefix) + ".");
  const auto get = [&](const std::string& k) {
    const auto it = cap.values.find(k);
    if (it == cap.values.end()) throw_error<ValueError>("data_parallel_sharding: DataParallel did not visit '", k, "'");
    return it->second;
  };
  if (get("shard_update") == 0 || get("ranks") == 1) return s;
  std::vector<std::vector<Range>> per(reg.size());
  const std::int64_t n = get("shards.pieces");
  for (std::int64_t k = 0; k < n; ++k) {
    const std::string at = "shards.piece." + std::to_string(k) + ".";
    const auto param = static_cast<std::size_t>(get(at + "param"));
    if (param >= reg.size()) throw_error<ValueError>("data_parallel_sharding: piece ", k, " names parameter ", param, " of ", reg.size());
    per[param].push_back(Range{static_cast<std::uint64_t>(get(at + "begin")), static_cast<std::uint64_t>(get(at + "end"))});
  }
  for (std::size_t i = 0; i < reg.size(); ++i)
    s.shard(std::string(optimizer_prefix) + "." + reg[i].name + ".", std::move(per[i]));
  return s;
}

// A communicator of one rank, for single-process saves and loads.
struct SoloComm {
  int rank() const { return 0; }
  int size() const { return 1; }
  template <class E>
  void allreduce(const E* in, E* out, std::size_t n, comm::ReduceOp = comm::ReduceOp::sum) {
    if (in != out) std::memcpy(out, in, n * sizeof(E));
  }
};

struct SaveOptions {
  std::int64_t step = 0;
  Sharding sharding{};
  // Check that every replicated tensor is the same on every rank (a CRC-32
  // per tensor on each rank, one allreduce): a tensor that differs is an
  // error naming it, not a checkpoint that keeps rank i mod p's copy.
  bool check_replicated = true;
  // Tests: called at each stage ("begin", "rank file written", "metadata")
  // on each rank; throwing there simulates a crash at that moment.
  std::function<void(std::string_view stage, int rank)> fault{};
};

struct LoadOptions {
  Sharding sharding{};  // this rank's layout in the objects being restored
  bool strict = true;  // a checkpoint tensor the objects do not visit is an error
};

struct CheckpointInfo {
  std::int64_t step = 0;
  int ranks = 0;
  std::string save_id;
};

// <root>/step-00000042: one directory per saved step.
inline std::filesystem::path step_dir(const std::filesystem::path& root, std::int64_t step) {
  std::string s = std::to_string(step);
  if (s.size() < 8) s.insert(0, 8 - s.size(), '0');
  return root / ("step-" + s);
}

inline std::string rank_file_name(int rank) {
  std::string s = std::to_string(rank);
  if (s.size() < 5) s.insert(0, 5 - s.size(), '0');
  return "rank-" + s + ".safetensors";
}

namespace detail {

template <class Obj, class V>
void visit(Obj& obj, V& v) {
  if constexpr (requires { obj.visit_state(v); })
    obj.visit_state(v);
  else
    obj(v);
}

template <class S>
constexpr std::string_view scalar_kind() {
  if constexpr (std::is_same_v<S, bool>) return "bool";
  else if constexpr (std::is_same_v<S, float>) return "f32";
  else if constexpr (std::is_same_v<S, double>) return "f64";
  else if constexpr (std::is_same_v<S, std::int64_t>) return "i64";
  else if constexpr (std::is_same_v<S, std::uint64_t>) return "u64";
  else static_assert(sizeof(S) == 0, "checkpoint: scalars are std::int64_t, std::uint64_t, double, float or bool (nn/state.hpp)");
}

template <class S>
std::string scalar_text(S x) {
  std::string out(scalar_kind<S>());
  out += ':';
  if constexpr (std::is_same_v<S, bool>) {
    out += x ? "1" : "0";
  } else if constexpr (std::is_floating_point_v<S>) {  // the bits, exactly
    std::conditional_t<sizeof(S) == 4, std::uint32_t, std::uint64_t> b;
    std::memcpy(&b, &x, sizeof b);
    char buf[24];
    const auto r = std::to_chars(buf, buf + sizeof buf, b, 16);
    out += "0x";
    out.append(buf, r.ptr);
  } else {
    out += std::to_string(x);
  }
  return out;
}

template <class S>
bool parse_scalar(std::string_view text, S& x) {
  const std::string_view kind = scalar_kind<S>();
  if (text.size() <= kind.size() || text.substr(0, kind.size()) != kind || text[kind.size()] != ':') return false;
  std::string_view v = text.substr(kind.size() + 1);
  const char* e = v.data() + v.size();
  if constexpr (std::is_same_v<S, bool>) {
    if (v != "0" && v != "1") return false;
    x = v == "1";
    return true;
  } else if constexpr (std::is_floating_point_v<S>) {
    std::conditional_t<sizeof(S) == 4, std::uint32_t, std::uint64_t> b = 0;
    if (!v.starts_with("0x")) return false;
    const auto r = std::from_chars(v.data() + 2, e, b, 16);
    if (r.ec != std::errc() || r.ptr != e) return false;
    std::memcpy(&x, &b, sizeof b);
    return true;
  } else {
    const auto r = std::from_chars(v.data(), e, x);
    return r.ec == std::errc() && r.ptr == e;
  }
}

inline std::vector<std::uint64_t> shape_of(const Shape& s) {
  std::vector<std::uint64_t> out;
  for (int i = 0; i < s.rank; ++i) out.push_back(static_cast<std::uint64_t>(s[i]));
  return out;
}

// One rank's file contents, gathered by visiting.
template <class T>
struct SaveVisitor {
  const Sharding* sharding;
  int rank, ranks;
  SafetensorsWriter* writer;
  json::Value items = json::Value::make_array();  // every tensor item: [name, dtype, shape]
  std::vector<std::pair<std::string, std::string>> scalars;
  std::size_t tensors = 0;
  std::vector<std::string> replicated;       // names of the replicated tensors, in visit order
  std::vector<std::int64_t> replicated_crc;  // their CRC-32s, computed on every rank

  void operator()(std::string_view name, TensorView<T> t) {
    if (!t.is_contiguous()) throw_error<ValueError>("checkpoint save: tensor '", name, "' is not contiguous");
    const auto numel = static_cast<std::uint64_t>(t.numel());
    json::Value it = json::Value::make_array();
    it.push(json::Value::make_string(std::string(name)));
    it.push(json::Value::make_string(std::string(dtype_name(dtype_for_v<T>))));
    json::Value sh = json::Value::make_array();
    for (std::uint64_t d : shape_of(t.shape)) sh.push(json::Value::make_uint(d));
    it.push(std::move(sh));
    items.push(std::move(it));
    const std::size_t index = tensors++;
    if (sharding->is_per_rank(name)) {
      piece(name, t, 0, numel, true);
    } else if (const std::vector<Range>* rs = sharding->ranges(name)) {
      for (const Range& r : *rs) {
        if (r.begin > r.end || r.end > numel)
          throw_error<ValueError>("checkpoint save: tensor '", name, "': shard range [", r.begin, ", ", r.end, ") is outside its ",
                                  numel, " elements");
        if (r.begin == r.end) continue;
        piece(name, t, r.begin, r.end);
      }
    } else {
      const std::uint32_t crc = crc32(t.data, static_cast<std::size_t>(numel) * sizeof(T));
      replicated.emplace_back(name);
      replicated_crc.push_back(crc);
      if (static_cast<int>(index % static_cast<std::size_t>(ranks)) == rank) piece(name, t, 0, numel, false, crc);
    }
  }
  void piece(std::string_view name, TensorView<T> t, std::uint64_t b, std::uint64_t e, bool own = false,
             std::optional<std::uint32_t> crc = {}) {
    const bool whole = b == 0 && e == static_cast<std::uint64_t>(t.numel());
    std::string key(name);
    if (own) key += "#" + std::to_string(rank);
    else if (!whole) key += "@" + std::to_string(b) + ":" + std::to_string(e);
    json::Value d = json::Value::make_object();
    d.set("tensor", json::Value::make_string(std::string(name)));
    d.set("begin", json::Value::make_uint(b));
    d.set("end", json::Value::make_uint(e));
    if (own) d.set("per_rank", json::Value::make_bool(true));
    writer->metadata("piece:" + key, json::write(d));
    writer->add(key, dtype_for_v<T>, whole ? shape_of(t.shape) : std::vector<std::uint64_t>{e - b}, t.data + b, crc);
  }
  template <class S>
    requires std::is_arithmetic_v<S>
  void operator()(std::string_view name, S& x) {
    scalars.emplace_back("scalar:" + std::string(name), scalar_text<S>(x));
  }
};

// Runs f on this rank; then every rank learns whether any rank failed, and
// why. This rank's exception is rethrown; the others throw an IoError naming
// `what`, the failed rank (the highest-numbered one) and its message.
template <class Comm, class F>
void together(Comm& c, std::string_view what, F&& f) {
  std::exception_ptr err;
  std::string why;
  try {
    f();
  } catch (const std::exception& e) {
    err = std::current_exception();
    why = e.what();
  } catch (...) {
    err = std::current_exception();
    why = "an exception that is not a std::exception";
  }
  std::int64_t failed = err ? 1 + c.rank() : 0;
  if (c.size() > 1) {
    std::int64_t worst = 0;
    c.allreduce(&failed, &worst, 1, comm::ReduceOp::max);
    failed = worst;
  }
  if (failed == 0) return;
  // The failed rank's message, 8 characters per element, summed with zeros.
  constexpr std::size_t kWords = 64;
  std::int64_t text[kWords] = {};
  if (c.rank() == failed - 1) std::memcpy(text, why.data(), std::min(why.size(), kWords * 8 - 1));
  if (c.size() > 1) {
    std::int64_t all[kWords] = {};
    c.allreduce(text, all, kWords, comm::ReduceOp::sum);
    std::memcpy(text, all, sizeof text);
  }
  if (err) std::rethrow_exception(err);
  std::string msg(reinterpret_cast<const char*>(text), kWords * 8);
  msg.resize(std::strlen(msg.c_str()));
  throw_error<IoError>(what, ": rank ", failed - 1, " failed: ", msg);
}

// Every rank visited the same replicated tensors with the same values, or an
// IoError on every rank naming the first few that differ. Collective.
template <class Comm>
void check_replicated(Comm& c, std::string_view what, const std::vector<std::string>& names, const std::vector<std::int64_t>& crc) {
  std::int64_t n[2] = {static_cast<std::int64_t>(crc.size()), -static_cast<std::int64_t>(crc.size())}, m[2] = {0, 0};
  c.allreduce(n, m, 2, comm::ReduceOp::max);
  if (m[0] != -m[1])
    throw_error<IoError>(what, ": ranks visit different numbers of replicated tensors (", -m[1], " to ", m[0],
                         "): build the objects the same way on every rank");
  std::vector<std::int64_t> lo(crc.size()), hi(crc.size()), neg(crc.size());
  for (std::size_t i = 0; i < crc.size(); ++i) neg[i] = -crc[i];
  c.allreduce(crc.data(), hi.data(), crc.size(), comm::ReduceOp::max);
  c.allreduce(neg.data(), lo.data(), crc.size(), comm::ReduceOp::max);
  std::string bad;
  int count = 0;
  for (std::size_t i = 0; i < crc.size(); ++i)
    if (hi[i] != -lo[i] && count++ < 4) bad += (bad.empty() ? "'" : ", '") + names[i] + "'";
  if (count > 0)
    throw_error<IoError>(what, ": tensor ", bad, count > 4 ? " and more" : "", " differ", count == 1 ? "s" : "",
                         " from rank to rank but would be saved once: give its Sharding ranges or per_rank (rank ", c.rank(), ")");
}

inline json::Value read_json_file(const std::filesystem::path& path) {
  ReadFile f(path);
  if (f.size() > kMaxHeaderBytes) throw_error<IoError>(path.string(), ": ", f.size(), " bytes, larger than any checkpoint metadata");
  std::string text(static_cast<std::size_t>(f.size()), '\0');
  f.read(text.data(), text.size(), 0, "the metadata");
  try {
    return json::parse(text);
  } catch (const json::Error& e) {
    throw_error<IoError>(path.string(), ": ", e.what());
  }
}

}  // namespace detail

// Saves obj's state (obj.visit_state(v), or obj(v)) on every rank of `comm`
// into `dir`. Collective: every rank calls it with the same dir and step.
template <class T = float, class Obj, class Comm>
void save(const std::filesystem::path& dir, Obj& obj, Comm& comm, const SaveOptions& o = {}) {
  const int rank = comm.rank(), ranks = comm.size();
  const std::string where = "checkpoint save to " + dir.string();
  if (o.step < 0) throw_error<ValueError>(where, ": step ", o.step, " is negative");
  auto fault = [&](std::string_view stage) {
    if (o.fault) o.fault(stage, rank);
  };
  // A save id: rank 0's random number, known to all (max over ranks).
  std::int64_t id = 0;
  if (rank == 0) {
    std::random_device rd;
    id = static_cast<std::int64_t>(((std::uint64_t(rd()) << 32) ^ rd() ^
                                    static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count())) >>
                                   1);
  }
  if (ranks > 1) {
    std::int64_t all = 0;
    comm.allreduce(&id, &all, 1, comm::ReduceOp::max);
    id = all;
  }
  const std::string save_id = crc32_hex(static_cast<std::uint32_t>(id >> 31)) + crc32_hex(static_cast<std::uint32_t>(id));
  detail::together(comm, where, [&] {
    fault("begin");
    std::filesystem::create_directories(dir);
    if (rank == 0 && std::filesystem::remove(dir / kMetadataFile)) detail::fsync_dir(dir);
  });
  SafetensorsWriter w;
  detail::SaveVisitor<T> v{&o.sharding, rank, ranks, &w, json::Value::make_array(), {}, 0, {}, {}};
  detail::together(comm, where, [&] { detail::visit(obj, v); });
  if (ranks > 1 && o.check_replicated) detail::check_replicated(comm, where, v.replicated, v.replicated_crc);
  detail::together(comm, where, [&] {
    w.metadata("weft.format", std::string(kFormatName));
    w.metadata("weft.version", std::to_string(kFormatVersion));
    w.metadata("weft.rank", std::to_string(rank));
    w.metadata("weft.ranks", std::to_string(ranks));
    w.metadata("weft.step", std::to_string(o.step));
    w.metadata("weft.save_id", save_id);
    w.metadata("weft.items", json::write(v.items));
    for (auto& [k, s] : v.scalars) w.metadata(k, s);
    w.write(dir / rank_file_name(rank));
    fault("rank file written");
  });
  detail::together(comm, where, [&] {
    if (rank != 0) return;
    fault("metadata");
    json::Value files = json::Value::make_array();
    json::Value tensors = json::Value::make_object();
    std::map<std::string, std::size_t, std::less<>> at;  // tensor name -> index in `tensors`
    std::vector<json::Value> pieces;
    std::set<std::string, std::less<>> per_rank;
    for (int r = 0; r < ranks; ++r) {
      const SafetensorsReader f(dir / rank_file_name(r));
      const std::string* sid = f.header().meta("weft.save_id");
      if (!sid || *sid != save_id)
        throw_error<IoError>(f.path().string(), ": written by another save (save id ", sid ? *sid : "none", ", expected ", save_id, ")");
      if (r == 0) {
        const std::string* items = f.header().meta("weft.items");
        if (!items) throw_error<IoError>(f.path().string(), ": no weft.items in __metadata__");
        const json::Value list = json::parse(*items);
        for (const json::Value& it : list.items()) {
          if (!it.is_array() || it.items().size() != 3 || !it.items()[0].is_string())
            throw_error<IoError>(f.path().string(), ": weft.items in __metadata__ is malformed");
          json::Value t = json::Value::make_object();
          t.set("dtype", it.items()[1]);
          t.set("shape", it.items()[2]);
          at[it.items()[0].as_string()] = pieces.size();
          pieces.push_back(json::Value::make_array());
          tensors.set(it.items()[0].as_string(), std::move(t));
        }
      }
      for (const TensorInfo& t : f.header().tensors) {
        const std::string* p = f.header().meta("piece:" + t.name);
        if (!p) throw_error<IoError>(f.path().string(), ": tensor '", t.name, "': no piece:", t.name, " in __metadata__");
        const json::Value d = json::parse(*p);
        const auto it = at.find(d.find("tensor")->as_string());
        if (it == at.end())
          throw_error<IoError>(f.path().string(), ": tensor '", t.name, "': a piece of a tensor rank 0 did not visit (ranks visit different items)");
        json::Value e = json::Value::make_object();
        e.set("file", json::Value::make_uint(static_cast<std::uint64_t>(r)));
        e.set("key", json::Value::make_string(t.name));
        e.set("begin", *d.find("begin"));
        e.set("end", *d.find("end"));
        if (d.find("per_rank")) {
          e.set("per_rank", json::Value::make_bool(true));
          per_rank.insert(it->first);
        }
        pieces[it->second].push(std::move(e));
      }
      json::Value fj = json::Value::make_object();
      fj.set("name", json::Value::make_string(rank_file_name(r)));
      fj.set("bytes", json::Value::make_uint(f.file_bytes()));
      files.push(std::move(fj));
    }
    json::Value m = json::Value::make_object();
    m.set("format", json::Value::make_string(std::string(kFormatName)));
    m.set("version", json::Value::make_uint(kFormatVersion));
    m.set("step", json::Value::make_uint(static_cast<std::uint64_t>(o.step)));
    m.set("ranks", json::Value::make_uint(static_cast<std::uint64_t>(ranks)));
    m.set("save_id", json::Value::make_string(save_id));
    m.set("files", std::move(files));
    json::Value ts = json::Value::make_object();
    for (const auto& [name, t] : tensors.members()) {
      json::Value e = t;
      if (per_rank.count(name)) e.set("per_rank", json::Value::make_bool(true));
      e.set("pieces", pieces[at.find(name)->second]);
      ts.set(name, std::move(e));
    }
    m.set("tensors", std::move(ts));
    const std::string text = json::write(m) + "\n";
    AtomicFile f(dir / kMetadataFile);
    f.write(text.data(), text.size());
    f.commit();
  });
}

// One rank, no communicator.
template <class T = float, class Obj>
void save(const std::filesystem::path& dir, Obj& obj, const SaveOptions& o = {}) {
  SoloComm c;
  save<T>(dir, obj, c, o);
}

namespace detail {

struct Piece {
  std::size_t file;
  std::string key;
  std::uint64_t begin, end;
};
struct LogicalTensor {
  Dtype dtype;
  std::vector<std::uint64_t> shape;
  std::vector<Piece> pieces;
  bool per_rank = false;
  bool visited = false;
};

// checkpoint.json, checked.
struct Metadata {
  std::filesystem::path dir, path;
  CheckpointInfo info;
  std::vector<std::pair<std::string, std::uint64_t>> files;  // name, bytes
  std::map<std::string, LogicalTensor, std::less<>> tensors;

  explicit Metadata(const std::filesystem::path& d) : dir(d), path(d / kMetadataFile) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) throw_error<IoError>(dir.string(), ": no such checkpoint directory");
    if (!std::filesystem::exists(path, ec))
      throw_error<IoError>(dir.string(), ": no ", kMetadataFile, ": an incomplete checkpoint (a save did not finish) or not a checkpoint");
    const json::Value m = read_json_file(path);
    const std::string p = path.string();
    auto need = [&](const json::Value& o, std::string_view k, bool (json::Value::*is)() const, std::string_view what) -> const json::Value& {
      const json::Value* x = o.is_object() ? o.find(k) : nullptr;
      if (!x || !(x->*is)()) throw_error<IoError>(p, ": '", k, "' missing or not ", what);
      return *x;
    };
    if (need(m, "format", &json::Value::is_string, "a string").as_string() != kFormatName)
      throw_error<IoError>(p, ": format is not ", kFormatName);
    const std::uint64_t v = need(m, "version", &json::Value::is_uint, "an integer").as_uint();
    if (v != kFormatVersion) throw_error<IoError>(p, ": format version ", v, ", this weft reads version ", kFormatVersion);
    const std::uint64_t step = need(m, "step", &json::Value::is_uint, "an integer").as_uint();
    if (step > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) throw_error<IoError>(p, ": step ", step, " does not fit in std::int64_t");
    info.step = static_cast<std::int64_t>(step);
    const std::uint64_t ranks = need(m, "ranks", &json::Value::is_uint, "an integer").as_uint();
    info.save_id = need(m, "save_id", &json::Value::is_string, "a string").as_string();
    const json::Value& fs = need(m, "files", &json::Value::is_array, "an array");
    if (ranks == 0 || ranks != fs.items().size() || ranks > (1u << 20))
      throw_error<IoError>(p, ": ", ranks, " ranks but ", fs.items().size(), " files");
    info.ranks = static_cast<int>(ranks);
    for (const json::Value& f : fs.items()) {
      // Only the names save writes: a hostile file cannot point outside the directory.
      const std::string& name = need(f, "name", &json::Value::is_string, "a string").as_string();
      if (name != rank_file_name(static_cast<int>(files.size())))
        throw_error<IoError>(p, ": file ", files.size(), " is named '", name, "', not ", rank_file_name(static_cast<int>(files.size())));
      files.emplace_back(name, need(f, "bytes", &json::Value::is_uint, "an integer").as_uint());
    }
    for (const auto& [name, t] : need(m, "tensors", &json::Value::is_object, "an object").members()) {
      LogicalTensor lt;
      const std::string who = p + ": tensor '" + name + "'";
      if (!t.is_object() || !t.find("dtype") || !t.find("dtype")->is_string() || !parse_dtype(t.find("dtype")->as_string(), lt.dtype))
        throw_error<IoError>(who, ": missing or unknown dtype");
      const json::Value* sh = t.find("shape");
      if (!sh || !sh->is_array()) throw_error<IoError>(who, ": missing shape");
      for (const json::Value& d : sh->items()) {
        if (!d.is_uint()) throw_error<IoError>(who, ": shape holds a non-integer");
        lt.shape.push_back(d.as_uint());
      }
      if (const json::Value* pr = t.find("per_rank")) lt.per_rank = pr->kind() == json::Value::Kind::boolean && pr->as_bool();
      const json::Value* ps = t.find("pieces");
      if (!ps || !ps->is_array()) throw_error<IoError>(who, ": missing pieces");
      for (const json::Value& pc : ps->items()) {
        const json::Value* f = pc.is_object() ? pc.find("file") : nullptr;
        const json::Value* k = pc.is_object() ? pc.find("key") : nullptr;
        const json::Value* b = pc.is_object() ? pc.find("begin") : nullptr;
        const json::Value* e = pc.is_object() ? pc.find("end") : nullptr;
        if (!f || !k || !b || !e || !f->is_uint() || !k->is_string() || !b->is_uint() || !e->is_uint() || f->as_uint() >= ranks ||
            b->as_uint() > e->as_uint())
          throw_error<IoError>(who, ": a malformed piece");
        lt.pieces.push_back(Piece{static_cast<std::size_t>(f->as_uint()), k->as_string(), b->as_uint(), e->as_uint()});
      }
      tensors.emplace(name, std::move(lt));
    }
  }
};

// Restores one rank's items; opens files on first use and checks them.
template <class T>
struct LoadVisitor {
  const Metadata* meta;
  const Sharding* sharding;
  int rank = 0;
  bool reshard = false;
  bool write_tensors = false;  // pass 1 checks only; pass 2 reads
  std::vector<std::unique_ptr<SafetensorsReader>>* open;
  std::vector<unsigned char> buf;

  const SafetensorsReader& file(std::size_t i) {
    auto& slot = (*open)[i];
    if (!slot) {
      const auto& [name, bytes] = meta->files[i];
      auto f = std::make_unique<SafetensorsReader>(meta->dir / name);
      const std::string p = f->path().string();
      if (f->file_bytes() != bytes)
        throw_error<IoError>(p, ": ", f->file_bytes(), " bytes, but ", kMetadataFile, " says ", bytes, " (truncated or replaced)");
      const std::string* sid = f->header().meta("weft.save_id");
      if (!sid || *sid != meta->info.save_id)
        throw_error<IoError>(p, ": from another save (save id ", sid ? *sid : "none", ", ", kMetadataFile, " says ",
                             meta->info.save_id, ")");
      slot = std::move(f);
    }
    return *slot;
  }

  void operator()(std::string_view name, TensorView<T> t) {
    const auto it = meta->tensors.find(name);
    if (it == meta->tensors.end())
      throw_error<IoError>(meta->path.string(), ": tensor '", name, "': the model has it, the checkpoint does not (rank ", rank, ")");
    LogicalTensor& lt = const_cast<LogicalTensor&>(it->second);
    lt.visited = true;
    const std::vector<std::uint64_t> shape = shape_of(t.shape);
    if (lt.dtype != dtype_for_v<T> || lt.shape != shape)
      throw_error<IoError>(meta->path.string(), ": tensor '", name, "': the checkpoint holds ", dtype_name(lt.dtype), " ",
                           shape_text(lt.shape), ", the model ", dtype_name(dtype_for_v<T>), " ", shape_text(shape), " (rank ", rank, ")");
    if (!t.is_contiguous()) throw_error<ValueError>("checkpoint load: tensor '", name, "' is not contiguous");
    const auto numel = static_cast<std::uint64_t>(t.numel());
    if (lt.per_rank != sharding->is_per_rank(name))
      throw_error<IoError>(meta->path.string(), ": tensor '", name, "': saved ", lt.per_rank ? "per rank" : "as one tensor",
                           ", but the Sharding given to load says ", lt.per_rank ? "not" : "per_rank", " (rank ", rank, ")");
    if (lt.per_rank) {
      restore_own(name, t, lt);
      return;
    }
    std::vector<Range> need;
    const std::vector<Range>* rs = sharding->ranges(name);
    if (rs) {
      for (const Range& r : *rs) {
        if (r.begin > r.end || r.end > numel)
          throw_error<ValueError>("checkpoint load: tensor '", name, "': shard range [", r.begin, ", ", r.end, ") is outside its ", numel, " elements");
        if (r.begin < r.end) need.push_back(r);
      }
    } else if (numel > 0) {
      need.push_back(Range{0, numel});
    }
    if (write_tensors && rs) std::memset(static_cast<void*>(t.data), 0, static_cast<std::size_t>(numel) * sizeof(T));
    for (const Range& r : need) {
      std::uint64_t covered = 0;
      for (const Piece& pc : lt.pieces) {
        const std::uint64_t b = std::max(r.begin, pc.begin), e = std::min(r.end, pc.end);
        if (b >= e) continue;
        covered += e - b;
        const SafetensorsReader& f = file(pc.file);
        const TensorInfo& info = f.info(pc.key);
        if (info.dtype != lt.dtype || info.numel() != pc.end - pc.begin)
          throw_error<IoError>(f.path().string(), ": tensor '", pc.key, "': holds ", dtype_name(info.dtype), " ", shape_text(info.shape),
                               ", but ", kMetadataFile, " says ", pc.end - pc.begin, " elements of ", dtype_name(lt.dtype));
        if (!write_tensors) continue;
        if (b == pc.begin && e == pc.end) {  // the whole piece: straight into the tensor
          f.read(pc.key, static_cast<void*>(t.data + b), static_cast<std::size_t>(info.bytes()), true);
          continue;
        }
        buf.resize(static_cast<std::size_t>(info.bytes()));
        f.read(pc.key, buf.data(), buf.size(), true);
        std::memcpy(static_cast<void*>(t.data + b), buf.data() + (b - pc.begin) * sizeof(T), static_cast<std::size_t>(e - b) * sizeof(T));
      }
      if (covered < r.end - r.begin)  // pieces do not overlap (checked below), so a shortfall is a hole
        throw_error<IoError>(meta->path.string(), ": tensor '", name, "': elements [", r.begin, ", ", r.end,
                             ") are not all in the checkpoint's files (a missing piece; rank ", rank, ")");
      if (covered > r.end - r.begin)
        throw_error<IoError>(meta->path.string(), ": tensor '", name, "': pieces overlap in elements [", r.begin, ", ", r.end, ")");
    }
  }

  // A per-rank tensor: this rank's own copy, or zeros on another world size.
  void restore_own(std::string_view name, TensorView<T> t, const LogicalTensor& lt) {
    const auto bytes = static_cast<std::size_t>(t.numel()) * sizeof(T);
    if (reshard) {
      if (write_tensors) std::memset(static_cast<void*>(t.data), 0, bytes);
      return;
    }
    for (const Piece& pc : lt.pieces)
      if (pc.file == static_cast<std::size_t>(rank)) {
        const SafetensorsReader& f = file(pc.file);
        if (write_tensors) f.read(pc.key, static_cast<void*>(t.data), bytes, true);
        else if (f.info(pc.key).bytes() != bytes)
          throw_error<IoError>(f.path().string(), ": tensor '", pc.key, "': holds ", f.info(pc.key).bytes(), " bytes, the model ", bytes);
        return;
      }
    throw_error<IoError>(meta->path.string(), ": tensor '", name, "': no copy for rank ", rank, " (a missing piece)");
  }

  template <class S>
    requires std::is_arithmetic_v<S>
  void operator()(std::string_view name, S& x) {
    if (reshard && sharding->is_layout(name)) return;
    const std::size_t own = rank < meta->info.ranks ? static_cast<std::size_t>(rank) : 0;
    const SafetensorsReader& f = file(own);
    const std::string* s = f.header().meta("scalar:" + std::string(name));
    if (!s) throw_error<IoError>(f.path().string(), ": scalar '", name, "': the model has it, the checkpoint does not (rank ", rank, ")");
    S v{};
    if (!parse_scalar<S>(*s, v))
      throw_error<IoError>(f.path().string(), ": scalar '", name, "': stored as \"", *s, "\", the model wants ", scalar_kind<S>(), " (rank ", rank, ")");
    x = v;
  }
};

}  // namespace detail

// Restores obj's state from `dir` on every rank of `comm` (collective). With
// o.sharding describing this rank's new layout, a checkpoint saved on another
// number of ranks is resharded. Returns the step and rank count saved.
template <class T = float, class Obj, class Comm>
CheckpointInfo load(const std::filesystem::path& dir, Obj& obj, Comm& comm, const LoadOptions& o = {}) {
  const std::string where = "checkpoint load from " + dir.string();
  CheckpointInfo info;
  detail::together(comm, where, [&] {
    detail::Metadata meta(dir);
    info = meta.info;
    std::vector<std::unique_ptr<SafetensorsReader>> open(meta.files.size());
    detail::LoadVisitor<T> v{&meta, &o.sharding, comm.rank(), meta.info.ranks != comm.size(), false, &open, {}};
    detail::visit(obj, v);  // pass 1: names, dtypes, shapes, coverage, scalars
    if (o.strict)
      for (const auto& [name, lt] : meta.tensors) {
        if (lt.visited || (lt.per_rank && v.reshard)) continue;  // per-rank state starts fresh on other ranks
        throw_error<IoError>(meta.path.string(), ": tensor '", name, "': in the checkpoint but not in the model (rank ",
                             comm.rank(), lt.per_rank ? "; per-rank codec state: CodecState::expect creates it before load" : "",
                             "; LoadOptions::strict = false ignores it)");
      }
    v.write_tensors = true;
    detail::visit(obj, v);  // pass 2: data, checksums
  });
  return info;
}

template <class T = float, class Obj>
CheckpointInfo load(const std::filesystem::path& dir, Obj& obj, const LoadOptions& o = {}) {
  SoloComm c;
  return load<T>(dir, obj, c, o);
}

// The newest complete checkpoint under root (a step_dir with checkpoint.json), if any.
// Steps compare as numbers (step-100000000 is newer than step-99999999).
inline std::optional<std::filesystem::path> latest(const std::filesystem::path& root) {
  std::error_code ec;
  std::optional<std::filesystem::path> best;
  std::int64_t best_step = -1;
  for (const auto& e : std::filesystem::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    std::int64_t step = -1;
    if (!n.starts_with("step-") || !detail::parse_scalar<std::int64_t>("i64:" + n.substr(5), step) || step < 0) continue;
    if (step > best_step && std::filesystem::exists(e.path() / kMetadataFile, ec)) {
      best = e.path();
      best_step = step;
    }
  }
  return best;
}

}  // namespace weft::io::checkpoint
