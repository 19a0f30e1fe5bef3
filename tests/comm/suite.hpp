// Multi-rank collective checks, written once and run on every transport:
// threads.cpp drives them with run_local (1..8 ranks), mpi.cpp under mpirun
// (2, 3, 4 ranks). Each check runs on one rank and returns "" or a message
// describing the first wrong element; the driver asserts on the messages.
//
// Inputs are small integers (as nccl-tests builds them) so every exact sum,
// product, min, max and average is representable in every dtype, including
// f16 and bf16, and results are compared exactly against a naive reference
// computed from all ranks' inputs.
#pragma once

#include <weft/comm/collective.hpp>
#include <weft/comm/algorithm/hierarchical.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/reduce_op.hpp>
#include <weft/core/dtype.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <sstream>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace weft::comm::testing {

// Options of a checked run: fingerprints on (a mismatched call ends in an
// error naming it, not in wrong data) and a deadline far above any honest
// call, so a hang fails the test rather than the CI job.
inline CommOptions checked(Duration timeout = std::chrono::seconds(30)) {
  CommOptions o;
  o.timeout = timeout;
  o.fingerprints = true;
  return o;
}

// Small chunks so the checks exercise multi-chunk pipelining too.
template <class A>
A small_chunks() {
  A a{};
  if constexpr (requires { a.chunk_bytes; }) a.chunk_bytes = 256;
  return a;
}

// HierarchicalLeaders in 256-byte chunks: many pipeline steps even for the
// small checks.
struct HierarchicalLeaders : comm::HierarchicalLeaders<> {
  HierarchicalLeaders() { leader_chunk_bytes = 256; }
};

// The checks below run against this type-erased view of a communicator, so
// they are compiled once per dtype rather than once per (algorithm, dtype):
// it keeps the test build lean. Erased<C> forwards to C's pointer API.
class AnyComm {
 public:
  virtual ~AnyComm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  template <class T>
  void allreduce(const T* in, T* out, std::size_t n, ReduceOp op = ReduceOp::sum) {
    run(Collective::allreduce, in, out, n, dtype_v<T>, op, -1);
  }
  template <class T>
  void reduce_scatter(const T* in, T* out, std::size_t n, ReduceOp op = ReduceOp::sum) {
    run(Collective::reduce_scatter, in, out, n, dtype_v<T>, op, -1);
  }
  template <class T>
  void allgather(const T* in, T* out, std::size_t n) {
    run(Collective::allgather, in, out, n, dtype_v<T>, ReduceOp::sum, -1);
  }
  template <class T>
  void broadcast(T* buf, std::size_t n, int root) {
    run(Collective::broadcast, buf, buf, n, dtype_v<T>, ReduceOp::sum, root);
  }
  template <class T>
  void reduce(const T* in, T* out, std::size_t n, int root, ReduceOp op = ReduceOp::sum) {
    run(Collective::reduce, in, out, n, dtype_v<T>, op, root);
  }
  template <class T>
  void gather(const T* in, T* out, std::size_t n, int root) {
    run(Collective::gather, in, out, n, dtype_v<T>, ReduceOp::sum, root);
  }
  template <class T>
  void scatter(const T* in, T* out, std::size_t n, int root) {
    run(Collective::scatter, in, out, n, dtype_v<T>, ReduceOp::sum, root);
  }
  template <class T>
  void alltoall(const T* in, T* out, std::size_t n) {
    run(Collective::alltoall, in, out, n, dtype_v<T>, ReduceOp::sum, -1);
  }
  void barrier() { run(Collective::barrier, nullptr, nullptr, 0, dtype::u8, ReduceOp::sum, -1); }
  // Any collective by its run-time tag (the descriptors' checks below use it).
  void call(Collective op, const void* in, void* out, std::size_t n, dtype d, ReduceOp r, int root) {
    run(op, in, out, n, d, r, root);
  }
  // isend to `to` and blocking recv from `from` (point-to-point, user tag).
  template <class T>
  void shift(const T* send, T* recv, std::size_t n, int to, int from, int tag) {
    sendrecv(send, recv, n, dtype_v<T>, to, from, tag);
  }

