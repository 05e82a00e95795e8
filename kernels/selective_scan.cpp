// The selective scan on the CPU, forward and backward. Work items (batch row, block of 16
// channels) run in parallel; within one, every quantity is a 16-lane Eigen array over the
// block's channels, so the recurrence over the state index n is a loop of vector operations
// with no horizontal sums in the forward. Backward recomputes the states chunk by chunk.
// Shape letters: B batch, L length, E channels (d_inner), N state size (d_state).
#include "kernels/selective_scan.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda_device.h"
#include "kernels/dispatch.h"
#include "kernels/eigen_maps.h"
#include "kernels/elementwise.h"
#include "kernels/selective_scan_cuda.h"

namespace mr1 {

namespace {

// Channels per work item, one lane each: a 64-byte line of u, delta, z and out per time step.
constexpr int64_t kLanes = 16;
using Lanes = Eigen::Array<float, kLanes, 1>;
using LanesBuffer = std::vector<Lanes>;  // C++17's aligned new gives each Lanes its 64-byte alignment

// Channels [first, first + width) of one row of a (.., E) tensor, zero in lanes past width.
inline Lanes load_lanes(const float* row, int64_t width) {
  if (width == kLanes) return Eigen::Map<const Lanes>(row);
  Lanes lanes = Lanes::Zero();
  std::copy(row, row + width, lanes.data());
  return lanes;
}

inline void store_lanes(const Lanes& lanes, float* row, int64_t width) {
  if (width == kLanes) {
    Eigen::Map<Lanes> target(row);
    target = lanes;
  } else {
    std::copy(lanes.data(), lanes.data() + width, row);
  }
}

// softplus(v) = log(1 + exp(v)), written max(v, 0) + log1p(exp(−|v|)) so that exp never
// overflows. PyTorch and mamba_ssm return v itself above 20; in float this formula already does
// for v > 15 (log1p(exp(−v)) is then under half an ulp of v), so no select is needed (Eigen 3.4
// evaluates .select() one scalar at a time, which made this the forward's most expensive line).
inline Lanes softplus(const Lanes& v) { return v.max(0.0f) + (-v.abs()).exp().log1p(); }

// σ(v) = 1 / (1 + exp(−v))
inline Lanes sigmoid(const Lanes& v) { return (1.0f + (-v).exp()).inverse(); }

bool present(const Tensor* tensor) { return tensor && tensor->defined(); }

struct ScanShape {
  int64_t batch, length, channels, state;  // B, L, E, N
};

// Checks every shape relation, naming the argument; returns B, L, E, N.
ScanShape check_scan_inputs(const SelectiveScanInputs& in) {
  require_scan_inputs(in, "selective_scan");
  check_shape(*in.u, {-1, -1, -1}, "selective_scan: u");
  const int64_t batch = in.u->size(0), length = in.u->size(1), channels = in.u->size(2);
  check_shape(*in.A, {channels, -1}, "selective_scan: A");
  const int64_t state = in.A->size(1);
  check_shape(*in.delta, {batch, length, channels}, "selective_scan: delta");
  check_shape(*in.B, {batch, length, state}, "selective_scan: B");
  check_shape(*in.C, {batch, length, state}, "selective_scan: C");
  if (present(in.D)) check_shape(*in.D, {channels}, "selective_scan: D");
  if (present(in.z)) check_shape(*in.z, {batch, length, channels}, "selective_scan: z");
  if (present(in.delta_bias)) check_shape(*in.delta_bias, {channels}, "selective_scan: delta_bias");
  return {batch, length, channels, state};
}

// Raw views of the inputs; absent optional inputs are null.
struct ScanPointers {
  const float* u;           // (B, L, E)
  const float* delta;       // (B, L, E)
  const float* A;           // (E, N)
  const float* B;           // (B, L, N)
  const float* C;           // (B, L, N)
  const float* D;           // (E) or null
  const float* z;           // (B, L, E) or null
  const float* delta_bias;  // (E) or null
  bool softplus;
};

ScanPointers scan_pointers(const SelectiveScanInputs& in) {
  auto optional = [](const Tensor* tensor) { return present(tensor) ? tensor->data() : nullptr; };
  return {in.u->data(), in.delta->data(), in.A->data(), in.B->data(), in.C->data(),
          optional(in.D), optional(in.z), optional(in.delta_bias), in.delta_softplus};
}

// The same views for the CUDA launchers.
SelectiveScanPointers cuda_pointers(const SelectiveScanInputs& in) {
  const ScanPointers p = scan_pointers(in);
  SelectiveScanPointers raw;
  raw.u = p.u;
  raw.delta = p.delta;
  raw.A = p.A;
  raw.B = p.B;
  raw.C = p.C;
  raw.D = p.D;
  raw.z = p.z;
  raw.delta_bias = p.delta_bias;
  raw.delta_softplus = p.softplus;
  raw.pieces = in.cuda_pieces;
  raw.part_blocks = in.cuda_part_blocks;
  return raw;
}

// The CUDA backward into `grads`: writes u, delta, z and B, C (created here) and adds the sums of A (or,
// with A_log, dA ⊙ A), D and delta_bias to the tensors given (which may be parameters' gradients).
void backward_cuda(const Tensor& grad_out, const SelectiveScanInputs& in, const ScanShape& s, SelectiveScanGrads& grads,
                   Tensor& grad_A, bool A_log, Tensor* grad_D, Tensor* grad_delta_bias) {
  const int64_t L = s.length, E = s.channels, N = s.state;
  // The backward kernel writes every value of u, delta and z; the reduction adds to B and C, which start at zero.
  grads.u = Tensor::empty({s.batch, L, E}, Device::cuda);
  grads.delta = Tensor::empty({s.batch, L, E}, Device::cuda);
  grads.B = Tensor({s.batch, L, N}, Device::cuda);
  grads.C = Tensor({s.batch, L, N}, Device::cuda);
  if (present(in.z)) grads.z = Tensor::empty({s.batch, L, E}, Device::cuda);
  SelectiveScanGradPointers raw;
  raw.u = grads.u.data();
  raw.delta = grads.delta.data();
  raw.A = grad_A.data();
  raw.A_log = A_log;
  raw.B = grads.B.data();
  raw.C = grads.C.data();
  raw.D = grad_D ? grad_D->data() : nullptr;
  raw.z = grads.z.defined() ? grads.z.data() : nullptr;
  raw.delta_bias = grad_delta_bias ? grad_delta_bias->data() : nullptr;
  selective_scan_backward_cuda(grad_out.data(), cuda_pointers(in), raw, s.batch, L, E, N, cuda::stream());
}

int64_t work_items(const ScanShape& s) { return s.batch * ((s.channels + kLanes - 1) / kLanes); }

// The states kept for the backward: h before steps 0, chunk, 2·chunk, … of every work item, N lanes each:
// (items, ⌈L / chunk⌉, N, kLanes), zero in lanes past a block's width.
int64_t checkpoint_count(int64_t length, int64_t chunk) { return (length + chunk - 1) / chunk; }
Shape checkpoint_shape(const ScanShape& s, int64_t chunk) {
  return {work_items(s), checkpoint_count(s.length, chunk), s.state, kLanes};
}
void store_checkpoint(const LanesBuffer& h, float* target) {
  for (const Lanes& lanes : h) target = std::copy(lanes.data(), lanes.data() + kLanes, target);
}

// One work item: batch row b and channels [first, first + width), with the time-invariant
// per-channel values read once: A transposed to N lanes A_T[n][j] = A[first + j, n], D and
// delta_bias (0 where absent, and in lanes past width).
struct ChannelBlock {
  int64_t b, first, width;
  LanesBuffer A_T;  // N
  Lanes skip, bias;

