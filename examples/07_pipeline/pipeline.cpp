// Story 7: the Fashion-MNIST MLP cut into two pipeline stages on two thread
// ranks, trained with 1F1B (or GPipe, or ZB-H1) over micro-batches, next to
// the same model trained on one rank. Prints both test accuracies, the
// pipeline's measured bubble next to the formula, and a timeline of one step.
//
//   build/examples/07_pipeline [epochs = 3] [micro-batches = 4] [1f1b | gpipe | zb] [seed = 1]
//
// MLP 784-256-256-10 with ReLU as an nn::Sequential, cut before its second
// Linear (stage 0: Linear 784-256, ReLU; stage 1: Linear 256-256, ReLU,
// Linear 256-10); cross-entropy, Adam lr 1e-3 with cosine decay, batch 128.
// Dimension legend: B batch, D = 784 pixels, C = 10 classes.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>
#include <weft/comm/run_local.hpp>
#include <weft/io/idx.hpp>
#include <weft/nn/nn.hpp>
#include <weft/parallel/pipeline/pipeline.hpp>
#include <weft/weft.hpp>

using namespace weft;
namespace pp = weft::parallel::pipeline;

namespace {

constexpr index_t kBatch = 128;

using Model = nn::Sequential<nn::Linear<float>, nn::ReLU, nn::Linear<float>, nn::ReLU, nn::Linear<float>>;
Model make_model(index_t d, std::uint64_t seed) {
  return Model(nn::Linear<float>(d, 256, seed), nn::ReLU{}, nn::Linear<float>(256, 256, seed + 1), nn::ReLU{},
               nn::Linear<float>(256, 10, seed + 2));
}

struct Run {
  double accuracy = 0, seconds = 0, bubble = 0;
  std::string timeline;
};

// Every epoch visits the training set in the same shuffled order in both runs.
std::vector<std::vector<index_t>> epoch_orders(index_t n, int epochs, std::uint64_t seed) {
  std::vector<std::vector<index_t>> out;
  std::vector<index_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), index_t(0));
  nn::Rng rng(seed);
  for (int e = 0; e < epochs; ++e) {
    for (index_t i = n - 1; i > 0; --i)
      std::swap(order[static_cast<std::size_t>(i)], order[rng.below(static_cast<std::uint64_t>(i + 1))]);
    out.push_back(order);
  }
  return out;
}

double test_accuracy(Model& model, const io::Dataset& test) {
  Workspace<> ws;
  Tensor<float> logits = eval(model(test.images), ws);  // (N_test, C)
  return nn::accuracy(logits, test.labels);
}

// One rank, whole batches.
Run one_rank(const io::Dataset& train, const io::Dataset& test, const std::vector<std::vector<index_t>>& orders,
             std::uint64_t seed) {
  const index_t n = train.images.size(0), d = train.images.size(1);
  Model model = make_model(d, seed);
  nn::Registry<float> params;
  params.add("", model);
  nn::Adam<float> opt(params, {.lr = 1e-3f});
  const nn::CosineAnnealing schedule{.lr = 1e-3f, .total_steps = static_cast<int>(orders.size()) * (n / kBatch)};
  Tensor<float> xb({kBatch, d});
  Tensor<std::int32_t> yb({kBatch});
  Workspace<> ws;
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& order : orders)
    for (index_t b = 0; b + kBatch <= n; b += kBatch) {
      io::gather_batch(train, order, b, xb, yb);
      opt.set_lr(schedule(opt.steps()));
      opt.zero_grad();
      backward(cross_entropy(model(xb), yb), ws);
      opt.step();
    }
  Run r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.accuracy = test_accuracy(model, test);
  return r;
}

