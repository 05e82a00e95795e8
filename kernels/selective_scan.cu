// The selective scan on CUDA, forward and backward (the CPU reference: kernels/selective_scan.cpp).
//
// Layout. Each channel (b, e) is scanned by P consecutive lanes of a warp, each lane keeping S of the
// channel's states in registers: the backward and the first passes over pieces use S = 8, P the smallest power
// of two with 8·P >= N (P = 1 .. 32, so N <= 256); the forward uses S = 4 and twice the lanes where N <= 128 (more
// warps to hide latency: 0.369 against 0.384 ms at N = 16 on an H200, 0.98 against 1.33 ms at N = 64), S = 8
// above. Either way the padded state size P·S is the same, so checkpoints and carries mean the same to all.
// y = Σ_n h[n] C[n] is summed over the P lanes with shuffles. A block of 128 threads holds 128/P channels
// of one batch row; the grid is (E / (128/P), B). States past N have A = B = C = 0 and stay 0.
//
// Forward: the sequence is walked in chunks of 16 steps. At the start of a chunk each thread stages values
// of one channel at every P-th step of the chunk into shared memory: the pair (Δ·log2 e, Δ·u) with
// Δ = softplus(delta + bias), computed once per value from coalesced loads (the P lanes of a channel then
// read it there), keeping u and the gate silu(z) in registers; then it starts loading the next chunk: its u,
// delta and z into registers, its B and C rows into the other half of a double-buffered shared-memory tile
// (cp.async, 16-byte copies when N is a power of two from 8), so loads overlap the arithmetic. The step loop
// reads shared memory only (no store inside it, so the compiler may overlap the steps); each lane keeps its
// partial y of the 16 steps in registers, and after the chunk the lanes of a channel add them by recursive
// halving into shared memory, from which the staging threads store out = (y + D u) ⊙ silu(z) with coalesced
// writes. Optionally writes the state at every 64th step (the checkpoints of the backward) and the final state.
//
// Backward: a forward pass of the kernel above writes a checkpoint every 64 steps. The backward kernel
// visits those segments in reverse. The block first writes the segment's Δ into shared memory (each
// softplus computed once, as in the forward; the slopes σ(delta + bias) and σ(z) follow per sub-chunk);
// within the segment it recomputes the states forward from the checkpoint,
// keeping one every 8 steps in shared memory, then for each 8-step sub-chunk in reverse recomputes its
// states into registers and runs the reverse-time recurrence on them. du, d(delta) and dz are written
// directly; dB and dC (sums over the channels) are reduced across the warp's channels with shuffles,
// the warps' results added in warp order through shared memory, and each block stores its part (one
// per block of channels; a launch covers as many blocks of channels as 512 MiB of parts allow);
// dA, dD and d(delta_bias) (sums over batch rows) are stored per batch row at the end. Two small
// kernels then add the parts in a fixed order, so every gradient is bit-reproducible from run to run
// (no atomics).
//
// Pieces. A grid of B · E/(128/P) blocks can be far smaller than the device (the seed example: 16 blocks
// on 132 multiprocessors). The sequence is then cut into pieces of whole segments (SelectiveScanPieces in
// selective_scan_cuda.h), the grid's third dimension. h_t = a_t h_{t−1} + x_t is linear in the state it
// starts from, so a first pass runs every piece but the last from a zero state and keeps its end state
// and Π a_t; the forward kernel then starts each piece from the state its predecessors leave
// (h ← Π a · h + h_local, piece by piece). The backward does the same in reverse time for d(state)
// (dh_{t−1} = a_t (dh_t + C_t dy_t), which needs no states), and its checkpoints come from the cut forward.
//
// Shape letters: B batch, L length, E channels, N state size, P lanes per channel.
#include <cuda_pipeline.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda_device.cuh"
#include "kernels/selective_scan_cuda.h"

