// The CUDA runtime layer of a build without nvcc: every entry says so in one clear line.
#include <stdexcept>

#include "kernels/cuda_device.h"

namespace mr1::cuda {

namespace {
constexpr const char* kNoBackend = "this build of mamba-r1 has no CUDA backend (nvcc was not found at configure time)";
[[noreturn]] void unavailable() { throw std::runtime_error(kNoBackend); }
bool tf32_enabled = false;
}  // namespace

bool compiled() { return false; }
std::string unavailable_reason() { return "this build has no CUDA backend (nvcc was not found at configure time)"; }
std::string device_description() { return ""; }
DeviceInfo device_info() { unavailable(); }
void* allocate(std::size_t) { unavailable(); }
void release(void*) {}
void release_cached_memory() {}
AllocatorStats allocator_stats() { return {}; }
void* stream() { unavailable(); }
void copy_host_to_device(void*, const void*, std::size_t) { unavailable(); }
void copy_device_to_host(void*, const void*, std::size_t) { unavailable(); }
void copy_device_to_device(void*, const void*, std::size_t) { unavailable(); }
void memset_zero(void*, std::size_t) { unavailable(); }
void fill(float*, float, int64_t) { unavailable(); }
void synchronize() {}
void set_tf32(bool enabled) { tf32_enabled = enabled; }
bool tf32() { return tf32_enabled; }

}  // namespace mr1::cuda
