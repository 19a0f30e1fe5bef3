// Tensor parallelism on thread ranks (tensor_parallel_suite.hpp holds the
// checks, shared with test_tensor_parallel_mpi.cpp): central differences
// through every collective node on 2 and 4 ranks; the sharded model against
// the unsharded one at t = 1, 2, 4 (loss, gradients, 20 AdamW steps); the
// transport's byte counter against the formula; configuration errors.
#include <doctest/doctest.h>

#include <string>
#include <vector>
#include <weft/comm/algorithm/halving_doubling.hpp>
#include <weft/comm/algorithm/tree.hpp>
#include <weft/comm/run_local.hpp>

#include "tensor_parallel_suite.hpp"

using namespace tp_suite;
using comm::ThreadTransport;

namespace {
// Run fn on p thread ranks; every rank's message must be empty.
template <class F>
void on_ranks(int p, F fn) {
  std::vector<std::string> errs(static_cast<std::size_t>(p));
  comm::run_local(p, [&](ThreadTransport& t) { errs[static_cast<std::size_t>(t.rank())] = fn(t); });
  for (int r = 0; r < p; ++r) CHECK_MESSAGE(errs[static_cast<std::size_t>(r)] == "", errs[static_cast<std::size_t>(r)]);
}
}  // namespace

TEST_CASE("gradcheck through every collective node on 1, 2 and 4 thread ranks") {
  for (int p : {1, 2, 4}) {
    CAPTURE(p);
    on_ranks(p, [](ThreadTransport& t) {
      RingComm<ThreadTransport> c(t);
      return gradcheck_every_node(c);
    });
  }
}

TEST_CASE("t = 1, 2, 4: loss, gradients and 20 AdamW steps equal the unsharded model's") {
  for (int p : {1, 2, 4}) {
    CAPTURE(p);
    on_ranks(p, [](ThreadTransport& t) { return exactness(t); });
  }
}

TEST_CASE("the transport moves the formula's bytes per step") {
  for (int p : {1, 2, 4}) {
    CAPTURE(p);
    on_ranks(p, [](ThreadTransport& t) { return byte_count(t); });
  }
}

namespace {
// The message of the exception fn throws ("" if none).
template <class F>
std::string thrown(F fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}
bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }
}  // namespace

TEST_CASE("bad configuration: a sentence naming the layer and the sizes") {
  std::vector<std::string> msgs(4 * 3);
  comm::run_local(4, [&](ThreadTransport& t) {
    const auto r = static_cast<std::size_t>(t.rank());
    RingComm<ThreadTransport> c(t.split(0, t.rank())), half(t.split(t.rank() / 2, t.rank()));
    msgs[r * 3] = thrown([&] { tp::ColumnParallelLinear<RingComm<ThreadTransport>> l(c, 12, 10, 1, "head"); });
    msgs[r * 3 + 1] = thrown([&] { tp::ParallelMLP<RingComm<ThreadTransport>, RingComm<ThreadTransport>> m(c, half, 8, 16, 8); });
    msgs[r * 3 + 2] = thrown([&] { tp::RowParallelLinear<RingComm<ThreadTransport>> l(c, 16, 8 + (t.rank() == 1 ? 4 : 0), 1, "proj"); });
  });
  for (std::size_t r = 0; r < 4; ++r) {
    CAPTURE(r);
    CHECK_MESSAGE(has(msgs[r * 3], "head(in 12, out 10): out_features 10 is not divisible by the tensor-parallel degree 4"), msgs[r * 3]);
    CHECK_MESSAGE(has(msgs[r * 3 + 1], "fc1's communicator has 4 ranks but fc2's has 2"), msgs[r * 3 + 1]);
    CHECK_MESSAGE(has(msgs[r * 3 + 2], "rank 1 holds a weight shard of shape (4, 12) but rank 0 holds (4, 8)"), msgs[r * 3 + 2]);
  }
}

TEST_CASE("a policy per layer: fc1 through a tree, fc2 through halving-doubling, same function") {
  for (int p : {2, 4}) {
    CAPTURE(p);
    on_ranks(p, [](ThreadTransport& t) -> std::string {
      comm::Communicator<comm::Tree, ThreadTransport> c1(t.split(0, t.rank()));
      comm::Communicator<comm::HalvingDoubling, ThreadTransport> c2(t.split(0, t.rank()));
      tp::ParallelMLP<decltype(c1), decltype(c2)> mlp(c1, c2, kD, kH, kD, kSeed);
      nn::Linear<float> fc1(kD, kH, kSeed), fc2(kH, kD, kSeed + 1);
      Tensor<float> x = filled<float>(Shape{kB, kD}, 5);
      Workspace<cpu> ws0;
      const float want = weft::backward(sum(tanh(fc2(gelu(fc1(x))))), ws0).data[0];
      Workspace<cpu> ws;
      const float got = weft::backward(sum(tanh(mlp(x))), ws).data[0];
      if (std::abs(got - want) > 1e-5f * (1 + std::abs(want)))
        return "loss " + std::to_string(got) + ", unsharded " + std::to_string(want);
      const int r = t.rank();
      for (auto e : {compare_shard("gradient", "fc1.weight", fc1.weight.grad, mlp.fc1.weight.grad, Split::columns, r, 1e-5),
                     compare_shard("gradient", "fc2.weight", fc2.weight.grad, mlp.fc2.weight.grad, Split::rows, r, 1e-5),
                     compare_shard("gradient", "fc2.bias", fc2.bias.grad, mlp.fc2.bias.grad, Split::none, r, 1e-5)})
        if (!e.empty()) return e;
      return "";
    });
  }
}

