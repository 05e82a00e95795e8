// The CUDA emulator's scheduler: a launch runs block after block; in a block every thread is a fiber
// (ucontext) that runs until it reaches __syncthreads, a warp shuffle or its end; a barrier releases
// when all live threads (or all lanes of the warp) wait at it, and a state where nothing can run is
// reported as a deadlock. EMU_ORDER=1 runs the blocks and the fibers in reverse order, EMU_ORDER=2 in a
// shuffled order, so that a missing barrier, or a block that counts on another running first, shows up
// as a changed result.
#include "emu_runtime.h"

#include <deque>
#include <map>
#include <set>

dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {
namespace {
enum class State { runnable, block_barrier, warp_barrier, done };
// One async copy in flight: the source's bytes as read when it was issued (cp.async copies 4, 8 or 16).
struct AsyncCopy {
  void* destination;
  size_t bytes;
  unsigned char data[16];
};
struct Fiber {
  ucontext_t context;
  State state = State::runnable;
  dim3 index;
  int linear = 0;
  std::vector<AsyncCopy> open;                   // issued since the last commit
  std::deque<std::vector<AsyncCopy>> committed;  // committed batches not yet awaited, oldest first
};
struct WarpSlots {
  unsigned char values[2][32][8];
  int generation = 0;
};
constexpr size_t kStack = 256 * 1024;
std::vector<Fiber> fibers;
std::vector<std::vector<char>> stacks;
std::vector<WarpSlots> warps;
ucontext_t scheduler;
int current = -1;
const std::function<void()>* body = nullptr;
std::vector<float> shared_memory;

std::set<void*> shared_arrays_this_block;   // the static __shared__ arrays poisoned in this block
std::map<std::string, int> max_dynamic_shared;  // kernel name → bytes allowed by cudaFuncSetAttribute
constexpr size_t kDefaultDynamicShared = 48 * 1024;

[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "emu: %s\n", message.c_str());
  std::abort();
}

// "block (x, y, z)" of the block running now, for messages.
std::string this_block() {
  return "block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " +
         std::to_string(blockIdx.z) + ")";
}

void trampoline() {
  (*body)();
  Fiber& f = fibers[current];
  size_t pending = f.open.size();
  for (const auto& batch : f.committed) pending += batch.size();
  if (pending > 0) {
    fail("thread " + std::to_string(f.linear) + " of " + this_block() + " ended with " + std::to_string(pending) +
         " async copies it never waited for");
  }
  f.state = State::done;
}

void yield() { swapcontext(&fibers[current].context, &scheduler); }

const char* name(State s) {
  switch (s) {
    case State::runnable: return "runnable";
    case State::block_barrier: return "__syncthreads";
    case State::warp_barrier: return "shuffle";
    default: return "done";
  }
}
}  // namespace

int lane() { return fibers[current].linear % 32; }

namespace {
// Prints the counters at exit when EMU_STATS is set.
struct CountersAtExit {
  Counters counters;
  ~CountersAtExit() {
    if (!std::getenv("EMU_STATS")) return;
    const Counters& c = counters;
    std::fprintf(stderr,
                 "emu stats: %lld kernel launches, %lld cublasGemmEx, %lld grouped GEMMs, %lld host-to-device copies "
                 "(%lld bytes), %lld device-to-host copies (%lld bytes), %lld device-to-device copies, %lld memsets, "
                 "%lld fills, %lld allocations\n",
                 c.launches, c.gemms, c.grouped_gemms, c.host_to_device, c.host_to_device_bytes, c.device_to_host,
                 c.device_to_host_bytes, c.device_to_device, c.memsets, c.fills, c.allocations);
    // The launches by kernel, most first (ties in order of first launch).
    std::vector<std::pair<std::string, long long>> by_kernel = c.launches_by_kernel;
    std::stable_sort(by_kernel.begin(), by_kernel.end(),
                     [](const auto& a, const auto& b) { return a.second > b.second; });
    std::fprintf(stderr, "emu stats: launches by kernel:");
    for (const auto& [kernel, count] : by_kernel) std::fprintf(stderr, " %s %lld,", kernel.c_str(), count);
    std::fprintf(stderr, "\n");
  }
};
CountersAtExit counters_at_exit;
}  // namespace

