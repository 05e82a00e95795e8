// The CUDA emulator's kernels/cuda_device.cu: host memory stands for device memory, copies are memcpy,
// and the caching allocator keeps released blocks per size bucket as the real one does. Every block
// handed out is filled with NaN, so a kernel that reads memory nobody wrote shows it in its results.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda_device.cuh"

namespace mr1::cuda {

namespace {

bool tf32_enabled = false;
AllocatorStats stats;
std::map<std::size_t, std::vector<void*>> free_blocks;  // bucket size → released blocks
std::map<void*, std::size_t> in_use;                    // block → its bucket size

}  // namespace

void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(call) + " failed: " + cudaGetErrorString(status));
}

void check_cublas(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string(call) + " failed: " + cublasGetStatusName(status));
  }
}

cublasHandle_t cublas_handle(cudaStream_t) { return reinterpret_cast<cublasHandle_t>(1); }
bool compiled() { return true; }
std::string unavailable_reason() { return ""; }
std::string device_description() { return "the CUDA emulator (CPU)"; }
// One multiprocessor, or EMU_SMS of them (EMU_SMS=132: an H200's, whose count cuts short scans into pieces of
// the sequence as there); the shared memory of sm_80's blocks (163 KiB), the least of the targets.
DeviceInfo device_info() {
  static const int multiprocessors = std::getenv("EMU_SMS") ? std::max(1, std::atoi(std::getenv("EMU_SMS"))) : 1;
  DeviceInfo info;
  info.name = "CUDA emulator";
  info.major = 9;
  info.minor = 0;
  info.multiprocessors = multiprocessors;
  info.total_memory = std::size_t{1} << 30;
  info.peak_bandwidth = 1e12;
  info.max_shared_per_block = 163 * 1024;
  return info;
}

// EMU_EXACT=1: every allocation is a malloc of exactly the bytes asked for, freed on release (no cache),
// so that AddressSanitizer sees a kernel that reads or writes past the end of its buffer.
const bool exact_allocations = std::getenv("EMU_EXACT") != nullptr;

void* allocate(std::size_t bytes) {
  ++emu::counters().allocations;
  if (exact_allocations) {
    void* block = std::malloc(bytes ? bytes : 1);
    if (!block) throw std::runtime_error("emulator: out of host memory for " + std::to_string(bytes) + " bytes");
    for (std::size_t i = 0; i < bytes / sizeof(float); ++i) static_cast<float*>(block)[i] = NAN;
    in_use[block] = 0;
    return block;
  }
  const std::size_t size = allocation_bucket(bytes);
  void* block = nullptr;
  auto& cached = free_blocks[size];
  if (!cached.empty()) {
    block = cached.back();
    cached.pop_back();
    ++stats.cache_hits;
  } else {
    block = std::aligned_alloc(256, size);
    if (!block) throw std::runtime_error("emulator: out of host memory for " + std::to_string(size) + " bytes");
    ++stats.device_allocations;
    stats.reserved_bytes += size;
  }
  float* values = static_cast<float*>(block);
  for (std::size_t i = 0; i < size / sizeof(float); ++i) values[i] = NAN;
  in_use[block] = size;
  stats.in_use_bytes += size;
  return block;
}

void release(void* pointer) {
  const auto found = in_use.find(pointer);
  if (found == in_use.end()) return;
  if (exact_allocations) {
    in_use.erase(found);
    return std::free(pointer);
  }
  stats.in_use_bytes -= found->second;
  free_blocks[found->second].push_back(pointer);
  in_use.erase(found);
}

void release_cached_memory() {
  for (auto& [size, blocks] : free_blocks) {
    for (void* block : blocks) std::free(block);
    stats.reserved_bytes -= size * blocks.size();
    blocks.clear();
  }
}

AllocatorStats allocator_stats() { return stats; }
void* stream() { return reinterpret_cast<void*>(2); }
void copy_host_to_device(void* destination, const void* source, std::size_t bytes) {
  ++emu::counters().host_to_device;
  emu::counters().host_to_device_bytes += static_cast<long long>(bytes);
  if (bytes) std::memcpy(destination, source, bytes);
}
void copy_device_to_host(void* destination, const void* source, std::size_t bytes) {
  ++emu::counters().device_to_host;
  emu::counters().device_to_host_bytes += static_cast<long long>(bytes);
  if (bytes) std::memcpy(destination, source, bytes);
}
void copy_device_to_device(void* destination, const void* source, std::size_t bytes) {
  ++emu::counters().device_to_device;
  if (bytes) std::memmove(destination, source, bytes);
}
void memset_zero(void* pointer, std::size_t bytes) {
  ++emu::counters().memsets;
  if (bytes) std::memset(pointer, 0, bytes);
}
void fill(float* values, float value, int64_t count) {
  ++emu::counters().fills;
  for (int64_t i = 0; i < count; ++i) values[i] = value;
}
void synchronize() {}
void set_tf32(bool enabled) { tf32_enabled = enabled; }
bool tf32() { return tf32_enabled; }

}  // namespace mr1::cuda
