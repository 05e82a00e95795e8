// The two-layer GELU feed-forward network.
#include "blocks/feed_forward.h"

#include <cmath>

#include "blocks/random.h"
#include "kernels/activation.h"
#include "kernels/elementwise.h"
#include "kernels/linear.h"

namespace mr1 {

FeedForward::FeedForward(ParameterStore& parameters, const std::string& prefix, int64_t dim, int64_t hidden)
    : dim_(dim),
      hidden_(hidden),
      fc1_weight_(parameters.add(prefix + "fc1.weight", {hidden, dim}, true)),
      fc1_bias_(parameters.add(prefix + "fc1.bias", {hidden}, false)),
      fc2_weight_(parameters.add(prefix + "fc2.weight", {dim, hidden}, true)),
      fc2_bias_(parameters.add(prefix + "fc2.bias", {dim}, false)) {}

// y = fc2(gelu(x · fc1ᵀ + b1)) = gelu(x · fc1ᵀ + b1) · fc2ᵀ + b2
Tensor FeedForward::forward(const Tensor& x, FeedForwardSaved* saved) const {
  Tensor pre = linear_forward(x, fc1_weight_.value, &fc1_bias_.value);
  Tensor hidden = gelu_forward(pre);
  Tensor y = linear_forward(hidden, fc2_weight_.value, &fc2_bias_.value);
  if (saved) *saved = FeedForwardSaved{pre, hidden};
  return y;
}

Tensor FeedForward::backward(const Tensor& grad_y, const Tensor& x, const FeedForwardSaved& saved) {
  const Tensor grad_hidden =
      linear_backward_accumulate(grad_y, saved.hidden, fc2_weight_.value, fc2_weight_.grad, &fc2_bias_.grad);
  return linear_backward_accumulate(gelu_backward(grad_hidden, saved.hidden_pre, saved.hidden), x, fc1_weight_.value,
                                    fc1_weight_.grad, &fc1_bias_.grad);
}

// PyTorch's nn.Linear default: weight and bias U(±1/√fan_in).
void FeedForward::initialize(Random& random) {
  const double bound1 = 1.0 / std::sqrt(static_cast<double>(dim_));
  const double bound2 = 1.0 / std::sqrt(static_cast<double>(hidden_));
  random.fill_uniform(fc1_weight_.value, -bound1, bound1);
  random.fill_uniform(fc1_bias_.value, -bound1, bound1);
  random.fill_uniform(fc2_weight_.value, -bound2, bound2);
  random.fill_uniform(fc2_bias_.value, -bound2, bound2);
}

}  // namespace mr1
