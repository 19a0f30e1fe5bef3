// Data sharding for data-parallel training, and dataset splitting helpers.
//
// DistributedSampler: each epoch, one permutation of [0, n) seeded by (seed,
// epoch) and identical on every rank; rank r takes positions r, r + p, r + 2p,
// ... so shards are disjoint and of equal size. The remainder policy is explicit:
//   Remainder::drop  the last n mod p samples of the permutation are skipped
//   Remainder::pad   the permutation is extended from its start (PyTorch's default)
// Where a run is, for checkpoints: epoch() and position() (this rank's
// samples of the epoch consumed so far; advance(n) after each batch,
// set_epoch(e) at the start of an epoch), visited with the seed by
// visit_state(v) (nn/state.hpp).
// kfold() and stratified_split() return index lists, deterministic for a seed.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/shape.hpp"
#include "../nn/rng.hpp"
#include "../tensor/tensor.hpp"

namespace weft::io {

enum class Remainder { drop, pad };

namespace detail {
// Fisher-Yates with weft's portable RNG: the same permutation everywhere.
inline std::vector<index_t> permutation(index_t n, std::uint64_t seed) {
  std::vector<index_t> p(static_cast<std::size_t>(n));
  std::iota(p.begin(), p.end(), index_t(0));
  nn::Rng rng(seed);
  for (index_t i = n - 1; i > 0; --i)
    std::swap(p[static_cast<std::size_t>(i)], p[rng.below(static_cast<std::uint64_t>(i + 1))]);
  return p;
}
}  // namespace detail

class DistributedSampler {
 public:
  DistributedSampler(index_t n, int rank, int size, std::uint64_t seed = 0, Remainder r = Remainder::drop,
                     bool shuffle = true)
      : n_(n), rank_(rank), size_(size), seed_(seed), rem_(r), shuffle_(shuffle) {
    if (size < 1 || rank < 0 || rank >= size)
      throw_error<ValueError>("DistributedSampler: rank ", rank, " is not in [0, ", size, ")");
    if (n < 0) throw_error<ValueError>("DistributedSampler: negative dataset size ", n);
    if (r == Remainder::pad && n == 0 && size > 0) throw_error<ValueError>("DistributedSampler: cannot pad an empty dataset");
  }

  // Samples per rank per epoch.
  index_t shard_size() const { return rem_ == Remainder::drop ? n_ / size_ : (n_ + size_ - 1) / size_; }

  // This rank's sample indices for `epoch`, in the order to visit them.
  std::vector<index_t> indices(std::uint64_t epoch) const {
    std::vector<index_t> perm;
    if (shuffle_) {
      perm = detail::permutation(n_, nn::hash(seed_, epoch));
    } else {
      perm.resize(static_cast<std::size_t>(n_));
      std::iota(perm.begin(), perm.end(), index_t(0));
    }
    const index_t m = shard_size();
    std::vector<index_t> mine(static_cast<std::size_t>(m));
    for (index_t k = 0; k < m; ++k) {
      index_t pos = k * size_ + rank_;
      mine[static_cast<std::size_t>(k)] = perm[static_cast<std::size_t>(pos % n_)];
    }
    return mine;
  }
  // This rank's sample indices for the current epoch.
  std::vector<index_t> indices() const { return indices(epoch_); }

  std::uint64_t epoch() const { return epoch_; }
  // Samples of the current epoch this rank has consumed.
  index_t position() const { return position_; }
  // Start epoch e from its first sample.
  void set_epoch(std::uint64_t e) {
    epoch_ = e;
    position_ = 0;
  }
  // n more samples of the current epoch consumed.
  void advance(index_t n) {
    if (n < 0 || n > shard_size() - position_)
      throw_error<ValueError>("DistributedSampler::advance(", n, "): at position ", position_, " of a shard of ",
                              shard_size(), " samples");
    position_ += n;
  }

  // Checkpoints: "seed" (std::uint64_t), "epoch" (std::uint64_t) and
  // "position" (std::int64_t); a restored position must lie in the shard.
  template <class V>
  void visit_state(V& v) {
    std::uint64_t seed = seed_, epoch = epoch_;
    std::int64_t position = position_;
    v(std::string_view("seed"), seed);
    v(std::string_view("epoch"), epoch);
    v(std::string_view("position"), position);
    if (position < 0 || position > shard_size())
      throw_error<ValueError>("DistributedSampler::visit_state: restoring position ", position,
                              " outside this rank's shard of ", shard_size(), " samples");
    seed_ = seed;
    epoch_ = epoch;
    position_ = position;
  }

 private:
  index_t n_;
  int rank_, size_;
  std::uint64_t seed_;
  Remainder rem_;
  bool shuffle_;
  std::uint64_t epoch_ = 0;
  index_t position_ = 0;
};

struct Split {
  std::vector<index_t> train;
  std::vector<index_t> validation;
};

// Fold `fold` of k: a seeded permutation cut into k near-equal parts; part
// `fold` validates, the rest train. Every sample validates in exactly one fold.
inline Split kfold(index_t n, int k, int fold, std::uint64_t seed = 0) {
  if (k < 2 || fold < 0 || fold >= k) throw_error<ValueError>("kfold: need 2 <= k and 0 <= fold < k, got k ", k, ", fold ", fold);
  if (n < k) throw_error<ValueError>("kfold: ", n, " samples cannot make ", k, " folds");
  auto perm = detail::permutation(n, seed);
  const index_t lo = n * fold / k, hi = n * (fold + 1) / k;
  Split s;
  for (index_t i = 0; i < n; ++i) (i >= lo && i < hi ? s.validation : s.train).push_back(perm[static_cast<std::size_t>(i)]);
  return s;
}

// A validation fraction taken from each class separately, so both parts keep
// the class proportions (labels are integers, any range).
template <class L>
Split stratified_split(const Tensor<L>& labels, double validation_fraction, std::uint64_t seed = 0) {
  static_assert(std::is_integral_v<L>, "stratified_split: labels must be integers");
  if (!(validation_fraction > 0.0 && validation_fraction < 1.0))
    throw_error<ValueError>("stratified_split: validation fraction ", validation_fraction, " is not in (0, 1)");
  const index_t n = labels.numel();
  auto perm = detail::permutation(n, seed);
  std::vector<std::pair<L, index_t>> by_class;
  by_class.reserve(static_cast<std::size_t>(n));
  for (index_t i : perm) by_class.emplace_back(labels.data()[i], i);
  std::stable_sort(by_class.begin(), by_class.end(), [](auto& a, auto& b) { return a.first < b.first; });
  Split s;
  for (std::size_t b = 0; b < by_class.size();) {
    std::size_t e = b;
    while (e < by_class.size() && by_class[e].first == by_class[b].first) ++e;
    const std::size_t count = e - b;
    const std::size_t nval = static_cast<std::size_t>(static_cast<double>(count) * validation_fraction + 0.5);
    for (std::size_t i = b; i < e; ++i) (i - b < nval ? s.validation : s.train).push_back(by_class[i].second);
    b = e;
  }
  return s;
}

}  // namespace weft::io
