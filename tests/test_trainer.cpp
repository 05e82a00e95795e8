// Training: the optimizer updates against hand computation, the schedule, clipping, the trainer's
// outputs, and --resume after an interruption ending exactly where an uninterrupted run ends.
#include <csignal>
#include <filesystem>
#include <fstream>
#include <limits>

#include <unistd.h>

#include "experiments/files.h"
#include "experiments/loss.h"
#include "experiments/optimizer.h"
#include "experiments/trainer.h"
#include "kernels/optimizer_ops.h"
#include "model_fixture.h"
#include "svg_check.h"
#include "test_util.h"

using namespace mr1;
using Catch::Matchers::Contains;

TEST_CASE("adamw_update matches torch.optim.AdamW worked by hand", "[trainer]") {
  // p = 1, g = 0.5, lr = 0.1, betas (0.9, 0.999), eps 1e-8, wd 0.01, step 1:
  // p ← 1 − 0.1·0.01·1 = 0.999; m = 0.05; v = 0.00025; m̂ = 0.5; v̂ = 0.25
  // p ← 0.999 − 0.1 · 0.5 / (0.5 + 1e-8) = 0.899 (+ 2e-9)
  Tensor p = Tensor::from({1}, {1.0f}), g = Tensor::from({1}, {0.5f}), m({1}), v({1});
  adamw_update(p, g, m, v, AdamWHyper{0.1, 0.9, 0.999, 1e-8, 0.01, 1});
  CHECK(p[0] == Approx(0.899).epsilon(1e-6));
  // (1 − β) is formed in float32 (0.001 has a relative rounding error of 1e-5): 1e-4 relative.
  CHECK(m[0] == Approx(0.05).epsilon(1e-4));
  CHECK(v[0] == Approx(0.00025).epsilon(1e-4));
  // step 2 with g = −0.5: m = 0.045 − 0.05 = −0.005, v = 0.00024975 + 0.00025 = 0.00049975
  // m̂ = −0.005 / 0.19 = −0.0263158, v̂ = 0.00049975 / 0.001999 = 0.25000
  // p ← 0.899·(1 − 0.001) + 0.1 · 0.0263158 / 0.5 = 0.898101 + 0.00526316 = 0.903364
  g[0] = -0.5f;
  adamw_update(p, g, m, v, AdamWHyper{0.1, 0.9, 0.999, 1e-8, 0.01, 2});
  CHECK(p[0] == Approx(0.903364).epsilon(1e-5));
}

TEST_CASE("sgd_update with momentum and decay", "[trainer]") {
  // p = 2, g = 1, lr 0.1, μ 0.5, wd 0.1: p ← 2·0.99 = 1.98; b = 1; p ← 1.98 − 0.1 = 1.88
  // then g = 1 again: p ← 1.88·0.99 = 1.8612; b = 1.5; p ← 1.8612 − 0.15 = 1.7112
  Tensor p = Tensor::from({1}, {2.0f}), g = Tensor::from({1}, {1.0f}), b({1});
  sgd_update(p, g, b, 0.1, 0.5, 0.1);
  CHECK(p[0] == Approx(1.88f));
  sgd_update(p, g, b, 0.1, 0.5, 0.1);
  CHECK(p[0] == Approx(1.7112f));
}

TEST_CASE("the schedule warms up linearly, then decays by cosine to final_ratio", "[trainer]") {
  LearningRateSchedule schedule;
  schedule.peak = 1.0;
  schedule.warmup_steps = 4;
  schedule.total_steps = 14;
  schedule.final_ratio = 0.1;
  CHECK(schedule.at(0) == Approx(0.25));
  CHECK(schedule.at(3) == Approx(1.0));
  CHECK(schedule.at(4) == Approx(1.0));
  // halfway through the decay (steps 4 .. 13, progress (8 − 4) / 9): 0.1 + 0.45 (1 + cos(π·4/9))
  CHECK(schedule.at(8) == Approx(0.1 + 0.45 * (1 + std::cos(M_PI * 4 / 9))));
  CHECK(schedule.at(13) == Approx(0.1));
  schedule.shape = "linear";
  CHECK(schedule.at(13) == Approx(0.1));
  schedule.shape = "constant";
  CHECK(schedule.at(13) == Approx(1.0));
}

