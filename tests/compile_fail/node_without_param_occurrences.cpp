// expect: this expression node does not state param_occurrences
// A node that does not say how many parameters it holds is refused when it is
// differentiated, rather than taken to hold none (its parameters would
// silently get no gradient). Its twin (without WEFT_COMPILE_FAIL) states
// `param_occurrences = 0`.
#include <weft/weft.hpp>

struct Forgetful : weft::LeafNodeBase {
  using value_type = float;
  using device_type = weft::cpu;
  weft::TensorView<float> v;
#ifdef WEFT_COMPILE_FAIL
  // no param_occurrences
#else
  static constexpr int param_occurrences = 0;
#endif
  weft::Shape shape() const { return v.shape; }
  template <class X>
  State forward(const X&) const {
    return {};
  }
  template <class G>
  weft::BoundTensor<float> bind(State&, const weft::Shape& out, G&) const {
    return {v.data, weft::aligned_strides(v.shape, v.strides, out), v.shape, v.strides};
  }
};

int main() {
  weft::Tensor<float> x({4}, {1, 2, 3, 4});
  Forgetful f;
  f.v = x.view();
  weft::Workspace<> ws;
  (void)weft::backward(weft::sum(weft::tanh(f)), ws);
}
