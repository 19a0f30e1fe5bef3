// Tensor-parallel checks written once for every transport
// (test_tensor_parallel.cpp runs them on thread ranks, test_tensor_parallel_mpi.cpp
// under mpirun). Each returns "" or a sentence describing the first failure,
// so the MPI runner can make every rank agree.
//
// References: central differences in double through every collective node
// (lockstep on all ranks: the objective is the replicated loss, or the sum of
// the ranks' losses under sequence parallelism), and the unsharded model
// (nn::Linear / nn::Embedding with the same seeds, cross_entropy on full
// logits, nn::TransformerBlock) computed on every rank by itself.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/nn/nn.hpp>
#include <weft/parallel/tensor_parallel/cross_entropy.hpp>
#include <weft/parallel/tensor_parallel/layers.hpp>
#include <weft/parallel/tensor_parallel/transformer.hpp>
#include <weft/weft.hpp>

namespace tp_suite {

using namespace weft;
namespace tp = weft::parallel::tensor_parallel;

template <class Tr>
using RingComm = comm::Communicator<comm::Ring, Tr>;

inline std::string fail(std::ostringstream& os) { return os.str(); }

// Deterministic values, different per (seed, rank) when asked.
template <class T>
Tensor<T> filled(Shape s, std::uint64_t seed, double scale = 1.0) {
  Tensor<T> t(s);
  nn::Rng rng(seed);
  for (index_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(scale * rng.normal_double());
  return t;
}

// The scalar value of f(x) (value_and_grad's value; every rank calls it).
template <class F>
double value_of(F& f, const Tensor<double>& x) {
  auto [v, g] = value_and_grad(f, x);
  return v.data()[0];
}

// Central differences against value_and_grad's gradient, all ranks in lockstep.
//   replicated input: x is the same on every rank; each element is perturbed
//     on all ranks at once, and every rank's gradient must match.
//   sharded input: x differs per rank; rank q's element i is perturbed alone.
//   summed: the objective is the sum over ranks of f's value (sequence
//     parallel), else f's value itself (the same on every rank).
template <class Comm, class F>
std::string gradcheck_tp(Comm& c, F f, Tensor<double> x, bool replicated, bool summed, const char* what) {
  const double eps = 1e-6, atol = 1e-6, rtol = 1e-4;
  auto [v, g] = value_and_grad(f, x);
  auto objective = [&] {
    double val = value_of(f, x);
    if (summed) c.allreduce(&val, &val, 1);
    return val;
  };
  std::ostringstream os;
  const int owners = replicated ? 1 : c.size();
  for (int q = 0; q < owners; ++q)
    for (index_t i = 0; i < x.numel(); ++i) {
      const bool mine = replicated || q == c.rank();
      const double keep = x.data()[i];
      if (mine) x.data()[i] = keep + eps;
      const double fp = objective();
      if (mine) x.data()[i] = keep - eps;
      const double fm = objective();
      if (mine) x.data()[i] = keep;
      const double num = (fp - fm) / (2 * eps);
      if (mine && std::abs(g.data()[i] - num) > atol + rtol * std::abs(num) && os.str().empty())
        os << what << " on rank " << c.rank() << " of " << c.size() << ": element " << i << " analytic " << g.data()[i]
           << " numeric " << num;
    }
  return os.str();
}

// Every collective node, on one communicator (p must divide 4).
template <class Comm>
std::string gradcheck_every_node(Comm& c) {
  const int r = c.rank(), p = c.size();
  std::string err;
  auto keep = [&](std::string e) {
    if (err.empty()) err = std::move(e);
  };
  // copy_to ... reduce_from: a replicated input, a different function on each rank, a replicated loss.
  {
    Tensor<double> w = filled<double>(Shape{3, 4}, 100 + static_cast<std::uint64_t>(r));
    auto f = [&](auto x) { return sum(square(tp::reduce_from(tanh(tp::copy_to(x, c) * w), c))); };
    keep(gradcheck_tp(c, f, filled<double>(Shape{3, 4}, 7), true, false, "copy_to/reduce_from"));
  }
  // scatter_to ... gather_from along each axis.
  for (int axis : {0, 1}) {
    const Shape full = axis == 0 ? Shape{4, 3} : Shape{3, 4};
    Shape shard = full;
    shard[axis] /= p;
    Tensor<double> w = filled<double>(shard, 200 + static_cast<std::uint64_t>(r));
    auto f = [&](auto x) { return sum(sin(tp::gather_from(tanh(tp::scatter_to(x, c, axis)) * w, c, axis)) * x); };
    keep(gradcheck_tp(c, f, filled<double>(full, 8), true, false, axis == 0 ? "scatter_to/gather_from axis 0" : "scatter_to/gather_from axis 1"));
  }
  // all_gather ... reduce_scatter (sequence parallel): each rank its slice and its own loss.
  for (int axis : {0, 1}) {
    const Shape shard = axis == 0 ? Shape{2, 3} : Shape{3, 2};
    Shape full = shard;
    full[axis] *= p;
    Tensor<double> w = filled<double>(full, 300 + static_cast<std::uint64_t>(r));
    auto f = [&](auto x) { return sum(square(tp::reduce_scatter(tanh(tp::all_gather(x, c, axis)) * w, c, axis)) + x); };
    keep(gradcheck_tp(c, f, filled<double>(shard, 9 + static_cast<std::uint64_t>(r)), false, true,
                      axis == 0 ? "all_gather/reduce_scatter axis 0" : "all_gather/reduce_scatter axis 1"));
  }
  // The fused column products on rank-3 inputs: column_matmul (copy_to's
  // allreduce under dW) and gathered_matmul (all_gather along the tokens, its
  // reduce-scatter under dW), each rank its own weight columns.
  {
    Parameter<double> w("w", Shape{3, 2});
    Tensor<double> wv = filled<double>(Shape{3, 2}, 400 + static_cast<std::uint64_t>(r));
    std::copy(wv.data(), wv.data() + 6, w.value.data());
    auto f = [&](auto x) { return tp::reduce_from(sum(square(tanh(tp::column_matmul(x, w, c)))), c); };
    keep(gradcheck_tp(c, f, filled<double>(Shape{2, 2, 3}, 12), true, false, "column_matmul (rank 3)"));
    auto g = [&](auto x) { return tp::reduce_from(sum(sin(tp::gathered_matmul(x, w, c, 1)) * 0.7), c); };
    keep(gradcheck_tp(c, g, filled<double>(Shape{2, 2, 3}, 13 + static_cast<std::uint64_t>(r)), false, false, "gathered_matmul"));
  }
  // Vocab-parallel cross-entropy: each rank its classes (its own variable), one replicated loss.
  {
    Tensor<std::int32_t> labels(Shape{3});
    for (index_t i = 0; i < 3; ++i) labels.data()[i] = static_cast<std::int32_t>((5 * i + 2) % (2 * p));
    auto f = [&](auto x) { return tp::vocab_parallel_cross_entropy(x * 1.5, labels, c); };
    keep(gradcheck_tp(c, f, filled<double>(Shape{3, 2}, 11 + static_cast<std::uint64_t>(r)), false, false,
                      "vocab_parallel_cross_entropy"));
  }
  return err;
}

// ---- the unsharded model and its tensor-parallel twin -----------------------------

constexpr index_t kB = 8, kV = 16, kD = 8, kH = 16, kC = 12;
constexpr std::uint64_t kSeed = 42;

struct Batch {
  Tensor<std::int32_t> tokens{Shape{kB}}, labels{Shape{kB}};
  explicit Batch(int step) {
    nn::Rng rng(1000 + static_cast<std::uint64_t>(step));
    for (index_t i = 0; i < kB; ++i) {
      tokens.data()[i] = static_cast<std::int32_t>(rng.below(kV));
      labels.data()[i] = static_cast<std::int32_t>(rng.below(kC));
    }
  }
};

// embedding -> MLP (gelu) -> head -> cross-entropy, all unsharded.
struct Reference {
  nn::Embedding<float> emb{kV, kD, kSeed};
  nn::Linear<float> fc1{kD, kH, kSeed + 1}, fc2{kH, kD, kSeed + 2}, head{kD, kC, kSeed + 3};
  nn::Registry<float> reg;
  Reference() { reg.add("emb", emb).add("fc1", fc1).add("fc2", fc2).add("head", head); }
  auto loss(const Batch& b) { return cross_entropy(head(fc2(gelu(fc1(emb(b.tokens))))), b.labels); }
};

// The same with every layer split over its own communicator.
template <class CE, class CM1, class CM2, class CH>
struct Sharded {
  tp::VocabParallelEmbedding<CE> emb;
  tp::ParallelMLP<CM1, CM2> mlp;
  tp::ColumnParallelLinear<CH> head;
  CH* ch;
  nn::Registry<float> reg;
  Sharded(CE& ce, CM1& c1, CM2& c2, CH& h)
      : emb(ce, kV, kD, kSeed), mlp(c1, c2, kD, kH, kD, kSeed + 1), head(h, kD, kC, kSeed + 3), ch(&h) {
    reg.add("emb", emb).add("mlp", mlp).add("head", head);
  }
  auto loss(const Batch& b) { return tp::vocab_parallel_cross_entropy(head(mlp(emb(b.tokens))), b.labels, *ch); }
};

// Where rank r's shard of each sharded parameter sits in the reference's tensor:
// columns (column-parallel, a slice of the last axis) or rows (row-parallel, embedding).
// qkv: the columns [q_r | k_r | v_r] of a fused (.., 3C) projection, each a
// slice of its third.
enum class Split { none, columns, rows, qkv };
struct ParamPair {
  Parameter<float>* ref;
  Parameter<float>* shard;
  Split split;
};

template <class S>
std::vector<ParamPair> pairs(Reference& ref, S& s) {
  return {{&ref.emb.weight, &s.emb.weight, Split::rows},      {&ref.fc1.weight, &s.mlp.fc1.weight, Split::columns},
          {&ref.fc1.bias, &s.mlp.fc1.bias, Split::columns},  {&ref.fc2.weight, &s.mlp.fc2.weight, Split::rows},
          {&ref.fc2.bias, &s.mlp.fc2.bias, Split::none},     {&ref.head.weight, &s.head.weight, Split::columns},
          {&ref.head.bias, &s.head.bias, Split::columns}};
}

// Compare rank r's shard of `tensor` (value or grad) with the reference's slice.
inline std::string compare_shard(const char* what, const std::string& name, const Tensor<float>& full, const Tensor<float>& shard,
                                 Split split, int r, double tol) {
  const Shape fs = full.shape(), ss = shard.shape();
  const index_t cols_f = fs[fs.rank - 1], cols_s = ss[ss.rank - 1];
  const index_t rows = shard.numel() / cols_s;
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols_s; ++j) {
      index_t fi = i, fj = j;
      if (split == Split::columns) fj = j + r * cols_s;
      if (split == Split::rows) fi = i + r * rows;
      if (split == Split::qkv) fj = (j / (cols_s / 3)) * (cols_f / 3) + r * (cols_s / 3) + j % (cols_s / 3);
      const double a = shard.data()[i * cols_s + j], b = full.data()[fi * cols_f + fj];
      if (std::abs(a - b) > tol * (1 + std::abs(b))) {
        std::ostringstream os;
        os << what << " of " << name << " on rank " << r << ": element (" << i << ", " << j << ") is " << a << ", the unsharded model's "
           << b;
        return os.str();
      }
    }
  return "";
}

// Loss and every gradient at step 0, then the parameters after 20 AdamW steps,
// against the unsharded model. Each layer gets its own communicator (splits
// of the transport), as a user choosing a policy per layer would.
template <class Tr>
std::string exactness(Tr& t) {
  RingComm<Tr> ce(t.split(0, t.rank())), c1(t.split(0, t.rank())), c2(t.split(0, t.rank())), ch(t.split(0, t.rank()));
  Reference ref;
  Sharded<RingComm<Tr>, RingComm<Tr>, RingComm<Tr>, RingComm<Tr>> s(ce, c1, c2, ch);
  const int r = t.rank();
  auto ps = pairs(ref, s);
  nn::AdamW<float> opt_ref(ref.reg, {.lr = 1e-2f}), opt_s(s.reg, {.lr = 1e-2f});
  Workspace<cpu> ws_ref, ws_s;
  for (int step = 0; step < 20; ++step) {
    Batch b(step);
    opt_ref.zero_grad();
    opt_s.zero_grad();
    const float l_ref = weft::backward(ref.loss(b), ws_ref).data[0];
    const float l_s = weft::backward(s.loss(b), ws_s).data[0];
    if (std::abs(l_ref - l_s) > 1e-5f * (1 + std::abs(l_ref))) {
      std::ostringstream os;
      os << "step " << step << ": loss " << l_s << " on rank " << r << " of " << t.size() << ", unsharded " << l_ref;
      return os.str();
    }
    if (step == 0)
      for (auto& pp : ps)
        if (auto e = compare_shard("gradient", pp.ref->name, pp.ref->grad, pp.shard->grad, pp.split, r, 1e-5); !e.empty()) return e;
    opt_ref.step();
    opt_s.step();
  }
  for (auto& pp : ps)
    if (auto e = compare_shard("value after 20 AdamW steps", pp.ref->name, pp.ref->value, pp.shard->value, pp.split, r, 1e-4); !e.empty())
      return e;
  return "";
}

// Bytes all ranks together move in one training step of Sharded, ring
// allreduces of n floats moving 2 (p - 1) n * 4 bytes over all ranks:
//   forward   embedding reduce_from (B D), fc2 reduce_from (B D),
//             cross-entropy max (B) and sum-exp + target (2 B)
//   backward  fc1's copy_to (B D), head's copy_to (B D)
inline std::uint64_t bytes_per_step(int p) {
  const std::uint64_t n = 4 * kB * kD + 3 * kB;
  return 2 * static_cast<std::uint64_t>(p - 1) * n * sizeof(float);
}

// The transport's byte counter over one step, summed over ranks (fingerprints off).
template <class Tr>
std::string byte_count(Tr& t) {
  comm::CommOptions o;
  o.fingerprints = false;
  RingComm<Tr> ce(t.split(0, t.rank()), o), c1(t.split(0, t.rank()), o), c2(t.split(0, t.rank()), o), ch(t.split(0, t.rank()), o);
  Sharded<RingComm<Tr>, RingComm<Tr>, RingComm<Tr>, RingComm<Tr>> s(ce, c1, c2, ch);
  Workspace<cpu> ws;
  Batch b(0);
  weft::backward(s.loss(b), ws);  // warm
  ce.barrier();
  const std::uint64_t before = ce.sent_bytes();
  s.reg.zero_grad();
  weft::backward(s.loss(b), ws);
  std::int64_t moved = static_cast<std::int64_t>(ce.sent_bytes() - before), total = 0;
  ce.allreduce(&moved, &total, 1);
  const auto want = static_cast<std::int64_t>(bytes_per_step(t.size()));
  if (total != want) {
    std::ostringstream os;
    os << "one step on " << t.size() << " ranks moved " << total << " bytes, the formula says " << want;
    return os.str();
  }
  return "";
}

// ---- sequence parallelism: two pre-norm residual MLP blocks -----------------------

constexpr index_t kT = 8;  // tokens, split over the ranks

// Rows [r T/p, (r + 1) T/p) of x.
inline Tensor<float> token_shard(const Tensor<float>& x, int r, int p) {
  const index_t n = x.size(0) / p, c = x.size(1);
  Tensor<float> s(Shape{n, c});
  std::copy(x.data() + r * n * c, x.data() + (r + 1) * n * c, s.data());
  return s;
}

// Loss (summed over ranks), every gradient at step 0 and the values after 20
// AdamW steps against the unsharded blocks; and the bytes of one forward and
// backward: per block an all-gather and a reduce-scatter of T x C floats each
// way, (p - 1) T C x 4 bytes each over all ranks: the bytes of the two
// allreduces tensor parallelism alone would run.
template <class Tr>
std::string sequence_parallel(Tr& t) {
  comm::CommOptions o;
  o.fingerprints = false;
  RingComm<Tr> c(t.split(0, t.rank()), o);
  const int r = t.rank(), p = t.size();
  nn::LayerNorm<float> ln1(kD), ln2(kD);
  nn::Linear<float> a1(kD, kH, kSeed), a2(kH, kD, kSeed + 1), b1(kD, kH, kSeed + 10), b2(kH, kD, kSeed + 11);
  nn::Registry<float> ref;
  ref.add("ln1", ln1).add("a1", a1).add("a2", a2).add("ln2", ln2).add("b1", b1).add("b2", b2);
  tp::SequenceParallelMLP<RingComm<Tr>> s1(c, kD, kH, kSeed, "block1"), s2(c, kD, kH, kSeed + 10, "block2");
  nn::Registry<float> sp;
  sp.add("block1", s1).add("block2", s2);
  const std::vector<ParamPair> ps = {
      {&ln1.gamma, &s1.ln.gamma, Split::none}, {&ln1.beta, &s1.ln.beta, Split::none}, {&a1.weight, &s1.w1, Split::columns},
      {&a1.bias, &s1.b1, Split::columns},      {&a2.weight, &s1.w2, Split::rows},     {&a2.bias, &s1.b2, Split::none},
      {&ln2.gamma, &s2.ln.gamma, Split::none}, {&ln2.beta, &s2.ln.beta, Split::none}, {&b1.weight, &s2.w1, Split::columns},
      {&b1.bias, &s2.b1, Split::columns},      {&b2.weight, &s2.w2, Split::rows},     {&b2.bias, &s2.b2, Split::none}};
  nn::AdamW<float> opt_ref(ref, {.lr = 1e-2f}), opt_sp(sp, {.lr = 1e-2f});
  Workspace<cpu> ws_ref, ws_sp;
  for (int step = 0; step < 20; ++step) {
    Tensor<float> x = filled<float>(Shape{kT, kD}, 500 + static_cast<std::uint64_t>(step));
    Tensor<float> xr = token_shard(x, r, p);
    opt_ref.zero_grad();
    opt_sp.zero_grad();
    auto blk = [](auto& ln, auto& f1, auto& f2, auto&& h) {
      return let(std::forward<decltype(h)>(h), [l = &ln, a = &f1, b = &f2](auto v) { return v + (*b)(gelu((*a)((*l)(v)))); });
    };
    const float want = weft::backward(sum(square(blk(ln2, b1, b2, blk(ln1, a1, a2, x)))), ws_ref).data[0];
    const std::uint64_t before = c.sent_bytes();
    float got = weft::backward(sum(square(s2(s1(xr)))), ws_sp).data[0];
    const auto moved = static_cast<std::int64_t>(c.sent_bytes() - before);
    s1.reduce_replicated_grads();
    s2.reduce_replicated_grads();
    c.allreduce(&got, &got, 1);
    if (std::abs(got - want) > 1e-5f * (1 + std::abs(want))) {
      std::ostringstream os;
      os << "sequence parallel, step " << step << ": loss " << got << " (summed over " << p << " ranks), unsharded " << want;
      return os.str();
    }
    if (step == 0) {
      for (auto& pp : ps)
        if (auto e = compare_shard("sequence-parallel gradient", pp.ref->name, pp.ref->grad, pp.shard->grad, pp.split, r, 1e-5); !e.empty())
          return e;
      std::int64_t total = 0;
      c.allreduce(&moved, &total, 1);
      const std::int64_t formula = 2 * 4 * (p - 1) * kT * kD * static_cast<std::int64_t>(sizeof(float));
      if (total != formula) {
        std::ostringstream os;
        os << "sequence parallel: forward and backward on " << p << " ranks moved " << total << " bytes, the formula says " << formula;
        return os.str();
      }
    }
    opt_ref.step();
    opt_sp.step();
  }
  for (auto& pp : ps)
    if (auto e = compare_shard("sequence-parallel value after 20 AdamW steps", pp.ref->name, pp.ref->value, pp.shard->value, pp.split, r,
                               1e-4);
        !e.empty())
      return e;
  return "";
}

// ---- transformer blocks: tensor and sequence parallel --------------------------------

// Two blocks (width 8, 4 heads, MLP 16) on (N, T, C) = (2, 8, 8): every
// divisor of the heads (p = 1, 2, 4) splits them, and under sequence
// parallelism each rank holds 8 / p tokens.
constexpr index_t kN = 2, kTok = 8, kW = 8, kHeads = 4, kF = 16;
constexpr std::uint64_t kBlockSeed = 7;
inline nn::BlockConfig block_config() { return {.dim = kW, .heads = kHeads, .mlp = kF, .causal = true, .attn_dropout = 0}; }

template <class Comm, bool SP>
using Stack2 = tp::ParallelTransformerStack<Comm, Comm, 2, float, SP>;

// The unsharded twin: nn::TransformerBlock(cfg, seed + 100 l) for l = 0, 1,
// and the learned positional term pos (T, C) on the input (so the first
// block's input has a gradient: its backward collective runs too).
struct RefStack {
  nn::TransformerBlock<float> b0{block_config(), kBlockSeed}, b1{block_config(), kBlockSeed + 100};
  Parameter<float> pos{"pos", Shape{kTok, kW}};
  nn::Registry<float> reg;
  RefStack() {
    nn::Rng rng(3);
    for (index_t i = 0; i < pos.numel(); ++i) pos.value.data()[i] = static_cast<float>(0.1 * rng.normal_double());
    reg.add("b0", b0).add("b1", b1).add(pos, "pos");
  }
  // nn::TransformerBlock with residual dropout masks m1, m2 (nn::Dropout's
  // leaf over the full (N, T, C), keys hash(mix64(seed + 20 | 21), call)):
  // the reference for ParallelTransformerBlock's dropout.
  template <class X>
  static auto dropped(nn::TransformerBlock<float>& b, X&& x, DropoutMask<float> m1, DropoutMask<float> m2) {
    return let(std::forward<X>(x), [&b, m1, m2](auto x0) {
      return let(x0 + b.attn(b.ln1(x0)) * m1, [&b, m2](auto y) { return y + b.fc2(gelu(b.fc1(b.ln2(y)))) * m2; });
    });
  }
  static DropoutMask<float> mask(std::uint64_t block_seed, int site, std::uint64_t call, float p) {
    DropoutMask<float> m;
    m.s = Shape{kN, kTok, kW};
    m.seed = hash(mix64(block_seed + static_cast<std::uint64_t>(site)), call);
    m.p = p;
    return m;
  }
  // sum(square(out)) / (N T C) with out = b1(b0(x + pos)); `call` numbers the
  // dropout masks (one per step).
  float loss(const Tensor<float>& x, Workspace<cpu>& ws, float p, std::uint64_t call) {
    const float scale = 1.0f / static_cast<float>(kN * kTok * kW);
    if (p == 0) return weft::backward(sum(square(b1(b0(x + pos)))) * scale, ws).data[0];
    const std::uint64_t s1 = kBlockSeed + 100;
    auto h = dropped(b1, dropped(b0, x + pos, mask(kBlockSeed, 20, call, p), mask(kBlockSeed, 21, call, p)), mask(s1, 20, call, p),
                     mask(s1, 21, call, p));
    return weft::backward(sum(square(std::move(h))) * scale, ws).data[0];
  }
};

// Rank r's parameters against the reference's: which slice each one is.
template <class S>
std::vector<ParamPair> block_pairs(RefStack& ref, S& s, Parameter<float>& pos, bool sp) {
  std::vector<ParamPair> v;
  nn::TransformerBlock<float>* rb[2] = {&ref.b0, &ref.b1};
  for (int l = 0; l < 2; ++l) {
    auto& b = s.blocks[static_cast<std::size_t>(l)];
    auto& r = *rb[l];
    for (ParamPair pp : std::vector<ParamPair>{{&r.ln1.gamma, &b.ln1.gamma, Split::none},
                                               {&r.ln1.beta, &b.ln1.beta, Split::none},
                                               {&r.attn.qkv.weight, &b.attn.qkv_weight, Split::qkv},
                                               {&r.attn.qkv.bias, &b.attn.qkv_bias, Split::qkv},
                                               {&r.attn.proj.weight, &b.attn.proj_weight, Split::rows},
                                               {&r.attn.proj.bias, &b.attn.proj_bias, Split::none},
                                               {&r.ln2.gamma, &b.ln2.gamma, Split::none},
                                               {&r.ln2.beta, &b.ln2.beta, Split::none},
                                               {&r.fc1.weight, &b.mlp.fc1.weight, Split::columns},
                                               {&r.fc1.bias, &b.mlp.fc1.bias, Split::columns},
                                               {&r.fc2.weight, &b.mlp.fc2.weight, Split::rows},
                                               {&r.fc2.bias, &b.mlp.fc2.bias, Split::none}})
      v.push_back(pp);
  }
  v.push_back({&ref.pos, &pos, sp ? Split::rows : Split::none});
  return v;
}

// Tokens [r T/p, (r + 1) T/p) of every sequence of x (N, T, C).
inline Tensor<float> sequence_shard(const Tensor<float>& x, int r, int p) {
  const index_t n = x.size(0), t = x.size(1) / p, c = x.size(2);
  Tensor<float> s(Shape{n, t, c});
  for (index_t b = 0; b < n; ++b) std::copy(x.data() + (b * x.size(1) + r * t) * c, x.data() + (b * x.size(1) + (r + 1) * t) * c, s.data() + b * t * c);
  return s;
}

// The stack of two blocks, tensor parallel (SP false: replicated (N, T, C))
// or sequence parallel, against nn::TransformerBlock: loss and every
// gradient at step 0, then `steps` AdamW steps, the parameters compared at
// the end. With dropout > 0 the residual dropouts are on (in both models,
// the reference drawing nn's masks over the full tensor). The attention and
// the MLP run on communicators of their own (a policy per layer); the bytes
// both moved in step 0's forward and backward (the transport's counter, which
// a transport's splits share), summed over the ranks, must be
// 4 L ring allreduces of N T C floats: 2 (p - 1) N T C 4 bytes each.
template <bool SP, class Tr>
std::string block_stack(Tr& t, float dropout, int steps) {
  comm::CommOptions o;
  o.fingerprints = false;
  RingComm<Tr> ca(t.split(0, t.rank()), o), cm(t.split(0, t.rank()), o);
  const int r = t.rank(), p = t.size();
  RefStack ref;
  Stack2<RingComm<Tr>, SP> s(ca, cm, block_config(), kBlockSeed, dropout);
  Parameter<float> pos("pos", SP ? Shape{kTok / p, kW} : Shape{kTok, kW});
  {
    Tensor<float> full(Shape{kTok, kW});
    full.view() = ref.pos.value + 0.0f;
    Tensor<float> mine = SP ? token_shard(full, r, p) : full;
    std::copy(mine.data(), mine.data() + mine.numel(), pos.value.data());
  }
  nn::Registry<float> reg;
  reg.add("stack", s).add(pos, "pos");
  auto ps = block_pairs(ref, s, pos, SP);
  const char* mode = SP ? "sequence-parallel blocks" : "tensor-parallel blocks";
  // eps 1e-6 (not 1e-8): the key bias's gradient is exactly zero in exact
  // arithmetic (softmax ignores a constant added to every score of a row), so
  // both models hold only rounding noise there (about 1e-10), different noise
  // for different reduction orders; Adam would turn it into lr-sized steps of
  // random sign. eps 1e-6 keeps such steps under 1e-3 lr.
  nn::AdamW<float> opt_ref(ref.reg, {.lr = 1e-3f, .eps = 1e-6f}), opt_s(reg, {.lr = 1e-3f, .eps = 1e-6f});
  Workspace<cpu> ws_ref, ws_s;
  const float scale = 1.0f / static_cast<float>(kN * kTok * kW);
  for (int step = 0; step <= steps; ++step) {
    Tensor<float> x = filled<float>(Shape{kN, kTok, kW}, 900 + static_cast<std::uint64_t>(step));
    Tensor<float> xr = SP ? sequence_shard(x, r, p) : x;
    opt_ref.zero_grad();
    opt_s.zero_grad();
    const float want = ref.loss(x, ws_ref, dropout, static_cast<std::uint64_t>(step));
    const std::uint64_t before = ca.sent_bytes();  // (the transport's counter: splits share it)
    float got = weft::backward(sum(square(s(xr + pos))) * scale, ws_s).data[0];
    const auto moved = static_cast<std::int64_t>(ca.sent_bytes() - before);
    s.reduce_replicated_grads();
    if (SP) ca.allreduce(&got, &got, 1);
    if (std::abs(got - want) > 1e-5f * (1 + std::abs(want))) {
      std::ostringstream os;
      os << mode << ", step " << step << ": loss " << got << " on rank " << r << " of " << p << (SP ? " (summed over the ranks)" : "")
         << ", unsharded " << want;
      return os.str();
    }
    if (step == 0) {
      for (auto& pp : ps)
        if (auto e = compare_shard(mode, pp.ref->name, pp.ref->grad, pp.shard->grad, pp.split, r, 2e-5); !e.empty())
          return std::string("gradient: ") + e;
      std::int64_t total = 0;
      ca.allreduce(&moved, &total, 1);
      const std::int64_t formula = 2 * 4 * 2 * (p - 1) * kN * kTok * kW * static_cast<std::int64_t>(sizeof(float));
      if (total != formula) {
        std::ostringstream os;
        os << mode << ": one forward and backward on " << p << " ranks moved " << total << " bytes, the formula (8 ring allreduces of "
           << kN * kTok * kW << " floats) says " << formula;
        return os.str();
      }
    }
    if (step < steps) {
      opt_ref.step();
      opt_s.step();
    }
  }
  if (steps > 0)
    for (auto& pp : ps)
      if (auto e = compare_shard("value after AdamW steps", pp.ref->name, pp.ref->value, pp.shard->value, pp.split, r, 1e-4); !e.empty())
        return std::string(mode) + ": " + e;
  return "";
}

// The sequence-parallel dropout mask is the rank's slice of nn::Dropout's
// mask over the full tensor for the same seed, call after call; and it drops
// something (p = 0.3).
template <class Comm>
std::string dropout_mask_slices(Comm& c) {
  const int r = c.rank(), p = c.size();
  nn::Dropout full(0.3f, 77);
  tp::ShardDropout shard(0.3f, 77);
  Tensor<float> ones(Shape{kN, kTok, kW}), ones_r(Shape{kN, kTok / p, kW});
  ones.fill(1.0f);
  ones_r.fill(1.0f);
  for (int call = 0; call < 3; ++call) {
    Tensor<float> want(ones.shape()), got(ones_r.shape());
    want.view() = full(ones);
    got.view() = shard(ones_r, 1, r * (kTok / p), kTok);
    Tensor<float> slice = sequence_shard(want, r, p);
    index_t dropped = 0;
    for (index_t i = 0; i < got.numel(); ++i) {
      dropped += got.data()[i] == 0.0f;
      if (got.data()[i] != slice.data()[i]) {
        std::ostringstream os;
        os << "dropout call " << call << " on rank " << r << " of " << p << ": element " << i << " of the shard is " << got.data()[i]
           << ", the unsharded mask's " << slice.data()[i];
        return os.str();
      }
    }
    if (dropped == 0 || dropped == got.numel()) return "dropout mask on rank " + std::to_string(r) + " dropped " + std::to_string(dropped) + " elements";
  }
  return "";
}

}  // namespace tp_suite