TEST_CASE("the squared norm of a list of tensors adds each tensor's", "[trainer]") {
  const Tensor a = Tensor::from({2}, {3.0f, -1.0f}), b = Tensor::from({1}, {4.0f}), empty({0});
  CHECK(squared_norm(std::vector<const Tensor*>{&a, &b, &empty, nullptr}) == 26.0);
  CHECK(squared_norm(std::vector<const Tensor*>{}) == 0.0);
}

TEST_CASE("AdamW over a list of tensors is each one's update with its own weight decay", "[trainer]") {
  Tensor p1 = Tensor::from({2}, {1.0f, -2.0f}), p2 = Tensor::from({1}, {0.5f});
  Tensor q1 = p1.clone(), q2 = p2.clone();
  const Tensor g1 = Tensor::from({2}, {0.25f, -1.0f}), g2 = Tensor::from({1}, {3.0f});
  Tensor m1({2}), v1({2}), m2({1}), v2({1}), n1({2}), w1({2}), n2({1}), w2({1});
  adamw_update(std::vector<AdamWTensors>{{&p1, &g1, &m1, &v1, 0.1}, {&p2, &g2, &m2, &v2, 0.0}},
               AdamWHyper{0.01, 0.9, 0.999, 1e-8, 0.5, 1});
  adamw_update(q1, g1, n1, w1, AdamWHyper{0.01, 0.9, 0.999, 1e-8, 0.1, 1});
  adamw_update(q2, g2, n2, w2, AdamWHyper{0.01, 0.9, 0.999, 1e-8, 0.0, 1});
  CHECK(test::to_double(p1) == test::to_double(q1));
  CHECK(test::to_double(p2) == test::to_double(q2));
  // The first step moves each value by lr against the sign of its gradient, after the decay:
  // p ← p (1 − lr·wd) − lr · g/|g| (to within eps).
  CHECK(p1[0] == Approx(1.0 * (1 - 0.001) - 0.01).epsilon(1e-6));
  CHECK(p2[0] == Approx(0.5 - 0.01).epsilon(1e-6));
  std::vector<Tensor*> both{&p1, &p2};
  scale_inplace(both, 2.0f);
  CHECK(p2[0] == Approx(2 * (0.5 - 0.01)).epsilon(1e-6));
  p1[1] = std::numeric_limits<float>::quiet_NaN();
  fill_inplace(both, 0.0f);  // overwrites, NaN included
  CHECK(test::to_double(p1) == std::vector<double>{0, 0});
  CHECK(p2[0] == 0.0f);
}