namespace mr1 {

namespace {

constexpr int kStates = 8;     // states per lane
constexpr int kThreads = 128;  // threads per block
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 16;     // forward: steps per shared-memory chunk
constexpr int kSegment = 64;   // steps between checkpoints (a multiple of kChunk and kSub)
constexpr int kSub = 8;        // backward: steps recomputed into registers at once
constexpr int kSubsPerSegment = kSegment / kSub;
constexpr float kLog2e = 1.4426950408889634f;
constexpr int64_t kRowPartsBytes = int64_t{512} << 20;  // the backward's dB, dC parts of one launch, at most

struct ScanShape {
  int64_t batch, length, channels, state;  // B, L, E, N
  int lanes;                               // P
  int padded;                              // 8·P >= N
  int channels_per_block;                  // 128 / P
  int64_t segments;                        // ceil(L / 64)
  int64_t pieces, span;                    // the sequence's pieces (SelectiveScanPieces), scanned at once
  int64_t first_block = 0;                 // the channel block of blockIdx.x 0 (a backward over a range)
};

// The device's multiprocessors (asked once).
int multiprocessors() {
  static const int count = cuda::device_info().multiprocessors;
  return count;
}

// Throws, naming d_state and the device's limit, when a block of `kernel` needs more dynamic shared memory
// than this device lets a block have (sm_80: 163 KiB, sm_90: 227 KiB, sm_86 and sm_89: 99 KiB).
void require_shared_memory(size_t bytes, const ScanShape& s, const char* kernel) {
  static const size_t limit = cuda::device_info().max_shared_per_block;
  if (bytes <= limit) return;
  throw std::runtime_error(std::string(kernel) + ": d_state " + std::to_string(s.state) + " needs " +
                           std::to_string((bytes + 1023) / 1024) + " KiB of shared memory a block; this GPU allows " +
                           std::to_string(limit / 1024) + " KiB (a d_state of 128 or less needs at most 75 KiB)");
}

// `requested_pieces` as SelectiveScanPointers::pieces (0: chosen from the device's size).
ScanShape scan_shape(int64_t B, int64_t L, int64_t E, int64_t N, int64_t requested_pieces) {
  if (N < 1 || N > kSelectiveScanCudaMaxState) {
    throw std::invalid_argument("selective_scan: the CUDA kernels support d_state N from 1 to " +
                                std::to_string(kSelectiveScanCudaMaxState) + ", found " + std::to_string(N));
  }
  if (B > cuda::kMaxGridYZ) {  // the grid's y: one batch row each
    throw std::invalid_argument("selective_scan: the CUDA kernels take at most " + std::to_string(cuda::kMaxGridYZ) +
                                " batch rows (a grid's y), found B = " + std::to_string(B));
  }
  if (E >= (int64_t{1} << 26)) {  // the forward's offsets within a chunk (below 32 · E) in 32 bits
    throw std::invalid_argument("selective_scan: the CUDA kernels take fewer than 2^26 channels, found E = " +
                                std::to_string(E));
  }
  ScanShape s;
  s.batch = B;
  s.length = L;
  s.channels = E;
  s.state = N;
  s.lanes = selective_scan_cuda_lanes(N);
  s.padded = s.lanes * kStates;
  s.channels_per_block = kThreads / s.lanes;
  s.segments = (L + kSegment - 1) / kSegment;
  const SelectiveScanPieces pieces = selective_scan_cuda_pieces(
      B, L, E, N, requested_pieces > 0 || B <= 0 || L <= 0 || E <= 0 ? 1 : multiprocessors(), requested_pieces);
  s.pieces = pieces.count;
  s.span = pieces.span;
  return s;
}

// (channel blocks, B, pieces): a block scans one piece of 128/P channels of one batch row.
dim3 scan_grid(const ScanShape& s) {
  return dim3(static_cast<unsigned>((s.channels + s.channels_per_block - 1) / s.channels_per_block),
              static_cast<unsigned>(s.batch), static_cast<unsigned>(s.pieces));
}

// The steps [begin, end) of the block's piece (blockIdx.z).
struct PieceSteps {
  int64_t begin, end;
};
__device__ __forceinline__ PieceSteps piece_steps(const ScanShape& s, int64_t piece) {
  return PieceSteps{piece * s.span, min(s.length, (piece + 1) * s.span)};
}

// Where a thread works: its lane group (which 8 states), channel e, batch row b.
struct Position {
  int group;
  int first_state;
  int64_t e, b;
  bool valid;  // e < E (threads past E run along with zeros, for the block's barriers and shuffles)
};

// The channel e of the block's c-th channel.
__device__ __forceinline__ int64_t block_channel(const ScanShape& s, int c) {
  return (s.first_block + static_cast<int64_t>(blockIdx.x)) * s.channels_per_block + c;
}

// delta + delta_bias at token-major index `index` of channel e (the raw value before softplus).
__device__ __forceinline__ float biased_delta(const SelectiveScanPointers& p, int64_t index, int64_t e) {
  return p.delta[index] + (p.delta_bias ? p.delta_bias[e] : 0.0f);
}

__device__ __forceinline__ Position locate(const ScanShape& s) {
  Position at;
  at.group = threadIdx.x % s.lanes;
  at.first_state = at.group * kStates;
  at.e = block_channel(s, threadIdx.x / s.lanes);
  at.b = blockIdx.y;
  at.valid = at.e < s.channels;
  return at;
}

// locate(s) for a kernel compiled for kLanes lanes of kLaneStates states a channel (its divisions by constants).
template <int kLanes, int kLaneStates = kStates>
__device__ __forceinline__ Position locate_fixed(const ScanShape& s) {
  Position at;
  at.group = threadIdx.x % kLanes;
  at.first_state = at.group * kLaneStates;
  at.e = (s.first_block + static_cast<int64_t>(blockIdx.x)) * (kThreads / kLanes) + threadIdx.x / kLanes;
  at.b = blockIdx.y;
  at.valid = at.e < s.channels;
  return at;
}

// log(1 + x) for x in [0, 1], as 2 atanh(s) = 2s + 2s Σ_k≥1 s^2k / (2k + 1) with s = x / (2 + x) in [0, 1/3]: the
// series reaches float precision in eight terms (the ninth is below 2e-9 of the sum). Within 2 ulp of
// log(1 + x) (checked on the host at every 7th float of [2^-126, 1]), in about half the instructions of log1pf
// and with no branch; the leading 2s is added last, so that the series' rounding stays in its small tail.
__device__ __forceinline__ float log1p_unit(float x) {
  const float s = x / (2.0f + x);
  const float w = s * s;
  float tail = 1.0f / 15;
  tail = fmaf(tail, w, 1.0f / 13);
  tail = fmaf(tail, w, 1.0f / 11);
  tail = fmaf(tail, w, 1.0f / 9);
  tail = fmaf(tail, w, 1.0f / 7);
  tail = fmaf(tail, w, 1.0f / 5);
  tail = fmaf(tail, w, 1.0f / 3);
  const float twice = 2.0f * s;
  return fmaf(twice, w * tail, twice);
}

// softplus(v) = max(v, 0) + log1p(exp(−|v|)): never overflows (the CPU's formula).
__device__ __forceinline__ float softplus(float v) { return fmaxf(v, 0.0f) + log1p_unit(expf(-fabsf(v))); }

// silu(z) = z / (1 + exp(−z)) (the CPU's z · σ(z) within a few ulp): exp's overflow for z < −88 gives
// z / inf = −0, the limit. __fdividef: 2 ulp, no branches (it returns 0 for a divisor above 2^126, the limit
// again).
__device__ __forceinline__ float silu(float z) { return __fdividef(z, 1.0f + expf(-z)); }

// exp(Δ · A) as exp2((Δ · log2 e) · A): one MUFU.EX2 per state and step. ex2.approx (2 ulp, as exp2f) with
// subnormal results flushed to zero: exp2f's rescaling of subnormal results costs three more instructions
// per state and step, for decays below 2^−126 that leave no trace in the state anyway.
__device__ __forceinline__ float decay(float delta_log2e, float A) {
#ifdef __CUDA_ARCH__
  float result;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(result) : "f"(delta_log2e * A));
  return result;
#else
  return exp2f(delta_log2e * A);
#endif
}

// Σ of v over the P lanes of a channel (every lane gets it). All lanes of the warp must call it.
__device__ __forceinline__ float lanes_sum(float v, int lanes) {
  for (int offset = 1; offset < lanes; offset <<= 1) v += __shfl_xor_sync(cuda::kFullMask, v, offset);
  return v;
}

// What the first pass over the pieces leaves for the second, (B, pieces, E, padded) each: a piece's state at
// its end from a zero start (forward), or d(state) at its start from a zero end (backward); and the product
// of its decays exp(Δ_t A) over its steps.
struct PieceCarries {
  float* local = nullptr;
  float* decay = nullptr;
};

__device__ __forceinline__ int64_t carry_index(const ScanShape& s, const Position& at, int64_t piece) {
  return ((at.b * s.pieces + piece) * s.channels + at.e) * s.padded + at.first_state;
}

// A first pass's running values at the start of a piece: a zero state (or d(state)) and an empty product.
__device__ __forceinline__ void start_carry(float (&local)[kStates], float (&product)[kStates]) {
#pragma unroll
  for (int i = 0; i < kStates; ++i) {
    local[i] = 0.0f;
    product[i] = 1.0f;
  }
}

// Stores what a first pass leaves for `piece` (threads past E store nothing).
__device__ __forceinline__ void store_carry(const PieceCarries& carries, const ScanShape& s, const Position& at,
                                            int64_t piece, const float (&local)[kStates],
                                            const float (&product)[kStates]) {
  if (!at.valid) return;
  const int64_t index = carry_index(s, at, piece);
#pragma unroll
  for (int i = 0; i < kStates; ++i) {
    carries.local[index + i] = local[i];
    carries.decay[index + i] = product[i];
  }
}

// v ← Π a · v + local over the pieces from, from + step, ..., up to but not `to`: the value entering the
// next piece (v starts at 0). A zero v stays 0, so a product that overflowed (Δ < 0 without softplus) does
// not make 0 · inf.
template <int kCount>
__device__ __forceinline__ void carry_through(const PieceCarries& carries, const ScanShape& s, const Position& at,
                                              int64_t from, int64_t to, int64_t step, float (&v)[kCount]) {
#pragma unroll
  for (int i = 0; i < kCount; ++i) v[i] = 0.0f;
  if (!at.valid) return;
  for (int64_t piece = from; piece != to; piece += step) {
    const int64_t index = carry_index(s, at, piece);
#pragma unroll
    for (int i = 0; i < kCount; ++i) {
      v[i] = (v[i] == 0.0f ? 0.0f : carries.decay[index + i] * v[i]) + carries.local[index + i];
    }
  }
}

// A[e, n] for the thread's 8 states (0 past N), and its channel's D and delta_bias (0 when absent).
struct ChannelConstants {
  float A[kStates];
  float skip, bias;
};

__device__ __forceinline__ ChannelConstants channel_constants(const SelectiveScanPointers& p, const ScanShape& s,
                                                              const Position& at) {
  ChannelConstants constants;
#pragma unroll
  for (int i = 0; i < kStates; ++i) {
    const int n = at.first_state + i;
    constants.A[i] = at.valid && n < s.state ? p.A[at.e * s.state + n] : 0.0f;
  }
  constants.skip = at.valid && p.D ? p.D[at.e] : 0.0f;
  constants.bias = at.valid && p.delta_bias ? p.delta_bias[at.e] : 0.0f;
  return constants;
}

// u, delta and z of the steps [t0, t0 + kSteps) of the thread's channel; 0 past L or E (and z 0 when absent).
template <int kSteps>
__device__ __forceinline__ void load_steps(const SelectiveScanPointers& p, const ScanShape& s, const Position& at,
                                           int64_t t0, float (&u)[kSteps], float (&delta)[kSteps], float (&z)[kSteps]) {
#pragma unroll
  for (int k = 0; k < kSteps; ++k) {
    const int64_t t = t0 + k;
    const bool inside = at.valid && t < s.length;
    const int64_t index = ((at.b * s.length) + t) * s.channels + at.e;
    u[k] = inside ? p.u[index] : 0.0f;
    delta[k] = inside ? p.delta[index] : 0.0f;
    z[k] = inside && p.z ? p.z[index] : 0.0f;
  }
}

// The forward kernel's layout, from its lanes per channel P and states per lane S (padded = P · S, the same
// as ScanShape::padded, so that checkpoints and carries mean the same whichever S the forward uses).
template <int kLanes, int kLaneStates>
struct ForwardLayout {
  static constexpr int kPadded = kLanes * kLaneStates;
  static constexpr int kChannels = kThreads / kLanes;      // channels of a block
  static constexpr int kPerChunk = kChunk * kChannels;     // (step, channel) values of a chunk
  static constexpr int kOwned = (kPerChunk + kThreads - 1) / kThreads;  // values a thread stages a chunk
  static constexpr int kTile = 2 * kChunk * kPadded;       // one chunk's B and C rows
};

// Copies (cp.async) the B and C rows of steps [t0, t0 + steps) of batch row b into `tile`
// [2 (B, C)][kChunk][padded]; entries past N keep the zeros written at the start. When N is the padded size,
// 16-byte aligned, the rows of a matrix are one contiguous run on both sides and go over in 16-byte copies.
template <int kPadded>
__device__ __forceinline__ void stage_rows(const SelectiveScanPointers& p, const ScanShape& s, int64_t b, int64_t t0,
                                           bool whole_rows, float* tile) {
  const int steps = static_cast<int>(min(static_cast<int64_t>(kChunk), s.length - t0));
  const int64_t first = (b * s.length + t0) * s.state;
  if (whole_rows && steps == kChunk) {
    constexpr int kQuads = kChunk * kPadded / 4;  // per matrix
#pragma unroll
    for (int k = 0; k < (2 * kQuads + kThreads - 1) / kThreads; ++k) {
      const int i = threadIdx.x + k * kThreads;
      if (2 * kQuads % kThreads == 0 || i < 2 * kQuads) {
        const int which = i >= kQuads, q = i - which * kQuads;
        __pipeline_memcpy_async(tile + which * kChunk * kPadded + 4 * q, (which ? p.C : p.B) + first + 4 * q,
                                4 * sizeof(float));
      }
    }
  } else if (whole_rows) {
    const int quads = steps * kPadded / 4;  // per matrix
    for (int i = threadIdx.x; i < 2 * quads; i += kThreads) {
      const int which = i >= quads, q = i - which * quads;
      __pipeline_memcpy_async(tile + which * kChunk * kPadded + 4 * q, (which ? p.C : p.B) + first + 4 * q,
                              4 * sizeof(float));
    }
  } else {
    const int N = static_cast<int>(s.state), per_matrix = steps * N;
    for (int i = threadIdx.x; i < 2 * per_matrix; i += kThreads) {
      const int which = i >= per_matrix, j = i - which * per_matrix, step = j / N, n = j - step * N;
      __pipeline_memcpy_async(tile + (which * kChunk + step) * kPadded + n, (which ? p.C : p.B) + first + j,
                              sizeof(float));
    }
  }
  __pipeline_commit();
}

// A chunk's raw u, delta and z of the values a thread stages (loaded into registers a chunk ahead), and the
// u and gate silu(z) of the chunk being scanned (kept for its output).
template <int kOwned>
struct OwnedValues {
  float u[kOwned], delta[kOwned], z[kOwned];
};

// The first pass over a cut sequence, forward: the state at the end of piece blockIdx.z from a zero start, and
// the product of its decays (the same float operations as the forward kernel's steps). The grid leaves out
// the last piece, which no piece follows. Each lane group loads its channel's values itself: the pieces
// exist for grids too short to fill the device, where the steps' latency, not bandwidth, bounds the time.
__global__ void __launch_bounds__(kThreads)
    selective_scan_piece_states_kernel(SelectiveScanPointers p, ScanShape s, PieceCarries carries) {
  const Position at = locate(s);
  const ChannelConstants constants = channel_constants(p, s, at);
  const PieceSteps steps = piece_steps(s, blockIdx.z);
  const int64_t row0 = at.b * s.length;
  float h[kStates], product[kStates];
  start_carry(h, product);
  for (int64_t t0 = steps.begin; t0 < steps.end; t0 += kSub) {
    float u[kSub], delta[kSub], unused_z[kSub];
    load_steps<kSub>(p, s, at, t0, u, delta, unused_z);
#pragma unroll
    for (int k = 0; k < kSub; ++k) {
      const int64_t t = t0 + k;
      if (t >= steps.end) break;
      const float v = delta[k] + constants.bias;
      const float d = !at.valid ? 0.0f : p.delta_softplus ? softplus(v) : v;
      const float delta_u = d * u[k], delta_log2e = d * kLog2e;
#pragma unroll
      for (int i = 0; i < kStates; ++i) {
        const int n = at.first_state + i;
        const float B_n = n < s.state ? __ldg(p.B + (row0 + t) * s.state + n) : 0.0f;
        const float a = decay(delta_log2e, constants.A[i]);
        h[i] = a * h[i] + delta_u * B_n;
        product[i] *= a;
      }
    }
  }
  store_carry(carries, s, at, blockIdx.z, h, product);
}

// Adds each of the kChunk values v (one per step) over the kLanes lanes of a channel by recursive halving (at
// each level a lane keeps half of its values, sends the other half to its partner and adds what it receives;
// past one value, partners add and one of them drops out) and stores the sums at y[step][channel]: every
// lane ends up holding kChunk / kLanes of the steps, with kChunk · (1 − 1/kLanes) shuffles instead of
// kChunk · log2(kLanes).
template <int kLanes, int kChannels>
__device__ __forceinline__ void store_lane_sums(float (&v)[kChunk], int group, int channel, float* y) {
  int base = 0;
  bool writer = true;
#pragma unroll
  for (int offset = 1; offset < kLanes; offset <<= 1) {
    const bool upper = (group & offset) != 0;
    const int half = kChunk / (2 * offset);
    if (half >= 1) {
#pragma unroll
      for (int j = 0; j < kChunk / 2; ++j) {
        if (j < half) {
          const float send = upper ? v[j] : v[j + half];
          const float keep = upper ? v[j + half] : v[j];
          v[j] = keep + __shfl_xor_sync(cuda::kFullMask, send, offset);
        }
      }
      if (upper) base += half;
    } else {
      v[0] += __shfl_xor_sync(cuda::kFullMask, v[0], offset);
      writer = writer && !upper;
    }
  }
  constexpr int kHeld = kChunk / kLanes >= 1 ? kChunk / kLanes : 1;
  if (!writer) return;
#pragma unroll
  for (int j = 0; j < kHeld; ++j) y[(base + j) * kChannels + channel] = v[j];
}

// The forward over the block's piece, from the state its predecessors leave (carries: from the first pass).
// kLanes lanes per channel, kLaneStates states each (ForwardLayout). A thread stages the values of one channel
// (threadIdx.x % channels) at every kLanes-th step of a chunk, and writes their outputs.
template <int kLanes, int kLaneStates>
__global__ void __launch_bounds__(kThreads)
    selective_scan_forward_kernel(SelectiveScanPointers p, ScanShape s, PieceCarries carries, float* out,
                                  float* final_state, float* checkpoints) {
  using Layout = ForwardLayout<kLanes, kLaneStates>;
  constexpr int kPadded = Layout::kPadded, kChannels = Layout::kChannels, kPerChunk = Layout::kPerChunk;
  constexpr int kOwned = Layout::kOwned, kTile = Layout::kTile;
  // [2 buffers][2 (B, C)][kChunk][padded] rows | (Δ·log2 e, Δ·u) pairs, then y, [kChunk][channels] each
  extern __shared__ __align__(16) float shared[];
  float* tiles = shared;
  float2* deltas = reinterpret_cast<float2*>(tiles + 2 * kTile);
  float* y_values = tiles + 2 * kTile + 2 * kPerChunk;

  // The scan: lane group `group` of channel `channel` holds states [first_state, first_state + kLaneStates).
  const Position at = locate_fixed<kLanes, kLaneStates>(s);
  const int group = at.group, channel = threadIdx.x / kLanes, first_state = at.first_state;
  const int64_t channel0 = (s.first_block + static_cast<int64_t>(blockIdx.x)) * kChannels;
  const int64_t e = at.e, b = at.b;
  const bool valid = at.valid;
  float A[kLaneStates];
#pragma unroll
  for (int i = 0; i < kLaneStates; ++i) {
    const int n = first_state + i;
    A[i] = valid && n < s.state ? p.A[e * s.state + n] : 0.0f;
  }
  // The staging: channel own_channel at steps own_step + kLanes · j of each chunk.
  const int own_channel = threadIdx.x % kChannels, own_step = threadIdx.x / kChannels;
  const int64_t own_e = channel0 + own_channel;
  const bool own_valid = own_e < s.channels && threadIdx.x < kPerChunk;
  const float own_bias = own_valid && p.delta_bias ? p.delta_bias[own_e] : 0.0f;
  const float own_skip = own_valid && p.D ? p.D[own_e] : 0.0f;
  const bool want_out = out != nullptr, want_z = want_out && p.z != nullptr;

  for (int i = threadIdx.x; i < 2 * kTile; i += kThreads) tiles[i] = 0.0f;
  const bool whole_rows = s.state == kPadded && reinterpret_cast<uintptr_t>(p.B) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(p.C) % 16 == 0;
  __syncthreads();  // the zeros are in place before the copies land

  const int64_t piece = blockIdx.z;
  float h[kLaneStates];
  carry_through(carries, s, at, 0, piece, 1, h);
  const PieceSteps steps = piece_steps(s, piece);
  const int64_t chunks = (steps.end - steps.begin + kChunk - 1) / kChunk;
  // How many of the thread's values of the chunk at t0 lie inside the piece (and E): its j-th value is inside
  // when kLanes · j < the count.
  const auto values_inside = [&](int64_t t0) {
    return own_valid ? static_cast<int>(min(steps.end - t0 - own_step, static_cast<int64_t>(kChunk))) : 0;
  };
  // Loads the raw values of the chunk at t0 (0 past the piece's end or E): from the thread's first value, its
  // j-th lies j · kLanes · E further (32 bits: scan_shape keeps E below 2^26).
  const int stride = kLanes * static_cast<int>(s.channels);
  const auto load = [&](int64_t t0, OwnedValues<kOwned>& raw) {
    const int inside = values_inside(t0);
    const int64_t first = (b * s.length + t0 + own_step) * s.channels + own_e;
    const float* u = p.u + first;
    const float* delta = p.delta + first;
    const float* z = want_z ? p.z + first : nullptr;
    if (kLanes * (kOwned - 1) < inside) {  // all of them (every chunk but a piece's last): no conditions
#pragma unroll
      for (int j = 0; j < kOwned; ++j) {
        raw.u[j] = __ldg(u + j * stride);
        raw.delta[j] = __ldg(delta + j * stride);
        raw.z[j] = z ? __ldg(z + j * stride) : 0.0f;
      }
      return;
    }
#pragma unroll
    for (int j = 0; j < kOwned; ++j) {
      const bool load = kLanes * j < inside;
      raw.u[j] = load ? __ldg(u + j * stride) : 0.0f;
      raw.delta[j] = load ? __ldg(delta + j * stride) : 0.0f;
      raw.z[j] = load && z ? __ldg(z + j * stride) : 0.0f;
    }
  };
  OwnedValues<kOwned> raw, current;  // current: u, and the gate in z
  load(steps.begin, raw);
  stage_rows<kPadded>(p, s, b, steps.begin, whole_rows, tiles);

  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t t0 = steps.begin + chunk * kChunk;
    // This chunk's Δ·log2 e and Δ·u into shared memory, each softplus and silu computed once (a value past the
    // piece or E gets Δ = 0, which leaves the states as they are: exp(0) = 1 and 0 · B = 0). Both functions
    // are computed for every value and the result selected, which keeps the code free of branches.
    const int inside = values_inside(t0);
#pragma unroll
    for (int j = 0; j < kOwned; ++j) {
      const int i = threadIdx.x + j * kThreads;
      const float v = raw.delta[j] + own_bias;
      const float positive = softplus(v);
      const float delta = kLanes * j >= inside ? 0.0f : p.delta_softplus ? positive : v;
      if (i < kPerChunk) deltas[i] = make_float2(delta * kLog2e, delta * raw.u[j]);
      current.u[j] = raw.u[j];
      current.z[j] = want_z ? silu(raw.z[j]) : 1.0f;
    }
    // The next chunk's loads and rows are started, and this chunk's rows awaited.
    if (chunk + 1 < chunks) {
      load(t0 + kChunk, raw);
      stage_rows<kPadded>(p, s, b, t0 + kChunk, whole_rows, tiles + ((chunk + 1) & 1) * kTile);
    } else {
      __pipeline_commit();
    }
    __pipeline_wait_prior(1);
    __syncthreads();

    if (checkpoints && t0 % kSegment == 0 && valid) {
      float* saved = checkpoints + ((b * s.segments + t0 / kSegment) * s.channels + e) * s.padded + first_state;
#pragma unroll
      for (int i = 0; i < kLaneStates; ++i) saved[i] = h[i];
    }
    const float* B_tile = tiles + (chunk & 1) * kTile + first_state;
    const float* C_tile = B_tile + kChunk * kPadded;
    float y[kChunk];
#pragma unroll
    for (int step = 0; step < kChunk; ++step) {
      // h ← exp(Δ A) h + Δ u B_t;  y = Σ_n h C_t (this lane's states; the lanes are added after the chunk)
      const float2 pair = deltas[step * kChannels + channel];
      const float dl = pair.x, du = pair.y;
      float B_t[kLaneStates], C_t[kLaneStates];
#pragma unroll
      for (int i = 0; i < kLaneStates; i += 4) {
        const float4 b4 = *reinterpret_cast<const float4*>(B_tile + step * kPadded + i);
        const float4 c4 = *reinterpret_cast<const float4*>(C_tile + step * kPadded + i);
        B_t[i] = b4.x, B_t[i + 1] = b4.y, B_t[i + 2] = b4.z, B_t[i + 3] = b4.w;
        C_t[i] = c4.x, C_t[i + 1] = c4.y, C_t[i + 2] = c4.z, C_t[i + 3] = c4.w;
      }
      float partial[2] = {0.0f, 0.0f};  // two sums, to halve the chain of dependent adds
#pragma unroll
      for (int i = 0; i < kLaneStates; ++i) {
        h[i] = decay(dl, A[i]) * h[i] + du * B_t[i];
        partial[i & 1] += h[i] * C_t[i];
      }
      y[step] = partial[0] + partial[1];
    }
    if (want_out) store_lane_sums<kLanes, kChannels>(y, group, channel, y_values);
    __syncthreads();  // y is complete, and every lane is done with this chunk's rows and values
    if (want_out) {
      // out = (y + D u) ⊙ silu(z), one coalesced store per staged value.
      float* to = out + (b * s.length + t0 + own_step) * s.channels + own_e;
#pragma unroll
      for (int j = 0; j < kOwned; ++j) {
        const int i = threadIdx.x + j * kThreads;
        if (kLanes * j < inside) to[j * stride] = (y_values[i] + own_skip * current.u[j]) * current.z[j];
      }
    }
  }
  if (final_state && valid && steps.end == s.length) {
#pragma unroll
    for (int i = 0; i < kLaneStates; ++i) {
      const int n = first_state + i;
      if (n < s.state) final_state[(b * s.channels + e) * s.state + n] = h[i];
    }
  }
}

