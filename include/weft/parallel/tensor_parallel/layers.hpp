// Megatron-style tensor-parallel layers over the collective nodes
// (collectives.hpp). Each layer takes the communicator its collectives run
// on, so the policy is chosen per layer (a Ring for one, Compressed<BF16,
// Ring> for another). Weights are the unsharded layer's (nn::Linear,
// nn::Embedding with the same seed) sliced: the model computes the same
// function at every tensor-parallel degree.
//
// Dimension legend: B batch, I in_features, O out_features, p ranks of the
// layer's communicator, r this rank; V vocabulary, D embedding dim.
//
//   ColumnParallelLinear   W (I, O/p) columns [r O/p, (r+1) O/p), b (O/p)
//                          y_r = copy_to(x) W_r + b_r          (B, O/p)
//                          Gather: gather_from(y_r, axis 1)    (B, O)
//   RowParallelLinear      W (I/p, O) rows [r I/p, (r+1) I/p), b (O) replicated
//                          y = reduce_from(x_r W_r) + b        (B, O)
//                          x_r: (B, I/p) already split, or scatter_to(x, axis 1)
//   ParallelMLP            fc2(gelu(fc1(x))): column then row, one allreduce
//                          forward (fc2) and one backward (fc1's input)
//   VocabParallelEmbedding W (V/p, D) rows [r V/p, (r+1) V/p);
//                          reduce_from(rows of the indices this rank holds, 0 elsewhere)
//   SequenceParallelMLP    x_r + fc2(gelu(fc1(LayerNorm(x_r)))), x_r (T/p, C) this rank's
//                          tokens: LayerNorm on the shard, all_gather (T, C) before fc1,
//                          reduce_scatter back to (T/p, C) after fc2 (Korthikanti et al.
//                          2022): the same bytes as the allreduce pair, activations 1/p
//
// Bad configuration is refused with a sentence naming the layer and the
// sizes: a size not divisible by p, layers on communicators of different
// sizes, a rank whose shard shape differs from rank 0's (checked by one
// allgather of the shard shapes at construction).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../../core/error.hpp"
#include "../../expr/elementwise.hpp"
#include "../../expr/embedding.hpp"
#include "../../expr/let.hpp"
#include "../../expr/parameter.hpp"
#include "../../nn/embedding.hpp"
#include "../../nn/layer_norm.hpp"
#include "../../nn/linear.hpp"
#include "collectives.hpp"
#include "column_matmul.hpp"

namespace weft::parallel::tensor_parallel {

namespace detail {

inline void check_divisible(const std::string& layer, const char* what, index_t n, int p) {
  if (p <= 0 || n % p != 0)
    throw_error<ShapeError>(layer, ": ", what, " ", n, " is not divisible by the tensor-parallel degree ", p);
}

// Every rank's shard of `param` must have rank 0's shape: one allgather of
// the shapes, so every rank sees the same disagreement and throws the same error.
template <class Comm>
void check_same_shard(Comm& c, const std::string& layer, const char* param, const Shape& s) {
  const int p = c.size();
  std::vector<std::int64_t> mine(max_rank + 1, -1), all(static_cast<std::size_t>((max_rank + 1) * p));
  mine[0] = s.rank;
  for (int d = 0; d < s.rank; ++d) mine[static_cast<std::size_t>(d + 1)] = s[d];
  c.allgather(mine.data(), all.data(), mine.size());
  for (int q = 1; q < p; ++q)
    for (std::size_t j = 0; j < mine.size(); ++j)
      if (all[static_cast<std::size_t>(q) * mine.size() + j] != all[j]) {
        auto shape_of = [&](int r) {
          Shape t;
          t.rank = static_cast<int>(all[static_cast<std::size_t>(r) * mine.size()]);
          for (int d = 0; d < t.rank; ++d) t[d] = all[static_cast<std::size_t>(r) * mine.size() + 1 + static_cast<std::size_t>(d)];
          return t;
        };
        throw_error<ShapeError>(layer, ": rank ", q, " holds a ", param, " shard of shape ", shape_of(q), " but rank 0 holds ",
                                shape_of(0), " (every rank must build the layer with the same sizes)");
      }
}

// Columns [c0, c0 + n) of a row-major (rows, cols) tensor into dst (rows, n).
template <class T>
void copy_columns(const T* src, index_t rows, index_t cols, index_t c0, index_t n, T* dst) {
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < n; ++j) dst[i * n + j] = src[i * cols + c0 + j];
}

}  // namespace detail

