// Training a model on a task: the loop, evaluation, metrics, checkpoints and resuming.
#pragma once

#include <cmath>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "blocks/model.h"
#include "experiments/experiment.h"
#include "experiments/optimizer.h"
#include "experiments/task.h"

namespace mr1 {

// [training] keys.
struct TrainingSettings {
  int64_t steps = 1000;
  double learning_rate = 1e-3;
  int64_t warmup_steps = 0;
  std::string schedule = "cosine";     // cosine | linear | constant
  double final_lr_ratio = 0.1;         // the rate at the last step / the peak
  double grad_clip = 1.0;              // max global gradient norm; <= 0: no clipping
  int64_t log_every = 10;              // progress line and metrics.jsonl entry
  int64_t eval_every = 100;            // evaluation (and checkpoint) period; 0: only at the end
  int64_t eval_batches = 4;
  double stop_at_eval_accuracy = 0;    // stop early once an evaluation reaches it; 0: never
};

TrainingSettings read_training_settings(const ConfigTable& table);

// What a checkpoint holds beyond the weights and the optimizer (trainer_state.json).
struct TrainerState {
  int64_t step = 0;          // completed steps
  double seconds = 0;        // training time so far
  int64_t tokens = 0;        // tokens trained on so far
  double last_train_loss = NAN;  // the mean train loss of the last logging window; NaN before the first
  nlohmann::json last_eval = nlohmann::json::object();  // the latest evaluation; {} before the first
  nlohmann::json resumes = nlohmann::json::array();  // each --resume: {"step", "changed": settings changed}
  // The sums of an unfinished logging window (a run interrupted between two log lines), carried into the
  // resumed run so that its next line covers the same steps as an uninterrupted run's; null otherwise.
  nlohmann::json open_window;
};

// What training reads before its first step: [training], and the [optimizer] over `parameters`. Every
// error in those two tables surfaces here, so a run can check them before it makes its folder.
struct TrainingSetup {
  TrainingSettings settings;
  std::string optimizer_name;
  std::unique_ptr<Optimizer> optimizer;
};
TrainingSetup prepare_training(const Experiment& experiment, ParameterStore& parameters);

// build_experiment, with [training] and [optimizer] checked as prepare_training checks them, for a command
// or a task that does not train: a typo anywhere in the file is an error.
BuiltExperiment build_checked(const Experiment& experiment, bool with_task);

// Throws FileError when `folder` holds no checkpoint (trainer_state.json) to resume.
void require_checkpoint(const std::string& folder);
// Loads the checkpoint of the run in `folder` into `model` (on its device) and `optimizer`, and returns
// its state. A folder without a checkpoint, or with damaged or disagreeing files, is a FileError.
TrainerState load_checkpoint(const std::string& folder, Model& model, Optimizer& optimizer);

struct TrainingOutcome {
  nlohmann::json summary;   // what summary.json gets
  bool interrupted = false; // Ctrl-C: a checkpoint was saved, resume with --resume
};

// Trains `model` (already initialised and on its device) on `task` with `setup`, writing metrics.jsonl
// and checkpoints (model.safetensors, optimizer.safetensors, trainer_state.json, each written atomically)
// into `folder`. With `resumed` (the state load_checkpoint returned, the model and optimizer loaded),
// continues exactly from that checkpoint.
TrainingOutcome train(const Experiment& experiment, Model& model, Task& task, TrainingSetup& setup,
                      const std::string& folder, const TrainerState* resumed);

// The metrics of one MoE layer's routing, averaged over steps: load per expert, its coefficient of
// variation, MaxVio (max load / mean load − 1), drop rate, normalised entropy, aux and z losses.
nlohmann::json routing_metrics(const RoutingStats& stats);

// object["routing"]: routing_metrics of each MoE layer of one forward pass (with its "layer"), and
// object["routing_overall"]: the mean of each figure over those layers. Nothing when there is no MoE layer.
void put_routing(nlohmann::json& object, const std::vector<RoutingStats>& routing);

}  // namespace mr1