// Adds v (16 values: 8 of dB then 8 of dC, for the thread's 8 states at one step) over the channels of
// the warp, by recursive halving: at each level a lane keeps half of its values, sends the other half to
// the lane of the partner channel and adds what it receives; then stores the results in the warp's own
// sums [2 (dB, dC)][kSub][padded] in shared memory (exactly one lane of the warp holds each entry).
template <int kLanes>
__device__ __forceinline__ void add_over_channels(float (&v)[2 * kStates], const ScanShape& s, int group, int step,
                                                  float* sums) {
  constexpr int kPadded = kLanes * kStates;
  const int lane = threadIdx.x & 31;
  int base = 0, levels = 0;
  // Fully unrolled (the level is a constant in each copy, so every index into v is static).
#pragma unroll
  for (int level = 0; level < 4; ++level) {
    const int offset = kLanes << level;
    if (offset < 32) {
      const int half = kStates >> level;  // values kept: 8, 4, 2, 1 of 16, 8, 4, 2
      const bool upper = (lane & offset) != 0;
#pragma unroll
      for (int j = 0; j < kStates; ++j) {
        if (j < half) {
          const float send = upper ? v[j] : v[j + half];
          const float keep = upper ? v[j + half] : v[j];
          v[j] = keep + __shfl_xor_sync(cuda::kFullMask, send, offset);
        }
      }
      if (upper) base += half;
      ++levels;
    }
  }
  const int held = (2 * kStates) >> levels;
  bool writer = true;
  if ((kLanes << levels) < 32) {
    // P = 1: four levels left pairs of lanes 16 apart holding the same values over different channels.
    v[0] += __shfl_xor_sync(cuda::kFullMask, v[0], 16);
    writer = (lane & 16) == 0;
  }
  if (!writer) return;
#pragma unroll
  for (int j = 0; j < 2 * kStates; ++j) {
    if (j < held) {
      const int index = base + j;
      const int which = index / kStates, n = (group * kStates) + index % kStates;
      if (n < s.state) sums[(which * kSub + step) * kPadded + n] = v[j];
    }
  }
}

