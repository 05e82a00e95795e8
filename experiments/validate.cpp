// mamba-r1 validate [FILE.toml] [--only TEXT]: CUDA against the CPU reference. Every op runs on both
// backends from the same random inputs over a table of named shapes, then the whole model forward and
// backward and its recurrent inference (the file's model, or a built-in seed-like one); one line per op
// and shape gives the worst of its outputs: normalised error and largest absolute difference against the
// stated tolerance, and pass or fail. --only keeps the ops whose name contains TEXT. Exit 0 when all
// pass, 1 on any mismatch or error, 3 when no GPU can be used.
// Shape letters: B batch, L length, T = B·L tokens, D dim, E d_inner, N d_state, K d_conv, R dt_rank,
// X experts, F expert_dim, k choices per token, V vocabulary.
#include "experiments/validate.h"

#include <omp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <numeric>
#include <sstream>

#include "blocks/catalog.h"
#include "blocks/model.h"
#include "blocks/random.h"
#include "experiments/commands.h"
#include "experiments/experiment.h"
#include "experiments/loss.h"
#include "experiments/trainer.h"
#include "kernels/activation.h"
#include "kernels/conv1d.h"
#include "kernels/cross_entropy.h"
#include "kernels/cuda_device.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/grouped_linear.h"
#include "kernels/linear.h"
#include "kernels/norm.h"
#include "kernels/optimizer_ops.h"
#include "kernels/rotary.h"
#include "kernels/routing.h"
#include "kernels/routing_cuda.h"
#include "kernels/selective_scan.h"
#include "kernels/small_ops.h"
#include "kernels/ssm_step.h"

namespace mr1 {

Comparison compare_values(const std::vector<double>& actual, const std::vector<double>& reference) {
  constexpr double kInfinity = std::numeric_limits<double>::infinity();
  Comparison result;
  if (actual.size() != reference.size()) return {kInfinity, kInfinity, 0};
  double squared_error = 0, squared_reference = 0;
  bool mismatch = false;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double a = actual[i], r = reference[i];
    if (!std::isfinite(a) || !std::isfinite(r)) {
      const bool same = a == r || (std::isnan(a) && std::isnan(r));
      mismatch = mismatch || !same;
      continue;
    }
    squared_error += (a - r) * (a - r);
    squared_reference += r * r;
    result.max_abs = std::max(result.max_abs, std::abs(a - r));
    result.max_reference = std::max(result.max_reference, std::abs(r));
  }
  if (mismatch) return {kInfinity, kInfinity, result.max_reference};
  result.nmse = squared_reference > 0 ? squared_error / squared_reference : squared_error;
  return result;
}

Comparison compare_tensors(const Tensor& actual, const Tensor& reference) {
  const std::vector<float> a = actual.to_vector(), r = reference.to_vector();
  return compare_values(std::vector<double>(a.begin(), a.end()), std::vector<double>(r.begin(), r.end()));
}

double Tolerance::absolute_limit(const Comparison& comparison) const {
  return max_abs * std::max(1.0, comparison.max_reference);
}

bool Tolerance::accepts(const Comparison& comparison) const {
  return comparison.nmse <= nmse && comparison.max_abs <= absolute_limit(comparison);
}

namespace {

// Tolerances, each with its reason.
// The same float operations in the same order (copies, gathers, the grouped scatter-add, masks, the
// optimizer updates): at most the rounding of a fused multiply-add apart.
constexpr Tolerance kExact{1e-12, 1e-6};
// Transcendentals (CUDA's expf, erff, log1pf are within 2 ulp) and row sums in another order (warp sums).
constexpr Tolerance kElementwise{1e-11, 1e-5};
// float32 GEMMs and long sums in another order (cuBLAS's blocking, per-segment column sums): relative
// errors of about √K · 2⁻²⁴.
constexpr Tolerance kSums{1e-9, 1e-4};
// The selective scan: exp2f(Δ·log2e·A) against the CPU's exp(Δ·A) through up to 1000 recurrent steps;
// in the backward, sums over B·L (dA) and over E (dB, dC) in another order than the CPU's.
constexpr Tolerance kScan{1e-8, 1e-3};
// The whole model: all of the above through every block, forward and backward.
constexpr Tolerance kModel{1e-6, 1e-2};

struct ShapeConfig {
  const char* name;
  int64_t B, L, D, E, N, K, R, X, F, k, V;
};

// The named shapes: the seed example's, a 130M-like Mamba layer, an 8-expert top-2 MoE, and odd sizes.
// clang-format off
const std::vector<ShapeConfig> kShapes = {
    // name               B     L    D     E    N  K   R  X     F  k      V
    {"seed-example",      4,  512, 256,  256,  16, 2, 16, 4,  512, 1,   256},
    {"mamba-130m-like",   2,  512, 768, 1536,  16, 4, 48, 8, 3072, 1, 50280},
    {"moe-8x-top2",       4,  256, 512, 1024,  16, 4, 32, 8, 1024, 2,  1000},
    {"L=1",               3,    1,  64,  128,  16, 4,  4, 4,  128, 2,   100},
    {"L=1000",            2, 1000,  64,   96,  16, 3,  4, 4,   96, 1,   100},
    {"N=64",              2,  300, 128,  256,  64, 4,  8, 4,  256, 1,   100},
    {"N=256",             1,  200,  64,  128, 256, 8,  4, 4,  128, 1,   100},
    {"odd-sizes",         3,   77,  38,   74,   5, 1,  3, 3,   45, 2,    97},
};
// clang-format on

std::string dims(std::initializer_list<std::pair<const char*, int64_t>> named) {
  std::ostringstream out;
  bool first = true;
  for (const auto& [letter, value] : named) {
    out << (first ? "" : " ") << letter << "=" << value;
    first = false;
  }
  return out.str();
}

Tensor uniform(Shape shape, uint64_t seed, double low, double high) {
  Tensor tensor(std::move(shape));
  Random random(seed);
  random.fill_uniform(tensor, low, high);
  return tensor;
}

Tensor gpu(const Tensor& tensor) { return tensor.to(Device::cuda); }

std::vector<double> as_doubles(const std::vector<float>& values) { return {values.begin(), values.end()}; }
template <typename Integer>
std::vector<double> integers_as_doubles(const std::vector<Integer>& values) {
  return {values.begin(), values.end()};
}

struct Output {
  std::string name;
  Comparison comparison;
  Tolerance tolerance;
};
using Outputs = std::vector<Output>;

void add(Outputs& outputs, const std::string& name, const Tensor& actual, const Tensor& reference,
         Tolerance tolerance) {
  outputs.push_back({name, compare_tensors(actual, reference), tolerance});
}

void add_scalar(Outputs& outputs, const std::string& name, double actual, double reference, Tolerance tolerance) {
  outputs.push_back({name, compare_values({actual}, {reference}), tolerance});
}

// Runs each check and prints its line; counts failures. With a filter, only the ops whose name contains it.
class Report {
 public:
  explicit Report(std::string only = "") : only_(std::move(only)) {}

