// The CUDA backend against the CPU reference, op by op ([cuda]). Without a usable GPU every such test says
// "skipped: <reason>" (a warning) and passes, so the rest of the suite runs; the tests tagged [cuda][host]
// check the host-side pieces and run everywhere.
// Tolerances: those of mamba-r1 validate (experiments/validate.cpp), with their reasons, for small shapes.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <deque>
#include <string>
#include <vector>

#include "blocks/random.h"
#include "experiments/experiment.h"
#include "experiments/validate.h"
#include "kernels/activation.h"
#include "kernels/conv1d.h"
#include "kernels/cross_entropy.h"
#include "kernels/cuda_device.h"
#include "kernels/elementwise.h"
#include "kernels/elementwise_cuda.h"
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
#include "tests/test_util.h"

namespace mr1 {
namespace {

// Same float operations in the same order: a fused multiply-add's rounding apart at most.
constexpr Tolerance kExact{1e-12, 1e-6};
// CUDA's expf / erff / log1pf (<= 2 ulp) and row sums in another order.
constexpr Tolerance kElementwise{1e-11, 1e-5};
// GEMMs and column sums in another order.
constexpr Tolerance kSums{1e-9, 1e-4};
// The scan's exp2f against exp, through the recurrence; dA, dB, dC summed in another order.
constexpr Tolerance kScan{1e-8, 1e-3};

// Skips the rest of the test case, with the reason, when no GPU can be used.
#define SKIP_WITHOUT_GPU()                                            \
  do {                                                                \
    if (!cuda::usable()) {                                            \
      WARN("skipped: no usable GPU: " << cuda::unavailable_reason()); \
      return;                                                         \
    }                                                                 \
  } while (false)

Tensor gpu(const Tensor& tensor) { return tensor.to(Device::cuda); }

void require_match(const Tensor& actual, const Tensor& expected, Tolerance tolerance, const std::string& what) {
  INFO(what);
  REQUIRE(actual.device() == Device::cuda);
  REQUIRE(actual.shape() == expected.shape());
  const Comparison comparison = compare_tensors(actual, expected);
  INFO("nmse " << comparison.nmse << " (<= " << tolerance.nmse << "), max|d| " << comparison.max_abs
               << " (<= " << tolerance.absolute_limit(comparison) << ")");
  CHECK(tolerance.accepts(comparison));
}

void require_match(double actual, double expected, Tolerance tolerance, const std::string& what) {
  INFO(what << ": " << actual << " against " << expected);
  CHECK(tolerance.accepts(compare_values({actual}, {expected})));
}

Tensor uniform(Shape shape, uint64_t seed, float low, float high) {
  Tensor tensor(std::move(shape));
  Random random(seed);
  random.fill_uniform(tensor, low, high);
  return tensor;
}

}  // namespace

TEST_CASE("cuda: allocation buckets are powers of two to 1 MiB, then multiples of 2 MiB", "[cuda][host]") {
  CHECK(cuda::allocation_bucket(1) == 512);
  CHECK(cuda::allocation_bucket(512) == 512);
  CHECK(cuda::allocation_bucket(513) == 1024);
  CHECK(cuda::allocation_bucket(std::size_t{1} << 20) == std::size_t{1} << 20);
  CHECK(cuda::allocation_bucket((std::size_t{1} << 20) + 1) == std::size_t{2} << 20);
  CHECK(cuda::allocation_bucket((std::size_t{5} << 20) + 7) == std::size_t{6} << 20);
}

TEST_CASE("cuda: scatter-add groups keep each destination's sources in order", "[cuda][host]") {
  const RowGroups groups = group_rows_by_destination(std::vector<int64_t>{3, 1, 3, 0, 1, 3}, 5);
  CHECK(groups.destinations == std::vector<int64_t>{0, 1, 3});
  CHECK(groups.offsets == std::vector<int64_t>{0, 1, 3, 6});
  CHECK(groups.sources == std::vector<int64_t>{3, 1, 4, 0, 2, 5});
}

TEST_CASE("cuda: upload_together copies several arrays in one copy, aligned, empty ones as null", "[cuda]") {
  SKIP_WITHOUT_GPU();
  const std::vector<int64_t> rows{7, -3, 1LL << 40};
  const std::vector<float> empty;
  const std::vector<float> values{0.5f, -2.0f, 3.25f, 1e-30f, 9.0f};
  const std::vector<uint8_t> bytes{1, 0, 255};
  cuda::DeviceBuffer buffer;
  const auto [device_rows, device_empty, device_values, device_bytes] =
      cuda::upload_together(buffer, rows, empty, values, bytes);
  CHECK(device_empty == nullptr);
  const auto* base = buffer.as<unsigned char>();
  const auto offset_of = [&](const void* pointer) { return static_cast<const unsigned char*>(pointer) - base; };
  // Each array at the next multiple of 16 bytes after the one before: 24 bytes of rows, then 20 of values.
  CHECK(offset_of(device_rows) == 0);
  CHECK(offset_of(device_values) == 32);
  CHECK(offset_of(device_bytes) == 64);
  CHECK(buffer.bytes() == 80);
  std::vector<int64_t> rows_back(rows.size());
  std::vector<float> values_back(values.size());
  std::vector<uint8_t> bytes_back(bytes.size());
  cuda::copy_device_to_host(rows_back.data(), device_rows, sizeof(int64_t) * rows.size());
  cuda::copy_device_to_host(values_back.data(), device_values, sizeof(float) * values.size());
  cuda::copy_device_to_host(bytes_back.data(), device_bytes, bytes.size());
  CHECK(rows_back == rows);
  CHECK(values_back == values);
  CHECK(bytes_back == bytes);
}

TEST_CASE("cuda: compare_values reports nmse, max |d| and mismatched non-finite values", "[cuda][host]") {
  const Comparison close = compare_values({1.0, 2.0}, {1.0, 2.5});
  CHECK(close.nmse == Approx(0.25 / 7.25));
  CHECK(close.max_abs == Approx(0.5));
  CHECK(std::isinf(compare_values({NAN}, {1.0}).nmse));
  CHECK(compare_values({NAN}, {NAN}).nmse == 0);
}

TEST_CASE("cuda: without a usable device, CUDA tensors fail in one clear line", "[cuda][host]") {
  if (cuda::usable()) return;  // the [cuda] tests cover this machine
  const std::string reason = cuda::unavailable_reason();
  CHECK(!reason.empty());
  CHECK(reason.find('\n') == std::string::npos);
  REQUIRE_THROWS_WITH(Tensor({4}, Device::cuda),
                      Catch::Matchers::Contains("CUDA unavailable") || Catch::Matchers::Contains("no CUDA backend"));
}

TEST_CASE("cuda: backend auto takes a usable GPU whose self-check passes, else the CPU", "[cuda][host]") {
  CHECK(resolve_backend("cpu") == Device::cpu);
  if (cuda::usable()) {
    CHECK(resolve_backend("cuda") == Device::cuda);
    CHECK(resolve_backend("auto") == Device::cuda);  // the self-check passed (its own test is below)
  } else {
    CHECK(resolve_backend("auto") == Device::cpu);
    CHECK_THROWS_WITH(resolve_backend("cuda"), Catch::Matchers::Contains("backend cuda requested, but") &&
                                                   Catch::Matchers::Contains(cuda::unavailable_reason()));
  }
}

TEST_CASE("cuda: tensors copy to the device and back, fill, and reuse cached blocks", "[cuda]") {
  SKIP_WITHOUT_GPU();
  const Tensor x = uniform({3, 5}, 1, -1, 1);
  CHECK(gpu(x).to(Device::cpu).to_vector() == x.to_vector());
  Tensor filled({7}, Device::cuda);
  filled.fill(2.5f);
  CHECK(filled.to_vector() == std::vector<float>(7, 2.5f));
  CHECK(Tensor({2, 2}, Device::cuda).to_vector() == std::vector<float>(4, 0.0f));  // zero-filled
  if (std::getenv("EMU_EXACT")) return;  // the emulator's mode for AddressSanitizer runs caches nothing
  { Tensor warm({1000}, Device::cuda); }
  const int64_t allocations = cuda::allocator_stats().device_allocations;
  { Tensor again({1000}, Device::cuda); }
  CHECK(cuda::allocator_stats().device_allocations == allocations);
  CHECK(cuda::allocator_stats().cache_hits > 0);
}

TEST_CASE("cuda: linear forward and backward match the CPU", "[cuda]") {
  SKIP_WITHOUT_GPU();
  // I = 0: no inputs, y is the bias and db still Σ dy.
  const std::vector<std::array<int64_t, 3>> shapes{{1, 1, 1}, {37, 19, 23}, {256, 128, 64}, {5, 0, 3}};
  for (const auto& [T, I, O] : shapes) {
    const Tensor x = uniform({T, I}, 2, -1, 1), weight = uniform({O, I}, 3, -1, 1), bias = uniform({O}, 4, -1, 1);
    const Tensor grad_y = uniform({T, O}, 5, -1, 1), gpu_bias = gpu(bias);
    const std::string shape = "T " + std::to_string(T) + " I " + std::to_string(I) + " O " + std::to_string(O);
    require_match(linear_forward(gpu(x), gpu(weight), &gpu_bias), linear_forward(x, weight, &bias), kSums, shape);
    const LinearGrads cpu = linear_backward(grad_y, x, weight, true);
    const LinearGrads cuda = linear_backward(gpu(grad_y), gpu(x), gpu(weight), true);
    require_match(cuda.input, cpu.input, kSums, "dx " + shape);
    require_match(cuda.weight, cpu.weight, kSums, "dW " + shape);
    require_match(cuda.bias, cpu.bias, kSums, "db " + shape);
    const LinearGrads no_input = linear_backward(gpu(grad_y), gpu(x), gpu(weight), false, false);
    CHECK(!no_input.input.defined());
    CHECK(!no_input.bias.defined());
    // dL/dx added onto a gradient already there (the GEMM's β = 1).
    const Tensor grad_x_before = uniform({T, I}, 6, -1, 1);
    Tensor cpu_grad_x = grad_x_before.clone(), cpu_grad_weight = uniform({O, I}, 7, -1, 1);
    Tensor cuda_grad_x = gpu(grad_x_before), cuda_grad_weight = gpu(cpu_grad_weight);
    linear_backward_add(grad_y, x, weight, cpu_grad_weight, nullptr, cpu_grad_x);
    linear_backward_add(gpu(grad_y), gpu(x), gpu(weight), cuda_grad_weight, nullptr, cuda_grad_x);
    require_match(cuda_grad_x, cpu_grad_x, kSums, "dx added " + shape);
    require_match(cuda_grad_weight, cpu_grad_weight, kSums, "dW added " + shape);
  }
}

TEST_CASE("cuda: grouped linear (the experts' GEMMs) matches the CPU, empty groups included", "[cuda]") {
  SKIP_WITHOUT_GPU();
  // Row counts per group: empty groups first, between and last, and a single row. I = 0: no inputs (the
  // biases' gradients still take Σ dy).
  const std::vector<int64_t> offsets{0, 0, 5, 5, 6, 70, 70};
  const int64_t I = GENERATE(24, 0);
  CAPTURE(I);
  const int64_t R = offsets.back(), O = 40, G = static_cast<int64_t>(offsets.size()) - 1;
  const Tensor x = uniform({R, I}, 6, -1, 1), grad_y = uniform({R, O}, 7, -1, 1);
  std::deque<Tensor> cpu_tensors, gpu_tensors;  // stable addresses for the pointer lists
  std::vector<const Tensor*> cpu_weights, cpu_biases, gpu_weights, gpu_biases;
  std::vector<Tensor*> cpu_grad_weights, cpu_grad_biases, gpu_grad_weights, gpu_grad_biases;
  for (int64_t g = 0; g < G; ++g) {
    const Tensor weight = uniform({O, I}, 10 + g, -1, 1), bias = uniform({O}, 20 + g, -1, 1);
    // Gradients that already hold values: the op adds to them.
    const Tensor grad_weight = uniform({O, I}, 30 + g, -1, 1), grad_bias = uniform({O}, 40 + g, -1, 1);
    cpu_weights.push_back(&cpu_tensors.emplace_back(weight));
    cpu_biases.push_back(&cpu_tensors.emplace_back(bias));
    cpu_grad_weights.push_back(&cpu_tensors.emplace_back(grad_weight.clone()));
    cpu_grad_biases.push_back(&cpu_tensors.emplace_back(grad_bias.clone()));
    gpu_weights.push_back(&gpu_tensors.emplace_back(gpu(weight)));
    gpu_biases.push_back(&gpu_tensors.emplace_back(gpu(bias)));
    gpu_grad_weights.push_back(&gpu_tensors.emplace_back(gpu(grad_weight)));
    gpu_grad_biases.push_back(&gpu_tensors.emplace_back(gpu(grad_bias)));
  }
  require_match(grouped_linear_forward(gpu(x), offsets, gpu_weights, gpu_biases),
                grouped_linear_forward(x, offsets, cpu_weights, cpu_biases), kSums, "y");
  require_match(grouped_linear_forward(gpu(x), offsets, gpu_weights, {}),
                grouped_linear_forward(x, offsets, cpu_weights, {}), kSums, "y without biases");
  const Tensor cpu_dx =
      grouped_linear_backward(grad_y, x, offsets, cpu_weights, cpu_grad_weights, cpu_grad_biases);
  const Tensor gpu_dx =
      grouped_linear_backward(gpu(grad_y), gpu(x), offsets, gpu_weights, gpu_grad_weights, gpu_grad_biases);
  require_match(gpu_dx, cpu_dx, kSums, "dx");
  for (int64_t g = 0; g < G; ++g) {
    require_match(*gpu_grad_weights[g], *cpu_grad_weights[g], kSums, "dW of group " + std::to_string(g));
    require_match(*gpu_grad_biases[g], *cpu_grad_biases[g], kSums, "db of group " + std::to_string(g));
  }
}

TEST_CASE("cuda: elementwise ops, columns, gathers and scatter-adds match the CPU", "[cuda]") {
  SKIP_WITHOUT_GPU();
  const Tensor a = uniform({2, 9, 13}, 6, -1, 1), b = uniform({2, 9, 13}, 7, -1, 1);
  require_match(add(gpu(a), gpu(b)), add(a, b), kExact, "add");
  require_match(multiply(gpu(a), gpu(b)), multiply(a, b), kExact, "multiply");
  require_match(scale(gpu(a), -0.5f), scale(a, -0.5f), kExact, "scale");
  Tensor cpu_sum = a.clone(), cuda_sum = gpu(a);
  add_scaled_inplace(cpu_sum, b, 0.25f);
  add_scaled_inplace(cuda_sum, gpu(b), 0.25f);
  require_match(cuda_sum, cpu_sum, kExact, "add_scaled_inplace");
  const auto [left, right] = split_last(gpu(a), 5);
  const auto [cpu_left, cpu_right] = split_last(a, 5);
  require_match(left, cpu_left, kExact, "split_last left");
  require_match(right, cpu_right, kExact, "split_last right");
  require_match(concat_last(right, left), concat_last(cpu_right, cpu_left), kExact, "concat_last");
  require_match(concat_last(right, gpu(a), left), concat_last(cpu_right, a, cpu_left), kExact, "concat_last of 3");
  require_match(columns(gpu(a), 3, 11), columns(a, 3, 11), kExact, "columns");

  const Tensor rows_of = uniform({18, 13}, 8, -1, 1);
  const std::vector<int64_t> rows{4, 0, 17, 4, 4, 9};
  const std::vector<float> scales{0.5f, -1.0f, 2.0f, 0.25f, 1.0f, -3.0f};
  require_match(gather_rows(gpu(rows_of), rows), gather_rows(rows_of, rows), kExact, "gather_rows");
  const Tensor source = uniform({6, 13}, 9, -1, 1);
  Tensor cpu_out = rows_of.clone(), cuda_out = gpu(rows_of);
  scatter_add_rows(cpu_out, source, rows, &scales);
  scatter_add_rows(cuda_out, gpu(source), rows, &scales);
  require_match(cuda_out, cpu_out, kExact, "scatter_add_rows with repeats and scales");

  std::vector<uint8_t> mask(18, 1);
  mask[3] = mask[10] = mask[17] = 0;
  Tensor cpu_masked = a.clone(), cuda_masked = gpu(a);
  zero_masked_rows(cpu_masked, mask);
  zero_masked_rows(cuda_masked, mask);
  require_match(cuda_masked, cpu_masked, kExact, "zero_masked_rows");

  require_match(sum(gpu(a)), sum(a), kSums, "sum");
  require_match(mean(gpu(a)), mean(a), kSums, "mean");
  require_match(standard_deviation(gpu(a)), standard_deviation(a), kSums, "standard_deviation");
  require_match(max_abs(gpu(a)), max_abs(a), kExact, "max_abs");
  Tensor with_nan = a.clone();
  with_nan[5] = NAN;
  CHECK(std::isnan(max_abs(gpu(with_nan))));
}

TEST_CASE("cuda: activations and the softmax family match the CPU", "[cuda]") {
  SKIP_WITHOUT_GPU();
  const Tensor x = uniform({33, 70}, 10, -6, 6), grad_y = uniform({33, 70}, 11, -1, 1);
  require_match(gelu_forward(gpu(x)), gelu_forward(x), kElementwise, "gelu");
  const Tensor gelu_y = gelu_forward(x);
  require_match(gelu_backward(gpu(grad_y), gpu(x), gpu(gelu_y)), gelu_backward(grad_y, x, gelu_y), kElementwise,
                "gelu backward");
  require_match(silu_forward(gpu(x)), silu_forward(x), kElementwise, "silu");
  require_match(silu_backward(gpu(grad_y), gpu(x)), silu_backward(grad_y, x), kElementwise, "silu backward");
  require_match(sigmoid_forward(gpu(x)), sigmoid_forward(x), kElementwise, "sigmoid");
  const Tensor y = softmax_forward(x);
  require_match(softmax_forward(gpu(x)), y, kElementwise, "softmax");
  require_match(softmax_backward(gpu(grad_y), gpu(y)), softmax_backward(grad_y, y), kElementwise, "softmax backward");
  require_match(logsumexp_forward(gpu(x)), logsumexp_forward(x), kElementwise, "logsumexp");
}

TEST_CASE("cuda: rmsnorm and layernorm match the CPU", "[cuda]") {
  SKIP_WITHOUT_GPU();
  const Tensor x = uniform({3, 11, 45}, 12, -2, 2), weight = uniform({45}, 13, 0.5f, 1.5f);
  const Tensor bias = uniform({45}, 14, -1, 1), grad_y = uniform({3, 11, 45}, 15, -1, 1);
  Tensor inv_rms, cuda_inv_rms;
  require_match(rmsnorm_forward(gpu(x), gpu(weight), &cuda_inv_rms), rmsnorm_forward(x, weight, &inv_rms), kElementwise,
                "rmsnorm");
  // The residual add fused in: the sum exactly, the norm as above.
  const Tensor delta = uniform({3, 11, 45}, 16, -2, 2);
  Tensor sum, cuda_sum, fused_inv_rms, cuda_fused_inv_rms;
  const Tensor fused = rmsnorm_forward_after_add(x, delta, weight, sum, &fused_inv_rms);
  require_match(rmsnorm_forward_after_add(gpu(x), gpu(delta), gpu(weight), cuda_sum, &cuda_fused_inv_rms), fused,
                kElementwise, "rmsnorm after add");
  require_match(cuda_sum, sum, kExact, "rmsnorm after add: the sum");
  require_match(cuda_fused_inv_rms, fused_inv_rms, kElementwise, "rmsnorm after add: inv_rms");
  const RmsNormGrads rms = rmsnorm_backward(grad_y, x, weight, inv_rms);
  const RmsNormGrads cuda_rms = rmsnorm_backward(gpu(grad_y), gpu(x), gpu(weight), cuda_inv_rms);
  require_match(cuda_rms.input, rms.input, kElementwise, "rmsnorm dx");
  require_match(cuda_rms.weight, rms.weight, kSums, "rmsnorm dweight");
  Tensor mean_saved, inv_std, cuda_mean, cuda_inv_std;
  require_match(layernorm_forward(gpu(x), gpu(weight), gpu(bias), &cuda_mean, &cuda_inv_std),
                layernorm_forward(x, weight, bias, &mean_saved, &inv_std), kElementwise, "layernorm");
  Tensor ln_sum, cuda_ln_sum, fused_mean, fused_inv_std, cuda_fused_mean, cuda_fused_inv_std;
  const Tensor ln_fused = layernorm_forward_after_add(x, delta, weight, bias, ln_sum, &fused_mean, &fused_inv_std);
  require_match(layernorm_forward_after_add(gpu(x), gpu(delta), gpu(weight), gpu(bias), cuda_ln_sum, &cuda_fused_mean,
                                            &cuda_fused_inv_std),
                ln_fused, kElementwise, "layernorm after add");
  require_match(cuda_ln_sum, ln_sum, kExact, "layernorm after add: the sum");
  require_match(cuda_fused_mean, fused_mean, kElementwise, "layernorm after add: mean");
  require_match(cuda_fused_inv_std, fused_inv_std, kElementwise, "layernorm after add: inv_std");
  const LayerNormGrads ln = layernorm_backward(grad_y, x, weight, mean_saved, inv_std);
  const LayerNormGrads cuda_ln = layernorm_backward(gpu(grad_y), gpu(x), gpu(weight), cuda_mean, cuda_inv_std);
  require_match(cuda_ln.input, ln.input, kElementwise, "layernorm dx");
  require_match(cuda_ln.weight, ln.weight, kSums, "layernorm dweight");
  require_match(cuda_ln.bias, ln.bias, kSums, "layernorm dbias");
  // The accumulating forms add to the gradients held.
  const Tensor held = uniform({45}, 16, -1, 1), held_x = uniform({3, 11, 45}, 17, -1, 1);
  Tensor weight_grad = held.clone(), cuda_weight_grad = gpu(held), bias_grad = held.clone(), cuda_bias_grad = gpu(held);
  Tensor x_grad = held_x.clone(), cuda_x_grad = gpu(held_x);
  rmsnorm_backward_accumulate(grad_y, x, weight, inv_rms, weight_grad, x_grad);
  rmsnorm_backward_accumulate(gpu(grad_y), gpu(x), gpu(weight), cuda_inv_rms, cuda_weight_grad, cuda_x_grad);
  require_match(cuda_x_grad, x_grad, kElementwise, "rmsnorm accumulated dx");
  require_match(cuda_weight_grad, weight_grad, kSums, "rmsnorm accumulated dweight");
  layernorm_backward_accumulate(grad_y, x, weight, mean_saved, inv_std, weight_grad, bias_grad, x_grad);
  layernorm_backward_accumulate(gpu(grad_y), gpu(x), gpu(weight), cuda_mean, cuda_inv_std, cuda_weight_grad,
                                cuda_bias_grad, cuda_x_grad);
  require_match(cuda_x_grad, x_grad, kElementwise, "layernorm accumulated dx");
  require_match(cuda_weight_grad, weight_grad, kSums, "layernorm accumulated dweight");
  require_match(cuda_bias_grad, bias_grad, kSums, "layernorm accumulated dbias");
}

TEST_CASE("cuda: rotary, embedding and cross-entropy match the CPU", "[cuda]") {
  SKIP_WITHOUT_GPU();
  const Tensor x = uniform({2, 17, 10}, 16, -1, 1);
  require_match(rotary_forward(gpu(x), 3), rotary_forward(x, 3), kExact, "rotary");
  require_match(rotary_backward(gpu(x), 3), rotary_backward(x, 3), kExact, "rotary backward");

  const std::vector<int32_t> ids{3, 0, 3, 7, 7, 7, 1, 0};
  const Tensor table = uniform({9, 6}, 17, -1, 1), grad_out = uniform({2, 4, 6}, 18, -1, 1);
  require_match(embedding_forward(ids, 2, 4, gpu(table)), embedding_forward(ids, 2, 4, table), kExact, "embedding");
  require_match(embedding_backward(gpu(grad_out), ids, 9), embedding_backward(grad_out, ids, 9), kExact,
                "embedding backward");

  const Tensor logits = uniform({2, 5, 301}, 19, -5, 5);
  std::vector<int32_t> targets{0, 300, -1, 17, 5, -1, 100, 2, 2, 299};
  const CrossEntropyResult cpu = cross_entropy(logits, targets, true);
  const CrossEntropyResult cuda = cross_entropy(gpu(logits), targets, true);
  require_match(cuda.loss, cpu.loss, kSums, "cross-entropy loss");
  CHECK(cuda.scored == cpu.scored);
  CHECK(cuda.correct == cpu.correct);
  require_match(cuda.grad_logits, cpu.grad_logits, kElementwise, "cross-entropy gradient");
  CHECK(!cross_entropy(gpu(logits), targets, false).grad_logits.defined());
}

TEST_CASE("cuda: causal conv1d matches the CPU for every kernel width 1 to 8, and 12", "[cuda]") {
  SKIP_WITHOUT_GPU();
  for (int64_t K : {1, 2, 3, 4, 5, 6, 7, 8, 12}) {
    for (int64_t L : {1, 5, 70, 131}) {
      const Tensor x = uniform({2, L, 133}, 20, -1, 1), weight = uniform({133, 1, K}, 21, -1, 1);
      const Tensor bias = uniform({133}, 22, -1, 1), grad_y = uniform({2, L, 133}, 23, -1, 1);
      const std::string shape = "K " + std::to_string(K) + " L " + std::to_string(L);
      require_match(causal_conv1d_forward(gpu(x), gpu(weight), gpu(bias)), causal_conv1d_forward(x, weight, bias),
                    kElementwise, "conv1d " + shape);
      const CausalConv1dGrads cpu = causal_conv1d_backward(grad_y, x, weight);
      const CausalConv1dGrads cuda = causal_conv1d_backward(gpu(grad_y), gpu(x), gpu(weight));
      require_match(cuda.input, cpu.input, kElementwise, "conv1d dx " + shape);
      require_match(cuda.weight, cpu.weight, kSums, "conv1d dweight " + shape);
      require_match(cuda.bias, cpu.bias, kSums, "conv1d dbias " + shape);
      Tensor weight_grad = weight.clone(), cuda_weight_grad = gpu(weight), bias_grad = bias.clone(),
             cuda_bias_grad = gpu(bias);
      causal_conv1d_backward_accumulate(grad_y, x, weight, weight_grad, bias_grad);
      causal_conv1d_backward_accumulate(gpu(grad_y), gpu(x), gpu(weight), cuda_weight_grad, cuda_bias_grad);
      require_match(cuda_weight_grad, weight_grad, kSums, "conv1d accumulated dweight " + shape);
      require_match(cuda_bias_grad, bias_grad, kSums, "conv1d accumulated dbias " + shape);
    }
  }
}

namespace {

// One scan case on both backends: forward (with the final state) and every gradient. `pieces` > 0 asks the
// CUDA kernels to cut the sequence into that many pieces (SelectiveScanInputs::cuda_pieces), `part_blocks` > 0
// the backward to run over that many blocks of channels at a time (SelectiveScanInputs::cuda_part_blocks).
void check_scan(int64_t B, int64_t L, int64_t E, int64_t N, bool gated, bool softplus, int64_t pieces = 0,
                int64_t part_blocks = 0) {
  const std::string shape = "B " + std::to_string(B) + " L " + std::to_string(L) + " E " + std::to_string(E) + " N " +
                            std::to_string(N) + (gated ? " with D, z, bias" : " plain") +
                            (softplus ? "" : ", no softplus") +
                            (pieces > 0 ? ", " + std::to_string(pieces) + " pieces asked" : "") +
                            (part_blocks > 0 ? ", " + std::to_string(part_blocks) + " channel blocks a launch" : "");
  Tensor u = uniform({B, L, E}, 30, -1, 1), delta = uniform({B, L, E}, 31, softplus ? -1 : 0.001f, softplus ? 1 : 0.1f);
  Tensor A({E, N});
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t n = 0; n < N; ++n)
      A[e * N + n] = -static_cast<float>(n + 1) * (1.0f + 0.01f * static_cast<float>(e % 7));
  }
  Tensor Bm = uniform({B, L, N}, 32, -1, 1), Cm = uniform({B, L, N}, 33, -1, 1), D = uniform({E}, 34, 0.5f, 1.5f);
  Tensor z = uniform({B, L, E}, 35, -2, 2), bias = uniform({E}, 36, -5, -2.5f);
  const Tensor grad_out = uniform({B, L, E}, 37, -1, 1);
  std::deque<Tensor> placed;  // a deque: the pointers stay valid as it grows
  auto inputs = [&](bool on_gpu) {
    auto place = [&](const Tensor& tensor) -> const Tensor* {
      placed.push_back(on_gpu ? gpu(tensor) : tensor);
      return &placed.back();
    };
    SelectiveScanInputs in;
    in.u = place(u);
    in.delta = place(delta);
    in.A = place(A);
    in.B = place(Bm);
    in.C = place(Cm);
    if (gated) {
      in.D = place(D);
      in.z = place(z);
      in.delta_bias = place(bias);
    }
    in.delta_softplus = softplus;
    if (on_gpu) {
      in.cuda_pieces = pieces;
      in.cuda_part_blocks = part_blocks;
    }
    return in;
  };
  const SelectiveScanInputs cpu_in = inputs(false), cuda_in = inputs(true);
  Tensor state, cuda_state;
  require_match(selective_scan_forward(cuda_in, &cuda_state), selective_scan_forward(cpu_in, &state), kScan,
                "scan out " + shape);
  require_match(cuda_state, state, kScan, "scan final state " + shape);
  const SelectiveScanGrads cpu = selective_scan_backward(grad_out, cpu_in);
  const SelectiveScanGrads cuda = selective_scan_backward(gpu(grad_out), cuda_in);
  require_match(cuda.u, cpu.u, kScan, "scan du " + shape);
  require_match(cuda.delta, cpu.delta, kScan, "scan ddelta " + shape);
  require_match(cuda.A, cpu.A, kScan, "scan dA " + shape);
  require_match(cuda.B, cpu.B, kScan, "scan dB " + shape);
  require_match(cuda.C, cpu.C, kScan, "scan dC " + shape);
  // No atomics: a second backward gives the same bits.
  const SelectiveScanGrads again = selective_scan_backward(gpu(grad_out), cuda_in);
  CHECK(again.A.to_vector() == cuda.A.to_vector());
  CHECK(again.B.to_vector() == cuda.B.to_vector());
  CHECK(again.C.to_vector() == cuda.C.to_vector());
  CHECK(again.delta.to_vector() == cuda.delta.to_vector());
  if (gated) {
    CHECK(again.D.to_vector() == cuda.D.to_vector());
    CHECK(again.delta_bias.to_vector() == cuda.delta_bias.to_vector());
    require_match(cuda.D, cpu.D, kScan, "scan dD " + shape);
    require_match(cuda.z, cpu.z, kScan, "scan dz " + shape);
    require_match(cuda.delta_bias, cpu.delta_bias, kScan, "scan ddelta_bias " + shape);
  } else {
    CHECK(!cuda.D.defined());
    CHECK(!cuda.z.defined());
    CHECK(!cuda.delta_bias.defined());
  }

