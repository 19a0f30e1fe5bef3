// Transformer layers built from expression nodes (no node is defined here):
//   MultiHeadAttention   fused qkv projection, heads, fused attention
//                        (expr/attention.hpp), output projection, causal option
//   TransformerBlock     pre-LN: x + attn(ln1 x), then + mlp(ln2 x), GELU MLP
//                        (erf form by default; GeluForm::tanh, GPT-2's, is fused
//                        into fc1's gemm epilogue on CUDA: expr/affine_gelu.hpp)
//   PatchEmbedding       image (N, Ci, Hi, Wi) -> patch tokens (N, P, Ci p p) -> (N, P, C)
//   PositionalEmbedding  learned (P, C) added to every sequence
// mean_pool(x) pools tokens (N, T, C) -> (N, C) (ViT without a class token).
// Dimension legend: N batch, T tokens, C model width, H heads, Dh = C / H
// head width, F MLP width.
// Opt-in header like nn/linear.hpp: matmuls and attention use CBLAS on the
// host. Every layer takes a Device (default cpu) for its parameters.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "../expr/attention.hpp"
#include "../expr/elementwise.hpp"
#include "../expr/let.hpp"
#include "../expr/matmul.hpp"
#include "../expr/reduce.hpp"
#include "../expr/view.hpp"
#include "init.hpp"
#include "layer_norm.hpp"
#include "linear.hpp"
#include "rng.hpp"

namespace weft::nn {

// Visit a sub-layer's parameters under "prefix.".
template <class Layer, class F>
void for_each_parameter_in(Layer& layer, const std::string& prefix, F&& f) {
  layer.for_each_parameter([&](const std::string& name, auto& p) { f(prefix + "." + name, p); });
}

struct AttentionConfig {
  index_t dim = 0;        // C
  index_t heads = 1;      // H (C % H == 0)
  bool causal = false;
  float dropout = 0;      // on the attention probabilities (training only)
};

template <class T = float, class Device = cpu>
struct MultiHeadAttention {
  Linear<T, true, Device> qkv;   // (C, 3C): columns [q | k | v], head h at [h Dh, (h + 1) Dh) within each
  Linear<T, true, Device> proj;  // (C, C)
  AttentionConfig cfg;
  bool training = true;
  std::uint64_t dropout_seed = 0;  // advanced by one per call when dropout is on

  MultiHeadAttention(const AttentionConfig& c, std::uint64_t seed = 0)
      : qkv(c.dim, 3 * c.dim, seed), proj(c.dim, c.dim, seed + 1), cfg(c), dropout_seed(mix64(seed + 2)) {
    if (c.heads <= 0 || c.dim % c.heads != 0)
      throw_error<ValueError>("MultiHeadAttention: width ", c.dim, " does not split into ", c.heads, " heads");
  }

  // x (N, T, C) -> (N, T, C).
  template <Operand X>
  auto operator()(X&& x) {
    const Shape s = as_expr(x).shape();
    if (s.rank != 3 || s[2] != cfg.dim)
      throw_error<ShapeError>("MultiHeadAttention: input ", s, " is not (N, T, ", cfg.dim, ")");
    const index_t n = s[0], t = s[1], h = cfg.heads, dh = cfg.dim / cfg.heads;
    const AttentionOptions o{.causal = cfg.causal, .scale = {}, .dropout = training ? cfg.dropout : 0.0f,
                             .seed = training && cfg.dropout > 0 ? dropout_seed++ : 0};
    // One projection for q, k and v, evaluated once and read in place by the
    // three views (their adjoints go straight into the let's buffer); the
    // output projection sits inside the let, so the merge of the heads is a
    // view of the attention node's own value.
    auto heads_of = [=](auto part) { return permute(reshape(part, Shape{n, t, h, dh}), 0, 2, 1, 3); };  // (N, H, T, Dh)
    const index_t c = cfg.dim;
    return let(qkv(std::forward<X>(x)), [this, heads_of, o, n, t, c](auto p) {
      auto [q, k, v] = chunk<3>(p, -1);
      auto attended = scaled_dot_product_attention(heads_of(q), heads_of(k), heads_of(v), o);  // (N, H, T, Dh)
      return proj(reshape(permute(attended, 0, 2, 1, 3), Shape{n, t, c}));
    });
  }

  template <class F>
  void for_each_parameter(F&& f) {
    for_each_parameter_in(qkv, "qkv", f);
    for_each_parameter_in(proj, "proj", f);
  }
};

struct BlockConfig {
  index_t dim = 0;         // C
  index_t heads = 1;       // H
  index_t mlp = 0;         // F (0: 4C)
  bool causal = false;
  float attn_dropout = 0;
};

// The MLP's GELU: the exact erf form (PyTorch's default, weft's gelu()) or the
// tanh form (GPT-2's, gelu_tanh()). A type parameter, not a config field: the
// two build different expression types. With tanh, gelu_tanh(fc1(...)) is the
// fused affine + GELU node, one cuBLASLt call on CUDA (its epilogue computes
// only the tanh form); the host computes what the unfused expression does.
enum class GeluForm { erf, tanh };

template <class T = float, class Device = cpu, GeluForm Gelu = GeluForm::erf>
struct TransformerBlock {
  LayerNorm<T, Device> ln1, ln2;
  MultiHeadAttention<T, Device> attn;
  Linear<T, true, Device> fc1, fc2;

