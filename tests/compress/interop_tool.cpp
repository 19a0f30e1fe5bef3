// The weft side of tests/compress/interop.sh: `write DIR` saves a quantised
// 2-layer model (mlp_int8.safetensors) and the f32 weights it came from
// (f32.safetensors) for Python to check against the quantisation rule;
// `read FILE` loads a quantised model written by Python and prints, per
// layer, what the script compares with its own values.
#include <cstdio>
#include <cstring>
#include <string>
#include <weft/compress/save.hpp>
#include <weft/nn/nn.hpp>

using namespace weft;

int main(int argc, char** argv) {
  if (argc != 3 || (std::strcmp(argv[1], "write") != 0 && std::strcmp(argv[1], "read") != 0)) {
    std::fprintf(stderr, "usage: interop_tool write DIR | read FILE\n");
    return 2;
  }
  try {
    if (std::strcmp(argv[1], "write") == 0) {
      const std::string dir = argv[2];
      nn::Linear<float> l1(13, 6, 1);
      nn::Linear<float, false> l2(6, 3, 2);
      const compress::QuantizedLinear q1("l1", l1, 0.03f), q2("l2", l2, 0.25f);
      compress::save_quantized(dir + "/mlp_int8.safetensors", {&q1, &q2});
      io::checkpoint::SafetensorsWriter w;
      w.add("l1.weight", l1.weight.value.data(), {13, 6});
      w.add("l1.bias", l1.bias.value.data(), {6});
      w.add("l2.weight", l2.weight.value.data(), {6, 3});
      w.write(dir + "/f32.safetensors");
      return 0;
    }
    for (const compress::QuantizedLinear& l : compress::load_quantized(argv[2])) {
      long long qsum = 0;
      double ssum = 0, bsum = 0;
      for (std::int8_t v : l.weight().q) qsum += v;
      for (float s : l.weight().scale) ssum += s;
      for (float b : l.bias()) bsum += b;
      std::printf("%s %lld %lld %lld %.9g %.9g %.9g\n", l.name().c_str(), static_cast<long long>(l.in_features()),
                  static_cast<long long>(l.out_features()), qsum, ssum, static_cast<double>(l.input_scale()), bsum);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "interop_tool: %s\n", e.what());
    return 1;
  }
}
