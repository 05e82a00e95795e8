// The tensor type of Mamba R1: float32 values, a shape and the device that holds them.
// Ops take and return Tensors; blocks and routers never see Eigen or CUDA types.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace mr1 {

enum class Device { cpu, cuda };

const char* device_name(Device device);

using Shape = std::vector<int64_t>;

std::string shape_string(const Shape& shape);
// The number of elements; a ShapeError when an extent is negative or the count overflows 64 bits.
int64_t shape_numel(const Shape& shape);

// This machine's physical memory in bytes (the largest int64 when the system does not say).
int64_t host_memory_bytes();
// "1.5 GiB", "0.00372 GiB", "2.2e+12 GiB": a byte count for messages.
std::string gib_string(long double bytes);
// Whether `bytes` fit in this machine's memory, and "this machine has 23.5 GiB", for the message when not.
bool fits_in_host_memory(long double bytes);
std::string host_memory_text();

// A user-visible shape mismatch: the message names the tensor, the expected and the found shape.
class ShapeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Tests call this with true: Tensor::empty then fills with NaN, so that a value an op forgets to write
// shows in its result.
void set_poison_empty_tensors(bool poison);

class Tensor {
 public:
  Tensor() = default;
  // A zero-filled tensor of this shape on this device.
  explicit Tensor(Shape shape, Device device = Device::cpu);

  static Tensor zeros(Shape shape, Device device = Device::cpu) { return Tensor(std::move(shape), device); }
  // A tensor whose values are unspecified, for an op that writes every one of them (it saves the
  // zero-fill: on CUDA, one memset launch). NaN everywhere after set_poison_empty_tensors(true).
  static Tensor empty(Shape shape, Device device = Device::cpu);
  static Tensor full(Shape shape, float value);
  // A CPU tensor holding these values, in row-major order; their count must match the shape.
  static Tensor from(Shape shape, const std::vector<float>& values);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  // The size of one axis; negative axes count from the end.
  int64_t size(int axis) const;
  int64_t numel() const { return numel_; }
  Device device() const { return device_; }
  bool is_cpu() const { return device_ == Device::cpu; }

  float* data() { return storage_.get() + offset_; }
  const float* data() const { return storage_.get() + offset_; }

  // Element access for CPU tensors (tests and small loops); no bounds check in release builds.
  float& operator[](int64_t flat_index) { return data()[flat_index]; }
  float operator[](int64_t flat_index) const { return data()[flat_index]; }
  std::vector<float> to_vector() const;

  // A view with another shape of the same element count; shares storage.
  Tensor reshape(Shape shape) const;
  // Rows [begin, end) along the first axis; shares storage.
  Tensor slice_rows(int64_t begin, int64_t end) const;
  Tensor clone() const;
  Tensor to(Device device) const;
  void fill(float value);
  void copy_from(const Tensor& other);  // same shape, any devices

  std::string shape_string() const { return mr1::shape_string(shape_); }

 private:
  // Zero-filled when `zero`; otherwise as Tensor::empty leaves it.
  Tensor(Shape shape, Device device, bool zero);

  Shape shape_;
  int64_t numel_ = 0;
  Device device_ = Device::cpu;
  std::shared_ptr<float> storage_;
  int64_t offset_ = 0;
};

// Throws ShapeError "<what>: expected shape (a, b), found (c, d)" unless the shapes are equal.
// A negative entry in `expected` matches any size.
void check_shape(const Tensor& tensor, const Shape& expected, const std::string& what);
void check_same_device(const Tensor& a, const Tensor& b, const std::string& what);

}  // namespace mr1
