// expect: an expression cannot mix tensors of different devices
// Twin (without WEFT_COMPILE_FAIL): an expression over one device compiles.
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> x({3});
  weft::TensorView<float, weft::cuda> d(nullptr, weft::Shape{3});
#ifdef WEFT_COMPILE_FAIL
  auto e = x + d;
#else
  auto e = d + d;
#endif
  (void)e;
}