 protected:
  virtual void run(Collective op, const void* in, void* out, std::size_t n, dtype d, ReduceOp r, int root) = 0;
  virtual void sendrecv(const void* s, void* r, std::size_t n, dtype d, int to, int from, int tag) = 0;
};

template <class C>
class Erased final : public AnyComm {
 public:
  explicit Erased(C& c) : c_(c) {}
  int rank() const override { return c_.rank(); }
  int size() const override { return c_.size(); }

 protected:
  void run(Collective op, const void* in, void* out, std::size_t n, dtype d, ReduceOp r, int root) override {
    detail::visit_dtype(d, [&](auto tag) {
      using E = decltype(tag);
      collectives::visit(op, [&](auto c) { c.call(c_, static_cast<const E*>(in), static_cast<E*>(out), n, root, r); });
    });
  }
  void sendrecv(const void* s, void* r, std::size_t n, dtype d, int to, int from, int tag) override {
    detail::visit_dtype(d, [&](auto t) {
      using E = decltype(t);
      auto req = c_.isend(std::span<const E>(static_cast<const E*>(s), n), to, tag);
      c_.recv(std::span<E>(static_cast<E*>(r), n), from, tag);
      req.wait();
    });
  }

 private:
  C& c_;
};

// check(c, ...) on a concrete communicator: erase it, then run the check.
template <class C, class F>
std::string erased(C& c, F&& check) {
  Erased<C> e(c);
  return check(static_cast<AnyComm&>(e));
}

template <class T>
inline constexpr bool is_signed_elem = std::is_signed_v<T> || is_floating_v<T>;

// Rank r's input element i for reduce op `op` (p ranks).
template <class T>
T input(ReduceOp op, int r, std::size_t i, int p) {
  long v = 0;
  const long ri = static_cast<long>(r), ii = static_cast<long>(i % 1000003);
  switch (op) {
    case ReduceOp::sum: v = is_signed_elem<T> ? (ri * 3 + ii) % 7 - 3 : (ri + ii) % 5; break;
    case ReduceOp::prod: {
      long k = (ri + ii) % 5;
      v = k == 0 ? 2 : (k == 1 && is_signed_elem<T> ? -1 : 1);
      break;
    }
    case ReduceOp::min:
    case ReduceOp::max: v = is_signed_elem<T> ? (ri * 7 + ii * 13) % 19 - 9 : (ri * 7 + ii * 13) % 19; break;
    case ReduceOp::avg: {
      // c_i + d_r with sum_r d_r = 0, so the average is exactly c_i
      long c = ii % 31;
      long d = r < p - 1 ? ri : -static_cast<long>(p - 1) * (p - 2) / 2;
      v = c + d;
      break;
    }
  }
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) return T(static_cast<float>(v));
  else return static_cast<T>(v);
}

// Element i of rank r's payload for data-movement ops (distinct per rank and index).
template <class T>
T payload(int r, std::size_t i) {
  long v = (static_cast<long>(r) * 131 + static_cast<long>(i % 1000003)) % 251;
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) return T(static_cast<float>(v));
  else return static_cast<T>(v);
}

