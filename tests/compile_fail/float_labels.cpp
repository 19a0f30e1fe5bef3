// expect: cross_entropy: labels must be an integer tensor of class indices
// Twin (without WEFT_COMPILE_FAIL): the same call with integer labels compiles.
#include <cstdint>
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> logits({4, 3});
#ifdef WEFT_COMPILE_FAIL
  weft::Tensor<float> labels({4});
#else
  weft::Tensor<std::int32_t> labels({4});
#endif
  auto e = weft::cross_entropy(logits, labels);
  (void)e;
}