  // The accumulating form: the kernels' reduction adds dA ⊙ A (A_log's gradient), dD and d(delta_bias) to
  // gradients that hold something already; the same floats as the plain form's added by separate ops.
  const Tensor A_log_start = gpu(uniform({E, N}, 38, -1, 1)), D_start = gpu(uniform({E}, 39, -1, 1)),
               bias_start = gpu(uniform({E}, 40, -1, 1));
  Tensor grad_A_log = A_log_start.clone(), grad_D = D_start.clone(), grad_bias = bias_start.clone();
  const SelectiveScanGrads accumulated = selective_scan_backward_accumulate(
      gpu(grad_out), cuda_in, grad_A_log, gated ? &grad_D : nullptr, gated ? &grad_bias : nullptr);
  Tensor expected_A_log = A_log_start.clone();
  add_inplace(expected_A_log, multiply(cuda.A, *cuda_in.A));
  CHECK(grad_A_log.to_vector() == expected_A_log.to_vector());
  if (gated) {
    Tensor expected_D = D_start.clone(), expected_bias = bias_start.clone();
    add_inplace(expected_D, cuda.D);
    add_inplace(expected_bias, cuda.delta_bias);
    CHECK(grad_D.to_vector() == expected_D.to_vector());
    CHECK(grad_bias.to_vector() == expected_bias.to_vector());
    CHECK(accumulated.z.to_vector() == cuda.z.to_vector());
  }
  CHECK(accumulated.u.to_vector() == cuda.u.to_vector());
  CHECK(accumulated.delta.to_vector() == cuda.delta.to_vector());
  CHECK(accumulated.B.to_vector() == cuda.B.to_vector());
  CHECK(accumulated.C.to_vector() == cuda.C.to_vector());
  CHECK(!accumulated.A.defined());
}

}  // namespace

