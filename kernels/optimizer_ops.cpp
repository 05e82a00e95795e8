// The optimizer updates and the gradient-wide ops: CPU implementations, and the dispatch to CUDA.
#include "kernels/optimizer_ops.h"

#include <cmath>
#include <utility>
#include <vector>

#include "kernels/cuda_device.h"
#include "kernels/dispatch.h"
#include "kernels/eigen_maps.h"
#include "kernels/elementwise_cuda.h"
#include "kernels/optimizer_ops_cuda.h"

namespace mr1 {

namespace {

// AdamW's float constants of one step (decay: that of hyper.weight_decay).
struct AdamWConstants {
  float decay, beta1, beta2, step_size, root_correction2, epsilon;

  explicit AdamWConstants(const AdamWHyper& hyper) {
    const double correction1 = 1.0 - std::pow(hyper.beta1, static_cast<double>(hyper.step));
    const double correction2 = 1.0 - std::pow(hyper.beta2, static_cast<double>(hyper.step));
    decay = decay_for(hyper, hyper.weight_decay);
    beta1 = static_cast<float>(hyper.beta1);
    beta2 = static_cast<float>(hyper.beta2);
    step_size = static_cast<float>(hyper.learning_rate / correction1);
    root_correction2 = static_cast<float>(std::sqrt(correction2));
    epsilon = static_cast<float>(hyper.epsilon);
  }
  static float decay_for(const AdamWHyper& hyper, double weight_decay) {
    return static_cast<float>(1.0 - hyper.learning_rate * weight_decay);
  }
};

void check_adamw_shapes(const Tensor& parameter, const Tensor& grad, const Tensor& m, const Tensor& v) {
  check_shape(grad, parameter.shape(), "adamw_update: grad");
  check_shape(m, parameter.shape(), "adamw_update: m");
  check_shape(v, parameter.shape(), "adamw_update: v");
}

}  // namespace

void adamw_update(Tensor& parameter, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& hyper) {
  check_adamw_shapes(parameter, grad, m, v);
  const AdamWConstants constants(hyper);
  const float decay = constants.decay, beta1 = constants.beta1, beta2 = constants.beta2;
  const float step_size = constants.step_size, root_correction2 = constants.root_correction2;
  const float epsilon = constants.epsilon;
  if (common_device("adamw_update", {&parameter, &grad, &m, &v}) == Device::cuda) {
    return adamw_update_cuda(parameter.data(), grad.data(), m.data(), v.data(), parameter.numel(), decay, beta1, beta2,
                             step_size, root_correction2, epsilon, cuda::stream());
  }
  float* p = parameter.data();
  const float* g = grad.data();
  float* first = m.data();
  float* second = v.data();
  const int64_t n = parameter.numel();
#pragma omp parallel for simd if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    p[i] *= decay;
    first[i] = beta1 * first[i] + (1.0f - beta1) * g[i];
    second[i] = beta2 * second[i] + (1.0f - beta2) * g[i] * g[i];
    p[i] -= step_size * first[i] / (std::sqrt(second[i]) / root_correction2 + epsilon);
  }
}

void adamw_update(const std::vector<AdamWTensors>& tensors, const AdamWHyper& hyper) {
  std::vector<const Tensor*> all;
  for (const AdamWTensors& entry : tensors) {
    check_adamw_shapes(*entry.parameter, *entry.grad, *entry.m, *entry.v);
    all.insert(all.end(), {entry.parameter, entry.grad, entry.m, entry.v});
  }
  if (tensors.empty()) return;
  if (common_device("adamw_update", all) != Device::cuda) {
    for (const AdamWTensors& entry : tensors) {
      AdamWHyper own = hyper;
      own.weight_decay = entry.weight_decay;
      adamw_update(*entry.parameter, *entry.grad, *entry.m, *entry.v, own);
    }
    return;
  }
  const AdamWConstants constants(hyper);
  std::vector<AdamWSlot> slots;
  for (const AdamWTensors& entry : tensors) {
    slots.push_back(AdamWSlot{entry.parameter->data(), entry.grad->data(), entry.m->data(), entry.v->data(),
                              entry.parameter->numel(), AdamWConstants::decay_for(hyper, entry.weight_decay)});
  }
  adamw_update_many_cuda(slots.data(), static_cast<int64_t>(slots.size()), constants.beta1, constants.beta2,
                         constants.step_size, constants.root_correction2, constants.epsilon, cuda::stream());
}

