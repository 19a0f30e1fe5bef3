// weft umbrella: everything that needs no optional dependency.
// Opt-in headers (each needs its library at link time):
//   <weft/expr/matmul.hpp>          matmul through CBLAS (OpenBLAS)
//   <weft/kernels/cuda/...>         CUDA kernels, cuBLASLt gemm, attention, device memory (nvcc)
//   <weft/nn/optim_cuda.cuh>        multi-tensor optimizers on the GPU (nvcc)
//   <weft/comm/transport/mpi.hpp>   MPI transport
//   <weft/comm/transport/nccl.hpp>  NCCL transport (NCCL, CUDA)
#pragma once

#include "core/config.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/math.hpp"
#include "core/shape.hpp"
#include "tensor/tensor.hpp"
#include "tensor/workspace.hpp"
#include "expr/node.hpp"
#include "expr/elementwise.hpp"
#include "expr/reduce.hpp"
#include "expr/transpose.hpp"
#include "expr/softmax.hpp"
#include "expr/cross_entropy.hpp"
#include "expr/assign.hpp"
#include "expr/let.hpp"
#include "expr/view.hpp"
#include "expr/concat.hpp"
#include "expr/where.hpp"
#include "autodiff/value_and_grad.hpp"
#include "autodiff/gradcheck.hpp"
#include "autodiff/split.hpp"
#include "io/idx.hpp"
