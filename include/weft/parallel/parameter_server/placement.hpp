// Which server holds what: roles (server or worker ranks) and the placement of
// the parameters over the servers by key ranges. Dense keys are laid end to
// end and the concatenation is cut into equal element ranges, one per server,
// so a large tensor is split across several servers and every server holds
// the same number of elements (within one). Sparse keys (embedding tables)
// are split by rows, each server holding an equal range of every table's rows.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "../../core/error.hpp"

namespace weft::parallel::ps {

// Ranks' roles. `count(s, p)`: ranks 0..s-1 serve, the others work;
// `of(servers, p)`: the listed ranks serve (any split the user chose);
// `from_mesh(mesh, axis, k)`: the ranks at coordinates 0..k-1 of a mesh axis serve.
struct Roles {
  std::vector<int> servers, workers;

  static Roles of(std::vector<int> servers, int size) {
    Roles r;
    std::sort(servers.begin(), servers.end());
    for (std::size_t i = 0; i < servers.size(); ++i) {
      if (servers[i] < 0 || servers[i] >= size)
        throw_error<ValueError>("ps::Roles: server rank ", servers[i], " is not a rank of a group of ", size);
      if (i && servers[i] == servers[i - 1]) throw_error<ValueError>("ps::Roles: server rank ", servers[i], " is listed twice");
    }
    r.servers = std::move(servers);
    for (int q = 0; q < size; ++q)
      if (!std::binary_search(r.servers.begin(), r.servers.end(), q)) r.workers.push_back(q);
    if (r.servers.empty()) throw_error<ValueError>("ps::Roles: need at least one server rank (group of ", size, ")");
    if (r.workers.empty())
      throw_error<ValueError>("ps::Roles: need at least one worker rank: all ", size, " ranks are servers");
    return r;
  }
  static Roles count(int n_servers, int size) {
    if (n_servers < 1 || n_servers >= size)
      throw_error<ValueError>("ps::Roles::count: ", n_servers, " servers out of ", size,
                              " ranks: need at least one server and one worker");
    std::vector<int> s(static_cast<std::size_t>(n_servers));
    for (int i = 0; i < n_servers; ++i) s[static_cast<std::size_t>(i)] = i;
    return of(std::move(s), size);
  }
  // From a mesh axis (parallel::Mesh, or anything with axes() of {name, size}
  // and size()): the ranks whose coordinate along `axis` is below `serving`
  // serve, the rest work. With {{"node", 2}, {"local", 4}} and axis "local",
  // each node's first rank serves the three workers beside it (ranks 0 and 4),
  // the co-located placement of BytePS; with axis "node", node 0 serves.
  template <class M>
  static Roles from_mesh(const M& mesh, std::string_view axis, int serving = 1) {
    const auto& axes = mesh.axes();
    std::size_t a = axes.size();
    std::string names;
    for (std::size_t i = 0; i < axes.size(); ++i) {
      names += (i ? ", " : "") + axes[i].name;
      if (axes[i].name == axis) a = i;
    }
    if (a == axes.size())
      throw_error<ValueError>("ps::Roles::from_mesh: the mesh has no axis '", std::string(axis), "' (axes: ", names, ")");
    const int n = axes[a].size;
    if (serving < 1 || serving >= n)
      throw_error<ValueError>("ps::Roles::from_mesh: ", serving, " serving coordinates of axis '", std::string(axis),
                              "' (size ", n, "): need at least one coordinate that serves and one that works");
    int stride = 1;  // row-major, the last axis innermost (mesh.hpp)
    for (std::size_t i = a + 1; i < axes.size(); ++i) stride *= axes[i].size;
    std::vector<int> s;
    for (int q = 0; q < mesh.size(); ++q)
      if ((q / stride) % n < serving) s.push_back(q);
    return of(std::move(s), mesh.size());
  }
  int server_index(int rank) const { return index_in(servers, rank); }
  int worker_index(int rank) const { return index_in(workers, rank); }
  bool is_server(int rank) const { return server_index(rank) >= 0; }

