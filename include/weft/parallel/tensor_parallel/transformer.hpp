// Tensor- and sequence-parallel transformer layers (Megatron-LM, Shoeybi et
// al. 2019; sequence parallelism, Korthikanti et al. 2022), the sharded twins
// of nn::MultiHeadAttention and nn::TransformerBlock (nn/transformer.hpp):
// each holds the slices of the parameters the unsharded layer initialises with
// the same seed, so the model computes the same function at any degree p.
//
// Dimension legend: N batch, T tokens, C width, H heads, Dh = C / H, F MLP
// width; p ranks of a layer's communicator, r this rank; heads [r H/p, (r+1) H/p).
//
//   ParallelMultiHeadAttention   qkv W (C, 3C/p) = columns [q_r | k_r | v_r] of nn's (C, 3C),
//                                b (3C/p); proj W (C/p, C) = rows r C/p.. of nn's, b (C) replicated
//     tensor parallel            x (N, T, C) replicated
//                                column_matmul(x, W_qkv) + b   (N, T, 3C/p)  backward: allreduce
//                                attention on this rank's H/p heads  (N, H/p, T, Dh)
//                                reduce_from(merged W_proj) + b      (N, T, C)  forward: allreduce
//     sequence parallel          x_r (N, T/p, C) this rank's tokens
//                                gathered_matmul(x_r, W_qkv) + b  (N, T, 3C/p)  fwd all-gather, bwd reduce-scatter
//                                reduce_scatter(merged W_proj, axis 1) + b      (N, T/p, C)
//
//   ParallelTransformerBlock     pre-LN, as nn::TransformerBlock, with residual dropout:
//                                y = x + drop(attn(ln1 x));  out = y + drop(mlp(ln2 y))
//     tensor parallel            LN, dropout and residuals replicated on (N, T, C); per block
//                                2 allreduces of N T C forward (attn proj, fc2), 2 backward
//                                (qkv's and fc1's input gradient, each under its weight gemm)
//     sequence parallel          LN, dropout and residuals on (N, T/p, C); the allreduces become
//                                an all-gather before qkv / fc1 and a reduce-scatter after proj /
//                                fc2: the same bytes, activations of those regions 1/p. The
//                                replicated parameters (LN, proj and fc2 biases) see only this
//                                rank's tokens: reduce_replicated_grads() sums their gradients.
//
//   ParallelTransformerStack<L>  L blocks, block l built with seed + 100 l (nn's twin: a stack of
//                                nn::TransformerBlock(cfg, seed + 100 l)).
//
// Dropout: the residual dropouts draw their masks over the full (N, T, C)
// tensor's element numbers (ShardDropout, sequence_dropout.hpp), so a rank's
// mask is its slice of the unsharded mask for the same seed. Dropout on the
// attention probabilities is refused: the fused kernel numbers that mask over
// (N, H, T, T) with this rank's heads counted from 0, so a sharded run would
// draw a different mask (the kernel would need the heads' offset).
//
// Bad configuration is a sentence naming the layer and the sizes: heads or
// width not divisible by p, attention and MLP on communicators of different
// sizes or rank orders, a rank whose shard shape differs from rank 0's.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <utility>

#include "../../core/error.hpp"
#include "../../expr/attention.hpp"
#include "../../expr/elementwise.hpp"
#include "../../expr/let.hpp"
#include "../../expr/matmul.hpp"
#include "../../expr/view.hpp"
#include "../../nn/layer_norm.hpp"
#include "../../nn/transformer.hpp"
#include "collectives.hpp"
#include "column_matmul.hpp"
#include "layers.hpp"
#include "sequence_dropout.hpp"

namespace weft::parallel::tensor_parallel {

template <class Comm, class T = float, bool SequenceParallel = false>
struct ParallelMultiHeadAttention {
  Parameter<T> qkv_weight;   // (C, 3C/p)
  Parameter<T> qkv_bias;     // (3C/p)
  Parameter<T> proj_weight;  // (C/p, C)
  Parameter<T> proj_bias;    // (C) replicated
  nn::AttentionConfig cfg;
  Comm* comm;
  std::string layer;
  bool overlap = true;  // backward: the qkv input gradient's collective under the qkv weight gemm

