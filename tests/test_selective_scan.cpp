// The selective scan: a hand-worked case, agreement with a sequential double-precision loop,
// gradients of every input against finite differences (chunked recompute included), and the
// shape errors.
#include "kernels/selective_scan.h"
#include "kernels/elementwise.h"
#include "kernels/selective_scan_cuda.h"

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace {

using namespace mr1;
using namespace mr1::test;

struct ScanCase {
  const char* name;
  int64_t batch, length, channels, state;  // B, L, E, N
  bool with_D, with_z, with_delta_bias, softplus;
  float delta_scale;  // delta ~ U(±delta_scale) with softplus
};

// Every option on, delta of order 1.
ScanCase full_case(const char* name, int64_t batch, int64_t length, int64_t channels, int64_t state) {
  return {name, batch, length, channels, state, true, true, true, true, 1.0f};
}

std::string describe(const ScanCase& c) {
  std::ostringstream text;
  text << c.name << ": B=" << c.batch << " L=" << c.length << " E=" << c.channels << " N=" << c.state
       << (c.with_D ? " +D" : "") << (c.with_z ? " +z" : "") << (c.with_delta_bias ? " +delta_bias" : "")
       << (c.softplus ? " +softplus" : "") << " delta_scale=" << c.delta_scale;
  return text.str();
}

// x ← f(x) for every element.
template <typename Function>
Tensor mapped(Tensor tensor, Function f) {
  for (int64_t i = 0; i < tensor.numel(); ++i) tensor[i] = f(tensor[i]);
  return tensor;
}

// The inputs of one case; D, z and delta_bias are undefined where the case leaves them out.
struct ScanTensors {
  Tensor u, delta, A, B, C, D, z, delta_bias;
  bool softplus = true;

  SelectiveScanInputs inputs() const {
    SelectiveScanInputs in;
    in.u = &u;
    in.delta = &delta;
    in.A = &A;
    in.B = &B;
    in.C = &C;
    in.D = D.defined() ? &D : nullptr;
    in.z = z.defined() ? &z : nullptr;
    in.delta_bias = delta_bias.defined() ? &delta_bias : nullptr;
    in.delta_softplus = softplus;
    return in;
  }
};

ScanTensors make_scan_tensors(const ScanCase& c, uint64_t seed) {
  const int64_t B = c.batch, L = c.length, E = c.channels, N = c.state;
  ScanTensors t;
  t.softplus = c.softplus;
  t.u = random_tensor({B, L, E}, seed);
  // With softplus, Δ = softplus(delta + bias) > 0 for any delta; without, keep Δ in (0, 0.6) as a model would.
  t.delta = c.softplus ? random_tensor({B, L, E}, seed + 1, c.delta_scale)
                       : mapped(random_tensor({B, L, E}, seed + 1), [](float x) { return 0.3f + 0.25f * x; });
  t.A = mapped(random_tensor({E, N}, seed + 2), [](float x) { return -std::exp(1.25f * x + 0.25f); });  // [−4.5, −0.37]
  t.B = random_tensor({B, L, N}, seed + 3);
  t.C = random_tensor({B, L, N}, seed + 4);
  if (c.with_D) t.D = random_tensor({E}, seed + 5);
  if (c.with_z) t.z = random_tensor({B, L, E}, seed + 6, 2.0f);
  if (c.with_delta_bias) t.delta_bias = random_tensor({E}, seed + 7, c.softplus ? 0.5f : 0.05f);
  return t;
}

// The inputs in double; empty where absent.
struct ScanValues {
  std::vector<double> u, delta, A, B, C, D, z, delta_bias;
};

ScanValues values_of(const ScanTensors& t) {
  auto values = [](const Tensor& tensor) { return tensor.defined() ? to_double(tensor) : std::vector<double>{}; };
  return {values(t.u), values(t.delta), values(t.A), values(t.B), values(t.C),
          values(t.D), values(t.z),     values(t.delta_bias)};
}

// The scan as DESIGN.md §2 writes it, one channel at a time, in double:
//   Δ = softplus(delta + delta_bias)  (PyTorch's: v above 20 is kept as is)
//   h_t[n] = exp(Δ_t A[e, n]) h_{t−1}[n] + Δ_t u_t B_t[n],   y_t = Σ_n h_t[n] C_t[n] + D u_t,   out = y ⊙ silu(z)
std::vector<double> reference_scan(const ScanCase& c, const ScanValues& v, std::vector<double>* final_state = nullptr) {
  const int64_t L = c.length, E = c.channels, N = c.state;
  std::vector<double> out(c.batch * L * E);
  if (final_state) final_state->assign(c.batch * E * N, 0.0);
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t e = 0; e < E; ++e) {
      std::vector<double> h(N, 0.0);
      for (int64_t t = 0; t < L; ++t) {
        const int64_t i = (b * L + t) * E + e;
        const double x = v.delta[i] + (v.delta_bias.empty() ? 0.0 : v.delta_bias[e]);
        const double dt = !c.softplus ? x : x > 20 ? x : std::log1p(std::exp(x));
        double y = v.D.empty() ? 0.0 : v.D[e] * v.u[i];
        for (int64_t n = 0; n < N; ++n) {
          const int64_t bn = (b * L + t) * N + n;
          h[n] = std::exp(dt * v.A[e * N + n]) * h[n] + dt * v.u[i] * v.B[bn];
          y += h[n] * v.C[bn];
        }
        if (!v.z.empty()) y *= v.z[i] / (1 + std::exp(-v.z[i]));
        out[i] = y;
      }
      if (final_state) std::copy(h.begin(), h.end(), final_state->begin() + (b * E + e) * N);
    }
  }
  return out;
}

