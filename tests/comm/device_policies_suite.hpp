// Shared by device_policies.cpp (thread ranks) and device_policies_mpi.cpp
// (mpirun): one rank's side of "policy A over host buffers and over emulated
// device buffers give the same bits" (emulated_device.hpp).
#pragma once

#include <weft/comm/communicator.hpp>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "emulated_device.hpp"

namespace device_suite {
using namespace weft::comm;
using namespace std::chrono_literals;

inline CommOptions checked() { return CommOptions{.timeout = 30s, .fingerprints = true}; }

// Rank r's element i: fractions of mixed magnitude (so a different order of
// additions would change the bits), different per rank.
inline float input(int r, std::size_t i, int call) {
  const std::uint32_t h = static_cast<std::uint32_t>((i + 1) * 2654435761u) ^ static_cast<std::uint32_t>((r + 1) * 40503 + call * 977);
  return static_cast<float>(static_cast<int>(h % 20001) - 10000) / 1024.0f * ((h >> 20) % 3 == 0 ? 37.0f : 1.0f);
}

inline std::vector<float> inputs(int r, std::size_t n, int call) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = input(r, i, call);
  return v;
}

inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// What one rank's communicator produced: every result of the sequence below, in order.
template <class Comm, class Put, class Get>
std::vector<std::vector<float>> sequence(Comm& c, Put put, Get get) {
  std::vector<std::vector<float>> out;
  const int p = c.size(), r = c.rank();
  const auto up = static_cast<std::size_t>(p);
  int call = 0;
  for (std::size_t n : {std::size_t{1}, std::size_t{1000}, std::size_t{4099}}) {
    const std::string oop = "out_of_place_" + std::to_string(n), ip = "in_place_" + std::to_string(n);
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg}) {
      auto in = put(inputs(r, n, ++call));
      auto res = put(std::vector<float>(n, -1.0f));
      c.allreduce(in->data(), res->data(), n, op, {.name = oop});
      out.push_back(get(*res));
      c.allreduce(in->data(), in->data(), n, op, {.name = ip});  // again: codec state from the first call
      out.push_back(get(*in));
    }
    {
      auto buf = put(inputs(r, n, ++call));
      c.broadcast(buf->data(), n, p - 1);
      out.push_back(get(*buf));
    }
    {
      auto in = put(inputs(r, n, ++call));
      auto res = put(std::vector<float>(n, -1.0f));
      c.reduce(in->data(), res->data(), n, 1 % p, ReduceOp::avg);
      if (r == 1 % p) out.push_back(get(*res));
    }
    {
      auto in = put(inputs(r, n, ++call));
      auto res = put(std::vector<float>(n * up, -1.0f));
      c.allgather(in->data(), res->data(), n);
      out.push_back(get(*res));
    }
    {
      auto in = put(inputs(r, n * up, ++call));
      auto res = put(std::vector<float>(n, -1.0f));
      c.reduce_scatter(in->data(), res->data(), n, ReduceOp::sum);
      out.push_back(get(*res));
    }
  }
  return out;
}

// This rank's part: runs `sequence` with a policy from make() over host
// buffers on t, then over emulated device buffers on the same transport
// (each communicator gets its own policy: copies of a Compressed policy
// would share one codec state table). "" = bitwise the same.
template <class A, class Base, class Make>
std::string host_vs_device_on(Base& t, const char* what, Make make) {
  std::vector<std::vector<float>> host, dev;
  {
    Communicator<A, Base> c{t, make(), checked()};
    host = sequence(c, [](std::vector<float> v) { return std::make_unique<std::vector<float>>(std::move(v)); },
                    [](const std::vector<float>& v) { return v; });
  }
  emulated::Executor ex;
  {
    Communicator<A, emulated::Transport<Base>> c{emulated::Transport<Base>(t, ex), make(), checked()};
    dev = sequence(c, [&](const std::vector<float>& v) { return std::make_unique<emulated::Buffer<float>>(ex, v); },
                   [](const emulated::Buffer<float>& b) { return b.get(); });
  }
  std::string e;
  if (host.size() != dev.size()) e += "different number of results; ";
  for (std::size_t k = 0; k < host.size() && k < dev.size(); ++k)
    if (!same_bits(host[k], dev[k])) {
      e += "result " + std::to_string(k) + " differs; ";
      break;
    }
  if (ex.counts->combine == 0 && t.size() > 1) e += "no combine went through the device executor; ";
  return e.empty() ? e : std::string(what) + " on rank " + std::to_string(t.rank()) + ": " + e;
}
template <class A, class Base>
std::string host_vs_device_on(Base& t, const char* what) {
  return host_vs_device_on<A>(t, what, [] { return A{}; });
}

}  // namespace device_suite