 private:
  static int index_in(const std::vector<int>& v, int rank) {
    auto it = std::lower_bound(v.begin(), v.end(), rank);
    return it != v.end() && *it == rank ? static_cast<int>(it - v.begin()) : -1;
  }
};

// A key: a dense tensor of `rows * cols` elements, or a sparse table of
// `rows` rows of `cols` elements that travels row by row.
struct Key {
  std::string name;
  std::size_t rows = 0, cols = 1;
  bool sparse = false;
  std::size_t numel() const { return rows * cols; }
};

// One server's piece of one key: elements [begin, end) of a dense key, rows
// [begin, end) of a sparse one.
struct Piece {
  int server = 0;  // index into Roles::servers
  std::size_t key = 0;
  std::size_t begin = 0, end = 0;
};

class Placement {
 public:
  Placement() = default;
  Placement(std::vector<Key> keys, int n_servers) : keys_(std::move(keys)), servers_(n_servers) {
    if (n_servers < 1) throw_error<ValueError>("ps::Placement: need at least one server, got ", n_servers);
    for (std::size_t i = 0; i < keys_.size(); ++i) {
      if (keys_[i].numel() == 0) throw_error<ValueError>("ps::Placement: key '", keys_[i].name, "' has no elements");
      for (std::size_t j = 0; j < i; ++j)
        if (keys_[j].name == keys_[i].name) throw_error<ValueError>("ps::Placement: two keys are named '", keys_[i].name, "'");
    }
    by_key_.resize(keys_.size());
    std::size_t dense = 0;
    for (const Key& k : keys_)
      if (!k.sparse) dense += k.numel();
    // dense: the concatenation cut into n equal ranges
    std::size_t at = 0;
    for (std::size_t i = 0; i < keys_.size(); ++i) {
      if (keys_[i].sparse) continue;
      const std::size_t lo = at, hi = at + keys_[i].numel();
      for (int s = 0; s < n_servers; ++s) {
        const std::size_t slo = dense * static_cast<std::size_t>(s) / static_cast<std::size_t>(n_servers);
        const std::size_t shi = dense * static_cast<std::size_t>(s + 1) / static_cast<std::size_t>(n_servers);
        const std::size_t b = std::max(lo, slo), e = std::min(hi, shi);
        if (b < e) add(Piece{s, i, b - lo, e - lo});
      }
      at = hi;
    }
    // sparse: each table's rows cut into n equal ranges
    for (std::size_t i = 0; i < keys_.size(); ++i) {
      if (!keys_[i].sparse) continue;
      const std::size_t r = keys_[i].rows;
      for (int s = 0; s < n_servers; ++s) {
        const std::size_t b = r * static_cast<std::size_t>(s) / static_cast<std::size_t>(n_servers);
        const std::size_t e = r * static_cast<std::size_t>(s + 1) / static_cast<std::size_t>(n_servers);
        if (b < e) add(Piece{s, i, b, e});
      }
    }
  }

  const std::vector<Key>& keys() const { return keys_; }
  int servers() const { return servers_; }
  const std::vector<Piece>& pieces() const { return pieces_; }
  // Pieces of key k in order (ascending ranges).
  const std::vector<std::size_t>& pieces_of(std::size_t k) const { return by_key_.at(k); }
  std::size_t find(const std::string& name) const {
    for (std::size_t i = 0; i < keys_.size(); ++i)
      if (keys_[i].name == name) return i;
    throw_error<ValueError>("ps::Placement: no key named '", name, "'");
  }
  // Elements server s holds.
  std::size_t load(int s) const {
    std::size_t n = 0;
    for (const Piece& p : pieces_)
      if (p.server == s) n += (p.end - p.begin) * (keys_[p.key].sparse ? keys_[p.key].cols : 1);
    return n;
  }
  // "l1.weight[0:1000) l1.bias[0:10)" for server s: what a dead server took with it.
  std::string held_by(int s) const {
    std::string out;
    for (const Piece& p : pieces_) {
      if (p.server != s) continue;
      if (!out.empty()) out += ' ';
      out += keys_[p.key].name + (keys_[p.key].sparse ? " rows[" : "[") + std::to_string(p.begin) + ":" +
             std::to_string(p.end) + ")";
    }
    return out;
  }
  // One line per server: rank, elements held, and its pieces.
  std::string describe(const std::vector<int>& server_ranks) const {
    std::string out;
    for (int s = 0; s < servers_; ++s) {
      out += "server " + std::to_string(s) + " (rank " +
             std::to_string(s < static_cast<int>(server_ranks.size()) ? server_ranks[static_cast<std::size_t>(s)] : -1) +
             "): " + std::to_string(load(s)) + " elements: " + held_by(s) + "\n";
    }
    return out;
  }

 private:
  void add(Piece p) {
    by_key_[p.key].push_back(pieces_.size());
    pieces_.push_back(p);
  }
  std::vector<Key> keys_;
  int servers_ = 0;
  std::vector<Piece> pieces_;
  std::vector<std::vector<std::size_t>> by_key_;
};

}  // namespace weft::parallel::ps