TEST_CASE("sequence parallelism: two pre-norm MLP blocks equal the unsharded ones on 1, 2 and 4 thread ranks") {
  for (int p : {1, 2, 4}) {
    CAPTURE(p);
    on_ranks(p, [](ThreadTransport& t) { return sequence_parallel(t); });
  }
}

// let's shared value read by a matmul (as SequenceParallelMLP and the bench's
// residual stack read it): its gradient used to be dropped (needs_grad saw a
// leaf with nothing to differentiate).
TEST_CASE("let: a matmul over the shared value passes its gradient on") {
  Parameter<float> w1("w1", Shape{3, 3}), w2("w2", Shape{3, 2});
  for (index_t i = 0; i < 9; ++i) w1.value.data()[i] = 0.1f * static_cast<float>(i) - 0.3f;
  for (index_t i = 0; i < 6; ++i) w2.value.data()[i] = 0.2f * static_cast<float>(i) - 0.5f;
  Tensor<float> x = filled<float>(Shape{2, 3}, 1);
  Workspace<cpu> ws;
  weft::backward(sum(matmul(tanh(matmul(x, w1)), w2)), ws);
  std::vector<float> want(w1.grad.data(), w1.grad.data() + 9);
  w1.zero_grad();
  w2.zero_grad();
  weft::backward(sum(let(tanh(matmul(x, w1)), [&](auto v) { return matmul(v, w2) * 1.0f; })), ws);
  for (index_t i = 0; i < 9; ++i) CHECK(w1.grad.data()[i] == doctest::Approx(want[static_cast<std::size_t>(i)]).epsilon(1e-6));
}

// ---- transformer blocks (tensor_parallel/transformer.hpp) ----------------------------

TEST_CASE("transformer blocks, tensor parallel, t = 1, 2, 4: loss, gradients, 20 AdamW steps and bytes equal nn::TransformerBlock's") {
  for (int p : {1, 2, 4}) {
    CAPTURE(p);
    on_ranks(p, [](ThreadTransport& t) { return block_stack<false>(t, 0.0f, 20); });
  }
}

TEST_CASE("transformer blocks, sequence parallel, t = 1, 2, 4: loss, gradients, 20 AdamW steps and bytes equal nn::TransformerBlock's") {
  for (int p : {1, 2, 4}) {
    CAPTURE(p);
    on_ranks(p, [](ThreadTransport& t) { return block_stack<true>(t, 0.0f, 20); });
  }
}

TEST_CASE("transformer blocks with residual dropout: the masks, the loss and the gradients are the unsharded model's") {
  for (int p : {1, 2, 4}) {
    CAPTURE(p);
    on_ranks(p, [](ThreadTransport& t) {
      RingComm<ThreadTransport> c(t);
      return dropout_mask_slices(c);
    });
    on_ranks(p, [](ThreadTransport& t) { return block_stack<true>(t, 0.2f, 2); });
    on_ranks(p, [](ThreadTransport& t) { return block_stack<false>(t, 0.2f, 0); });
  }
}

TEST_CASE("transformer blocks, bad configuration: a sentence naming the layer and the sizes") {
  std::vector<std::string> msgs(4 * 4);
  comm::run_local(4, [&](ThreadTransport& t) {
    const auto r = static_cast<std::size_t>(t.rank());
    using C = RingComm<ThreadTransport>;
    C c(t.split(0, t.rank())), half(t.split(t.rank() / 2, t.rank()));
    msgs[r * 4] = thrown([&] { tp::ParallelMultiHeadAttention<C> a(c, {.dim = 12, .heads = 6}, 1, "attn"); });
    msgs[r * 4 + 1] = thrown([&] {
      tp::ParallelTransformerBlock<C, C> b(c, half, {.dim = 8, .heads = 4, .mlp = 16}, 1, 0.0f, "block3");
    });
    msgs[r * 4 + 2] = thrown([&] { tp::ParallelTransformerBlock<C, C> b(c, c, {.dim = 8, .heads = 4, .mlp = 18}, 1, 0.0f, "block4"); });
    msgs[r * 4 + 3] = thrown([&] { tp::ParallelMultiHeadAttention<C> a(c, {.dim = 8, .heads = 4, .dropout = 0.1f}, 1, "attn2"); });
  });
  for (std::size_t r = 0; r < 4; ++r) {
    CAPTURE(r);
    CHECK_MESSAGE(has(msgs[r * 4], "attn(width 12, heads 6): 6 heads are not divisible by the tensor-parallel degree 4"), msgs[r * 4]);
    CHECK_MESSAGE(has(msgs[r * 4 + 1], "block3(width 8, heads 4, mlp 16): the attention's communicator has 4 ranks but the MLP's has 2"),
                  msgs[r * 4 + 1]);
    CHECK_MESSAGE(has(msgs[r * 4 + 2], "block4.mlp(8, 18, 8): hidden size 18 is not divisible by the tensor-parallel degree 4"),
                  msgs[r * 4 + 2]);
    CHECK_MESSAGE(has(msgs[r * 4 + 3], "attn2(width 8, heads 4): dropout 0.1 on the attention probabilities is not supported"),
                  msgs[r * 4 + 3]);
  }
}