// Where the backward kernel stores its parts of the sums across blocks, before reduce_parts_kernel adds them.
struct ScanGradParts {
  float* rows;      // (2 (dB, dC), X channel blocks (of one launch), B, L, N)
  float* A;         // (B, pieces, E, N)
  float* D;         // (B, pieces, E) or null
  float* bias;      // (B, pieces, E) or null
};

// The first pass over a cut sequence, backward: d(state) entering piece blockIdx.z + 1 from its end
// (walking its steps in reverse from a zero d(state) after it), and the product of its decays. The
// recurrence dh_{t−1} = a_t (dh_t + C_t dy_t) needs only Δ, z and dout, not the states; the same float
// operations as the backward kernel's reverse steps. The first piece, which no piece precedes, is left out.
__global__ void __launch_bounds__(kThreads)
    selective_scan_piece_carries_kernel(SelectiveScanPointers p, const float* grad_out, ScanShape s,
                                        PieceCarries carries) {
  const Position at = locate(s);
  const ChannelConstants constants = channel_constants(p, s, at);
  const int64_t piece = blockIdx.z + 1;
  const PieceSteps steps = piece_steps(s, piece);
  const int64_t row0 = at.b * s.length;
  float dh[kStates], product[kStates];
  start_carry(dh, product);
  const int64_t last_sub = steps.begin + (steps.end - 1 - steps.begin) / kSub * kSub;
  for (int64_t t0 = last_sub; t0 >= steps.begin; t0 -= kSub) {
    float unused_u[kSub], delta[kSub], z[kSub];
    load_steps<kSub>(p, s, at, t0, unused_u, delta, z);
    float dout[kSub];
#pragma unroll
    for (int k = 0; k < kSub; ++k) {
      dout[k] = at.valid && t0 + k < steps.end ? grad_out[(row0 + t0 + k) * s.channels + at.e] : 0.0f;
    }
#pragma unroll
    for (int k = kSub - 1; k >= 0; --k) {
      const int64_t t = t0 + k;
      if (t >= steps.end) continue;
      const float v = delta[k] + constants.bias;
      const float d = !at.valid ? 0.0f : p.delta_softplus ? softplus(v) : v;
      const float delta_log2e = d * kLog2e;
      const float dy = p.z ? dout[k] * (z[k] * cuda::stable_sigmoid(z[k])) : dout[k];
#pragma unroll
      for (int i = 0; i < kStates; ++i) {
        const int n = at.first_state + i;
        const float C_n = n < s.state ? __ldg(p.C + (row0 + t) * s.state + n) : 0.0f;
        const float a = decay(delta_log2e, constants.A[i]);
        dh[i] = a * (dh[i] + dy * C_n);
        product[i] *= a;
      }
    }
  }
  store_carry(carries, s, at, piece, dh, product);
}