  // `body` computes the op's outputs on both backends; an exception is a failure that prints its message.
  // The table's header comes before the first check (none when the filter matches no op).
  void run(const std::string& op, const std::string& config, const std::string& dimensions,
           const std::function<void(Outputs&)>& body) {
    if (op.find(only_) == std::string::npos) return;
    if (checks_++ == 0) {
      std::printf("%-28s %-17s %-34s %9s %9s  %8s %9s  %-6s %s\n", "op", "shape", "dimensions", "nmse", "max|d|",
                  "<= nmse", "<= max|d|", "result", "worst output");
    }
    Outputs outputs;
    try {
      body(outputs);
    } catch (const std::exception& error) {
      ++failures_;
      std::printf("%-28s %-17s %-34s FAIL: %s\n", op.c_str(), config.c_str(), dimensions.c_str(), error.what());
      std::fflush(stdout);
      return;
    }
    // The worst output: the largest ratio of error to tolerance.
    const Output* worst = nullptr;
    double worst_ratio = -1;
    bool passed = true;
    for (const Output& output : outputs) {
      const double ratio = std::max(output.comparison.nmse / output.tolerance.nmse,
                                    output.comparison.max_abs / output.tolerance.absolute_limit(output.comparison));
      if (!(ratio <= worst_ratio)) {
        worst_ratio = ratio;
        worst = &output;
      }
      passed = passed && output.tolerance.accepts(output.comparison);
    }
    if (!passed) ++failures_;
    if (!worst) {
      std::printf("%-28s %-17s %-34s (no outputs)\n", op.c_str(), config.c_str(), dimensions.c_str());
      return;
    }
    std::printf("%-28s %-17s %-34s %9.2e %9.2e  %8.0e %9.2e  %-6s %s\n", op.c_str(), config.c_str(),
                dimensions.c_str(), worst->comparison.nmse, worst->comparison.max_abs, worst->tolerance.nmse,
                worst->tolerance.absolute_limit(worst->comparison), passed ? "pass" : "FAIL", worst->name.c_str());
    if (!passed) {
      for (const Output& output : outputs) {
        if (output.tolerance.accepts(output.comparison)) continue;
        std::printf("    failing output %-24s nmse %.3e (<= %.0e), max|d| %.3e (<= %.3e), max|reference| %.3e\n",
                    output.name.c_str(), output.comparison.nmse, output.tolerance.nmse, output.comparison.max_abs,
                    output.tolerance.absolute_limit(output.comparison), output.comparison.max_reference);
      }
    }
    std::fflush(stdout);
  }

  int checks() const { return checks_; }
  int failures() const { return failures_; }

 private:
  std::string only_;
  int checks_ = 0, failures_ = 0;
};

// The GEMMs of in_proj (D → E) and of dt_proj (R → E, a small inner dimension).
void check_linear(Report& report, const ShapeConfig& c) {
  const int64_t T = c.B * c.L;
  for (const auto& [I, O] : {std::pair<int64_t, int64_t>{c.D, c.E}, {c.R, c.E}}) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(I));
    const Tensor x = uniform({T, I}, 11, -1, 1), weight = uniform({O, I}, 12, -bound, bound);
    const Tensor bias = uniform({O}, 13, -bound, bound), grad_y = uniform({T, O}, 14, -1, 1);
    const std::string shape = dims({{"T", T}, {"I", I}, {"O", O}});
    report.run("linear_forward", c.name, shape, [&](Outputs& out) {
      const Tensor gpu_bias = gpu(bias);
      add(out, "y", linear_forward(gpu(x), gpu(weight), &gpu_bias), linear_forward(x, weight, &bias), kSums);
    });
    report.run("linear_backward", c.name, shape, [&](Outputs& out) {
      const LinearGrads cpu = linear_backward(grad_y, x, weight, true);
      const LinearGrads cuda = linear_backward(gpu(grad_y), gpu(x), gpu(weight), true);
      add(out, "dx", cuda.input, cpu.input, kSums);
      add(out, "dW", cuda.weight, cpu.weight, kSums);
      add(out, "db", cuda.bias, cpu.bias, kSums);
    });
  }
}

// The experts' GEMMs (fc1: D → F, fc2: F → D) as one grouped op over T·k routed rows, split unevenly
// among the X experts (expert 0 gets none when X >= 4, as a collapsed router would leave it).
void check_grouped_linear(Report& report, const ShapeConfig& c) {
  const int64_t rows = c.B * c.L * c.k;
  Random random(15);
  std::vector<int64_t> counts(static_cast<size_t>(c.X), 0);
  const int64_t first_used = c.X >= 4 ? 1 : 0;
  for (int64_t r = 0; r < rows; ++r) {
    // Skewed: the lower experts are picked more often.
    const int64_t j = first_used + std::min(random.below(c.X - first_used), random.below(c.X - first_used));
    ++counts[static_cast<size_t>(j)];
  }
  std::vector<int64_t> offsets{0};
  for (const int64_t count : counts) offsets.push_back(offsets.back() + count);
  for (const auto& [I, O] : {std::pair<int64_t, int64_t>{c.D, c.F}, {c.F, c.D}}) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(I));
    const Tensor x = uniform({rows, I}, 16, -1, 1), grad_y = uniform({rows, O}, 17, -1, 1);
    std::vector<Tensor> cpu, cuda;  // per expert: weight, bias, grad weight, grad bias
    for (int64_t j = 0; j < c.X; ++j) {
      const Tensor weight = uniform({O, I}, 100 + j, -bound, bound), bias = uniform({O}, 200 + j, -bound, bound);
      for (const Tensor& tensor : {weight, bias, Tensor({O, I}), Tensor({O})}) {
        cpu.push_back(tensor);
        cuda.push_back(gpu(tensor));
      }
    }
    const auto pick = [&](std::vector<Tensor>& tensors, size_t which) {
      std::vector<Tensor*> picked;
      for (size_t j = 0; j < static_cast<size_t>(c.X); ++j) picked.push_back(&tensors[4 * j + which]);
      return picked;
    };
    const auto read_only = [](const std::vector<Tensor*>& tensors) {
      return std::vector<const Tensor*>(tensors.begin(), tensors.end());
    };
    const std::string shape = dims({{"rows", rows}, {"X", c.X}, {"I", I}, {"O", O}});
    report.run("grouped_linear_forward", c.name, shape, [&](Outputs& out) {
      add(out, "y", grouped_linear_forward(gpu(x), offsets, read_only(pick(cuda, 0)), read_only(pick(cuda, 1))),
          grouped_linear_forward(x, offsets, read_only(pick(cpu, 0)), read_only(pick(cpu, 1))), kSums);
    });
    report.run("grouped_linear_backward", c.name, shape, [&](Outputs& out) {
      add(out, "dx",
          grouped_linear_backward(gpu(grad_y), gpu(x), offsets, read_only(pick(cuda, 0)), pick(cuda, 2), pick(cuda, 3)),
          grouped_linear_backward(grad_y, x, offsets, read_only(pick(cpu, 0)), pick(cpu, 2), pick(cpu, 3)), kSums);
      for (int64_t j = 0; j < c.X; ++j) {
        add(out, "dW" + std::to_string(j), cuda[4 * j + 2], cpu[4 * j + 2], kSums);
        add(out, "db" + std::to_string(j), cuda[4 * j + 3], cpu[4 * j + 3], kSums);
      }
    });
  }
}

