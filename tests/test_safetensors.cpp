// Facts about safetensors files: every dtype round-trips, F16/BF16 decode exactly, and every kind of
// corrupt file is refused with a message that names the file and the tensor.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "blocks/parameters.h"
#include "experiments/safetensors.h"
#include "tests/test_util.h"

namespace mr1 {
namespace {

using Catch::Contains;

// A unique path under the temporary directory; the file (and PATH.tmp) are removed at the end of the test.
struct TempFile {
  std::string path;
  TempFile() {
    static int counter = 0;
    const std::string name = "mr1-safetensors-" + std::to_string(std::random_device{}()) + "-" +
                             std::to_string(counter++) + ".safetensors";
    path = (std::filesystem::temp_directory_path() / name).string();
  }
  ~TempFile() {
    std::error_code ignored;
    std::filesystem::remove(path, ignored);
    std::filesystem::remove(path + ".tmp", ignored);
  }
};

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A file as another program would write it: u64 little-endian header length, the header as given, the data.
std::vector<uint8_t> file_bytes(const std::string& header, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<uint8_t>(uint64_t(header.size()) >> (8 * i)));
  bytes.insert(bytes.end(), header.begin(), header.end());
  bytes.insert(bytes.end(), data.begin(), data.end());
  return bytes;
}

// Raw little-endian bytes of 16-bit patterns.
StoredTensor sixteen_bit(DType dtype, const std::vector<uint16_t>& patterns) {
  StoredTensor tensor;
  tensor.dtype = dtype;
  tensor.shape = {static_cast<int64_t>(patterns.size())};
  for (uint16_t pattern : patterns) {
    tensor.bytes.push_back(static_cast<uint8_t>(pattern & 0xFF));
    tensor.bytes.push_back(static_cast<uint8_t>(pattern >> 8));
  }
  return tensor;
}

// Reading must throw SafetensorsError whose message names the file and contains every one of `mentions`.
void check_refused(const std::string& path, const std::vector<std::string>& mentions) {
  CHECK_THROWS_AS(read_safetensors(path), SafetensorsError);
  CHECK_THROWS_WITH(read_safetensors(path), Contains(path));
  for (const std::string& mention : mentions) CHECK_THROWS_WITH(read_safetensors(path), Contains(mention));
}

const DType kAllDTypes[] = {DType::F32, DType::F16, DType::BF16, DType::F64,
                            DType::I64, DType::I32, DType::U8,   DType::BOOL};

}  // namespace

TEST_CASE("every dtype round-trips byte for byte, including scalar and zero-size shapes") {
  const std::vector<Shape> shapes = {{}, {0}, {5}, {2, 3}, {3, 0, 2}};
  std::map<std::string, StoredTensor> tensors;
  std::mt19937 generator(7);
  for (DType dtype : kAllDTypes) {
    for (const Shape& shape : shapes) {
      StoredTensor tensor;
      tensor.dtype = dtype;
      tensor.shape = shape;
      tensor.bytes.resize(tensor.numel() * dtype_size(dtype));
      for (uint8_t& byte : tensor.bytes) byte = static_cast<uint8_t>(generator() % (dtype == DType::BOOL ? 2 : 256));
      tensors[std::string(dtype_name(dtype)) + shape_string(shape)] = tensor;
    }
  }
  TempFile file;
  write_safetensors(file.path, tensors);
  const SafetensorsFile read = read_safetensors(file.path);
  CHECK(read.path == file.path);
  CHECK(read.metadata.empty());
  REQUIRE(read.tensors.size() == tensors.size());
  for (const auto& [name, tensor] : tensors) {
    INFO(name);
    const StoredTensor& back = read.get(name);
    CHECK(back.dtype == tensor.dtype);
    CHECK(back.shape == tensor.shape);
    CHECK(back.bytes == tensor.bytes);
  }
}