Counters& counters() { return counters_at_exit.counters; }

void block_barrier() {
  fibers[current].state = State::block_barrier;
  yield();
}

void warp_exchange(const void* value, void* result, int size, int arg, int mode, int width) {
  Fiber& f = fibers[current];
  const int lane_id = f.linear % 32, warp = f.linear / 32;
  WarpSlots& slots = warps[warp];
  const int generation = slots.generation;
  std::memcpy(slots.values[generation & 1][lane_id], value, size);
  f.state = State::warp_barrier;
  yield();
  int source;
  if (mode == 0) {
    source = lane_id ^ arg;
    if (source / width != lane_id / width || source >= 32) source = lane_id;
  } else {
    source = lane_id - arg;
    if (source < (lane_id / width) * width) source = lane_id;
  }
  std::memcpy(result, slots.values[generation & 1][source], size);
}

float* dynamic_shared_float() { return shared_memory.data(); }

void async_copy(void* destination, const void* source, size_t bytes) {
  if (bytes != 4 && bytes != 8 && bytes != 16) fail("async copy of " + std::to_string(bytes) + " bytes (4, 8 or 16)");
  if (reinterpret_cast<uintptr_t>(destination) % bytes != 0 || reinterpret_cast<uintptr_t>(source) % bytes != 0) {
    fail("async copy of " + std::to_string(bytes) + " bytes between addresses not aligned to its size");
  }
  AsyncCopy copy{destination, bytes, {}};
  std::memcpy(copy.data, source, bytes);
  std::memset(destination, 0xFF, bytes);  // NaN until awaited
  fibers[current].open.push_back(copy);
}

void async_commit() {
  Fiber& f = fibers[current];
  f.committed.push_back(std::move(f.open));
  f.open.clear();
}

void async_wait_prior(size_t batches) {
  Fiber& f = fibers[current];
  while (f.committed.size() > batches) {
    for (const AsyncCopy& copy : f.committed.front()) std::memcpy(copy.destination, copy.data, copy.bytes);
    f.committed.pop_front();
  }
}

void shared_array(void* array, size_t bytes) {
  if (shared_arrays_this_block.insert(array).second) std::memset(array, 0xFF, bytes);
}

void set_max_dynamic_shared(const char* kernel, int bytes) {
  // The least of the targets: sm_80 (A100) allows 163 KiB a block, sm_90 (H100, H200) 227 KiB.
  if (bytes > 163 * 1024) {
    fail("dynamic shared memory of " + std::to_string(bytes) + " bytes exceeds sm_80's 163 KiB a block");
  }
  max_dynamic_shared[kernel] = bytes;
}

