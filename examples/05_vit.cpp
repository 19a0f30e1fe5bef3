// Story 5: a Vision Transformer on Fashion-MNIST, one process: patch tokens,
// learned positions, pre-LN transformer blocks with fused attention, mean
// pooling, a linear head; AdamW with warm-up and cosine decay. One thread
// rank per CPU (--ranks=N), data-parallel inside the process: each rank takes
// its slice of every global batch and DataParallel averages the gradients.
//
//   build/examples/05_vit [epochs = 6] [batch = 128] [seed = 1] [--quick]
//                         [--augment=full|shift1|flip|none] [--ranks=N]
//
// Model: 28 x 28 images cut into 4 x 4 patches (49 tokens of 16 pixels),
// width C = 64, 4 heads, 3 blocks (MLP 128, exact GELU), final LayerNorm, mean
// over tokens, linear head to 10 classes. Augmentation: random shifts by up
// to 2 pixels and horizontal flips. Deterministic for a seed and rank count (one BLAS thread per rank).
// --quick: 2000 training images, 1 epoch (CI smoke run). --augment=MODE:
// full (shifts by up to 2 pixels and flips, the default), shift1 (shifts by
// up to 1 pixel and flips), flip (flips only), none (= --no-augment: the
// images as they are; the small model overfits after ~10 epochs: see README).
// Dimension legend: B batch, P = 49 patches, K = 16 pixels per patch, C width.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <span>
#include <thread>
#include <vector>
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/run_local.hpp>
#include <weft/io/idx.hpp>
#include <weft/nn/nn.hpp>
#include <weft/nn/transformer.hpp>
#include <weft/parallel/data_parallel.hpp>
#include <weft/weft.hpp>

using namespace weft;

namespace {

constexpr index_t kSide = 28, kPatch = 4, kDim = 64, kHeads = 4, kMlp = 128;

// The network, blocks applied in order (the expression's type holds them all).
struct ViT {
  nn::PatchEmbedding<float> embed{1, kPatch, kDim, 11};
  nn::PositionalEmbedding<float> pos{(kSide / kPatch) * (kSide / kPatch), kDim, 12};
  nn::TransformerBlock<float> b1{{.dim = kDim, .heads = kHeads, .mlp = kMlp}, 13};
  nn::TransformerBlock<float> b2{{.dim = kDim, .heads = kHeads, .mlp = kMlp}, 14};
  nn::TransformerBlock<float> b3{{.dim = kDim, .heads = kHeads, .mlp = kMlp}, 15};
  nn::LayerNorm<float> norm{kDim};
  nn::Linear<float> head{kDim, 10, 16};

