// Post-training int8 quantisation of Linear layers for CPU inference.
//
// Weights: per output channel, symmetric (zero point 0), as PyTorch's
// per_channel_symmetric qconfig and TensorRT do: channel o (a column of
// Linear's (I, O) weight) has scale s_o = max_i |W[i, o]| / 127 and
// q = clamp(round(W / s_o), -127, 127), rounded half to even (torch.round).
// Activations: one symmetric scale per layer input, s_x = amax / 127, with
// amax calibrated on a few hundred samples by an ActivationObserver: the
// largest |x| seen (min/max) or a percentile of |x| (clips rare outliers, so
// the common values get finer steps).
// Inference: x -> int8 with s_x, int8 GEMM (kernels/cpu/int8_gemm.hpp, the
// fastest path this CPU has), y = acc * (s_x * s_o) + bias in f32, with an
// optional ReLU fused into that epilogue.
// Dimension legend: B batch, I in_features, O out_features.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../kernels/cpu/int8_gemm.hpp"
#include "../nn/linear.hpp"
#include "../tensor/tensor.hpp"

namespace weft::compress {

using kernels::cpu::Int8Isa;

inline constexpr float kInt8Max = 127.0f;

// round(x / scale) clamped to [-127, 127]; half to even (the default FP mode).
inline std::int8_t quantize_value(float x, float inv_scale) {
  const float r = std::nearbyint(x * inv_scale);
  return static_cast<std::int8_t>(std::clamp(r, -kInt8Max, kInt8Max));
}

// The symmetric scale for a largest magnitude: amax / 127, and 1 for an
// all-zero tensor (any scale represents it exactly).
inline float symmetric_scale(float amax) { return amax > 0.0f ? amax / kInt8Max : 1.0f; }

// A weight (I, O) quantised per output channel (column).
struct QuantizedWeight {
  index_t in = 0, out = 0;
  std::vector<std::int8_t> q;  // (I, O)
  std::vector<float> scale;    // (O,)
};

inline QuantizedWeight quantize_per_channel(const float* w, index_t in, index_t out) {
  if (in <= 0 || out <= 0) throw_error<ShapeError>("quantize_per_channel: weight shape (", in, ", ", out, ") is empty");
  QuantizedWeight r{in, out, std::vector<std::int8_t>(static_cast<std::size_t>(in * out)),
                    std::vector<float>(static_cast<std::size_t>(out), 0.0f)};
  for (index_t i = 0; i < in; ++i)
    for (index_t o = 0; o < out; ++o) {
      const float v = w[i * out + o];
      if (!std::isfinite(v))
        throw_error<ValueError>("quantize_per_channel: weight element (", i, ", ", o, ") is ", v, ": cannot quantise a non-finite value");
      r.scale[static_cast<std::size_t>(o)] = std::max(r.scale[static_cast<std::size_t>(o)], std::fabs(v));
    }
  for (float& s : r.scale) s = symmetric_scale(s);
  for (index_t i = 0; i < in; ++i)
    for (index_t o = 0; o < out; ++o)
      r.q[static_cast<std::size_t>(i * out + o)] = quantize_value(w[i * out + o], 1.0f / r.scale[static_cast<std::size_t>(o)]);
  return r;
}

enum class Calibration : std::uint8_t { minmax, percentile };

struct CalibrationOptions {
  Calibration method = Calibration::minmax;
  double percentile = 99.99;  // of |x|, for Calibration::percentile: in (0, 100]
};

// Records |x| of a layer's input over calibration batches and turns it into
// the input scale. Percentile keeps every |x| it saw (a few hundred samples of
// a few hundred features: a few MB), so the percentile is exact, not binned.
class ActivationObserver {
 public:
  explicit ActivationObserver(std::string name, CalibrationOptions o = {}) : name_(std::move(name)), o_(o) {
    if (o_.method == Calibration::percentile && !(o_.percentile > 0.0 && o_.percentile <= 100.0))
      throw_error<ValueError>("ActivationObserver '", name_, "': percentile ", o_.percentile, " must lie in (0, 100]");
  }

  void observe(const float* x, index_t n) {
    for (index_t i = 0; i < n; ++i) {
      const float a = std::fabs(x[i]);
      if (!std::isfinite(a))
        throw_error<ValueError>("ActivationObserver '", name_, "': element ", count_ + i, " of the calibration data is ", x[i]);
      amax_ = std::max(amax_, a);
      if (o_.method == Calibration::percentile) seen_.push_back(a);
    }
    count_ += n;
  }
  void observe(const Tensor<float>& x) { observe(x.data(), x.numel()); }

  const std::string& name() const { return name_; }
  index_t count() const { return count_; }

  // The calibrated largest magnitude: the maximum, or the element at rank
  // ceil(p / 100 * n) (1-based) of the sorted |x|.
  float amax() const {
    if (count_ == 0) throw_error<ValueError>("ActivationObserver '", name_, "': no calibration data observed");
    if (o_.method == Calibration::minmax) return amax_;
    std::vector<float> v = seen_;
    const double rank = std::ceil(o_.percentile / 100.0 * static_cast<double>(v.size()));
    const std::size_t k = static_cast<std::size_t>(std::clamp(rank, 1.0, static_cast<double>(v.size()))) - 1;
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
    return v[k];
  }
  float scale() const { return symmetric_scale(amax()); }

