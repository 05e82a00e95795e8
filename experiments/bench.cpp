// mamba-r1 bench: measured throughput of the experiment's model on the shape of its [task]
// (batch_size × seq_len): inference forward, and a training step (forward, LM loss or a fixed
// projection of the output, backward, AdamW update); then where a training step's time goes, part by
// part (embedding, each block kind, head, loss, AdamW), each part timed alone.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "blocks/part_times.h"
#include "blocks/random.h"
#include "experiments/commands.h"
#include "experiments/experiment.h"
#include "experiments/loss.h"
#include "experiments/optimizer.h"
#include "experiments/trainer.h"
#include "kernels/cuda_device.h"

namespace mr1 {

namespace {

// Median seconds of `repeats` runs of `work` after one warm-up run.
template <typename Work>
std::vector<double> time_runs(int64_t repeats, Work&& work) {
  work();
  std::vector<double> seconds;
  for (int64_t i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    work();
    cuda::synchronize();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return seconds;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// The training step's parts: milliseconds per step forward, backward and in all, and each part's share
// of the parts' sum, which is set beside the step's median to show what timing the parts alone costs.
void print_part_times(const PartTimes& times, int64_t steps, double step_seconds) {
  double total = 0;
  for (const PartTimes::Part& part : times.parts()) total += part.total_seconds();
  const double per_step = 1e3 / static_cast<double>(steps);
  const auto milliseconds = [&](const PartTimes::Part& part, Pass pass) {
    const int i = static_cast<int>(pass);
    if (part.count[i] == 0) return std::string("-");
    char text[32];
    std::snprintf(text, sizeof text, "%.2f", part.seconds[i] * per_step);
    return std::string(text);
  };
  std::printf("\nwhere a training step's time goes (mean of %lld step%s, each part timed alone):\n",
              static_cast<long long>(steps), steps == 1 ? "" : "s");
  std::printf("%-30s %12s %12s %12s %7s\n", "part", "forward ms", "backward ms", "total ms", "share");
  for (const PartTimes::Part& part : times.parts()) {
    const int64_t blocks = std::max(part.count[0], part.count[1]) / steps;
    const std::string name = blocks > 1 ? part.name + " (" + std::to_string(blocks) + " blocks)" : part.name;
    std::printf("%-30s %12s %12s %12.2f %6.1f%%\n", name.c_str(), milliseconds(part, Pass::forward).c_str(),
                milliseconds(part, Pass::backward).c_str(), part.total_seconds() * per_step,
                total > 0 ? 100.0 * part.total_seconds() / total : 0.0);
  }
  std::printf("%-30s %12s %12s %12.2f   (the step's median above: %.2f ms)\n", "sum", "", "",
              total * per_step, step_seconds * 1e3);
}

}  // namespace

int command_bench(const CommandLine& line) {
  Experiment experiment = load_experiment(line.experiment_path(), command_line_assignments(line));
  apply_thread_count(experiment.run.threads);
  // The bench's training step uses AdamW at the default settings; the file's [training] and [optimizer]
  // are checked all the same, so a typo there is an error here too.
  BuiltExperiment built = build_checked(experiment, false);
  const ConfigTable& task = experiment.table("task");
  const int64_t B = task.get_int("batch_size", 4, 1), L = task.get_int("seq_len", 512, 1);
  const Device device = resolve_backend(experiment.run.backend);
  Model& model = *built.model;
  model.initialize(experiment.run.seed);
  model.to(device);

  Random random(experiment.run.seed + 17);
  ModelInput input;
  input.batch = B;
  input.length = L;
  if (experiment.model.vocab_size > 0) {
    for (int64_t i = 0; i < B * L; ++i) input.tokens.push_back(static_cast<int32_t>(random.below(experiment.model.vocab_size)));
  } else {
    input.embeddings = Tensor({B, L, experiment.model.dim});
    random.fill_normal(input.embeddings, 0.0, 1.0);
  }
  const int64_t repeats = experiment.run.repeats;
  spdlog::info("bench: {} parameters, input ({}, {}), {} timed runs each after one warm-up",
               model.parameters().element_count(), B, L, repeats);

  const std::vector<double> forward = time_runs(repeats, [&] { model.forward(input, ForwardOptions{}); });

  ConfigTable no_options(nullptr, experiment.file.file(), "optimizer");
  std::unique_ptr<Optimizer> optimizer = optimizer_registry().get("adamw")(no_options, model.parameters());
  const std::vector<int32_t> targets = experiment.model.vocab_size > 0 ? next_token_targets(input)
                                                                        : std::vector<int32_t>{};
  Tensor projection;
  if (experiment.model.vocab_size == 0) {
    projection = Tensor({B, L, experiment.model.dim});
    random.fill_normal(projection, 0.0, 1.0);
    projection = projection.to(device);
  }
  // One training step; with `times`, each part of it timed alone.
  const auto train_step = [&](PartTimes* times) {
    model.set_part_times(times);
    ForwardTape tape;
    ForwardOptions options;
    options.training = true;
    options.random = &random;
    const ModelOutput output = model.forward(input, options, &tape);
    model.parameters().zero_grad();
    if (experiment.model.vocab_size > 0) {
      LossResult loss;
      {
        const PartTimer timer(times, "loss and its gradient", Pass::other);
        loss = language_model_loss(output, targets, true);
      }
      model.backward(tape, &loss.grad_logits, nullptr, 1.0f);
    } else {
      model.backward(tape, nullptr, &projection, 1.0f);
    }
    const PartTimer timer(times, "AdamW update", Pass::other);
    optimizer->step(model.parameters(), 1e-4);
    model.set_part_times(nullptr);
  };
  const std::vector<double> train = time_runs(repeats, [&] { train_step(nullptr); });

  const double tokens = static_cast<double>(B * L);
  const double forward_seconds = median(forward), train_seconds = median(train);
  std::printf("%-34s %12s %14s\n", "measurement", "median s", "tokens/s");
  std::printf("%-34s %12.4f %14.0f\n", "forward (inference)", forward_seconds, tokens / forward_seconds);
  std::printf("%-34s %12.4f %14.0f\n", "training step (fwd + bwd + AdamW)", train_seconds, tokens / train_seconds);
  std::printf("training / forward throughput: %.2f\n", forward_seconds / train_seconds);

  PartTimes times;
  for (int64_t i = 0; i < repeats; ++i) train_step(&times);
  print_part_times(times, repeats, train_seconds);
  return 0;
}

}  // namespace mr1
