// The CUDA runtime layer of a build without nvcc: every entry says so in one clear line.
#include <stdexcept>

#include "kernels/cuda_device.h"

namespace mr1::cuda {

namespace {
[[noreturn]] void unavailable() {
  throw std::runtime_error("this build of mamba-r1 has no CUDA backend (nvcc was not found at configure time)");
}
}  // namespace

bool compiled() { return false; }
std::string unavailable_reason() { return "this build has no CUDA backend (nvcc was not found at configure time)"; }
std::string device_description() { return ""; }
void* allocate(std::size_t) { unavailable(); }
void release(void*) {}
void copy_host_to_device(void*, const void*, std::size_t) { unavailable(); }
void copy_device_to_host(void*, const void*, std::size_t) { unavailable(); }
void copy_device_to_device(void*, const void*, std::size_t) { unavailable(); }
void memset_zero(void*, std::size_t) { unavailable(); }
void synchronize() {}

}  // namespace mr1::cuda
