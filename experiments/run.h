// One run of an experiment: build, initialise, then train (or, for a forward-only task, time the
// forward pass), writing config.toml, summary.json and, when training, metrics and checkpoints.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "experiments/experiment.h"

namespace mr1 {

struct RunResult {
  nlohmann::json summary;    // as written to summary.json
  bool interrupted = false;  // Ctrl-C during training: the checkpoint is saved, resume with --resume
};

// How run_experiment takes its folder: as given, or as the stem of a new folder (stem, stem-2, ...:
// the default runs/NAME-TIMESTAMP, which runs started in the same second would otherwise share).
enum class FolderName { as_given, new_numbered };

// Runs `experiment` into `folder` (created once the experiment, the backend and any checkpoint to resume
// have been checked). With resume, continues the training checkpointed there.
RunResult run_experiment(const Experiment& experiment, const std::string& folder, bool resume,
                         FolderName naming = FolderName::as_given);

// --resume of the run in `folder` with `experiment` (built, and its training settings read): the settings
// that differ from those the run used (its effective.toml), as "key old -> new". Throws ConfigError naming
// every change but those a resumed run may make (training.steps, log_every, eval_every, eval_batches,
// stop_at_eval_accuracy; [run] threads, backend, tf32), and FileError when the folder records no settings.
std::vector<std::string> resumed_setting_changes(const std::string& folder, const Experiment& experiment);

// The first file of a run's or a sweep's outputs (config.toml, summary.json, trainer_state.json,
// metrics.jsonl, report.md, sweep.json) that `folder` holds, or "" when it holds none: a folder that a
// comparison must not write over.
std::string run_output_in(const std::string& folder);
// run_output_in, or a comparison's results.md: a folder that a new run or sweep must not write over.
std::string any_output_in(const std::string& folder);

// "12 blocks (6 mamba, 6 moe)".
std::string describe_blocks(const ModelConfig& model);
// The [model.layers] keys: "block 3 (mamba): d_state 64; block 5 (moe): router.name = "topk"" (empty: none).
std::string describe_overrides(const ModelConfig& model);

}  // namespace mr1