TEST_CASE("cuda: the selective scan matches the CPU over state sizes 1 to 256 and lengths across checkpoints",
          "[cuda]") {
  SKIP_WITHOUT_GPU();
  // N: one lane (1, 5, 8), two (16), four (32 − 3), eight (64), thirty-two (256). L: one step, a partial chunk,
  // more than one 64-step segment with a partial sub-chunk. E not a multiple of the channels per block.
  for (int64_t N : {1, 5, 8, 16, 29, 64, 256}) {
    for (int64_t L : {1, 13, 70, 200}) check_scan(2, L, 37, N, true, true);
  }
  check_scan(1, 65, 130, 16, false, true);
  check_scan(3, 40, 20, 12, false, false);  // Δ = delta itself, in [0.001, 0.1]
}

TEST_CASE("cuda: the selective scan cut into pieces of the sequence matches the CPU", "[cuda]") {
  SKIP_WITHOUT_GPU();
  // L 200: 4 segments, as 2 pieces of 128 steps (3 asked) or 4 of 64 (the last 8 steps long); L 130:
  // 3 pieces, the last 2 steps long. One, two and eight lanes per channel; with and without the gate.
  for (int64_t N : {5, 16, 64}) {
    for (int64_t pieces : {2, 3, 4}) check_scan(2, 200, 37, N, true, true, pieces);
  }
  check_scan(1, 130, 70, 16, false, true, 3);
  check_scan(3, 129, 20, 12, false, false, 3);  // no softplus: Δ = delta itself
  // The other lane counts in pieces (a GPU with many multiprocessors cuts short scans by itself): one lane
  // at N = 1, four at N = 29, thirty-two at N = 256.
  check_scan(2, 200, 37, 1, true, true, 4);
  check_scan(2, 200, 37, 29, true, true, 3);
  check_scan(2, 130, 9, 256, true, true, 3);
}

