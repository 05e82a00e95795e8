// An experiment: the file with its --set overrides, read into typed settings, and the model and task
// built from it. Tables: [model], [router] (normative, DESIGN.md §3), [task], [run], [output].
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "blocks/model.h"
#include "experiments/task.h"
#include "registry/config.h"
#include "registry/model_config.h"

namespace mr1 {

struct RunSettings {
  uint64_t seed = 0;              // weights and data
  std::string backend = "auto";   // auto | cpu | cuda
  int64_t threads = 0;            // CPU threads; 0 = every core
  int64_t repeats = 3;            // timed forward passes of a forward-only task
  int64_t warmup = 1;             // untimed passes before them
  bool tf32 = false;              // CUDA GEMMs on TF32 tensor cores (faster, ~1e-3 relative error)
};

struct OutputSettings {
  std::string dir = "runs";       // parent folder of the run folder
  std::string name;               // run folder name; default: the file's stem
};

struct Experiment {
  ExperimentFile file;
  ModelConfig model;
  RouterSettings router;
  RunSettings run;
  OutputSettings output;
  // Views into `file`, kept to build the router and task and to reject unknown keys at the end.
  std::vector<ConfigTable> tables;
  const ConfigTable& table(const std::string& name) const;
};

// Loads FILE, applies the --set assignments, reads [model], [router], [run] and [output] with every
// check of DESIGN.md §3. Throws ConfigError naming file, key and line. `origins`, when given, names where
// each assignment came from in messages (see ExperimentFile::set); the rest are "--set ASSIGNMENT".
Experiment load_experiment(const std::string& path, const std::vector<std::string>& assignments,
                           const std::vector<std::string>& origins = {});

// Builds the model and (with_task) the task of the experiment, then rejects any key that no reader
// asked for. Commands that take their data from files (forward, init) leave the [task] table unread.
struct BuiltExperiment {
  std::unique_ptr<Model> model;
  std::unique_ptr<Task> task;
};
BuiltExperiment build_experiment(const Experiment& experiment, bool with_task = true);

// Loads weights into `model` from a safetensors file with the normative names. A checkpoint saved from
// a tied mamba_ssm model may also hold lm_head.weight: it is accepted when it equals the embedding.
void load_weights(Model& model, const std::string& path);

// The values of [run] backend (and of --backend).
inline const std::vector<std::string> kBackendNames{"auto", "cpu", "cuda"};
// The most CPU threads run.threads (and --threads) may ask for.
constexpr int64_t kMaxThreads = 1024;

// Picks the device for `requested` (auto | cpu | cuda) and logs which; cuda without a usable
// device throws one clear line. auto takes a usable GPU whose self-check against the CPU passes
// (cuda_self_check, experiments/validate.h), and otherwise the CPU, saying why.
Device resolve_backend(const std::string& requested);

// Applies [run] threads to OpenMP (Eigen's products stay on one thread each: see for_each_piece).
void apply_thread_count(int64_t threads);

}  // namespace mr1