TEST_CASE("AdamW decays every weight matrix and table, and no norm, bias, A_log or D of the model", "[trainer]") {
  // With zero gradients Adam's own term is exactly 0: one step leaves p · (1 − lr·wd) in float32, or p.
  test::SmallModel small(
      "[model]\ndim = 8\ndepth = 1\nd_state = 4\nd_conv = 2\nnum_experts = 2\nexpert_dim = 8\nmax_seq_len = 4\n"
      "vocab_size = 5\nnorm = \"layernorm\"\ntie_embeddings = false\n");
  ParameterStore& parameters = small.model->parameters();
  parameters.zero_grad();
  const ExperimentFile options = ExperimentFile::parse("[optimizer]\nweight_decay = 0.1\n", "test.toml");
  const std::unique_ptr<Optimizer> adamw = optimizer_registry().get("adamw")(options.table("optimizer"), parameters);
  std::map<std::string, std::vector<double>> before;
  for (const auto& parameter : parameters.all()) before[parameter->name] = test::to_double(parameter->value);
  adamw->step(parameters, 0.5);
  const float decay = static_cast<float>(1.0 - 0.5 * 0.1);
  const auto ends_with = [](const std::string& name, const std::string& end) {
    return name.size() >= end.size() && name.compare(name.size() - end.size(), end.size(), end) == 0;
  };
  int decayed = 0, kept = 0;
  for (const auto& parameter : parameters.all()) {
    const std::string& name = parameter->name;
    INFO(name);
    const bool exempt = ends_with(name, ".bias") || name.find("norm") != std::string::npos ||
                        ends_with(name, ".A_log") || ends_with(name, ".D");
    CHECK(parameter->weight_decay == !exempt);
    std::vector<double> expected = before[name];
    for (double& value : expected) value = exempt ? value : static_cast<double>(static_cast<float>(value) * decay);
    CHECK(test::to_double(parameter->value) == expected);
    ++(exempt ? kept : decayed);
  }
  // The embedding, lm_head, pos_emb, in/x/dt/out_proj and conv1d, router and 2 × 2 expert weights; three
  // layernorms of 2 tensors, conv1d and dt_proj biases, A_log, D, the router's and 2 × 2 expert biases.
  CHECK(decayed == 13);
  CHECK(kept == 15);
}

TEST_CASE("clipping scales the global gradient norm down to the limit", "[trainer]") {
  ParameterStore parameters;
  parameters.add("a", {2}, true).grad = Tensor::from({2}, {3.0f, 0.0f});
  parameters.add("b", {1}, true).grad = Tensor::from({1}, {4.0f});
  CHECK(clip_gradient_norm(parameters, 10.0) == Approx(5.0));
  CHECK(parameters.get("a").grad[0] == 3.0f);
  CHECK(clip_gradient_norm(parameters, 1.0) == Approx(5.0));
  CHECK(parameters.get("a").grad[0] == Approx(0.6f).epsilon(1e-5));
  CHECK(parameters.get("b").grad[0] == Approx(0.8f).epsilon(1e-5));
}

namespace {

std::string temporary_folder(const std::string& name) {
  const auto path = std::filesystem::temp_directory_path() / ("mamba_r1_trainer_" + std::to_string(::getpid()) + "_" + name);
  std::filesystem::remove_all(path);
  std::filesystem::create_directories(path);
  return path.string();
}

const char* kTrainingExperiment = R"(
[model]
dim = 16
depth = 1
d_state = 4
num_experts = 2
expert_dim = 16
max_seq_len = 64
vocab_size = 8
[task]
name = "induction_heads"
batch_size = 4
seq_len = 16
[training]
steps = 12
learning_rate = 1e-2
warmup_steps = 2
log_every = 3
eval_every = 6
eval_batches = 2
)";

Experiment training_experiment(const std::string& folder, const std::vector<std::string>& sets = {}) {
  const std::string path = folder + "/experiment.toml";
  write_file_atomic(path, kTrainingExperiment);
  return load_experiment(path, sets);
}

// The experiment's model, initialised from seed 0, and its task.
BuiltExperiment initialized(const Experiment& experiment) {
  BuiltExperiment built = build_experiment(experiment);
  built.model->initialize(0);
  return built;
}

// A task that raises SIGINT when the trainer asks for one train batch, as Ctrl-C would.
class InterruptingTask : public Task {
 public:
  InterruptingTask(std::unique_ptr<Task> inner, int64_t interrupt_at) : inner_(std::move(inner)), at_(interrupt_at) {}
  Batch batch(Split split, int64_t index) override {
    if (split == Split::train && index == at_) std::raise(SIGINT);
    return inner_->batch(split, index);
  }
  std::string describe() const override { return inner_->describe(); }

 private:
  std::unique_ptr<Task> inner_;
  int64_t at_;
};

