// Samplers: the list of configurations a search tries, by index.
//
//   GridSampler   every combination of the parameters' grid_values(), the last
//                 parameter varying fastest (like nested loops in space order)
//   RandomSampler n points, coordinate j of point i = nn::hash(seed, i * d + j)
//                 as a double in [0, 1): stateless and bit-identical on every
//                 platform (no std:: distributions, whose output differs
//                 between standard libraries)
//   SobolSampler  n points of the Sobol sequence (tune/sobol.hpp), optionally
//                 skipping the first `skip` (point 0 is the cube's corner)
//
// at(i) depends only on i, so every rank computes the same configuration and a
// resumed search sees the same trial list. Each models tune::Sampler.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../nn/rng.hpp"
#include "sobol.hpp"
#include "space.hpp"

namespace weft::tune {

template <class S>
concept Sampler = requires(const S& s, std::size_t i) {
  { s.size() } -> std::convertible_to<std::size_t>;
  { s.at(i) } -> std::same_as<Config>;
  { s.describe() } -> std::convertible_to<std::string>;
  { s.space() } -> std::convertible_to<const Space&>;
};

namespace detail {
inline void check_space(const Space& s, const char* who) {
  if (s.empty()) throw_error<ValueError>(who, ": the search space has no hyperparameters; add some with Space::add");
}
inline void check_index(std::size_t i, std::size_t n, const char* who) {
  if (i >= n) throw_error<ValueError>(who, ": configuration ", i, " requested of ", n);
}
}  // namespace detail

class GridSampler {
 public:
  explicit GridSampler(Space space) : space_(std::move(space)) {
    detail::check_space(space_, "tune::GridSampler");
    n_ = 1;
    for (auto& [name, p] : space_.params()) {
      values_.push_back(p.grid_values());
      n_ *= values_.back().size();
    }
  }
  std::size_t size() const { return n_; }
  Config at(std::size_t i) const {
    detail::check_index(i, n_, "tune::GridSampler");
    Config c;
    std::vector<std::size_t> digit(values_.size());
    for (std::size_t j = values_.size(); j-- > 0;) {
      digit[j] = i % values_[j].size();
      i /= values_[j].size();
    }
    for (std::size_t j = 0; j < values_.size(); ++j) c.set(space_.params()[j].first, values_[j][digit[j]]);
    return c;
  }
  std::string describe() const { return "grid over " + space_.describe(); }
  const Space& space() const { return space_; }

 private:
  Space space_;
  std::vector<std::vector<Value>> values_;
  std::size_t n_ = 0;
};
static_assert(Sampler<GridSampler>);

class RandomSampler {
 public:
  RandomSampler(Space space, std::size_t n, std::uint64_t seed) : space_(std::move(space)), n_(n), seed_(seed) {
    detail::check_space(space_, "tune::RandomSampler");
    if (n == 0) throw_error<ValueError>("tune::RandomSampler: asked for 0 samples; ask for at least one");
  }
  std::size_t size() const { return n_; }
  Config at(std::size_t i) const {
    detail::check_index(i, n_, "tune::RandomSampler");
    const std::size_t d = space_.size();
    std::vector<double> u(d);
    for (std::size_t j = 0; j < d; ++j) u[j] = nn::to_unit_double(nn::hash(seed_, i * d + j));
    return space_.at(u);
  }
  std::string describe() const {
    return "random " + std::to_string(n_) + " seed " + std::to_string(seed_) + " over " + space_.describe();
  }
  const Space& space() const { return space_; }

 private:
  Space space_;
  std::size_t n_;
  std::uint64_t seed_;
};
static_assert(Sampler<RandomSampler>);

class SobolSampler {
 public:
  SobolSampler(Space space, std::size_t n, std::size_t skip = 0)
      : space_(std::move(space)), n_(n), skip_(skip), sobol_(checked_dims(space_)) {
    if (n == 0) throw_error<ValueError>("tune::SobolSampler: asked for 0 samples; ask for at least one");
  }
  std::size_t size() const { return n_; }
  Config at(std::size_t i) const {
    detail::check_index(i, n_, "tune::SobolSampler");
    return space_.at(sobol_.point(i + skip_));
  }
  std::string describe() const {
    return "sobol " + std::to_string(n_) + " skip " + std::to_string(skip_) + " over " + space_.describe();
  }
  const Space& space() const { return space_; }

 private:
  static int checked_dims(const Space& s) {
    detail::check_space(s, "tune::SobolSampler");
    return static_cast<int>(s.size());
  }
  Space space_;
  std::size_t n_, skip_;
  Sobol sobol_;
};
static_assert(Sampler<SobolSampler>);

}  // namespace weft::tune