// The backward kernel's shared memory, carved from its dynamic array (backward_shared_bytes: the size).
template <int kLanes>
struct BackwardShared {
  static constexpr int kPadded = kLanes * kStates, kPerBlock = kThreads / kLanes;
  float* saved;   // [kSubsPerSegment][kStates][kThreads] the states before the segment's sub-chunks
  float* rows;    // [2 (B, C)][kSub][padded] the sub-chunk's rows of B and C
  float* sums;    // [kWarps][2 (dB, dC)][kSub][padded] each warp's sums over its channels
  float* deltas;  // [kSegment][channels_per_block] the segment's Δ
  float* slopes;  // [kSub][channels_per_block] the sub-chunk's σ(delta + bias) (softplus' slope)
  float* gates;   // [kSub][channels_per_block] the sub-chunk's σ(z)

  __device__ __forceinline__ BackwardShared(float* shared, const ScanShape& s)
      : saved(shared),
        rows(saved + kSubsPerSegment * kStates * kThreads),
        sums(rows + 2 * kSub * kPadded),
        deltas(sums + kWarps * 2 * kSub * kPadded),
        slopes(deltas + kSegment * kPerBlock),
        gates(slopes + kSub * kPerBlock) {}
};

// One thread of the backward kernel over its block's piece: its place and channel constants, the block's
// shared memory, and its running values: d(state) carried back in time and its channel's sums of dA, dD
// and d(delta_bias). The kernel below drives it segment by segment and sub-chunk by sub-chunk, with the
// block's barriers between the steps.
template <int kLanes>
struct BackwardThread {
  static constexpr int kPadded = kLanes * kStates, kPerBlock = kThreads / kLanes;
  const SelectiveScanPointers& p;
  const ScanShape& s;
  const Position at;
  const int channel;    // within the block
  const int64_t row0;   // token index of t = 0
  const ChannelConstants constants;
  const BackwardShared<kLanes> shared;
  float dh[kStates], dA[kStates];
  float dD = 0.0f, dbias = 0.0f;
  // B's rows are N = padded floats, 16-byte aligned (N a power of two from 8): whole 16-byte loads.
  const bool whole_rows;

  // The channel e of the block's c-th channel.
  __device__ __forceinline__ int64_t block_channel(int c) const {
    return (s.first_block + static_cast<int64_t>(blockIdx.x)) * kPerBlock + c;
  }

  // Starts from the d(state) the pieces after this one leave (carries: from the first pass).
  __device__ __forceinline__ BackwardThread(const SelectiveScanPointers& p, const ScanShape& s, float* shared_memory,
                                            const PieceCarries& carries, int64_t piece)
      : p(p),
        s(s),
        at(locate_fixed<kLanes>(s)),
        channel(threadIdx.x / kLanes),
        row0(at.b * s.length),
        constants(channel_constants(p, s, at)),
        shared(shared_memory, s),
        whole_rows(s.state == kPadded && reinterpret_cast<uintptr_t>(p.B) % 16 == 0) {
    carry_through(carries, s, at, s.pieces - 1, piece, -1, dh);
#pragma unroll
    for (int i = 0; i < kStates; ++i) dA[i] = 0.0f;
  }

