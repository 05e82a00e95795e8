// The CUDA runtime layer: device discovery, the caching allocator, the stream, copies, the cuBLAS
// handle and the TF32 switch; every CUDA and cuBLAS call checked, naming the call.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/cuda_device.cuh"
#include "kernels/cuda_device.h"

namespace mr1::cuda {

void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(call) + " failed: " + cudaGetErrorString(status));
  }
}

void check_cublas(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string(call) + " failed: " + cublasGetStatusName(status) + " (" +
                             cublasGetStatusString(status) + ")");
  }
}

namespace {

// Asked once: the answer cannot change while the process runs.
const std::string& cached_reason() {
  static const std::string reason = [] {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status == cudaErrorNoDevice || (status == cudaSuccess && count == 0))
      return std::string("no CUDA device found");
    if (status != cudaSuccess) {
      cudaGetLastError();  // clear the sticky error so later calls report their own
      return std::string("no usable CUDA driver (cudaGetDeviceCount: ") + cudaGetErrorString(status) + ")";
    }
    return std::string();
  }();
  return reason;
}

void require_usable() {
  if (!cached_reason().empty()) throw std::runtime_error("CUDA unavailable: " + cached_reason());
}

// Size-bucketed free lists of device blocks (see cuda_device.h). Never destroyed: tensors held by
// other static objects may release blocks during static destruction; the cached blocks are freed by
// an exit handler registered after the CUDA runtime's own, so that it runs first.
class CachingAllocator {
 public:
  void* allocate(std::size_t bytes) {
    const std::size_t size = allocation_bucket(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = free_.find(size);
    if (found != free_.end() && !found->second.empty()) {
      void* pointer = found->second.back();
      found->second.pop_back();
      in_use_[pointer] = size;
      in_use_bytes_ += size;
      ++cache_hits_;
      return pointer;
    }
    void* pointer = nullptr;
    cudaError_t status = cudaMalloc(&pointer, size);
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cached_locked();
      status = cudaMalloc(&pointer, size);
    }
    if (status != cudaSuccess) {
      cudaGetLastError();
      throw std::runtime_error("cudaMalloc(" + std::to_string(size) + " bytes) failed: " + cudaGetErrorString(status) +
                               " (" + std::to_string(reserved_bytes_ >> 20) + " MiB already reserved by this process)");
    }
    if (!exit_handler_registered_) {
      exit_handler_registered_ = true;
      std::atexit([] { release_cached_memory(); });
    }
    ++device_allocations_;
    reserved_bytes_ += size;
    in_use_[pointer] = size;
    in_use_bytes_ += size;
    return pointer;
  }

  void release(void* pointer) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = in_use_.find(pointer);
    if (found == in_use_.end()) return;  // not ours (cannot happen through Tensor)
    free_[found->second].push_back(pointer);
    in_use_bytes_ -= found->second;
    in_use_.erase(found);
  }

  void release_cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cached_locked();
  }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return AllocatorStats{reserved_bytes_, in_use_bytes_, device_allocations_, cache_hits_};
  }

 private:
  // Errors are ignored: at exit the runtime may already be unloading, and the memory goes with the process.
  // The device is waited for first: a cached block may still be read by queued kernels, and cudaFree is
  // not documented to wait for them.
  void release_cached_locked() {
    cudaDeviceSynchronize();
    for (auto& [size, blocks] : free_) {
      for (void* pointer : blocks) {
        cudaFree(pointer);
        reserved_bytes_ -= size;
      }
      blocks.clear();
    }
    cudaGetLastError();
  }

  std::mutex mutex_;
  std::map<std::size_t, std::vector<void*>> free_;
  std::unordered_map<void*, std::size_t> in_use_;
  std::size_t reserved_bytes_ = 0, in_use_bytes_ = 0;
  int64_t device_allocations_ = 0, cache_hits_ = 0;
  bool exit_handler_registered_ = false;
};

CachingAllocator& allocator() {
  static CachingAllocator* instance = new CachingAllocator();
  return *instance;
}

