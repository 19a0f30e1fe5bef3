// expect: cross_entropy: labels must be an integer tensor of class indices
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> logits({4, 3}), labels({4});
  auto e = weft::cross_entropy(logits, labels);
  (void)e;
}