  ChannelBlock(const ScanPointers& p, const ScanShape& s, int64_t item) {
    const int64_t blocks = (s.channels + kLanes - 1) / kLanes;
    b = item / blocks;
    first = item % blocks * kLanes;
    width = std::min(kLanes, s.channels - first);
    A_T.assign(s.state, Lanes::Zero());
    for (int64_t j = 0; j < width; ++j) {
      for (int64_t n = 0; n < s.state; ++n) A_T[n][j] = p.A[(first + j) * s.state + n];
    }
    skip = p.D ? load_lanes(p.D + first, width) : Lanes::Zero();
    bias = p.delta_bias ? load_lanes(p.delta_bias + first, width) : Lanes::Zero();
  }
};

// Δ = softplus(delta + delta_bias), or delta + delta_bias without softplus, for one time step.
inline Lanes block_delta(const ScanPointers& p, const ChannelBlock& block, int64_t row) {
  const Lanes v = load_lanes(p.delta + row, block.width) + block.bias;
  return p.softplus ? softplus(v) : v;
}

// dΔ/d(delta): σ(delta + delta_bias) with softplus, else 1. (PyTorch's slope is 1 above 20, where
// σ rounds to 1 in float anyway.)
inline Lanes block_delta_slope(const ScanPointers& p, const ChannelBlock& block, int64_t row) {
  if (!p.softplus) return Lanes::Ones();
  return sigmoid(load_lanes(p.delta + row, block.width) + block.bias);
}

// One step of the recurrence for the block, h (N lanes) updated in place:
//   a[n] = exp(Δ ⊙ A_T[n]),   h[n] ← a[n] ⊙ h[n] + (Δ ⊙ u) · B_t[n]
// The decays a are written to `decays` (N lanes) when it is given. Returns y = Σ_n h[n] · C_t[n]
// when C_t is given (else 0).
inline Lanes block_step(const ChannelBlock& block, const Lanes& delta, const Lanes& u, const float* B_t,
                        const float* C_t, Lanes* h, Lanes* decays) {
  const int64_t N = static_cast<int64_t>(block.A_T.size());
  const Lanes delta_u = delta * u;
  Lanes y = Lanes::Zero();
  for (int64_t n = 0; n < N; ++n) {
    const Lanes a = (delta * block.A_T[n]).exp();
    h[n] = a * h[n] + delta_u * B_t[n];
    if (decays) decays[n] = a;
    if (C_t) y += h[n] * C_t[n];
  }
  // A copy, so that y is not the return slot (which GCC keeps in memory: a store-to-load chain).
  return Lanes(y);
}

}  // namespace

Tensor selective_scan_forward(const SelectiveScanInputs& in, Tensor* final_state, Tensor* checkpoints) {
  const ScanShape s = check_scan_inputs(in);
  const int64_t L = s.length, E = s.channels, N = s.state;
  if (common_device("selective_scan", {in.u, in.delta, in.A, in.B, in.C, in.D, in.z, in.delta_bias}) ==
      Device::cuda) {
    Tensor out = Tensor::empty({s.batch, L, E}, Device::cuda);
    if (checkpoints) *checkpoints = Tensor();
    if (final_state) *final_state = Tensor({s.batch, E, N}, Device::cuda);
    selective_scan_forward_cuda(cuda_pointers(in), out.data(), final_state ? final_state->data() : nullptr, s.batch, L,
                                E, N, cuda::stream());
    return out;
  }
  const ScanPointers p = scan_pointers(in);
  Tensor out = Tensor::empty({s.batch, L, E});
  float* out_data = out.data();
  float* state_data = nullptr;
  if (final_state) {
    *final_state = Tensor({s.batch, E, N});
    state_data = final_state->data();
  }
  const int64_t items = work_items(s);
  float* checkpoint_data = nullptr;
  if (checkpoints) {
    *checkpoints = Tensor::empty(checkpoint_shape(s, kSelectiveScanChunk));
    checkpoint_data = checkpoints->data();
  }

#pragma omp parallel if (items > 1 && s.batch * L * E * N >= kParallelMinimumWork)
  {
    LanesBuffer h(N);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const ChannelBlock block(p, s, item);
      const int64_t width = block.width;
      float* kept = checkpoint_data ? checkpoint_data + item * checkpoints->size(1) * N * kLanes : nullptr;
      std::fill(h.begin(), h.end(), Lanes::Zero());
      for (int64_t t = 0; t < L; ++t) {
        if (kept && t % kSelectiveScanChunk == 0) store_checkpoint(h, kept + t / kSelectiveScanChunk * N * kLanes);
        const int64_t token = block.b * L + t;
        const int64_t row = token * E + block.first;
        const Lanes u = load_lanes(p.u + row, width);
        const Lanes delta = block_delta(p, block, row);
        // y = h_t · C_t + D ⊙ u,   out = y ⊙ silu(z)
        Lanes y = block_step(block, delta, u, p.B + token * N, p.C + token * N, h.data(), nullptr) + block.skip * u;
        if (p.z) {
          const Lanes z = load_lanes(p.z + row, width);
          y *= z * sigmoid(z);
        }
        store_lanes(y, out_data + row, width);
      }
      if (state_data) {
        float* state = state_data + (block.b * E + block.first) * N;  // (width, N) rows of final_state[b]
        for (int64_t j = 0; j < width; ++j) {
          for (int64_t n = 0; n < N; ++n) state[j * N + n] = h[n][j];
        }
      }
    }
  }
  return out;
}