TEST_CASE("the header is padded so data starts 8-byte aligned, tensors laid out contiguously in name order") {
  TempFile file;
  write_safetensors(file.path,
                    {{"b", StoredTensor::from_uint8({3}, {1, 2, 3})},
                     {"a", StoredTensor::from_int32({1}, {-1})},
                     {"c", StoredTensor::from_float(Tensor::from({2}, {0.5f, 2.0f}))}},
                    {{"format", "pt"}});
  const std::vector<uint8_t> bytes = read_bytes(file.path);
  uint64_t header_length = 0;
  for (int i = 0; i < 8; ++i) header_length |= uint64_t(bytes[i]) << (8 * i);
  CHECK(header_length % 8 == 0);
  const auto header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + header_length);
  CHECK(header["__metadata__"]["format"] == "pt");
  CHECK(header["a"]["data_offsets"] == nlohmann::json({0, 4}));
  CHECK(header["b"]["data_offsets"] == nlohmann::json({4, 7}));
  CHECK(header["c"]["data_offsets"] == nlohmann::json({7, 15}));
  CHECK(bytes.size() == 8 + header_length + 15);
  CHECK_FALSE(std::filesystem::exists(file.path + ".tmp"));
}

TEST_CASE("F16 bit patterns decode exactly, subnormals, infinities and NaN included") {
  const Tensor values = sixteen_bit(DType::F16, {0x3C00, 0xC000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x3555, 0x0000,
                                                 0x8000, 0x7C00, 0xFC00, 0x7E00})
                            .to_float();
  CHECK(values[0] == 1.0f);
  CHECK(values[1] == -2.0f);
  CHECK(values[2] == std::ldexp(1.0f, -24));          // smallest subnormal
  CHECK(values[3] == std::ldexp(1023.0f, -24));       // largest subnormal
  CHECK(values[4] == std::ldexp(1.0f, -14));          // smallest normal
  CHECK(values[5] == 65504.0f);                       // largest finite
  CHECK(values[6] == 0.333251953125f);                // 1/3 rounded to 10 mantissa bits
  CHECK((values[7] == 0.0f && !std::signbit(values[7])));
  CHECK((values[8] == 0.0f && std::signbit(values[8])));
  CHECK(values[9] == std::numeric_limits<float>::infinity());
  CHECK(values[10] == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(values[11]));
}

TEST_CASE("BF16 bit patterns decode exactly as the upper half of a float32") {
  const Tensor values =
      sixteen_bit(DType::BF16, {0x3F80, 0x4049, 0xC000, 0x0001, 0x7F7F, 0x7F80, 0xFF80, 0x7FC0}).to_float();
  CHECK(values[0] == 1.0f);
  CHECK(values[1] == 3.140625f);
  CHECK(values[2] == -2.0f);
  CHECK(values[3] == std::ldexp(1.0f, -133));  // a float32 subnormal
  CHECK(values[4] == std::ldexp(255.0f, 120));  // largest finite
  CHECK(values[5] == std::numeric_limits<float>::infinity());
  CHECK(values[6] == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(values[7]));
}

TEST_CASE("to_float converts F32, F64 and integer dtypes; to_int64 converts integers and refuses floats") {
  const Tensor original = test::random_tensor({2, 3}, 11);
  const Tensor back = StoredTensor::from_float(original).to_float();
  CHECK(back.shape() == original.shape());
  CHECK(back.to_vector() == original.to_vector());

  StoredTensor f64;
  f64.dtype = DType::F64;
  f64.shape = {2};
  for (double value : {0.1, -2.5}) {
    uint64_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    for (int i = 0; i < 8; ++i) f64.bytes.push_back(static_cast<uint8_t>(bits >> (8 * i)));
  }
  CHECK(f64.to_float().to_vector() == std::vector<float>{0.1f, -2.5f});

  const StoredTensor i64 = StoredTensor::from_int64({3}, {-5, 0, int64_t(1) << 40});
  CHECK(i64.to_int64() == std::vector<int64_t>{-5, 0, int64_t(1) << 40});
  CHECK(i64.to_float().to_vector() == std::vector<float>{-5.0f, 0.0f, 1099511627776.0f});
  const StoredTensor i32 = StoredTensor::from_int32({2}, {-7, 2147483647});
  CHECK(i32.to_int64() == std::vector<int64_t>{-7, 2147483647});
  CHECK(i32.to_float().to_vector() == std::vector<float>{-7.0f, 2147483648.0f});
  const StoredTensor u8 = StoredTensor::from_uint8({2}, {0, 255});
  CHECK(u8.to_int64() == std::vector<int64_t>{0, 255});
  CHECK(u8.to_float().to_vector() == std::vector<float>{0.0f, 255.0f});
  const StoredTensor flags = StoredTensor::from_uint8({3}, {1, 0, 1}, DType::BOOL);
  CHECK(flags.dtype == DType::BOOL);
  CHECK(flags.to_int64() == std::vector<int64_t>{1, 0, 1});
  CHECK(flags.to_float().to_vector() == std::vector<float>{1.0f, 0.0f, 1.0f});

  for (DType floating : {DType::F32, DType::F16, DType::BF16, DType::F64}) {
    StoredTensor tensor;
    tensor.dtype = floating;
    tensor.shape = {0};
    CHECK_THROWS_WITH(tensor.to_int64(), Contains(dtype_name(floating)) && Contains("floating"));
  }
}

