// The evaluation protocol between expression nodes (expr/) and the kernels
// that run them (kernels/<device>/): what a *bound* evaluator is, how it is
// indexed, and the bound leaves. It sits below both, so kernels never include
// expr/ and expr/ reaches kernels only through kernels/dispatch.hpp.
//
// A bound evaluator is a device-copyable tree with
//   using value_type; struct Tape { value_type v; ... };
//   fwd(ix, tape)                  fills the Tape (the values its adjoint rule needs)
//   bwd(ix, tape, adjoint, slots)  pushes the adjoint down to its leaves
//   visit(f)                       (host) calls f(LeafInfo) for every leaf
//   adjoints(f)                    (host) calls f(adj, adj_strides, shape) for every
//                                  leaf that adds its adjoint to a buffer, which f may
//                                  redirect (kernels/cpu/loops.hpp: broadcast leaves);
//                                  an f that takes a fourth argument also gets whether
//                                  the buffer is unwritten (BoundBuffer's Fresh)
// ix is a linear index (contiguous fast path) or an Index4 (padded 4-D index,
// general strided/broadcast path). Tapes are filled in place, never copied
// whole, so the compiler keeps every field in a register.
#pragma once

#include <array>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <utility>

#include "../core/config.hpp"
#include "../core/dtype.hpp"
#include "../core/shape.hpp"

namespace weft::kernels {

// Padded 4-D element index (leading dims are padding for lower ranks).
struct Index4 {
  index_t i[max_rank];
};

WEFT_HD WEFT_INLINE index_t offset(index_t i, const Strides&) { return i; }
WEFT_HD WEFT_INLINE index_t offset(const Index4& ix, const Strides& st) {
  return ix.i[0] * st.s[0] + ix.i[1] * st.s[1] + ix.i[2] * st.s[2] + ix.i[3] * st.s[3];
}

// The value of bound evaluator b at element ix.
template <class B, class Ix>
WEFT_HD WEFT_INLINE typename B::value_type value_at(const B& b, const Ix& ix) {
  typename B::Tape t;
  b.fwd(ix, t);
  return t.v;
}

// Description of one leaf of a bound tree, for fast-path and aliasing decisions.
struct LeafInfo {
  const void* base;
  Strides strides;  // aligned to the output shape
  Shape shape;      // the leaf's own shape (extent of memory it reads)
  Strides own_strides;
  std::size_t elem_size;
  void* param = nullptr;  // the Parameter whose gradient this leaf feeds, if any
  bool writes = false;    // backward stores adjoints (through adj_strides)
  Strides adj_strides{};  // where they go, aligned to the output shape
  int slot = -1;          // the value_and_grad input it is, if any
};

// Do strides aligned to the padded region shape p repeat an element along
// some axis of extent > 1 (a broadcast read, whose adjoint stores collide)?
inline bool broadcast_along(const Strides& st, const Shape& p) {
  for (int d = 0; d < max_rank; ++d)
    if (st[d] == 0 && p[d] > 1) return true;
  return false;
}

// How a region reads each of its K input slots (value_and_grad's inputs): the
// adjoint strides and element count of the slot's first occurrence, how many
// occurrences there are, and whether all of them store alike. A backward
// region on the general path gives a slot read alike and broadcast scratch
// memory of the region's shape (kernels/cpu/loops.hpp, kernels/cuda/kernels.cuh).
template <std::size_t K>
struct SlotLayouts {
  Strides st[K > 0 ? K : 1];
  index_t n[K > 0 ? K : 1] = {};
  int count[K > 0 ? K : 1] = {};
  bool alike[K > 0 ? K : 1] = {};
};
template <std::size_t K, class B>
SlotLayouts<K> slot_layouts(const B& b) {
  SlotLayouts<K> s;
  if constexpr (K > 0)
    b.visit([&](const LeafInfo& l) {
      if (l.slot < 0) return;
      const auto k = static_cast<std::size_t>(l.slot);
      if (s.count[k]++ == 0) {
        s.st[k] = l.adj_strides;
        s.n[k] = l.shape.numel();
        s.alike[k] = true;
      }
      for (int d = 0; d < max_rank; ++d) s.alike[k] = s.alike[k] && s.st[k][d] == l.adj_strides[d];
    });
  return s;
}

// True when strides aligned to `shape` are those of a contiguous tensor of that
// shape (extent-1 dimensions are ignored): the leaf can be read with index i.
inline bool strides_linear(const Strides& st, const Shape& shape) {
  Shape p = padded(shape);
  index_t expect = 1;
  for (int d = max_rank - 1; d >= 0; --d) {
    if (p[d] != 1 && st[d] != expect) return false;
    expect *= p[d];
  }
  return true;
}

// Can every leaf of b be read with the linear index of `shape`?
template <class B>
bool linear_ok(const B& b, const Shape& shape) {
  bool ok = true;
  b.visit([&](const LeafInfo& l) { ok = ok && strides_linear(l.strides, shape); });
  return ok;
}

// ---------------------------------------------------------------- bound leaves

// A tensor read as a constant (no adjoint).
template <class T>
struct BoundTensor {
  using value_type = compute_t<T>;
  const T* p;
  Strides st;
  Shape shape;
  Strides own;