SelectiveScanGrads selective_scan_backward(const Tensor& grad_out, const SelectiveScanInputs& in) {
  return selective_scan_backward(grad_out, in, kSelectiveScanChunk);
}

SelectiveScanGrads selective_scan_backward_accumulate(const Tensor& grad_out, const SelectiveScanInputs& in,
                                                      Tensor& grad_A_log, Tensor* grad_D, Tensor* grad_delta_bias) {
  const ScanShape s = check_scan_inputs(in);
  check_shape(grad_out, {s.batch, s.length, s.channels}, "selective_scan: grad_out");
  check_shape(grad_A_log, {s.channels, s.state}, "selective_scan: grad_A_log");
  const auto check_parameter = [&](const Tensor* input, const Tensor* grad, const char* name) {
    if (present(input) != present(grad)) {
      throw std::invalid_argument(std::string("selective_scan_backward_accumulate: grad_") + name + " must be given " +
                                  (present(input) ? "with " : "only with ") + name);
    }
    if (present(grad)) check_shape(*grad, {s.channels}, std::string("selective_scan: grad_") + name);
  };
  check_parameter(in.D, grad_D, "D");
  check_parameter(in.delta_bias, grad_delta_bias, "delta_bias");
  if (common_device("selective_scan", {&grad_out, in.u, in.delta, in.A, in.B, in.C, in.D, in.z, in.delta_bias,
                                       &grad_A_log, grad_D, grad_delta_bias}) == Device::cuda) {
    SelectiveScanGrads grads;
    backward_cuda(grad_out, in, s, grads, grad_A_log, true, grad_D, grad_delta_bias);
    return grads;
  }
  SelectiveScanGrads grads = selective_scan_backward(grad_out, in);
  add_inplace(grad_A_log, multiply(grads.A, *in.A));
  if (grad_D) add_inplace(*grad_D, grads.D);
  if (grad_delta_bias) add_inplace(*grad_delta_bias, grads.delta_bias);
  grads.A = grads.D = grads.delta_bias = Tensor();
  return grads;
}