  ParallelMultiHeadAttention(Comm& c, const nn::AttentionConfig& config, std::uint64_t seed = 0,
                             std::string name = "ParallelMultiHeadAttention")
      : cfg(config), comm(&c), layer(std::move(name)) {
    const int p = c.size(), r = c.rank();
    const index_t dim = cfg.dim, heads = cfg.heads;
    const std::string what = layer + "(width " + std::to_string(dim) + ", heads " + std::to_string(heads) + ")";
    if (heads <= 0 || dim <= 0 || dim % heads != 0)
      throw_error<ValueError>(what, ": width ", dim, " does not split into ", heads, " heads");
    if (heads % p != 0)
      throw_error<ShapeError>(what, ": ", heads, " heads are not divisible by the tensor-parallel degree ", p,
                              " (each rank computes a whole number of heads)");
    if (cfg.dropout != 0)
      throw_error<ValueError>(what, ": dropout ", cfg.dropout,
                              " on the attention probabilities is not supported with heads split across ranks (the fused "
                              "kernel numbers its mask by this rank's heads, so it would differ from the unsharded model's); "
                              "use the block's residual dropout");
    const index_t n = dim / p;  // this rank's H/p heads are n consecutive features of q, k and v
    nn::MultiHeadAttention<T> full(cfg, seed);  // the unsharded layer's values, sliced
    qkv_weight = Parameter<T>("qkv.weight", Shape{dim, 3 * n});
    qkv_bias = Parameter<T>("qkv.bias", Shape{3 * n});
    proj_weight = Parameter<T>("proj.weight", Shape{n, dim});
    proj_bias = Parameter<T>("proj.bias", Shape{dim});
    for (index_t part = 0; part < 3; ++part) {  // q, k, v: columns [part C + r n, part C + (r + 1) n)
      for (index_t i = 0; i < dim; ++i)
        for (index_t j = 0; j < n; ++j)
          qkv_weight.value.data()[i * 3 * n + part * n + j] = full.qkv.weight.value.data()[i * 3 * dim + part * dim + r * n + j];
      for (index_t j = 0; j < n; ++j) qkv_bias.value.data()[part * n + j] = full.qkv.bias.value.data()[part * dim + r * n + j];
    }
    const T* rows = full.proj.weight.value.data() + r * n * dim;  // input features = heads, rows contiguous
    std::copy(rows, rows + n * dim, proj_weight.value.data());
    std::copy(full.proj.bias.value.data(), full.proj.bias.value.data() + dim, proj_bias.value.data());
    detail::check_same_shard(c, what, "qkv weight", qkv_weight.shape());
  }

  index_t local_heads() const { return cfg.heads / comm->size(); }

  // Tensor parallel: x (N, T, C) replicated -> (N, T, C) replicated.
  // Sequence parallel: x_r (N, T/p, C) this rank's tokens -> (N, T/p, C).
  template <Operand X>
  auto operator()(X&& x) {
    const Shape s = as_expr(x).shape();
    if (s.rank != 3 || s[2] != cfg.dim)
      throw_error<ShapeError>(layer, ": input ", s, " is not (N, T", SequenceParallel ? "/p" : "", ", ", cfg.dim, ") on rank ",
                              comm->rank());
    const int p = comm->size();
    const index_t nb = s[0], t = SequenceParallel ? s[1] * p : s[1], h = local_heads(), dh = cfg.dim / cfg.heads;
    auto qkv = [&] {
      if constexpr (SequenceParallel)
        return gathered_matmul(std::forward<X>(x), qkv_weight, *comm, 1, overlap) + qkv_bias;  // (N, T, 3C/p)
      else
        return column_matmul(std::forward<X>(x), qkv_weight, *comm, overlap) + qkv_bias;  // (N, T, 3C/p)
    }();
    const AttentionOptions o{.causal = cfg.causal, .scale = {}, .dropout = 0.0f, .seed = 0};
    auto heads_of = [=](auto part) { return permute(reshape(part, Shape{nb, t, h, dh}), 0, 2, 1, 3); };  // (N, H/p, T, Dh)
    auto attended = let(std::move(qkv), [=](auto q3) {
      auto [q, k, v] = chunk<3>(q3, -1);
      return scaled_dot_product_attention(heads_of(q), heads_of(k), heads_of(v), o);
    });
    auto merged = matmul(reshape(permute(std::move(attended), 0, 2, 1, 3), Shape{nb, t, h * dh}), proj_weight);  // (N, T, C) partial
    if constexpr (SequenceParallel)
      return reduce_scatter(std::move(merged), *comm, 1) + proj_bias;  // (N, T/p, C)
    else
      return reduce_from(std::move(merged), *comm) + proj_bias;  // (N, T, C)
  }