// Uploads go through pinned staging memory. The host buffers here are pageable, and of a copy from
// pageable memory the CUDA runtime API says only that cudaMemcpyAsync "might be synchronous" ("API
// synchronization behavior"): nothing promises that it has read the source when it returns. A copy from
// pinned memory is asynchronous, so the caller may free its buffer at once and the host goes on while
// queued work runs. The ring's slots are reused in turn, each after the event recorded behind its last
// copy has passed. An upload larger than a slot (parameters at start-up, a checkpoint's tensors) is
// copied from the caller's buffer and waited for.
class StagingRing {
 public:
  void upload(void* destination, const void* source, std::size_t bytes, cudaStream_t on_stream) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!memory_ && !unpinned_) create();
    if (bytes > kSlotBytes || unpinned_) {
      lock.unlock();
      CUDA_CHECK(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyHostToDevice, on_stream));
      CUDA_CHECK(cudaStreamSynchronize(on_stream));
      return;
    }
    Slot& slot = slots_[next_];
    next_ = (next_ + 1) % kSlots;
    if (slot.used) CUDA_CHECK(cudaEventSynchronize(slot.copied));
    std::memcpy(slot.memory, source, bytes);
    CUDA_CHECK(cudaMemcpyAsync(destination, slot.memory, bytes, cudaMemcpyHostToDevice, on_stream));
    CUDA_CHECK(cudaEventRecord(slot.copied, on_stream));
    slot.used = true;
  }

 private:
  static constexpr int kSlots = 8;
  static constexpr std::size_t kSlotBytes = std::size_t{1} << 20;
  struct Slot {
    unsigned char* memory = nullptr;
    cudaEvent_t copied = nullptr;
    bool used = false;
  };

  // The pinned memory and the events, made on the first upload; kept to the end of the process (freeing
  // them at exit could find the runtime unloaded). A machine that refuses pinned memory gets uploads that
  // wait for their copy, said once.
  void create() {
    void* memory = nullptr;
    const cudaError_t status = cudaHostAlloc(&memory, kSlots * kSlotBytes, cudaHostAllocDefault);
    if (status != cudaSuccess) {
      cudaGetLastError();
      std::fprintf(stderr, "warning: cudaHostAlloc of %zu MiB of pinned staging memory failed (%s); uploads wait "
                   "for their copy\n", kSlots * kSlotBytes >> 20, cudaGetErrorString(status));
      unpinned_ = true;
      return;
    }
    for (int i = 0; i < kSlots; ++i) {
      slots_[i].memory = static_cast<unsigned char*>(memory) + i * kSlotBytes;
      CUDA_CHECK(cudaEventCreateWithFlags(&slots_[i].copied, cudaEventDisableTiming));
    }
    memory_ = memory;
  }

  std::mutex mutex_;
  void* memory_ = nullptr;
  bool unpinned_ = false;
  Slot slots_[kSlots];
  int next_ = 0;
};

StagingRing& staging() {
  static StagingRing* instance = new StagingRing();
  return *instance;
}

std::atomic<bool> tf32_enabled{false};

__global__ void fill_kernel(float* values, float value, int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    values[i] = value;
  }
}

}  // namespace

bool compiled() { return true; }
std::string unavailable_reason() { return cached_reason(); }

DeviceInfo device_info() {
  require_usable();
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp properties{};
  CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  // cudaDeviceProp lost memoryClockRate in CUDA 13: the attribute still gives it (kHz).
  int memory_clock_khz = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&memory_clock_khz, cudaDevAttrMemoryClockRate, device));
  DeviceInfo info;
  info.name = properties.name;
  info.major = properties.major;
  info.minor = properties.minor;
  info.multiprocessors = properties.multiProcessorCount;
  info.total_memory = properties.totalGlobalMem;
  info.peak_bandwidth = 2.0 * memory_clock_khz * 1000.0 * (properties.memoryBusWidth / 8.0);
  info.max_shared_per_block = properties.sharedMemPerBlockOptin;
  return info;
}

std::string device_description() {
  if (!cached_reason().empty()) return "";
  try {
    const DeviceInfo info = device_info();
    return info.name + " (sm_" + std::to_string(info.major) + std::to_string(info.minor) + ", " +
           std::to_string(info.total_memory >> 30) + " GiB)";
  } catch (const std::exception&) {
    return "";
  }
}

void* allocate(std::size_t bytes) {
  require_usable();
  return allocator().allocate(bytes);
}

void release(void* pointer) {
  if (pointer) allocator().release(pointer);
}

void release_cached_memory() {
  if (cached_reason().empty()) allocator().release_cached();
}

AllocatorStats allocator_stats() { return allocator().stats(); }

void* stream() {
  static cudaStream_t handle = [] {
    require_usable();
    cudaStream_t created = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&created, cudaStreamNonBlocking));
    return created;
  }();
  return handle;
}

cublasHandle_t cublas_handle(cudaStream_t on_stream) {
  static cublasHandle_t handle = [] {
    cublasHandle_t created = nullptr;
    CUBLAS_CHECK(cublasCreate(&created));
    return created;
  }();
  CUBLAS_CHECK(cublasSetStream(handle, on_stream));
  return handle;
}

void copy_host_to_device(void* destination, const void* source, std::size_t bytes) {
  if (bytes == 0) return;
  staging().upload(destination, source, bytes, as_stream(stream()));
}

void copy_device_to_host(void* destination, const void* source, std::size_t bytes) {
  if (bytes == 0) return;
  cudaStream_t s = as_stream(stream());
  CUDA_CHECK(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
}

void copy_device_to_device(void* destination, const void* source, std::size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDeviceToDevice, as_stream(stream())));
}

void memset_zero(void* pointer, std::size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemsetAsync(pointer, 0, bytes, as_stream(stream())));
}

void fill(float* values, float value, int64_t count) {
  if (count <= 0) return;
  fill_kernel<<<blocks_for(count, 256, 65536), 256, 0, as_stream(stream())>>>(values, value, count);
  check_launch("fill_kernel");
}

void synchronize() {
  if (!cached_reason().empty()) return;  // nothing can be running without a device
  CUDA_CHECK(cudaDeviceSynchronize());
}

void set_tf32(bool enabled) { tf32_enabled = enabled; }
bool tf32() { return tf32_enabled; }

}  // namespace mr1::cuda
