// The weft side of the interop test (interop.sh): writes a safetensors file
// of known tensors and a small checkpoint for the PyPI safetensors package
// to read, and reads the file that package wrote, comparing values.
//   interop_tool write FILE | checkpoint DIR | read FILE
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>
#include <weft/io/checkpoint/checkpoint.hpp>
#include <weft/io/checkpoint/safetensors.hpp>
#include <weft/nn/nn.hpp>
#include <weft/weft.hpp>

namespace ck = weft::io::checkpoint;

namespace {

struct Expected {  // the same values as interop.py's expected()
  std::vector<float> f32;
  std::vector<double> f64{1e-300, -2.5, 3.141592653589793};
  std::vector<std::int64_t> i64{-(std::int64_t(1) << 62), 7, std::int64_t(1) << 40};
  std::vector<std::int32_t> i32;
  std::vector<std::uint8_t> u8{0, 255, 7};
  std::vector<std::uint16_t> f16{0x3e00, 0xb400};  // 1.5, -0.25 as IEEE half bits
  std::vector<float> empty;
  std::vector<float> scalar{42.0f};
  Expected() {
    for (int i = 0; i < 6; ++i) f32.push_back(static_cast<float>(i) * 0.5f - 1);
    for (int i = 0; i < 24; ++i) i32.push_back(i - 12);
  }
};

template <class T>
bool same(const ck::SafetensorsReader& r, const char* name, ck::Dtype dt, std::vector<std::uint64_t> shape, const std::vector<T>& want) {
  const ck::TensorInfo& t = r.info(name);
  std::vector<T> got(want.size());
  if (t.dtype != dt || t.shape != shape) {
    std::fprintf(stderr, "%s: tensor '%s': %s %s, expected %s %s\n", r.path().c_str(), name, std::string(ck::dtype_name(t.dtype)).c_str(),
                 ck::shape_text(t.shape).c_str(), std::string(ck::dtype_name(dt)).c_str(), ck::shape_text(shape).c_str());
    return false;
  }
  r.read(name, got.data(), got.size() * sizeof(T));
  if (got != want) {
    std::fprintf(stderr, "%s: tensor '%s': values differ\n", r.path().c_str(), name);
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: interop_tool write FILE | checkpoint DIR | read FILE\n");
    return 2;
  }
  const std::string cmd = argv[1], path = argv[2];
  const Expected e;
  try {
    if (cmd == "write") {
      ck::SafetensorsWriter w;
      w.add("f32", e.f32.data(), {2, 3});
      w.add("f64", e.f64.data(), {3});
      w.add("i64", e.i64.data(), {3});
      w.add("i32", e.i32.data(), {2, 3, 4});
      w.add("u8", e.u8.data(), {3});
      w.add("f16", ck::Dtype::F16, {2}, e.f16.data());
      w.add("empty", e.empty.data(), {0, 5});
      w.add("scalar", e.scalar.data(), {});
      w.metadata("written_by", "weft");
      w.write(path);
    } else if (cmd == "checkpoint") {
      weft::nn::Linear<float> l1(5, 4, 1), l2(4, 3, 2);
      weft::nn::Registry<float> reg;
      reg.add("l1", l1).add("l2", l2);
      weft::nn::Adam<float> opt(reg);
      auto visit = [&](auto& v) {
        auto m = weft::nn::prefixed("model", v);
        weft::nn::visit_state(reg, m);
        auto o = weft::nn::prefixed("optimizer", v);
        opt.visit_state(o);
      };
      ck::save(path, visit, {.step = 1});
    } else if (cmd == "read") {
      const ck::SafetensorsReader r(path);
      const std::string* by = r.header().meta("written_by");
      bool ok = by && *by == "safetensors";
      ok = same(r, "f32", ck::Dtype::F32, {2, 3}, e.f32) && ok;
      ok = same(r, "f64", ck::Dtype::F64, {3}, e.f64) && ok;
      ok = same(r, "i64", ck::Dtype::I64, {3}, e.i64) && ok;
      ok = same(r, "i32", ck::Dtype::I32, {2, 3, 4}, e.i32) && ok;
      ok = same(r, "u8", ck::Dtype::U8, {3}, e.u8) && ok;
      ok = same(r, "f16", ck::Dtype::F16, {2}, e.f16) && ok;
      ok = same(r, "empty", ck::Dtype::F32, {0, 5}, e.empty) && ok;
      ok = same(r, "scalar", ck::Dtype::F32, {}, e.scalar) && ok;
      if (!ok) return 1;
      std::printf("weft read %zu tensors from safetensors' %s: values equal\n", r.header().tensors.size(), path.c_str());
    } else {
      std::fprintf(stderr, "unknown command %s\n", cmd.c_str());
      return 2;
    }
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "%s\n", ex.what());
    return 1;
  }
  return 0;
}