  template <class F>
  void for_each_parameter(F&& f) {
    f("qkv.weight", qkv_weight);
    f("qkv.bias", qkv_bias);
    f("proj.weight", proj_weight);
    f("proj.bias", proj_bias);
  }
};

// The block's configuration: nn::BlockConfig's sizes (attn_dropout must be 0)
// and the residual dropout rate.
template <class CommAttn, class CommMlp, class T = float, bool SequenceParallel = false>
struct ParallelTransformerBlock {
  nn::LayerNorm<T> ln1, ln2;
  ParallelMultiHeadAttention<CommAttn, T, SequenceParallel> attn;
  ParallelMLP<CommMlp, CommMlp, T> mlp;  // fc1 column-, fc2 row-parallel (the same communicator)
  ShardDropout drop1, drop2;             // residual dropout (seeds mix64(seed + 20), mix64(seed + 21))
  std::string layer;

  ParallelTransformerBlock(CommAttn& ca, CommMlp& cm, const nn::BlockConfig& c, std::uint64_t seed = 0, float dropout = 0,
                           std::string name = "ParallelTransformerBlock")
      : ln1(c.dim),
        ln2(c.dim),
        attn((check(ca, cm, c, name), ca), nn::AttentionConfig{c.dim, c.heads, c.causal, c.attn_dropout}, seed, name + ".attn"),
        mlp(cm, cm, c.dim, c.mlp ? c.mlp : 4 * c.dim, c.dim, seed + 10, name + ".mlp"),
        drop1(dropout, mix64(seed + 20)),
        drop2(dropout, mix64(seed + 21)),
        layer(std::move(name)) {}

  static void check(CommAttn& ca, CommMlp& cm, const nn::BlockConfig& c, const std::string& name) {
    const std::string what = name + "(width " + std::to_string(c.dim) + ", heads " + std::to_string(c.heads) + ", mlp " +
                             std::to_string(c.mlp ? c.mlp : 4 * c.dim) + ")";
    if (ca.size() != cm.size())
      throw_error<ValueError>(what, ": the attention's communicator has ", ca.size(), " ranks but the MLP's has ", cm.size(),
                              " (both must split the block over the same tensor-parallel group)");
    if (ca.rank() != cm.rank())
      throw_error<ValueError>(what, ": this process is rank ", ca.rank(), " of the attention's communicator but rank ", cm.rank(),
                              " of the MLP's (build both from the same group, ordered alike)");
  }

  void set_overlap(bool on) {
    attn.overlap = on;
    mlp.fc1.overlap = on;
  }
  void set_training(bool on) { drop1.training = drop2.training = on; }

  // Tensor parallel: x (N, T, C) replicated. Sequence parallel: x_r (N, T/p, C),
  // this rank's tokens [r T/p, (r + 1) T/p). Same shape out.
  template <Operand X>
  auto operator()(X&& x) {
    const std::uint64_t k1 = drop1.next_key(), k2 = drop2.next_key();  // once per call (the bodies run more than once)
    return let(std::forward<X>(x), [this, k1, k2](auto x0) {
      return let(x0 + drop(drop1, k1, attn(ln1(x0))), [this, k2](auto y) { return y + drop(drop2, k2, mlp_of(ln2(y))); });
    });
  }

