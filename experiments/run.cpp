// One run of an experiment: the forward-only timing and the training path.
#include "experiments/run.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "experiments/files.h"
#include "experiments/run_report.h"
#include "experiments/trainer.h"
#include "kernels/cuda_device.h"
#include "kernels/elementwise.h"

namespace mr1 {

std::string describe_blocks(const ModelConfig& model) {
  std::map<std::string, int64_t> counts;
  for (int64_t i = 0; i < model.block_count(); ++i) ++counts[model.block_kind(i)];
  std::string text;
  for (const auto& [kind, count] : counts) text += (text.empty() ? "" : ", ") + std::to_string(count) + " " + kind;
  return std::to_string(model.block_count()) + " blocks (" + text + ")";
}

std::string describe_overrides(const ModelConfig& model) {
  std::string text;
  for (const auto& [i, overrides] : model.layers) {
    std::vector<std::string> parts;
    const auto add = [&](const char* key, const std::optional<int64_t>& value) {
      if (value) parts.push_back(std::string(key) + " " + std::to_string(*value));
    };
    add("d_state", overrides.d_state);
    add("d_conv", overrides.d_conv);
    add("expand", overrides.expand);
    add("dt_rank", overrides.dt_rank);
    add("num_experts", overrides.num_experts);
    add("expert_dim", overrides.expert_dim);
    if (overrides.router) {
      for (const std::string& key : overrides.router->keys()) {
        parts.push_back("router." + key + " = " + render_toml_value(*overrides.router->node(key)));
      }
    }
    text += (text.empty() ? "" : "; ") + std::string("block ") + std::to_string(i) + " (" + model.block_kind(i) +
            "): " + join(parts);
  }
  return text;
}

namespace {

void log_model(const Experiment& experiment, const Model& model) {
  const ModelConfig& config = experiment.model;
  spdlog::info("model: {}, dim {}, d_state {}, d_conv {}, expand {}, dt_rank {}, {} experts of {}, norm {}, "
               "{} parameters",
               describe_blocks(config), config.dim, config.d_state, config.d_conv, config.expand, config.dt_rank,
               config.num_experts, config.expert_dim, config.norm, model.parameters().element_count());
  if (!config.layers.empty()) spdlog::info("per-block keys ([model.layers]): {}", describe_overrides(config));
}

// Runs a forward-only task: warm-up passes, timed passes, then the output's statistics.
nlohmann::json run_forward_task(const Experiment& experiment, Model& model, Task& task) {
  Batch batch = task.batch(Split::eval, 0);
  ForwardOptions options;
  const int64_t tokens = batch.input.batch * batch.input.length;
  for (int64_t i = 0; i < experiment.run.warmup; ++i) model.forward(batch.input, options);
  std::vector<double> seconds;
  ModelOutput output;
  for (int64_t i = 0; i < experiment.run.repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    output = model.forward(batch.input, options);
    cuda::synchronize();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    spdlog::info("forward pass {}/{}: {:.4g} s, {:.0f} tokens/s", i + 1, experiment.run.repeats, seconds.back(),
                 tokens / seconds.back());
  }
  double total = 0, best = seconds.front();
  for (double s : seconds) total += s, best = std::min(best, s);
  const double mean_seconds = total / static_cast<double>(seconds.size());
  const double output_mean = mean(output.hidden);
  const double output_std = standard_deviation(output.hidden);

  spdlog::info("output shape {}, mean {:.4f}, std {:.4f}", output.hidden.shape_string(), output_mean, output_std);
  spdlog::info("forward: {:.4g} s mean over {} passes (best {:.4g} s), {:.0f} tokens/s", mean_seconds,
               seconds.size(), best, tokens / mean_seconds);
  nlohmann::json summary;
  summary["output_shape"] = output.hidden.shape();
  summary["output_mean"] = output_mean;
  summary["output_std"] = output_std;
  summary["forward_seconds"] = mean_seconds;
  summary["forward_seconds_best"] = best;
  summary["forward_seconds_all"] = seconds;
  summary["tokens"] = tokens;
  summary["tokens_per_second"] = tokens / mean_seconds;
  summary["warmup_passes"] = experiment.run.warmup;
  summary["aux_loss"] = output.aux_loss;
  put_routing(summary, output.routing);
  return summary;
}

// The settings a resumed run may change: how long it trains and how it logs, evaluates and stops, and
// where it runs. Any other change would make it a different experiment halfway.
bool may_change_on_resume(const std::string& key) {
  static const std::set<std::string> keys{"training.steps",      "training.log_every",
                                          "training.eval_every", "training.eval_batches",
                                          "training.stop_at_eval_accuracy", "run.threads",
                                          "run.backend",         "run.tf32"};
  return keys.count(key) != 0;
}

}  // namespace

std::vector<std::string> resumed_setting_changes(const std::string& folder, const Experiment& experiment) {
  // The values the run used: its effective.toml, every setting with its value, defaults included (so a
  // default spelt out on the command line is no change); a run of an earlier version has only config.toml,
  // the file and its --set values, compared as written.
  const bool effective = std::filesystem::exists(folder + "/effective.toml");
  const std::string path = folder + (effective ? "/effective.toml" : "/config.toml");
  if (!std::filesystem::exists(path)) {
    throw FileError("--resume: " + folder + " holds neither effective.toml nor config.toml, so the settings its "
                    "checkpoint was trained with are unknown; start a new run with another --out");
  }
  const std::map<std::string, std::string> before = flatten_toml_text(ExperimentFile::load(path).root());
  const std::map<std::string, std::string> after = flatten_toml_text(
      effective ? ExperimentFile::parse(experiment.file.effective_toml(), "the experiment's settings").root()
                : experiment.file.root());
  std::set<std::string> keys;
  for (const auto& entry : before) {
    // effective.toml holds what was read: a key one side read and the other did not (top_k of another
    // router) is no change of its own; the key that chose (router.name) is.
    if (!effective || after.count(entry.first)) keys.insert(entry.first);
  }
  if (!effective) {
    for (const auto& entry : after) keys.insert(entry.first);
  }
  std::vector<std::string> changes, refused;
  for (const std::string& key : keys) {
    if (key.rfind("output.", 0) == 0 || key.rfind("sweep.", 0) == 0) continue;  // the folder is --out's
    const auto old = before.find(key), now = after.find(key);
    const std::string was = old == before.end() ? "(not set)" : old->second;
    const std::string is = now == after.end() ? "(not set)" : now->second;
    if (was == is) continue;
    (may_change_on_resume(key) ? changes : refused).push_back(key + " " + was + " -> " + is);
  }
  if (!refused.empty()) {
    throw ConfigError("--resume: settings differ from the run's " + path + ": " + join(refused, "; ") +
                      ". A resumed run continues the same experiment: only training.steps, log_every, eval_every, "
                      "eval_batches, stop_at_eval_accuracy and [run] threads, backend and tf32 may change; for "
                      "other settings start a new run with another --out");
  }
  if (!changes.empty()) spdlog::info("--resume with changed settings: {}", join(changes, "; "));
  return changes;
}

std::string run_output_in(const std::string& folder) {
  for (const char* file :
       {"config.toml", "summary.json", "trainer_state.json", "metrics.jsonl", "report.md", "sweep.json"}) {
    if (std::filesystem::exists(folder + "/" + file)) return file;
  }
  return "";
}

std::string any_output_in(const std::string& folder) {
  const std::string found = run_output_in(folder);
  return !found.empty() || !std::filesystem::exists(folder + "/results.md") ? found : "results.md";
}

RunResult run_experiment(const Experiment& experiment, const std::string& given_folder, bool resume,
                         FolderName naming) {
  BuiltExperiment built = build_experiment(experiment);
  if (resume && !built.task->trainable()) {
    throw ConfigError("--resume: the task of " + experiment.file.file() + " (" + built.task->describe() +
                      ") does not train, so there is nothing to continue");
  }
  // Everything that can be wrong with the experiment, the backend or the checkpoint to resume is found
  // before the run folder is made or touched.
  // [training] and [optimizer] are checked whether or not the task trains: a typo there is an error too.
  TrainingSetup training = prepare_training(experiment, built.model->parameters());
  const bool trains = built.task->trainable();
  if (!trains) {  // their settings play no part in the run
    experiment.file.forget_effective("training");
    experiment.file.forget_effective("optimizer");
    for (const char* table : {"training", "optimizer"}) {
      if (experiment.table(table).keys().empty()) continue;
      spdlog::warn("[{}] is checked but not used: the task ({}) does not train", table, built.task->describe());
    }
  } else {
    for (const char* key : {"repeats", "warmup"}) {
      if (!experiment.table("run").has(key)) continue;
      spdlog::warn("run.{} is not used by a training run: it times the forward task and `mamba-r1 bench`", key);
    }
  }
  const Device device = resolve_backend(experiment.run.backend);
  built.model->initialize(experiment.run.seed);
  built.model->to(device);
  std::optional<TrainerState> resumed;
  if (resume) {
    require_checkpoint(given_folder);
    const std::vector<std::string> changes = resumed_setting_changes(given_folder, experiment);
    resumed = load_checkpoint(given_folder, *built.model, *training.optimizer);
    resumed->resumes.push_back({{"step", resumed->step}, {"changed", changes}});
  }
  std::string folder = given_folder;
  if (naming == FolderName::new_numbered) {
    folder = make_new_folder(given_folder);
  } else {
    make_directories(folder);
  }
  spdlog::info("experiment {} -> {}", experiment.file.file(), folder);
  spdlog::info("task: {}", built.task->describe());
  log_model(experiment, *built.model);
  write_file_atomic(folder + "/config.toml", experiment.file.to_toml() + "\n");
  // Every setting has been read by now: a run that fails or is killed keeps its effective.toml too.
  write_file_atomic(folder + "/effective.toml", experiment.file.effective_toml() + "\n");

  const std::vector<std::string> caveats = built.model->caveats();
  RunResult result;
  try {
    if (!trains) {
      result.summary = run_forward_task(experiment, *built.model, *built.task);
    } else {
      TrainingOutcome outcome =
          train(experiment, *built.model, *built.task, training, folder, resumed ? &*resumed : nullptr);
      result.summary = outcome.summary;
      result.interrupted = outcome.interrupted;
    }
  } catch (const std::exception& error) {
    // A failed run (a diverged loss, a device error) says so in its folder, for compare and for people.
    nlohmann::json failed{{"error", error.what()}, {"experiment", experiment.file.file()}};
    if (!caveats.empty()) failed["caveats"] = caveats;
    try {
      write_file_atomic(folder + "/summary.json", failed.dump(2) + "\n");
      if (trains) write_run_report(folder, false);  // the error, and the charts of the steps before it
    } catch (const std::exception&) {
      // The error being reported matters more than its record (a full disk fails both).
    }
    throw;
  }
  nlohmann::json& summary = result.summary;
  summary["experiment"] = experiment.file.file();
  summary["parameters"] = built.model->parameters().element_count();
  summary["backend"] = device_name(device);
  summary["blocks"] = describe_blocks(experiment.model);
  summary["task"] = built.task->describe();
  if (!caveats.empty()) summary["caveats"] = caveats;
  write_file_atomic(folder + "/summary.json", summary.dump(2) + "\n");
  // Every setting with the value used, defaults included: what the run was, whatever the defaults become.
  write_file_atomic(folder + "/effective.toml", experiment.file.effective_toml() + "\n");
  write_run_report(folder, result.interrupted);
  spdlog::info("wrote {}/summary.json and report.md (tables and charts)", folder);
  return result;
}

}  // namespace mr1