// Two ranks, one stage each, m micro-batches per batch.
Run two_stages(const io::Dataset& train, const io::Dataset& test, const std::vector<std::vector<index_t>>& orders,
               std::uint64_t seed, const pp::Schedule& sched) {
  Run out;
  comm::run_local(2, [&](comm::ThreadTransport t) {
    const index_t n = train.images.size(0), d = train.images.size(1);
    Model model = make_model(d, seed);  // every rank builds the model; each trains its own stage
    auto stages = pp::cut<2>(model);    // [Linear, ReLU] | [Linear, ReLU, Linear]
    nn::Registry<float> mine;
    if (t.rank() == 0) mine.add("", std::get<0>(stages)); else mine.add("", std::get<1>(stages));
    auto loss = [](auto logits, TensorView<std::int32_t> y) { return cross_entropy(logits, y); };
    auto pipe = pp::make_pipeline<float, std::int32_t>(t, sched, stages, loss, {.trace = true});
    nn::Adam<float> opt(mine, {.lr = 1e-3f});
    const nn::CosineAnnealing schedule{.lr = 1e-3f, .total_steps = static_cast<int>(orders.size()) * (n / kBatch)};
    Tensor<float> xb({kBatch, d});
    Tensor<std::int32_t> yb({kBatch});
    double bubble = 0;
    int traced = 0;
    pp::Trace last;
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& order : orders)
      for (index_t b = 0; b + kBatch <= n; b += kBatch) {
        io::gather_batch(train, order, b, xb, yb);
        opt.set_lr(schedule(opt.steps()));
        opt.zero_grad();
        pipe.step(xb.view(), yb.view());
        opt.step();
        if (opt.steps() % 25 == 0) {  // the bubble of every 25th step, measured from the ranks' traces
          pp::Trace tr = pipe.gather_trace();
          if (t.rank() == 0) bubble += tr.bubble(), ++traced, last = std::move(tr);
        }
      }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Rank 1 sends its trained stage to rank 0, which evaluates the whole model.
    nn::Registry<float> second;
    second.add("", std::get<1>(stages));
    for (Parameter<float>* p : second) {
      auto req = t.rank() == 1 ? t.isend(p->value.data(), p->value.bytes(), 0, 1) : t.irecv(p->value.data(), p->value.bytes(), 1, 1);
      if (t.wait(req, comm::deadline_after(std::chrono::seconds(60))) != comm::WaitStatus::done)
        throw Error("07_pipeline: could not bring stage 1's parameters to rank 0: " + t.failure());
    }
    if (t.rank() == 0) {
      out.seconds = secs;
      out.bubble = traced ? bubble / traced : 0;
      out.timeline = pp::ascii_timeline(last, 72);
      out.accuracy = test_accuracy(model, test);
    }
  });
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const int epochs = argc > 1 ? std::atoi(argv[1]) : 3;
  const int m = argc > 2 ? std::atoi(argv[2]) : 4;
  const std::string which = argc > 3 ? argv[3] : "1f1b";
  const std::uint64_t seed = argc > 4 ? std::strtoull(argv[4], nullptr, 10) : 1;
  if (epochs < 1 || m < 1 || kBatch % m != 0 || (which != "1f1b" && which != "gpipe" && which != "zb")) {
    std::fprintf(stderr, "usage: 07_pipeline [epochs >= 1] [micro-batches dividing %lld] [1f1b | gpipe | zb] [seed]\n",
                 static_cast<long long>(kBatch));
    return 2;
  }
  openblas_set_num_threads(1);  // the two ranks are the threads
  auto train = io::load_fashion_mnist("train");  // images (60000, 784) in [0, 1]; labels (60000,)
  auto test = io::load_fashion_mnist("test");
  const float mu = eval(mean(train.images)).item();
  const float sd = std::sqrt(eval(mean(square(train.images - mu))).item());
  train.images = (train.images - mu) / sd;
  test.images = (test.images - mu) / sd;
  const auto orders = epoch_orders(train.images.size(0), epochs, seed);

  const pp::Schedule sched = which == "gpipe" ? pp::GPipe{}.build(2, m)
                             : which == "zb"  ? pp::ZeroBubbleH1{}.build(2, m)
                                              : pp::OneFOneB{}.build(2, m);
  std::printf("MLP 784-256-256-10, Adam lr 1e-3 (cosine), batch %lld, %d epochs, seed %llu\n", static_cast<long long>(kBatch),
              epochs, static_cast<unsigned long long>(seed));
  const Run one = one_rank(train, test, orders, seed);
  std::printf("one rank:                      test accuracy %.2f%%  %.0f samples/s\n", 100 * one.accuracy,
              static_cast<double>(orders.size()) * static_cast<double>(train.images.size(0) / kBatch * kBatch) / one.seconds);
  const Run two = two_stages(train, test, orders, seed, sched);
  std::printf("2 stages, %-6s m = %-2d         test accuracy %.2f%%  %.0f samples/s\n", sched.name.c_str(), m, 100 * two.accuracy,
              static_cast<double>(orders.size()) * static_cast<double>(train.images.size(0) / kBatch * kBatch) / two.seconds);
  std::printf("accuracy difference: %.2f points\n", 100 * std::fabs(two.accuracy - one.accuracy));
  std::printf("bubble: measured %.3f (mean of every 25th step), formula (p-1)/(m+p-1) = %.3f\n", two.bubble,
              pp::formula_bubble(2, m));
  std::printf("the last traced step (F, B, W; '.' idle; micro-batch below):\n%s", two.timeline.c_str());
  return std::fabs(two.accuracy - one.accuracy) <= 0.003 ? 0 : 1;
}