void check_norms(Report& report, const ShapeConfig& c) {
  const Tensor x = uniform({c.B, c.L, c.D}, 21, -2, 2), weight = uniform({c.D}, 22, 0.5, 1.5);
  const Tensor bias = uniform({c.D}, 23, -0.5, 0.5), grad_y = uniform({c.B, c.L, c.D}, 24, -1, 1);
  const Tensor delta = uniform({c.B, c.L, c.D}, 25, -2, 2);  // the residual add fused into the norm
  const std::string shape = dims({{"T", c.B * c.L}, {"D", c.D}});
  report.run("rmsnorm", c.name, shape, [&](Outputs& out) {
    Tensor cpu_inv, cuda_inv;
    add(out, "y", rmsnorm_forward(gpu(x), gpu(weight), &cuda_inv), rmsnorm_forward(x, weight, &cpu_inv), kElementwise);
    add(out, "inv_rms", cuda_inv, cpu_inv, kElementwise);
    const RmsNormGrads cpu = rmsnorm_backward(grad_y, x, weight, cpu_inv);
    const RmsNormGrads cuda = rmsnorm_backward(gpu(grad_y), gpu(x), gpu(weight), cuda_inv);
    add(out, "dx", cuda.input, cpu.input, kElementwise);
    add(out, "dweight", cuda.weight, cpu.weight, kSums);
    Tensor cpu_sum, cuda_sum;
    add(out, "y after add", rmsnorm_forward_after_add(gpu(x), gpu(delta), gpu(weight), cuda_sum, nullptr),
        rmsnorm_forward_after_add(x, delta, weight, cpu_sum, nullptr), kElementwise);
    add(out, "sum", cuda_sum, cpu_sum, kExact);
  });
  report.run("layernorm", c.name, shape, [&](Outputs& out) {
    Tensor cpu_mean, cpu_inv, cuda_mean, cuda_inv;
    add(out, "y", layernorm_forward(gpu(x), gpu(weight), gpu(bias), &cuda_mean, &cuda_inv),
        layernorm_forward(x, weight, bias, &cpu_mean, &cpu_inv), kElementwise);
    add(out, "mean", cuda_mean, cpu_mean, kElementwise);
    add(out, "inv_std", cuda_inv, cpu_inv, kElementwise);
    const LayerNormGrads cpu = layernorm_backward(grad_y, x, weight, cpu_mean, cpu_inv);
    const LayerNormGrads cuda = layernorm_backward(gpu(grad_y), gpu(x), gpu(weight), cuda_mean, cuda_inv);
    add(out, "dx", cuda.input, cpu.input, kElementwise);
    add(out, "dweight", cuda.weight, cpu.weight, kSums);
    add(out, "dbias", cuda.bias, cpu.bias, kSums);
    Tensor cpu_sum, cuda_sum;
    add(out, "y after add",
        layernorm_forward_after_add(gpu(x), gpu(delta), gpu(weight), gpu(bias), cuda_sum, nullptr, nullptr),
        layernorm_forward_after_add(x, delta, weight, bias, cpu_sum, nullptr, nullptr), kElementwise);
    add(out, "sum", cuda_sum, cpu_sum, kExact);
  });
}

void check_activations(Report& report, const ShapeConfig& c) {
  const int64_t T = c.B * c.L;
  const Tensor x = uniform({T, c.F}, 31, -4, 4), grad_y = uniform({T, c.F}, 32, -1, 1);
  const std::string shape = dims({{"T", T}, {"F", c.F}});
  report.run("gelu", c.name, shape, [&](Outputs& out) {
    const Tensor y = gelu_forward(x);
    add(out, "y", gelu_forward(gpu(x)), y, kElementwise);
    add(out, "dx", gelu_backward(gpu(grad_y), gpu(x), gpu(y)), gelu_backward(grad_y, x, y), kElementwise);
  });
  report.run("silu", c.name, shape, [&](Outputs& out) {
    add(out, "y", silu_forward(gpu(x)), silu_forward(x), kElementwise);
    add(out, "dx", silu_backward(gpu(grad_y), gpu(x)), silu_backward(grad_y, x), kElementwise);
  });
  report.run("sigmoid", c.name, shape,
             [&](Outputs& out) { add(out, "y", sigmoid_forward(gpu(x)), sigmoid_forward(x), kElementwise); });
  const Tensor logits = uniform({T, c.X}, 33, -3, 3), grad_probs = uniform({T, c.X}, 34, -1, 1);
  report.run("softmax, logsumexp", c.name, dims({{"T", T}, {"X", c.X}}), [&](Outputs& out) {
    const Tensor cpu_y = softmax_forward(logits), cuda_y = softmax_forward(gpu(logits));
    add(out, "softmax", cuda_y, cpu_y, kElementwise);
    add(out, "softmax dx", softmax_backward(gpu(grad_probs), cuda_y), softmax_backward(grad_probs, cpu_y),
        kElementwise);
    add(out, "logsumexp", logsumexp_forward(gpu(logits)), logsumexp_forward(logits), kElementwise);
  });
}

void check_rotary(Report& report, const ShapeConfig& c) {
  const Tensor x = uniform({c.B, c.L, c.D}, 41, -1, 1);
  report.run("rotary", c.name, dims({{"B", c.B}, {"L", c.L}, {"D", c.D}}), [&](Outputs& out) {
    add(out, "y", rotary_forward(gpu(x), 5), rotary_forward(x, 5), kExact);
    add(out, "dx", rotary_backward(gpu(x), 5), rotary_backward(x, 5), kExact);
  });
}

void check_embedding(Report& report, const ShapeConfig& c) {
  Random random(51);
  std::vector<int32_t> ids(static_cast<size_t>(c.B * c.L));
  // A small range of ids, so that rows repeat in the backward's sums.
  for (int32_t& id : ids) id = static_cast<int32_t>(random.below(std::min<int64_t>(c.V, 64)));
  const Tensor table = uniform({c.V, c.D}, 52, -0.05, 0.05), grad_out = uniform({c.B, c.L, c.D}, 53, -1, 1);
  report.run("embedding", c.name, dims({{"T", c.B * c.L}, {"V", c.V}, {"D", c.D}}), [&](Outputs& out) {
    add(out, "y", embedding_forward(ids, c.B, c.L, gpu(table)), embedding_forward(ids, c.B, c.L, table), kExact);
    add(out, "dtable", embedding_backward(gpu(grad_out), ids, c.V), embedding_backward(grad_out, ids, c.V), kExact);
  });
}

