// The Mamba mixer (mamba_ssm's Mamba v1, DESIGN.md §2): in_proj, causal conv1d, silu,
// x_proj, dt_proj, selective scan with D skip and silu(z) gate, out_proj; and its recurrent inference
// (prefill over a prompt, then one token at a time from a fixed-size state), sharing the projections.
// Shape letters: B batch, L length, D dim, E d_inner, N d_state, R dt_rank, K d_conv.
#include <cmath>
#include <stdexcept>
#include <utility>

#include "blocks/mamba_mixer.h"
#include "blocks/random.h"
#include "kernels/activation.h"
#include "kernels/conv1d.h"
#include "kernels/elementwise.h"
#include "kernels/linear.h"
#include "kernels/selective_scan.h"
#include "kernels/small_ops.h"
#include "kernels/ssm_step.h"

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
  Tensor scan_checkpoints;  // the scan's states for its backward (CPU; undefined on CUDA)
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

std::pair<Tensor, Tensor> MambaMixer::input_projection(const Tensor& u) const {
  // [x, z] = u · in_projᵀ, as two GEMMs over in_proj's halves of rows (views), so that x and z come out
  // whole, with no copies out of a (..., 2E) product.
  return {linear_forward(u, in_proj_.value.slice_rows(0, d_inner_), nullptr),
          linear_forward(u, in_proj_.value.slice_rows(d_inner_, 2 * d_inner_), nullptr)};
}

MambaMixer::ScanProjections MambaMixer::scan_projections(const Tensor& xa) const {
  // [dt, B, C] = xa · x_projᵀ
  Tensor projected = linear_forward(xa, x_proj_.value, nullptr);
  ScanProjections p;
  p.dt = columns(projected, 0, dt_rank_);
  p.B = columns(projected, dt_rank_, dt_rank_ + d_state_);
  p.C = columns(projected, dt_rank_ + d_state_, dt_rank_ + 2 * d_state_);
  // Δ = softplus(dt · dt_projᵀ + dt_proj.bias), bias and softplus inside the scan
  p.delta = linear_forward(p.dt, dt_proj_weight_.value, nullptr);
  return p;
}

template <typename ScanInputs>
ScanInputs MambaMixer::scan_inputs(const Tensor& xa, const ScanProjections& p, const Tensor& A, const Tensor& z) const {
  ScanInputs scan;
  scan.u = &xa;
  scan.delta = &p.delta;
  scan.A = &A;
  scan.B = &p.B;
  scan.C = &p.C;
  scan.D = &D_.value;
  scan.z = &z;
  scan.delta_bias = &dt_proj_bias_.value;
  scan.delta_softplus = true;
  return scan;
}

Tensor MambaMixer::forward(const Tensor& u, const BatchInfo& batch, LayerRecord& record) {
  return parallel_forward(u, batch, record, nullptr);
}

Tensor MambaMixer::prefill(const Tensor& u, const BatchInfo& batch, std::unique_ptr<InferenceState>& state) {
  auto prompt_state = std::make_unique<MambaState>();
  LayerRecord record;
  Tensor out = parallel_forward(u, batch, record, prompt_state.get());
  state = std::move(prompt_state);
  return out;
}

Tensor MambaMixer::parallel_forward(const Tensor& u, const BatchInfo& batch, LayerRecord& record, MambaState* state) {
  auto [x, z] = input_projection(u);
  // xa = silu(conv1d(x))
  Tensor xc = causal_conv1d_forward(x, conv_weight_.value, conv_bias_.value);
  Tensor xa = silu_forward(xc);
  const ScanProjections p = scan_projections(xa);
  Tensor A = negative_exp(A_log_.value);
  const auto scan = scan_inputs<SelectiveScanInputs>(xa, p, A, z);
  Tensor scan_checkpoints;
  Tensor y = selective_scan_forward(scan, state ? &state->ssm_state : nullptr,
                                    batch.keep_for_backward ? &scan_checkpoints : nullptr);
  Tensor out = linear_forward(y, out_proj_.value, nullptr);

  if (state) {
    // Each prompt's state is the one after its own last token: the last K−1 conv inputs and h_{len−1}.
    // The scan above gave h_{L−1}; a shorter (right-padded) prompt's h is rescanned over its own positions.
    const int64_t B = u.size(0), L = u.size(1);
    const std::vector<int64_t> lengths = prompt_lengths(batch.mask, B, L);
    state->conv_state = causal_conv1d_final_state(x, d_conv_, &lengths);
    state->A = A;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t length = lengths[static_cast<size_t>(b)];
      if (length == L) continue;
      // Positions [0, length) of row b, as a (1, length, F) view.
      auto prompt = [&](const Tensor& t) {
        const int64_t F = t.size(2);
        return t.slice_rows(b, b + 1).reshape({L, F}).slice_rows(0, length).reshape({1, length, F});
      };
      const Tensor xa_b = prompt(xa), z_b = prompt(z);
      ScanProjections p_b;
      p_b.B = prompt(p.B);
      p_b.C = prompt(p.C);
      p_b.delta = prompt(p.delta);
      Tensor h;
      selective_scan_forward(scan_inputs<SelectiveScanInputs>(xa_b, p_b, A, z_b), &h);
      state->ssm_state.slice_rows(b, b + 1).copy_from(h);
    }
  }

  if (batch.keep_for_backward) {
    auto saved = std::make_unique<MambaSaved>();
    saved->u = u;
    saved->x = x;
    saved->z = z;
    saved->xc = xc;
    saved->xa = xa;
    saved->dt = p.dt;
    saved->Bm = p.B;
    saved->Cm = p.C;
    saved->delta = p.delta;
    saved->A = A;
    saved->y = y;
    saved->scan_checkpoints = scan_checkpoints;
    record.saved = std::move(saved);
  }
  return out;
}