  // The segment's Δ for steps [s0, s1), each computed once by one thread; 0 past L or E.
  __device__ __forceinline__ void stage_deltas(int64_t s0, int64_t s1) const {
    constexpr int per_block = kPerBlock;
    for (int i = threadIdx.x; i < kSegment * per_block; i += kThreads) {
      const int64_t t = s0 + i / per_block, e = block_channel(i % per_block);
      const bool inside = t < s1 && e < s.channels;
      const float v = inside ? biased_delta(p, (row0 + t) * s.channels + e, e) : 0.0f;
      shared.deltas[i] = !inside ? 0.0f : p.delta_softplus ? softplus(v) : v;
    }
  }

  // Pass 1: from the segment's checkpoint through its `subs` sub-chunks, saving the state before each (the
  // last sub-chunk's states are recomputed by pass 2 anyway).
  __device__ __forceinline__ void save_states(const float* checkpoints, int64_t segment, int subs) const {
    const int64_t s0 = segment * kSegment;
    const float* checkpoint =
        checkpoints + ((at.b * s.segments + segment) * s.channels + at.e) * kPadded + at.first_state;
    float h[kStates];
#pragma unroll
    for (int i = 0; i < kStates; ++i) h[i] = at.valid ? checkpoint[i] : 0.0f;
    for (int sub = 0; sub < subs; ++sub) {
#pragma unroll
      for (int i = 0; i < kStates; ++i) shared.saved[(sub * kStates + i) * kThreads + threadIdx.x] = h[i];
      if (sub + 1 == subs) break;
      float u[kSub], unused_delta[kSub], unused_z[kSub];  // (loads left unused are dropped by the compiler)
      load_steps<kSub>(p, s, at, s0 + sub * kSub, u, unused_delta, unused_z);
#pragma unroll
      for (int k = 0; k < kSub; ++k) {
        const int64_t t = s0 + sub * kSub + k;  // < s1: only whole sub-chunks come here
        const float delta = shared.deltas[(sub * kSub + k) * kPerBlock + channel];
        const float delta_u = delta * u[k], delta_log2e = delta * kLog2e;
        float B_t[kStates];
        if (whole_rows) {  // the lane's 8 values of the row as two 16-byte loads
          const float4* row = reinterpret_cast<const float4*>(p.B + (row0 + t) * kPadded + at.first_state);
          const float4 low = __ldg(row), high = __ldg(row + 1);
          B_t[0] = low.x, B_t[1] = low.y, B_t[2] = low.z, B_t[3] = low.w;
          B_t[4] = high.x, B_t[5] = high.y, B_t[6] = high.z, B_t[7] = high.w;
        } else {
#pragma unroll
          for (int i = 0; i < kStates; ++i) {
            const int n = at.first_state + i;
            B_t[i] = n < s.state ? __ldg(p.B + (row0 + t) * s.state + n) : 0.0f;
          }
        }
#pragma unroll
        for (int i = 0; i < kStates; ++i) h[i] = decay(delta_log2e, constants.A[i]) * h[i] + delta_u * B_t[i];
      }
    }
  }

  // The sub-chunk's rows of B and C, its zeroed sums, and its slopes σ(delta + bias) and σ(z), each computed once
  // by one thread; `steps` of its kSub steps are inside the sequence.
  __device__ __forceinline__ void stage_sub_chunk(int64_t t0, int steps) const {
    constexpr int per_block = kPerBlock;
    for (int i = threadIdx.x; i < 2 * kSub * kPadded; i += kThreads) {
      const int which = i / (kSub * kPadded), k = (i / kPadded) % kSub, n = i % kPadded;
      shared.rows[i] = k < steps && n < s.state ? (which ? p.C : p.B)[(row0 + t0 + k) * s.state + n] : 0.0f;
    }
    for (int i = threadIdx.x; i < kWarps * 2 * kSub * kPadded; i += kThreads) shared.sums[i] = 0.0f;
    for (int i = threadIdx.x; i < kSub * per_block; i += kThreads) {
      const int k = i / per_block;
      const int64_t e = block_channel(i % per_block);
      const int64_t index = (row0 + t0 + k) * s.channels + e;
      const bool inside = k < steps && e < s.channels;
      if (p.delta_softplus) {
        shared.slopes[i] = inside ? cuda::stable_sigmoid(biased_delta(p, index, e)) : 0.0f;
      }
      if (p.z) shared.gates[i] = inside ? cuda::stable_sigmoid(p.z[index]) : 0.0f;
    }
  }

  // The states h_t after each of the sub-chunk's steps, recomputed from the one saved before it (h_start).
  __device__ __forceinline__ void recompute_states(int sub, int steps, const float (&u)[kSub],
                                                   float (&h_start)[kStates], float (&states)[kSub][kStates]) const {
    float h[kStates];
#pragma unroll
    for (int i = 0; i < kStates; ++i) h_start[i] = h[i] = shared.saved[(sub * kStates + i) * kThreads + threadIdx.x];
#pragma unroll
    for (int k = 0; k < kSub; ++k) {
      if (k < steps) {
        const float delta = shared.deltas[(sub * kSub + k) * kPerBlock + channel];
        const float delta_u = delta * u[k], delta_log2e = delta * kLog2e;
#pragma unroll
        for (int i = 0; i < kStates; ++i) {
          h[i] = decay(delta_log2e, constants.A[i]) * h[i] + delta_u * shared.rows[k * kPadded + at.first_state + i];
          states[k][i] = h[i];
        }
      }
    }
  }

  // Step t0 + k, the k-th of sub-chunk `sub`, in reverse, from the states before and after it (the CPU's
  // equations, selective_scan.cpp):
  //   dy = dout ⊙ silu(z),  dz = dout ⊙ y ⊙ silu'(z),  dh_t = C_t dy + a_{t+1} dh_{t+1},
  //   g = dh_t h_{t−1} a_t,  dA += Δ g,  dΔ = (Σ_n g A + u Σ_n dh_t B_t) σ(v),  du = D dy + Δ Σ_n dh_t B_t
  // du, d(delta) and dz are stored; the dB and dC terms are added over the warp's channels into its sums.
  __device__ __forceinline__ void reverse_step(const SelectiveScanGradPointers& grads, int sub, int k, int64_t t0,
                                               float u, float z, float dout, const float (&before)[kStates],
                                               const float (&now)[kStates]) {
    const int64_t index = (row0 + t0 + k) * s.channels + at.e;
    const float* B_t = shared.rows + k * kPadded + at.first_state;
    const float* C_t = shared.rows + (kSub + k) * kPadded + at.first_state;
    const int value = k * kPerBlock + channel;  // in slopes and gates
    const float delta = shared.deltas[(sub * kSub + k) * kPerBlock + channel];
    const float slope = p.delta_softplus ? shared.slopes[value] : 1.0f;
    const float delta_u = delta * u, delta_log2e = delta * kLog2e;

    float dy = dout, dz = 0.0f;
    if (p.z) {
      float y = 0.0f;
#pragma unroll
      for (int i = 0; i < kStates; ++i) y += now[i] * C_t[i];
      y = lanes_sum(y, kLanes) + constants.skip * u;
      const float sigma = shared.gates[value];
      dz = dy * y * sigma * (1.0f + z * (1.0f - sigma));
      dy *= z * sigma;
    }
    dD += dy * u;

    float sum_gA = 0.0f, sum_dhB = 0.0f, channel_terms[2 * kStates];
#pragma unroll
    for (int i = 0; i < kStates; ++i) {
      const float a = decay(delta_log2e, constants.A[i]);
      const float dh_n = dh[i] + dy * C_t[i];
      const float g = dh_n * before[i] * a;
      sum_gA += g * constants.A[i];
      dA[i] += g * delta;
      sum_dhB += dh_n * B_t[i];
      channel_terms[i] = dh_n * delta_u;         // dB_t[n] term
      channel_terms[kStates + i] = dy * now[i];  // dC_t[n] term
      dh[i] = a * dh_n;
    }
    sum_gA = lanes_sum(sum_gA, kLanes);
    sum_dhB = lanes_sum(sum_dhB, kLanes);
    if (at.group == 0 && at.valid) {
      const float d_delta = (sum_gA + u * sum_dhB) * slope;
      grads.u[index] = dy * constants.skip + delta * sum_dhB;
      grads.delta[index] = d_delta;
      if (grads.z) grads.z[index] = dz;
      dbias += d_delta;
    }
    add_over_channels<kLanes>(channel_terms, s, at.group, k, shared.sums + (threadIdx.x / 32) * 2 * kSub * kPadded);
  }