TEST_CASE("the from_ constructors refuse a value count that does not match the shape") {
  CHECK_THROWS_AS(StoredTensor::from_int64({2, 2}, {1, 2, 3}), ShapeError);
  CHECK_THROWS_AS(StoredTensor::from_int32({}, {}), ShapeError);
  CHECK_THROWS_WITH(StoredTensor::from_uint8({1}, {1}, DType::F32), Contains("U8 or BOOL"));
}

TEST_CASE("metadata round-trips, and a missing tensor is named with the file") {
  TempFile file;
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "é \"quoted\""}, {"empty", ""}};
  write_safetensors(file.path, {{"x", StoredTensor::from_int64({}, {42})}}, metadata);
  const SafetensorsFile read = read_safetensors(file.path);
  CHECK(read.metadata == metadata);
  CHECK(read.contains("x"));
  CHECK_FALSE(read.contains("y"));
  CHECK(read.get("x").to_int64() == std::vector<int64_t>{42});
  CHECK_THROWS_WITH(read.get("y"), Contains(file.path) && Contains("'y'"));
}

TEST_CASE("writing replaces an existing file and refuses what it cannot write, naming the path") {
  TempFile file;
  write_safetensors(file.path, {{"old", StoredTensor::from_int64({1}, {1})}});
  write_safetensors(file.path, {{"new", StoredTensor::from_int64({1}, {2})}});
  CHECK(read_safetensors(file.path).contains("new"));
  CHECK_FALSE(read_safetensors(file.path).contains("old"));

  const std::string nowhere = file.path + ".missing-directory/out.safetensors";
  CHECK_THROWS_WITH(write_safetensors(nowhere, {}), Contains(nowhere) && Contains("cannot open"));

  StoredTensor short_bytes = StoredTensor::from_int64({2}, {1, 2});
  short_bytes.bytes.pop_back();
  CHECK_THROWS_WITH(write_safetensors(file.path, {{"w", short_bytes}}), Contains("'w'") && Contains("16 bytes"));
  CHECK_THROWS_WITH(write_safetensors(file.path, {{"__metadata__", short_bytes}}), Contains("reserved"));
  CHECK(read_safetensors(file.path).contains("new"));  // a refused write leaves the old file
}

TEST_CASE("a file written byte by byte by another program, header not padded, is read correctly") {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"weight":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},)"
      R"("bias":{"dtype":"F32","shape":[],"data_offsets":[4,8]}})";
  REQUIRE(header.size() % 8 != 0);
  const std::vector<uint8_t> data = {0x80, 0x3F, 0x49, 0xC0,   // BF16 1.0, −3.140625
                                     0x00, 0x00, 0x00, 0x3F};  // F32 0.5
  TempFile file;
  write_bytes(file.path, file_bytes(header, data));
  const SafetensorsFile read = read_safetensors(file.path);
  CHECK(read.metadata == std::map<std::string, std::string>{{"format", "pt"}});
  CHECK(read.get("weight").dtype == DType::BF16);
  CHECK(read.get("weight").to_float().to_vector() == std::vector<float>{1.0f, -3.140625f});
  CHECK(read.get("bias").shape.empty());
  CHECK(read.get("bias").to_float().to_vector() == std::vector<float>{0.5f});
}