// Naive reference of op over all ranks' inputs at index i, in wide arithmetic.
template <class T>
T reference(ReduceOp op, std::size_t i, int p) {
  if constexpr (is_floating_v<T>) {
    double acc = static_cast<double>(static_cast<compute_t<T>>(input<T>(op, 0, i, p)));
    for (int r = 1; r < p; ++r) {
      double x = static_cast<double>(static_cast<compute_t<T>>(input<T>(op, r, i, p)));
      if (op == ReduceOp::sum || op == ReduceOp::avg) acc += x;
      else if (op == ReduceOp::prod) acc *= x;
      else if (op == ReduceOp::min) acc = std::min(acc, x);
      else acc = std::max(acc, x);
    }
    if (op == ReduceOp::avg) acc /= p;
    if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) return T(static_cast<float>(acc));
    else return static_cast<T>(acc);
  } else {
    using W = std::conditional_t<std::is_signed_v<T>, std::int64_t, std::uint64_t>;
    W acc = static_cast<W>(input<T>(op, 0, i, p));
    for (int r = 1; r < p; ++r) {
      W x = static_cast<W>(input<T>(op, r, i, p));
      if (op == ReduceOp::sum || op == ReduceOp::avg) acc = static_cast<W>(acc + x);
      else if (op == ReduceOp::prod) acc = static_cast<W>(acc * x);
      else if (op == ReduceOp::min) acc = std::min(acc, x);
      else acc = std::max(acc, x);
    }
    T t = static_cast<T>(acc);  // wraps like the collective does
    if (op == ReduceOp::avg) t = static_cast<T>(t / static_cast<T>(p));
    return t;
  }
}

template <class T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

template <class T>
double as_double(const T& v) {
  return static_cast<double>(static_cast<compute_t<T>>(v));
}

// Compares got[0..n) with want(i); returns "" or a description of the first mismatch.
template <class T, class Want>
std::string compare(const char* what, const std::vector<T>& got, std::size_t off, std::size_t n, Want&& want) {
  std::size_t wrong = 0, first = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (!same_bits(got[off + i], want(i))) {
      if (!wrong) first = i;
      ++wrong;
    }
  }
  if (!wrong) return {};
  std::ostringstream os;
  os << what << " (" << dtype_name(dtype_v<T>) << " x " << n << "): " << wrong << " wrong, first at " << first
     << ": got " << as_double(got[off + first]) << ", want " << as_double(want(first));
  return os.str();
}

// Every reducing op with reduce op `op` on dtype T, count n (per rank for reduce_scatter).
template <class T>
std::string check_reductions(AnyComm& c, ReduceOp op, std::size_t n) {
  const int p = c.size(), r = c.rank();
  std::string err;
  auto note = [&](std::string e, const char* ctx) {
    if (err.empty() && !e.empty()) err = std::string(ctx) + " " + reduce_op_name(op) + ": " + e;
  };
  std::vector<T> in(n), out(n);
  for (std::size_t i = 0; i < n; ++i) in[i] = input<T>(op, r, i, p);
  auto ref = [&](std::size_t base) { return [=](std::size_t i) { return reference<T>(op, base + i, p); }; };

  c.allreduce(in.data(), out.data(), n, op);
  note(compare("allreduce", out, 0, n, ref(0)), "out-of-place");
  std::vector<T> io = in;
  c.allreduce(io.data(), io.data(), n, op);
  note(compare("allreduce", io, 0, n, ref(0)), "in-place");

  // reduce_scatter: input of p blocks of n
  const std::size_t total = n * static_cast<std::size_t>(p);
  std::vector<T> big(total), blk(n);
  for (std::size_t i = 0; i < total; ++i) big[i] = input<T>(op, r, i, p);
  c.reduce_scatter(big.data(), blk.data(), n, op);
  note(compare("reduce_scatter", blk, 0, n, ref(static_cast<std::size_t>(r) * n)), "out-of-place");
  c.reduce_scatter(big.data(), big.data() + static_cast<std::size_t>(r) * n, n, op);
  note(compare("reduce_scatter", big, static_cast<std::size_t>(r) * n, n, ref(static_cast<std::size_t>(r) * n)),
       "in-place");

  const int root = p / 2;
  std::vector<T> red(r == root ? n : 0);
  c.reduce(in.data(), red.data(), n, root, op);
  if (r == root) note(compare("reduce", red, 0, n, ref(0)), "out-of-place");
  io = in;
  c.reduce(io.data(), io.data(), n, root, op);
  if (r == root) note(compare("reduce", io, 0, n, ref(0)), "in-place");
  return err;
}

