// Tensor storage, views and copies between devices.
#include "kernels/tensor.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>

#include <unistd.h>

#include "kernels/cuda_device.h"

namespace mr1 {

const char* device_name(Device device) { return device == Device::cpu ? "cpu" : "cuda"; }

std::string shape_string(const Shape& shape) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ")";
  return out.str();
}

int64_t shape_numel(const Shape& shape) {
  int64_t count = 1;
  for (int64_t extent : shape) {
    if (extent < 0) throw ShapeError("negative extent in shape " + shape_string(shape));
    if (__builtin_mul_overflow(count, extent, &count)) {
      throw ShapeError("shape " + shape_string(shape) + " has more elements than a 64-bit count holds");
    }
  }
  return count;
}

int64_t host_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return std::numeric_limits<int64_t>::max();
  return static_cast<int64_t>(pages) * page_size;
}

std::string gib_string(long double bytes) {
  char text[64];
  const long double gib = bytes / (1 << 30);
  std::snprintf(text, sizeof text, gib >= 0.1L && gib < 1e5L ? "%.1Lf GiB" : "%.3Lg GiB", gib);
  return text;
}

bool fits_in_host_memory(long double bytes) { return bytes <= static_cast<long double>(host_memory_bytes()); }

std::string host_memory_text() {
  return "this machine has " + gib_string(static_cast<long double>(host_memory_bytes()));
}

namespace {

bool poison_empty_tensors = false;

[[noreturn]] void out_of_memory(int64_t count) {
  throw std::runtime_error("out of memory: a tensor of " + std::to_string(count) + " floats needs " +
                           gib_string(static_cast<long double>(count) * sizeof(float)) + "; " + host_memory_text());
}

// Zero-filled, or left as it is when `zero` is false. Running out of memory is an error naming the size.
std::shared_ptr<float> allocate_storage(int64_t count, Device device, bool zero) {
  if (count > std::numeric_limits<int64_t>::max() / static_cast<int64_t>(2 * sizeof(float))) out_of_memory(count);
  const size_t bytes = static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(float);
  if (device == Device::cuda) {
    void* pointer = cuda::allocate(bytes);
    if (zero) cuda::memset_zero(pointer, bytes);
    return std::shared_ptr<float>(static_cast<float*>(pointer), [](float* p) { cuda::release(p); });
  }
  // 64-byte alignment for AVX-512 loads; aligned_alloc wants a multiple of the alignment.
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* pointer = std::aligned_alloc(64, rounded);
  if (!pointer) out_of_memory(count);
  if (zero) std::memset(pointer, 0, rounded);
  return std::shared_ptr<float>(static_cast<float*>(pointer), [](float* p) { std::free(p); });
}

}  // namespace

void set_poison_empty_tensors(bool poison) { poison_empty_tensors = poison; }

Tensor::Tensor(Shape shape, Device device, bool zero)
    : shape_(std::move(shape)), numel_(shape_numel(shape_)), device_(device) {
  storage_ = allocate_storage(numel_, device_, zero);
}

Tensor::Tensor(Shape shape, Device device) : Tensor(std::move(shape), device, true) {}

Tensor Tensor::empty(Shape shape, Device device) {
  Tensor tensor(std::move(shape), device, false);
  if (poison_empty_tensors) tensor.fill(std::numeric_limits<float>::quiet_NaN());
  return tensor;
}

Tensor Tensor::full(Shape shape, float value) {
  Tensor tensor(std::move(shape));
  tensor.fill(value);
  return tensor;
}

Tensor Tensor::from(Shape shape, const std::vector<float>& values) {
  Tensor tensor(std::move(shape));
  if (static_cast<int64_t>(values.size()) != tensor.numel()) {
    throw ShapeError("Tensor::from: shape " + tensor.shape_string() + " holds " +
                     std::to_string(tensor.numel()) + " values, given " + std::to_string(values.size()));
  }
  std::copy(values.begin(), values.end(), tensor.data());
  return tensor;
}

int64_t Tensor::size(int axis) const {
  const int r = rank();
  const int resolved = axis < 0 ? axis + r : axis;
  if (resolved < 0 || resolved >= r) {
    throw ShapeError("axis " + std::to_string(axis) + " out of range for shape " + shape_string());
  }
  return shape_[resolved];
}

std::vector<float> Tensor::to_vector() const {
  Tensor host = to(Device::cpu);
  return std::vector<float>(host.data(), host.data() + host.numel());
}

Tensor Tensor::reshape(Shape shape) const {
  int64_t known = 1;
  int infer_axis = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1 && infer_axis < 0) {
      infer_axis = static_cast<int>(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer_axis >= 0 && known > 0) shape[infer_axis] = numel_ / known;
  if (shape_numel(shape) != numel_) {
    throw ShapeError("cannot reshape " + shape_string() + " to " + mr1::shape_string(shape));
  }
  Tensor view = *this;
  view.shape_ = std::move(shape);
  return view;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  if (rank() == 0 || begin < 0 || end < begin || end > shape_[0]) {
    throw ShapeError("slice [" + std::to_string(begin) + ", " + std::to_string(end) + ") out of range for " +
                     shape_string());
  }
  Tensor view = *this;
  const int64_t row = shape_[0] == 0 ? 0 : numel_ / shape_[0];
  view.shape_[0] = end - begin;
  view.numel_ = row * (end - begin);
  view.offset_ = offset_ + begin * row;
  return view;
}

Tensor Tensor::clone() const {
  Tensor copy = empty(shape_, device_);
  copy.copy_from(*this);
  return copy;
}

Tensor Tensor::to(Device device) const {
  if (device == device_) return *this;
  Tensor moved = empty(shape_, device);
  moved.copy_from(*this);
  return moved;
}

void Tensor::fill(float value) {
  if (device_ == Device::cuda) {
    cuda::fill(data(), value, numel_);
    return;
  }
  std::fill(data(), data() + numel_, value);
}

void Tensor::copy_from(const Tensor& other) {
  if (other.numel_ != numel_) {
    throw ShapeError("copy of " + other.shape_string() + " into " + shape_string());
  }
  const size_t bytes = static_cast<size_t>(numel_) * sizeof(float);
  if (bytes == 0) return;
  if (device_ == Device::cpu && other.device_ == Device::cpu) {
    std::memcpy(data(), other.data(), bytes);
  } else if (device_ == Device::cuda && other.device_ == Device::cpu) {
    cuda::copy_host_to_device(data(), other.data(), bytes);
  } else if (device_ == Device::cpu && other.device_ == Device::cuda) {
    cuda::copy_device_to_host(data(), other.data(), bytes);
  } else {
    cuda::copy_device_to_device(data(), other.data(), bytes);
  }
}

void check_shape(const Tensor& tensor, const Shape& expected, const std::string& what) {
  bool match = tensor.rank() == static_cast<int>(expected.size());
  for (size_t i = 0; match && i < expected.size(); ++i) {
    match = expected[i] < 0 || expected[i] == tensor.shape()[i];
  }
  if (!match) {
    std::string wanted = "(";
    for (size_t i = 0; i < expected.size(); ++i) {
      wanted += (i ? ", " : "") + (expected[i] < 0 ? std::string("*") : std::to_string(expected[i]));
    }
    wanted += ")";
    throw ShapeError(what + ": expected shape " + wanted + ", found " + tensor.shape_string());
  }
}

void check_same_device(const Tensor& a, const Tensor& b, const std::string& what) {
  if (a.device() != b.device()) {
    throw std::invalid_argument(what + ": tensors on different devices (" + device_name(a.device()) + " and " +
                                device_name(b.device()) + ")");
  }
}

}  // namespace mr1
