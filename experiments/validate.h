// mamba-r1 validate [FILE.toml]: every op, and the whole model forward and backward, run on the CPU
// and on CUDA from the same random inputs, over a table of named shapes; each result's normalised error
// and largest absolute difference against a stated tolerance. Also the comparison the [cuda] tests use.
#pragma once

#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace mr1 {

// The error of `actual` against `reference`:
//   nmse = Σ (a − r)² / Σ r²   (Σ (a − r)² when the reference is all zero),   max_abs = max |a − r|.
// A NaN or inf in either, where the other is not the same, makes both infinite.
struct Comparison {
  double nmse = 0;
  double max_abs = 0;
  double max_reference = 0;  // max |r|, the scale of max_abs
};
Comparison compare_values(const std::vector<double>& actual, const std::vector<double>& reference);
Comparison compare_tensors(const Tensor& actual, const Tensor& reference);  // any devices; same element count

// A result passes when nmse <= nmse and max_abs <= max_abs · max(1, max |reference|).
struct Tolerance {
  double nmse;
  double max_abs;  // relative to the reference's scale (at least 1)
  double absolute_limit(const Comparison& comparison) const;
  bool accepts(const Comparison& comparison) const;
};

// The check behind backend "auto": a small model (mamba, moe and mlp blocks, LM head) forward and backward
// on the CPU and on CUDA. Empty when every output and gradient agrees within the model tolerance of
// `mamba-r1 validate`; otherwise what differed, or the error CUDA raised. Computed once per process.
// Needs a usable GPU.
std::string cuda_self_check();

}  // namespace mr1