// Data-movement ops on dtype T with n elements per rank.
template <class T>
std::string check_movement(AnyComm& c, std::size_t n) {
  const int p = c.size(), r = c.rank();
  const std::size_t total = n * static_cast<std::size_t>(p);
  std::string err;
  auto note = [&](const std::string& e) {
    if (err.empty() && !e.empty()) err = e;
  };
  std::vector<T> mine(n), all(total);
  for (std::size_t i = 0; i < n; ++i) mine[i] = payload<T>(r, i);
  auto gathered = [&](std::size_t i) { return payload<T>(static_cast<int>(i / (n ? n : 1)), i % (n ? n : 1)); };

  c.allgather(mine.data(), all.data(), n);
  note(compare("allgather", all, 0, total, gathered));
  std::vector<T> inplace(total);
  std::copy(mine.begin(), mine.end(), inplace.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(r) * n));
  c.allgather(inplace.data() + static_cast<std::size_t>(r) * n, inplace.data(), n);
  note(compare("allgather in-place", inplace, 0, total, gathered));

  for (int root : {0, p - 1}) {
    std::vector<T> b(n);
    for (std::size_t i = 0; i < n; ++i) b[i] = r == root ? payload<T>(root, i) : T{};
    c.broadcast(b.data(), n, root);
    note(compare("broadcast", b, 0, n, [&](std::size_t i) { return payload<T>(root, i); }));
  }

  const int root = p - 1;
  std::vector<T> g(r == root ? total : 0);
  c.gather(mine.data(), g.data(), n, root);
  if (r == root) note(compare("gather", g, 0, total, gathered));

  std::vector<T> src(r == root ? total : 0), part(n);
  if (r == root)
    for (std::size_t i = 0; i < total; ++i) src[i] = payload<T>(static_cast<int>(i / n) + 7, i % n);
  c.scatter(src.data(), part.data(), n, root);
  note(compare("scatter", part, 0, n, [&](std::size_t i) { return payload<T>(r + 7, i); }));

  // alltoall: block j of rank r holds payload(r * p + j)
  std::vector<T> a(total), b(total);
  for (std::size_t i = 0; i < total; ++i) a[i] = payload<T>(r * p + static_cast<int>(i / n), i % n);
  c.alltoall(a.data(), b.data(), n);
  note(compare("alltoall", b, 0, total,
               [&](std::size_t i) { return payload<T>(static_cast<int>(i / n) * p + r, i % n); }));

  c.barrier();

  if (p > 1) {  // ring shift with point-to-point
    std::vector<T> got(n);
    c.shift(mine.data(), got.data(), n, (r + 1) % p, (r + p - 1) % p, 5);
    note(compare("send/recv", got, 0, n, [&](std::size_t i) { return payload<T>((r + p - 1) % p, i); }));
  }
  return err;
}

// Every op runs on every rank even after a wrong result, so ranks stay in
// step; the first error is kept.
template <class T>
std::string check_dtype(AnyComm& c, std::size_t n) {
  std::string e;
  auto keep = [&](std::string x) {
    if (e.empty()) e = std::move(x);
  };
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::prod, ReduceOp::min, ReduceOp::max, ReduceOp::avg})
    keep(check_reductions<T>(c, op, n));
  keep(check_movement<T>(c, n));
  return e;
}

