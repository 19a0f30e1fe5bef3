// expect: an expression cannot mix tensors of different devices
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> x({3});
  weft::TensorView<float, weft::cuda> d(nullptr, weft::Shape{3});
  auto e = x + d;
  (void)e;
}
