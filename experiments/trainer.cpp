// The training loop: batches from the task, forward, LM loss, backward, clipping, the optimizer,
// periodic evaluation on held-out batches, metrics.jsonl, checkpoints, Ctrl-C and --resume.
#include "experiments/trainer.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>

#include "blocks/random.h"
#include "experiments/files.h"
#include "experiments/loss.h"
#include "experiments/optimizer.h"
#include "experiments/run_report.h"
#include "experiments/safetensors.h"
#include "kernels/cuda_device.h"

namespace mr1 {

TrainingSettings read_training_settings(const ConfigTable& table) {
  TrainingSettings settings;
  settings.steps = table.get_int("steps", settings.steps, 1);
  settings.learning_rate = table.get_double("learning_rate", settings.learning_rate);
  if (!(static_cast<float>(settings.learning_rate) >= std::numeric_limits<float>::min())) {
    table.fail("learning_rate", "expected a number > 0 that float32 holds as a normal number (at least 1.18e-38), "
                                "found " + render_double(settings.learning_rate));
  }
  settings.warmup_steps = table.get_int("warmup_steps", settings.warmup_steps, 0);
  settings.schedule = table.get_choice("schedule", settings.schedule, {"cosine", "linear", "constant"});
  settings.final_lr_ratio = table.get_double("final_lr_ratio", settings.final_lr_ratio);
  if (settings.final_lr_ratio < 0 || settings.final_lr_ratio > 1) table.fail("final_lr_ratio", "expected a number in [0, 1]");
  settings.grad_clip = table.get_double("grad_clip", settings.grad_clip);
  settings.log_every = table.get_int("log_every", settings.log_every, 1);
  settings.eval_every = table.get_int("eval_every", settings.eval_every, 0);
  settings.eval_batches = table.get_int("eval_batches", settings.eval_batches, 1);
  settings.stop_at_eval_accuracy = table.get_double("stop_at_eval_accuracy", settings.stop_at_eval_accuracy);
  if (settings.stop_at_eval_accuracy < 0 || settings.stop_at_eval_accuracy > 1) {
    table.fail("stop_at_eval_accuracy", "expected an accuracy in [0, 1] (0: never stop early), found " +
                                            render_double(settings.stop_at_eval_accuracy));
  }
  return settings;
}

nlohmann::json routing_metrics(const RoutingStats& stats) {
  nlohmann::json out;
  double mean = 0, peak = 0, variance = 0;
  for (double load : stats.load) mean += load / static_cast<double>(stats.load.size());
  for (double load : stats.load) {
    peak = std::max(peak, load);
    variance += (load - mean) * (load - mean) / static_cast<double>(stats.load.size());
  }
  out["load"] = stats.load;
  out["load_cv"] = mean > 0 ? std::sqrt(variance) / mean : 0.0;
  out["max_violation"] = mean > 0 ? peak / mean - 1.0 : 0.0;
  out["dropped_fraction"] = stats.droppable > 0 ? static_cast<double>(stats.dropped) / stats.droppable : 0.0;
  out["entropy"] = stats.entropy;
  out["aux_loss"] = stats.aux_loss;
  out["z_loss"] = stats.z_loss;
  return out;
}

namespace {

std::atomic<bool> interrupt_requested{false};
extern "C" void on_interrupt(int) { interrupt_requested = true; }

// The mean over MoE layers of each routing scalar: the "overall" routing figures.
nlohmann::json overall_routing(const nlohmann::json& layers) {
  nlohmann::json overall;
  if (layers.empty()) return overall;
  for (const char* key : {"load_cv", "max_violation", "dropped_fraction", "entropy", "aux_loss", "z_loss"}) {
    double total = 0;
    for (const auto& layer : layers) total += layer[key].get<double>();
    overall[key] = total / static_cast<double>(layers.size());
  }
  return overall;
}

// Sums the routing statistics of every MoE layer over the steps of a logging window.
class RoutingAverage {
 public:
  void add(const std::vector<RoutingStats>& layers) {
    if (sums_.empty()) sums_.resize(layers.size());
    for (size_t i = 0; i < layers.size(); ++i) {
      const RoutingStats& stats = layers[i];
      RoutingStats& sum = sums_[i];
      if (!stats.present) continue;
      sum.present = true;
      if (sum.load.empty()) sum.load.assign(stats.load.size(), 0.0);
      for (size_t j = 0; j < stats.load.size(); ++j) sum.load[j] += stats.load[j];
      sum.dropped += stats.dropped;
      sum.droppable += stats.droppable;
      sum.entropy += stats.entropy;
      sum.aux_loss += stats.aux_loss;
      sum.z_loss += stats.z_loss;
    }
    ++count_;
  }
  // The sums as JSON (doubles round-trip exactly), and back: a logging window carried across a resume.
  nlohmann::json save() const {
    nlohmann::json layers = nlohmann::json::array();
    for (const RoutingStats& sum : sums_) {
      layers.push_back({{"present", sum.present}, {"load", sum.load}, {"dropped", sum.dropped},
                        {"droppable", sum.droppable}, {"entropy", sum.entropy}, {"aux_loss", sum.aux_loss},
                        {"z_loss", sum.z_loss}});
    }
    return {{"count", count_}, {"layers", layers}};
  }
  static RoutingAverage restore(const nlohmann::json& json) {
    RoutingAverage average;
    average.count_ = json.at("count").get<int64_t>();
    for (const nlohmann::json& layer : json.at("layers")) {
      RoutingStats sum;
      sum.present = layer.at("present").get<bool>();
      sum.load = layer.at("load").get<std::vector<double>>();
      sum.dropped = layer.at("dropped").get<int64_t>();
      sum.droppable = layer.at("droppable").get<int64_t>();
      sum.entropy = layer.at("entropy").get<double>();
      sum.aux_loss = layer.at("aux_loss").get<double>();
      sum.z_loss = layer.at("z_loss").get<double>();
      average.sums_.push_back(std::move(sum));
    }
    return average;
  }
  // Per MoE layer: {"layer": i, ...routing_metrics}, averaged; and the mean of each scalar over layers.
  nlohmann::json report() const {
    nlohmann::json layers = nlohmann::json::array();
    for (size_t i = 0; i < sums_.size(); ++i) {
      if (!sums_[i].present) continue;
      RoutingStats mean = sums_[i];
      for (double& load : mean.load) load /= count_;
      mean.entropy /= count_;
      mean.aux_loss /= count_;
      mean.z_loss /= count_;
      nlohmann::json entry = routing_metrics(mean);
      entry["layer"] = i;
      layers.push_back(entry);
    }
    return layers;
  }
  // object["routing"] = report() and object["routing_overall"] = its mean over layers; nothing without MoE layers.
  void put(nlohmann::json& object) const {
    const nlohmann::json layers = report();
    if (layers.empty()) return;
    object["routing"] = layers;
    object["routing_overall"] = overall_routing(layers);
  }
  void reset() {
    sums_.clear();
    count_ = 0;
  }

