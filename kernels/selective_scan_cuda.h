// CUDA launchers of the selective scan, forward and backward (kernels/selective_scan.cu). Raw device
// pointers; plain C++ header. Shape letters: B batch, L length, E channels (d_inner), N state size.
#pragma once

#include <algorithm>
#include <cstdint>

namespace mr1 {

// The largest N the CUDA kernels support (each channel's state spread over up to 32 lanes of 8 states).
constexpr int64_t kSelectiveScanCudaMaxState = 256;

// Raw views of SelectiveScanInputs; absent optional inputs are null.
struct SelectiveScanPointers {
  const float* u = nullptr;           // (B, L, E)
  const float* delta = nullptr;       // (B, L, E)
  const float* A = nullptr;           // (E, N)
  const float* B = nullptr;           // (B, L, N)
  const float* C = nullptr;           // (B, L, N)
  const float* D = nullptr;           // (E) or null
  const float* z = nullptr;           // (B, L, E) or null
  const float* delta_bias = nullptr;  // (E) or null
  bool delta_softplus = true;
  int64_t pieces = 0;  // the pieces of the sequence scanned at once (selective_scan_cuda_pieces); 0 = choose
  // Backward: the channel blocks one launch covers (their dB, dC parts kept at once); 0 = as many as fit
  // 512 MiB of parts.
  int64_t part_blocks = 0;
};

// Lanes of a warp per channel: the smallest power of two P with 8·P >= N (8 states per lane).
inline int selective_scan_cuda_lanes(int64_t N) {
  int lanes = 1;
  while (lanes * 8 < N) lanes <<= 1;
  return lanes;
}

// The sequence cut into `count` pieces of `span` steps (the last may be shorter), each a whole number of
// 64-step segments. The kernels scan the pieces at once: a first pass runs each piece from a zero state,
// then each piece starts from the state its predecessors leave (h_end = Π a · h_start + h_local), so a
// short grid (few batch rows and channels: B · ⌈E / (128/P)⌉ blocks) still fills the device.
struct SelectiveScanPieces {
  int64_t count = 1;
  int64_t span = 0;
};

// One piece when the blocks of one pass already fill the `multiprocessors`; otherwise about two blocks per
// multiprocessor, at most one piece per segment. `requested` > 0 asks for that many (at most one per
// segment, and fewer when the segments do not divide evenly among them).
inline SelectiveScanPieces selective_scan_cuda_pieces(int64_t B, int64_t L, int64_t E, int64_t N, int multiprocessors,
                                                      int64_t requested = 0) {
  constexpr int64_t kSegment = 64;
  const int64_t segments = std::max<int64_t>(1, (L + kSegment - 1) / kSegment);
  const int64_t channels_per_block = 128 / selective_scan_cuda_lanes(N);
  const int64_t blocks = B * ((E + channels_per_block - 1) / channels_per_block);
  int64_t wanted = requested;
  if (wanted <= 0) {
    wanted = blocks <= 0 || blocks >= multiprocessors
                 ? 1
                 : (2 * static_cast<int64_t>(multiprocessors) + blocks - 1) / blocks;
  }
  wanted = std::max<int64_t>(1, std::min(wanted, segments));
  SelectiveScanPieces pieces;
  const int64_t segments_per_piece = (segments + wanted - 1) / wanted;
  pieces.span = segments_per_piece * kSegment;
  pieces.count = std::max<int64_t>(1, (segments + segments_per_piece - 1) / segments_per_piece);
  return pieces;
}

// out (B, L, E); final_state (B, E, N) or null.
void selective_scan_forward_cuda(const SelectiveScanPointers& in, float* out, float* final_state, int64_t B, int64_t L,
                                 int64_t E, int64_t N, void* stream);

// Gradients. dA, dB, dC, dD and d(delta_bias) are added to what the buffers hold (dB and dC start at zero;
// A, D and delta_bias may be parameters' gradients); u, delta and z are written whole.
// grad_D, grad_z and grad_delta_bias may be null exactly when D, z and delta_bias are.
struct SelectiveScanGradPointers {
  float* u = nullptr;           // (B, L, E)
  float* delta = nullptr;       // (B, L, E)
  float* A = nullptr;           // (E, N)
  float* B = nullptr;           // (B, L, N)
  float* C = nullptr;           // (B, L, N)
  float* D = nullptr;           // (E)
  float* z = nullptr;           // (B, L, E)
  float* delta_bias = nullptr;  // (E)
  bool A_log = false;  // A receives dL/dA ⊙ A, the gradient of A_log where A = −exp(A_log)
};
void selective_scan_backward_cuda(const float* grad_out, const SelectiveScanPointers& in,
                                  const SelectiveScanGradPointers& grads, int64_t B, int64_t L, int64_t E, int64_t N,
                                  void* stream);

}  // namespace mr1