  // After backward, under sequence parallelism: the replicated parameters'
  // gradients summed over the ranks' tokens (Megatron's sequence-parallel
  // allreduce of the LayerNorm and bias gradients). Nothing to do otherwise.
  void reduce_replicated_grads() {
    if constexpr (SequenceParallel) {
      for (Parameter<T>* q : {&ln1.gamma, &ln1.beta, &attn.proj_bias})
        attn.comm->allreduce(q->grad.data(), q->grad.data(), static_cast<std::size_t>(q->numel()));
      for (Parameter<T>* q : {&ln2.gamma, &ln2.beta, &mlp.fc2.bias})
        mlp.fc2.comm->allreduce(q->grad.data(), q->grad.data(), static_cast<std::size_t>(q->numel()));
    }
  }

  // nn::TransformerBlock's names.
  template <class F>
  void for_each_parameter(F&& f) {
    f("ln1.weight", ln1.gamma);
    f("ln1.bias", ln1.beta);
    attn.for_each_parameter([&](const std::string& n, Parameter<T>& q) { f("attn." + n, q); });
    f("ln2.weight", ln2.gamma);
    f("ln2.bias", ln2.beta);
    mlp.for_each_parameter([&](const std::string& n, Parameter<T>& q) { f(n, q); });
  }

 private:
  // (N, T/p, C) under sequence parallelism: this rank's tokens of the full (N, T, C).
  template <class E>
  auto drop(const ShardDropout& d, std::uint64_t key, E&& e) {
    const Shape s = as_expr(e).shape();
    if constexpr (SequenceParallel)
      return d.apply(std::forward<E>(e), key, 1, s[1] * attn.comm->rank(), s[1] * attn.comm->size());
    else
      return d.apply(std::forward<E>(e), key, 1, 0, s[1]);
  }

  template <class E>
  auto mlp_of(E&& h) {
    if constexpr (SequenceParallel) {
      auto& c = *mlp.fc2.comm;
      auto hidden = gelu(gathered_matmul(std::forward<E>(h), mlp.fc1.weight, *mlp.fc1.comm, 1, mlp.fc1.overlap) + mlp.fc1.bias);
      return reduce_scatter(matmul(std::move(hidden), mlp.fc2.weight), c, 1) + mlp.fc2.bias;  // (N, T/p, C)
    } else {
      return mlp(std::forward<E>(h));
    }
  }
};

// L blocks applied in order; block l is built with seed + 100 l.
template <class CommAttn, class CommMlp, std::size_t L, class T = float, bool SequenceParallel = false>
struct ParallelTransformerStack {
  using Block = ParallelTransformerBlock<CommAttn, CommMlp, T, SequenceParallel>;
  static_assert(L >= 1, "ParallelTransformerStack: at least one block");
  std::deque<Block> blocks;  // (a deque: the blocks' expressions hold `this`, so they never move)

  ParallelTransformerStack(CommAttn& ca, CommMlp& cm, const nn::BlockConfig& c, std::uint64_t seed = 0, float dropout = 0,
                           const std::string& name = "ParallelTransformerStack") {
    for (std::size_t l = 0; l < L; ++l)
      blocks.emplace_back(ca, cm, c, seed + 100 * l, dropout, name + ".blocks." + std::to_string(l));
  }

  template <Operand X>
  auto operator()(X&& x) {
    return apply<0>(std::forward<X>(x));
  }

  void set_overlap(bool on) {
    for (auto& b : blocks) b.set_overlap(on);
  }
  void set_training(bool on) {
    for (auto& b : blocks) b.set_training(on);
  }
  void reduce_replicated_grads() {
    for (auto& b : blocks) b.reduce_replicated_grads();
  }

  template <class F>
  void for_each_parameter(F&& f) {
    for (std::size_t l = 0; l < L; ++l)
      blocks[l].for_each_parameter([&](const std::string& n, Parameter<T>& q) { f("blocks." + std::to_string(l) + "." + n, q); });
  }

 private:
  template <std::size_t I, class X>
  auto apply(X&& x) {
    if constexpr (I + 1 == L)
      return blocks[I](std::forward<X>(x));
    else
      return apply<I + 1>(blocks[I](std::forward<X>(x)));
  }
};

}  // namespace weft::parallel::tensor_parallel
