// Reading (with full validation) and atomic writing of safetensors files; F16 and BF16 decoded bit by bit.
#include "experiments/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <tuple>

#include <nlohmann/json.hpp>

namespace mr1 {

namespace {

using Json = nlohmann::json;

constexpr DType kAllDTypes[] = {DType::F32, DType::F16, DType::BF16, DType::F64,
                                DType::I64, DType::I32, DType::U8,   DType::BOOL};
constexpr uint64_t kHeaderLengthBytes = 8;

std::string valid_dtype_names() {
  std::string names;
  for (DType dtype : kAllDTypes) names += (names.empty() ? "" : ", ") + std::string(dtype_name(dtype));
  return names;
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw SafetensorsError(path + ": " + what);
}

// a · b, or false when the product does not fit in 64 bits.
bool checked_multiply(uint64_t a, uint64_t b, uint64_t& product) {
  if (b != 0 && a > std::numeric_limits<uint64_t>::max() / b) return false;
  product = a * b;
  return true;
}

// Little-endian loads and stores of 1 to 8 bytes, whatever the byte order of the host.
uint64_t load_little_endian(const uint8_t* bytes, size_t count) {
  uint64_t value = 0;
  for (size_t i = 0; i < count; ++i) value |= uint64_t(bytes[i]) << (8 * i);
  return value;
}

void store_little_endian(uint64_t value, size_t count, uint8_t* bytes) {
  for (size_t i = 0; i < count; ++i) bytes[i] = static_cast<uint8_t>(value >> (8 * i));
}

float float_from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// IEEE binary16: 1 sign, 5 exponent (bias 15) and 10 mantissa bits; every half is exactly a float.
float half_to_float(uint16_t half) {
  const uint32_t sign = uint32_t(half >> 15) << 31;
  const uint32_t exponent = (half >> 10) & 0x1F;
  const uint32_t mantissa = half & 0x3FF;
  if (exponent == 0) {  // zero or subnormal: mantissa · 2^−24
    const float magnitude = std::ldexp(float(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 0x1F) return float_from_bits(sign | 0x7F800000u | (mantissa << 13));  // inf, or NaN with payload
  return float_from_bits(sign | ((exponent - 15 + 127) << 23) | (mantissa << 13));
}

// bfloat16 is the upper half of a float32.
float bfloat16_to_float(uint16_t bfloat) { return float_from_bits(uint32_t(bfloat) << 16); }

// One element, given as its little-endian bits, converted to float (F64 and wide integers rounded once).
float element_to_float(DType dtype, uint64_t bits) {
  switch (dtype) {
    case DType::F32: return float_from_bits(static_cast<uint32_t>(bits));
    case DType::F16: return half_to_float(static_cast<uint16_t>(bits));
    case DType::BF16: return bfloat16_to_float(static_cast<uint16_t>(bits));
    case DType::F64: {
      double value;
      std::memcpy(&value, &bits, sizeof value);
      return static_cast<float>(value);
    }
    case DType::I64: return static_cast<float>(static_cast<int64_t>(bits));
    case DType::I32: return static_cast<float>(static_cast<int32_t>(static_cast<uint32_t>(bits)));
    case DType::U8: return static_cast<float>(bits);
    case DType::BOOL: return bits != 0 ? 1.0f : 0.0f;
  }
  return 0.0f;
}

int64_t element_to_int64(DType dtype, uint64_t bits) {
  switch (dtype) {
    case DType::I64: return static_cast<int64_t>(bits);
    case DType::I32: return static_cast<int32_t>(static_cast<uint32_t>(bits));
    case DType::U8: return static_cast<int64_t>(bits);
    case DType::BOOL: return bits != 0 ? 1 : 0;
    default: return 0;  // floating dtypes are refused before the first element
  }
}

uint64_t element_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}
template <typename Integer>
uint64_t element_bits(Integer value) {
  return static_cast<uint64_t>(value);  // only the low dtype_size bytes are stored
}

template <typename Value>
StoredTensor pack(DType dtype, const Shape& shape, const std::vector<Value>& values) {
  if (shape_numel(shape) != static_cast<int64_t>(values.size())) {
    throw ShapeError(std::string("StoredTensor of ") + dtype_name(dtype) + ": shape " + shape_string(shape) +
                     " holds " + std::to_string(shape_numel(shape)) + " values, given " +
                     std::to_string(values.size()));
  }
  StoredTensor stored;
  stored.dtype = dtype;
  stored.shape = shape;
  const size_t size = dtype_size(dtype);
  stored.bytes.resize(values.size() * size);
  for (size_t i = 0; i < values.size(); ++i) {
    store_little_endian(element_bits(values[i]), size, &stored.bytes[i * size]);
  }
  return stored;
}

// Throws unless the tensor holds exactly numel · dtype_size bytes.
void check_byte_count(const StoredTensor& tensor, const std::string& what) {
  const uint64_t expected = uint64_t(tensor.numel()) * dtype_size(tensor.dtype);
  if (tensor.bytes.size() != expected) {
    throw SafetensorsError(what + ": shape " + shape_string(tensor.shape) + " of " + dtype_name(tensor.dtype) +
                           " needs " + std::to_string(expected) + " bytes, holds " +
                           std::to_string(tensor.bytes.size()));
  }
}

// One header entry, checked on its own and against a data section of `data_size` bytes.
struct Entry {
  std::string name;
  StoredTensor tensor;  // dtype and shape; bytes are read once the whole header is valid
  uint64_t begin = 0;
  uint64_t end = 0;
};

Entry parse_entry(const std::string& path, const std::string& name, const Json& value, uint64_t data_size) {
  const std::string where = "tensor '" + name + "': ";
  if (!value.is_object()) fail(path, where + "entry is a JSON " + value.type_name() + ", expected an object");
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!value.contains(key)) fail(path, where + "entry has no \"" + key + "\"");
  }
  Entry entry;
  entry.name = name;