// train() as run_experiment calls it: the setup read from the experiment and, with resume, the
// checkpoint in `folder` loaded first.
TrainingOutcome train_in(const Experiment& experiment, Model& model, Task& task, const std::string& folder,
                         bool resume) {
  TrainingSetup setup = prepare_training(experiment, model.parameters());
  if (!resume) return train(experiment, model, task, setup, folder, nullptr);
  const TrainerState state = load_checkpoint(folder, model, *setup.optimizer);
  return train(experiment, model, task, setup, folder, &state);
}

std::vector<nlohmann::json> read_metrics(const std::string& folder) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(folder + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

}  // namespace

TEST_CASE("routing metrics: load CV, MaxVio and the drop rate of what could be dropped", "[trainer]") {
  RoutingStats stats;
  stats.present = true;
  stats.load = {0.5, 0.25, 0.25};
  stats.assignments = 16;  // 8 tokens, top-2; 2 of them masked
  stats.droppable = 12;
  stats.dropped = 3;
  const nlohmann::json metrics = routing_metrics(stats);
  // mean 1/3; deviations 1/6, -1/12, -1/12: variance 1/72
  CHECK(metrics["load_cv"].get<double>() == Approx(3 / std::sqrt(72.0)));
  CHECK(metrics["max_violation"].get<double>() == Approx(0.5));
  CHECK(metrics["dropped_fraction"].get<double>() == 0.25);  // 3 of 12, not of 16
  stats.droppable = 0;
  CHECK(routing_metrics(stats)["dropped_fraction"].get<double>() == 0.0);
}

TEST_CASE("a run writes metrics.jsonl, the summary keys and a checkpoint", "[trainer]") {
  const std::string folder = temporary_folder("outputs");
  const Experiment experiment = training_experiment(folder);
  BuiltExperiment built = initialized(experiment);
  const TrainingOutcome outcome = train_in(experiment, *built.model, *built.task, folder, false);
  const nlohmann::json& summary = outcome.summary;
  CHECK(summary["steps"] == 12);
  CHECK(std::isfinite(summary["final"]["train_loss"].get<double>()));
  CHECK(std::isfinite(summary["final"]["eval_loss"].get<double>()));
  CHECK(summary["final"]["eval_accuracy"].get<double>() >= 0.0);
  CHECK(summary["tokens_per_second"].get<double>() > 0);
  CHECK(summary["routing"].size() == 1);
  CHECK(summary["routing"][0]["load"].size() == 2);
  // The last evaluation, worked again from the trained model: the cross-entropy over every scored position
  // of the eval batches, plus the MoE layer's aux loss averaged over the batches; the accuracy over the
  // scored positions.
  double weighted = 0, aux = 0;
  int64_t scored = 0, correct = 0;
  for (int64_t i = 0; i < 2; ++i) {
    const Batch batch = built.task->batch(Split::eval, i);
    const LossResult loss =
        language_model_loss(built.model->forward(batch.input, ForwardOptions{}), batch.targets, false);
    weighted += loss.lm_loss * static_cast<double>(loss.scored);
    aux += loss.aux_loss;
    scored += loss.scored;
    correct += loss.correct;
  }
  REQUIRE(scored > 0);
  CHECK(aux > 0);
  CHECK(summary["final"]["eval_cross_entropy"].get<double>() == Approx(weighted / scored).epsilon(1e-12));
  CHECK(summary["final"]["eval_loss"].get<double>() == Approx(weighted / scored + aux / 2).epsilon(1e-12));
  CHECK(summary["final"]["eval_accuracy"].get<double>() == static_cast<double>(correct) / scored);

  const auto metrics = read_metrics(folder);
  REQUIRE(metrics.size() == 4);  // steps 3, 6, 9, 12
  CHECK(metrics[1]["step"] == 6);
  CHECK(metrics[1].contains("eval_loss"));
  CHECK_FALSE(metrics[0].contains("eval_loss"));
  CHECK(metrics[0]["routing"][0].contains("max_violation"));
  for (const char* file : {"model.safetensors", "optimizer.safetensors", "trainer_state.json"}) {
    CHECK(std::filesystem::exists(folder + "/" + file));
  }
  // The charts as of the evaluation at step 6 (the one at the last step is left to the run report): train
  // loss at steps 3 and 6, one eval point; each for the loss and, the MoE layer adding its aux loss, the
  // cross-entropy.
  const std::string loss = read_file(folder + "/loss.svg");
  CHECK(test::count(loss, "<circle") == 2);
  CHECK(test::count(loss, "<polyline") == 4);
  CHECK(std::filesystem::exists(folder + "/routing.svg"));
  CHECK_FALSE(std::filesystem::exists(folder + "/report.md"));
  std::filesystem::remove_all(folder);
}