// The whole matrix for one communicator: sizes x dtypes x ops.
inline std::string check_matrix(AnyComm& c, const std::vector<std::size_t>& sizes) {
  std::string first;
  for (std::size_t n : sizes) {
    std::string e;
    auto keep = [&](std::string x) {
      if (e.empty()) e = std::move(x);
    };
    keep(check_dtype<float>(c, n));
    keep(check_dtype<double>(c, n));
    keep(check_dtype<half>(c, n));
    keep(check_dtype<bfloat16>(c, n));
    keep(check_dtype<std::int32_t>(c, n));
    keep(check_dtype<std::int64_t>(c, n));
    keep(check_dtype<std::uint8_t>(c, n));
    if (first.empty() && !e.empty()) first = "n=" + std::to_string(n) + ": " + e;
  }
  return first;
}

// A large allreduce / reduce_scatter / allgather (16 MiB of f32 per rank).
inline std::string check_large(AnyComm& c, std::size_t n) {
  const int p = c.size(), r = c.rank();
  std::vector<float> in(n), out(n);
  for (std::size_t i = 0; i < n; ++i) in[i] = input<float>(ReduceOp::sum, r, i, p);
  c.allreduce(in.data(), out.data(), n);
  std::string e = compare("large allreduce", out, 0, n, [&](std::size_t i) { return reference<float>(ReduceOp::sum, i, p); });
  const std::size_t blk = n / static_cast<std::size_t>(p);
  std::vector<float> part(blk);
  c.reduce_scatter(in.data(), part.data(), blk);
  if (e.empty())
    e = compare("large reduce_scatter", part, 0, blk,
                [&](std::size_t i) { return reference<float>(ReduceOp::sum, static_cast<std::size_t>(r) * blk + i, p); });
  std::vector<bfloat16> hin(n), hout(n);
  for (std::size_t i = 0; i < n; ++i) hin[i] = input<bfloat16>(ReduceOp::sum, r, i, p);
  c.allreduce(hin.data(), hout.data(), n);
  if (e.empty())
    e = compare("large bf16 allreduce", hout, 0, n, [&](std::size_t i) { return reference<bfloat16>(ReduceOp::sum, i, p); });
  return e;
}

// Random data, deterministic mode: the result must equal the rank-order fold
// ((x0 + x1) + x2) + ... computed locally, bit for bit, whatever the algorithm.
template <class T>
T random_input(int r, std::size_t i, std::uint64_t seed) {
  std::uint64_t z = seed * 0x9e3779b97f4a7c15ull + static_cast<std::uint64_t>(r) * 0xbf58476d1ce4e5b9ull + i;
  z ^= z >> 31;
  z *= 0x94d049bb133111ebull;
  z ^= z >> 29;
  double u = static_cast<double>(z >> 11) / 9007199254740992.0;  // [0, 1)
  double v = (u - 0.5) * std::ldexp(1.0, static_cast<int>(z % 17) - 8);  // spread exponents
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) return T(static_cast<float>(v));
  else return static_cast<T>(v);
}

template <class T>
T ordered_fold(int p, std::size_t i, std::uint64_t seed) {
  T acc = random_input<T>(0, i, seed);
  for (int k = 1; k < p; ++k) {
    compute_t<T> s = static_cast<compute_t<T>>(acc) + static_cast<compute_t<T>>(random_input<T>(k, i, seed));
    if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) acc = T(static_cast<float>(s));
    else acc = static_cast<T>(s);
  }
  return acc;
}

template <class T>
std::string check_deterministic(AnyComm& c, std::size_t n, std::uint64_t seed) {
  const int p = c.size(), r = c.rank();
  std::vector<T> in(n), out(n);
  for (std::size_t i = 0; i < n; ++i) in[i] = random_input<T>(r, i, seed);
  c.allreduce(in.data(), out.data(), n);
  std::string e = compare("deterministic allreduce", out, 0, n, [&](std::size_t i) { return ordered_fold<T>(p, i, seed); });
  const std::size_t blk = n / static_cast<std::size_t>(p);
  std::vector<T> part(blk);
  c.reduce_scatter(in.data(), part.data(), blk);
  if (e.empty())
    e = compare("deterministic reduce_scatter", part, 0, blk,
                [&](std::size_t i) { return ordered_fold<T>(p, static_cast<std::size_t>(r) * blk + i, seed); });
  std::vector<T> red(n);
  c.reduce(in.data(), red.data(), n, 0);
  if (r == 0 && e.empty()) e = compare("deterministic reduce", red, 0, n, [&](std::size_t i) { return ordered_fold<T>(p, i, seed); });
  return e;
}

