// Executors: where work runs and in what order. An executor is passed down
// explicitly through evaluation and backward (as Eigen passes a Device to
// TensorEvaluator and Kokkos an execution-space instance to every policy):
//   device      the tag (weft::cpu, weft::cuda) that picks the kernels
//   queue       what work is ordered on: the calling thread for the host, a
//               cudaStream_t for CUDA (kernels/cuda/exec.cuh)
//   workspace   Workspace<Device>&, scratch for materialised values and adjoints
// Nothing is global: two executors with two workspaces can run two passes at once.
#pragma once

#include <concepts>

#include "config.hpp"
#include "device.hpp"

namespace weft {

template <class Device>
class Workspace;  // tensor/workspace.hpp

// The queue type of a device (HostQueue, the calling thread, is in core/device.hpp).

template <class Device>
struct device_queue {
  static_assert(dependent_false<Device>,
                "no queue type for this device: for weft::cuda include <weft/kernels/cuda/exec.cuh> (the queue is a "
                "cudaStream_t) and compile with nvcc");
};
template <>
struct device_queue<cpu> {
  using type = HostQueue;
};

// The executor weft provides: a device, a queue on it, and the workspace the
// evaluation allocates from.
template <class Device>
struct Exec {
  using device_type = Device;
  using queue_type = typename device_queue<Device>::type;

  Exec(Workspace<Device>& ws, queue_type q = {}) : ws_(&ws), queue_(q) {}

  Workspace<Device>& workspace() const { return *ws_; }
  queue_type queue() const { return queue_; }

 private:
  Workspace<Device>* ws_;
  queue_type queue_;
};

// What evaluation, kernels and backward need from an executor.
template <class X>
concept Executor = requires(const X& x) {
  typename X::device_type;
  typename X::queue_type;
  { x.workspace() } -> std::same_as<Workspace<typename X::device_type>&>;
  { x.queue() } -> std::same_as<typename X::queue_type>;
};
static_assert(Executor<Exec<cpu>>);

template <Executor X>
using device_of = typename X::device_type;

}  // namespace weft