  // Pass 2 over one staged sub-chunk (starting at t0, `steps` steps): its states recomputed into registers, then
  // its steps in reverse.
  __device__ __forceinline__ void reverse_sub_chunk(const SelectiveScanGradPointers& grads, const float* grad_out,
                                                    int sub, int64_t t0, int steps) {
    float u[kSub], unused_delta[kSub], z[kSub], dout[kSub];
    load_steps<kSub>(p, s, at, t0, u, unused_delta, z);
#pragma unroll
    for (int k = 0; k < kSub; ++k) {
      const bool inside = at.valid && k < steps;
      dout[k] = inside ? grad_out[(row0 + t0 + k) * s.channels + at.e] : 0.0f;
    }
    float h_start[kStates], states[kSub][kStates];
    recompute_states(sub, steps, u, h_start, states);
#pragma unroll
    for (int k = kSub - 1; k >= 0; --k) {
      if (k >= steps) continue;
      reverse_step(grads, sub, k, t0, u[k], z[k], dout[k], k > 0 ? states[k - 1] : h_start, states[k]);
    }
  }

  // This block's part of dB and dC for the sub-chunk's steps: the warps' sums added in warp order.
  __device__ __forceinline__ void store_row_parts(const ScanGradParts& parts, int64_t t0, int steps) const {
    const int64_t blocks = gridDim.x, rows_size = s.batch * s.length * s.state;
    for (int i = threadIdx.x; i < 2 * kSub * kPadded; i += kThreads) {
      const int which = i / (kSub * kPadded), k = (i / kPadded) % kSub, n = i % kPadded;
      if (k < steps && n < s.state) {
        float total = 0.0f;
        for (int w = 0; w < kWarps; ++w) total += shared.sums[w * 2 * kSub * kPadded + i];
        parts.rows[(which * blocks + blockIdx.x) * rows_size + (row0 + t0 + k) * s.state + n] = total;
      }
    }
  }

  // This batch row's and piece's part of dA, dD and d(delta_bias).
  __device__ __forceinline__ void store_parts(const ScanGradParts& parts, int64_t piece) const {
    if (!at.valid) return;
    const int64_t part = (at.b * s.pieces + piece) * s.channels + at.e;  // (b, piece, e)
#pragma unroll
    for (int i = 0; i < kStates; ++i) {
      const int n = at.first_state + i;
      if (n < s.state) parts.A[part * s.state + n] = dA[i];
    }
    if (at.group == 0) {
      if (parts.D) parts.D[part] = dD;
      if (parts.bias) parts.bias[part] = dbias;
    }
  }
};

// The backward over the block's piece (blockIdx.z), from the d(state) its successors leave (carries: from the
// first pass). Segments are visited in reverse; within one, pass 1 saves the state before each sub-chunk, and
// pass 2 visits the sub-chunks in reverse.
template <int kLanes>
__global__ void __launch_bounds__(kThreads)
    selective_scan_backward_kernel(SelectiveScanPointers p, SelectiveScanGradPointers grads, ScanGradParts parts,
                                   PieceCarries carries, const float* grad_out, ScanShape s,
                                   const float* checkpoints) {
  extern __shared__ __align__(16) float shared[];
  const int64_t piece = blockIdx.z;
  BackwardThread<kLanes> thread(p, s, shared, carries, piece);
  const PieceSteps steps = piece_steps(s, piece);
  const int64_t first_segment = steps.begin / kSegment, last_segment = (steps.end - 1) / kSegment;
  for (int64_t segment = last_segment; segment >= first_segment; --segment) {
    const int64_t s0 = segment * kSegment, s1 = min(s.length, s0 + kSegment);
    // (Every reader of the previous segment's Δ has passed the barrier after that segment's last reverse steps.)
    thread.stage_deltas(s0, s1);
    __syncthreads();
    const int subs = static_cast<int>((s1 - s0 + kSub - 1) / kSub);
    thread.save_states(checkpoints, segment, subs);
    for (int sub = subs - 1; sub >= 0; --sub) {
      const int64_t t0 = s0 + sub * kSub;
      const int sub_steps = static_cast<int>(min(static_cast<int64_t>(kSub), s1 - t0));
      __syncthreads();  // the previous sub-chunk's sums are flushed and its rows read
      thread.stage_sub_chunk(t0, sub_steps);
      __syncthreads();
      thread.reverse_sub_chunk(grads, grad_out, sub, t0, sub_steps);
      __syncthreads();
      thread.store_row_parts(parts, t0, sub_steps);
    }
  }
  thread.store_parts(parts, piece);
}

// Adds the parts in a fixed order: dB, dC over the X channel blocks; dA, dD, d(delta_bias) over the
// `batch` = B · pieces batch rows and pieces. One thread per output value, sums in double; outputs
// [first, last) of the 2 · rows_size of dB, dC, then E · N of dA, then E of dD, E of d(delta_bias).
// With grads.A_log, A's sum is multiplied by A before it is added (__fmul_rn: rounded apart from the add, the
// same floats as a separate multiply and add).
__global__ void reduce_parts_kernel(ScanGradParts parts, SelectiveScanGradPointers grads, const float* A,
                                    int64_t blocks, int64_t batch, int64_t rows_size, int64_t E, int64_t N,
                                    int64_t first, int64_t last) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = first + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < last; i += stride) {
    double sum = 0;
    if (i < 2 * rows_size) {
      const int64_t which = i / rows_size, j = i % rows_size;
      for (int64_t x = 0; x < blocks; ++x) sum += parts.rows[(which * blocks + x) * rows_size + j];
      (which ? grads.C : grads.B)[j] += static_cast<float>(sum);
    } else if (i < 2 * rows_size + E * N) {
      const int64_t j = i - 2 * rows_size;  // e·N + n
      for (int64_t b = 0; b < batch; ++b) sum += parts.A[b * E * N + j];
      grads.A[j] += grads.A_log ? __fmul_rn(static_cast<float>(sum), A[j]) : static_cast<float>(sum);
    } else {
      const int64_t j = i - 2 * rows_size - E * N;  // D for j < E, then delta_bias
      const bool skip = j < E;
      const float* part = skip ? parts.D : parts.bias;
      float* out = skip ? grads.D : grads.delta_bias;
      if (!part) continue;
      const int64_t e = skip ? j : j - E;
      for (int64_t b = 0; b < batch; ++b) sum += part[b * E + e];
      out[e] += static_cast<float>(sum);
    }
  }
}

template <int kLanes, int kLaneStates>
size_t forward_shared_bytes() {
  using Layout = ForwardLayout<kLanes, kLaneStates>;
  return sizeof(float) * (2 * Layout::kTile + 3 * Layout::kPerChunk);
}

size_t backward_shared_bytes(const ScanShape& s) {
  return sizeof(float) * (kSubsPerSegment * kStates * kThreads + (2 + 2 * kWarps) * kSub * s.padded +
                          (kSegment + 2 * kSub) * s.channels_per_block);
}

// A device buffer for PieceCarries of s (none with one piece), and the carries in it.
struct CarriesBuffer {
  cuda::DeviceBuffer buffer;
  PieceCarries carries;
  explicit CarriesBuffer(const ScanShape& s)
      : buffer(s.pieces > 1 ? static_cast<size_t>(2 * s.batch * s.pieces * s.channels * s.padded) * sizeof(float) : 0) {
    if (s.pieces > 1) {
      carries.local = buffer.as<float>();
      carries.decay = carries.local + s.batch * s.pieces * s.channels * s.padded;
    }
  }
};

// The grid of a first pass: the pieces but one (which: the last, forward; the first, backward).
dim3 first_pass_grid(const ScanShape& s) {
  dim3 grid = scan_grid(s);
  grid.z = static_cast<unsigned>(s.pieces - 1);
  return grid;
}

