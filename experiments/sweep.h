// Parameter sweeps (`mamba-r1 sweep FILE.toml`): the [sweep] table's lists of values, every
// combination run in turn into one folder, then a comparison table (Markdown, CSV) and SVG plots.
//
// [sweep] keys are dotted paths into the experiment file, each with a list of values of any TOML type:
//
//   [sweep]
//   "router.name" = ["switch", "topk"]     # a quoted dotted key
//   model.d_state = [16, 32]               # an unquoted dotted key (TOML makes it a sub-table)
//   seed = [0, 1]                          # shorthand for run.seed
//   [sweep.training]                       # a sub-table: training.learning_rate
//   learning_rate = [1e-3, 3e-3]
//
// Combinations follow the order of the keys in the file, the first key varying slowest. Each run is
// the file with the command line's --set overrides, then the combination's values (so a swept seed
// wins over --seed); a --set sweep.KEY=[..] replaces that key's list. The sweep folder holds
// sweep.json (the combinations and the status of each: pending, running, done, interrupted, failed),
// results.md (with a table over seeds when run.seed is swept, also as results_over_seeds.csv),
// results.csv, loss_curves.svg, eval_accuracy.svg, expert_load.svg, and runs/NAME/ (each
// run's config.toml, metrics.jsonl, summary.json, checkpoint). Rerunning needs --resume: finished runs
// (done, with their summary.json) are skipped, an interrupted run continues from its checkpoint, and
// pending or failed runs start again.
//
// --jobs N runs N combinations at a time, each as `mamba-r1 run FILE --set ... --out runs/NAME` in a
// process of its own, its log in runs/NAME/run.log: the same results as one at a time (a run depends only
// on its own settings), sooner on a machine with cores to spare. Ctrl-C interrupts them all; each saves
// its checkpoint, and --resume (with --jobs again) continues them.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include "experiments/commands.h"
#include "registry/config.h"