  // patches (B, P, K) -> logits (B, 10)
  template <class X>
  auto operator()(X& patches) {
    return head(nn::mean_pool(norm(b3(b2(b1(pos(embed(patches))))))));
  }
  void add_to(nn::Registry<float>& r) {
    r.add("embed", embed).add("pos", pos).add("block1", b1).add("block2", b2).add("block3", b3).add("norm", norm).add("head", head);
  }
};

// One image's augmentation: a shift by up to max_shift pixels each way and a
// horizontal flip, drawn from `aug` (the only place that draws, so every rank
// advances the stream alike).
struct Augmentation {
  int dy = 0, dx = 0;
  bool flip = false;
};
Augmentation draw_augmentation(nn::Rng& aug, int max_shift) {
  Augmentation a;
  if (max_shift > 0) {
    const auto span = static_cast<std::uint64_t>(2 * max_shift + 1);
    a.dy = static_cast<int>(aug.below(span)) - max_shift;
    a.dx = static_cast<int>(aug.below(span)) - max_shift;
  }
  a.flip = aug.below(2) == 1;
  return a;
}

// Images (n, 784) rows `idx` -> patches (B, P, K), shifted and flipped where
// asked (augmentation), zero outside the image.
void make_batch(const ViT& m, const Tensor<float>& images, const std::vector<index_t>& idx, index_t at, index_t b,
                nn::Rng* aug, int max_shift, std::vector<float>& img, Tensor<float>& patches) {
  img.assign(static_cast<std::size_t>(b * kSide * kSide), 0.0f);
  for (index_t i = 0; i < b; ++i) {
    const float* src = images.data() + idx[static_cast<std::size_t>(at + i)] * kSide * kSide;
    float* dst = img.data() + i * kSide * kSide;
    const Augmentation a = aug ? draw_augmentation(*aug, max_shift) : Augmentation{};
    for (index_t y = 0; y < kSide; ++y)
      for (index_t x = 0; x < kSide; ++x) {
        const index_t sy = y - a.dy, sx0 = x - a.dx, sx = a.flip ? kSide - 1 - sx0 : sx0;
        if (sy >= 0 && sy < kSide && sx >= 0 && sx < kSide) dst[y * kSide + x] = src[sy * kSide + sx];
      }
  }
  m.embed.patchify(img.data(), b, kSide, kSide, patches.data());
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, augment = true;
  int max_shift = 2;
  int ranks = 0;
  double smoothing = 0;
  std::vector<const char*> pos_args;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0)
      quick = true;
    else if (std::strcmp(argv[i], "--no-augment") == 0 || std::strcmp(argv[i], "--augment=none") == 0)
      augment = false;
    else if (std::strcmp(argv[i], "--augment=full") == 0)
      augment = true, max_shift = 2;
    else if (std::strcmp(argv[i], "--augment=shift1") == 0)
      augment = true, max_shift = 1;
    else if (std::strcmp(argv[i], "--augment=flip") == 0)
      augment = true, max_shift = 0;
    else if (std::strncmp(argv[i], "--ranks=", 8) == 0)
      ranks = std::atoi(argv[i] + 8);
    else if (std::strncmp(argv[i], "--label-smoothing=", 18) == 0)
      smoothing = std::atof(argv[i] + 18);
    else if (std::strncmp(argv[i], "--", 2) == 0) {
      std::fprintf(stderr, "05_vit: unknown option '%s' (--quick, --no-augment, --augment=full|shift1|flip|none, --ranks=N, --label-smoothing=EPS)\n", argv[i]);
      return 2;
    }
    else
      pos_args.push_back(argv[i]);
  }
  const int epochs = quick ? 1 : (pos_args.size() > 0 ? std::atoi(pos_args[0]) : 6);
  const index_t batch = pos_args.size() > 1 ? std::atoll(pos_args[1]) : 128;
  const std::uint64_t seed = pos_args.size() > 2 ? std::strtoull(pos_args[2], nullptr, 10) : 1;
  openblas_set_num_threads(1);
  if (ranks <= 0) {  // default: one rank per CPU (at most 8), a divisor of the batch
    ranks = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 8u));
    while (batch % ranks != 0) --ranks;
  }

  auto train = io::load_fashion_mnist("train");  // images (60000, 784) in [0, 1]; labels (60000,)
  auto test = io::load_fashion_mnist("test");
  const float mu = eval(mean(train.images)).item();
  const float sd = std::sqrt(eval(mean(square(train.images - mu))).item());
  train.images = (train.images - mu) / sd;
  test.images = (test.images - mu) / sd;
  const index_t n = quick ? 2000 : train.images.size(0), n_test = test.images.size(0);
  const index_t P = (kSide / kPatch) * (kSide / kPatch), K = kPatch * kPatch;

  // One thread rank per core by default: each computes its slice of every
  // global batch (the same images and augmentation on every rank count, so a
  // run with R ranks trains on the same batches as one rank) and DataParallel
  // averages the gradients.
  if (batch % ranks != 0) {
    std::fprintf(stderr, "05_vit: the batch (%lld) does not split evenly over %d ranks\n", (long long)batch, ranks);
    return 2;
  }
  const index_t local = batch / ranks;
  comm::run_local(ranks, [&](comm::ThreadTransport& t) {
    const int rank = t.rank();
    comm::Communicator<comm::Ring, comm::ThreadTransport> ring{t};
    ViT model;
    nn::Registry<float> params;
    model.add_to(params);
    parallel::DataParallel dp(params, ring);
    dp.set_overlap(false);  // ranks as threads on all the cores: no spare core for a progress thread
    const index_t steps_per_epoch = n / batch, total_steps = epochs * steps_per_epoch;
    const float peak_lr = 2e-3f;
    nn::AdamW<float> opt(params, {.lr = peak_lr, .weight_decay = 0.05f});
    const index_t warmup = std::min<index_t>(steps_per_epoch / 2, total_steps / 10 + 1);
    auto lr_at = [&](index_t step) {
      if (step < warmup) return peak_lr * static_cast<float>(step + 1) / static_cast<float>(warmup);
      const double t = static_cast<double>(step - warmup) / static_cast<double>(std::max<index_t>(total_steps - warmup, 1));
      return static_cast<float>(0.5 * peak_lr * (1.0 + std::cos(3.14159265358979 * t)));
    };
    if (rank == 0) {
      std::printf("ViT: %lldx%lld patches of %lldx%lld -> %lld tokens, width %lld, %lld heads, 3 blocks, MLP %lld; %lld parameters\n",
                  (long long)(kSide / kPatch), (long long)(kSide / kPatch), (long long)kPatch, (long long)kPatch, (long long)P,
                  (long long)kDim, (long long)kHeads, (long long)kMlp, (long long)params.numel());
      std::printf("AdamW lr %.0e (warm-up %lld steps, cosine), weight decay 0.05, batch %lld (%d thread rank%s x %lld), %d epochs, "
                  "seed %llu, augmentation %s, label smoothing %.2f\n",
                  peak_lr, (long long)warmup, (long long)batch, ranks, ranks == 1 ? "" : "s", (long long)local, epochs,
                  (unsigned long long)seed, !augment ? "none" : max_shift == 2 ? "full (shifts <= 2 px, flips)" : max_shift == 1 ? "shift1 (shifts <= 1 px, flips)" : "flip", smoothing);
    }

    Tensor<float> xb({local, P, K});
    Tensor<std::int32_t> yb({local});
    std::vector<float> img;
    std::vector<index_t> order(static_cast<std::size_t>(train.images.size(0)));
    std::iota(order.begin(), order.end(), index_t(0));
    std::vector<index_t> test_order(static_cast<std::size_t>(n_test));
    std::iota(test_order.begin(), test_order.end(), index_t(0));
    nn::Rng shuffle_rng(seed), aug_rng(seed + 1000);
    Workspace<> ws;
    const auto run_start = std::chrono::steady_clock::now();
    for (int epoch = 1; epoch <= epochs; ++epoch) {
      for (index_t i = static_cast<index_t>(order.size()) - 1; i > 0; --i)
        std::swap(order[static_cast<std::size_t>(i)], order[shuffle_rng.below(static_cast<std::uint64_t>(i + 1))]);
      for (auto* b : {&model.b1, &model.b2, &model.b3}) b->set_training(true);
      const auto t0 = std::chrono::steady_clock::now();
      double total = 0;
      index_t steps = 0;
      for (index_t b = 0; b + batch <= n; b += batch, ++steps) {
        // Every rank draws the whole batch's augmentation (so the stream is the
        // same for any rank count) and keeps its own rows.
        for (int r = 0; r < ranks; ++r) {
          if (r == rank)
            make_batch(model, train.images, order, b + r * local, local, augment ? &aug_rng : nullptr, max_shift, img, xb);
          else if (augment)
            for (index_t i = 0; i < local; ++i) (void)draw_augmentation(aug_rng, max_shift);
        }
        for (index_t i = 0; i < local; ++i) yb.data()[i] = train.labels.data()[order[static_cast<std::size_t>(b + rank * local + i)]];
        opt.set_lr(lr_at(opt.steps()));
        opt.zero_grad();
        total += dp.backward(cross_entropy(model(xb), yb, {.label_smoothing = smoothing}), ws);
        dp.step(opt);
        if (rank == 0 && steps % 20 == 0) {
          std::printf("\r  epoch %d  [%-30.*s] %3.0f%%  loss %.4f", epoch, static_cast<int>(30 * b / n),
                      "==============================", 100.0 * static_cast<double>(b) / static_cast<double>(n),
                      total / static_cast<double>(steps + 1));
          std::fflush(stdout);
        }
      }
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      // Test accuracy, in batches (no augmentation), the test set split over the ranks.
      double counts[2] = {0, total};  // correct, this rank's loss sum
      const index_t eb = 500;
      Tensor<float> xt({eb, P, K});
      for (index_t b = rank * eb; b + eb <= n_test; b += ranks * eb) {
        make_batch(model, test.images, test_order, b, eb, nullptr, 0, img, xt);
        Tensor<float> logits = eval(model(xt), ws);  // (eb, 10)
        for (index_t i = 0; i < eb; ++i) {
          const float* row = logits.data() + i * 10;
          const index_t arg = std::max_element(row, row + 10) - row;
          counts[0] += arg == test.labels.data()[b + i] ? 1 : 0;
        }
      }
      ring.allreduce(std::span<double>(counts, 2));
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
      if (rank == 0)
        std::printf("\r\033[Kepoch %d  loss %.4f  test accuracy %.2f%%  %.0f samples/s  (%.0f s so far)\n", epoch,
                    counts[1] / ranks / static_cast<double>(steps), 100.0 * counts[0] / static_cast<double>(n_test),
                    static_cast<double>(steps * batch) / secs, elapsed);
    }
  });
  return 0;
}
