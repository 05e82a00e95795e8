// The Catch2 entry point of mamba-r1-tests. The toolkit's info logs are silenced here so that
// test output shows failures; warnings and errors still print. Tensor::empty fills with NaN here.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <spdlog/spdlog.h>

#include "kernels/tensor.h"

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  mr1::set_poison_empty_tensors(true);  // a value an op leaves unwritten reads as NaN
  return Catch::Session().run(argc, argv);
}