TEST_CASE("an interruption before the first evaluation ends with a summary without eval figures", "[trainer]") {
  const std::string folder = temporary_folder("early");
  const Experiment experiment = training_experiment(folder);
  BuiltExperiment built = initialized(experiment);
  InterruptingTask interrupting(std::move(built.task), 1);  // evaluations come at steps 6 and 12
  const TrainingOutcome stopped = train_in(experiment, *built.model, interrupting, folder, false);
  CHECK(stopped.interrupted);
  CHECK(stopped.summary["steps"] == 2);
  CHECK(std::isfinite(stopped.summary["final"]["train_loss"].get<double>()));
  CHECK(std::isnan(stopped.summary["final"]["eval_loss"].get<double>()));
  // --resume reads the checkpoint, saved before any evaluation, and finishes the run.
  BuiltExperiment again = build_experiment(experiment);
  const TrainingOutcome resumed = train_in(experiment, *again.model, *again.task, folder, true);
  CHECK(resumed.summary["steps"] == 12);
  CHECK(std::isfinite(resumed.summary["final"]["eval_loss"].get<double>()));
  std::filesystem::remove_all(folder);
}

TEST_CASE("resuming after an interruption ends exactly where an uninterrupted run ends", "[trainer]") {
  const std::string whole = temporary_folder("whole"), parts = temporary_folder("parts");
  const Experiment experiment = training_experiment(whole);

  BuiltExperiment uninterrupted = initialized(experiment);
  const TrainingOutcome reference = train_in(experiment, *uninterrupted.model, *uninterrupted.task, whole, false);

  BuiltExperiment first = initialized(experiment);
  InterruptingTask interrupting(std::move(first.task), 7);
  const TrainingOutcome stopped = train_in(experiment, *first.model, interrupting, parts, false);
  CHECK(stopped.interrupted);
  CHECK(stopped.summary["steps"] == 8);  // the step in progress finishes, then the checkpoint is saved
  // Steps 7 and 8 of the window 7-9: logged as a partial window, and carried in the checkpoint.
  const auto interrupted_metrics = read_metrics(parts);
  REQUIRE(interrupted_metrics.size() == 3);
  CHECK(interrupted_metrics[2]["step"] == 8);
  CHECK(interrupted_metrics[2]["partial_window"] == true);
  CHECK(read_json_file(parts + "/trainer_state.json")["open_window"]["steps"] == 2);

  // A resume that trains no step (training.steps lowered to the step reached) keeps the window and its line.
  {
    const Experiment stop_here = training_experiment(parts, {"training.steps=8"});
    BuiltExperiment idle = build_experiment(stop_here);
    train_in(stop_here, *idle.model, *idle.task, parts, true);
    CHECK(read_metrics(parts).size() == 3);
    CHECK(read_json_file(parts + "/trainer_state.json")["open_window"]["steps"] == 2);
  }

  BuiltExperiment second = build_experiment(experiment);
  second.model->initialize(123);  // overwritten by the checkpoint
  const TrainingOutcome resumed = train_in(experiment, *second.model, *second.task, parts, true);
  CHECK_FALSE(resumed.interrupted);
  CHECK(resumed.summary["steps"] == 12);
  CHECK(resumed.summary["final"]["train_loss"].get<double>() == reference.summary["final"]["train_loss"].get<double>());
  CHECK(resumed.summary["final"]["eval_loss"].get<double>() == reference.summary["final"]["eval_loss"].get<double>());
  const auto& a = uninterrupted.model->parameters().all();
  const auto& b = second.model->parameters().all();
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(a[i]->name);
    CHECK(a[i]->value.to_vector() == b[i]->value.to_vector());
  }
  // metrics.jsonl of the resumed run holds the uninterrupted run's lines: the window 7-9 whole, the
  // partial line of steps 7-8 gone; the same figures but for the timings.
  auto without_timing = [](std::vector<nlohmann::json> lines) {
    for (auto& line : lines) {
      line.erase("tokens_per_second");
      line.erase("elapsed_seconds");
    }
    return lines;
  };
  const auto whole_metrics = without_timing(read_metrics(whole)), part_metrics = without_timing(read_metrics(parts));
  REQUIRE(whole_metrics.size() == 4);
  CHECK(whole_metrics[2]["step"] == 9);
  CHECK(part_metrics == whole_metrics);
  CHECK_FALSE(read_json_file(parts + "/trainer_state.json").contains("open_window"));
  std::filesystem::remove_all(whole);
  std::filesystem::remove_all(parts);
}