void sgd_update(Tensor& parameter, const Tensor& grad, Tensor& momentum_buffer, double learning_rate,
                double momentum, double weight_decay) {
  check_shape(grad, parameter.shape(), "sgd_update: grad");
  if (momentum != 0) check_shape(momentum_buffer, parameter.shape(), "sgd_update: momentum buffer");
  const float decay = static_cast<float>(1.0 - learning_rate * weight_decay);
  const float lr = static_cast<float>(learning_rate), mu = static_cast<float>(momentum);
  if (common_device("sgd_update", {&parameter, &grad, momentum != 0 ? &momentum_buffer : nullptr}) == Device::cuda) {
    return sgd_update_cuda(parameter.data(), grad.data(), momentum != 0 ? momentum_buffer.data() : nullptr,
                           parameter.numel(), decay, lr, mu, cuda::stream());
  }
  float* p = parameter.data();
  const float* g = grad.data();
  float* buffer = momentum != 0 ? momentum_buffer.data() : nullptr;
  const int64_t n = parameter.numel();
  for (int64_t i = 0; i < n; ++i) {
    p[i] *= decay;
    float direction = g[i];
    if (buffer) direction = buffer[i] = mu * buffer[i] + g[i];
    p[i] -= lr * direction;
  }
}

double squared_norm(const Tensor& x) {
  if (common_device("squared_norm", {&x}) == Device::cuda) {
    return sum_squared_deviation_cuda(x.data(), x.numel(), 0.0, cuda::stream());
  }
  const float* data = x.data();
  return fixed_order_sum(
      x.numel(), [data](int64_t i) { return static_cast<double>(data[i]) * data[i]; }, 65537);
}

namespace {

// The defined tensors of a list (undefined or null entries take no part), with their data pointers and
// value counts, and the device they share. TensorType: Tensor or const Tensor.
template <typename TensorType>
struct DefinedTensors {
  std::vector<const Tensor*> tensors;
  std::vector<decltype(std::declval<TensorType&>().data())> arrays;
  std::vector<int64_t> sizes;
  Device device = Device::cpu;  // that of the defined tensors (the CPU when there are none)

  DefinedTensors(const char* op, const std::vector<TensorType*>& all) {
    for (TensorType* x : all) {
      if (!x || !x->defined()) continue;
      tensors.push_back(x);
      arrays.push_back(x->data());
      sizes.push_back(x->numel());
    }
    if (!tensors.empty()) device = common_device(op, tensors);
  }
  int64_t count() const { return static_cast<int64_t>(tensors.size()); }
};

// x ← value · x, or x ← value when `overwrite`, for each defined tensor; on CUDA in one launch.
void scale_or_fill(const char* op, const std::vector<Tensor*>& tensors, float value, bool overwrite) {
  const DefinedTensors<Tensor> defined(op, tensors);
  if (defined.device == Device::cuda) {
    (overwrite ? fill_many_cuda : scale_many_cuda)(defined.arrays.data(), defined.sizes.data(), defined.count(), value,
                                                   cuda::stream());
    return;
  }
  for (int64_t a = 0; a < defined.count(); ++a) {
    float* data = defined.arrays[static_cast<size_t>(a)];
    const int64_t n = defined.sizes[static_cast<size_t>(a)];
#pragma omp parallel for simd if (n > 65536)
    for (int64_t i = 0; i < n; ++i) data[i] = overwrite ? value : value * data[i];
  }
}

}  // namespace

double squared_norm(const std::vector<const Tensor*>& tensors) {
  const DefinedTensors<const Tensor> defined("squared_norm", tensors);
  std::vector<double> sums(defined.tensors.size());
  if (defined.device == Device::cuda) {
    sum_squares_cuda(defined.arrays.data(), defined.sizes.data(), defined.count(), sums.data(), cuda::stream());
  } else {
    for (size_t i = 0; i < sums.size(); ++i) sums[i] = squared_norm(*defined.tensors[i]);
  }
  double total = 0;
  for (const double sum : sums) total += sum;
  return total;
}

void scale_inplace(const std::vector<Tensor*>& tensors, float factor) {
  scale_or_fill("scale_inplace", tensors, factor, false);
}

void fill_inplace(const std::vector<Tensor*>& tensors, float value) {
  scale_or_fill("fill_inplace", tensors, value, true);
}

}  // namespace mr1
