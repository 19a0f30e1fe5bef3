// NcclTransport and CudaExecutor: collectives on device buffers through
// comm::Native (NCCL's own), weft's Ring and Hierarchical (ncclSend/ncclRecv
// with combines on the device; Hierarchical's levels on split communicators
// sharing the stream), each compared with a host reference; Compressed
// (host codecs staged through download/upload) against the same policy over
// host buffers, bit for bit; a split; a deadline that expires. One thread rank per GPU over a ThreadTransport bootstrap
// (NCCL refuses two ranks on one device): with one GPU only the 1-rank
// communicator runs, and the deadline test needs two.
// Before looking for a GPU, the element arithmetic the device kernels use
// (combine_element, divide_element) is checked against the host loops of
// reduce_op.hpp, so that part runs everywhere. Without a GPU: exit 77.
#include "check.hpp"
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <weft/comm/algorithm/compressed.hpp>
#include <weft/comm/algorithm/hierarchical.hpp>
#include <weft/comm/algorithm/native.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/codec/cast.hpp>
#include <weft/comm/codec/top_k.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/run_local.hpp>
#include <weft/comm/transport/nccl.hpp>

using namespace weft::comm;
using weft::Error;
using weft::dtype_name;
using weft::dtype_v;
using weft::throw_error;
using NT = NcclTransport<ThreadTransport>;

using cudatest::checks;
using cudatest::failures;

// ---- host checks of the device element functions ---------------------------
template <class T, ReduceOp Op>
static void check_elements() {
  std::vector<T> a, b;
  for (int i = -40; i <= 40; ++i)
    for (int j : {-3, -1, 0, 1, 2, 7, 100}) {
      if constexpr (std::is_same_v<T, weft::half> || std::is_same_v<T, weft::bfloat16>) {
        a.push_back(T(static_cast<float>(i) * 0.37f));
        b.push_back(T(static_cast<float>(j) * 1.13f));
      } else if constexpr (std::is_same_v<T, std::uint8_t>) {
        a.push_back(static_cast<T>(i * 7));
        b.push_back(static_cast<T>(j * 3));
      } else if constexpr (std::is_integral_v<T>) {
        a.push_back(static_cast<T>(i) * static_cast<T>(1 << 20));
        b.push_back(static_cast<T>(j) * static_cast<T>(1 << 12));
      } else {
        a.push_back(static_cast<T>(i) * static_cast<T>(0.37));
        b.push_back(static_cast<T>(j) * static_cast<T>(1.13));
      }
    }
  std::vector<T> host(a.size());
  weft::comm::detail::combine(dtype_v<T>, Op, a.data(), b.data(), host.data(), a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    T d = weft::comm::detail::combine_element<T, Op>(a[i], b[i]);
    EXPECT(std::memcmp(&d, &host[i], sizeof(T)) == 0, "combine_element<%s, %s> differs from the host loop at %zu",
           dtype_name(dtype_v<T>), reduce_op_name(Op), i);
  }
  if constexpr (Op == ReduceOp::sum) {
    std::vector<T> div = host;
    weft::comm::detail::divide_by(dtype_v<T>, div.data(), div.size(), 3);
    for (std::size_t i = 0; i < host.size(); ++i) {
      T d = weft::comm::detail::divide_element<T>(host[i], 3);
      EXPECT(std::memcmp(&d, &div[i], sizeof(T)) == 0, "divide_element<%s> differs from divide_by at %zu",
             dtype_name(dtype_v<T>), i);
    }
  }
}

template <class T>
static void check_elements_all_ops() {
  check_elements<T, ReduceOp::sum>();
  check_elements<T, ReduceOp::prod>();
  check_elements<T, ReduceOp::min>();
  check_elements<T, ReduceOp::max>();
  check_elements<T, ReduceOp::avg>();
}

// ---- device collectives ------------------------------------------------------
static void cuda_expect(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw_error<Error>("test: ", what, ": ", cudaGetErrorString(e));
}

// Small integers, so every sum of up to 8 ranks is exact in f16 and bf16 too.
static float value(int rank, std::size_t i) {
  return static_cast<float>((static_cast<std::size_t>(rank + 1) * 7 + i * 3) % 23) - 11.0f;
}

template <class E>
static E elem(float v) {
  if constexpr (std::is_integral_v<E>) return static_cast<E>(v);
  else return E(v);
}