TEST_CASE("training settings are checked", "[trainer]") {
  const std::string folder = temporary_folder("errors");
  write_file_atomic(folder + "/bad.toml", std::string(kTrainingExperiment) + "[optimizer]\nname = \"lion\"\n");
  Experiment experiment = load_experiment(folder + "/bad.toml", {});
  BuiltExperiment built = build_experiment(experiment);
  CHECK_THROWS_WITH(train_in(experiment, *built.model, *built.task, folder, false),
                    Contains("optimizer.name") && Contains("adamw, sgd"));
  Experiment typo = load_experiment(folder + "/bad.toml", {"optimizer.name=adamw", "training.step=3"});
  BuiltExperiment typo_built = build_experiment(typo);
  CHECK_THROWS_WITH(train_in(typo, *typo_built.model, *typo_built.task, folder, false),
                    Contains("training.step") && Contains("steps"));
  Experiment valid = load_experiment(folder + "/bad.toml", {"optimizer.name=adamw"});
  BuiltExperiment valid_built = build_experiment(valid);
  CHECK_THROWS_WITH(train_in(valid, *valid_built.model, *valid_built.task, folder + "/nowhere", true),
                    Contains("trainer_state.json") && Contains("not found"));
  // Values that are 0 or subnormal in float32, where the update is computed, and an accuracy as a percentage.
  const std::vector<std::pair<std::string, std::string>> refused{
      {"optimizer.eps=1e-46", "optimizer.eps: expected a number > 0 that float32 holds as a normal number"},
      {"optimizer.eps=1e-40", "optimizer.eps: expected a number > 0 that float32 holds as a normal number"},
      {"training.learning_rate=1e-320", "training.learning_rate: expected a number > 0 that float32 holds"},
      {"training.stop_at_eval_accuracy=97.0", "training.stop_at_eval_accuracy: expected an accuracy in [0, 1]"},
      {"training.stop_at_eval_accuracy=-0.5", "training.stop_at_eval_accuracy: expected an accuracy in [0, 1]"}};
  for (const auto& [set, message] : refused) {
    CAPTURE(set);
    CHECK_THROWS_WITH(build_checked(load_experiment(folder + "/bad.toml", {"optimizer.name=adamw", set}), true),
                      Contains(message));
  }
  CHECK_NOTHROW(build_checked(
      load_experiment(folder + "/bad.toml", {"optimizer.name=adamw", "optimizer.eps=1.2e-38",
                                             "training.learning_rate=1.2e-38", "training.stop_at_eval_accuracy=1.0"}),
      true));
  std::filesystem::remove_all(folder);
}