template <class Comm, class T = float, bool Bias = true, bool GatherOutput = false>
struct ColumnParallelLinear {
  Parameter<T> weight;  // (I, O/p)
  Parameter<T> bias;    // (O/p); empty without Bias
  Comm* comm;
  std::string layer;
  index_t out_total = 0;
  bool overlap = true;  // backward: allreduce of dX under the dW gemm (column_matmul.hpp)

  ColumnParallelLinear(Comm& c, index_t in_features, index_t out_features, std::uint64_t seed = 0,
                       std::string name = "ColumnParallelLinear")
      : comm(&c), layer(std::move(name)), out_total(out_features) {
    const int p = c.size(), r = c.rank();
    const std::string what = layer + "(in " + std::to_string(in_features) + ", out " + std::to_string(out_features) + ")";
    detail::check_divisible(what, "out_features", out_features, p);
    const index_t n = out_features / p;
    nn::Linear<T, Bias> full(in_features, out_features, seed);  // the unsharded layer's values, sliced
    weight = Parameter<T>("weight", Shape{in_features, n});
    bias = Parameter<T>("bias", Shape{Bias ? n : 0});
    detail::copy_columns(full.weight.value.data(), in_features, out_features, r * n, n, weight.value.data());
    if constexpr (Bias) detail::copy_columns(full.bias.value.data(), 1, out_features, r * n, n, bias.value.data());
    detail::check_same_shard(c, what, "weight", weight.shape());
  }

  index_t in_features() const { return weight.shape()[0]; }
  index_t out_features() const { return out_total; }

  // x: (B, I) replicated -> (B, O/p), or (B, O) with GatherOutput
  template <Operand X>
  auto operator()(X&& x) {
    auto y = [&] {
      if constexpr (Bias)
        return column_matmul(std::forward<X>(x), weight, *comm, overlap) + bias;
      else
        return column_matmul(std::forward<X>(x), weight, *comm, overlap);
    }();
    if constexpr (GatherOutput)
      return gather_from(std::move(y), *comm, 1);
    else
      return y;
  }

  template <class F>
  void for_each_parameter(F&& f) {
    f("weight", weight);
    if constexpr (Bias) f("bias", bias);
  }
};

template <class Comm, class T = float, bool Bias = true, bool InputIsParallel = true>
struct RowParallelLinear {
  Parameter<T> weight;  // (I/p, O)
  Parameter<T> bias;    // (O) replicated, added after the reduction
  Comm* comm;
  std::string layer;
  index_t in_total = 0;

  RowParallelLinear(Comm& c, index_t in_features, index_t out_features, std::uint64_t seed = 0,
                    std::string name = "RowParallelLinear")
      : comm(&c), layer(std::move(name)), in_total(in_features) {
    const int p = c.size(), r = c.rank();
    const std::string what = layer + "(in " + std::to_string(in_features) + ", out " + std::to_string(out_features) + ")";
    detail::check_divisible(what, "in_features", in_features, p);
    const index_t n = in_features / p;
    nn::Linear<T, Bias> full(in_features, out_features, seed);
    weight = Parameter<T>("weight", Shape{n, out_features});
    bias = Parameter<T>("bias", Shape{Bias ? out_features : 0});
    const T* src = full.weight.value.data() + r * n * out_features;  // rows are contiguous
    std::copy(src, src + n * out_features, weight.value.data());
    if constexpr (Bias) std::copy(full.bias.value.data(), full.bias.value.data() + out_features, bias.value.data());
    detail::check_same_shard(c, what, "weight", weight.shape());
  }

  index_t in_features() const { return in_total; }
  index_t out_features() const { return weight.shape()[1]; }

  // x: (B, I/p) this rank's slice (or (B, I) replicated without InputIsParallel) -> (B, O)
  template <Operand X>
  auto operator()(X&& x) {
    auto y = [&] {
      if constexpr (InputIsParallel)
        return reduce_from(matmul(std::forward<X>(x), weight), *comm);
      else
        return reduce_from(matmul(scatter_to(std::forward<X>(x), *comm, 1), weight), *comm);
    }();
    if constexpr (Bias)
      return std::move(y) + bias;
    else
      return y;
  }

