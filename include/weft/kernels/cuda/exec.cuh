// The CUDA executor's queue: a cudaStream_t. Exec<weft::cuda>{workspace,
// stream} orders every kernel of an evaluation or a backward pass on that
// stream (0: the legacy default stream). Opt-in: compile with nvcc.
#pragma once

#include <cuda_runtime.h>

#include "../../core/exec.hpp"

namespace weft {

template <>
struct device_queue<cuda> {
  using type = cudaStream_t;
};

}  // namespace weft