// One position: the conv reads its window from the state, the scan advances h once.
Tensor MambaMixer::step(const Tensor& u, const BatchInfo& batch, std::unique_ptr<InferenceState>& state_any) {
  check_shape(u, {-1, 1, dim_}, "mamba step: u (B, 1, D)");
  const int64_t B = u.size(0);
  if (!state_any) {
    auto fresh = std::make_unique<MambaState>();
    fresh->conv_state = Tensor({B, d_inner_, d_conv_ - 1}, u.device());
    fresh->ssm_state = Tensor({B, d_inner_, d_state_}, u.device());
    fresh->A = negative_exp(A_log_.value);
    state_any = std::move(fresh);
  }
  auto* state = dynamic_cast<MambaState*>(state_any.get());
  if (!state) throw std::logic_error("mamba step: the state given is not a mamba block's state");
  check_shape(state->ssm_state, {B, d_inner_, d_state_}, "mamba step: ssm_state (B, E, N)");

  auto [x, z] = input_projection(u.reshape({B, dim_}));  // (B, E) each
  Tensor xc = causal_conv1d_step(state->conv_state, x, conv_weight_.value, conv_bias_.value);
  Tensor xa = silu_forward(xc);
  const ScanProjections p = scan_projections(xa);
  Tensor y = selective_scan_step(state->ssm_state, scan_inputs<SelectiveScanStepInputs>(xa, p, state->A, z));
  return linear_forward(y, out_proj_.value, nullptr).reshape({B, 1, dim_});
}

Tensor MambaMixer::backward(const Tensor& grad_out, const BatchInfo&, const LayerRecord& record, float) {
  const auto& saved = static_cast<const MambaSaved&>(*record.saved);

  const Tensor grad_y = linear_backward_accumulate(grad_out, saved.y, out_proj_.value, out_proj_.grad, nullptr);

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
  scan.checkpoints = &saved.scan_checkpoints;
  // Adds A = −exp(A_log)'s gradient dL/dA ⊙ A, and D's and the bias's, to the parameters' gradients.
  SelectiveScanGrads scan_grads =
      selective_scan_backward_accumulate(grad_y, scan, A_log_.grad, &D_.grad, &dt_proj_bias_.grad);

  const Tensor grad_dt =
      linear_backward_accumulate(scan_grads.delta, saved.dt, dt_proj_weight_.value, dt_proj_weight_.grad, nullptr);

  Tensor grad_projected = concat_last(grad_dt, scan_grads.B, scan_grads.C);
  // xa feeds the scan (as u) and x_proj: the projection's gradient is added to the scan's.
  Tensor grad_xa = std::move(scan_grads.u);
  linear_backward_add(grad_projected, saved.xa, x_proj_.value, x_proj_.grad, nullptr, grad_xa);
  Tensor grad_xc = silu_backward(grad_xa, saved.xc);
  const Tensor grad_x = causal_conv1d_backward_accumulate(grad_xc, saved.x, conv_weight_.value, conv_weight_.grad,
                                                          conv_bias_.grad);

  // The two halves of in_proj, as in the forward: dL/du = dx · W_x + dz · W_z, the second added in its GEMM.
  Tensor grad_x_rows = in_proj_.grad.slice_rows(0, d_inner_);
  Tensor grad_z_rows = in_proj_.grad.slice_rows(d_inner_, 2 * d_inner_);
  Tensor grad_u =
      linear_backward_accumulate(grad_x, saved.u, in_proj_.value.slice_rows(0, d_inner_), grad_x_rows, nullptr);
  linear_backward_add(scan_grads.z, saved.u, in_proj_.value.slice_rows(d_inner_, 2 * d_inner_), grad_z_rows, nullptr,
                      grad_u);
  return grad_u;
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