  TransformerBlock(const BlockConfig& c, std::uint64_t seed = 0)
      : ln1(c.dim),
        ln2(c.dim),
        attn(AttentionConfig{c.dim, c.heads, c.causal, c.attn_dropout}, seed),
        fc1(c.dim, c.mlp ? c.mlp : 4 * c.dim, seed + 10),
        fc2(c.mlp ? c.mlp : 4 * c.dim, c.dim, seed + 11) {}

  // x (N, T, C) -> (N, T, C): y = x + attn(ln1 x); y + fc2(gelu(fc1(ln2 y))).
  template <Operand X>
  auto operator()(X&& x) {
    return let(std::forward<X>(x), [this](auto x0) {
      return let(x0 + attn(ln1(x0)), [this](auto y) { return y + fc2(activation(fc1(ln2(y)))); });
    });
  }

  // The MLP's GELU of fc1's output (an affine node: gelu_tanh fuses with it).
  template <class H>
  static auto activation(H&& h) {
    if constexpr (Gelu == GeluForm::tanh)
      return gelu_tanh(std::forward<H>(h));
    else
      return gelu(std::forward<H>(h));
  }

  void set_training(bool on) { attn.training = on; }

  template <class F>
  void for_each_parameter(F&& f) {
    for_each_parameter_in(ln1, "ln1", f);
    for_each_parameter_in(attn, "attn", f);
    for_each_parameter_in(ln2, "ln2", f);
    for_each_parameter_in(fc1, "fc1", f);
    for_each_parameter_in(fc2, "fc2", f);
  }
};

// Image to patch tokens: patchify() cuts images (N, Ci, Hi, Wi) into
// non-overlapping p x p patches, row-major over the patch grid, each patch
// flattened as (Ci, p, p) (the order of a stride-p convolution's kernel); the
// layer projects them, (N, P, Ci p p) -> (N, P, C). Images are data, so the
// cut is a copy on the host, not a node.
template <class T = float, class Device = cpu>
struct PatchEmbedding {
  index_t channels, patch;
  Linear<T, true, Device> proj;

  PatchEmbedding(index_t in_channels, index_t patch_size, index_t dim, std::uint64_t seed = 0)
      : channels(in_channels), patch(patch_size), proj(in_channels * patch_size * patch_size, dim, seed) {
    if (patch_size <= 0) throw_error<ValueError>("PatchEmbedding: patch size ", patch_size, " must be positive");
  }

  // images: n images of (channels, hi, wi) at `src` (contiguous); out: (n, P, channels p p).
  void patchify(const T* src, index_t n, index_t hi, index_t wi, T* out) const {
    const index_t p = patch;
    if (hi % p != 0 || wi % p != 0)
      throw_error<ShapeError>("PatchEmbedding: image ", hi, " x ", wi, " is not a whole number of ", p, " x ", p, " patches");
    const index_t gh = hi / p, gw = wi / p, per = channels * p * p;
    for (index_t b = 0; b < n; ++b)
      for (index_t gy = 0; gy < gh; ++gy)
        for (index_t gx = 0; gx < gw; ++gx) {
          T* dst = out + ((b * gh + gy) * gw + gx) * per;
          for (index_t c = 0; c < channels; ++c)
            for (index_t y = 0; y < p; ++y)
              for (index_t x = 0; x < p; ++x)
                *dst++ = src[((b * channels + c) * hi + gy * p + y) * wi + gx * p + x];
        }
  }
  index_t patches(index_t hi, index_t wi) const { return (hi / patch) * (wi / patch); }

  // patches (N, P, Ci p p) -> tokens (N, P, C)
  template <Operand X>
  auto operator()(X&& patches) {
    return proj(std::forward<X>(patches));
  }

  template <class F>
  void for_each_parameter(F&& f) {
    for_each_parameter_in(proj, "proj", f);
  }
};

// Learned positional embedding (P, C), N(0, 0.02^2) as ViT's, added to x (N, P, C).
template <class T = float, class Device = cpu>
struct PositionalEmbedding {
  Parameter<T, Device> weight;

  PositionalEmbedding(index_t positions, index_t dim, std::uint64_t seed = 0) : weight("weight", Shape{positions, dim}) {
    Rng rng(seed);
    init_on_host(weight, [&](Parameter<T>& w) {
      for (index_t i = 0; i < w.numel(); ++i) w.value.data()[i] = static_cast<T>(0.02 * rng.normal_double());
    });
  }

  template <Operand X>
  auto operator()(X&& x) {
    const Shape s = as_expr(x).shape();
    if (s.rank != 3 || s[1] != weight.shape()[0] || s[2] != weight.shape()[1])
      throw_error<ShapeError>("PositionalEmbedding: input ", s, " does not end in ", weight.shape());
    return std::forward<X>(x) + weight;
  }

  template <class F>
  void for_each_parameter(F&& f) {
    f("weight", weight);
  }
};

// Mean over tokens: (N, T, C) -> (N, C).
template <Operand X>
auto mean_pool(X&& x) {
  return mean(std::forward<X>(x), 1);
}

}  // namespace weft::nn
