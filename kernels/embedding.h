// Token embedding lookup and its scatter-add backward. Shape letters: B batch, L length, V vocab, D features.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/tensor.h"

namespace mr1 {

// out[b, l] = table[ids[b·L + l]].  ids: B·L values in [0, V) (checked, naming the bad id), table (V, D).
Tensor embedding_forward(const std::vector<int32_t>& ids, int64_t batch, int64_t length, const Tensor& table);
// dL/dtable (V, D): row v gets Σ of grad_out[b, l] over the positions whose id is v.
Tensor embedding_backward(const Tensor& grad_out, const std::vector<int32_t>& ids, int64_t vocab_size);

}  // namespace mr1