  template <class F>
  void for_each_parameter(F&& f) {
    f("weight", weight);
    if constexpr (Bias) f("bias", bias);
  }
};

// fc2(gelu(fc1(x))): fc1 column-parallel on CommIn (its backward allreduce),
// fc2 row-parallel on CommOut (its forward allreduce). The unsharded twin is
// nn::Linear(I, H, seed) then nn::Linear(H, O, seed + 1).
template <class CommIn, class CommOut, class T = float>
struct ParallelMLP {
  ColumnParallelLinear<CommIn, T> fc1;
  RowParallelLinear<CommOut, T> fc2;

  ParallelMLP(CommIn& in, CommOut& out, index_t in_features, index_t hidden, index_t out_features, std::uint64_t seed = 0,
              const std::string& name = "ParallelMLP")
      : fc1((check_sizes(in, out, name, in_features, hidden, out_features), in), in_features, hidden, seed, name + ".fc1"),
        fc2(out, hidden, out_features, seed + 1, name + ".fc2") {}

  static int check_sizes(CommIn& in, CommOut& out, const std::string& name, index_t i, index_t h, index_t o) {
    if (in.size() != out.size())
      throw_error<ValueError>(name, "(", i, ", ", h, ", ", o, "): fc1's communicator has ", in.size(), " ranks but fc2's has ",
                              out.size(), " (both halves must split the hidden layer the same way)");
    if (in.rank() != out.rank())
      throw_error<ValueError>(name, ": this process is rank ", in.rank(), " of fc1's communicator but rank ", out.rank(),
                              " of fc2's (build both from the same tensor-parallel group, ordered alike)");
    detail::check_divisible(name + "(" + std::to_string(i) + ", " + std::to_string(h) + ", " + std::to_string(o) + ")",
                            "hidden size", h, in.size());
    return 0;
  }

  // x: (B, I) replicated -> (B, O) replicated
  template <Operand X>
  auto operator()(X&& x) {
    return fc2(gelu(fc1(std::forward<X>(x))));
  }

  template <class F>
  void for_each_parameter(F&& f) {
    fc1.for_each_parameter([&](const std::string& n, Parameter<T>& p) { f("fc1." + n, p); });
    fc2.for_each_parameter([&](const std::string& n, Parameter<T>& p) { f("fc2." + n, p); });
  }
};

// Rows [r V/p, (r+1) V/p) of the unsharded nn::Embedding(V, D, seed). An
// index outside this rank's rows reads row 0 times a zero mask, so its
// adjoint adds exactly zero; reduce_from sums the one rank's row.
template <class Comm, class T = float>
struct VocabParallelEmbedding {
  Parameter<T> weight;  // (V/p, D)
  Comm* comm;
  std::string layer;
  index_t vocab = 0, first = 0;
  Tensor<std::int32_t> local;  // (N,) indices into this rank's rows
  Tensor<T> mask;              // (N, 1) 1 where this rank holds the row

  VocabParallelEmbedding(Comm& c, index_t num_embeddings, index_t dim, std::uint64_t seed = 0,
                         std::string name = "VocabParallelEmbedding")
      : comm(&c), layer(std::move(name)), vocab(num_embeddings) {
    const int p = c.size();
    const std::string what = layer + "(" + std::to_string(num_embeddings) + ", " + std::to_string(dim) + ")";
    detail::check_divisible(what, "num_embeddings", num_embeddings, p);
    const index_t n = num_embeddings / p;
    first = n * c.rank();
    nn::Embedding<T> full(num_embeddings, dim, seed);
    weight = Parameter<T>("weight", Shape{n, dim});
    const T* src = full.weight.value.data() + first * dim;
    std::copy(src, src + n * dim, weight.value.data());
    detail::check_same_shard(c, what, "weight", weight.shape());
  }

