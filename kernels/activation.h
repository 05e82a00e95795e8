// Activations and the softmax family, each forward beside its backward.
#pragma once

#include "kernels/tensor.h"

namespace mr1 {

// gelu(x) = x · Φ(x) = ½ x erfc(−x/√2)   (exact, not the tanh approximation; accurate in the negative tail)
Tensor gelu_forward(const Tensor& x);
// dL/dx = dy · (Φ(x) + x φ(x)),  φ(x) = exp(−x²/2)/√(2π); y = gelu_forward(x), as the forward kept it,
// gives Φ(x) = y / x without a second erfc.
Tensor gelu_backward(const Tensor& grad_y, const Tensor& x, const Tensor& y);

// silu(x) = x · σ(x)
Tensor silu_forward(const Tensor& x);
// dL/dx = dy · σ(x) (1 + x (1 − σ(x)))
Tensor silu_backward(const Tensor& grad_y, const Tensor& x);

// softmax over the last axis: y[i] = exp(x[i] − max x) / Σ_j exp(x[j] − max x)
Tensor softmax_forward(const Tensor& x);
// dL/dx[i] = y[i] (dy[i] − Σ_j dy[j] y[j])
Tensor softmax_backward(const Tensor& grad_y, const Tensor& y);

// logsumexp over the last axis: (..., F) gives (...)  (stable: max + log Σ exp(x − max))
Tensor logsumexp_forward(const Tensor& x);

// sigmoid(x) = 1 / (1 + exp(−x))
Tensor sigmoid_forward(const Tensor& x);

}  // namespace mr1