  const Json& dtype = value["dtype"];
  const auto known = std::find_if(std::begin(kAllDTypes), std::end(kAllDTypes),
                                  [&](DType d) { return dtype.is_string() && dtype == dtype_name(d); });
  if (known == std::end(kAllDTypes)) {
    fail(path, where + "unknown dtype " + dtype.dump() + " (valid: " + valid_dtype_names() + ")");
  }
  entry.tensor.dtype = *known;

  // numel · dtype_size, overflow-checked; extents must also fit the int64 Shape.
  const Json& shape = value["shape"];
  uint64_t byte_count = dtype_size(entry.tensor.dtype);
  bool valid_shape = shape.is_array();
  for (size_t i = 0; valid_shape && i < shape.size(); ++i) {
    valid_shape = shape[i].is_number_unsigned() &&
                  shape[i].get<uint64_t>() <= uint64_t(std::numeric_limits<int64_t>::max()) &&
                  checked_multiply(byte_count, shape[i].get<uint64_t>(), byte_count);
    if (valid_shape) entry.tensor.shape.push_back(shape[i].get<int64_t>());
  }
  if (!valid_shape) {
    fail(path, where + "shape " + shape.dump() + " is not a list of non-negative integers whose product fits 64 bits");
  }

  const Json& offsets = value["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned() || offsets[0].get<uint64_t>() > offsets[1].get<uint64_t>()) {
    fail(path, where + "data_offsets " + offsets.dump() +
                   " are not two non-negative integers [begin, end] with begin <= end");
  }
  entry.begin = offsets[0].get<uint64_t>();
  entry.end = offsets[1].get<uint64_t>();
  if (entry.end - entry.begin != byte_count) {
    fail(path, where + "data_offsets " + offsets.dump() + " span " + std::to_string(entry.end - entry.begin) +
                   " bytes, but shape " + shape_string(entry.tensor.shape) + " of " + dtype_name(entry.tensor.dtype) +
                   " needs " + std::to_string(byte_count) + " bytes");
  }
  if (entry.end > data_size) {
    fail(path, where + "the file has " + std::to_string(data_size) + " bytes of data, the tensor needs up to byte " +
                   std::to_string(entry.end) + " (truncated file?)");
  }
  return entry;
}

// Sorted by offsets, the tensors must tile [0, data_size) exactly: no overlap and no uncovered byte.
void check_layout(const std::string& path, std::vector<Entry>& entries, uint64_t data_size) {
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  uint64_t covered = 0;
  const Entry* previous = nullptr;
  auto uncovered = [&](uint64_t begin, uint64_t end) {
    fail(path, "bytes [" + std::to_string(begin) + ", " + std::to_string(end) +
                   ") of the data section are not covered by any tensor");
  };
  for (const Entry& entry : entries) {
    if (entry.begin < covered) {
      fail(path, "tensors '" + previous->name + "' and '" + entry.name + "' overlap (data_offsets [" +
                     std::to_string(previous->begin) + ", " + std::to_string(previous->end) + "] and [" +
                     std::to_string(entry.begin) + ", " + std::to_string(entry.end) + "])");
    }
    if (entry.begin > covered) uncovered(covered, entry.begin);
    covered = entry.end;
    previous = &entry;
  }
  if (covered < data_size) uncovered(covered, data_size);
}

}  // namespace

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F64:
    case DType::I64: return 8;
    case DType::F32:
    case DType::I32: return 4;
    case DType::F16:
    case DType::BF16: return 2;
    case DType::U8:
    case DType::BOOL: return 1;
  }
  return 0;
}