namespace {
// The order of the blocks of a launch and of the threads of a block, 0 .. count − 1 as EMU_ORDER asks:
// in order (unset or 0), reversed (1) or shuffled (2).
std::vector<long long> run_order(long long count) {
  static const int mode = std::getenv("EMU_ORDER") ? std::atoi(std::getenv("EMU_ORDER")) : 0;
  static unsigned seed = 12345;
  std::vector<long long> order(count);
  for (long long i = 0; i < count; ++i) order[i] = i;
  if (mode == 1) std::reverse(order.begin(), order.end());
  if (mode == 2) {
    for (long long i = count - 1; i > 0; --i) {
      seed = seed * 1103515245u + 12345u;
      std::swap(order[i], order[(seed >> 8) % (i + 1)]);
    }
  }
  return order;
}

// Runs the threads of block blockIdx (threads = blockDim's product) as fibers until every one has ended.
void run_block(int threads) {
  const dim3 block = blockDim;
  for (int t = 0; t < threads; ++t) {
    Fiber& f = fibers[t];
    f.state = State::runnable;
    f.linear = t;
    f.index = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = stacks[t].data();
    f.context.uc_stack.ss_size = kStack;
    f.context.uc_link = &scheduler;
    makecontext(&f.context, trampoline, 0);
  }
  for (auto& w : warps) w.generation = 0;
  while (true) {
    bool ran = false;
    for (const long long t : run_order(threads)) {
      if (fibers[t].state != State::runnable) continue;
      current = t;
      threadIdx = fibers[t].index;
      swapcontext(&scheduler, &fibers[t].context);
      ran = true;
    }
    int live = 0, at_block = 0;
    for (const Fiber& f : fibers) {
      live += f.state != State::done;
      at_block += f.state == State::block_barrier;
    }
    if (live == 0) break;
    bool released = false;
    if (at_block > 0 && at_block == live) {
      for (Fiber& f : fibers)
        if (f.state == State::block_barrier) f.state = State::runnable;
      released = true;
    } else {
      for (size_t w = 0; w < warps.size(); ++w) {
        int lanes = 0, waiting = 0, done = 0;
        for (int t = static_cast<int>(w) * 32; t < std::min(threads, static_cast<int>(w) * 32 + 32); ++t) {
          ++lanes;
          waiting += fibers[t].state == State::warp_barrier;
          done += fibers[t].state == State::done;
        }
        if (waiting > 0 && waiting + done == lanes) {
          if (done > 0) {
            fail("shuffle in warp " + std::to_string(w) + " of " + this_block() + " with " + std::to_string(done) +
                 " exited lanes");
          }
          for (int t = static_cast<int>(w) * 32; t < static_cast<int>(w) * 32 + 32; ++t) fibers[t].state = State::runnable;
          ++warps[w].generation;
          released = true;
        }
      }
    }
    if (!ran && !released) {
      std::string states;
      for (int t = 0; t < threads; ++t) states += " " + std::to_string(t) + ":" + name(fibers[t].state);
      fail("deadlock in " + this_block() + ":" + states);
    }
  }
}
}  // namespace

void launch(const char* kernel_name, dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& kernel) {
  ++counters().launches;
  auto& by_kernel = counters().launches_by_kernel;
  const auto found = std::find_if(by_kernel.begin(), by_kernel.end(), [&](const auto& entry) { return entry.first == kernel_name; });
  if (found == by_kernel.end()) {
    by_kernel.emplace_back(kernel_name, 1);
  } else {
    ++found->second;
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0) {
    fail("invalid launch configuration (grid " + std::to_string(grid.x) + " " + std::to_string(grid.y) + " " +
         std::to_string(grid.z) + ", block " + std::to_string(block.x) + ")");
  }
  if (grid.y > 65535 || grid.z > 65535) fail("grid y/z too large");
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads > 1024) fail("block too large");
  if (shared_bytes > kDefaultDynamicShared) {
    const auto allowed = max_dynamic_shared.find(kernel_name);
    if (allowed == max_dynamic_shared.end() || static_cast<size_t>(allowed->second) < shared_bytes) {
      fail(std::string(kernel_name) + " launched with " + std::to_string(shared_bytes) +
           " bytes of dynamic shared memory, more than 48 KiB, without cudaFuncSetAttribute allowing as many");
    }
  }
  gridDim = grid;
  blockDim = block;
  body = &kernel;
  fibers.assign(threads, Fiber());
  if (stacks.size() < static_cast<size_t>(threads)) stacks.resize(threads, std::vector<char>(kStack));
  warps.assign((threads + 31) / 32, WarpSlots());
  const long long block_count = static_cast<long long>(grid.x) * grid.y * grid.z;
  for (const long long linear_block : run_order(block_count)) {
    blockIdx = dim3(static_cast<unsigned>(linear_block % grid.x),
                    static_cast<unsigned>(linear_block / grid.x % grid.y),
                    static_cast<unsigned>(linear_block / (static_cast<long long>(grid.x) * grid.y)));
    shared_memory.assign(shared_bytes / sizeof(float) + 1, NAN);  // uninitialised shared memory reads as NaN
    shared_arrays_this_block.clear();
    run_block(threads);
  }
}
}  // namespace emu