 private:
  std::string name_;
  CalibrationOptions o_;
  index_t count_ = 0;
  float amax_ = 0.0f;
  std::vector<float> seen_;
};

// Caller-owned memory for QuantizedLinear::forward: grows to the largest
// batch once, then a forward allocates nothing.
struct QuantScratch {
  std::vector<std::int8_t> xq;   // (B, I)
  std::vector<std::int32_t> acc;  // (B, O)
};

class QuantizedLinear {
 public:
  QuantizedLinear() = default;

  // From a trained layer and its calibrated input scale.
  template <bool Bias>
  QuantizedLinear(std::string name, const nn::Linear<float, Bias>& l, float input_scale, Int8Isa isa = kernels::cpu::best_int8_isa())
      : QuantizedLinear(std::move(name), quantize_per_channel(l.weight.value.data(), l.in_features(), l.out_features()),
                        input_scale, bias_of(l), isa) {}

  // From stored parts (a loaded file): bias empty or (O,).
  QuantizedLinear(std::string name, QuantizedWeight w, float input_scale, std::vector<float> bias,
                  Int8Isa isa = kernels::cpu::best_int8_isa())
      : name_(std::move(name)), w_(std::move(w)), input_scale_(input_scale), bias_(std::move(bias)) {
    const auto o = static_cast<std::size_t>(w_.out);
    if (w_.in <= 0 || w_.out <= 0 || w_.q.size() != static_cast<std::size_t>(w_.in * w_.out) || w_.scale.size() != o)
      throw_error<ShapeError>("QuantizedLinear '", name_, "': weight (", w_.in, ", ", w_.out, ") with ", w_.q.size(),
                              " values and ", w_.scale.size(), " scales");
    if (!bias_.empty() && bias_.size() != o)
      throw_error<ShapeError>("QuantizedLinear '", name_, "': bias of ", bias_.size(), " elements for ", o, " outputs");
    if (!(input_scale_ > 0.0f) || !std::isfinite(input_scale_))
      throw_error<ValueError>("QuantizedLinear '", name_, "': input scale ", input_scale_, " must be finite and > 0");
    for (float s : w_.scale)
      if (!(s > 0.0f) || !std::isfinite(s)) throw_error<ValueError>("QuantizedLinear '", name_, "': weight scale ", s, " must be finite and > 0");
    packed_ = kernels::cpu::Int8PackedB(w_.q.data(), w_.in, w_.out, w_.out);
    out_scale_.resize(o);
    for (std::size_t j = 0; j < o; ++j) out_scale_[j] = input_scale_ * w_.scale[j];
    set_isa(isa);
  }

  const std::string& name() const { return name_; }
  index_t in_features() const { return w_.in; }
  index_t out_features() const { return w_.out; }
  const QuantizedWeight& weight() const { return w_; }
  float input_scale() const { return input_scale_; }
  const std::vector<float>& bias() const { return bias_; }
  Int8Isa isa() const { return isa_; }
  void set_isa(Int8Isa isa) {
    if (!kernels::cpu::int8_isa_supported(isa))
      throw_error<ValueError>("QuantizedLinear '", name_, "': this CPU does not run the ", kernels::cpu::int8_isa_name(isa), " path");
    isa_ = isa;
  }
  // Bytes the inference model holds: int8 weight, f32 scales, f32 bias.
  std::size_t bytes() const { return w_.q.size() + 4 * (w_.scale.size() + bias_.size() + 1); }

  // x (B, I) -> y (B, O), relu fused when asked.
  void forward(const float* x, index_t batch, float* y, QuantScratch& s, bool relu = false) const {
    const index_t in = w_.in, out = w_.out;
    const std::size_t nx = static_cast<std::size_t>(batch * in), ny = static_cast<std::size_t>(batch * out);
    if (s.xq.size() < nx) s.xq.resize(nx);
    if (s.acc.size() < ny) s.acc.resize(ny);
    const float inv = 1.0f / input_scale_;
    for (std::size_t i = 0; i < nx; ++i) s.xq[i] = quantize_value(x[i], inv);
    kernels::cpu::int8_gemm(isa_, s.xq.data(), in, batch, packed_, s.acc.data(), out);
    const float* sc = out_scale_.data();
    const float* b = bias_.empty() ? nullptr : bias_.data();
    for (index_t r = 0; r < batch; ++r) {
      const std::int32_t* a = s.acc.data() + r * out;
      float* yr = y + r * out;
      for (index_t j = 0; j < out; ++j) {
        float v = static_cast<float>(a[j]) * sc[j] + (b ? b[j] : 0.0f);
        yr[j] = relu ? std::max(v, 0.0f) : v;
      }
    }
  }

  Tensor<float> operator()(const Tensor<float>& x, QuantScratch& s, bool relu = false) const {
    if (x.rank() != 2 || x.size(1) != w_.in)
      throw_error<ShapeError>("QuantizedLinear '", name_, "': input ", x.shape(), " does not fit (B, ", w_.in, ")");
    Tensor<float> y(Shape{x.size(0), w_.out});
    forward(x.data(), x.size(0), y.data(), s, relu);
    return y;
  }

 private:
  template <bool Bias>
  static std::vector<float> bias_of(const nn::Linear<float, Bias>& l) {
    if constexpr (Bias) return std::vector<float>(l.bias.value.data(), l.bias.value.data() + l.bias.numel());
    else return {};
  }

  std::string name_;
  QuantizedWeight w_;
  float input_scale_ = 1.0f;
  std::vector<float> bias_;
  std::vector<float> out_scale_;  // (O,) s_x * s_o
  kernels::cpu::Int8PackedB packed_;
  Int8Isa isa_ = Int8Isa::reference;
};

}  // namespace weft::compress
