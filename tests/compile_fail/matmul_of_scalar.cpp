// expect: matmul: the left operand's rank is known from its type and is not 2
#include <weft/expr/matmul.hpp>
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> x({2, 2}), y({2, 2});
  auto e = weft::matmul(weft::sum(x), y);
  (void)e;
}