Tensor StoredTensor::to_float() const {
  check_byte_count(*this, "to_float");
  Tensor result(shape);
  const size_t size = dtype_size(dtype);
  for (int64_t i = 0; i < result.numel(); ++i) {
    result[i] = element_to_float(dtype, load_little_endian(&bytes[i * size], size));
  }
  return result;
}

std::vector<int64_t> StoredTensor::to_int64() const {
  if (dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16 || dtype == DType::F64) {
    throw SafetensorsError(std::string("to_int64: dtype ") + dtype_name(dtype) +
                           " is floating; expected I64, I32, U8 or BOOL");
  }
  check_byte_count(*this, "to_int64");
  std::vector<int64_t> values(static_cast<size_t>(numel()));
  const size_t size = dtype_size(dtype);
  for (size_t i = 0; i < values.size(); ++i) {
    values[i] = element_to_int64(dtype, load_little_endian(&bytes[i * size], size));
  }
  return values;
}

StoredTensor StoredTensor::from_float(const Tensor& tensor) {
  return pack(DType::F32, tensor.shape(), tensor.to_vector());
}

StoredTensor StoredTensor::from_int64(const Shape& shape, const std::vector<int64_t>& values) {
  return pack(DType::I64, shape, values);
}

StoredTensor StoredTensor::from_int32(const Shape& shape, const std::vector<int32_t>& values) {
  return pack(DType::I32, shape, values);
}

StoredTensor StoredTensor::from_uint8(const Shape& shape, const std::vector<uint8_t>& values, DType dtype) {
  if (dtype != DType::U8 && dtype != DType::BOOL) {
    throw SafetensorsError(std::string("from_uint8: dtype must be U8 or BOOL, given ") + dtype_name(dtype));
  }
  return pack(dtype, shape, values);
}

const StoredTensor& SafetensorsFile::get(const std::string& name) const {
  const auto found = tensors.find(name);
  if (found == tensors.end()) {
    fail(path, "no tensor '" + name + "' (the file has " + std::to_string(tensors.size()) + " tensors)");
  }
  return found->second;
}