void check_forward(const ScanCase& c) {
  INFO(describe(c));
  const ScanTensors tensors = make_scan_tensors(c, 101);
  Tensor final_state;
  const Tensor out = selective_scan_forward(tensors.inputs(), &final_state);
  std::vector<double> expected_state;
  const std::vector<double> expected = reference_scan(c, values_of(tensors), &expected_state);
  // Float rounding of N-term sums carried through decaying states, and Eigen's exp/log1p (1–2 ulp):
  // observed ≤ 3.2e-7 on values ≤ 3 and ≤ 1.3e-7 relative on the seed example's values up to 47.
  require_close(out, expected, 2e-6, 2e-6, "out");
  require_close(final_state, expected_state, 2e-6, 2e-6, "final_state");
}

// Each input of the scan: its tensor, its double values and its gradient.
struct ScanInput {
  const char* name;
  Tensor ScanTensors::*tensor;
  std::vector<double> ScanValues::*values;
  Tensor SelectiveScanGrads::*grad;
};

const ScanInput kScanInputs[] = {
    {"u", &ScanTensors::u, &ScanValues::u, &SelectiveScanGrads::u},
    {"delta", &ScanTensors::delta, &ScanValues::delta, &SelectiveScanGrads::delta},
    {"A", &ScanTensors::A, &ScanValues::A, &SelectiveScanGrads::A},
    {"B", &ScanTensors::B, &ScanValues::B, &SelectiveScanGrads::B},
    {"C", &ScanTensors::C, &ScanValues::C, &SelectiveScanGrads::C},
    {"D", &ScanTensors::D, &ScanValues::D, &SelectiveScanGrads::D},
    {"z", &ScanTensors::z, &ScanValues::z, &SelectiveScanGrads::z},
    {"delta_bias", &ScanTensors::delta_bias, &ScanValues::delta_bias, &SelectiveScanGrads::delta_bias},
};

