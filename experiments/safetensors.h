// safetensors files (https://github.com/huggingface/safetensors): read with full validation,
// written atomically (temporary file, then rename).
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace mr1 {

enum class DType { F32, F16, BF16, F64, I64, I32, U8, BOOL };

const char* dtype_name(DType dtype);   // "F32", "BF16", ...
size_t dtype_size(DType dtype);        // bytes per element

// A malformed, truncated or mismatched file; the message names the file and the tensor.
class SafetensorsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One tensor as stored: its dtype, shape and raw little-endian bytes.
struct StoredTensor {
  DType dtype = DType::F32;
  Shape shape;
  std::vector<uint8_t> bytes;

  int64_t numel() const { return shape_numel(shape); }
  // Any numeric dtype converted to a float32 CPU tensor (F16 and BF16 exactly, F64 and integers rounded).
  Tensor to_float() const;
  // Integer or BOOL dtypes as int64 values (floating dtypes are refused).
  std::vector<int64_t> to_int64() const;

  static StoredTensor from_float(const Tensor& tensor);  // F32
  static StoredTensor from_int64(const Shape& shape, const std::vector<int64_t>& values);  // I64
  static StoredTensor from_int32(const Shape& shape, const std::vector<int32_t>& values);  // I32
  static StoredTensor from_uint8(const Shape& shape, const std::vector<uint8_t>& values, DType dtype = DType::U8);
};

struct SafetensorsFile {
  std::string path;                             // where it was read from (for messages)
  std::map<std::string, StoredTensor> tensors;  // by name
  std::map<std::string, std::string> metadata;  // the optional "__metadata__" table

  bool contains(const std::string& name) const { return tensors.count(name) != 0; }
  // The tensor of this name; throws SafetensorsError naming the file and the tensor when absent.
  const StoredTensor& get(const std::string& name) const;
};

// Reads and validates: the header length fits the file, the header is a JSON object, every entry has a
// known dtype, a shape of non-negative integers and data_offsets [begin, end] with end − begin equal to
// numel · dtype size, offsets inside the data section, no two tensors overlapping, and the data section
// fully covered. Any failure throws SafetensorsError naming the file and the tensor.
SafetensorsFile read_safetensors(const std::string& path);

// Writes tensors in name order (data aligned to 8 bytes), to PATH.tmp then renamed to PATH.
void write_safetensors(const std::string& path, const std::map<std::string, StoredTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace mr1