void check_cross_entropy(Report& report, const ShapeConfig& c) {
  const int64_t T = c.B * c.L;
  const Tensor logits = uniform({T, c.V}, 61, -4, 4);
  Random random(62);
  std::vector<int32_t> targets(static_cast<size_t>(T));
  for (int32_t& target : targets) target = random.below(10) == 0 ? -1 : static_cast<int32_t>(random.below(c.V));
  report.run("cross_entropy", c.name, dims({{"T", T}, {"V", c.V}}), [&](Outputs& out) {
    const CrossEntropyResult cpu = cross_entropy(logits, targets, true);
    const CrossEntropyResult cuda = cross_entropy(gpu(logits), targets, true);
    add_scalar(out, "loss", cuda.loss, cpu.loss, kSums);
    add_scalar(out, "correct", static_cast<double>(cuda.correct), static_cast<double>(cpu.correct), kExact);
    add(out, "dlogits", cuda.grad_logits, cpu.grad_logits, kElementwise);
  });
}

void check_conv1d(Report& report, const ShapeConfig& c) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(c.K));
  const Tensor x = uniform({c.B, c.L, c.E}, 71, -1, 1), weight = uniform({c.E, 1, c.K}, 72, -bound, bound);
  const Tensor bias = uniform({c.E}, 73, -bound, bound), grad_y = uniform({c.B, c.L, c.E}, 74, -1, 1);
  report.run("causal_conv1d", c.name, dims({{"B", c.B}, {"L", c.L}, {"E", c.E}, {"K", c.K}}), [&](Outputs& out) {
    add(out, "y", causal_conv1d_forward(gpu(x), gpu(weight), gpu(bias)), causal_conv1d_forward(x, weight, bias),
        kElementwise);
    const CausalConv1dGrads cpu = causal_conv1d_backward(grad_y, x, weight);
    const CausalConv1dGrads cuda = causal_conv1d_backward(gpu(grad_y), gpu(x), gpu(weight));
    add(out, "dx", cuda.input, cpu.input, kElementwise);
    add(out, "dweight", cuda.weight, cpu.weight, kSums);
    add(out, "dbias", cuda.bias, cpu.bias, kSums);
  });
}

// The scan's inputs as the Mamba mixer makes them: Δ = softplus(delta + bias) mostly in [1e-3, 0.1],
// A = −exp(A_log) with A_log near log(1 .. N).
struct ScanTensors {
  Tensor u, delta, A, B, C, D, z, delta_bias, grad_out;

  ScanTensors(const ShapeConfig& c, uint64_t seed) {
    u = uniform({c.B, c.L, c.E}, seed, -1, 1);
    delta = uniform({c.B, c.L, c.E}, seed + 1, -1, 1);
    A = Tensor({c.E, c.N});
    const Tensor jitter = uniform({c.E, c.N}, seed + 2, -0.1, 0.1);
    for (int64_t e = 0; e < c.E; ++e) {
      for (int64_t n = 0; n < c.N; ++n) A[e * c.N + n] = -std::exp(std::log(n + 1.0f) + jitter[e * c.N + n]);
    }
    B = uniform({c.B, c.L, c.N}, seed + 3, -1, 1);
    C = uniform({c.B, c.L, c.N}, seed + 4, -1, 1);
    D = uniform({c.E}, seed + 5, 0.5, 1.5);
    z = uniform({c.B, c.L, c.E}, seed + 6, -2, 2);
    delta_bias = uniform({c.E}, seed + 7, -5, -2.5);
    grad_out = uniform({c.B, c.L, c.E}, seed + 8, -1, 1);
  }
  ScanTensors on_gpu() const {
    ScanTensors copy = *this;
    for (Tensor* tensor :
         {&copy.u, &copy.delta, &copy.A, &copy.B, &copy.C, &copy.D, &copy.z, &copy.delta_bias, &copy.grad_out}) {
      *tensor = gpu(*tensor);
    }
    return copy;
  }
  SelectiveScanInputs inputs() const {
    SelectiveScanInputs in;
    in.u = &u;
    in.delta = &delta;
    in.A = &A;
    in.B = &B;
    in.C = &C;
    in.D = &D;
    in.z = &z;
    in.delta_bias = &delta_bias;
    in.delta_softplus = true;
    return in;
  }
};

void check_selective_scan(Report& report, const ShapeConfig& c) {
  const ScanTensors cpu(c, 81);
  const ScanTensors cuda = cpu.on_gpu();
  const std::string shape = dims({{"B", c.B}, {"L", c.L}, {"E", c.E}, {"N", c.N}});
  report.run("selective_scan_forward", c.name, shape, [&](Outputs& out) {
    Tensor cpu_state, cuda_state;
    add(out, "out", selective_scan_forward(cuda.inputs(), &cuda_state),
        selective_scan_forward(cpu.inputs(), &cpu_state), kScan);
    add(out, "final_state", cuda_state, cpu_state, kScan);
  });
  report.run("selective_scan_backward", c.name, shape, [&](Outputs& out) {
    const SelectiveScanGrads expected = selective_scan_backward(cpu.grad_out, cpu.inputs());
    const SelectiveScanGrads found = selective_scan_backward(cuda.grad_out, cuda.inputs());
    add(out, "du", found.u, expected.u, kScan);
    add(out, "ddelta", found.delta, expected.delta, kScan);
    add(out, "dA", found.A, expected.A, kScan);
    add(out, "dB", found.B, expected.B, kScan);
    add(out, "dC", found.C, expected.C, kScan);
    add(out, "dD", found.D, expected.D, kScan);
    add(out, "dz", found.z, expected.z, kScan);
    add(out, "ddelta_bias", found.delta_bias, expected.delta_bias, kScan);
  });
}