TEST_CASE("cuda: the selective scan backward over a few blocks of channels at a time matches the CPU", "[cuda]") {
  SKIP_WITHOUT_GPU();
  // E 130 at N 16: 3 blocks of 64 channels, the last partial; E 37 at N 64: 3 blocks of 16. Each block of
  // channels alone, or two then one, with the sequence whole and in pieces.
  for (int64_t part_blocks : {1, 2}) {
    check_scan(2, 70, 130, 16, true, true, 0, part_blocks);
    check_scan(2, 200, 37, 64, true, true, 3, part_blocks);
  }
  check_scan(1, 13, 130, 16, false, false, 0, 1);
}

TEST_CASE("cuda: the selective scan rejects state sizes above 256 and batches above 65535 in one line", "[cuda]") {
  SKIP_WITHOUT_GPU();
  const Tensor u({1, 2, 3}, Device::cuda), A({3, 257}, Device::cuda), Bm({1, 2, 257}, Device::cuda);
  SelectiveScanInputs in;
  in.u = &u;
  in.delta = &u;
  in.A = &A;
  in.B = &Bm;
  in.C = &Bm;
  REQUIRE_THROWS_WITH(selective_scan_forward(in), Catch::Matchers::Contains("d_state N from 1 to 256"));
  // One batch row per grid row: 65536 rows are one too many.
  const Tensor wide_u({65536, 1, 1}, Device::cuda), small_A({1, 1}, Device::cuda), wide_B({65536, 1, 1}, Device::cuda);
  in.u = &wide_u;
  in.delta = &wide_u;
  in.A = &small_A;
  in.B = &wide_B;
  in.C = &wide_B;
  REQUIRE_THROWS_WITH(selective_scan_forward(in), Catch::Matchers::Contains("at most 65535 batch rows") &&
                                                     Catch::Matchers::Contains("B = 65536"));
}

