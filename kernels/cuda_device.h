// The CUDA runtime as the rest of Mamba R1 sees it: availability, memory and copies.
// Plain C++ only (no CUDA headers), so any file may include it; the .cu implementation
// is compiled when nvcc is found, kernels/cuda_device_nocuda.cpp otherwise.
#pragma once

#include <cstddef>
#include <string>

namespace mr1::cuda {

// True when this build contains the CUDA backend.
bool compiled();
// Empty when a CUDA device can be used; otherwise one line saying why not
// ("built without CUDA", "no CUDA driver: ...", "no CUDA device found").
std::string unavailable_reason();
inline bool usable() { return unavailable_reason().empty(); }
// "NVIDIA H200 (sm_90, 139 GiB)" for the current device; empty when unusable.
std::string device_description();

void* allocate(std::size_t bytes);  // throws std::runtime_error naming the call on failure
void release(void* pointer);
void copy_host_to_device(void* device_destination, const void* host_source, std::size_t bytes);
void copy_device_to_host(void* host_destination, const void* device_source, std::size_t bytes);
void copy_device_to_device(void* destination, const void* source, std::size_t bytes);
void memset_zero(void* device_pointer, std::size_t bytes);
void synchronize();

}  // namespace mr1::cuda