namespace {

// One slot's sums (see selective_scan_backward): dA (E, N), dD (E), d(delta_bias) (E), then dB and dC
// (rows, L, N) of the `rows` batch rows its work items touch.
struct PartialLayout {
  int64_t D, bias, B, C, size;  // the offsets of the parts after dA, and the whole size

  PartialLayout(const ScanShape& s, int64_t rows)
      : D(s.channels * s.state),
        bias(D + s.channels),
        B(bias + s.channels),
        C(B + rows * s.length * s.state),
        size(C + rows * s.length * s.state) {}
};

// The slots of the backward's shared sums: a fixed number, whatever the thread count.
constexpr int64_t kBackwardSlots = 32;

// Reverse-time scan. With a_t = exp(Δ_t A) and dh_t the gradient reaching h_t:
//   dy_t  = dout_t ⊙ silu(z_t),   dz_t = dout_t ⊙ y_t ⊙ silu'(z_t),   silu' = σ (1 + z (1 − σ))
//   dh_t  = C_t ⊗ dy_t + a_{t+1} ⊙ dh_{t+1}                                     (dh_L = 0)
//   g_t   = dh_t ⊙ h_{t−1} ⊙ a_t                          the gradient of Δ_t A
//   dA   += Δ_t g_t,   dΔ_t = Σ_n g_t A + u_t Σ_n dh_t B_t,   du_t = D dy_t + Δ_t Σ_n dh_t B_t
//   dB_t += Σ_e Δ_t u_t dh_t,   dC_t += Σ_e dy_t h_t,   dD += Σ_t dy_t u_t
//   d(delta)_t = dΔ_t · softplus'(v_t) = dΔ_t · σ(v_t)  (v = delta + delta_bias),   d(delta_bias) = Σ_t d(delta)_t
// States come from checkpoints of h taken every `chunk` steps (by the forward, or by a first forward pass
// here); chunks are then visited in reverse, each recomputed from its checkpoint before its reverse steps.
//
// One slot's part of it: its work items, one at a time, with buffers reused for each. The gradients of u,
// delta and z go straight to their tensors (each value belongs to one item); the shared ones are added to
// the slot's partial sums.
class BackwardThread {
 public:
  // `kept`: the forward's checkpoints, or null; `partial`: the slot's sums, zero, in PartialLayout's order,
  // its dB and dC from batch row `first_row` for `rows` rows.
  BackwardThread(const ScanPointers& p, const ScanShape& s, int64_t chunk, const float* kept, const float* dout,
                 SelectiveScanGrads& grads, float* partial, int64_t first_row, int64_t rows)
      : p_(p),
        s_(s),
        layout_(s, rows),
        first_token_(first_row * s.length),
        chunk_(chunk),
        chunks_(checkpoint_count(s.length, chunk)),
        kept_(kept),
        dout_(dout),
        du_(grads.u.data()),
        ddelta_(grads.delta.data()),
        dz_(p.z ? grads.z.data() : nullptr),
        partial_(partial),
        h_(s.state),
        dh_(s.state),
        dA_(s.state),
        checkpoints_(chunks_ * s.state),
        states_(std::min(chunk, s.length) * s.state),
        decays_(states_.size()),
        deltas_(s.length),
        slopes_(s.length) {}

