// The models of the GPU training-step bench (bench/gpu_step.cu), on any
// device, with the inputs and the weight dump its PyTorch peer
// (bench/gpu_step_torch.py) reads, so both start from the same weights:
//   Mlp  784-256-256-10, ReLU, cross-entropy (bench/mlp.hpp's model)
//   Vit  examples/05_vit's network: 49 patch tokens of 16 pixels, width 64,
//        4 heads, 3 pre-LN blocks (MLP 128, exact GELU), LayerNorm, mean pool
// Dimension legend: B batch, P = 49 patches, K = 16 pixels per patch, C = 64.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <weft/nn/nn.hpp>
#include <weft/nn/transformer.hpp>
#include <weft/weft.hpp>

namespace stepbench {

using namespace weft;

template <class D>
struct Mlp {
  static constexpr const char* name = "mlp";
  nn::Linear<float, true, D> l1{784, 256, 1}, l2{256, 256, 2}, l3{256, 10, 3};
  nn::Registry<float, D> params;
  Mlp() { params.add("l1", l1).add("l2", l2).add("l3", l3); }
  Mlp(const Mlp&) = delete;
  static Shape input_shape(index_t b) { return Shape{b, 784}; }  // (B, 784)
  template <class X, class Y>
  auto loss(X& x, Y& y) {
    return cross_entropy(l3(relu(l2(relu(l1(x))))), y);
  }
};

template <class D>
struct Vit {
  static constexpr const char* name = "vit";
  static constexpr index_t dim = 64, heads = 4, mlp = 128, patches = 49, pixels = 16;
  nn::PatchEmbedding<float, D> embed{1, 4, dim, 11};
  nn::PositionalEmbedding<float, D> pos{patches, dim, 12};
  nn::TransformerBlock<float, D> b1{{.dim = dim, .heads = heads, .mlp = mlp}, 13};
  nn::TransformerBlock<float, D> b2{{.dim = dim, .heads = heads, .mlp = mlp}, 14};
  nn::TransformerBlock<float, D> b3{{.dim = dim, .heads = heads, .mlp = mlp}, 15};
  nn::LayerNorm<float, D> norm{dim};
  nn::Linear<float, true, D> head{dim, 10, 16};
  nn::Registry<float, D> params;
  Vit() {
    params.add("embed", embed).add("pos", pos).add("block1", b1).add("block2", b2).add("block3", b3).add("norm", norm).add("head", head);
  }
  Vit(const Vit&) = delete;
  static Shape input_shape(index_t b) { return Shape{b, patches, pixels}; }  // (B, P, K)
  template <class X, class Y>
  auto loss(X& x, Y& y) {
    return cross_entropy(head(nn::mean_pool(norm(b3(b2(b1(pos(embed(x)))))))), y);
  }
};

// The fixed batch: x_i = ((i * 2654435761) mod 2^32) / 2^32 over the flattened
// input, labels (7 b) mod 10 (the peer computes the same).
inline Tensor<float> inputs(const Shape& s) {
  Tensor<float> x(s);
  for (index_t i = 0; i < x.numel(); ++i)
    x.data()[i] = static_cast<float>(static_cast<double>((static_cast<std::uint64_t>(i) * 2654435761ull) % 4294967296ull) /
                                     4294967296.0);
  return x;
}
inline Tensor<std::int32_t> labels(index_t b) {
  Tensor<std::int32_t> y(Shape{b});
  for (index_t i = 0; i < b; ++i) y.data()[i] = static_cast<std::int32_t>((7 * i) % 10);
  return y;
}

// Per parameter, in registration order: u32 name length, the name, u32 rank,
// i64 dims, float32 values (host copies given by `values`).
template <class Reg, class Values>
void dump(const Reg& params, const std::string& path, Values&& values) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw_error<Error>("gpu_step: cannot write ", path);
  for (auto* p : params) {
    const std::uint32_t n = static_cast<std::uint32_t>(p->name.size()), rank = static_cast<std::uint32_t>(p->shape().rank);
    std::fwrite(&n, 4, 1, f);
    std::fwrite(p->name.data(), 1, n, f);
    std::fwrite(&rank, 4, 1, f);
    for (int d = 0; d < p->shape().rank; ++d) {
      const std::int64_t v = p->shape()[d];
      std::fwrite(&v, 8, 1, f);
    }
    std::vector<float> h = values(*p);
    std::fwrite(h.data(), 4, h.size(), f);
  }
  if (std::fclose(f) != 0) throw_error<Error>("gpu_step: writing ", path, " failed");
}

}  // namespace stepbench
