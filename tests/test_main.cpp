// The Catch2 entry point of mamba-r1-tests.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