  void run(int64_t item) {
    const ChannelBlock block(p_, s_, item);
    find_checkpoints(block, item);
    std::fill(dh_.begin(), dh_.end(), Lanes::Zero());
    std::fill(dA_.begin(), dA_.end(), Lanes::Zero());
    dD_ = dbias_ = Lanes::Zero();
    for (int64_t c = chunks_ - 1; c >= 0; --c) {
      const int64_t t0 = c * chunk_, t1 = std::min(s_.length, t0 + chunk_);
      recompute_chunk(block, c, t0, t1);
      for (int64_t t = t1 - 1; t >= t0; --t) reverse_step(block, c, t);
    }
    const int64_t N = s_.state;
    for (int64_t j = 0; j < block.width; ++j) {
      const int64_t e = block.first + j;
      for (int64_t n = 0; n < N; ++n) partial_[e * N + n] += dA_[n][j];
      partial_[layout_.D + e] += dD_[j];
      partial_[layout_.bias + e] += dbias_[j];
    }
  }

 private:
  int64_t token_of(const ChannelBlock& block, int64_t t) const { return block.b * s_.length + t; }
  int64_t row_of(const ChannelBlock& block, int64_t t) const { return token_of(block, t) * s_.channels + block.first; }

  // Δ and its slope for every step, and the state before each chunk: copied from the forward's checkpoints
  // when it kept them, else found by a forward pass (which stops at the last chunk, recomputed anyway).
  void find_checkpoints(const ChannelBlock& block, int64_t item) {
    const int64_t N = s_.state;
    std::fill(h_.begin(), h_.end(), Lanes::Zero());
    for (int64_t t = 0; t < s_.length; ++t) {
      const int64_t row = row_of(block, t);
      deltas_[t] = block_delta(p_, block, row);
      slopes_[t] = block_delta_slope(p_, block, row);
      if (kept_ || t >= (chunks_ - 1) * chunk_) continue;
      if (t % chunk_ == 0) std::copy(h_.begin(), h_.end(), checkpoints_.begin() + (t / chunk_) * N);
      block_step(block, deltas_[t], load_lanes(p_.u + row, block.width), p_.B + token_of(block, t) * N, nullptr,
                 h_.data(), nullptr);
    }
    if (kept_) {
      const float* source = kept_ + item * chunks_ * N * kLanes;
      for (Lanes& lanes : checkpoints_) {
        std::copy_n(source, kLanes, lanes.data());
        source += kLanes;
      }
    } else {
      std::copy(h_.begin(), h_.end(), checkpoints_.begin() + (chunks_ - 1) * N);
    }
  }

  // h_t and a_t for the steps [t0, t1) of chunk c, from the state before it.
  void recompute_chunk(const ChannelBlock& block, int64_t c, int64_t t0, int64_t t1) {
    const int64_t N = s_.state;
    std::copy_n(checkpoints_.begin() + c * N, N, h_.begin());
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t step = t - t0;
      block_step(block, deltas_[t], load_lanes(p_.u + row_of(block, t), block.width), p_.B + token_of(block, t) * N,
                 nullptr, h_.data(), decays_.data() + step * N);
      std::copy(h_.begin(), h_.end(), states_.begin() + step * N);
    }
  }