TEST_CASE("resuming a finished run trains no further and keeps its final figures", "[trainer]") {
  const std::string folder = temporary_folder("finished");
  const Experiment experiment = training_experiment(folder);
  BuiltExperiment built = initialized(experiment);
  const TrainingOutcome finished = train_in(experiment, *built.model, *built.task, folder, false);
  BuiltExperiment again = build_experiment(experiment);
  const TrainingOutcome resumed = train_in(experiment, *again.model, *again.task, folder, true);
  CHECK(resumed.summary["steps"] == 12);
  // The train loss of the last logging window comes from the checkpoint: before, it was lost (null).
  CHECK(resumed.summary["final"]["train_loss"].get<double>() == finished.summary["final"]["train_loss"].get<double>());
  CHECK(resumed.summary["final"]["eval_loss"].get<double>() == finished.summary["final"]["eval_loss"].get<double>());
  CHECK(read_metrics(folder).size() == 4);  // the metrics of steps 3, 6, 9 and 12, kept as they were
  std::filesystem::remove_all(folder);
}

TEST_CASE("a damaged checkpoint is an error naming its file", "[trainer]") {
  const std::string folder = temporary_folder("damaged");
  const Experiment experiment = training_experiment(folder);
  BuiltExperiment built = initialized(experiment);
  train_in(experiment, *built.model, *built.task, folder, false);
  TrainingSetup setup = prepare_training(experiment, built.model->parameters());
  const std::string state = folder + "/trainer_state.json";
  const std::string good = read_file(state);
  write_file_atomic(state, "{\"step\": 12,");
  CHECK_THROWS_AS(load_checkpoint(folder, *built.model, *setup.optimizer), FileError);
  CHECK_THROWS_WITH(load_checkpoint(folder, *built.model, *setup.optimizer), Contains(state + ": not valid JSON"));
  write_file_atomic(state, "{\"step\": \"twelve\", \"seconds\": 1, \"tokens\": 8, \"last_eval\": null}");
  CHECK_THROWS_WITH(load_checkpoint(folder, *built.model, *setup.optimizer),
                    Contains(state + ": expected step, seconds, tokens and last_eval"));
  nlohmann::json earlier = nlohmann::json::parse(good);
  earlier["step"] = 6;  // the weights and moments say 12
  write_file_atomic(state, earlier.dump());
  CHECK_THROWS_WITH(load_checkpoint(folder, *built.model, *setup.optimizer),
                    Contains("disagree (trainer_state.json at step 6, model.safetensors at 12"));
  write_file_atomic(state, good);
  CHECK(load_checkpoint(folder, *built.model, *setup.optimizer).step == 12);
  std::filesystem::remove_all(folder);
}

TEST_CASE("resuming a run that stopped early trains no further, unless the threshold is raised", "[trainer]") {
  const std::string folder = temporary_folder("stopped");
  // Any accuracy stops it at the first evaluation, step 6.
  const Experiment early = training_experiment(folder, {"training.stop_at_eval_accuracy=1e-9"});
  BuiltExperiment built = initialized(early);
  const TrainingOutcome stopped = train_in(early, *built.model, *built.task, folder, false);
  REQUIRE(stopped.summary["steps"] == 6);
  CHECK(stopped.summary["stopped_early"] == true);
  BuiltExperiment again = build_experiment(early);
  const TrainingOutcome resumed = train_in(early, *again.model, *again.task, folder, true);
  CHECK(resumed.summary["steps"] == 6);
  CHECK(resumed.summary["stopped_early"] == true);
  CHECK(resumed.summary["final"]["eval_loss"].get<double>() == stopped.summary["final"]["eval_loss"].get<double>());
  // Early stopping turned off: the run goes on to training.steps.
  const Experiment further = training_experiment(folder, {"training.stop_at_eval_accuracy=0"});
  BuiltExperiment more = build_experiment(further);
  CHECK(train_in(further, *more.model, *more.task, folder, true).summary["steps"] == 12);
  std::filesystem::remove_all(folder);
}
