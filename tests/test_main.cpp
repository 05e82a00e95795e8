// The Catch2 entry point of mamba-r1-tests. The toolkit's info logs are silenced here so that
// test output shows failures; warnings and errors still print.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <spdlog/spdlog.h>

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  return Catch::Session().run(argc, argv);
}
