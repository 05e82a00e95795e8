// mamba-r1-scan-bench [B L E N [REPEATS [PIECES]]]: the CUDA selective scan's achieved memory bandwidth.
// The forward must read u, delta, z (B·L·E each), B and C (B·L·N each), A (E·N), D and delta_bias (E) once,
// and write out (B·L·E) once; those bytes over the kernel's time, against the device's peak
// (2 × memory clock × bus width). The backward's time is reported beside it. Default shape: B = 8,
// L = 2048, E = 2048, N = 16 (the target: the forward at 60% or more of peak).
// Beside that peak it measures the ceiling: a device-to-device copy of 1 GiB, bytes read plus written.
// The kernels cut a sequence into pieces when the grid is short of the device (selective_scan_cuda.h); the
// lines name how many, PIECES > 0 asks for that many, and when there is more than one the uncut scan is
// timed too, for comparison. Exit 3 with one line when no GPU can be used.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda_device.h"
#include "kernels/selective_scan_cuda.h"

namespace {

using Clock = std::chrono::steady_clock;

// A device buffer of `count` floats, uniform in [low, high).
mr1::cuda::DeviceBuffer random_buffer(int64_t count, std::mt19937& generator, float low, float high) {
  std::vector<float> values(static_cast<size_t>(count));
  std::uniform_real_distribution<float> distribution(low, high);
  for (float& value : values) value = distribution(generator);
  return mr1::cuda::upload(values);
}

// Median milliseconds per run over `repeats` samples, after two warm-up runs. A sample times 10 runs
// launched back to back and waits once, so the wait's own latency is spread over them.
double median_milliseconds(int repeats, const std::function<void()>& run) {
  constexpr int kRunsPerSample = 10;
  run();
  run();
  mr1::cuda::synchronize();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const auto start = Clock::now();
    for (int r = 0; r < kRunsPerSample; ++r) run();
    mr1::cuda::synchronize();
    times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count() / kRunsPerSample);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  using namespace mr1;
  int64_t B = 8, L = 2048, E = 2048, N = 16;
  int repeats = 20;
  int64_t requested_pieces = 0;
  if (argc != 1 && (argc < 5 || argc > 7)) {
    std::fprintf(stderr, "usage: mamba-r1-scan-bench [B L E N [REPEATS [PIECES]]]\n");
    return 2;
  }
  if (argc >= 5) {
    B = std::atoll(argv[1]);
    L = std::atoll(argv[2]);
    E = std::atoll(argv[3]);
    N = std::atoll(argv[4]);
  }
  if (argc >= 6) repeats = std::max(1, std::atoi(argv[5]));
  if (argc == 7) requested_pieces = std::max(0, std::atoi(argv[6]));
  const std::string reason = cuda::unavailable_reason();
  if (!reason.empty()) {
    std::fprintf(stderr, "scan bench: no GPU: %s\n", reason.c_str());
    return 3;
  }
  try {
    const cuda::DeviceInfo device = cuda::device_info();
    std::mt19937 generator(1234);
    const int64_t tokens = B * L;
    cuda::DeviceBuffer u = random_buffer(tokens * E, generator, -1, 1);
    cuda::DeviceBuffer delta = random_buffer(tokens * E, generator, -1, 1);
    cuda::DeviceBuffer z = random_buffer(tokens * E, generator, -2, 2);
    cuda::DeviceBuffer Bm = random_buffer(tokens * N, generator, -1, 1);
    cuda::DeviceBuffer Cm = random_buffer(tokens * N, generator, -1, 1);
    cuda::DeviceBuffer A = random_buffer(E * N, generator, -8, -0.5f);
    cuda::DeviceBuffer D = random_buffer(E, generator, 0.5f, 1.5f);
    cuda::DeviceBuffer bias = random_buffer(E, generator, -5, -2.5f);
    cuda::DeviceBuffer grad_out = random_buffer(tokens * E, generator, -1, 1);
    cuda::DeviceBuffer out(tokens * E * sizeof(float)), state(B * E * N * sizeof(float));

    SelectiveScanPointers in;
    in.u = u.as<float>();
    in.delta = delta.as<float>();
    in.A = A.as<float>();
    in.B = Bm.as<float>();
    in.C = Cm.as<float>();
    in.D = D.as<float>();
    in.z = z.as<float>();
    in.delta_bias = bias.as<float>();
    in.delta_softplus = true;
    void* stream = cuda::stream();

    // The backward's gradients, zero-filled before each run (its sums add to them).
    cuda::DeviceBuffer du(tokens * E * sizeof(float)), dd(tokens * E * sizeof(float)), dz(tokens * E * sizeof(float)),
        dA(E * N * sizeof(float)), dB(tokens * N * sizeof(float)), dC(tokens * N * sizeof(float)),
        dD(E * sizeof(float)), dbias(E * sizeof(float));
    SelectiveScanGradPointers grads{du.as<float>(), dd.as<float>(), dA.as<float>(), dB.as<float>(),
                                    dC.as<float>(), dD.as<float>(), dz.as<float>(), dbias.as<float>()};
    // Median milliseconds of the forward and of the backward, with the sequence cut into `pieces`.
    const auto time_scan = [&](int64_t pieces) {
      in.pieces = pieces;
      const double forward = median_milliseconds(
          repeats, [&] { selective_scan_forward_cuda(in, out.as<float>(), nullptr, B, L, E, N, stream); });
      const double backward = median_milliseconds(repeats, [&] {
        for (cuda::DeviceBuffer* buffer : {&dA, &dB, &dC, &dD, &dbias})
          cuda::memset_zero(buffer->as<void>(), buffer->bytes());
        selective_scan_backward_cuda(grad_out.as<float>(), in, grads, B, L, E, N, stream);
      });
      return std::make_pair(forward, backward);
    };
    const int64_t pieces = selective_scan_cuda_pieces(B, L, E, N, device.multiprocessors, requested_pieces).count;
    const auto [forward_ms, backward_ms] = time_scan(pieces);
    const std::vector<float> cut_out = cuda::download<float>(out, static_cast<size_t>(tokens * E));

    const double forward_bytes = 4.0 * (4.0 * tokens * E + 2.0 * tokens * N + E * N + 2.0 * E);
    // The least the backward must move: read u, delta, z, dout (and again u, delta for the checkpoints), B, C;
    // write du, ddelta, dz, dB, dC. Not counted: the checkpoints and the parts of dB and dC that each block
    // of channels writes and the reduction reads back (said under the table).
    const double backward_bytes = 4.0 * (9.0 * tokens * E + 4.0 * tokens * N);
    const double peak = device.peak_bandwidth;
    const auto print = [&](const char* label, double ms, double bytes) {
      const double bandwidth = bytes / (ms * 1e-3);
      std::printf("%-24s B=%lld L=%lld E=%lld N=%lld: %8.3f ms, %7.1f MB moved, %7.0f GB/s = %5.1f%% of peak\n",
                  label, static_cast<long long>(B), static_cast<long long>(L), static_cast<long long>(E),
                  static_cast<long long>(N), ms, bytes / 1e6, bandwidth / 1e9, 100.0 * bandwidth / peak);
    };
    std::printf("device: %s (sm_%d%d, %d SMs), peak memory bandwidth %.0f GB/s\n", device.name.c_str(), device.major,
                device.minor, device.multiprocessors, peak / 1e9);
    std::printf("sequence pieces: %lld (%s)\n", static_cast<long long>(pieces),
                requested_pieces > 0 ? "asked" : "chosen for this device");
    print("selective scan forward", forward_ms, forward_bytes);
    print("selective scan backward", backward_ms, backward_bytes);
    if (pieces > 1) {
      const auto [uncut_forward_ms, uncut_backward_ms] = time_scan(1);
      const std::vector<float> uncut_out = cuda::download<float>(out, static_cast<size_t>(tokens * E));
      double difference = 0;
      for (size_t i = 0; i < cut_out.size(); ++i) {
        difference = std::max(difference, static_cast<double>(std::abs(cut_out[i] - uncut_out[i])));
      }
      print("uncut scan forward", uncut_forward_ms, forward_bytes);
      print("uncut scan backward", uncut_backward_ms, backward_bytes);
      std::printf("pieces speed-up: forward %.2fx, backward %.2fx; max |out cut - out uncut| = %.3g\n",
                  uncut_forward_ms / forward_ms, uncut_backward_ms / backward_ms, difference);
    }
    std::printf("(the backward's MB: the least it must move; not counted are its checkpoints and its parts of dB "
                "and dC, written per block of channels and read back)\n");
    const double forward_fraction = forward_bytes / (forward_ms * 1e-3) / peak;
    std::printf("scan_forward_fraction_of_peak=%.3f target=0.60 %s\n", forward_fraction,
                forward_fraction >= 0.60 ? "met" : "NOT met");
    // The ceiling as measured rather than from the datasheet's clocks: a device-to-device copy of 1 GiB (many
    // times the L2) of random values (u's, tiled), counting the bytes read and the bytes written.
    constexpr size_t kCopyBytes = size_t{1} << 30;
    cuda::DeviceBuffer copy_source(kCopyBytes), copy_destination(kCopyBytes);
    for (size_t offset = 0; offset < kCopyBytes; offset += u.bytes()) {
      cuda::copy_device_to_device(copy_source.as<char>() + offset, u.as<void>(),
                                  std::min(u.bytes(), kCopyBytes - offset));
    }
    const double copy_ms = median_milliseconds(
        repeats, [&] { cuda::copy_device_to_device(copy_destination.as<void>(), copy_source.as<void>(), kCopyBytes); });
    const double copy_bandwidth = 2.0 * kCopyBytes / (copy_ms * 1e-3);
    std::printf("device-to-device copy of 1 GiB: %.0f GB/s (read + written) = %.1f%% of peak; "
                "the scan forward reaches %.1f%% of it\n",
                copy_bandwidth / 1e9, 100.0 * copy_bandwidth / peak, 100.0 * forward_bytes / (forward_ms * 1e-3) /
                copy_bandwidth);
    return 0;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "scan bench: %s\n", error.what());
    return 1;
  }
}