template <class E>
static double as_double(E v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
double as_double<double>(double v) {
  return v;
}

template <class E>
struct DeviceBuffer {
  E* p = nullptr;
  std::size_t n = 0;
  explicit DeviceBuffer(std::size_t count) : n(count) {
    cuda_expect(cudaMalloc(&p, (n ? n : 1) * sizeof(E)), "cudaMalloc");
  }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  // A pageable cudaMemcpy may return before the data reached the device, and
  // the transport's stream does not wait for the legacy stream: sync first.
  void put(const std::vector<E>& h) {
    cuda_expect(cudaMemcpy(p, h.data(), n * sizeof(E), cudaMemcpyHostToDevice), "H2D");
    cuda_expect(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  }
  std::vector<E> get() const {
    std::vector<E> h(n);
    cuda_expect(cudaMemcpy(h.data(), p, n * sizeof(E), cudaMemcpyDeviceToHost), "D2H");
    return h;
  }
};

// Every element of got against want within tol; names the first few misses.
template <class E>
static void compare(const std::vector<E>& got, const std::vector<double>& want, double tol, const std::string& what) {
  int shown = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double g = as_double(got[i]);
    if (!(std::fabs(g - want[i]) <= tol * (1.0 + std::fabs(want[i])))) {
      ++failures;
      if (shown++ < 3) std::printf("FAILED %s: element %zu is %g, expected %g\n", what.c_str(), i, g, want[i]);
    }
  }
}

template <class Algo, class E>
static void check_allreduce(NT& t, std::size_t n, ReduceOp op, double tol) {
  Communicator<Algo, NT> comm{t};
  const int p = comm.size(), r = comm.rank();
  std::vector<E> h(n);
  std::vector<double> want(n, 0.0);
  for (std::size_t i = 0; i < n; ++i) {
    h[i] = elem<E>(value(r, i));
    want[i] = value(0, i);
    for (int q = 1; q < p; ++q) want[i] = op == ReduceOp::max ? std::fmax(want[i], value(q, i)) : want[i] + value(q, i);
    if (op == ReduceOp::avg) want[i] /= p;
  }
  DeviceBuffer<E> in(n), out(n);
  in.put(h);
  comm.allreduce(in.p, out.p, n, op);    // out of place
  comm.allreduce(in.p, in.p, n, op);     // in place
  cuda_expect(cudaStreamSynchronize(t.stream()), "cudaStreamSynchronize");
  const std::string what = std::string(Algo::name) + " allreduce " + reduce_op_name(op) + " " + dtype_name(dtype_v<E>) +
                           " n=" + std::to_string(n) + " rank " + std::to_string(r);
  compare(out.get(), want, tol, what + " (out of place)");
  compare(in.get(), want, tol, what + " (in place)");
}

template <class Algo>
static void check_gather_family(NT& t, std::size_t n) {
  Communicator<Algo, NT> comm{t};
  const int p = comm.size(), r = comm.rank();
  const auto up = static_cast<std::size_t>(p);
  const std::string tag = std::string(Algo::name) + " n=" + std::to_string(n) + " rank " + std::to_string(r);

  // allgather: block q of the output is rank q's input.
  {
    std::vector<float> h(n);
    for (std::size_t i = 0; i < n; ++i) h[i] = value(r, i);
    DeviceBuffer<float> in(n), out(n * up);
    in.put(h);
    comm.allgather(in.p, out.p, n);
    EXPECT(t.synchronize(deadline_after(std::chrono::seconds(60))) == WaitStatus::done, "synchronize on rank %d", r);
    std::vector<double> want(n * up);
    for (int q = 0; q < p; ++q)
      for (std::size_t i = 0; i < n; ++i) want[static_cast<std::size_t>(q) * n + i] = value(q, i);
    compare(out.get(), want, 0.0, "allgather " + tag);
  }
  // reduce_scatter: this rank's block of the sum of every rank's p blocks.
  {
    std::vector<float> h(n * up);
    for (std::size_t i = 0; i < n * up; ++i) h[i] = value(r, i);
    DeviceBuffer<float> in(n * up), out(n);
    in.put(h);
    comm.reduce_scatter(in.p, out.p, n, ReduceOp::sum);
    cuda_expect(cudaStreamSynchronize(t.stream()), "cudaStreamSynchronize");
    std::vector<double> want(n, 0.0);
    for (std::size_t i = 0; i < n; ++i)
      for (int q = 0; q < p; ++q) want[i] += value(q, static_cast<std::size_t>(r) * n + i);
    compare(out.get(), want, 0.0, "reduce_scatter " + tag);
  }
  // broadcast from the last rank.
  {
    const int root = p - 1;
    std::vector<float> h(n);
    for (std::size_t i = 0; i < n; ++i) h[i] = value(r, i);
    DeviceBuffer<float> buf(n);
    buf.put(h);
    comm.broadcast(buf.p, n, root);
    cuda_expect(cudaStreamSynchronize(t.stream()), "cudaStreamSynchronize");
    std::vector<double> want(n);
    for (std::size_t i = 0; i < n; ++i) want[i] = value(root, i);
    compare(buf.get(), want, 0.0, "broadcast " + tag);
  }
}

template <class Algo>
static void check_algorithm(NT& t) {
  for (std::size_t n : {std::size_t{1}, std::size_t{1000}, (std::size_t{1} << 19) + 3}) {
    check_allreduce<Algo, float>(t, n, ReduceOp::sum, 0.0);
    check_allreduce<Algo, float>(t, n, ReduceOp::avg, 1e-5);  // NCCL scales before summing
    check_gather_family<Algo>(t, n);
  }
  check_allreduce<Algo, weft::half>(t, 4099, ReduceOp::sum, 0.0);
  check_allreduce<Algo, weft::bfloat16>(t, 4099, ReduceOp::sum, 0.0);
  check_allreduce<Algo, std::int32_t>(t, 4099, ReduceOp::sum, 0.0);
  check_allreduce<Algo, double>(t, 4099, ReduceOp::max, 0.0);
}

// Compressed over NCCL: the codec runs on the host, the payloads go through
// the inner Ring on the device. Two calls (the second sees the first's
// error-feedback residual), then the same on a host communicator over the
// bootstrap: bitwise equal (the device combines match the host loops).
template <class Policy>
static void check_compressed(NT& t, ThreadTransport& boot, Policy (*make)()) {
  const int r = t.rank();
  const std::size_t n = 10007;
  std::vector<std::vector<float>> dev_out, host_out;
  {
    Communicator<Policy, NT> comm{t, make()};
    DeviceBuffer<float> buf(n);
    for (int call = 0; call < 2; ++call) {
      std::vector<float> h(n);
      for (std::size_t i = 0; i < n; ++i) h[i] = value(r, i + static_cast<std::size_t>(call)) / 7.0f;
      buf.put(h);
      comm.allreduce(buf.p, buf.p, n, ReduceOp::avg, {.name = "g"});
      cuda_expect(cudaStreamSynchronize(t.stream()), "cudaStreamSynchronize");
      dev_out.push_back(buf.get());
    }
  }
  {
    Communicator<Policy, ThreadTransport> comm{boot.split(1, r, deadline_after(std::chrono::seconds(60))), make()};
    for (int call = 0; call < 2; ++call) {
      std::vector<float> h(n);
      for (std::size_t i = 0; i < n; ++i) h[i] = value(r, i + static_cast<std::size_t>(call)) / 7.0f;
      comm.allreduce(h.data(), h.data(), n, ReduceOp::avg, {.name = "g"});
      host_out.push_back(h);
    }
  }
  for (int call = 0; call < 2; ++call)
    EXPECT(std::memcmp(dev_out[call].data(), host_out[call].data(), n * sizeof(float)) == 0,
           "%s<%s> over NCCL, call %d on rank %d: differs from the same policy over host buffers", Policy::name,
           Policy::codec_type::name, call, r);
}

// Split by parity: each half allreduces on its own NCCL communicator.
static void check_split(NT& t) {
  const int r = t.rank(), p = t.size();
  NT sub = t.split(r % 2, r, deadline_after(std::chrono::seconds(60)));
  int members = 0;
  for (int q = 0; q < p; ++q) members += q % 2 == r % 2;
  EXPECT(sub.size() == members, "split: rank %d's group has %d ranks, expected %d", r, sub.size(), members);
  EXPECT(sub.rank() == r / 2, "split: rank %d is rank %d of its group, expected %d", r, sub.rank(), r / 2);
  Communicator<Native, NT> comm{sub};
  const std::size_t n = 777;
  std::vector<float> h(n);
  std::vector<double> want(n, 0.0);
  for (std::size_t i = 0; i < n; ++i) {
    h[i] = value(r, i);
    for (int q = r % 2; q < p; q += 2) want[i] += value(q, i);
  }
  DeviceBuffer<float> buf(n);
  buf.put(h);
  comm.allreduce(buf.p, buf.p, n);
  compare(buf.get(), want, 0.0, "allreduce on a split, rank " + std::to_string(r));
}

// Rank 0 calls an allreduce the others never join: its wait passes the
// deadline, the NCCL communicator is aborted, and the error names the call.
template <class Algo>
static void check_deadline(ThreadTransport& boot, int device) {
  static std::atomic<int> given_up{0};  // one per policy: each phase has its own flag
  NT t(boot, device, nullptr, deadline_after(std::chrono::seconds(60)));
  if (t.rank() == 0) {
    CommOptions o;
    o.timeout = std::chrono::seconds(2);
    o.fingerprints = false;  // else the fingerprint exchange (over the bootstrap) reports the absence first
    Communicator<Algo, NT> comm{t, o};
    DeviceBuffer<float> buf(1 << 16);
    cuda_expect(cudaMemset(buf.p, 0, buf.n * sizeof(float)), "cudaMemset");
    cuda_expect(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    std::string what;
    const auto start = Clock::now();
    try {
      comm.allreduce(buf.p, buf.p, buf.n);
    } catch (const TimeoutError& e) {
      what = e.what();
    }
    const double took = std::chrono::duration<double>(Clock::now() - start).count();
    std::printf("%s deadline: %s (%.1f s)\n", Algo::name, what.c_str(), took);
    EXPECT(what.find("allreduce") != std::string::npos && what.find("#1") != std::string::npos,
           "%s: the timeout names the op and its sequence number: '%s'", Algo::name, what.c_str());
    EXPECT(t.aborted(), "%s: the NCCL communicator is aborted after the deadline", Algo::name);
    EXPECT(took < 30, "%s: the deadline of 2 s ended the call after %.1f s", Algo::name, took);
    EXPECT(comm.broken(), "%s: the communicator is broken after the timeout", Algo::name);
    given_up.fetch_add(1);
  } else {
    while (given_up.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    t.abort("test: rank 0 timed out waiting for this rank and aborted");
  }
}

int main() {
  check_elements_all_ops<float>();
  check_elements_all_ops<double>();
  check_elements_all_ops<weft::half>();
  check_elements_all_ops<weft::bfloat16>();
  check_elements_all_ops<std::int32_t>();
  check_elements_all_ops<std::int64_t>();
  check_elements_all_ops<std::uint8_t>();
  std::printf("host checks of the device element functions: %d failures\n", failures.load());

  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return failures ? 1 : 77;
  }
  const int k = devices < 4 ? devices : 4;
  std::printf("%d CUDA device(s): %d thread rank(s), one per GPU\n", devices, k);
  try {
    // Two ranks per emulated node where there are 4 GPUs (Hierarchical's two levels).
    run_local(
        k,
        [&](ThreadTransport& boot) {
      const int device = boot.rank();
      cuda_expect(cudaSetDevice(device), "cudaSetDevice");
      NT t(boot, device, nullptr, deadline_after(std::chrono::seconds(120)));
      check_algorithm<Native>(t);
      check_algorithm<Ring>(t);
      check_algorithm<Hierarchical<>>(t);
      check_compressed<Compressed<BF16, Ring>>(t, boot, [] { return Compressed<BF16, Ring>{}; });
      check_compressed<Compressed<TopK, Ring>>(t, boot, [] { return Compressed<TopK, Ring>{.codec = {.fraction = 0.05}}; });
      check_split(t);
      if (k >= 2) {
        check_deadline<Ring>(boot, device);
        check_deadline<Native>(boot, device);
      }
        },
        LocalOptions{k >= 4 ? 2 : k});
  } catch (const std::exception& e) {
    ++failures;
    std::printf("FAILED: %s\n", e.what());
  }
  if (k < 2) std::printf("one GPU: the deadline test (two ranks) did not run\n");
  std::printf("%s\n", failures ? "FAILED" : "passed");
  return failures ? 1 : 0;
}