void check_elementwise(Report& report, const ShapeConfig& c) {
  const int64_t T = c.B * c.L;
  const Tensor a = uniform({T, c.E}, 91, -1, 1), b = uniform({T, c.E}, 92, -1, 1);
  const std::string shape = dims({{"T", T}, {"F", c.E}});
  report.run("elementwise, columns", c.name, shape, [&](Outputs& out) {
    add(out, "add", add(gpu(a), gpu(b)), add(a, b), kExact);
    add(out, "multiply", multiply(gpu(a), gpu(b)), multiply(a, b), kExact);
    add(out, "scale", scale(gpu(a), 0.37f), scale(a, 0.37f), kExact);
    Tensor cpu_sum = a.clone(), cuda_sum = gpu(a);
    add_scaled_inplace(cpu_sum, b, -1.5f);
    add_scaled_inplace(cuda_sum, gpu(b), -1.5f);
    add_inplace(cpu_sum, b);
    add_inplace(cuda_sum, gpu(b));
    add(out, "add_scaled_inplace", cuda_sum, cpu_sum, kExact);
    const int64_t at = c.E / 3;
    const auto [cpu_left, cpu_right] = split_last(a, at);
    const auto [cuda_left, cuda_right] = split_last(gpu(a), at);
    add(out, "split_last", concat_last(cuda_right, cuda_left), concat_last(cpu_right, cpu_left), kExact);
    add(out, "columns", columns(gpu(a), 1, c.E - 1), columns(a, 1, c.E - 1), kExact);
  });
  Random random(93);
  std::vector<int64_t> rows(static_cast<size_t>(T + T / 2));
  for (int64_t& row : rows) row = random.below(T);  // repeats
  std::vector<float> scales(rows.size());
  for (float& factor : scales) factor = static_cast<float>(random.uniform(-1, 1));
  const Tensor source = uniform({static_cast<int64_t>(rows.size()), c.E}, 94, -1, 1);
  report.run("gather, scatter_add rows", c.name, shape, [&](Outputs& out) {
    add(out, "gather_rows", gather_rows(gpu(a), rows), gather_rows(a, rows), kExact);
    Tensor cpu_out = a.clone(), cuda_out = gpu(a);
    scatter_add_rows(cpu_out, source, rows, &scales);
    scatter_add_rows(cuda_out, gpu(source), rows, &scales);
    add(out, "scatter_add_rows", cuda_out, cpu_out, kExact);
  });
  std::vector<uint8_t> mask(static_cast<size_t>(T));
  for (uint8_t& keep : mask) keep = random.below(4) != 0;
  report.run("zero_masked_rows, sums", c.name, shape, [&](Outputs& out) {
    Tensor cpu_x = a.reshape({c.B, c.L, c.E}).clone(), cuda_x = gpu(cpu_x);
    zero_masked_rows(cpu_x, mask);
    zero_masked_rows(cuda_x, mask);
    add(out, "zero_masked_rows", cuda_x, cpu_x, kExact);
    const Tensor gpu_a = gpu(a);
    add_scalar(out, "sum", sum(gpu_a), sum(a), kSums);
    add_scalar(out, "standard_deviation", standard_deviation(gpu_a), standard_deviation(a), kSums);
    add_scalar(out, "max_abs", max_abs(gpu_a), max_abs(a), kExact);
  });
}

void check_small_ops(Report& report, const ShapeConfig& c) {
  const int64_t T = c.B * c.L;
  const Tensor A_log = uniform({c.E, c.N}, 101, -1, 3);
  const Tensor a = uniform({T, c.D}, 102, -1, 1), b = uniform({T, c.D}, 103, -1, 1);
  std::vector<float> scales(static_cast<size_t>(T));
  Random random(104);
  for (float& factor : scales) factor = static_cast<float>(random.uniform(0, 1));
  report.run("negative_exp, row_dot, scale", c.name, dims({{"T", T}, {"D", c.D}}), [&](Outputs& out) {
    add(out, "negative_exp", negative_exp(gpu(A_log)), negative_exp(A_log), kElementwise);
    out.push_back(
        {"row_dot", compare_values(as_doubles(row_dot(gpu(a), gpu(b))), as_doubles(row_dot(a, b))), kElementwise});
    add(out, "scale_rows", scale_rows(gpu(a), scales), scale_rows(a, scales), kExact);
  });
}

void check_optimizer(Report& report, const ShapeConfig& c) {
  const Tensor parameter = uniform({c.E, c.D}, 111, -1, 1);
  report.run("adamw, sgd, squared_norm", c.name, dims({{"n", c.E * c.D}}), [&](Outputs& out) {
    Tensor cpu_p = parameter.clone(), cpu_m({c.E, c.D}), cpu_v({c.E, c.D});
    Tensor cuda_p = gpu(parameter), cuda_m({c.E, c.D}, Device::cuda), cuda_v({c.E, c.D}, Device::cuda);
    for (int64_t step = 1; step <= 3; ++step) {
      const Tensor grad = uniform({c.E, c.D}, 112 + step, -1, 1);
      const AdamWHyper hyper{1e-2, 0.9, 0.999, 1e-8, 0.1, step};
      adamw_update(cpu_p, grad, cpu_m, cpu_v, hyper);
      adamw_update(cuda_p, gpu(grad), cuda_m, cuda_v, hyper);
    }
    add(out, "adamw parameter", cuda_p, cpu_p, kElementwise);
    add(out, "adamw m", cuda_m, cpu_m, kElementwise);
    add(out, "adamw v", cuda_v, cpu_v, kElementwise);
    Tensor cpu_buffer({c.E, c.D}), cuda_buffer({c.E, c.D}, Device::cuda);
    for (int64_t step = 1; step <= 2; ++step) {
      const Tensor grad = uniform({c.E, c.D}, 122 + step, -1, 1);
      sgd_update(cpu_p, grad, cpu_buffer, 0.05, 0.9, 0.01);
      sgd_update(cuda_p, gpu(grad), cuda_buffer, 0.05, 0.9, 0.01);
    }
    add(out, "sgd parameter", cuda_p, cpu_p, kElementwise);
    add_scalar(out, "squared_norm", squared_norm(cuda_p), squared_norm(cpu_p), kSums);
  });
}

// The inputs of one routing check: scores (T, X), a token mask, the capacity, and the expert outputs and
// gates that the combine step reads.
struct RoutingCase {
  int64_t T, X, k, D, capacity;
  Tensor scores;              // (T, X)
  std::vector<uint8_t> mask;  // T
  Tensor expert_out;          // (T·k, D), more rows than are kept
  std::vector<float> gate;    // T·k
};

// The CPU side: top_k and apply_capacity, then each kept assignment's slot in claim order (r, then t),
// its row in expert-major order, and the gated sum of its expert's output row per token.
struct RoutingReference {
  std::vector<int32_t> chosen, expert, slot;
  std::vector<float> value;
  std::vector<int64_t> position;
  int64_t dropped = 0;
  Tensor combined;  // (T, D)
};

RoutingReference routing_reference(const RoutingCase& r) {
  RoutingReference ref;
  top_k(r.scores, r.k, ref.chosen, ref.value);
  ref.expert = ref.chosen;
  ref.dropped = apply_capacity(ref.expert, r.k, r.X, r.capacity, &r.mask);
  ref.slot.assign(ref.expert.size(), -1);
  std::vector<int64_t> used(static_cast<size_t>(r.X), 0), first_row(static_cast<size_t>(r.X) + 1, 0);
  for (int64_t rank = 0; rank < r.k; ++rank) {
    for (int64_t t = 0; t < r.T; ++t) {
      const int32_t j = ref.expert[static_cast<size_t>(t * r.k + rank)];
      if (j >= 0) ref.slot[static_cast<size_t>(t * r.k + rank)] = static_cast<int32_t>(used[static_cast<size_t>(j)]++);
    }
  }
  for (int64_t j = 0; j < r.X; ++j) first_row[j + 1] = first_row[j] + used[static_cast<size_t>(j)];
  ref.position.assign(ref.expert.size(), -1);
  for (size_t a = 0; a < ref.expert.size(); ++a) {
    if (ref.expert[a] >= 0) ref.position[a] = first_row[static_cast<size_t>(ref.expert[a])] + ref.slot[a];
  }
  ref.combined = Tensor({r.T, r.D});
  for (int64_t a = 0; a < r.T * r.k; ++a) {
    const int64_t row = ref.position[static_cast<size_t>(a)], t = a / r.k;
    if (row < 0) continue;
    for (int64_t d = 0; d < r.D; ++d) {
      ref.combined[t * r.D + d] += r.gate[static_cast<size_t>(a)] * r.expert_out[row * r.D + d];
    }
  }
  return ref;
}