TEST_CASE("cuda: step-mode conv, prompt conv state and scan step match the CPU", "[cuda]") {
  SKIP_WITHOUT_GPU();
  struct StepShape {
    int64_t B, E, N, K;
    bool gated;
  };
  for (const StepShape& c : std::vector<StepShape>{{1, 64, 16, 4, true}, {3, 37, 5, 1, false}, {2, 96, 256, 3, true}, {2, 40, 8, 12, true}}) {
    const std::string shape = "B " + std::to_string(c.B) + " E " + std::to_string(c.E) + " N " +
                              std::to_string(c.N) + " K " + std::to_string(c.K);
    // Three steps from the same states on both backends: outputs and states after each.
    const Tensor weight = uniform({c.E, 1, c.K}, 81, -0.5, 0.5), bias = uniform({c.E}, 82, -0.5, 0.5);
    const Tensor gpu_weight = gpu(weight), gpu_bias = gpu(bias);
    Tensor cpu_conv = uniform({c.B, c.E, c.K - 1}, 83, -1, 1), gpu_conv = gpu(cpu_conv);
    const Tensor A = uniform({c.E, c.N}, 84, -2, -0.1), D = uniform({c.E}, 85, -1, 1);
    const Tensor delta_bias = uniform({c.E}, 86, -2, 0);
    const Tensor gpu_A = gpu(A), gpu_D = gpu(D), gpu_delta_bias = gpu(delta_bias);
    Tensor cpu_ssm = uniform({c.B, c.E, c.N}, 87, -1, 1), gpu_ssm = gpu(cpu_ssm);
    for (uint64_t step = 0; step < 3; ++step) {
      const Tensor x = uniform({c.B, c.E}, 90 + step, -1, 1);
      const Tensor cpu_y = causal_conv1d_step(cpu_conv, x, weight, bias);
      require_match(causal_conv1d_step(gpu_conv, gpu(x), gpu_weight, gpu_bias), cpu_y, kElementwise,
                    "conv y " + shape);
      require_match(gpu_conv, cpu_conv, kExact, "conv state " + shape);

      const Tensor delta = uniform({c.B, c.E}, 100 + step, -3, 3), z = uniform({c.B, c.E}, 110 + step, -3, 3);
      const Tensor Bm = uniform({c.B, c.N}, 120 + step, -1, 1), Cm = uniform({c.B, c.N}, 130 + step, -1, 1);
      const Tensor gpu_cpu_y = gpu(cpu_y), gpu_delta = gpu(delta), gpu_z = gpu(z), gpu_B = gpu(Bm), gpu_C = gpu(Cm);
      SelectiveScanStepInputs cpu_in{&cpu_y, &delta, &A, &Bm, &Cm, &D, c.gated ? &z : nullptr, &delta_bias, true};
      SelectiveScanStepInputs gpu_in{&gpu_cpu_y, &gpu_delta, &gpu_A, &gpu_B, &gpu_C, &gpu_D,
                                     c.gated ? &gpu_z : nullptr, &gpu_delta_bias, true};
      require_match(selective_scan_step(gpu_ssm, gpu_in), selective_scan_step(cpu_ssm, cpu_in), kElementwise,
                    "scan out " + shape);
      require_match(gpu_ssm, cpu_ssm, kElementwise, "scan state " + shape);
    }
    // The conv state a right-padded batch of prompts leaves: lengths 7, 2, 5 of L = 7.
    const Tensor prompts = uniform({c.B, 7, c.E}, 140, -1, 1);
    const std::vector<int64_t> all_lengths{7, 2, 5};
    const std::vector<int64_t> lengths(all_lengths.begin(), all_lengths.begin() + c.B);
    require_match(causal_conv1d_final_state(gpu(prompts), c.K, &lengths),
                  causal_conv1d_final_state(prompts, c.K, &lengths), kExact, "prompt conv state " + shape);
    require_match(causal_conv1d_final_state(gpu(prompts), c.K), causal_conv1d_final_state(prompts, c.K), kExact,
                  "full-length conv state " + shape);
  }
}

