// Registry: the named parameters of a model ("l1.weight", "l1.bias", ...), in
// registration order. Optimizers, checkpoints, data-parallel strategies and
// per-layer communicator policies find parameters through it. A layer exposes
// its parameters with for_each_parameter(f), calling f(local_name, parameter).
// Device: where the parameters live (a registry holds one device's).
#pragma once

#include <string>
#include <type_traits>
#include <vector>

#include "../expr/parameter.hpp"

namespace weft::nn {

template <class T = float, class Device = cpu>
class Registry {
 public:
  using value_type = T;
  using device_type = Device;
  using parameter_type = Parameter<T, Device>;

  // Register every parameter of `layer` under `prefix` ("l1" -> "l1.weight").
  template <class Layer>
  Registry& add(const std::string& prefix, Layer& layer) {
    layer.for_each_parameter([&](const std::string& local, Parameter<T, Device>& p) {
      add(p, prefix.empty() ? local : prefix + "." + local);
    });
    return *this;
  }

  Registry& add(Parameter<T, Device>& p, const std::string& name) {
    for (const Parameter<T, Device>* q : params_) {
      if (q == &p) throw_error<ValueError>("registry: parameter ", name, " is registered twice (also as ", q->name, ")");
      if (q->name == name) throw_error<ValueError>("registry: two parameters are named ", name);
    }
    p.name = name;
    params_.push_back(&p);
    return *this;
  }

  std::size_t size() const { return params_.size(); }
  Parameter<T, Device>& operator[](std::size_t i) const { return *params_[i]; }
  auto begin() const { return params_.begin(); }
  auto end() const { return params_.end(); }

  // nullptr when absent.
  Parameter<T, Device>* find(const std::string& name) const {
    for (Parameter<T, Device>* p : params_)
      if (p->name == name) return p;
    return nullptr;
  }
  Parameter<T, Device>& at(const std::string& name) const {
    if (Parameter<T, Device>* p = find(name)) return *p;
    throw_error<ValueError>("registry: no parameter named ", name);
  }

  index_t numel() const {
    index_t n = 0;
    for (const Parameter<T, Device>* p : params_) n += p->numel();
    return n;
  }

  void zero_grad() const
    requires std::is_same_v<Device, cpu>
  {
    for (Parameter<T, Device>* p : params_) p->zero_grad();
  }

 private:
  std::vector<Parameter<T, Device>*> params_;
};

}  // namespace weft::nn
