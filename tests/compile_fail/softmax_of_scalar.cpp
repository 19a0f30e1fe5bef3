// expect: softmax/log_softmax work over the last axis, and this operand has rank 0
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> x({2, 3});
  auto e = weft::softmax(weft::sum(x));
  (void)e;
}