TEST_CASE("cuda: small ops and optimizer updates match the CPU", "[cuda]") {
  SKIP_WITHOUT_GPU();
  const Tensor A_log = uniform({7, 5}, 40, -1, 3), a = uniform({9, 31}, 41, -1, 1), b = uniform({9, 31}, 42, -1, 1);
  require_match(negative_exp(gpu(A_log)), negative_exp(A_log), kElementwise, "negative_exp");
  const std::vector<float> dots = row_dot(gpu(a), gpu(b)), expected = row_dot(a, b);
  CHECK(kElementwise.accepts(compare_values({dots.begin(), dots.end()}, {expected.begin(), expected.end()})));
  const std::vector<float> scales{1, 0.5f, -2, 0, 3, 1, 1, 0.25f, -1};
  require_match(scale_rows(gpu(a), scales), scale_rows(a, scales), kExact, "scale_rows");

  Tensor p = a.clone(), m({9, 31}), v({9, 31}), cuda_p = gpu(a), cuda_m({9, 31}, Device::cuda),
         cuda_v({9, 31}, Device::cuda);
  for (int64_t step = 1; step <= 3; ++step) {
    const Tensor grad = uniform({9, 31}, 43 + step, -1, 1);
    const AdamWHyper hyper{1e-2, 0.9, 0.999, 1e-8, 0.1, step};
    adamw_update(p, grad, m, v, hyper);
    adamw_update(cuda_p, gpu(grad), cuda_m, cuda_v, hyper);
  }
  require_match(cuda_p, p, kElementwise, "adamw parameter");
  require_match(cuda_m, m, kElementwise, "adamw m");
  require_match(cuda_v, v, kElementwise, "adamw v");
  Tensor buffer({9, 31}), cuda_buffer({9, 31}, Device::cuda);
  const Tensor grad = uniform({9, 31}, 50, -1, 1);
  sgd_update(p, grad, buffer, 0.1, 0.9, 0.01);
  sgd_update(cuda_p, gpu(grad), cuda_buffer, 0.1, 0.9, 0.01);
  require_match(cuda_p, p, kElementwise, "sgd parameter");
  require_match(squared_norm(cuda_p), squared_norm(p), kSums, "squared_norm");
}