namespace mr1 {

// One swept key and its values.
struct SweepAxis {
  std::string key;                  // full dotted path: "router.name", "run.seed"
  std::vector<std::string> values;  // each as TOML text: "\"topk\"", "32", "[\"mamba\", \"moe\"]"
  std::vector<std::string> shown;   // each as shown in names and tables: "topk", "32", "mamba+moe"
  // The values are repeats of one setting (run.seed): runs that differ only here are grouped, in the
  // table over seeds and as one colour in the charts (when there are two or more values).
  bool repeats = false;
  // Where the list is, for messages about one of its values: "x.toml:12: sweep.router.name" or the --set
  // that gave it.
  std::string origin;
};

// One combination of values: the i-th value of each axis.
struct SweepRun {
  int64_t index = 0;
  std::vector<size_t> choice;   // per axis, the index of its value
  std::string name;             // folder name: "03-router.name=topk,model.d_state=32"
  std::string folder;           // the run's folder as seen from the results: "runs/NAME"
  std::string label;            // for plots: "topk" (one axis) or "name=topk, d_state=32"
  std::vector<std::string> assignments;  // "router.name=\"topk\"", for ExperimentFile::set
  std::vector<std::string> origins;      // each one's origin in messages: "x.toml:12: sweep.router.name, value topk"
};

// Empties the file's [sweep] table, if any: the record (config.toml) of a single run, which `run` and each
// of a sweep's runs write alike, holds no sweep lists (a finished sweep run's is compared with it).
void drop_sweep_lists(ExperimentFile& file);

// The keys the file's [sweep] lists (full paths, seed as run.seed, in file order) that no --set gives a value:
// `run` on such a file trains the file's own values of them, one run and not the sweep. (Each run of a sweep
// sets every swept key, so it gets none.)
std::vector<std::string> sweep_keys_left_unset(const ExperimentFile& file);

// The most runs one sweep makes.
constexpr size_t kMaxSweepRuns = 10000;

// Reads [sweep] from the experiment file (with its --set overrides applied). Throws ConfigError naming
// the key for a value that is not a non-empty list, a key that is not a dotted path, a key swept twice
// in the file, or a missing or empty [sweep]; and for lists whose combinations exceed kMaxSweepRuns.
// Whether a key exists is checked later, by loading and building each run (command_sweep does that for
// every combination before it runs any).
std::vector<SweepAxis> read_sweep_axes(const ExperimentFile& file);

// A run's label from its value of each axis: "topk" (one axis of strings), "d_state=32", or
// "name=topk, d_state=32" (the last part of each key, the whole key where two axes share it).
std::string sweep_label(const std::vector<SweepAxis>& axes, const std::vector<size_t>& choice);

// The axes' keys: "router.name, model.d_state".
std::string axis_keys(const std::vector<SweepAxis>& axes);

// Every combination, the first axis varying slowest; names carry a zero-padded index prefix.
std::vector<SweepRun> expand_sweep(const std::vector<SweepAxis>& axes);

// (render_toml_value, in registry/config.h, gives a value as TOML text for ExperimentFile::set.)
// A value as shown in run names and tables: strings bare, arrays joined with "+" ("none" when empty).
std::string show_toml_value(const toml::node& node);
// Keeps letters, digits and . _ = , + - ; anything else becomes '_'. Cut to 100 characters.
std::string sanitize_folder_name(const std::string& text);

// What the sweep knows of one run.
struct SweepResult {
  SweepRun run;
  std::string status = "pending";  // pending | running | done | interrupted | failed
  double seconds = 0;              // wall time of the run, over every attempt
  std::string error;               // for failed runs
  nlohmann::json summary;          // summary.json, or null
  nlohmann::json metrics;          // the lines of metrics.jsonl, as an array (may be empty)
};

// The comparison table, one row per run: the swept values, status, final eval loss and accuracy,
// train loss, tokens/s, load CV, MaxVio, drop rate (routing_overall), parameters, steps, time.
// Missing values are "–" in Markdown and empty in CSV. In Markdown the best eval loss and accuracy
// among the finished runs are bold. The number of a run that trained links to its report.md.
std::string results_markdown(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results);
std::string results_csv(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results);
// When run.seed is swept over two or more values: one row per combination of the other swept values,
// over its finished runs: the number of seeds, mean ± sample standard deviation (n − 1) of eval loss,
// eval accuracy, train loss, tokens/s, load CV, MaxVio and drop rate, and the worst seed's eval
// accuracy. Empty otherwise. results.md adds it under "Over seeds"; results_over_seeds.csv holds the
// same figures unrounded (columns NAME_mean, NAME_std, and eval_accuracy_min).
std::string results_over_seeds_markdown(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results);
std::string results_over_seeds_csv(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results);
// results.md's tables: the results table and the sentence that explains its columns (`time`: what its
// time column holds; `forward_time`, when not empty, what it holds for forward-only runs), then, when
// seeds are repeated, "## Over seeds" with that table and its sentence (`others`: what the combinations
// are of, "swept values").
std::string results_section(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results,
                            const std::string& time, const std::string& others, const std::string& forward_time = "");

// The charts' subtitles name the axes' keys after `varied`: "swept: router.name".
// Train loss of every run against the step on one chart (eval loss dashed, same colour), log scale
// when the losses span more than a factor of 10; empty string when no run has logged a loss yet (or
// none trains).
std::string loss_curves_svg(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results,
                            const std::string& varied = "swept");
// Eval accuracy of every run against the step; empty string when no run has evaluations.
std::string accuracy_curves_svg(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results,
                                const std::string& varied = "swept");
// One panel per run with final routing: per MoE layer, the load fraction of each expert, with the
// uniform 1/X line. Empty string when no run has routing statistics.
std::string expert_load_svg(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results,
                            const std::string& varied = "swept");
// (file name, SVG) of the three charts above: loss_curves.svg, eval_accuracy.svg, expert_load.svg.
std::vector<std::pair<std::string, std::string>> sweep_charts(const std::vector<SweepAxis>& axes,
                                                              const std::vector<SweepResult>& results,
                                                              const std::string& varied = "swept");

// Runs the sweep of the experiment file FILE into --out DIR (else [output] dir/NAME-sweep-TIMESTAMP):
// validates every combination first, then runs them in turn into DIR/runs/NAME/, writing sweep.json,
// results.md, results.csv and the plots after each run. With --resume, finished runs are skipped and an
// interrupted one continues from its checkpoint. Returns the exit code: 0, 1 when a run failed, 130
// when interrupted.
int command_sweep(const CommandLine& line);

}  // namespace mr1
