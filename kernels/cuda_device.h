// The CUDA runtime as the rest of Mamba R1 sees it: availability, the device, memory (a caching
// allocator), the one stream every op runs on, copies, and the TF32 switch of the GEMMs.
// Plain C++ only (no CUDA headers), so any file may include it; the .cu implementation is compiled
// when nvcc is found, kernels/cuda_device_nocuda.cpp otherwise. .cu files also include
// kernels/cuda_device.cuh (checks, cuBLAS, reductions).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace mr1::cuda {

// True when this build contains the CUDA backend.
bool compiled();
// Empty when a CUDA device can be used; otherwise one line saying why not
// ("built without CUDA", "no CUDA driver: ...", "no CUDA device found").
std::string unavailable_reason();
inline bool usable() { return unavailable_reason().empty(); }
// "NVIDIA H200 (sm_90, 139 GiB)" for the current device; empty when unusable.
std::string device_description();

struct DeviceInfo {
  std::string name;
  int major = 0, minor = 0;  // compute capability
  int multiprocessors = 0;
  std::size_t total_memory = 0;  // bytes
  double peak_bandwidth = 0;     // bytes/s = 2 (double data rate) × memory clock × bus width / 8
  std::size_t max_shared_per_block = 0;  // bytes of dynamic shared memory a block may opt in to
};
// The current device; throws std::runtime_error with the reason when CUDA is unusable.
DeviceInfo device_info();

// Memory. Device blocks come from a caching allocator: a released block goes to a free list of its
// size bucket and is handed out again to the next request of that bucket, so a training step in
// steady state calls cudaMalloc no more. Every op runs on one stream, so a block released while
// kernels that read it are still queued can only be reused by work queued after them. When
// cudaMalloc runs out of memory the cache is emptied and the call retried once. The cache is freed at
// exit.
void* allocate(std::size_t bytes);  // throws std::runtime_error naming the call on failure
void release(void* pointer);
void release_cached_memory();  // cudaFree of every cached (unused) block

struct AllocatorStats {
  std::size_t reserved_bytes = 0;  // held from cudaMalloc: in use + cached
  std::size_t in_use_bytes = 0;
  int64_t device_allocations = 0;  // cudaMalloc calls so far
  int64_t cache_hits = 0;          // requests served from the cache
};
AllocatorStats allocator_stats();

// The bucket a request of `bytes` is served from: powers of two from 512 B up to 1 MiB, then
// multiples of 2 MiB. (Plain arithmetic, shared with the tests.)
inline std::size_t allocation_bucket(std::size_t bytes) {
  constexpr std::size_t kSmallest = 512, kSmallLimit = std::size_t{1} << 20, kLargeStep = std::size_t{2} << 20;
  if (bytes <= kSmallest) return kSmallest;
  if (bytes <= kSmallLimit) {
    std::size_t bucket = kSmallest;
    while (bucket < bytes) bucket <<= 1;
    return bucket;
  }
  return (bytes + kLargeStep - 1) / kLargeStep * kLargeStep;
}

// The stream of every op and copy, as an opaque cudaStream_t (a .cu file casts it back).
void* stream();

// Copies, ordered on the stream. Host to device returns once the host buffer may be reused: up to 1 MiB
// without waiting for the stream (the bytes are staged in pinned memory), a larger copy once it is done;
// device to host waits for the stream and returns once the values have arrived; device to device does not
// wait.
void copy_host_to_device(void* device_destination, const void* host_source, std::size_t bytes);
void copy_device_to_host(void* host_destination, const void* device_source, std::size_t bytes);
void copy_device_to_device(void* destination, const void* source, std::size_t bytes);
void memset_zero(void* device_pointer, std::size_t bytes);
// values[i] = value for i < count (device memory).
void fill(float* device_values, float value, int64_t count);
// Waits for every queued kernel and copy; reports the first asynchronous error, naming it.
void synchronize();

// TF32 tensor cores for the float32 GEMMs (cuBLAS): about 10 bits of mantissa in the products, much
// faster on sm_80+. Off by default: GEMMs are then exact float32 like the CPU's. Set from [run] tf32.
void set_tf32(bool enabled);
bool tf32();

// A device buffer of raw bytes owned by the thin C++ layer between tensors and launchers (index lists,
// masks, per-row results). Moves, never copies.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes) : bytes_(bytes), pointer_(bytes ? allocate(bytes) : nullptr) {}
  ~DeviceBuffer() {
    if (pointer_) release(pointer_);
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept : bytes_(other.bytes_), pointer_(other.pointer_) {
    other.pointer_ = nullptr;
    other.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      if (pointer_) release(pointer_);
      pointer_ = other.pointer_;
      bytes_ = other.bytes_;
      other.pointer_ = nullptr;
      other.bytes_ = 0;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T>
  T* as() const {
    return static_cast<T*>(pointer_);
  }
  std::size_t bytes() const { return bytes_; }

 private:
  std::size_t bytes_ = 0;
  void* pointer_ = nullptr;
};

// A device copy of `values` (an empty vector gives an empty buffer, whose pointer is null).
template <typename T>
DeviceBuffer upload(const std::vector<T>& values) {
  DeviceBuffer buffer(values.size() * sizeof(T));
  if (!values.empty()) copy_host_to_device(buffer.as<void>(), values.data(), buffer.bytes());
  return buffer;
}

namespace detail {
constexpr std::size_t kPackAlignment = 16;
inline std::size_t packed_size(std::size_t bytes) {
  return (bytes + kPackAlignment - 1) / kPackAlignment * kPackAlignment;
}
template <typename... T, std::size_t... I>
std::tuple<T*...> upload_together(DeviceBuffer& buffer, std::index_sequence<I...>, const std::vector<T>&... arrays) {
  constexpr std::size_t count = sizeof...(T);
  const std::size_t sizes[count] = {arrays.size() * sizeof(T)...};
  const unsigned char* sources[count] = {reinterpret_cast<const unsigned char*>(arrays.data())...};
  std::size_t offsets[count] = {}, total = 0;
  for (std::size_t i = 0; i < count; ++i) {
    offsets[i] = total;
    total += packed_size(sizes[i]);
  }
  std::vector<unsigned char> staging;
  staging.reserve(total);
  for (std::size_t i = 0; i < count; ++i) {
    staging.insert(staging.end(), sources[i], sources[i] + sizes[i]);
    staging.resize(offsets[i] + packed_size(sizes[i]));
  }
  buffer = DeviceBuffer(total);
  if (total > 0) copy_host_to_device(buffer.as<void>(), staging.data(), total);
  unsigned char* base = buffer.as<unsigned char>();
  return std::tuple<T*...>{sizes[I] ? reinterpret_cast<T*>(base + offsets[I]) : nullptr...};
}
}  // namespace detail

// Device copies of several host arrays in one buffer, filled by one copy (16-byte aligned offsets): a
// device pointer to each, null for an empty array. `buffer` receives the memory, which the pointers
// share.      const auto [rows, scales] = cuda::upload_together(buffer, row_list, scale_list);
template <typename... T>
std::tuple<T*...> upload_together(DeviceBuffer& buffer, const std::vector<T>&... arrays) {
  return detail::upload_together(buffer, std::index_sequence_for<T...>(), arrays...);
}

// The first `count` values of a device buffer, copied to the host.
template <typename T>
std::vector<T> download(const DeviceBuffer& buffer, std::size_t count) {
  std::vector<T> values(count);
  if (count > 0) copy_device_to_host(values.data(), buffer.as<void>(), count * sizeof(T));
  return values;
}

}  // namespace mr1::cuda