void check_backward(const ScanCase& c, int64_t chunk) {
  INFO(describe(c) << ", chunk " << chunk);
  const ScanTensors tensors = make_scan_tensors(c, 202);
  const Tensor grad_out = random_tensor({c.batch, c.length, c.channels}, 203);
  const std::vector<double> weights = to_double(grad_out);
  const ScanValues values = values_of(tensors);
  const SelectiveScanGrads grads = selective_scan_backward(grad_out, tensors.inputs(), chunk);
  for (const ScanInput& input : kScanInputs) {
    INFO("input " << input.name);
    if (!(tensors.*input.tensor).defined()) {
      CHECK_FALSE((grads.*input.grad).defined());
      continue;
    }
    CHECK((grads.*input.grad).shape() == (tensors.*input.tensor).shape());
    const std::vector<double> expected = finite_difference(
        [&](const std::vector<double>& x) {
          ScanValues changed = values;
          changed.*input.values = x;
          return weighted_sum(reference_scan(c, changed), weights);
        },
        values.*input.values);
    // Float gradients summed over L·N terms (B·L·E for A, D, delta_bias); the double finite
    // differences are good to ~1e-9. Observed ≤ 3.6e-7 on values ≤ 2.6, so 5e-6 leaves > 10× room.
    require_close(grads.*input.grad, expected, 5e-6, 5e-6, std::string("d") + input.name);
  }
}

}  // namespace

TEST_CASE("selective_scan: a hand-worked case") {
  // B = L = E = N = 1, delta = 0 with softplus so Δ = log 2, A = −1 so exp(Δ A) = ½; D = ½,
  // u = (2, −1), B = (1, 3), C = (1, 2):
  //   h0 = ½·0 + log2·2·1         = 2 log2           y0 = 2 log2 · 1 + ½·2    = 2 log2 + 1  = 2.3862943611
  //   h1 = ½·2 log2 + log2·(−1)·3 = −2 log2          y1 = −2 log2 · 2 + ½·(−1) = −4 log2 − ½ = −3.2725887222
  const Tensor u = Tensor::from({1, 2, 1}, {2, -1});
  const Tensor delta = Tensor::from({1, 2, 1}, {0, 0});
  const Tensor A = Tensor::from({1, 1}, {-1});
  const Tensor B = Tensor::from({1, 2, 1}, {1, 3});
  const Tensor C = Tensor::from({1, 2, 1}, {1, 2});
  const Tensor D = Tensor::from({1}, {0.5f});
  const Tensor delta_bias = Tensor::from({1}, {0});
  SelectiveScanInputs in;
  in.u = &u;
  in.delta = &delta;
  in.A = &A;
  in.B = &B;
  in.C = &C;
  in.D = &D;
  in.delta_bias = &delta_bias;
  Tensor final_state;
  const Tensor out = selective_scan_forward(in, &final_state);
  const double log2 = std::log(2.0);
  // Values of size ≤ 4 through a handful of float operations and Eigen's exp/log1p: a few ulp.
  require_close(out, std::vector<double>{2 * log2 + 1, -4 * log2 - 0.5}, 2e-6, 0, "out");
  require_close(final_state, std::vector<double>{-2 * log2}, 2e-6, 0, "final_state");
}

TEST_CASE("selective_scan_forward matches a sequential double-precision loop") {
  const ScanCase cases[] = {
      full_case("one step", 2, 1, 5, 4),
      full_case("partial channel block", 2, 13, 20, 16),
      full_case("N = 64", 1, 9, 3, 64),
      {"no options", 2, 10, 17, 8, false, false, false, false, 1.0f},
      {"softplus only", 1, 8, 4, 4, false, false, false, true, 1.0f},
      {"gate and skip, no bias, no softplus", 2, 6, 3, 5, true, true, false, false, 1.0f},
      // Δ from 1e-13 to 30: exp(Δ A) underflows to 0 and softplus crosses its threshold of 20.
      {"large delta", 1, 12, 16, 8, true, true, true, true, 30.0f},
      full_case("seed-example", 4, 512, 256, 16),
      full_case("empty sequence", 2, 0, 3, 4),
  };
  for (const ScanCase& c : cases) check_forward(c);
}

