// The CUDA runtime layer: device discovery, memory and copies, every call checked by name.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels/cuda_device.h"

namespace mr1::cuda {

namespace {

void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(call) + " failed: " + cudaGetErrorString(status));
  }
}

// Asked once: the answer cannot change while the process runs.
const std::string& cached_reason() {
  static const std::string reason = [] {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status == cudaErrorNoDevice || (status == cudaSuccess && count == 0)) return std::string("no CUDA device found");
    if (status != cudaSuccess) {
      cudaGetLastError();  // clear the sticky error so later calls report their own
      return std::string("no usable CUDA driver (cudaGetDeviceCount: ") + cudaGetErrorString(status) + ")";
    }
    return std::string();
  }();
  return reason;
}

}  // namespace

bool compiled() { return true; }
std::string unavailable_reason() { return cached_reason(); }

std::string device_description() {
  if (!cached_reason().empty()) return "";
  int device = 0;
  cudaDeviceProp properties{};
  if (cudaGetDevice(&device) != cudaSuccess || cudaGetDeviceProperties(&properties, device) != cudaSuccess) return "";
  return std::string(properties.name) + " (sm_" + std::to_string(properties.major) + std::to_string(properties.minor) +
         ", " + std::to_string(properties.totalGlobalMem >> 30) + " GiB)";
}

void* allocate(std::size_t bytes) {
  if (!cached_reason().empty()) throw std::runtime_error("CUDA unavailable: " + cached_reason());
  void* pointer = nullptr;
  check(cudaMalloc(&pointer, bytes), "cudaMalloc");
  return pointer;
}

void release(void* pointer) { cudaFree(pointer); }

void copy_host_to_device(void* destination, const void* source, std::size_t bytes) {
  check(cudaMemcpy(destination, source, bytes, cudaMemcpyHostToDevice), "cudaMemcpy (host to device)");
}
void copy_device_to_host(void* destination, const void* source, std::size_t bytes) {
  check(cudaMemcpy(destination, source, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy (device to host)");
}
void copy_device_to_device(void* destination, const void* source, std::size_t bytes) {
  check(cudaMemcpy(destination, source, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy (device to device)");
}
void memset_zero(void* pointer, std::size_t bytes) { check(cudaMemset(pointer, 0, bytes), "cudaMemset"); }
void synchronize() {
  if (!cached_reason().empty()) return;  // nothing can be running without a device
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

}  // namespace mr1::cuda
