// A CUDA emulator for testing kernels on the CPU: each CUDA thread is a ucontext fiber; blocks run one
// after another; __syncthreads and warp shuffles are barriers of fibers (divergence is reported).
#pragma once
#include <ucontext.h>
#include <algorithm>
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 { float x, y, z, w; };  // aligned as the device's, for -fsanitize=alignment
struct alignas(8) float2 { float x, y; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }

extern dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __align__(x) alignas(x)
#define __shared__ static

using std::max;
using std::min;

namespace emu {
// What the program asked of the "device", counted for EMU_STATS=1 (printed to stderr at exit): a
// measure of a GPU run's launch and synchronisation overheads, which the emulator cannot time.
struct Counters {
  long long launches = 0;              // kernels (each block of each launch runs here)
  long long gemms = 0;                 // cublasGemmEx calls
  long long grouped_gemms = 0;         // cublasGemmGroupedBatchedEx calls
  long long host_to_device = 0, host_to_device_bytes = 0;
  long long device_to_host = 0, device_to_host_bytes = 0;  // each one waits for the device
  long long device_to_device = 0, memsets = 0, fills = 0;
  long long allocations = 0;           // handed out by the caching allocator (hits and misses)
  std::vector<std::pair<std::string, long long>> launches_by_kernel;  // in order of first launch
};
Counters& counters();
void block_barrier();
void warp_exchange(const void* value, void* result, int size, int source_lane_xor, int mode, int width);
float* dynamic_shared_float();
// `kernel`: the launch's kernel expression, as written in the .cu file (counted by name for EMU_STATS).
void launch(const char* kernel, dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body);
int lane();
void async_copy(void* destination, const void* source, size_t bytes);
void async_commit();
void async_wait_prior(size_t batches);
// A kernel's static __shared__ array (transform.py adds the call after its declaration): filled with NaN
// bytes by the first thread of each block that reaches it, as shared memory nobody wrote in this block.
void shared_array(void* array, size_t bytes);
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), by the kernel's name:
// a launch that asks for more than 48 KiB of dynamic shared memory needs it, as on the device.
void set_max_dynamic_shared(const char* kernel, int bytes);
}  // namespace emu

inline void __syncthreads() { emu::block_barrier(); }

template <typename T>
T __shfl_xor_sync(unsigned, T value, int offset, int width = 32) {
  T result;
  emu::warp_exchange(&value, &result, sizeof(T), offset, 0, width);
  return result;
}
template <typename T>
T __shfl_up_sync(unsigned, T value, unsigned delta, int width = 32) {
  T result;
  emu::warp_exchange(&value, &result, sizeof(T), static_cast<int>(delta), 1, width);
  return result;
}
template <typename T>
T atomicAdd(T* address, T value) {
  T old = *address;
  *address = old + value;
  return old;
}
template <typename T>
T __ldg(const T* p) { return *p; }
// A product rounded to float on its own (volatile: the host compiler may not fuse it into an FMA).
inline float __fmul_rn(float a, float b) {
  volatile float product = a * b;
  return product;
}
inline float __fdividef(float a, float b) { return a / b; }
inline float __fadd_rn(float a, float b) {
  volatile float sum = a + b;
  return sum;
}
inline float __fsub_rn(float a, float b) {
  volatile float difference = a - b;
  return difference;
}
inline float __fdiv_rn(float a, float b) {
  volatile float quotient = a / b;
  return quotient;
}

// The async copies (cp.async) as the device may run them: the source is read when the copy is issued,
// the destination holds NaN until the issuing thread waits for the copy's batch (__pipeline_wait_prior),
// so a thread that reads a tile before its copies are awaited, or past a barrier the issuing thread
// reached without waiting, sees NaN. Copies still pending when a thread ends are reported.
inline void __pipeline_memcpy_async(void* destination, const void* source, size_t bytes, size_t = 0) {
  emu::async_copy(destination, source, bytes);
}
inline void __pipeline_commit() { emu::async_commit(); }
inline void __pipeline_wait_prior(size_t batches) { emu::async_wait_prior(batches); }
