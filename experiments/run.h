// One run of an experiment: build, initialise, then train (or, for a forward-only task, time the
// forward pass), writing config.toml, summary.json and, when training, metrics and checkpoints.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "experiments/experiment.h"

namespace mr1 {

struct RunResult {
  nlohmann::json summary;    // as written to summary.json
  bool interrupted = false;  // Ctrl-C during training: the checkpoint is saved, resume with --resume
};

// Runs `experiment` into `folder` (created). With resume, continues the training checkpointed there.
RunResult run_experiment(const Experiment& experiment, const std::string& folder, bool resume);

// "12 blocks (6 mamba, 6 moe)".
std::string describe_blocks(const ModelConfig& model);
// The [model.layers] keys: "block 3 (mamba): d_state 64; block 5 (moe): router.name = "topk"" (empty: none).
std::string describe_overrides(const ModelConfig& model);

}  // namespace mr1
