// Tensor parallelism under mpirun (2 and 4 processes): the checks of
// tensor_parallel_suite.hpp on the MPI transport, every rank agreeing.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <weft/comm/transport/mpi.hpp>

#include "comm/mpi_doctest.hpp"
#include "tensor_parallel_suite.hpp"

using namespace tp_suite;
using weft::comm::MpiTransport;
using weft::comm::testing::agree;

TEST_CASE("mpi: gradcheck through every collective node") {
  MpiTransport t{MPI_COMM_WORLD};
  RingComm<MpiTransport> c(t);
  agree(gradcheck_every_node(c));
}

TEST_CASE("mpi: loss, gradients and 20 AdamW steps equal the unsharded model's") {
  MpiTransport t{MPI_COMM_WORLD};
  agree(exactness(t));
}

TEST_CASE("mpi: the transport moves the formula's bytes per step") {
  MpiTransport t{MPI_COMM_WORLD};
  agree(byte_count(t));
}

TEST_CASE("mpi: sequence parallelism: two pre-norm MLP blocks equal the unsharded ones") {
  MpiTransport t{MPI_COMM_WORLD};
  agree(sequence_parallel(t));
}

TEST_CASE("mpi: transformer blocks, tensor parallel: loss, gradients, 20 AdamW steps and bytes equal nn::TransformerBlock's") {
  MpiTransport t{MPI_COMM_WORLD};
  agree(block_stack<false>(t, 0.0f, 20));
}

TEST_CASE("mpi: transformer blocks, sequence parallel: loss, gradients, 20 AdamW steps and bytes equal nn::TransformerBlock's") {
  MpiTransport t{MPI_COMM_WORLD};
  agree(block_stack<true>(t, 0.0f, 20));
}

TEST_CASE("mpi: transformer blocks with residual dropout: the masks, the loss and the gradients are the unsharded model's") {
  MpiTransport t{MPI_COMM_WORLD};
  RingComm<MpiTransport> c(t);
  agree(dropout_mask_slices(c));
  agree(block_stack<true>(t, 0.2f, 2));
  agree(block_stack<false>(t, 0.2f, 0));
}

int main(int argc, char** argv) {
  openblas_set_num_threads(1);  // the ranks already fill the cores
  return weft::comm::testing::run_doctest_under_mpi(argc, argv);
}
