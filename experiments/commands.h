// The subcommands of mamba-r1 (DESIGN.md §4) and the command line they read.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace mr1 {

struct CommandLine {
  std::string command;
  std::vector<std::string> positional;         // FILE.toml, ...
  std::vector<std::string> sets;               // --set key=value, in order
  std::map<std::string, std::string> options;  // --out DIR, --weights W, ...
  std::set<std::string> flags;                 // --backward, --resume, ...
  std::string program;  // the mamba-r1 executable that `sweep --jobs` starts for its runs; empty: this one

  std::string option(const std::string& name, const std::string& fallback = "") const;
  bool flag(const std::string& name) const { return flags.count(name) != 0; }
  // The option's value; throws a usage error naming the command when it is missing.
  std::string required(const std::string& name) const;
  // The experiment file (first positional); throws when missing.
  std::string experiment_path() const;
};

// Thrown for a malformed command line; main prints the message and the usage.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

CommandLine parse_command_line(int argc, char** argv);
// The option as a non-negative integer, `fallback` when absent; a usage error naming it otherwise.
int64_t parse_integer_option(const CommandLine& line, const std::string& name, int64_t fallback);
// The usage text of every command, and of one command (a UsageError for an unknown one).
std::string usage();
std::string command_usage(const std::string& command);
bool is_command(const std::string& name);
// The command line's --set, --backend, --seed and --threads as "key=value" assignments, in that order.
std::vector<std::string> command_line_assignments(const CommandLine& line);
// The local time as 20250131-154502, for default output folder names.
std::string timestamp();

int command_run(const CommandLine& line);
int command_forward(const CommandLine& line);
int command_init(const CommandLine& line);
int command_list(const CommandLine& line);
int command_validate(const CommandLine& line);
int command_bench(const CommandLine& line);
int command_generate(const CommandLine& line);  // experiments/generate.cpp
int command_sweep(const CommandLine& line);  // experiments/sweep.cpp
int command_compare(const CommandLine& line);  // experiments/compare.cpp

}  // namespace mr1