TEST_CASE("cuda: AdamW, scaling and filling of many tensors at once give the bits of one at a time", "[cuda]") {
  SKIP_WITHOUT_GPU();
  // Sizes around the kernels' chunk of 65536 values, and an empty tensor.
  const std::vector<int64_t> sizes{5, 0, 65536, 70001};
  std::vector<Tensor> one_p, one_m, one_v, many_p, many_m, many_v, grads;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const Tensor p = uniform({sizes[i]}, 70 + i, -1, 1), g = uniform({sizes[i]}, 80 + i, -1, 1);
    grads.push_back(gpu(g));
    for (auto* list : {&one_p, &many_p}) list->push_back(gpu(p));
    for (auto* list : {&one_m, &one_v, &many_m, &many_v}) list->push_back(Tensor({sizes[i]}, Device::cuda));
  }
  const std::vector<double> decays{0.1, 0.0, 0.1, 0.05};
  for (int64_t step = 1; step <= 2; ++step) {
    std::vector<AdamWTensors> entries;
    for (size_t i = 0; i < sizes.size(); ++i) {
      const AdamWHyper hyper{1e-2, 0.9, 0.999, 1e-8, decays[i], step};
      adamw_update(one_p[i], grads[i], one_m[i], one_v[i], hyper);
      entries.push_back(AdamWTensors{&many_p[i], &grads[i], &many_m[i], &many_v[i], decays[i]});
    }
    adamw_update(entries, AdamWHyper{1e-2, 0.9, 0.999, 1e-8, 0.0, step});
  }
  std::vector<Tensor*> scaled;
  for (size_t i = 0; i < sizes.size(); ++i) {
    INFO("tensor " << i);
    CHECK(test::to_double(many_p[i]) == test::to_double(one_p[i]));
    CHECK(test::to_double(many_m[i]) == test::to_double(one_m[i]));
    CHECK(test::to_double(many_v[i]) == test::to_double(one_v[i]));
    scaled.push_back(&many_p[i]);
  }
  scale_inplace(scaled, 0.375f);
  for (size_t i = 0; i < sizes.size(); ++i) {
    INFO("tensor " << i);
    CHECK(test::to_double(many_p[i]) == test::to_double(scale(one_p[i].to(Device::cpu), 0.375f)));
  }
  fill_inplace(scaled, -1.5f);
  for (size_t i = 0; i < sizes.size(); ++i) {
    INFO("tensor " << i);
    CHECK(test::to_double(many_p[i]) == std::vector<double>(static_cast<size_t>(sizes[i]), -1.5));
  }
}

