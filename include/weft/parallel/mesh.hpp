// Mesh: the ranks of one transport laid out as a grid with named axes
// (`{{"pp", 2}, {"dp", 2}, {"tp", 2}}`), so strategies compose: data
// parallelism on mesh.comm<Ring>("dp"), tensor parallelism on
// mesh.comm<Ring>("tp"), a pipeline on mesh.comm<...>("pp").
//
//   - Layout: row-major, the LAST axis innermost. Rank r has coordinates
//     (c0, c1, ..., ck) with r = ((c0 * n1 + c1) * n2 + ...) + ck, so ranks
//     that differ only in the last axis are consecutive: under a node layout
//     of consecutive ranks (MPI's usual placement, Hierarchical's emulated
//     nodes) the innermost axis stays on one node. Put the chattiest axis
//     (tensor parallel) last.
//   - comm<Algo>("dp", algo, options): the communicator over the ranks that
//     share every coordinate except "dp" (one group per setting of the other
//     axes), ranked by their "dp" coordinate, with the algorithm policy the
//     caller picks for this axis. comm<Algo>("dp,tp") spans a group of axes
//     (ranked row-major over them, in mesh order). Built by transport.split on
//     first use: the first call for a given (axes, policy) is collective, so
//     every rank of the mesh makes these first calls in the same order. The
//     mesh owns the communicators; references stay valid while it lives.
//   - A mesh whose sizes do not multiply to the transport's rank count, an
//     empty or repeated axis name, an axis of size < 1 or an unknown axis
//     fails on every rank with a sentence naming it (no communication is
//     needed to find out, so no rank waits for another).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <typeindex>
#include <typeinfo>
#include <utility>
#include <vector>

#include "../comm/communicator.hpp"
#include "../comm/deadline.hpp"
#include "../comm/transport.hpp"
#include "../core/error.hpp"

namespace weft::parallel {

struct MeshAxis {
  std::string name;
  int size = 1;
};

template <comm::Transport T>
class Mesh {
 public:
  using transport_type = T;

  Mesh(T world, std::vector<MeshAxis> axes) : world_(std::move(world)), axes_(std::move(axes)) {
    if (axes_.empty()) throw_error<ValueError>("Mesh on rank ", world_.rank(), ": give at least one axis");
    long long product = 1;
    for (std::size_t i = 0; i < axes_.size(); ++i) {
      const MeshAxis& a = axes_[i];
      if (a.name.empty() || a.name.find(',') != std::string::npos)
        throw_error<ValueError>("Mesh on rank ", world_.rank(), ": axis ", i, " has name '", a.name,
                                "'; names are non-empty and hold no comma");
      if (a.size < 1)
        throw_error<ValueError>("Mesh on rank ", world_.rank(), ": axis '", a.name, "' has size ", a.size,
                                "; every axis has at least one rank");
      for (std::size_t j = 0; j < i; ++j)
        if (axes_[j].name == a.name)
          throw_error<ValueError>("Mesh on rank ", world_.rank(), ": axis '", a.name, "' appears twice");
      product *= a.size;
    }
    if (product != world_.size())
      throw_error<ValueError>("Mesh on rank ", world_.rank(), ": a ", describe(), " mesh holds ", product,
                              " ranks but the transport has ", world_.size(),
                              "; run on ", product, " ranks or choose axis sizes whose product is ", world_.size());
    coords_.resize(axes_.size());
    int r = world_.rank();
    for (std::size_t i = axes_.size(); i-- > 0;) {
      coords_[i] = r % axes_[i].size;
      r /= axes_[i].size;
    }
  }

  Mesh(const Mesh&) = delete;
  Mesh& operator=(const Mesh&) = delete;

  int rank() const { return world_.rank(); }
  int size() const { return world_.size(); }
  const std::vector<MeshAxis>& axes() const { return axes_; }
  T& world() { return world_; }

  // "pp2 x dp2 x tp2"
  std::string describe() const {
    std::string s;
    for (std::size_t i = 0; i < axes_.size(); ++i)
      s += (i ? " x " : "") + axes_[i].name + std::to_string(axes_[i].size);
    return s;
  }

  int axis_size(std::string_view axis) const { return axes_[index(axis)].size; }
  // This rank's coordinate along `axis` (its rank in comm(axis)).
  int coord(std::string_view axis) const { return coords_[index(axis)]; }
  const std::vector<int>& coords() const { return coords_; }