// Launches the forward kernel compiled for kLanes lanes of kLaneStates states a channel, over the grid of
// blocks of 128 / kLanes channels.
template <int kLanes, int kLaneStates>
void launch_forward_kernel(const SelectiveScanPointers& in, const ScanShape& s, const CarriesBuffer& carries,
                           float* out, float* final_state, float* checkpoints, cudaStream_t stream) {
  const size_t shared_bytes = forward_shared_bytes<kLanes, kLaneStates>();
  require_shared_memory(shared_bytes, s, "selective_scan_forward_kernel");
  const auto kernel = selective_scan_forward_kernel<kLanes, kLaneStates>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes)));
  ScanShape layout = s;
  layout.lanes = kLanes;
  layout.channels_per_block = kThreads / kLanes;
  kernel<<<scan_grid(layout), kThreads, shared_bytes, stream>>>(in, s, carries.carries, out, final_state, checkpoints);
  cuda::check_launch("selective_scan_forward_kernel");
}

template <int kValue>
using Int = std::integral_constant<int, kValue>;

// The forward keeps 4 states a lane (twice the lanes, and so twice the warps, of the other kernels' 8) where a
// channel's padded states fit 32 lanes of 4, N <= 128, and 8 above. On an H200 at B = 8, L = 2048, E = 2048, 4 took
// 0.369 ms at N = 16 and 0.983 ms at N = 64, 8 took 0.384 and 1.325 ms, and 2 took 0.434 and 1.360 ms.
constexpr int kForwardLaneStates = 4;

// Launches the forward (out, final_state and checkpoints each optional), after its first pass when the
// sequence is cut into pieces.
void launch_forward(const SelectiveScanPointers& in, const ScanShape& s, float* out, float* final_state,
                    float* checkpoints, cudaStream_t stream) {
  const CarriesBuffer carries(s);
  if (s.pieces > 1) {
    selective_scan_piece_states_kernel<<<first_pass_grid(s), kThreads, 0, stream>>>(in, s, carries.carries);
    cuda::check_launch("selective_scan_piece_states_kernel");
  }
  const auto launch = [&](auto lanes, auto lane_states) {
    launch_forward_kernel<decltype(lanes)::value, decltype(lane_states)::value>(in, s, carries, out, final_state,
                                                                              checkpoints, stream);
  };
  if (s.padded <= kForwardLaneStates * 32) {
    switch (s.padded / kForwardLaneStates) {
      case 2: return launch(Int<2>{}, Int<kForwardLaneStates>{});
      case 4: return launch(Int<4>{}, Int<kForwardLaneStates>{});
      case 8: return launch(Int<8>{}, Int<kForwardLaneStates>{});
      case 16: return launch(Int<16>{}, Int<kForwardLaneStates>{});
      default: return launch(Int<32>{}, Int<kForwardLaneStates>{});
    }
  }
  return launch(Int<32>{}, Int<kStates>{});  // N from 129 to 256
}

}  // namespace

void selective_scan_forward_cuda(const SelectiveScanPointers& in, float* out, float* final_state, int64_t B, int64_t L,
                                 int64_t E, int64_t N, void* stream) {
  const ScanShape s = scan_shape(B, L, E, N, in.pieces);
  if (B <= 0 || E <= 0) return;
  if (L <= 0) return;  // no steps: out is empty and the final state stays 0 (zero-filled by the caller)
  launch_forward(in, s, out, final_state, nullptr, cuda::as_stream(stream));
}

void selective_scan_backward_cuda(const float* grad_out, const SelectiveScanPointers& in,
                                  const SelectiveScanGradPointers& grads, int64_t B, int64_t L, int64_t E, int64_t N,
                                  void* stream) {
  const ScanShape s = scan_shape(B, L, E, N, in.pieces);
  if (B <= 0 || L <= 0 || E <= 0) return;
  cudaStream_t on_stream = cuda::as_stream(stream);
  // The checkpoints: the state at every 64th step, (B, segments, E, padded).
  cuda::DeviceBuffer checkpoints(static_cast<size_t>(B * s.segments * E * s.padded) * sizeof(float));
  launch_forward(in, s, nullptr, nullptr, checkpoints.as<float>(), on_stream);
  const size_t shared_bytes = backward_shared_bytes(s);
  require_shared_memory(shared_bytes, s, "selective_scan_backward_kernel");
  // The backward kernel compiled for the shape's lanes per channel.
  const auto backward_kernel = [&]() {
    switch (s.lanes) {
      case 1: return selective_scan_backward_kernel<1>;
      case 2: return selective_scan_backward_kernel<2>;
      case 4: return selective_scan_backward_kernel<4>;
      case 8: return selective_scan_backward_kernel<8>;
      case 16: return selective_scan_backward_kernel<16>;
      default: return selective_scan_backward_kernel<32>;
    }
  }();
  CUDA_CHECK(cudaFuncSetAttribute(backward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(shared_bytes)));
  // The d(state) each piece hands back to the one before it.
  const CarriesBuffer carries(s);
  if (s.pieces > 1) {
    selective_scan_piece_carries_kernel<<<first_pass_grid(s), kThreads, 0, on_stream>>>(in, grad_out, s,
                                                                                        carries.carries);
    cuda::check_launch("selective_scan_piece_carries_kernel");
  }
  // The parts of the sums across blocks (see ScanGradParts); every entry is stored before it is read. dB and
  // dC take 2 · B · L · N floats of parts per channel block: the kernel runs over a range of channel blocks
  // at a time, whose parts fit kRowPartsBytes (all of them at N = 256, E = 4096, B = 8, L = 2048 would take
  // 34 GB), and each range's parts are added into dB and dC before the next range reuses them.
  const int64_t blocks = scan_grid(s).x, rows_size = B * L * N, row_pieces = B * s.pieces;
  const int64_t block_bytes = 2 * rows_size * static_cast<int64_t>(sizeof(float));
  const int64_t per_launch = in.part_blocks > 0 ? std::min(in.part_blocks, blocks)
                                                : std::clamp<int64_t>(kRowPartsBytes / block_bytes, 1, blocks);
  cuda::DeviceBuffer row_parts(static_cast<size_t>(per_launch * block_bytes));
  cuda::DeviceBuffer A_parts(static_cast<size_t>(row_pieces * E * N) * sizeof(float));
  cuda::DeviceBuffer D_parts(grads.D ? static_cast<size_t>(row_pieces * E) * sizeof(float) : 0);
  cuda::DeviceBuffer bias_parts(grads.delta_bias ? static_cast<size_t>(row_pieces * E) * sizeof(float) : 0);
  const ScanGradParts parts{row_parts.as<float>(), A_parts.as<float>(), grads.D ? D_parts.as<float>() : nullptr,
                            grads.delta_bias ? bias_parts.as<float>() : nullptr};
  for (int64_t first = 0; first < blocks; first += per_launch) {
    ScanShape range = s;
    range.first_block = first;
    dim3 grid = scan_grid(s);
    grid.x = static_cast<unsigned>(std::min(per_launch, blocks - first));
    backward_kernel<<<grid, kThreads, shared_bytes, on_stream>>>(
        in, grads, parts, carries.carries, grad_out, range, checkpoints.as<float>());
    cuda::check_launch("selective_scan_backward_kernel");
    reduce_parts_kernel<<<cuda::blocks_for(2 * rows_size, 256, 65536), 256, 0, on_stream>>>(
        parts, grads, in.A, grid.x, row_pieces, rows_size, E, N, 0, 2 * rows_size);
    cuda::check_launch("reduce_parts_kernel");
  }
  const int64_t outputs = 2 * rows_size + E * N + 2 * E;
  reduce_parts_kernel<<<cuda::blocks_for(outputs - 2 * rows_size, 256, 65536), 256, 0, on_stream>>>(
      parts, grads, in.A, blocks, row_pieces, rows_size, E, N, 2 * rows_size, outputs);
  cuda::check_launch("reduce_parts_kernel");
}

}  // namespace mr1