TEST_CASE("selective_scan_backward matches finite differences of the double loop") {
  check_backward(full_case("all options", 2, 7, 3, 4), 3);  // chunks of 3, 3 and 1 steps
  check_backward(full_case("all options", 2, 7, 3, 4), 64);  // one chunk
  check_backward(full_case("L = 1", 1, 1, 2, 3), 3);
  check_backward({"no options", 2, 5, 2, 3, false, false, false, false, 1.0f}, 2);
  check_backward(full_case("two channel blocks", 1, 4, 18, 2), 3);
  check_backward(full_case("N = 64", 1, 3, 2, 64), 2);
  check_backward(full_case("empty sequence", 2, 0, 3, 4), 3);
  check_backward(full_case("no channels", 2, 5, 0, 4), 3);
  // 2 rows x 3 blocks of 16 channels (the last partial) = 6 work items, one a slot; 40 rows x 1 block = 40
  // items over 32 slots (some slots span two batch rows).
  check_backward(full_case("blocks across rows", 2, 6, 40, 3), 4);
  check_backward(full_case("more items than slots", 40, 3, 5, 2), 2);
}

TEST_CASE("selective_scan_backward gives the same gradients for every chunk size") {
  const ScanCase c = full_case("long", 2, 100, 20, 8);
  const ScanTensors tensors = make_scan_tensors(c, 303);
  const Tensor grad_out = random_tensor({c.batch, c.length, c.channels}, 304);
  const SelectiveScanGrads reference = selective_scan_backward(grad_out, tensors.inputs(), c.length);
  for (const int64_t chunk : {int64_t{1}, int64_t{7}, kSelectiveScanChunk, int64_t{1000}}) {
    INFO("chunk " << chunk);
    const SelectiveScanGrads grads = selective_scan_backward(grad_out, tensors.inputs(), chunk);
    for (const ScanInput& input : kScanInputs) {
      // The recomputed states repeat the same float operations from an exact copy: identical
      // up to how the compiler fuses multiply-adds in its inlined copies of the step.
      require_close(grads.*input.grad, reference.*input.grad, 1e-6, 1e-6, std::string("d") + input.name);
    }
  }
}

TEST_CASE("selective_scan_backward from the forward's checkpoints gives the same bits as without them") {
  const ScanCase cases[] = {
      full_case("four chunks, the last partial, a partial channel block", 2, 200, 20, 8),
      full_case("one whole chunk", 1, 64, 16, 4),
      full_case("shorter than a chunk", 2, 30, 3, 16),
      {"no options", 1, 130, 17, 5, false, false, false, false, 1.0f},
  };
  uint64_t seed = 330;
  for (const ScanCase& c : cases) {
    INFO(describe(c));
    const ScanTensors tensors = make_scan_tensors(c, ++seed);
    const Tensor grad_out = random_tensor({c.batch, c.length, c.channels}, ++seed);
    Tensor checkpoints;
    const Tensor out = selective_scan_forward(tensors.inputs(), nullptr, &checkpoints);
    REQUIRE(out.to_vector() == selective_scan_forward(tensors.inputs()).to_vector());
    // h before steps 0, 64, 128, …: one per chunk, N states of 16 channel lanes per work item.
    const int64_t items = c.batch * ((c.channels + 15) / 16);
    CHECK(checkpoints.shape() == Shape{items, (c.length + 63) / 64, c.state, 16});

    SelectiveScanInputs with = tensors.inputs();
    with.checkpoints = &checkpoints;
    const SelectiveScanGrads reference = selective_scan_backward(grad_out, tensors.inputs());
    const SelectiveScanGrads grads = selective_scan_backward(grad_out, with);
    for (const ScanInput& input : kScanInputs) {
      INFO("d" << input.name);
      if (!(reference.*input.grad).defined()) continue;
      CHECK((grads.*input.grad).to_vector() == (reference.*input.grad).to_vector());
    }
    // Another chunk length ignores them.
    const SelectiveScanGrads small = selective_scan_backward(grad_out, with, 7);
    CHECK(small.u.to_vector() == selective_scan_backward(grad_out, tensors.inputs(), 7).u.to_vector());
  }
  // Checkpoints of another shape are refused, naming them.
  const ScanTensors tensors = make_scan_tensors(full_case("mismatch", 1, 70, 16, 4), 340);
  const Tensor wrong({1, 1, 4, 16});
  SelectiveScanInputs with = tensors.inputs();
  with.checkpoints = &wrong;
  REQUIRE_THROWS_WITH(selective_scan_backward(random_tensor({1, 70, 16}, 341), with),
                      Catch::Matchers::Contains("checkpoints"));
}

