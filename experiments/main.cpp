// mamba-r1: the command line of the Mamba R1 toolkit. Every user error ends in one clear
// message and a non-zero exit code, never a crash.
#include <malloc.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <exception>

#include "blocks/parameters.h"
#include "experiments/commands.h"
#include "experiments/files.h"
#include "experiments/safetensors.h"
#include "registry/config.h"
#include "registry/registry.h"

int main(int argc, char** argv) {
  using namespace mr1;
  // Keep freed activation buffers in the process: glibc would otherwise hand every block above
  // 128 KiB back to the kernel and page-fault it in again on the next pass (about a third of a
  // small model's step time).
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  // The log (progress, warnings, errors) on stderr; stdout carries results only: generated text, the
  // tables of compare, validate and bench.
  spdlog::set_default_logger(spdlog::stderr_color_mt("mamba-r1"));
  spdlog::set_pattern("[%H:%M:%S] %^%l%$ %v");
  try {
    const CommandLine line = parse_command_line(argc, argv);
    const std::string level = line.option("log-level", "info");
    if (level != "debug" && level != "info" && level != "warn" && level != "error") {
      throw UsageError("--log-level expects debug, info, warn or error, found '" + level + "'");
    }
    spdlog::set_level(spdlog::level::from_str(level));
    if (line.command == "help") {
      std::fputs(usage().c_str(), stdout);
      return 0;
    }
    if (line.flag("help")) {
      std::fputs(command_usage(line.command).c_str(), stdout);
      return 0;
    }
    if (line.command == "run") return command_run(line);
    if (line.command == "forward") return command_forward(line);
    if (line.command == "init") return command_init(line);
    if (line.command == "list") return command_list(line);
    if (line.command == "validate") return command_validate(line);
    if (line.command == "bench") return command_bench(line);
    if (line.command == "generate") return command_generate(line);
    if (line.command == "sweep") return command_sweep(line);
    if (line.command == "compare") return command_compare(line);
    throw UsageError("unknown command '" + line.command + "'");
  } catch (const UsageError& error) {
    const std::string command = argc > 1 ? argv[1] : "";
    std::fprintf(stderr, "mamba-r1: %s\n\n%s", error.what(),
                 (is_command(command) ? command_usage(command) : usage()).c_str());
    return 2;
  } catch (const ConfigError& error) {
    spdlog::error("{}", error.what());
    return 2;
  } catch (const RegistryError& error) {
    spdlog::error("{}", error.what());
    return 2;
  } catch (const SafetensorsError& error) {
    spdlog::error("{}", error.what());
    return 2;
  } catch (const ShapeError& error) {
    spdlog::error("{}", error.what());
    return 2;
  } catch (const FileError& error) {
    spdlog::error("{}", error.what());
    return 2;
  } catch (const std::exception& error) {
    spdlog::error("{}", error.what());
    return 1;
  }
}
