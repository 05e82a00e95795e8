// Times the CPU selective scan, forward and backward, at the seed shape (B=4, L=512, E=256, N=16)
// with every option on (D, z, delta_bias, softplus); the backward both recomputing its checkpoints and
// taking the forward's. Not a test: build and run it by hand after the project's build, e.g.
//   g++ -std=c++17 -O3 -march=native -fopenmp -I. -I/usr/include/eigen3 tests/bench/scan_bench.cpp
//     build/libmamba_r1_core.a -L/usr/local/cuda/lib64 -lcublas -lcudart -lspdlog -lfmt -o /tmp/scan_bench
//   OMP_NUM_THREADS=1 /tmp/scan_bench      (one core)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/selective_scan.h"

namespace {

using mr1::Tensor;

Tensor uniform(mr1::Shape shape, std::mt19937_64& generator, float low, float high) {
  Tensor tensor(std::move(shape));
  std::uniform_real_distribution<float> distribution(low, high);
  for (int64_t i = 0; i < tensor.numel(); ++i) tensor[i] = distribution(generator);
  return tensor;
}

// Median and best of `repeats` timed runs after one warm-up, in milliseconds.
void report(const char* what, int repeats, const std::function<void()>& run) {
  run();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    run();
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  std::printf("%-40s median %7.2f ms   best %7.2f ms   (%d runs)\n", what, times[times.size() / 2], times.front(),
              repeats);
}

}  // namespace

int main() {
  const int64_t batch = 4, length = 512, channels = 256, state = 16;
  std::mt19937_64 generator(1234);
  Tensor u = uniform({batch, length, channels}, generator, -1, 1);
  Tensor delta = uniform({batch, length, channels}, generator, -4, 0);
  Tensor A({channels, state});  // mamba's initialisation: A[e, n] = −(n + 1)
  for (int64_t e = 0; e < channels; ++e) {
    for (int64_t n = 0; n < state; ++n) A[e * state + n] = -static_cast<float>(n + 1);
  }
  Tensor B = uniform({batch, length, state}, generator, -1, 1);
  Tensor C = uniform({batch, length, state}, generator, -1, 1);
  Tensor D = Tensor::full({channels}, 1.0f);
  Tensor z = uniform({batch, length, channels}, generator, -2, 2);
  Tensor delta_bias = uniform({channels}, generator, -4, -2);
  Tensor grad_out = uniform({batch, length, channels}, generator, -1, 1);

  mr1::SelectiveScanInputs inputs;
  inputs.u = &u;
  inputs.delta = &delta;
  inputs.A = &A;
  inputs.B = &B;
  inputs.C = &C;
  inputs.D = &D;
  inputs.z = &z;
  inputs.delta_bias = &delta_bias;
  inputs.delta_softplus = true;

  int threads = 1;
#ifdef _OPENMP
  threads = omp_get_max_threads();
#endif
  std::printf("selective scan B=%lld L=%lld E=%lld N=%lld, %d threads\n", static_cast<long long>(batch),
              static_cast<long long>(length), static_cast<long long>(channels), static_cast<long long>(state),
              threads);
  double checksum = 0;
  report("forward", 50, [&] { checksum += mr1::selective_scan_forward(inputs)[0]; });
  report("backward", 20, [&] { checksum += mr1::selective_scan_backward(grad_out, inputs).A[0]; });
  Tensor checkpoints;
  mr1::selective_scan_forward(inputs, nullptr, &checkpoints);
  mr1::SelectiveScanInputs with_checkpoints = inputs;
  with_checkpoints.checkpoints = &checkpoints;
  report("backward from the forward's checkpoints", 20,
         [&] { checksum += mr1::selective_scan_backward(grad_out, with_checkpoints).A[0]; });
  std::printf("(checksum %g)\n", checksum);
  return 0;
}
