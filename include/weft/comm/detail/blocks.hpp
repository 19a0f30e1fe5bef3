// Building blocks the algorithm policies are assembled from. Each is written
// once against Context<T>, so it runs on every transport; each names in a
// comment the schedule it follows. Counts are elements of ctx.call.type.
//
// Legend: p ranks, r this rank, n elements, S = segments (n split into p
// nearly equal parts, the first n % p one element longer).
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstring>

#include "../../core/dtype.hpp"
#include "../reduce_op.hpp"

namespace weft::comm::detail {

// n elements split into `parts` nearly equal segments.
struct Segments {
  std::size_t count = 0;
  int parts = 1;
  std::size_t len(int i) const {
    return count / static_cast<std::size_t>(parts) + (static_cast<std::size_t>(i) < count % static_cast<std::size_t>(parts) ? 1 : 0);
  }
  std::size_t off(int i) const {
    auto ui = static_cast<std::size_t>(i);
    return ui * (count / static_cast<std::size_t>(parts)) + std::min(ui, count % static_cast<std::size_t>(parts));
  }
};

inline const std::byte* at(const void* p, std::size_t elems, std::size_t es) {
  return static_cast<const std::byte*>(p) + elems * es;
}
inline std::byte* at(void* p, std::size_t elems, std::size_t es) { return static_cast<std::byte*>(p) + elems * es; }

inline int mod(int a, int p) { return ((a % p) + p) % p; }

// Ring reduce-scatter over segments, in place on `out` (first step reads `in`):
// step s sends segment r-s-1 to r+1 and combines segment r-s-2 from r-1, so
// after p-1 steps rank r holds segment r fully reduced. Segment r-1 of `out`
// is never written here (the allgather fills it).
template <class Ctx>
void ring_reduce_scatter_inplace(Ctx& ctx, const void* in, void* out, const Segments& seg, std::size_t chunk) {
  const int p = ctx.size(), r = ctx.rank();
  const std::size_t es = dtype_size(ctx.call.type);
  const int right = mod(r + 1, p), left = mod(r - 1, p);
  for (int s = 0; s < p - 1; ++s) {
    int sb = mod(r - s - 1, p), rb = mod(r - s - 2, p);
    const void* src = s == 0 ? at(in, seg.off(sb), es) : at(out, seg.off(sb), es);
    ctx.exchange_reduce(src, seg.len(sb), right, at(in, seg.off(rb), es), at(out, seg.off(rb), es), seg.len(rb), left,
                        chunk);
  }
}

// Ring allgather: rank r's segment r is in place in buf; step s sends segment
// r-s to r+1 and receives segment r-s-1 from r-1.
template <class Ctx>
void ring_allgatherv(Ctx& ctx, void* buf, const Segments& seg, std::size_t chunk) {
  const int p = ctx.size(), r = ctx.rank();
  const std::size_t es = dtype_size(ctx.call.type);
  const int right = mod(r + 1, p), left = mod(r - 1, p);
  for (int s = 0; s < p - 1; ++s) {
    int sb = mod(r - s, p), rb = mod(r - s - 1, p);
    ctx.exchange(at(buf, seg.off(sb), es), seg.len(sb) * es, right, at(buf, seg.off(rb), es), seg.len(rb) * es, left,
                 chunk);
  }
}

// Ring allreduce = reduce-scatter + allgather (bandwidth optimal).
template <class Ctx>
void ring_allreduce(Ctx& ctx, const void* in, void* out, std::size_t count, std::size_t chunk) {
  const int p = ctx.size();
  const std::size_t es = dtype_size(ctx.call.type);
  if (p == 1) {
    if (in != out && count) ctx.copy(out, in, count * es);
    return;
  }
  Segments seg{count, p};
  ring_reduce_scatter_inplace(ctx, in, out, seg, chunk);
  if (ctx.call.reduce == ReduceOp::avg) ctx.divide(at(out, seg.off(ctx.rank()), es), seg.len(ctx.rank()), p);
  ring_allgatherv(ctx, out, seg, chunk);
}

// Ring reduce-scatter of p blocks of n: partial sums alternate between two
// workspace blocks; the last step writes `out` (which may be in + r*n).
template <class Ctx>
void ring_reduce_scatter(Ctx& ctx, const void* in, void* out, std::size_t n, std::size_t chunk) {
  const int p = ctx.size(), r = ctx.rank();
  const std::size_t es = dtype_size(ctx.call.type);
  const int right = mod(r + 1, p), left = mod(r - 1, p);
  std::byte* ws = p > 2 ? ctx.workspace(2 * n * es) : nullptr;
  auto block = [&](int b) { return at(in, static_cast<std::size_t>(b) * n, es); };
  if (p == 1) {
    if (in != out && n) ctx.move(out, in, n * es);
  }
  for (int s = 0; s < p - 1; ++s) {
    int sb = mod(r - s - 1, p), rb = mod(r - s - 2, p);
    const void* src = s == 0 ? static_cast<const void*>(block(sb)) : ws + static_cast<std::size_t>((s - 1) % 2) * n * es;
    void* dst = s == p - 2 ? out : ws + static_cast<std::size_t>(s % 2) * n * es;
    ctx.exchange_reduce(src, n, right, block(rb), dst, n, left, chunk);
  }
  if (ctx.call.reduce == ReduceOp::avg) ctx.divide(out, n, p);
}

// Binomial-tree broadcast (relative rank v = r - root): receive from v minus
// its lowest set bit, then send to v + 2^k for each lower bit, largest first.
template <class Ctx>
void binomial_broadcast(Ctx& ctx, void* buf, std::size_t bytes, int root) {
  const int p = ctx.size();
  if (p == 1) return;
  const int v = mod(ctx.rank() - root, p);
  int mask = 1;
  while (mask < p) {
    if (v & mask) {
      ctx.exchange(nullptr, 0, -1, buf, bytes, mod(v - mask + root, p), 0);
      break;
    }
    mask <<= 1;
  }
  auto reqs = ctx.requests(32);
  int k = 0;
  for (mask >>= 1; mask > 0; mask >>= 1)
    if (v + mask < p) reqs[static_cast<std::size_t>(k++)] = ctx.isend(buf, bytes, mod(v + mask + root, p));
  for (int i = 0; i < k; ++i) ctx.wait(reqs[static_cast<std::size_t>(i)]);
}

// Binomial-tree reduce: combine from v + 2^k for each clear low bit, then send
// the partial result to v - 2^k. `acc` (count elements) receives the result on
// the root and is scratch elsewhere; it may alias `in`.
template <class Ctx>
void binomial_reduce(Ctx& ctx, const void* in, void* acc, std::size_t count, int root, std::size_t chunk) {
  const int p = ctx.size();
  const std::size_t es = dtype_size(ctx.call.type);
  const int v = mod(ctx.rank() - root, p);
  const void* cur = in;
  for (int mask = 1; mask < p; mask <<= 1) {
    if (v & mask) {
      ctx.exchange_reduce(cur, count, mod(v - mask + root, p), nullptr, nullptr, 0, -1, chunk);
      return;
    }
    if (v + mask < p) {
      ctx.exchange_reduce(nullptr, 0, -1, cur, acc, count, mod(v + mask + root, p), chunk);
      cur = acc;
    }
  }
  if (cur != acc && count) ctx.move(acc, cur, count * es);  // root of a 1-rank group
  if (ctx.call.reduce == ReduceOp::avg) ctx.divide(acc, count, p);
}

// Gather of segments (rank i contributes seg i) to root, all messages posted at once.
template <class Ctx>
void linear_gatherv(Ctx& ctx, const void* mine, void* out, const Segments& seg, int root) {
  const int p = ctx.size(), r = ctx.rank();
  const std::size_t es = dtype_size(ctx.call.type);
  if (r != root) {
    ctx.exchange(mine, seg.len(r) * es, root, nullptr, 0, -1, 0);
    return;
  }
  auto reqs = ctx.requests(static_cast<std::size_t>(p));
  for (int i = 0; i < p; ++i)
    if (i != r) reqs[static_cast<std::size_t>(i)] = ctx.irecv(at(out, seg.off(i), es), seg.len(i) * es, i);
  if (mine != at(out, seg.off(r), es) && seg.len(r)) ctx.move(at(out, seg.off(r), es), mine, seg.len(r) * es);
  for (int i = 0; i < p; ++i)
    if (i != r) ctx.wait(reqs[static_cast<std::size_t>(i)]);
}

// Root sends block i of n to rank i.
template <class Ctx>
void linear_scatter(Ctx& ctx, const void* in, void* out, std::size_t n, int root) {
  const int p = ctx.size(), r = ctx.rank();
  const std::size_t es = dtype_size(ctx.call.type);
  if (r != root) {
    ctx.exchange(nullptr, 0, -1, out, n * es, root, 0);
    return;
  }
  auto reqs = ctx.requests(static_cast<std::size_t>(p));
  for (int i = 0; i < p; ++i)
    if (i != r) reqs[static_cast<std::size_t>(i)] = ctx.isend(at(in, static_cast<std::size_t>(i) * n, es), n * es, i);
  const void* own = at(in, static_cast<std::size_t>(r) * n, es);
  if (own != out && n) ctx.move(out, own, n * es);
  for (int i = 0; i < p; ++i)
    if (i != r) ctx.wait(reqs[static_cast<std::size_t>(i)]);
}

// Every rank sends block j of n to rank j; all 2(p-1) messages in flight at once.
template <class Ctx>
void pairwise_alltoall(Ctx& ctx, const void* in, void* out, std::size_t n) {
  const int p = ctx.size(), r = ctx.rank();
  const std::size_t es = dtype_size(ctx.call.type);
  auto reqs = ctx.requests(static_cast<std::size_t>(2 * p));
  for (int k = 1; k < p; ++k) {  // staggered so ranks do not all hit the same peer first
    int to = mod(r + k, p), from = mod(r - k, p);
    reqs[static_cast<std::size_t>(2 * k)] = ctx.irecv(at(out, static_cast<std::size_t>(from) * n, es), n * es, from);
    reqs[static_cast<std::size_t>(2 * k + 1)] = ctx.isend(at(in, static_cast<std::size_t>(to) * n, es), n * es, to);
  }
  if (n) ctx.move(at(out, static_cast<std::size_t>(r) * n, es), at(in, static_cast<std::size_t>(r) * n, es), n * es);
  for (int k = 1; k < p; ++k) {
    ctx.wait(reqs[static_cast<std::size_t>(2 * k)]);
    ctx.wait(reqs[static_cast<std::size_t>(2 * k + 1)]);
  }
}

// Dissemination barrier: ceil(lg p) rounds of zero-byte messages to r + 2^k.
template <class Ctx>
void dissemination_barrier(Ctx& ctx) {
  const int p = ctx.size(), r = ctx.rank();
  for (int k = 1; k < p; k <<= 1) ctx.exchange(nullptr, 0, mod(r + k, p), nullptr, 0, mod(r - k, p), 0);
}

// Non-powers of two (MPICH's scheme): with q = 2^floor(lg p) and e = p - q,
// ranks below 2e pair up, the even one hands its vector to the odd one and
// sits out. Returns this rank's index among the q participants, or -1.
struct Fold {
  int q = 1, extra = 0;
  explicit Fold(int p) : q(static_cast<int>(std::bit_floor(static_cast<unsigned>(p)))), extra(p - q) {}
  int index(int r) const { return r < 2 * extra ? (r % 2 ? r / 2 : -1) : r - extra; }
  int rank_of(int idx) const { return idx < extra ? 2 * idx + 1 : idx + extra; }
};

// Recursive doubling allreduce: lg q rounds, each a full-vector exchange with
// partner idx ^ 2^k; results alternate between `out` and workspace so no rank
// writes a buffer its partner is reading.
template <class Ctx>
void recursive_doubling_allreduce(Ctx& ctx, const void* in, void* out, std::size_t count) {
  const int p = ctx.size(), r = ctx.rank();
  const std::size_t es = dtype_size(ctx.call.type), bytes = count * es;
  if (p == 1) {
    if (in != out && bytes) ctx.copy(out, in, bytes);
    return;
  }
  Fold f(p);
  int idx = f.index(r);
  std::byte* ws = ctx.workspace(bytes, 1);
  auto other = [&](const void* b) -> void* { return b == out ? static_cast<void*>(ws) : out; };
  const void* cur = in;
  if (r < 2 * f.extra) {
    if (idx < 0) {  // even: hand over, then receive the result
      ctx.exchange_reduce(in, count, r + 1, nullptr, nullptr, 0, -1, 0);
      ctx.exchange(nullptr, 0, -1, out, bytes, r + 1, 0);
      return;
    }
    void* dst = other(in);
    ctx.exchange_reduce(nullptr, 0, -1, in, dst, count, r - 1, 0);
    cur = dst;
  }
  for (int mask = 1; mask < f.q; mask <<= 1) {
    int partner = f.rank_of(idx ^ mask);
    void* dst = other(cur);
    ctx.exchange_reduce(cur, count, partner, cur, dst, count, partner, 0);
    cur = dst;
  }
  if (cur != out && bytes) ctx.copy(out, cur, bytes);
  if (ctx.call.reduce == ReduceOp::avg) ctx.divide(out, count, p);
  if (r < 2 * f.extra) ctx.exchange(out, bytes, r - 1, nullptr, 0, -1, 0);
}

// Recursive halving over q segments of buf (in place): each round sends the
// half this rank gives up to partner idx ^ mask and combines the half it
// keeps; afterwards participant idx holds segment idx fully reduced.
template <class Ctx>
void halving_steps(Ctx& ctx, void* buf, const Segments& seg, int idx, const Fold& f, std::size_t chunk) {
  const std::size_t es = dtype_size(ctx.call.type);
  int lo = 0;
  for (int mask = f.q / 2; mask >= 1; mask >>= 1) {
    int partner = f.rank_of(idx ^ mask);
    bool lower = (idx & mask) == 0;
    int keep = lower ? lo : lo + mask, give = lower ? lo + mask : lo;
    std::size_t keep_off = seg.off(keep), keep_len = seg.off(keep + mask) - keep_off;
    std::size_t give_off = seg.off(give), give_len = seg.off(give + mask) - give_off;
    ctx.exchange_reduce(at(buf, give_off, es), give_len, partner, at(buf, keep_off, es), at(buf, keep_off, es),
                        keep_len, partner, chunk);
    lo = keep;
  }
}

// Rabenseifner: fold to q ranks, reduce-scatter by recursive halving (send
// the half you give up, combine the half you keep), allgather by recursive
// doubling, unfold.
template <class Ctx>
void halving_doubling_allreduce(Ctx& ctx, const void* in, void* out, std::size_t count, std::size_t chunk) {
  const int p = ctx.size(), r = ctx.rank();
  const std::size_t es = dtype_size(ctx.call.type), bytes = count * es;
  if (p == 1) {
    if (in != out && bytes) ctx.copy(out, in, bytes);
    return;
  }
  Fold f(p);
  int idx = f.index(r);
  if (r < 2 * f.extra) {
    if (idx < 0) {
      ctx.exchange_reduce(in, count, r + 1, nullptr, nullptr, 0, -1, chunk);
      ctx.exchange(nullptr, 0, -1, out, bytes, r + 1, chunk);
      return;
    }
    ctx.exchange_reduce(nullptr, 0, -1, in, out, count, r - 1, chunk);
  } else if (in != out && bytes) {
    ctx.copy(out, in, bytes);
  }
  Segments seg{count, f.q};
  halving_steps(ctx, out, seg, idx, f, chunk);
  if (ctx.call.reduce == ReduceOp::avg) ctx.divide(at(out, seg.off(idx), es), seg.len(idx), p);
  for (int mask = 1; mask < f.q; mask <<= 1) {
    int partner = f.rank_of(idx ^ mask);
    int mine = (idx / mask) * mask, theirs = ((idx ^ mask) / mask) * mask;
    std::size_t mo = seg.off(mine), ml = seg.off(mine + mask) - mo;
    std::size_t to = seg.off(theirs), tl = seg.off(theirs + mask) - to;
    ctx.exchange(at(out, mo, es), ml * es, partner, at(out, to, es), tl * es, partner, chunk);
  }
  if (r < 2 * f.extra) ctx.exchange(out, bytes, r - 1, nullptr, 0, -1, chunk);
}

// Recursive-halving reduce-scatter of p = 2^k blocks of n: works on a
// workspace copy of `in`, then copies block r to `out`.
template <class Ctx>
void halving_reduce_scatter(Ctx& ctx, const void* in, void* out, std::size_t n, std::size_t chunk) {
  const int p = ctx.size(), r = ctx.rank();
  const std::size_t es = dtype_size(ctx.call.type);
  std::byte* ws = ctx.workspace(static_cast<std::size_t>(p) * n * es);
  if (n) ctx.copy(ws, in, static_cast<std::size_t>(p) * n * es);
  int lo = 0;
  for (int mask = p / 2; mask >= 1; mask >>= 1) {
    int partner = r ^ mask;
    bool lower = (r & mask) == 0;
    int keep = lower ? lo : lo + mask, give = lower ? lo + mask : lo;
    ctx.exchange_reduce(at(ws, static_cast<std::size_t>(give) * n, es), static_cast<std::size_t>(mask) * n, partner,
                        at(ws, static_cast<std::size_t>(keep) * n, es), at(ws, static_cast<std::size_t>(keep) * n, es),
                        static_cast<std::size_t>(mask) * n, partner, chunk);
    lo = keep;
  }
  if (n) ctx.move(out, at(ws, static_cast<std::size_t>(r) * n, es), n * es);
  if (ctx.call.reduce == ReduceOp::avg) ctx.divide(out, n, p);
}

// Recursive-doubling allgather for p = 2^k: block r already at out + r*n.
template <class Ctx>
void doubling_allgather(Ctx& ctx, void* out, std::size_t n, std::size_t chunk) {
  const int p = ctx.size(), r = ctx.rank();
  const std::size_t es = dtype_size(ctx.call.type);
  for (int mask = 1; mask < p; mask <<= 1) {
    int partner = r ^ mask;
    std::size_t mine = static_cast<std::size_t>((r / mask) * mask) * n, theirs = static_cast<std::size_t>((partner / mask) * mask) * n;
    std::size_t len = static_cast<std::size_t>(mask) * n * es;
    ctx.exchange(at(out, mine, es), len, partner, at(out, theirs, es), len, partner, chunk);
  }
}

// Deterministic reduce-scatter: rank r computes segment r as
// ((x0 op x1) op x2) ... op x(p-1), in rank order, whatever the algorithm,
// chunk size or arrival order, and writes it to `dst`. Every rank first posts
// its segment k to rank k; receives then combine strictly in rank order.
template <class Ctx>
void ordered_reduce_scatter(Ctx& ctx, const void* in, std::size_t in_stride_is_block, const Segments& seg, void* dst) {
  const int p = ctx.size(), r = ctx.rank();
  const std::size_t es = dtype_size(ctx.call.type);
  // in_stride_is_block == 0: segment k of `in` is at seg.off(k); else block k at k * in_stride_is_block.
  auto src = [&](int k) {
    return at(in, in_stride_is_block ? static_cast<std::size_t>(k) * in_stride_is_block : seg.off(k), es);
  };
  auto reqs = ctx.requests(static_cast<std::size_t>(p));
  for (int k = 0; k < p; ++k)
    if (k != r) reqs[static_cast<std::size_t>(k)] = ctx.isend(src(k), seg.len(k) * es, k);
  const std::size_t n = seg.len(r);
  const void* own = src(r);
  if (r != 0 && own == dst && n) {  // in place: keep our contribution before dst takes rank 0's
    std::byte* keep = ctx.workspace(n * es);
    ctx.copy(keep, own, n * es);
    own = keep;
  }
  for (int k = 0; k < p; ++k) {
    if (k == 0) {
      if (r == 0) {
        if (dst != src(0) && n) ctx.move(dst, src(0), n * es);
      } else {
        ctx.exchange(nullptr, 0, -1, dst, n * es, 0, 0);
      }
    } else if (k == r) {
      ctx.combine(dst, own, dst, n);
    } else {
      ctx.exchange_reduce(nullptr, 0, -1, dst, dst, n, k, 0);
    }
  }
  for (int k = 0; k < p; ++k)
    if (k != r) ctx.wait(reqs[static_cast<std::size_t>(k)]);
  if (ctx.call.reduce == ReduceOp::avg) ctx.divide(dst, n, p);
}

}  // namespace weft::comm::detail
