// Story 0: the README's tour, compiled and run by CI so it stays true.
#include <cstdio>
#include <weft/expr/matmul.hpp>  // opt-in: matmul through CBLAS (OpenBLAS)
#include <weft/weft.hpp>         // everything with no optional dependency

using namespace weft;

int main() {
  Tensor<float> x({2, 3}, {1, 2, 3, 4, 5, 6}), b({3}, {0.5f, -1, 2});
  Tensor<float> y = eval(tanh(x * b + sin(x)));  // one fused pass, NumPy broadcasting
  x = x / sum(x, 1, /*keepdim=*/true);           // aliasing is detected and handled
  Tensor<float> p = eval(softmax(matmul(x, transpose(x))));

  // Reverse mode: f is called with typed leaves, so the gradient is derived at compile time.
  auto f = [](auto a, auto c) { return sum(tanh(a * c + sin(a)) * exp(-c * c)); };
  auto [value, dx, db] = value_and_grad(f, x, b);  // value.item(), dx, db: tensors

  // A hook runs for each input the moment its gradient is final.
  Workspace<> ws;  // reused: no allocation once warm
  TensorView<float> grads[] = {dx.view(), db.view()};
  auto hook = [](std::size_t input, TensorView<float> grad) {
    std::printf("gradient of input %zu is final: %lld elements\n", input, static_cast<long long>(grad.numel()));
  };
  value_and_grad_into(f, ws, grads, hook, x, b);

  // Check a gradient like torch.autograd.gradcheck (double, central differences).
  auto check = gradcheck(f, x, b);
  auto fast = gradcheck(f, GradcheckOptions{.fast = true}, x, b);
  std::printf("y(1, 2) = %g, p(0, 1) = %g, f = %g, gradcheck: %s, fast: %s\n", static_cast<double>(y(1, 2)),
              static_cast<double>(p(0, 1)), static_cast<double>(value.item()), check ? "ok" : check.message.c_str(),
              fast ? "ok" : fast.message.c_str());
  return check && fast ? 0 : 1;
}