  struct Tape {
    value_type v;
  };
  template <class Ix>
  WEFT_HD WEFT_INLINE void fwd(const Ix& ix, Tape& t) const {
    t.v = to_compute(p[offset(ix, st)]);
  }
  template <class Ix, class S>
  WEFT_HD WEFT_INLINE void bwd(const Ix&, const Tape&, value_type, S&) const {}
  template <class F>
  void visit(F&& f) const {
    f(LeafInfo{p, st, shape, own, sizeof(T)});
  }
  template <class F>
  void adjoints(F&&) {}
};

// The input of value_and_grad numbered I: its adjoint goes to slot I.
template <std::size_t I, class T>
struct BoundArg {
  using value_type = compute_t<T>;
  const T* p;
  Strides st;
  Shape shape;
  Strides own;

  struct Tape {
    value_type v;
  };
  template <class Ix>
  WEFT_HD WEFT_INLINE void fwd(const Ix& ix, Tape& t) const {
    t.v = to_compute(p[offset(ix, st)]);
  }
  template <class Ix, class S>
  WEFT_HD WEFT_INLINE void bwd(const Ix& ix, const Tape&, value_type g, S& slots) const {
    slots.template add<I>(ix, st, g);
  }
  template <class F>
  void visit(F&& f) const {
    f(LeafInfo{p, st, shape, own, sizeof(T), nullptr, true, st, static_cast<int>(I)});
  }
  template <class F>
  void adjoints(F&&) {}  // (its adjoint goes to a slot, not a buffer of its own)
};

// A buffer read as a leaf: a materialised intermediate (workspace memory) or a
// parameter's value. When differentiating, its adjoint accumulates into `adj`,
// a buffer of the same shape (a workspace buffer, or the parameter's gradient;
// then `param` names the parameter for the backward pass's bookkeeping),
// through ast: st unless a kernel redirected it (adjoints()).
// Fresh: adj is a node's own new adjoint buffer, unwritten (expr/node.hpp's
// bind_materialised). On the host's contiguous pass (slot accumulator
// HostLinearAcc), where each element of it gets exactly one store, the store
// is the adjoint itself, with no pass zeroing the buffer first; every other
// pass accumulates, and the backward pass zeroes such buffers before it
// (GradContext::region_bound, through adjoints(f) with a four-argument f).
template <class T, bool Grad, bool Fresh = false>
struct BoundBuffer {
  using value_type = T;
  const T* p;
  T* adj;  // nullptr unless Grad
  Strides st;
  Shape shape;
  Strides own;
  void* param = nullptr;
  Strides ast = st;

  struct Tape {
    value_type v;
  };
  template <class Ix>
  WEFT_HD WEFT_INLINE void fwd(const Ix& ix, Tape& t) const {
    t.v = p[offset(ix, st)];
  }
  template <class Ix, class S>
  WEFT_HD WEFT_INLINE void bwd(const Ix& ix, const Tape&, value_type g, S&) const {
    if constexpr (Grad) {
      if constexpr (Fresh && requires { requires S::host_linear; })
        adj[offset(ix, ast)] = g;
      else
        adj[offset(ix, ast)] += g;
    }
  }
  template <class F>
  void visit(F&& f) const {
    f(LeafInfo{p, st, shape, own, sizeof(T), Grad ? param : nullptr, Grad, ast});
  }
  template <class F>
  void adjoints(F&& f) {
    if constexpr (Grad) {
      if constexpr (std::is_invocable_v<F&, T*&, Strides&, const Shape&, bool>)
        f(adj, ast, shape, Fresh);
      else
        f(adj, ast, shape);
    }
  }
};

// A region whose value is already in memory (a matmul operand, evaluated
// once in forward), bound for its backward: the tape's root value is read
// from `val` (contiguous, the region's shape, read at the region's output
// through `st`) instead of computed, so the root op's own arithmetic (the
// tanh of tanh(x W + b)) is dead code in the fused pass; the adjoint rules
// see the value forward stored. Everything below the root is b's.
template <class B>
struct BoundKnownValue {
  using value_type = typename B::value_type;
  using Tape = typename B::Tape;
  B b;
  BoundBuffer<value_type, false> val;

