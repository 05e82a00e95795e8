// CUDA launcher of the rotary positional encoding. Raw device pointers; plain C++ header.
// Shape letters: B batch, L length, D features (even), H = D/2 pairs.
#pragma once

#include <cstdint>

namespace mr1 {

// y = x · cos(sign·θ) + rotate_half(x) · sin(sign·θ), θ[l, j] = (start + l) · 10000^(−2·(j mod H)/D);
// sign +1 is rotary_forward, −1 rotary_backward.     x, y (B, L, D)
void rotate_cuda(const float* x, float* y, int64_t B, int64_t L, int64_t D, int64_t start_position, double sign,
                 void* stream);

}  // namespace mr1
