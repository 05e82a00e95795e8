// fc2(gelu(fc1(x))): the dense MLP block and each MoE expert. Shape letters: T tokens, D dim, F expert_dim.
#pragma once

#include <string>

#include "blocks/parameters.h"

namespace mr1 {

class Random;

// What the forward keeps for the backward: fc1's output and its gelu (so backward need not recompute erf).
struct FeedForwardSaved {
  Tensor hidden_pre;  // (T, F) fc1(x)
  Tensor hidden;      // (T, F) gelu(fc1(x))
};

class FeedForward {
 public:
  // Parameters prefix + "fc1.weight" (F, D), "fc1.bias" (F), "fc2.weight" (D, F), "fc2.bias" (D).
  FeedForward(ParameterStore& parameters, const std::string& prefix, int64_t dim, int64_t hidden);

  // x (T, D) → (T, D); `saved` receives what backward needs when given.
  Tensor forward(const Tensor& x, FeedForwardSaved* saved) const;
  // dL/dy (T, D) → dL/dx; adds the parameters' gradients.
  Tensor backward(const Tensor& grad_y, const Tensor& x, const FeedForwardSaved& saved);
  void initialize(Random& random);

  // The parameters of fc1 and fc2, for the MoE layer's grouped expert GEMMs.
  Parameter& fc1_weight() { return fc1_weight_; }
  Parameter& fc1_bias() { return fc1_bias_; }
  Parameter& fc2_weight() { return fc2_weight_; }
  Parameter& fc2_bias() { return fc2_bias_; }

 private:
  int64_t dim_, hidden_;
  Parameter& fc1_weight_;
  Parameter& fc1_bias_;
  Parameter& fc2_weight_;
  Parameter& fc2_bias_;
};

}  // namespace mr1