  // indices (N,) global -> (N, D) replicated. The layer keeps the local
  // indices and mask it builds here until the next call.
  template <class I>
  auto operator()(const Tensor<I>& indices) {
    if (indices.shape().rank != 1)
      throw_error<ShapeError>(layer, ": indices must have shape (N,), got ", indices.shape());
    const index_t n = indices.numel(), rows = weight.shape()[0];
    if (local.numel() != n) {
      local = Tensor<std::int32_t>(Shape{n});
      mask = Tensor<T>(Shape{n, 1});
    }
    for (index_t i = 0; i < n; ++i) {
      const auto v = static_cast<index_t>(indices.data()[i]);
      if (v < 0 || v >= vocab)
        throw_error<ValueError>(layer, ": index ", v, " at position ", i, " is outside the vocabulary [0, ", vocab, ")");
      const bool mine = v >= first && v < first + rows;
      local.data()[i] = static_cast<std::int32_t>(mine ? v - first : 0);
      mask.data()[i] = mine ? T(1) : T(0);
    }
    return reduce_from(EmbeddingNode<T, std::int32_t>(weight, local.view()) * mask, *comm);
  }

  template <class F>
  void for_each_parameter(F&& f) {
    f("weight", weight);
  }
};

// A pre-norm residual MLP block with sequence parallelism: y_r = x_r +
// b2 + reduce_scatter(gelu(all_gather(LN(x_r)) W1_r + b1_r) W2_r) along the
// token axis. LN's gamma, beta and b2 are replicated but see only this
// rank's tokens: after backward, reduce_replicated_grads() sums their
// gradients over the ranks (Megatron's sequence-parallel allreduce). The
// unsharded twin is LayerNorm(C) then nn::Linear(C, H, seed), nn::Linear(H, C, seed + 1).
template <class Comm, class T = float>
struct SequenceParallelMLP {
  nn::LayerNorm<T> ln;
  Parameter<T> w1, b1;  // (C, H/p), (H/p): columns of fc1
  Parameter<T> w2, b2;  // (H/p, C): rows of fc2; (C) replicated
  Comm* comm;
  std::string layer;

  SequenceParallelMLP(Comm& c, index_t features, index_t hidden, std::uint64_t seed = 0, std::string name = "SequenceParallelMLP")
      : ln(features), comm(&c), layer(std::move(name)) {
    const int p = c.size(), r = c.rank();
    const std::string what = layer + "(" + std::to_string(features) + ", " + std::to_string(hidden) + ")";
    detail::check_divisible(what, "hidden size", hidden, p);
    const index_t n = hidden / p;
    nn::Linear<T> fc1(features, hidden, seed), fc2(hidden, features, seed + 1);
    w1 = Parameter<T>("fc1.weight", Shape{features, n});
    b1 = Parameter<T>("fc1.bias", Shape{n});
    w2 = Parameter<T>("fc2.weight", Shape{n, features});
    b2 = Parameter<T>("fc2.bias", Shape{features});
    detail::copy_columns(fc1.weight.value.data(), features, hidden, r * n, n, w1.value.data());
    detail::copy_columns(fc1.bias.value.data(), 1, hidden, r * n, n, b1.value.data());
    const T* rows = fc2.weight.value.data() + r * n * features;
    std::copy(rows, rows + n * features, w2.value.data());
    std::copy(fc2.bias.value.data(), fc2.bias.value.data() + features, b2.value.data());
    detail::check_same_shard(c, what, "fc1.weight", w1.shape());
  }

  // x_r: (T/p, C) this rank's tokens -> (T/p, C)
  // (x is read twice: let evaluates it once, so a stack of blocks runs each block's collectives once.)
  template <Operand X>
  auto operator()(X&& x) {
    return let(std::forward<X>(x), [this](auto v) {
      auto full = all_gather(ln(v), *comm, 0);                           // (T, C)
      auto h = gelu(matmul(std::move(full), w1) + b1);                  // (T, H/p)
      return v + reduce_scatter(matmul(std::move(h), w2), *comm, 0) + b2;  // (T/p, C)
    });
  }

  // After backward: the replicated parameters' gradients summed over the ranks' tokens.
  void reduce_replicated_grads() {
    for (Parameter<T>* q : {&ln.gamma, &ln.beta, &b2}) comm->allreduce(q->grad.data(), q->grad.data(), static_cast<std::size_t>(q->numel()));
  }

  template <class F>
  void for_each_parameter(F&& f) {
    f("ln.weight", ln.gamma);
    f("ln.bias", ln.beta);
    f("fc1.weight", w1);
    f("fc1.bias", b1);
    f("fc2.weight", w2);
    f("fc2.bias", b2);
  }
};

}  // namespace weft::parallel::tensor_parallel