  // Time step t of chunk c: its gradients, and dh carried back to step t − 1.
  void reverse_step(const ChannelBlock& block, int64_t c, int64_t t) {
    const int64_t N = s_.state, width = block.width, step = t - c * chunk_;
    const int64_t row = row_of(block, t), token = token_of(block, t);
    const float* B_t = p_.B + token * N;
    const float* C_t = p_.C + token * N;
    float* dB_t = partial_ + layout_.B + (token - first_token_) * N;
    float* dC_t = partial_ + layout_.C + (token - first_token_) * N;
    const Lanes* h_now = states_.data() + step * N;
    const Lanes* h_before = step == 0 ? checkpoints_.data() + c * N : h_now - N;
    const Lanes* a = decays_.data() + step * N;
    const Lanes& delta = deltas_[t];
    const Lanes u = load_lanes(p_.u + row, width);
    const Lanes delta_u = delta * u;

    Lanes dy = load_lanes(dout_ + row, width);
    if (p_.z) {
      Lanes y = block.skip * u;
      for (int64_t n = 0; n < N; ++n) y += h_now[n] * C_t[n];
      const Lanes z = load_lanes(p_.z + row, width);
      const Lanes sigma = sigmoid(z);
      store_lanes(dy * y * sigma * (1.0f + z * (1.0f - sigma)), dz_ + row, width);
      dy *= z * sigma;
    }
    dD_ += dy * u;

    Lanes sum_gA = Lanes::Zero(), sum_dhB = Lanes::Zero();
    for (int64_t n = 0; n < N; ++n) {
      const Lanes dh_n = dh_[n] + dy * C_t[n];
      const Lanes g = dh_n * h_before[n] * a[n];
      sum_gA += g * block.A_T[n];
      dA_[n] += g * delta;
      sum_dhB += dh_n * B_t[n];
      dB_t[n] += (dh_n * delta_u).sum();
      dC_t[n] += (dy * h_now[n]).sum();
      dh_[n] = a[n] * dh_n;
    }
    store_lanes(dy * block.skip + delta * sum_dhB, du_ + row, width);
    const Lanes d_delta = (sum_gA + u * sum_dhB) * slopes_[t];
    store_lanes(d_delta, ddelta_ + row, width);
    dbias_ += d_delta;
  }

  const ScanPointers& p_;
  const ScanShape& s_;
  const PartialLayout layout_;
  const int64_t first_token_;  // of the slot's first batch row
  const int64_t chunk_, chunks_;
  const float* kept_;
  const float* dout_;
  float *du_, *ddelta_, *dz_;  // dz_ null without z
  float* partial_;
  LanesBuffer h_, dh_, dA_;   // N each: the state, d(state) and this item's dA
  LanesBuffer checkpoints_;   // chunks · N: h before the first step of each chunk
  LanesBuffer states_;        // chunk steps · N: h_t for the steps of one chunk
  LanesBuffer decays_;        // chunk steps · N: a_t = exp(Δ_t A) for the steps of one chunk
  LanesBuffer deltas_, slopes_;  // L: Δ_t and dΔ_t/d(delta_t) for every step (L lanes, not L·N)
  Lanes dD_, dbias_;          // this item's sums
};

}  // namespace