TEST_CASE("a missing, too short or truncated file is refused, naming the file") {
  TempFile file;
  check_refused(file.path, {"cannot open"});
  write_bytes(file.path, {1, 0, 0, 0, 0});
  check_refused(file.path, {"5 bytes"});
  std::vector<uint8_t> truncated = file_bytes(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", {7});
  truncated[0] = 200;  // the header claims 200 bytes
  write_bytes(file.path, truncated);
  check_refused(file.path, {"header length 200", "truncated"});
}

TEST_CASE("every malformed header is refused with a message naming the tensor and the problem") {
  struct Corrupt {
    const char* what;
    std::string header;
    size_t data_bytes;
    std::vector<std::string> mentions;
  };
  const std::string a_ok = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::vector<Corrupt> cases = {
      {"not JSON", R"({"a": )", 0, {"not valid JSON"}},
      {"not an object", "[1, 2]", 0, {"array", "expected an object"}},
      {"a name twice", "{" + a_ok + "," + a_ok + "}", 8, {"header names 'a' twice"}},
      {"entry not an object", R"({"a": 5})", 0, {"'a'", "expected an object"}},
      {"no dtype", R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8, {"'a'", "\"dtype\""}},
      {"no shape", R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", 8, {"'a'", "\"shape\""}},
      {"no data_offsets", R"({"a":{"dtype":"F32","shape":[2]}})", 8, {"'a'", "\"data_offsets\""}},
      {"unknown dtype", R"({"a":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}})", 2,
       {"'a'", "\"F8\"", "F32, F16, BF16, F64, I64, I32, U8, BOOL"}},
      {"dtype not a string", R"({"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", 8, {"'a'", "dtype 4"}},
      {"negative extent", R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, {"'a'", "shape [-2]"}},
      {"fractional extent", R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8, {"'a'", "shape [2.5]"}},
      {"shape not a list", R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8, {"'a'", "shape 2"}},
      {"size overflows 64 bits",
       R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8, {"'a'", "64 bits"}},
      {"one offset", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", 8, {"'a'", "data_offsets [8]"}},
      {"negative offset", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-1,7]}})", 8, {"'a'", "[-1,7]"}},
      {"begin after end", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8, {"'a'", "begin <= end"}},
      {"size mismatch", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8,
       {"'a'", "span 8 bytes", "needs 12 bytes"}},
      {"offsets beyond the data", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8,
       {"'a'", "8 bytes of data", "up to byte 16"}},
      {"overlap", "{" + a_ok + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12,
       {"'a'", "'b'", "overlap"}},
      {"gap between tensors", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                              R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 12,
       {"bytes [4, 8)", "not covered"}},
      {"trailing bytes", "{" + a_ok + "}", 12, {"bytes [8, 12)", "not covered"}},
      {"metadata not an object", R"({"__metadata__":[],)" + a_ok + "}", 8, {"__metadata__", "array"}},
      {"metadata value not a string", R"({"__metadata__":{"step":3},)" + a_ok + "}", 8, {"metadata 'step'", "string"}},
  };
  for (const Corrupt& corrupt : cases) {
    INFO(corrupt.what << ": " << corrupt.header);
    TempFile file;
    write_bytes(file.path, file_bytes(corrupt.header, std::vector<uint8_t>(corrupt.data_bytes)));
    check_refused(file.path, corrupt.mentions);
  }
}

TEST_CASE("a header padded with trailing spaces and zero-size tensors anywhere are accepted") {
  const std::string header = R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
                             R"("b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                             R"("c":{"dtype":"I64","shape":[0,3],"data_offsets":[2,2]}})"
                             "     ";
  TempFile file;
  write_bytes(file.path, file_bytes(header, {9, 8}));
  const SafetensorsFile read = read_safetensors(file.path);
  CHECK(read.get("a").numel() == 0);
  CHECK(read.get("b").to_int64() == std::vector<int64_t>{9, 8});
  CHECK(read.get("c").shape == Shape{0, 3});
}

TEST_CASE("parameters load from floating dtypes only, and never non-finite values", "[safetensors]") {
  ParameterStore parameters;
  parameters.add("w", {2}, true);
  SafetensorsFile file;
  file.path = "w.safetensors";
  file.tensors["w"] = StoredTensor::from_int64({2}, {1, 2});
  CHECK_THROWS_WITH(parameters.load(file), Contains("w.safetensors: parameter 'w' is stored as I64"));
  file.tensors["w"] = StoredTensor::from_uint8({2}, {1, 0}, DType::BOOL);
  CHECK_THROWS_WITH(parameters.load(file), Contains("is stored as BOOL"));
  file.tensors["w"] = StoredTensor::from_float(Tensor::from({2}, {0.5f, std::nanf("")}));
  CHECK_THROWS_WITH(parameters.load(file), Contains("'w' holds 1 non-finite values (NaN or inf) of 2"));
  file.tensors["w"] = StoredTensor::from_float(Tensor::from({2}, {0.5f, -2.0f}));
  parameters.load(file);
  CHECK(parameters.get("w").value[1] == -2.0f);
}

}  // namespace mr1
