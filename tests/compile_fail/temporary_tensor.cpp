// expect: an expression cannot hold a temporary Tensor
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> x({3});
  auto e = weft::Tensor<float>({3}, 1.0f) + x;  // the temporary dies at the semicolon
  (void)e;
}
