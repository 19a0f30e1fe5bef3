// expect: scaled_dot_product_attention: q's rank is known from its type and is neither 3
// Twin (without WEFT_COMPILE_FAIL): the same attention over (B, H, T, D) operands compiles.
#include <weft/expr/attention.hpp>
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> q({1, 2, 3, 4}), k({1, 2, 3, 4}), v({1, 2, 3, 4});
#ifdef WEFT_COMPILE_FAIL
  auto e = weft::scaled_dot_product_attention(weft::sum(q), k, v);
#else
  auto e = weft::scaled_dot_product_attention(q, k, v, {.causal = true});
#endif
  (void)e;
}