 private:
  std::vector<RoutingStats> sums_;
  int64_t count_ = 0;
};

struct Evaluation {
  double loss = 0, lm_loss = 0, accuracy = 0;
};

Evaluation evaluate(Model& model, Task& task, int64_t batches) {
  Evaluation result;
  int64_t scored = 0, correct = 0;
  double weighted_loss = 0, aux = 0;
  for (int64_t i = 0; i < batches; ++i) {
    const Batch batch = task.batch(Split::eval, i);
    const ModelOutput output = model.forward(batch.input, ForwardOptions{});
    const LossResult loss = language_model_loss(output, batch.targets, false);
    weighted_loss += loss.lm_loss * static_cast<double>(loss.scored);
    aux += loss.aux_loss;
    scored += loss.scored;
    correct += loss.correct;
  }
  result.lm_loss = scored > 0 ? weighted_loss / scored : 0.0;
  result.loss = result.lm_loss + aux / static_cast<double>(batches);
  result.accuracy = scored > 0 ? static_cast<double>(correct) / scored : 0.0;
  return result;
}

// trainer_state.json: the commit point of a checkpoint, whole once this file names its step.
void save_trainer_state(const std::string& folder, const TrainerState& state) {
  nlohmann::json json{{"step", state.step},
                      {"seconds", state.seconds},
                      {"tokens", state.tokens},
                      {"last_train_loss", state.last_train_loss},  // NaN is written as null
                      {"last_eval", state.last_eval},
                      {"resumes", state.resumes}};
  if (!state.open_window.is_null()) json["open_window"] = state.open_window;
  write_file_atomic(folder + "/trainer_state.json", json.dump(2) + "\n");
}

void save_checkpoint(const std::string& folder, const Model& model, const Optimizer& optimizer,
                     const TrainerState& state) {
  const std::map<std::string, std::string> metadata{{"format", "pt"}, {"step", std::to_string(state.step)}};
  write_safetensors(folder + "/model.safetensors", model.parameters().to_stored(), metadata);
  write_safetensors(folder + "/optimizer.safetensors", optimizer.state(), metadata);
  save_trainer_state(folder, state);
}

int64_t metadata_step(const SafetensorsFile& file) {
  auto found = file.metadata.find("step");
  if (found == file.metadata.end()) return -1;
  char* end = nullptr;
  const long long step = std::strtoll(found->second.c_str(), &end, 10);
  return end != found->second.c_str() && *end == '\0' ? step : -1;  // -1: absent or not a number
}

// Keeps the metrics.jsonl lines of steps <= step (a resumed run rewrites what came after its checkpoint),
// up to a line cut by a crash; without an interrupted window's line when `drop_partial` (the resumed run
// trains, and writes the whole window's line in its place).
void truncate_metrics(const std::string& path, int64_t step, bool drop_partial) {
  if (!std::filesystem::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const nlohmann::json entry = nlohmann::json::parse(line, nullptr, false);
    if (entry.is_discarded() || !entry.is_object() || !entry.contains("step") || !entry["step"].is_number()) break;
    if (drop_partial && entry.value("partial_window", false)) continue;
    if (entry["step"].get<int64_t>() <= step) kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

LearningRateSchedule schedule_of(const TrainingSettings& settings) {
  LearningRateSchedule schedule;
  schedule.peak = settings.learning_rate;
  schedule.warmup_steps = settings.warmup_steps;
  schedule.total_steps = settings.steps;
  schedule.shape = settings.schedule;
  schedule.final_ratio = settings.final_lr_ratio;
  return schedule;
}

// What the log needs of one training step.
struct StepRecord {
  LossResult loss;
  double grad_norm = 0;
  double learning_rate = 0;
  double seconds = 0;
  int64_t tokens = 0;
  std::vector<RoutingStats> routing;
};

// One optimisation step on the training batch of `step`.
StepRecord training_step(int64_t step, uint64_t seed, const TrainingSettings& settings,
                         const LearningRateSchedule& schedule, Model& model, Task& task, Optimizer& optimizer) {
  const auto start = std::chrono::steady_clock::now();
  const Batch batch = task.batch(Split::train, step);
  // One generator per step, so that a resumed run draws what the uninterrupted run drew.
  Random random(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(step) + 1);
  ForwardOptions options;
  options.training = true;
  options.random = &random;
  ForwardTape tape;
  ModelOutput output = model.forward(batch.input, options, &tape);
  StepRecord record;
  record.loss = language_model_loss(output, batch.targets, true);
  if (!std::isfinite(record.loss.loss)) {
    throw std::runtime_error(fmt::format("the loss is {:.6g} at step {}", record.loss.loss, step + 1) +
                             ": training diverged (lower training.learning_rate or set training.grad_clip)");
  }
  model.parameters().zero_grad();
  model.backward(tape, &record.loss.grad_logits, nullptr, 1.0f);
  record.loss.grad_logits = Tensor();  // not needed past the backward pass
  record.grad_norm = clip_gradient_norm(model.parameters(), settings.grad_clip);
  record.learning_rate = schedule.at(step);
  optimizer.step(model.parameters(), record.learning_rate);
  model.after_step(tape);
  cuda::synchronize();
  record.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  record.tokens = batch.input.batch * batch.input.length;
  record.routing = std::move(output.routing);
  return record;
}

// The steps since the last progress line: their sums, for the means that line and its metrics entry show.
class LogWindow {
 public:
  void add(const StepRecord& record) {
    loss_ += record.loss.loss;
    lm_loss_ += record.loss.lm_loss;
    aux_loss_ += record.loss.aux_loss;
    scored_ += record.loss.scored;
    correct_ += record.loss.correct;
    seconds_ += record.seconds;
    tokens_ += record.tokens;
    grad_norm_ += record.grad_norm;
    ++steps_;
    routing_.add(record.routing);
  }
  double mean_loss() const { return loss_ / steps_; }
  bool empty() const { return steps_ == 0; }
  // The sums as JSON (TrainerState::open_window), and back.
  nlohmann::json save() const {
    return {{"loss", loss_},       {"lm_loss", lm_loss_}, {"aux_loss", aux_loss_}, {"scored", scored_},
            {"correct", correct_}, {"seconds", seconds_}, {"tokens", tokens_},     {"grad_norm", grad_norm_},
            {"steps", steps_},     {"routing", routing_.save()}};
  }
  static LogWindow restore(const nlohmann::json& json) {
    LogWindow window;
    window.loss_ = json.at("loss").get<double>();
    window.lm_loss_ = json.at("lm_loss").get<double>();
    window.aux_loss_ = json.at("aux_loss").get<double>();
    window.scored_ = json.at("scored").get<int64_t>();
    window.correct_ = json.at("correct").get<int64_t>();
    window.seconds_ = json.at("seconds").get<double>();
    window.tokens_ = json.at("tokens").get<int64_t>();
    window.grad_norm_ = json.at("grad_norm").get<double>();
    window.steps_ = json.at("steps").get<int64_t>();
    window.routing_ = RoutingAverage::restore(json.at("routing"));
    return window;
  }
  // The metrics.jsonl entry of the window ending at `state.step`, also logged as a progress line; empties
  // the window, unless `keep` (an interrupted run's window, carried into its resume: the entry is marked
  // "partial_window" and the resumed run replaces it with the whole window's).
  nlohmann::json close(const TrainerState& state, int64_t total_steps, double learning_rate, bool keep = false) {
    const double accuracy = scored_ > 0 ? static_cast<double>(correct_) / scored_ : 0.0;
    const double throughput = tokens_ / seconds_;
    const double remaining = (total_steps - state.step) * (seconds_ / steps_);
    nlohmann::json entry = {{"step", state.step},
                            {"train_loss", mean_loss()},
                            {"train_lm_loss", lm_loss_ / steps_},
                            {"train_aux_loss", aux_loss_ / steps_},
                            {"train_accuracy", accuracy},
                            {"learning_rate", learning_rate},
                            {"grad_norm", grad_norm_ / steps_},
                            {"tokens_per_second", throughput},
                            {"elapsed_seconds", state.seconds}};
    routing_.put(entry);
    spdlog::info("step {:>5}/{} | loss {:.4f} | acc {:.3f} | lr {:.2e} | |g| {:.2f} | {:.0f} tok/s | eta {}",
                 state.step, total_steps, mean_loss(), accuracy, learning_rate, grad_norm_ / steps_, throughput,
                 format_duration(remaining));
    if (keep) {
      entry["partial_window"] = true;
    } else {
      *this = LogWindow();
    }
    return entry;
  }

 private:
  double loss_ = 0, lm_loss_ = 0, aux_loss_ = 0, seconds_ = 0, grad_norm_ = 0;
  int64_t steps_ = 0, scored_ = 0, correct_ = 0, tokens_ = 0;
  RoutingAverage routing_;
};

// Whether an evaluation's accuracy stops the run: training.stop_at_eval_accuracy is set (> 0) and reached.
bool reached_stop_accuracy(const TrainingSettings& settings, double accuracy) {
  return settings.stop_at_eval_accuracy > 0 && accuracy >= settings.stop_at_eval_accuracy;
}

// Evaluates on the held-out batches: records the result in `state` and `entry`, and logs it. Returns
// whether it reached training.stop_at_eval_accuracy.
bool evaluate_step(Model& model, Task& task, const TrainingSettings& settings, TrainerState& state,
                   nlohmann::json& entry) {
  const Evaluation evaluation = evaluate(model, task, settings.eval_batches);
  state.last_eval = {{"step", state.step}, {"eval_loss", evaluation.loss}, {"eval_lm_loss", evaluation.lm_loss},
                     {"eval_accuracy", evaluation.accuracy}};
  entry["eval_loss"] = evaluation.loss;
  entry["eval_lm_loss"] = evaluation.lm_loss;
  entry["eval_accuracy"] = evaluation.accuracy;
  spdlog::info("eval  {:>5}/{} | loss {:.4f} | acc {:.3f}", state.step, settings.steps, evaluation.loss,
               evaluation.accuracy);
  return reached_stop_accuracy(settings, evaluation.accuracy);
}

// What summary.json gets: the final figures, the totals, and the routing of the trained model measured on
// the eval batches.
nlohmann::json training_summary(const TrainerState& state, bool stopped_early,
                                const TrainingSettings& settings, Model& model, Task& task) {
  nlohmann::json summary;
  // A double default: value() returns its default's type, and NAN alone is a float.
  constexpr double kNone = std::numeric_limits<double>::quiet_NaN();
  summary["final"] = {{"train_loss", state.last_train_loss},
                      {"eval_loss", state.last_eval.value("eval_loss", kNone)},
                      // without the MoE layers' aux losses, which some routers have and others lack
                      {"eval_cross_entropy", state.last_eval.value("eval_lm_loss", kNone)},
                      {"eval_accuracy", state.last_eval.value("eval_accuracy", kNone)}};
  summary["steps"] = state.step;
  summary["tokens"] = state.tokens;
  summary["train_seconds"] = state.seconds;
  summary["tokens_per_second"] = state.seconds > 0 ? state.tokens / state.seconds : 0.0;
  summary["stopped_early"] = stopped_early;
  if (!state.resumes.empty()) summary["resumes"] = state.resumes;
  RoutingAverage final_routing;
  for (int64_t i = 0; i < settings.eval_batches; ++i) {
    final_routing.add(model.forward(task.batch(Split::eval, i).input, ForwardOptions{}).routing);
  }
  final_routing.put(summary);
  return summary;
}
// Logs where a resumed run picks up, or why it has nothing left to train. Returns whether it had stopped
// early: a run stays stopped unless a raised training.stop_at_eval_accuracy asks for more.
bool log_resume(const TrainerState& state, const TrainingSettings& settings) {
  const nlohmann::json& last = state.last_eval;
  const double accuracy =
      last.contains("eval_accuracy") && last["eval_accuracy"].is_number() ? last["eval_accuracy"].get<double>() : -1.0;
  if (reached_stop_accuracy(settings, accuracy)) {
    spdlog::info("the checkpoint at step {} has eval accuracy {:.3f} >= training.stop_at_eval_accuracy = {}: "
                 "nothing left to train (raise it to train on)",
                 state.step, accuracy, settings.stop_at_eval_accuracy);
    return true;
  }
  if (state.step >= settings.steps) {
    spdlog::info("the checkpoint is at step {}, training.steps = {}: nothing left to train", state.step,
                 settings.steps);
  } else {
    spdlog::info("resuming from step {} of {}", state.step, settings.steps);
  }
  return false;
}

}  // namespace

void put_routing(nlohmann::json& object, const std::vector<RoutingStats>& routing) {
  RoutingAverage average;
  average.add(routing);
  average.put(object);
}

TrainingSetup prepare_training(const Experiment& experiment, ParameterStore& parameters) {
  TrainingSetup setup;
  const ConfigTable& training = experiment.table("training");
  setup.settings = read_training_settings(training);
  training.reject_unknown_keys();
  const ConfigTable& table = experiment.table("optimizer");
  setup.optimizer_name = table.get_string("name", "adamw");
  if (!optimizer_registry().contains(setup.optimizer_name)) {
    table.fail("name", "unknown optimizer \"" + setup.optimizer_name + "\"; valid: " + optimizer_registry().names());
  }
  setup.optimizer = optimizer_registry().get(setup.optimizer_name)(table, parameters);
  table.reject_unknown_keys();
  return setup;
}

BuiltExperiment build_checked(const Experiment& experiment, bool with_task) {
  BuiltExperiment built = build_experiment(experiment, with_task);
  prepare_training(experiment, built.model->parameters());  // the optimizer's moments are made on first use
  return built;
}

void require_checkpoint(const std::string& folder) {
  const std::string state_path = folder + "/trainer_state.json";
  if (!std::filesystem::exists(state_path)) {
    throw FileError("--resume: " + state_path + " not found; is " + folder + " the folder of a run?");
  }
}

TrainerState load_checkpoint(const std::string& folder, Model& model, Optimizer& optimizer) {
  require_checkpoint(folder);
  const std::string state_path = folder + "/trainer_state.json";
  const nlohmann::json json = read_json_file(state_path);
  TrainerState state;
  try {
    state.step = json.at("step").get<int64_t>();
    state.seconds = json.at("seconds").get<double>();
    state.tokens = json.at("tokens").get<int64_t>();
    // Written since the summary of a resumed run that trains no further needs it; null is NaN.
    if (json.contains("last_train_loss") && json["last_train_loss"].is_number()) {
      state.last_train_loss = json["last_train_loss"].get<double>();
    }
    state.last_eval = json.at("last_eval");
    if (json.contains("resumes")) state.resumes = json["resumes"];  // written since resumes are recorded
    if (json.contains("open_window")) {
      state.open_window = json["open_window"];
      LogWindow::restore(state.open_window);  // checked here: a damaged file is a FileError naming it
    }
  } catch (const nlohmann::json::exception& error) {
    throw FileError(state_path + ": expected step, seconds, tokens and last_eval as a run writes them (" +
                    error.what() + ")");
  }
  if (state.last_eval.is_null()) state.last_eval = nlohmann::json::object();  // written before the first evaluation
  if (!state.last_eval.is_object()) throw FileError(state_path + ": expected last_eval to be an object or null");
  if (!state.resumes.is_array()) throw FileError(state_path + ": expected resumes to be a list");
  const SafetensorsFile weights = read_safetensors(folder + "/model.safetensors");
  const SafetensorsFile moments = read_safetensors(folder + "/optimizer.safetensors");
  if (metadata_step(weights) != state.step || metadata_step(moments) != state.step) {
    throw FileError("--resume: the checkpoint files in " + folder + " disagree (trainer_state.json at step " +
                    std::to_string(state.step) + ", model.safetensors at " + std::to_string(metadata_step(weights)) +
                    ", optimizer.safetensors at " + std::to_string(metadata_step(moments)) + ")");
  }
  const Device device = model.device();
  model.to(Device::cpu);
  model.parameters().load(weights);
  model.to(device);
  optimizer.load_state(moments, model.parameters());
  return state;
}

TrainingOutcome train(const Experiment& experiment, Model& model, Task& task, TrainingSetup& setup,
                      const std::string& folder, const TrainerState* resumed) {
  const TrainingSettings& settings = setup.settings;
  Optimizer& optimizer = *setup.optimizer;
  const LearningRateSchedule schedule = schedule_of(settings);

  TrainerState state;
  bool stopped_early = false;
  const std::string metrics_path = folder + "/metrics.jsonl";
  if (resumed) {
    state = *resumed;
    stopped_early = log_resume(state, settings);
    truncate_metrics(metrics_path, state.step, state.step < settings.steps && !stopped_early);
  } else {
    write_file_atomic(metrics_path, "");
  }
  std::ofstream metrics(metrics_path, std::ios::app);

  interrupt_requested = false;
  // Ctrl-C, and SIGTERM as `timeout` and job schedulers send it: the step in progress ends, then a checkpoint.
  auto previous_interrupt = std::signal(SIGINT, on_interrupt);
  auto previous_terminate = std::signal(SIGTERM, on_interrupt);
  if (state.step < settings.steps && !stopped_early) {
    spdlog::info("training {} steps with {} (lr {}, {} schedule, warmup {}), eval every {} steps on {} batches",
                 settings.steps, setup.optimizer_name, settings.learning_rate, settings.schedule,
                 settings.warmup_steps, settings.eval_every, settings.eval_batches);
  }

  // An interrupted run's unfinished logging window continues here (and stays in the state until the next
  // checkpoint, for a resume that trains no step).
  LogWindow window = state.open_window.is_null() ? LogWindow() : LogWindow::restore(state.open_window);
  bool interrupted = false;
  double chart_seconds = 0;  // spent redrawing the charts in this process

  while (state.step < settings.steps && !stopped_early) {
    const StepRecord record =
        training_step(state.step, experiment.run.seed, settings, schedule, model, task, optimizer);
    state.step += 1;
    state.seconds += record.seconds;
    state.tokens += record.tokens;
    window.add(record);

    const bool last = state.step == settings.steps;
    const bool evaluate_now = last || (settings.eval_every > 0 && state.step % settings.eval_every == 0);
    const bool log_now = last || evaluate_now || state.step % settings.log_every == 0;
    interrupted = interrupt_requested.load();
    nlohmann::json entry;
    if (log_now || interrupted) {
      state.last_train_loss = window.mean_loss();
      entry = window.close(state, settings.steps, record.learning_rate, !log_now);
    }
    if (evaluate_now) stopped_early = evaluate_step(model, task, settings, state, entry);
    if (!entry.empty()) metrics << entry.dump() << "\n" << std::flush;
    // The charts follow the run at each evaluation (the run report draws the last), skipped while redrawing
    // them (reading every metrics line) would take over 2% of the training time.
    if (evaluate_now && !last && !stopped_early && chart_seconds <= 0.02 * state.seconds) {
      const auto start = std::chrono::steady_clock::now();
      write_progress_charts(folder);
      chart_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    if (evaluate_now || interrupted || stopped_early) {
      state.open_window = window.empty() ? nlohmann::json() : window.save();
      save_checkpoint(folder, model, optimizer, state);
    }
    if (interrupted) {
      spdlog::warn("interrupted at step {}: checkpoint saved in {}; continue with --resume --out {}", state.step,
                   folder, folder);
      break;
    }
    if (stopped_early) {
      spdlog::info("eval accuracy reached training.stop_at_eval_accuracy = {} at step {}",
                   settings.stop_at_eval_accuracy, state.step);
      break;
    }
  }
  std::signal(SIGINT, previous_interrupt);
  std::signal(SIGTERM, previous_terminate);
  // A resume that trained nothing still goes in the run's history (the weights and moments are as saved).
  if (resumed && state.step == resumed->step) save_trainer_state(folder, state);

  TrainingOutcome outcome;
  outcome.interrupted = interrupted;
  outcome.summary = training_summary(state, stopped_early, settings, model, task);
  return outcome;
}

}  // namespace mr1
