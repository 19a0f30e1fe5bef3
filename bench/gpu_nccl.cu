// NCCL allreduce through weft against ncclAllReduce called directly, on the
// same NCCL communicator and stream, one thread rank per GPU (all GPUs, or
// the count given as the first argument). Sizes 1 KiB .. 256 MiB of f32, in
// nccl-tests' terms: time per call, algbw = bytes / time, busbw = algbw *
// 2(p-1)/p (0 on one rank: nothing crosses a link). Columns: direct
// ncclAllReduce (queued back to back, one stream sync per loop, as
// nccl-tests times it); weft's Communicator<Native> (fingerprints on, as users get
// it: one small host message per peer per call over the bootstrap); weft's
// Ring over ncclSend/ncclRecv with device combines (both wait for every
// call before returning, as a blocking weft call does). Then one line per size
//   nccl_weft_vs_direct_<bytes>: R
// with R = direct time / weft Native time (1.00: weft costs nothing on top).
// Without a GPU: exit 77.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <weft/comm/algorithm/native.hpp>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/run_local.hpp>
#include <weft/comm/transport/nccl.hpp>

using namespace weft::comm;
using NT = NcclTransport<ThreadTransport>;

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "gpu_nccl: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

struct Row {
  std::size_t bytes = 0;
  double direct_s = 0, native_s = 0, ring_s = 0;
};

// Seconds per call of f, after warmup; every rank enters each timed loop together.
template <class F, class Sync>
double time_calls(int iters, F&& f, Sync&& sync) {
  for (int i = 0; i < 3; ++i) f();
  sync();
  const auto start = Clock::now();
  for (int i = 0; i < iters; ++i) f();
  sync();
  return std::chrono::duration<double>(Clock::now() - start).count() / iters;
}

std::string human(std::size_t b) {
  if (b >= (1u << 20)) return std::to_string(b >> 20) + " MiB";
  return std::to_string(b >> 10) + " KiB";
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  int p = devices;
  if (argc > 1) p = std::max(1, std::min(devices, std::atoi(argv[1])));
  std::vector<std::size_t> sizes;
  for (std::size_t b = 1 << 10; b <= (std::size_t{256} << 20); b *= 4) sizes.push_back(b);
  std::vector<Row> rows(sizes.size());

  run_local(p, [&](ThreadTransport& boot) {
    const int r = boot.rank();
    check(cudaSetDevice(r), "cudaSetDevice");
    NT t(boot, r);
    Communicator<Native, NT> native{t};
    Communicator<Ring, NT> ring{t};
    float* buf = nullptr;
    check(cudaMalloc(&buf, sizes.back()), "cudaMalloc");
    check(cudaMemset(buf, 0, sizes.back()), "cudaMemset");
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");  // the transport's stream does not wait for the legacy one
    // Every rank finishes the previous loop before the next starts.
    auto barrier = [&] {
      check(cudaStreamSynchronize(t.stream()), "cudaStreamSynchronize");
      native.barrier();
    };
    for (std::size_t k = 0; k < sizes.size(); ++k) {
      const std::size_t n = sizes[k] / sizeof(float);
      const int iters = static_cast<int>(std::clamp<std::size_t>((std::size_t{1} << 30) / sizes[k], 5, 200));
      const double direct = time_calls(
          iters,
          [&] {
            // The transport's communicator is nonblocking: a call may return
            // ncclInProgress until NCCL has enqueued it.
            ncclResult_t rc = ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, t.comm(), t.stream());
            while (rc == ncclInProgress) {
              ncclResult_t st = ncclSuccess;
              rc = ncclCommGetAsyncError(t.comm(), &st);
              if (rc == ncclSuccess) rc = st;
            }
            if (rc != ncclSuccess) {
              std::fprintf(stderr, "gpu_nccl: ncclAllReduce failed: %s\n", ncclGetErrorString(rc));
              std::exit(1);
            }
          },
          barrier);
      const double through_native = time_calls(iters, [&] { native.allreduce(buf, buf, n); }, barrier);
      const double through_ring = time_calls(iters, [&] { ring.allreduce(buf, buf, n); }, barrier);
      if (r == 0) rows[k] = Row{sizes[k], direct, through_native, through_ring};
    }
    cudaFree(buf);
  });

  const double factor = 2.0 * (p - 1) / p;
  std::printf("# allreduce f32, %d rank(s) (one per GPU); time in us, algbw and busbw in GB/s\n", p);
  std::printf("%10s %10s %8s %8s %10s %8s %8s %10s %8s %8s\n", "size", "direct_us", "algbw", "busbw", "native_us",
              "algbw", "busbw", "ring_us", "algbw", "busbw");
  for (const Row& w : rows) {
    auto bw = [&](double s) { return static_cast<double>(w.bytes) / s / 1e9; };
    std::printf("%10s %10.1f %8.2f %8.2f %10.1f %8.2f %8.2f %10.1f %8.2f %8.2f\n", human(w.bytes).c_str(),
                w.direct_s * 1e6, bw(w.direct_s), bw(w.direct_s) * factor, w.native_s * 1e6, bw(w.native_s),
                bw(w.native_s) * factor, w.ring_s * 1e6, bw(w.ring_s), bw(w.ring_s) * factor);
  }
  for (const Row& w : rows) std::printf("nccl_weft_vs_direct_%zu: %.3f\n", w.bytes, w.direct_s / w.native_s);
  return 0;
}