// Every collective through its descriptor (collective.hpp), as weft-bench
// checks it: the descriptor's exact inputs, out-of-place and in-place (its
// own placement), every reduce op for reductions, root p - 1; the result must
// have no wrong element.
template <class E>
std::string check_descriptors(AnyComm& c, std::size_t n) {
  const int p = c.size(), r = c.rank();
  std::string err;
  std::vector<E> send(n * static_cast<std::size_t>(p)), recv(send.size());
  collectives::for_each([&](auto d) {
    using D = decltype(d);
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::prod, ReduceOp::min, ReduceOp::max, ReduceOp::avg}) {
      if (!D::reduces && op != ReduceOp::sum) continue;
      const int root = D::rooted ? p - 1 : -1;
      for (bool in_place : {false, true}) {
        const Placement at = in_place ? D::in_place(recv.data(), n, sizeof(E), r, root) : Placement{send.data(), recv.data()};
        const collectives::Exact x{op, p};
        D::template fill<E>(x, at, n, r, root);
        c.call(D::op, at.in, at.out, n, dtype_v<E>, op, root);
        const std::int64_t wrong = D::template wrong<E>(x, at, n, r, root);
        if (wrong && err.empty())
          err = std::string(D::name) + (in_place ? " in-place " : " ") + reduce_op_name(op) + " (" +
                dtype_name(dtype_v<E>) + " x " + std::to_string(n) + "): " + std::to_string(wrong) + " wrong";
      }
    }
  });
  return err;
}

// Any-source receive and probe (transports modelling AnySource): every rank
// but 0 sends two messages (rank, 0) and (rank, 1) with one tag; rank 0 probes
// until one waits (it must name a sender and the size), then receives all
// 2(p-1) from any source: each sender twice, its two in the order sent, the
// reported source matching the payload; afterwards nothing is left to probe.
template <class C>
std::string check_any_source(C& c) {
  const int p = c.size(), r = c.rank(), tag = 7;
  if (p == 1) return {};
  std::string err;
  if (r != 0) {
    std::vector<std::int32_t> a{r, 0, 0}, b{r, 1, 0};
    auto ra = c.isend(a, 0, tag);
    auto rb = c.isend(b, 0, tag);
    ra.wait();
    rb.wait();
  } else {
    std::optional<Probe> pr;
    for (auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
         !(pr = c.probe(tag)) && std::chrono::steady_clock::now() < until;)
      std::this_thread::yield();
    if (!pr) err = "probe found no message within 20 s";
    else if (pr->peer < 1 || pr->peer >= p || pr->bytes != 3 * sizeof(std::int32_t))
      err = "probe: peer " + std::to_string(pr->peer) + ", " + std::to_string(pr->bytes) + " bytes";
    std::vector<int> next(static_cast<std::size_t>(p), 0);
    for (int k = 0; k < 2 * (p - 1); ++k) {
      std::vector<std::int32_t> v(3, -1);
      const int from = c.recv_any(v, tag);
      if (from < 1 || from >= p || v[0] != from || v[1] != next[static_cast<std::size_t>(from)]++) {
        if (err.empty())
          err = "recv_any: source " + std::to_string(from) + ", payload (" + std::to_string(v[0]) + ", " +
                std::to_string(v[1]) + ")";
      }
    }
  }
  c.barrier();
  if (r == 0 && c.probe(tag) && err.empty()) err = "probe still finds a message after every one was received";
  return err;
}

}  // namespace weft::comm::testing
