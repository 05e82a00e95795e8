// The CUDA emulator's cuda_runtime.h: the few runtime types and calls the kernels' .cu files use.
#pragma once
#include "emu_runtime.h"
typedef void* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorMemoryAllocation = 2, cudaErrorNoDevice = 100 };
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
inline const char* cudaGetErrorString(cudaError_t) { return "emulated error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) { std::memset(p, v, n); return cudaSuccess; }
inline cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                                     cudaMemcpyKind kind, cudaStream_t = nullptr) {
  if (kind == cudaMemcpyDeviceToDevice) ++emu::counters().device_to_device;  // (the kernels copy no other kind)
  for (size_t r = 0; r < height; ++r) std::memcpy(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
  return cudaSuccess;
}
inline cudaError_t emu_set_attribute(const char* kernel, cudaFuncAttribute, int bytes) {
  emu::set_max_dynamic_shared(kernel, bytes);
  return cudaSuccess;
}
// By name, so that the launch of that kernel can be checked against it.
#define cudaFuncSetAttribute(kernel, attribute, bytes) emu_set_attribute(#kernel, attribute, bytes)
