// Comparing runs made apart (`mamba-r1 compare RUN_DIR... [--out DIR]`), as a sweep compares its own:
// each run folder's effective.toml (or config.toml), summary.json and metrics.jsonl are read, the
// settings that differ between the runs become the table's columns (as a sweep's swept keys), and the
// sweep's table, its table over seeds (when run.seed differs) and its charts are written to DIR.
// A sweep's folder stands for all of its runs.
#pragma once

#include <string>
#include <vector>

#include "experiments/commands.h"
#include "experiments/sweep.h"

namespace mr1 {

struct Comparison {
  std::vector<std::string> folders;          // the run folders, in the order given (a sweep's in its order)
  std::vector<SweepAxis> settings;           // one per differing setting, its values in the order first met
  std::vector<std::vector<size_t>> values;   // per run, the index of its value of each setting
  // The columns of the results table and the charts' legends: the settings themselves when there are up
  // to 4, else "settings", naming each combination of them A, B, ... (with repeated seeds, each
  // combination of the others, then run.seed).
  std::vector<SweepAxis> axes;
  std::vector<SweepResult> results;          // one per run: run.choice over `axes`, summary and metrics
};

// The run folders named by `paths` (a sweep folder: each of its runs/*), read and compared. A setting
// is a dotted key of the run's effective.toml (every setting with the value the run used), or of its
// config.toml for a run without one ([output] and [sweep] left out). A setting a run lacks is "unused"
// in an effective.toml (the run did not read it) and "default" in a config.toml. A run is "done" with its summary.json,
// "interrupted" when that summary has fewer steps than its training.steps (and it did not stop early),
// "unfinished" without one. Each run's folder is given relative to `out`, for the table's links.
// Throws ConfigError naming a path that is not a run or sweep folder.
Comparison compare_runs(const std::vector<std::string>& paths, const std::string& out);

// results.md: the differing settings (as a table of their own, one column per combination, when there
// are more than 4), the results table (each run's number linking to its report.md), the table over seeds,
// the runs' folders, and the charts named in `charts`.
std::string comparison_markdown(const Comparison& comparison, const std::vector<std::string>& charts);

// Writes results.md, results.csv (and results_over_seeds.csv) and the charts into --out DIR (default
// runs/compare-TIMESTAMP), and prints the table. Returns 0.
int command_compare(const CommandLine& line);

}  // namespace mr1
