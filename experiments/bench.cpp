// mamba-r1 bench: measured throughput of the experiment's model on the shape of its [task]
// (batch_size × seq_len): inference forward, and a training step (forward, LM loss or a fixed
// projection of the output, backward, AdamW update).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "blocks/random.h"
#include "experiments/commands.h"
#include "experiments/experiment.h"
#include "experiments/loss.h"
#include "experiments/optimizer.h"
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

}  // namespace

int command_bench(const CommandLine& line) {
  Experiment experiment = load_experiment(line.experiment_path(), command_line_assignments(line));
  apply_thread_count(experiment.run.threads);
  BuiltExperiment built = build_experiment(experiment, false);
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
  const std::vector<double> train = time_runs(repeats, [&] {
    ForwardTape tape;
    ForwardOptions options;
    options.training = true;
    options.random = &random;
    const ModelOutput output = model.forward(input, options, &tape);
    model.parameters().zero_grad();
    if (experiment.model.vocab_size > 0) {
      const LossResult loss = language_model_loss(output, targets, true);
      model.backward(tape, &loss.grad_logits, nullptr, 1.0f);
    } else {
      model.backward(tape, nullptr, &projection, 1.0f);
    }
    optimizer->step(model.parameters(), 1e-4);
  });

  const double tokens = static_cast<double>(B * L);
  const double forward_seconds = median(forward), train_seconds = median(train);
  std::printf("%-34s %12s %14s\n", "measurement", "median s", "tokens/s");
  std::printf("%-34s %12.4f %14.0f\n", "forward (inference)", forward_seconds, tokens / forward_seconds);
  std::printf("%-34s %12.4f %14.0f\n", "training step (fwd + bwd + AdamW)", train_seconds, tokens / train_seconds);
  std::printf("training / forward throughput: %.2f\n", forward_seconds / train_seconds);
  return 0;
}

}  // namespace mr1