// The GPU routing ops (kernels/routing_cuda.h) against the reference, step by step.
void compare_routing(const RoutingCase& r, Outputs& out) {
  const RoutingReference ref = routing_reference(r);
  const size_t assignments = static_cast<size_t>(r.T * r.k);
  void* stream = cuda::stream();
  const Tensor scores = gpu(r.scores);
  cuda::DeviceBuffer index(assignments * sizeof(int32_t)), values(assignments * sizeof(float)),
      slot(assignments * sizeof(int32_t)), routed(static_cast<size_t>(r.X) * sizeof(int64_t)),
      kept(static_cast<size_t>(r.X) * sizeof(int64_t));
  top_k_cuda(scores.data(), r.T, r.X, r.k, index.as<int32_t>(), values.as<float>(), stream);
  out.push_back({"top_k index",
                 compare_values(integers_as_doubles(cuda::download<int32_t>(index, assignments)),
                                integers_as_doubles(ref.chosen)),
                 kExact});
  out.push_back({"top_k value",
                 compare_values(as_doubles(cuda::download<float>(values, assignments)), as_doubles(ref.value)),
                 kExact});

  const cuda::DeviceBuffer mask = cuda::upload(r.mask);
  apply_capacity_cuda(index.as<int32_t>(), r.T, r.k, r.X, r.capacity, mask.as<uint8_t>(), slot.as<int32_t>(),
                      routed.as<int64_t>(), kept.as<int64_t>(), stream);
  out.push_back({"capacity expert",
                 compare_values(integers_as_doubles(cuda::download<int32_t>(index, assignments)),
                                integers_as_doubles(ref.expert)),
                 kExact});
  out.push_back(
      {"capacity slot",
       compare_values(integers_as_doubles(cuda::download<int32_t>(slot, assignments)), integers_as_doubles(ref.slot)),
       kExact});
  const std::vector<int64_t> routed_counts = cuda::download<int64_t>(routed, static_cast<size_t>(r.X));
  const std::vector<int64_t> kept_counts = cuda::download<int64_t>(kept, static_cast<size_t>(r.X));
  std::vector<int64_t> first_row(static_cast<size_t>(r.X) + 1, 0);
  int64_t dropped = 0;
  for (size_t j = 0; j < kept_counts.size(); ++j) {
    dropped += routed_counts[j] - kept_counts[j];
    first_row[j + 1] = first_row[j] + kept_counts[j];
  }
  add_scalar(out, "dropped", static_cast<double>(dropped), static_cast<double>(ref.dropped), kExact);

  const cuda::DeviceBuffer first_rows = cuda::upload(first_row);
  cuda::DeviceBuffer token_of_row(std::max<size_t>(assignments, 1) * sizeof(int64_t)),
      position(assignments * sizeof(int64_t));
  routing_permutation_cuda(index.as<int32_t>(), slot.as<int32_t>(), first_rows.as<int64_t>(), r.T, r.k,
                           token_of_row.as<int64_t>(), position.as<int64_t>(), stream);
  out.push_back({"permutation position",
                 compare_values(integers_as_doubles(cuda::download<int64_t>(position, assignments)),
                                integers_as_doubles(ref.position)),
                 kExact});
  const Tensor expert_out = gpu(r.expert_out);
  const cuda::DeviceBuffer gate = cuda::upload(r.gate);
  Tensor combined({r.T, r.D}, Device::cuda);
  combine_from_experts_cuda(expert_out.data(), position.as<int64_t>(), gate.as<float>(), combined.data(), r.T, r.k, r.D,
                            stream);
  add(out, "combine", combined, ref.combined, kElementwise);
}

void check_routing(Report& report, const ShapeConfig& c) {
  RoutingCase r;
  r.T = c.B * c.L;
  r.X = c.X;
  r.k = std::min(c.k, c.X);
  r.D = c.D;
  r.scores = uniform({r.T, r.X}, 131, 0, 1);
  Random random(132);
  r.mask.resize(static_cast<size_t>(r.T));
  for (uint8_t& keep : r.mask) keep = random.below(8) != 0;
  r.capacity = expert_capacity(1.0, unmasked_count(r.T, &r.mask), r.X, 4);
  r.expert_out = uniform({r.T * r.k, r.D}, 133, -1, 1);
  r.gate.resize(static_cast<size_t>(r.T * r.k));
  for (float& g : r.gate) g = static_cast<float>(random.uniform(0, 1));
  report.run("routing (top_k .. combine)", c.name, dims({{"T", r.T}, {"X", r.X}, {"k", r.k}, {"C", r.capacity}}),
             [&](Outputs& out) { compare_routing(r, out); });
}