TEST_CASE("selective_scan_backward_accumulate adds A_log's, D's and the bias's gradients in place, exactly") {
  const ScanCase c = full_case("accumulate", 2, 70, 20, 8);
  const ScanTensors tensors = make_scan_tensors(c, 311);
  const Tensor grad_out = random_tensor({c.batch, c.length, c.channels}, 312);
  const SelectiveScanGrads reference = selective_scan_backward(grad_out, tensors.inputs());
  // Gradients that already hold something, as a parameter's do after an earlier block's backward.
  const Tensor A_log_start = random_tensor({c.channels, c.state}, 313), D_start = random_tensor({c.channels}, 314),
               bias_start = random_tensor({c.channels}, 315);
  Tensor grad_A_log = A_log_start.clone(), grad_D = D_start.clone(), grad_bias = bias_start.clone();
  const SelectiveScanGrads grads =
      selective_scan_backward_accumulate(grad_out, tensors.inputs(), grad_A_log, &grad_D, &grad_bias);
  const Tensor products = multiply(reference.A, tensors.A);  // dL/dA_log = dL/dA ⊙ A, for A = −exp(A_log)
  for (int64_t i = 0; i < grad_A_log.numel(); ++i) REQUIRE(grad_A_log[i] == A_log_start[i] + products[i]);
  for (int64_t e = 0; e < c.channels; ++e) {
    REQUIRE(grad_D[e] == D_start[e] + reference.D[e]);
    REQUIRE(grad_bias[e] == bias_start[e] + reference.delta_bias[e]);
  }
  // The other gradients as the plain backward's; the parameters' are not returned.
  CHECK(grads.u.to_vector() == reference.u.to_vector());
  CHECK(grads.delta.to_vector() == reference.delta.to_vector());
  CHECK(grads.B.to_vector() == reference.B.to_vector());
  CHECK(grads.C.to_vector() == reference.C.to_vector());
  CHECK(grads.z.to_vector() == reference.z.to_vector());
  CHECK(!grads.A.defined());
  CHECK(!grads.D.defined());
  CHECK(!grads.delta_bias.defined());

  // D's gradient given without D, or missing with it; a wrong shape names the tensor.
  ScanTensors plain = tensors;
  plain.D = Tensor();
  REQUIRE_THROWS_WITH(selective_scan_backward_accumulate(grad_out, plain.inputs(), grad_A_log, &grad_D, &grad_bias),
                      Catch::Matchers::Contains("grad_D must be given only with D"));
  REQUIRE_THROWS_WITH(selective_scan_backward_accumulate(grad_out, tensors.inputs(), grad_A_log, &grad_D, nullptr),
                      Catch::Matchers::Contains("grad_delta_bias must be given with delta_bias"));
  Tensor wrong({c.channels, c.state + 1});
  REQUIRE_THROWS_WITH(selective_scan_backward_accumulate(grad_out, tensors.inputs(), wrong, &grad_D, &grad_bias),
                      Catch::Matchers::Contains("grad_A_log"));
}