  // The rank at the given coordinates (one per axis, in mesh order).
  int rank_of(const std::vector<int>& c) const {
    if (c.size() != axes_.size())
      throw_error<ValueError>("Mesh::rank_of: ", c.size(), " coordinates for a ", describe(), " mesh");
    int r = 0;
    for (std::size_t i = 0; i < axes_.size(); ++i) {
      if (c[i] < 0 || c[i] >= axes_[i].size)
        throw_error<ValueError>("Mesh::rank_of: coordinate ", c[i], " on axis '", axes_[i].name, "' of size ",
                                axes_[i].size);
      r = r * axes_[i].size + c[i];
    }
    return r;
  }

  // Ranks in this rank's group over `axes` ("dp" or "dp,tp"), in their order
  // within the group.
  std::vector<int> group(std::string_view axes) const {
    const std::vector<bool> in = select(axes);
    std::vector<int> out;
    std::vector<int> c = coords_;
    walk(in, 0, c, out);
    return out;
  }

  // The transport over this rank's group along `axes`: a fresh split
  // (collective over the whole mesh).
  T split(std::string_view axes, comm::Deadline dl = comm::deadline_after(std::chrono::minutes(5))) const {
    const std::vector<bool> in = select(axes);
    int color = 0, key = 0;
    for (std::size_t i = 0; i < axes_.size(); ++i) {
      if (in[i])
        key = key * axes_[i].size + coords_[i];
      else
        color = color * axes_[i].size + coords_[i];
    }
    return world_.split(color, key, dl);
  }

  // The communicator of this rank's group along `axes`, with algorithm policy
  // Algo; built (split, collective) on the first call for (axes, Algo) and
  // owned by the mesh. Options apply when it is built.
  template <class Algo>
    requires comm::AlgorithmFor<Algo, T>
  comm::Communicator<Algo, T>& comm(std::string_view axes, Algo algo = {}, comm::CommOptions o = {}) {
    using C = comm::Communicator<Algo, T>;
    const std::string key = canonical(axes);
    for (auto& h : comms_)
      if (h->axes == key && h->type == std::type_index(typeid(Algo))) return *static_cast<C*>(h->get());
    auto h = std::make_unique<Held<C>>(key, std::type_index(typeid(Algo)), split(axes), algo, o);
    C& c = h->c;
    comms_.push_back(std::move(h));
    return c;
  }

 private:
  // Owners of communicators of any policy: a virtual destructor, called once
  // when the mesh goes; nothing virtual runs in a training step.
  struct Holder {
    std::string axes;
    std::type_index type;
    Holder(std::string a, std::type_index t) : axes(std::move(a)), type(t) {}
    virtual ~Holder() = default;
    virtual void* get() = 0;
  };
  template <class C>
  struct Held final : Holder {
    C c;
    template <class Algo>
    Held(std::string a, std::type_index t, T tr, Algo algo, comm::CommOptions o)
        : Holder(std::move(a), t), c(std::move(tr), algo, o) {}
    void* get() override { return &c; }
  };

  std::size_t index(std::string_view axis) const {
    for (std::size_t i = 0; i < axes_.size(); ++i)
      if (axes_[i].name == axis) return i;
    throw_error<ValueError>("Mesh on rank ", world_.rank(), ": no axis named '", axis, "' in the ", describe(), " mesh");
  }

  std::vector<bool> select(std::string_view axes) const {
    std::vector<bool> in(axes_.size(), false);
    std::size_t start = 0;
    bool any = false;
    while (start <= axes.size()) {
      std::size_t end = axes.find(',', start);
      if (end == std::string_view::npos) end = axes.size();
      std::string_view name = axes.substr(start, end - start);
      const std::size_t i = index(name);
      if (in[i]) throw_error<ValueError>("Mesh: axis '", name, "' is named twice in '", axes, "'");
      in[i] = any = true;
      start = end + 1;
    }
    if (!any) throw_error<ValueError>("Mesh: no axis named in '", axes, "'");
    return in;
  }

  std::string canonical(std::string_view axes) const {
    const std::vector<bool> in = select(axes);
    std::string s;
    for (std::size_t i = 0; i < axes_.size(); ++i)
      if (in[i]) s += (s.empty() ? "" : ",") + axes_[i].name;
    return s;
  }

  void walk(const std::vector<bool>& in, std::size_t i, std::vector<int>& c, std::vector<int>& out) const {
    if (i == axes_.size()) {
      out.push_back(rank_of(c));
      return;
    }
    if (!in[i]) return walk(in, i + 1, c, out);
    for (int v = 0; v < axes_[i].size; ++v) {
      c[i] = v;
      walk(in, i + 1, c, out);
    }
    c[i] = coords_[i];
  }

  T world_;
  std::vector<MeshAxis> axes_;
  std::vector<int> coords_;
  std::vector<std::unique_ptr<Holder>> comms_;
};

}  // namespace weft::parallel