// Step-mode ops: three conv steps and scan steps from the same states, and a prompt batch's conv state.
void check_ssm_step(Report& report, const ShapeConfig& c) {
  const Tensor weight = uniform({c.E, 1, c.K}, 151, -0.5, 0.5), bias = uniform({c.E}, 152, -0.5, 0.5);
  const Tensor A = uniform({c.E, c.N}, 153, -2, -0.1), D = uniform({c.E}, 154, -1, 1);
  const Tensor delta_bias = uniform({c.E}, 155, -2, 0);
  report.run("ssm step (conv, scan)", c.name, dims({{"B", c.B}, {"E", c.E}, {"N", c.N}, {"K", c.K}, {"steps", 3}}),
             [&](Outputs& out) {
               Tensor cpu_conv = uniform({c.B, c.E, c.K - 1}, 156, -1, 1), cuda_conv = gpu(cpu_conv);
               Tensor cpu_ssm = uniform({c.B, c.E, c.N}, 157, -1, 1), cuda_ssm = gpu(cpu_ssm);
               const Tensor cuda_weight = gpu(weight), cuda_bias = gpu(bias), cuda_A = gpu(A), cuda_D = gpu(D);
               const Tensor cuda_delta_bias = gpu(delta_bias);
               for (uint64_t s = 0; s < 3; ++s) {
                 const Tensor x = uniform({c.B, c.E}, 160 + s, -1, 1), delta = uniform({c.B, c.E}, 170 + s, -3, 3);
                 const Tensor z = uniform({c.B, c.E}, 180 + s, -3, 3), Bm = uniform({c.B, c.N}, 190 + s, -1, 1);
                 const Tensor Cm = uniform({c.B, c.N}, 200 + s, -1, 1);
                 const Tensor cpu_y = causal_conv1d_step(cpu_conv, x, weight, bias);
                 add(out, "conv y", causal_conv1d_step(cuda_conv, gpu(x), cuda_weight, cuda_bias), cpu_y, kElementwise);
                 add(out, "conv state", cuda_conv, cpu_conv, kExact);
                 const Tensor cuda_u = gpu(cpu_y), cuda_delta = gpu(delta), cuda_z = gpu(z), cuda_B = gpu(Bm);
                 const Tensor cuda_C = gpu(Cm);
                 const SelectiveScanStepInputs cpu_in{&cpu_y, &delta, &A, &Bm, &Cm, &D, &z, &delta_bias, true};
                 const SelectiveScanStepInputs cuda_in{&cuda_u, &cuda_delta, &cuda_A, &cuda_B, &cuda_C,
                                                       &cuda_D, &cuda_z, &cuda_delta_bias, true};
                 add(out, "scan out", selective_scan_step(cuda_ssm, cuda_in), selective_scan_step(cpu_ssm, cpu_in),
                     kElementwise);
                 add(out, "scan state", cuda_ssm, cpu_ssm, kElementwise);
               }
               const Tensor prompts = uniform({c.B, c.L, c.E}, 210, -1, 1);
               std::vector<int64_t> lengths;
               for (int64_t b = 0; b < c.B; ++b) lengths.push_back(1 + (c.L - 1) * (b + 1) / c.B);
               add(out, "prompt conv state", causal_conv1d_final_state(gpu(prompts), c.K, &lengths),
                   causal_conv1d_final_state(prompts, c.K, &lengths), kExact);
             });
}

using ShapeCheck = void (*)(Report&, const ShapeConfig&);
const std::vector<ShapeCheck> kShapeChecks = {
    check_linear,        check_grouped_linear, check_norms,          check_activations, check_rotary,
    check_embedding,     check_cross_entropy,  check_conv1d,         check_selective_scan, check_elementwise,
    check_small_ops,     check_optimizer,      check_routing,        check_ssm_step};

// The model of FILE.toml, or this seed-like one (with a vocabulary, so that logits and the LM loss run too).
constexpr const char* kBuiltInModel = R"(
[model]
dim = 256
depth = 6
order = ["mamba", "moe"]
d_state = 16
d_conv = 2
expand = 1
num_experts = 4
expert_dim = 512
max_seq_len = 2048
vocab_size = 256

[router]
name = "switch"
capacity_factor = 1.0
min_capacity = 4
)";

struct ModelCase {
  std::string label;
  ModelConfig config;
  RouterSettings router;
  ConfigTable router_table;
  int64_t batch, length;
  uint64_t seed;
};

// Forward with a tape, the LM loss (or a fixed projection of the output when V = 0), backward: on the CPU,
// then the same model moved to CUDA. Returns the comparisons of the outputs (hidden, logits, aux loss) and
// of the backward (loss and every parameter gradient).
struct ModelComparison {
  Outputs forward, backward;
};

ModelComparison compare_model(const ModelCase& model_case) {
  const ModelConfig& config = model_case.config;
  const int64_t B = model_case.batch, L = model_case.length;
  Model model(config, model_case.router, model_case.router_table);
  model.initialize(model_case.seed);

  Random random(model_case.seed + 1);
  ModelInput input;
  input.batch = B;
  input.length = L;
  if (config.vocab_size > 0) {
    for (int64_t i = 0; i < B * L; ++i) input.tokens.push_back(static_cast<int32_t>(random.below(config.vocab_size)));
  } else {
    input.embeddings = uniform({B, L, config.dim}, model_case.seed + 2, -1, 1);
  }
  input.mask.assign(static_cast<size_t>(B * L), 1);
  if (B > 1 && L > 4) std::fill(input.mask.end() - 3, input.mask.end(), 0);  // padding at the end of the last row
  const Tensor projection = uniform({B, L, config.dim}, model_case.seed + 3, -1, 1);

  struct Result {
    ModelOutput output;
    double loss = 0;
    std::vector<Tensor> grads;  // copied to the host
  };
  auto run = [&](Device device) {
    Result result;
    ForwardTape tape;
    Random routing_random(model_case.seed + 4);
    ForwardOptions options;
    options.training = true;
    options.random = &routing_random;
    result.output = model.forward(input, options, &tape);
    model.parameters().zero_grad();
    if (config.vocab_size > 0) {
      const LossResult loss = language_model_loss(result.output, next_token_targets(input), true);
      result.loss = loss.loss;
      model.backward(tape, &loss.grad_logits, nullptr, 1.0f);
    } else {
      result.loss = result.output.aux_loss;
      const Tensor grad_hidden = projection.to(device);
      model.backward(tape, nullptr, &grad_hidden, 1.0f);
    }
    for (const auto& parameter : model.parameters().all()) result.grads.push_back(parameter->grad.to(Device::cpu));
    return result;
  };

  const Result cpu = run(Device::cpu);
  model.to(Device::cuda);
  const Result cuda = run(Device::cuda);
  ModelComparison comparison;
  add(comparison.forward, "hidden", cuda.output.hidden, cpu.output.hidden, kModel);
  if (cpu.output.logits.defined()) add(comparison.forward, "logits", cuda.output.logits, cpu.output.logits, kModel);
  add_scalar(comparison.forward, "aux_loss", cuda.output.aux_loss, cpu.output.aux_loss, kModel);
  add_scalar(comparison.backward, "loss", cuda.loss, cpu.loss, kModel);
  const auto& parameters = model.parameters().all();
  for (size_t i = 0; i < parameters.size(); ++i) {
    add(comparison.backward, "grad." + parameters[i]->name, cuda.grads[i], cpu.grads[i], kModel);
  }
  return comparison;
}

// The whole model on both backends: one line for the forward's outputs, one for the backward's.
void check_model(Report& report, const ModelCase& model_case) {
  const ModelConfig& config = model_case.config;
  const std::string shape = dims({{"B", model_case.batch}, {"L", model_case.length}, {"D", config.dim},
                                  {"blocks", config.block_count()}});
  ModelComparison comparison;
  bool ran = false;
  report.run("model forward", model_case.label, shape, [&](Outputs& out) {
    comparison = compare_model(model_case);
    ran = true;
    out = comparison.forward;
  });
  if (ran) report.run("model backward", model_case.label, shape, [&](Outputs& out) { out = comparison.backward; });
}

