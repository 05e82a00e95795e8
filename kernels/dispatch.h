// Backend dispatch shared by every op: which device the inputs live on (every op has a CUDA kernel,
// so there is no fallback to choose).
#pragma once

#include <initializer_list>
#include <stdexcept>
#include <string>

#include "kernels/tensor.h"

namespace mr1 {

// The device all defined tensors share; throws naming the op when they differ. Tensors: a range of
// const Tensor*.
template <typename Tensors>
Device common_device(const char* op, const Tensors& tensors) {
  bool found = false;
  Device device = Device::cpu;
  for (const Tensor* tensor : tensors) {
    if (!tensor || !tensor->defined()) continue;
    if (found && tensor->device() != device) {
      throw std::invalid_argument(std::string(op) + ": inputs on different devices");
    }
    device = tensor->device();
    found = true;
  }
  return device;
}

inline Device common_device(const char* op, std::initializer_list<const Tensor*> tensors) {
  return common_device<std::initializer_list<const Tensor*>>(op, tensors);
}

}  // namespace mr1