  template <class Ix>
  WEFT_HD WEFT_INLINE void fwd(const Ix& ix, Tape& t) const {
    b.fwd(ix, t);
    typename BoundBuffer<value_type, false>::Tape vt;
    val.fwd(ix, vt);
    t.v = vt.v;
  }
  template <class Ix, class S>
  WEFT_HD WEFT_INLINE void bwd(const Ix& ix, const Tape& t, value_type g, S& s) const {
    b.bwd(ix, t, g, s);
  }
  template <class F>
  void visit(F&& f) const {
    b.visit(f);
    val.visit(f);
  }
  template <class F>
  void adjoints(F&& f) {
    b.adjoints(f);
  }
};

template <class T>
struct BoundScalar {
  using value_type = T;
  T c;
  struct Tape {
    value_type v;
  };
  template <class Ix>
  WEFT_HD WEFT_INLINE void fwd(const Ix&, Tape& t) const {
    t.v = c;
  }
  template <class Ix, class S>
  WEFT_HD WEFT_INLINE void bwd(const Ix&, const Tape&, value_type, S&) const {}
  template <class F>
  void visit(F&&) const {}
  template <class F>
  void adjoints(F&&) {}
};

// ---------------------------------------------------------------- reductions

struct SumOp {
  template <class T> WEFT_HD WEFT_INLINE static T identity() { return T(0); }
  template <class T> WEFT_HD WEFT_INLINE static T combine(T a, T b) { return a + b; }
};
struct MaxOp {
  template <class T> WEFT_HD WEFT_INLINE static T identity() { return -std::numeric_limits<T>::infinity(); }
  template <class T> WEFT_HD WEFT_INLINE static T combine(T a, T b) { return b > a ? b : a; }
};

// ---------------------------------------------------------------- backward

// The adjoint entering a region, per element. `v` is the region's value there.
template <class T>
struct ConstSeed {
  T c;
  template <class Ix> WEFT_HD WEFT_INLINE T operator()(const Ix&, T) const { return c; }
  bool linear(const Shape&) const { return true; }
};

// Adjoint read from a buffer (broadcast through strides), times a scale.
template <class T>
struct BufferSeed {
  const T* p;
  Strides st;
  T scale;
  template <class Ix> WEFT_HD WEFT_INLINE T operator()(const Ix& ix, T) const { return p[offset(ix, st)] * scale; }
  bool linear(const Shape& s) const { return strides_linear(st, s); }
};

// Adjoints of the K differentiated inputs for one element, kept in registers
// (contiguous path: every occurrence of input I is read at index i).
template <class T, std::size_t K>
struct SlotAcc {
  T v[K > 0 ? K : 1];
  template <std::size_t I, class Ix>
  WEFT_HD WEFT_INLINE void add(const Ix&, const Strides&, T g) {
    v[I] += g;
  }
};
// The host's contiguous pass: every buffer element gets one store (see
// BoundBuffer's Fresh).
template <class T, std::size_t K>
struct HostLinearAcc : SlotAcc<T, K> {
  static constexpr bool host_linear = true;
};

// Adjoints written straight to memory through each occurrence's own strides
// (general path: broadcast or transposed occurrences). A slot whose
// occurrences are all broadcast the same way may be given scratch[I] of the
// region's shape instead, read through region strides rst (one element per
// region element, no chain of additions); the kernel reduces it afterwards.
template <class T, std::size_t K>
struct SlotMem {
  T* g[K > 0 ? K : 1] = {};
  T* scratch[K > 0 ? K : 1] = {};
  Strides rst{};
  template <std::size_t I>
  WEFT_HD WEFT_INLINE void add(const Index4& ix, const Strides& st, T v) {
    if (scratch[I])
      scratch[I][offset(ix, rst)] += v;
    else
      g[I][offset(ix, st)] += v;
  }
};

// Which of the K slots region type E writes (E::slots_in_region<I>() > 0).
template <class E, std::size_t K>
constexpr std::array<bool, K> active_slots() {
  return []<std::size_t... I>(std::index_sequence<I...>) {
    return std::array<bool, K>{(E::template slots_in_region<I>() > 0)...};
  }(std::make_index_sequence<K>{});
}

}  // namespace weft::kernels