// The reverse-time scan of BackwardThread, over the work items in parallel; the shared gradients are summed
// per slot of work items and then added in slot order, so that they depend neither on scheduling nor on
// the thread count.
SelectiveScanGrads selective_scan_backward(const Tensor& grad_out, const SelectiveScanInputs& in, int64_t chunk) {
  const ScanShape s = check_scan_inputs(in);
  check_shape(grad_out, {s.batch, s.length, s.channels}, "selective_scan: grad_out");
  if (chunk < 1) {
    throw std::invalid_argument("selective_scan: chunk must be at least 1, found " + std::to_string(chunk));
  }
  const int64_t L = s.length, E = s.channels, N = s.state;
  if (common_device("selective_scan", {&grad_out, in.u, in.delta, in.A, in.B, in.C, in.D, in.z, in.delta_bias}) ==
      Device::cuda) {
    // The CUDA kernels keep their own checkpoints (every 64 steps, and every 8 within); `chunk` is the CPU's.
    SelectiveScanGrads grads;
    grads.A = Tensor({E, N}, Device::cuda);
    if (present(in.D)) grads.D = Tensor({E}, Device::cuda);
    if (present(in.delta_bias)) grads.delta_bias = Tensor({E}, Device::cuda);
    backward_cuda(grad_out, in, s, grads, grads.A, false, grads.D.defined() ? &grads.D : nullptr,
                  grads.delta_bias.defined() ? &grads.delta_bias : nullptr);
    return grads;
  }
  const ScanPointers p = scan_pointers(in);
  SelectiveScanGrads grads;  // every value of u, delta and z is written by the threads
  grads.u = Tensor::empty({s.batch, L, E});
  grads.delta = Tensor::empty({s.batch, L, E});
  if (p.z) grads.z = Tensor::empty({s.batch, L, E});

  // The shared gradients are summed per slot: kBackwardSlots contiguous ranges of work items (batch-row
  // major), each range's items in order, then the slots' sums are added in slot order. The slots run in
  // parallel, so the sums are the same bits at any thread count. A slot's dB and dC cover the batch rows
  // its items touch: about (B + slots) · L · N values in all.
  const int64_t items = L > 0 ? work_items(s) : 0;
  const int64_t blocks = (E + kLanes - 1) / kLanes;
  const int64_t slots = std::max<int64_t>(1, std::min(items, kBackwardSlots));
  struct Slot {
    int64_t first_item, end_item, first_row, rows;
    std::vector<float> partial;
  };
  std::vector<Slot> slot_sums(static_cast<size_t>(slots));
  for (int64_t g = 0; g < slots; ++g) {
    Slot& slot = slot_sums[static_cast<size_t>(g)];
    slot.first_item = items * g / slots;
    slot.end_item = items * (g + 1) / slots;
    slot.first_row = blocks > 0 ? slot.first_item / blocks : 0;  // (E = 0: no items)
    slot.rows = slot.end_item > slot.first_item ? (slot.end_item - 1) / blocks - slot.first_row + 1 : 0;
    slot.partial.assign(static_cast<size_t>(PartialLayout(s, slot.rows).size), 0.0f);  // (outside the threads)
  }
  // The forward's checkpoints, when it kept them for this chunk length.
  const float* kept = nullptr;
  if (chunk == kSelectiveScanChunk && present(in.checkpoints)) {
    check_shape(*in.checkpoints, checkpoint_shape(s, chunk), "selective_scan: checkpoints");
    check_same_device(*in.checkpoints, *in.u, "selective_scan: checkpoints");
    kept = in.checkpoints->data();
  }

#pragma omp parallel for schedule(static) if (slots > 1 && s.batch * L * E * N >= kParallelMinimumWork)
  for (int64_t g = 0; g < slots; ++g) {
    Slot& slot = slot_sums[static_cast<size_t>(g)];
    BackwardThread thread(p, s, chunk, kept, grad_out.data(), grads, slot.partial.data(), slot.first_row, slot.rows);
    for (int64_t item = slot.first_item; item < slot.end_item; ++item) thread.run(item);
  }

  // The slots' sums, added in slot order.
  grads.A = Tensor({E, N});
  if (p.D) grads.D = Tensor({E});
  if (p.delta_bias) grads.delta_bias = Tensor({E});
  grads.B = Tensor({s.batch, L, N});
  grads.C = Tensor({s.batch, L, N});
  for (const Slot& slot : slot_sums) {
    const PartialLayout layout(s, slot.rows);
    const float* partial = slot.partial.data();
    for (int64_t i = 0; i < E * N; ++i) grads.A[i] += partial[i];
    for (int64_t e = 0; e < E; ++e) {
      if (p.D) grads.D[e] += partial[layout.D + e];
      if (p.delta_bias) grads.delta_bias[e] += partial[layout.bias + e];
    }
    const int64_t count = slot.rows * L * N, offset = slot.first_row * L * N;
    float *dB = grads.B.data() + offset, *dC = grads.C.data() + offset;
#pragma omp parallel for schedule(static) if (count >= kParallelMinimumWork)
    for (int64_t i = 0; i < count; ++i) {
      dB[i] += partial[layout.B + i];
      dC[i] += partial[layout.C + i];
    }
  }
  return grads;
}

}  // namespace mr1
