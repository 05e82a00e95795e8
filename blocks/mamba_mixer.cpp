// The Mamba mixer (mamba_ssm's Mamba v1, DESIGN.md §2): in_proj, causal conv1d, silu,
// x_proj, dt_proj, selective scan with D skip and silu(z) gate, out_proj.
// Shape letters: B batch, L length, D dim, E d_inner, N d_state, R dt_rank, K d_conv.
#include <cmath>

#include "blocks/mamba_mixer.h"
#include "blocks/random.h"
#include "kernels/activation.h"
#include "kernels/conv1d.h"
#include "kernels/elementwise.h"
#include "kernels/linear.h"
#include "kernels/selective_scan.h"
#include "kernels/small_ops.h"

namespace mr1 {

namespace {

struct MambaSaved : SavedActivations {
  Tensor u;      // (B, L, D)
  Tensor x;      // (B, L, E)  conv input
  Tensor z;      // (B, L, E)  gate
  Tensor xc;     // (B, L, E)  conv output
  Tensor xa;     // (B, L, E)  silu(xc)
  Tensor dt;     // (B, L, R)
  Tensor Bm;     // (B, L, N)
  Tensor Cm;     // (B, L, N)
  Tensor delta;  // (B, L, E)  dt · dt_projᵀ (before bias and softplus)
  Tensor A;      // (E, N)
  Tensor y;      // (B, L, E)  scan output, gated
};

}  // namespace

MambaMixer::MambaMixer(const BlockContext& context)
    : dim_(context.model.dim),
      d_inner_(context.model.d_inner()),
      d_state_(context.model.d_state),
      dt_rank_(context.model.dt_rank),
      d_conv_(context.model.d_conv),
      in_proj_(context.parameters.add(context.prefix + "in_proj.weight", {2 * d_inner_, dim_}, true)),
      conv_weight_(context.parameters.add(context.prefix + "conv1d.weight", {d_inner_, 1, d_conv_}, true)),
      conv_bias_(context.parameters.add(context.prefix + "conv1d.bias", {d_inner_}, false)),
      x_proj_(context.parameters.add(context.prefix + "x_proj.weight", {dt_rank_ + 2 * d_state_, d_inner_}, true)),
      dt_proj_weight_(context.parameters.add(context.prefix + "dt_proj.weight", {d_inner_, dt_rank_}, true)),
      dt_proj_bias_(context.parameters.add(context.prefix + "dt_proj.bias", {d_inner_}, false)),
      A_log_(context.parameters.add(context.prefix + "A_log", {d_inner_, d_state_}, false)),
      D_(context.parameters.add(context.prefix + "D", {d_inner_}, false)),
      out_proj_(context.parameters.add(context.prefix + "out_proj.weight", {dim_, d_inner_}, true)) {}

Tensor MambaMixer::forward(const Tensor& u, const BatchInfo& batch, LayerRecord& record) {
  // [x, z] = u · in_projᵀ
  auto [x, z] = split_last(linear_forward(u, in_proj_.value, nullptr), d_inner_);
  // xa = silu(conv1d(x))
  Tensor xc = causal_conv1d_forward(x, conv_weight_.value, conv_bias_.value);
  Tensor xa = silu_forward(xc);
  // [dt, B, C] = xa · x_projᵀ
  Tensor projected = linear_forward(xa, x_proj_.value, nullptr);
  Tensor dt = columns(projected, 0, dt_rank_);
  Tensor Bm = columns(projected, dt_rank_, dt_rank_ + d_state_);
  Tensor Cm = columns(projected, dt_rank_ + d_state_, dt_rank_ + 2 * d_state_);
  // Δ = softplus(dt · dt_projᵀ + dt_proj.bias), inside the scan
  Tensor delta = linear_forward(dt, dt_proj_weight_.value, nullptr);
  Tensor A = negative_exp(A_log_.value);

  SelectiveScanInputs scan;
  scan.u = &xa;
  scan.delta = &delta;
  scan.A = &A;
  scan.B = &Bm;
  scan.C = &Cm;
  scan.D = &D_.value;
  scan.z = &z;
  scan.delta_bias = &dt_proj_bias_.value;
  scan.delta_softplus = true;
  Tensor y = selective_scan_forward(scan);
  Tensor out = linear_forward(y, out_proj_.value, nullptr);

  if (batch.keep_for_backward) {
    auto saved = std::make_unique<MambaSaved>();
    saved->u = u;
    saved->x = x;
    saved->z = z;
    saved->xc = xc;
    saved->xa = xa;
    saved->dt = dt;
    saved->Bm = Bm;
    saved->Cm = Cm;
    saved->delta = delta;
    saved->A = A;
    saved->y = y;
    record.saved = std::move(saved);
  }
  return out;
}

Tensor MambaMixer::backward(const Tensor& grad_out, const BatchInfo&, const LayerRecord& record, float) {
  const auto& saved = static_cast<const MambaSaved&>(*record.saved);

  LinearGrads out_grads = linear_backward(grad_out, saved.y, out_proj_.value, false);
  add_inplace(out_proj_.grad, out_grads.weight);

  SelectiveScanInputs scan;
  scan.u = &saved.xa;
  scan.delta = &saved.delta;
  scan.A = &saved.A;
  scan.B = &saved.Bm;
  scan.C = &saved.Cm;
  scan.D = &D_.value;
  scan.z = &saved.z;
  scan.delta_bias = &dt_proj_bias_.value;
  scan.delta_softplus = true;
  SelectiveScanGrads scan_grads = selective_scan_backward(out_grads.input, scan);
  // A = −exp(A_log): dL/dA_log = dL/dA ⊙ A
  add_inplace(A_log_.grad, multiply(scan_grads.A, saved.A));
  add_inplace(D_.grad, scan_grads.D);
  add_inplace(dt_proj_bias_.grad, scan_grads.delta_bias);

  LinearGrads dt_grads = linear_backward(scan_grads.delta, saved.dt, dt_proj_weight_.value, false);
  add_inplace(dt_proj_weight_.grad, dt_grads.weight);

  Tensor grad_projected = concat_last(concat_last(dt_grads.input, scan_grads.B), scan_grads.C);
  LinearGrads x_proj_grads = linear_backward(grad_projected, saved.xa, x_proj_.value, false);
  add_inplace(x_proj_.grad, x_proj_grads.weight);

  Tensor grad_xa = add(x_proj_grads.input, scan_grads.u);
  Tensor grad_xc = silu_backward(grad_xa, saved.xc);
  CausalConv1dGrads conv_grads = causal_conv1d_backward(grad_xc, saved.x, conv_weight_.value);
  add_inplace(conv_weight_.grad, conv_grads.weight);
  add_inplace(conv_bias_.grad, conv_grads.bias);

  Tensor grad_xz = concat_last(conv_grads.input, scan_grads.z);
  LinearGrads in_grads = linear_backward(grad_xz, saved.u, in_proj_.value, false);
  add_inplace(in_proj_.grad, in_grads.weight);
  return in_grads.input;
}

// mamba_ssm's initialisation (Mamba.__init__ and _init_weights).
void MambaMixer::initialize(Random& random) {
  const auto linear_bound = [](int64_t fan_in) { return 1.0 / std::sqrt(static_cast<double>(fan_in)); };
  random.fill_uniform(in_proj_.value, -linear_bound(dim_), linear_bound(dim_));
  // conv1d: PyTorch's default, fan_in = K (one input channel per group)
  random.fill_uniform(conv_weight_.value, -linear_bound(d_conv_), linear_bound(d_conv_));
  random.fill_uniform(conv_bias_.value, -linear_bound(d_conv_), linear_bound(d_conv_));
  random.fill_uniform(x_proj_.value, -linear_bound(d_inner_), linear_bound(d_inner_));
  // dt_proj.weight U(±R^−½); dt = exp(U(log 1e-3, log 1e-1)) floored at 1e-4; bias = softplus⁻¹(dt)
  random.fill_uniform(dt_proj_weight_.value, -linear_bound(dt_rank_), linear_bound(dt_rank_));
  for (int64_t e = 0; e < d_inner_; ++e) {
    double dt = std::exp(random.uniform(std::log(1e-3), std::log(1e-1)));
    dt = std::max(dt, 1e-4);
    dt_proj_bias_.value[e] = static_cast<float>(dt + std::log(-std::expm1(-dt)));
  }
  // A_log = log(1 .. N) on every row; D = 1
  for (int64_t e = 0; e < d_inner_; ++e) {
    for (int64_t n = 0; n < d_state_; ++n) A_log_.value[e * d_state_ + n] = static_cast<float>(std::log(n + 1.0));
  }
  D_.value.fill(1.0f);
  random.fill_uniform(out_proj_.value, -linear_bound(d_inner_), linear_bound(d_inner_));
}

}  // namespace mr1