SafetensorsFile read_safetensors(const std::string& path) {
  if (std::filesystem::is_directory(path)) fail(path, "is a folder, not a safetensors file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, std::string("cannot open: ") + std::strerror(errno));
  in.seekg(0, std::ios::end);
  const std::streamoff file_size = in.tellg();
  if (!in || file_size < 0) fail(path, "cannot read");
  auto read_at = [&](uint64_t offset, uint64_t count, void* out) {
    in.seekg(static_cast<std::streamoff>(offset));
    in.read(static_cast<char*>(out), static_cast<std::streamsize>(count));
    if (!in) fail(path, "cannot read " + std::to_string(count) + " bytes at offset " + std::to_string(offset));
  };

  if (uint64_t(file_size) < kHeaderLengthBytes) {
    fail(path, "file has " + std::to_string(file_size) + " bytes, fewer than the 8-byte header length");
  }
  uint8_t length_bytes[kHeaderLengthBytes];
  read_at(0, kHeaderLengthBytes, length_bytes);
  const uint64_t header_length = load_little_endian(length_bytes, kHeaderLengthBytes);
  if (header_length > uint64_t(file_size) - kHeaderLengthBytes) {
    fail(path, "header length " + std::to_string(header_length) + " is larger than the " +
                   std::to_string(uint64_t(file_size) - kHeaderLengthBytes) + " bytes after it (truncated file?)");
  }
  const uint64_t data_start = kHeaderLengthBytes + header_length;
  const uint64_t data_size = uint64_t(file_size) - data_start;

  std::string header_text(header_length, '\0');
  read_at(kHeaderLengthBytes, header_length, header_text.data());
  Json header;
  std::set<std::string> names;
  std::string repeated;  // a name the header gives twice (JSON keeps the last; a writer's bug)
  const Json::parser_callback_t track_names = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (depth == 1 && event == Json::parse_event_t::key && !names.insert(parsed.get<std::string>()).second &&
        repeated.empty()) {
      repeated = parsed.get<std::string>();
    }
    return true;
  };
  try {
    header = Json::parse(header_text, track_names);
  } catch (const Json::parse_error& error) {
    fail(path, std::string("header is not valid JSON: ") + error.what());
  }
  if (!repeated.empty()) fail(path, "header names '" + repeated + "' twice");
  if (!header.is_object()) fail(path, std::string("header is a JSON ") + header.type_name() + ", expected an object");

  SafetensorsFile file;
  file.path = path;
  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name != "__metadata__") {
      entries.push_back(parse_entry(path, name, value, data_size));
      continue;
    }
    if (!value.is_object()) {
      fail(path, std::string("__metadata__ is a JSON ") + value.type_name() + ", expected an object");
    }
    for (const auto& [key, text] : value.items()) {
      if (!text.is_string()) fail(path, "metadata '" + key + "' is a JSON " + text.type_name() + ", expected a string");
      file.metadata[key] = text.get<std::string>();
    }
  }
  check_layout(path, entries, data_size);

  for (Entry& entry : entries) {
    entry.tensor.bytes.resize(entry.end - entry.begin);
    read_at(data_start + entry.begin, entry.tensor.bytes.size(), entry.tensor.bytes.data());
    file.tensors[entry.name] = std::move(entry.tensor);
  }
  return file;
}

void write_safetensors(const std::string& path, const std::map<std::string, StoredTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  if (std::filesystem::is_directory(path)) fail(path, "is a folder; name the file to write, as DIR/out.safetensors");
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__") fail(path, "the tensor name '__metadata__' is reserved");
    check_byte_count(tensor, path + ": tensor '" + name + "'");
    header[name] = {{"dtype", dtype_name(tensor.dtype)},
                    {"shape", tensor.shape},
                    {"data_offsets", {offset, offset + tensor.bytes.size()}}};
    offset += tensor.bytes.size();
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::ordered_json::exception& error) {  // a name or metadata value that is not UTF-8
    fail(path, std::string("cannot encode the header: ") + error.what());
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned

  const std::string temporary = path + ".tmp";
  std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
  if (!out) fail(path, "cannot open " + temporary + " for writing: " + std::strerror(errno));
  uint8_t length_bytes[kHeaderLengthBytes];
  store_little_endian(header_text.size(), kHeaderLengthBytes, length_bytes);
  out.write(reinterpret_cast<const char*>(length_bytes), kHeaderLengthBytes);
  out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
  for (const auto& [name, tensor] : tensors) {
    out.write(reinterpret_cast<const char*>(tensor.bytes.data()), static_cast<std::streamsize>(tensor.bytes.size()));
  }
  out.close();
  if (!out) {
    std::remove(temporary.c_str());
    fail(path, "short write to " + temporary + " (disk full?)");
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::remove(temporary.c_str());
    fail(path, "cannot rename " + temporary + " to it: " + std::strerror(error));
  }
}

}  // namespace mr1