TEST_CASE("the CUDA scan cuts the sequence into pieces only when its grid is short of the device") {
  const auto pieces = [](int64_t B, int64_t L, int64_t E, int64_t N, int multiprocessors, int64_t requested = 0) {
    const SelectiveScanPieces cut = selective_scan_cuda_pieces(B, L, E, N, multiprocessors, requested);
    return std::vector<int64_t>{cut.count, cut.span};
  };
  // The seed example on 132 multiprocessors: N 16 is 2 lanes, 64 channels a block, 4 · 4 = 16 blocks;
  // ⌈264 / 16⌉ = 17 pieces wanted, 8 segments of 64 steps: 8 pieces of 64.
  CHECK(pieces(4, 512, 256, 16, 132) == std::vector<int64_t>{8, 64});
  // The bandwidth target's shape: 8 · 32 = 256 blocks fill 132 multiprocessors: one piece.
  CHECK(pieces(8, 2048, 2048, 16, 132) == std::vector<int64_t>{1, 2048});
  // Batch 1, E 768: 12 blocks; 22 pieces wanted of 32 segments: 2 segments a piece, so 16 pieces of 128.
  CHECK(pieces(1, 2048, 768, 16, 132) == std::vector<int64_t>{16, 128});
  // N 256 is 32 lanes, 4 channels a block: 2 blocks; at most one piece per segment (L 100: 2).
  CHECK(pieces(1, 100, 8, 256, 132) == std::vector<int64_t>{2, 64});
  // Asked: 3 pieces of 4 segments cannot be even: 2 segments a piece, so 2 pieces; more than the
  // segments: one each; none for an empty sequence.
  CHECK(pieces(2, 200, 37, 16, 1, 3) == std::vector<int64_t>{2, 128});
  CHECK(pieces(2, 200, 37, 16, 1, 9) == std::vector<int64_t>{4, 64});
  CHECK(pieces(2, 0, 37, 16, 132)[0] == 1);
  CHECK(pieces(0, 512, 37, 16, 132)[0] == 1);  // no batch rows, or no channels: no blocks
  CHECK(pieces(2, 512, 0, 16, 132)[0] == 1);
  // One multiprocessor (the emulator): never cut unless asked.
  CHECK(pieces(1, 4096, 8, 16, 1) == std::vector<int64_t>{1, 4096});
}

TEST_CASE("selective_scan names the argument and both shapes on a mismatch") {
  const ScanTensors t = make_scan_tensors(full_case("shapes", 2, 5, 3, 4), 404);
  auto forward_with = [&](Tensor ScanTensors::*member, Shape shape) {
    ScanTensors changed = t;
    changed.*member = Tensor(std::move(shape));
    selective_scan_forward(changed.inputs());
  };
  REQUIRE_THROWS_WITH(forward_with(&ScanTensors::B, {2, 5, 3}), "selective_scan: B: expected shape (2, 5, 4), found (2, 5, 3)");
  REQUIRE_THROWS_WITH(forward_with(&ScanTensors::C, {2, 4, 4}), "selective_scan: C: expected shape (2, 5, 4), found (2, 4, 4)");
  REQUIRE_THROWS_WITH(forward_with(&ScanTensors::A, {4, 4}), "selective_scan: A: expected shape (3, *), found (4, 4)");
  REQUIRE_THROWS_WITH(forward_with(&ScanTensors::delta, {2, 5, 2}),
                      "selective_scan: delta: expected shape (2, 5, 3), found (2, 5, 2)");
  REQUIRE_THROWS_WITH(forward_with(&ScanTensors::D, {4}), "selective_scan: D: expected shape (3), found (4)");
  REQUIRE_THROWS_WITH(forward_with(&ScanTensors::z, {2, 5}), "selective_scan: z: expected shape (2, 5, 3), found (2, 5)");
  REQUIRE_THROWS_WITH(forward_with(&ScanTensors::delta_bias, {1, 3}),
                      "selective_scan: delta_bias: expected shape (3), found (1, 3)");
  REQUIRE_THROWS_WITH(forward_with(&ScanTensors::u, {2, 5}), "selective_scan: u: expected shape (*, *, *), found (2, 5)");

  SelectiveScanInputs missing = t.inputs();
  missing.C = nullptr;
  REQUIRE_THROWS_WITH(selective_scan_forward(missing), "selective_scan: input C is missing");
  REQUIRE_THROWS_WITH(selective_scan_backward(Tensor({2, 5, 4}), t.inputs()),
                      "selective_scan: grad_out: expected shape (2, 5, 3), found (2, 5, 4)");
  REQUIRE_THROWS_WITH(selective_scan_backward(Tensor({2, 5, 3}), t.inputs(), 0),
                      "selective_scan: chunk must be at least 1, found 0");
}