TEST_CASE("cuda: the squared norm of many tensors at once matches the CPU", "[cuda]") {
  SKIP_WITHOUT_GPU();
  // Sizes from empty to more than one block row of the reduction (512 blocks of 256 values).
  std::vector<Tensor> cpu, cuda;
  for (const int64_t n : {0, 1, 7, 256, 1000, 140000}) {
    cpu.push_back(uniform({n}, 60 + static_cast<uint64_t>(n), -2, 2));
    cuda.push_back(gpu(cpu.back()));
  }
  std::vector<const Tensor*> cpu_list, cuda_list{nullptr};  // a null entry adds nothing
  for (size_t i = 0; i < cpu.size(); ++i) {
    cpu_list.push_back(&cpu[i]);
    cuda_list.push_back(&cuda[i]);
  }
  double one_by_one = 0;
  for (const Tensor& x : cpu) one_by_one += squared_norm(x);
  require_match(squared_norm(cuda_list), one_by_one, kSums, "squared_norm of the list on CUDA");
  CHECK(squared_norm(cpu_list) == one_by_one);  // the CPU adds the same sums in the same order
  CHECK(squared_norm(std::vector<const Tensor*>{}) == 0.0);
}

TEST_CASE("cuda: the self-check of backend auto passes (a small model forward and backward)", "[cuda]") {
  SKIP_WITHOUT_GPU();
  CHECK(cuda_self_check() == "");
}

TEST_CASE("cuda: top-k and capacity match the CPU routing ops", "[cuda]") {
  SKIP_WITHOUT_GPU();
  const int64_t T = 300, X = 6, k = 2;
  Tensor scores = uniform({T, X}, 60, 0, 1);
  scores[7 * X + 1] = scores[7 * X + 4] = 2.0f;  // a tie: the lower index first
  std::vector<uint8_t> mask(T, 1);
  for (int64_t t = 0; t < T; t += 11) mask[static_cast<size_t>(t)] = 0;
  std::vector<int32_t> expert;
  std::vector<float> value;
  top_k(scores, k, expert, value);
  const int64_t capacity = 60;
  std::vector<int32_t> kept = expert;
  const int64_t dropped = apply_capacity(kept, k, X, capacity, &mask);

  const Tensor gpu_scores = gpu(scores);
  cuda::DeviceBuffer index(T * k * sizeof(int32_t)), values(T * k * sizeof(float)), slot(T * k * sizeof(int32_t)),
      routed(X * sizeof(int64_t)), kept_counts(X * sizeof(int64_t));
  top_k_cuda(gpu_scores.data(), T, X, k, index.as<int32_t>(), values.as<float>(), cuda::stream());
  CHECK(cuda::download<int32_t>(index, T * k) == expert);
  CHECK(cuda::download<float>(values, T * k) == value);
  const cuda::DeviceBuffer gpu_mask = cuda::upload(mask);
  apply_capacity_cuda(index.as<int32_t>(), T, k, X, capacity, gpu_mask.as<uint8_t>(), slot.as<int32_t>(),
                      routed.as<int64_t>(), kept_counts.as<int64_t>(), cuda::stream());
  CHECK(cuda::download<int32_t>(index, T * k) == kept);
  const std::vector<int64_t> routed_host = cuda::download<int64_t>(routed, X),
                             kept_host = cuda::download<int64_t>(kept_counts, X);
  int64_t gpu_dropped = 0;
  for (int64_t j = 0; j < X; ++j) gpu_dropped += routed_host[j] - kept_host[j];
  CHECK(gpu_dropped == dropped);

  // Slots in claim order (r first, then t), and the expert-major permutation and combine.
  std::vector<int64_t> used(X, 0), first_row(X + 1, 0);
  std::vector<int32_t> expected_slot(T * k, -1);
  for (int64_t r = 0; r < k; ++r) {
    for (int64_t t = 0; t < T; ++t) {
      const int32_t j = kept[t * k + r];
      if (j >= 0) expected_slot[t * k + r] = static_cast<int32_t>(used[j]++);
    }
  }
  CHECK(cuda::download<int32_t>(slot, T * k) == expected_slot);
  for (int64_t j = 0; j < X; ++j) first_row[j + 1] = first_row[j] + used[j];
  const cuda::DeviceBuffer first_rows = cuda::upload(first_row);
  cuda::DeviceBuffer token_of_row(T * k * sizeof(int64_t)), position(T * k * sizeof(int64_t));
  routing_permutation_cuda(index.as<int32_t>(), slot.as<int32_t>(), first_rows.as<int64_t>(), T, k,
                           token_of_row.as<int64_t>(), position.as<int64_t>(), cuda::stream());
  const std::vector<int64_t> positions = cuda::download<int64_t>(position, T * k);
  const std::vector<int64_t> tokens = cuda::download<int64_t>(token_of_row, first_row[X]);
  for (int64_t a = 0; a < T * k; ++a) {
    if (kept[a] < 0) {
      CHECK(positions[a] == -1);
    } else {
      CHECK(positions[a] == first_row[kept[a]] + expected_slot[a]);
      CHECK(tokens[positions[a]] == a / k);
    }
  }
  const int64_t D = 5;
  const Tensor expert_out = uniform({std::max<int64_t>(first_row[X], 1), D}, 61, -1, 1);
  const std::vector<float> gate(T * k, 0.5f);
  const cuda::DeviceBuffer gpu_gate = cuda::upload(gate);
  const Tensor gpu_expert_out = gpu(expert_out);
  Tensor combined({T, D}, Device::cuda), expected({T, D});
  combine_from_experts_cuda(gpu_expert_out.data(), position.as<int64_t>(), gpu_gate.as<float>(), combined.data(), T, k,
                            D, cuda::stream());
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t r = 0; r < k; ++r) {
      if (positions[t * k + r] < 0) continue;
      for (int64_t d = 0; d < D; ++d) expected[t * D + d] += 0.5f * expert_out[positions[t * k + r] * D + d];
    }
  }
  require_match(combined, expected, kExact, "combine_from_experts");
}

}  // namespace mr1