// Recurrent inference: prefill of two prompts of different lengths, then four steps fed the CPU's greedy
// tokens, on the CPU and then on CUDA; compares the logits of the prefill and of every step.
void check_model_decode(Report& report, const ModelCase& model_case) {
  const ModelConfig& config = model_case.config;
  if (config.vocab_size <= 0) return;  // step mode needs token ids
  constexpr int kSteps = 4;
  report.run("model prefill and steps", model_case.label,
             dims({{"B", 2}, {"prompt", 12}, {"steps", kSteps}, {"blocks", config.block_count()}}),
             [&](Outputs& out) {
               Model model(config, model_case.router, model_case.router_table);
               model.initialize(model_case.seed);
               Random random(model_case.seed + 5);
               std::vector<std::vector<int32_t>> prompts(2);
               for (size_t p = 0; p < prompts.size(); ++p) {
                 for (int64_t i = 0; i < (p == 0 ? 12 : 7); ++i) {
                   prompts[p].push_back(static_cast<int32_t>(random.below(config.vocab_size)));
                 }
               }
               const ModelInput input = prompt_batch(prompts);
               InferenceCache cpu_cache, cuda_cache;
               std::vector<Tensor> cpu_logits{model.prefill(input, cpu_cache)};
               std::vector<std::vector<int32_t>> fed;
               for (int s = 0; s < kSteps; ++s) {
                 // Greedy: each row's arg max.
                 const Tensor& last = cpu_logits.back();
                 std::vector<int32_t> tokens;
                 for (int64_t b = 0; b < last.size(0); ++b) {
                   const float* row = last.data() + b * last.size(1);
                   tokens.push_back(static_cast<int32_t>(std::max_element(row, row + last.size(1)) - row));
                 }
                 fed.push_back(tokens);
                 cpu_logits.push_back(model.step(tokens, cpu_cache));
               }
               model.to(Device::cuda);
               add(out, "prefill logits", model.prefill(input, cuda_cache), cpu_logits[0], kModel);
               for (int s = 0; s < kSteps; ++s) {
                 add(out, "step " + std::to_string(s + 1) + " logits", model.step(fed[s], cuda_cache),
                     cpu_logits[s + 1], kModel);
               }
             });
}

}  // namespace

std::string cuda_self_check() {
  static const std::string result = [] {
    // A small model with every kind of block: mamba (conv, scan, norms), moe (routing, grouped GEMMs) and
    // mlp, with token ids and the LM head.
    const ExperimentFile file = ExperimentFile::parse(R"(
[model]
dim = 64
depth = 3
order = ["mamba", "moe", "mlp"]
d_state = 16
d_conv = 4
num_experts = 4
expert_dim = 128
vocab_size = 64

[router]
name = "topk"
top_k = 2
)",
                                                      "<CUDA self-check model>");
    register_all();
    const ModelCase model_case{"self-check", read_model_config(file.table("model")),
                               read_router_settings(file.table("router")), file.table("router"), 2, 40, 7};
    const bool tf32 = cuda::tf32();
    cuda::set_tf32(false);  // the model tolerance assumes float32 GEMMs
    std::string failure;
    try {
      const ModelComparison comparison = compare_model(model_case);
      for (const Outputs* outputs : {&comparison.forward, &comparison.backward}) {
        for (const Output& output : *outputs) {
          if (output.tolerance.accepts(output.comparison) || !failure.empty()) continue;
          std::ostringstream message;
          message << output.name << " differs from the CPU: nmse " << output.comparison.nmse << " (<= "
                  << output.tolerance.nmse << "), max|d| " << output.comparison.max_abs;
          failure = message.str();
        }
      }
    } catch (const std::exception& error) {
      failure = error.what();
    }
    cuda::set_tf32(tf32);
    return failure;
  }();
  return result;
}

int command_validate(const CommandLine& line) {
  if (line.positional.size() > 1) throw UsageError("validate: unexpected argument '" + line.positional[1] + "'");

  // The model cases: the file's model (or the built-in one) and, when it has MoE layers, the same model
  // with dense MLP blocks in their place (so that a failure can be told apart from routing).
  std::vector<ModelCase> models;
  ExperimentFile built_in = ExperimentFile::parse(kBuiltInModel, "<built-in seed-like model>");
  std::unique_ptr<Experiment> experiment;
  if (!line.positional.empty()) {
    experiment = std::make_unique<Experiment>(load_experiment(line.positional[0], command_line_assignments(line)));
    apply_thread_count(experiment->run.threads);
    build_checked(*experiment, true);  // the whole file, as run checks it: an unknown key is an error here too
    const ConfigTable& task = experiment->table("task");
    models.push_back({experiment->file.file(), experiment->model, experiment->router, experiment->table("router"),
                      std::min<int64_t>(task.get_int("batch_size", 2, 1), 2),
                      std::min<int64_t>(task.get_int("seq_len", 128, 1), 256), experiment->run.seed});
  } else {
    if (!line.sets.empty()) {
      throw UsageError("validate: --set changes an experiment file, and none is given (without FILE.toml the "
                       "built-in seed-like model is validated)");
    }
    apply_thread_count(parse_integer_option(line, "threads", 0));
    register_all();
    models.push_back({"built-in", read_model_config(built_in.table("model")),
                      read_router_settings(built_in.table("router")), built_in.table("router"), 2, 128,
                      static_cast<uint64_t>(parse_integer_option(line, "seed", 0))});
  }
  {
    ModelCase dense = models.front();
    bool has_moe = false;
    for (std::string& kind : dense.config.order) {
      if (kind == "moe") {
        kind = "mlp";
        has_moe = true;
      }
    }
    for (auto& [i, overrides] : dense.config.layers) {  // an mlp block takes only expert_dim
      overrides.num_experts.reset();
      overrides.router.reset();
    }
    dense.label += " moe->mlp";
    if (has_moe) models.push_back(dense);
  }
  // After the file's checks, so that a wrong file is reported as such on any machine.
  const std::string reason = cuda::unavailable_reason();
  if (!reason.empty()) {
    spdlog::error("validate: no GPU: {}", reason);
    return 3;
  }
  cuda::set_tf32(false);  // exact float32 GEMMs: the tolerances below assume them

  const auto start = std::chrono::steady_clock::now();
  std::printf("validate: CUDA on %s against the CPU (%d threads), float32 GEMMs (TF32 off)\n",
              cuda::device_description().c_str(), omp_get_max_threads());
  Report report(line.option("only"));
  for (const ShapeConfig& shape : kShapes) {
    for (ShapeCheck check : kShapeChecks) check(report, shape);
  }
  for (const ModelCase& model_case : models) {
    check_model(report, model_case);
    check_model_decode(report, model_case);
  }
  if (report.checks() == 0) {
    throw UsageError("validate: --only '" + line.option("only") + "' matches no op (op names are the first column)");
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("validate: %d checks, %d passed, %d failed (%.1f s)\n", report.checks(),
              report.checks() - report.failures(), report.failures(), seconds);
  return report.failures() == 0 ? 0 : 1;
}

}  // namespace mr1
