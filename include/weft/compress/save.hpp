// Quantised models in weft's checkpoint file format (io/checkpoint/safetensors.hpp):
// one safetensors file, each QuantizedLinear `name` as
//   name.weight        I8  (I, O)   per-channel symmetric int8 weight
//   name.weight_scale  F32 (O,)     its scales (W ~ weight * weight_scale)
//   name.input_scale   F32 (1,)     the calibrated activation scale
//   name.bias          F32 (O,)     when the layer has one
// and in __metadata__: "weft.format" = "compress.int8", "weft.layers" = the
// names in order (comma-separated), plus the writer's CRC-32 per tensor.
// Any safetensors reader opens it (torch: load_file gives int8 and float32
// tensors); load_quantized reads it back bit for bit. Opt-in (zlib, POSIX),
// like the rest of io/checkpoint.
#pragma once

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "../io/checkpoint/safetensors.hpp"
#include "quantize.hpp"

namespace weft::compress {

inline constexpr const char* kQuantizedFormat = "compress.int8";

// Writes the layers atomically; returns the file's size in bytes.
inline std::uint64_t save_quantized(const std::filesystem::path& path, const std::vector<const QuantizedLinear*>& layers) {
  namespace ck = io::checkpoint;
  ck::SafetensorsWriter w;
  std::string names;
  std::vector<float> input_scales(layers.size());
  for (std::size_t k = 0; k < layers.size(); ++k) {
    const QuantizedLinear& l = *layers[k];
    if (l.name().empty() || l.name().find(',') != std::string::npos)
      throw_error<ValueError>("save_quantized: layer ", k, " has name '", l.name(), "' (must be non-empty, without commas)");
    const auto in = static_cast<std::uint64_t>(l.in_features()), out = static_cast<std::uint64_t>(l.out_features());
    input_scales[k] = l.input_scale();
    w.add(l.name() + ".weight", ck::Dtype::I8, {in, out}, l.weight().q.data());
    w.add(l.name() + ".weight_scale", ck::Dtype::F32, {out}, l.weight().scale.data());
    w.add(l.name() + ".input_scale", ck::Dtype::F32, {1}, &input_scales[k]);
    if (!l.bias().empty()) w.add(l.name() + ".bias", ck::Dtype::F32, {out}, l.bias().data());
    names += (k ? "," : "") + l.name();
  }
  w.metadata("weft.format", kQuantizedFormat);
  w.metadata("weft.layers", names);
  return w.write(path);
}

// Every layer the file holds, in saved order, each checked (dtype, shape,
// and the CRC-32 where the file has one: weft writes them, other writers such
// as PyPI safetensors do not) and repacked for `isa`.
inline std::vector<QuantizedLinear> load_quantized(const std::filesystem::path& path,
                                                   Int8Isa isa = kernels::cpu::best_int8_isa()) {
  namespace ck = io::checkpoint;
  const ck::SafetensorsReader r(path);
  const std::string file = path.string();
  const std::string* format = r.header().meta("weft.format");
  const std::string* names = r.header().meta("weft.layers");
  if (!format || *format != kQuantizedFormat || !names)
    throw_error<IoError>(file, ": not a weft quantised model (__metadata__ needs weft.format = ", kQuantizedFormat,
                         " and weft.layers)");
  auto expect = [&](const std::string& t, ck::Dtype dt, std::vector<std::uint64_t> shape) -> const ck::TensorInfo& {
    const ck::TensorInfo& i = r.info(t);
    if (i.dtype != dt || i.shape != shape)
      throw_error<IoError>(file, ": tensor '", t, "' is ", ck::dtype_name(i.dtype), " ", ck::shape_text(i.shape), ", expected ",
                           ck::dtype_name(dt), " ", ck::shape_text(shape));
    return i;
  };
  std::vector<QuantizedLinear> out;
  std::size_t at = 0;
  while (at <= names->size()) {
    const std::size_t end = std::min(names->find(',', at), names->size());
    const std::string name = names->substr(at, end - at);
    at = end + 1;
    const ck::TensorInfo& wi = r.info(name + ".weight");
    if (wi.dtype != ck::Dtype::I8 || wi.shape.size() != 2)
      throw_error<IoError>(file, ": tensor '", name, ".weight' is ", ck::dtype_name(wi.dtype), " ", ck::shape_text(wi.shape),
                           ", expected I8 (in, out)");
    const std::uint64_t in = wi.shape[0], o = wi.shape[1];
    QuantizedWeight w{static_cast<index_t>(in), static_cast<index_t>(o), std::vector<std::int8_t>(in * o),
                      std::vector<float>(o)};
    r.read(name + ".weight", w.q.data(), w.q.size());
    expect(name + ".weight_scale", ck::Dtype::F32, {o});
    r.read(name + ".weight_scale", w.scale.data(), 4 * o);
    float input_scale = 0;
    expect(name + ".input_scale", ck::Dtype::F32, {1});
    r.read(name + ".input_scale", &input_scale, 4);
    std::vector<float> bias;
    if (r.header().find(name + ".bias")) {
      expect(name + ".bias", ck::Dtype::F32, {o});
      bias.resize(o);
      r.read(name + ".bias", bias.data(), 4 * o);
    }
    try {
      out.emplace_back(name, std::move(w), input_scale, std::move(bias), isa);
    } catch (const Error& e) {
      throw_error<IoError>(file, ": ", e.what());
    }
  }
  return out;
}

}  // namespace weft::compress
