// Loading experiments, building their model and task, and choosing the backend.
#include "experiments/experiment.h"

#include <omp.h>
#include <spdlog/spdlog.h>

#include <Eigen/Core>
#include <filesystem>

#include "blocks/catalog.h"
#include "experiments/safetensors.h"
#include "experiments/validate.h"
#include "kernels/cuda_device.h"

namespace mr1 {

namespace {
const std::vector<std::string> kTables{"model", "router", "task", "training", "optimizer", "run", "output", "sweep"};
}

const ConfigTable& Experiment::table(const std::string& name) const {
  for (const ConfigTable& table : tables) {
    if (table.path() == name) return table;
  }
  throw std::logic_error("experiment has no table " + name);
}

Experiment load_experiment(const std::string& path, const std::vector<std::string>& assignments,
                           const std::vector<std::string>& origins) {
  register_all();
  Experiment experiment;
  experiment.file = ExperimentFile::load(path);
  for (size_t i = 0; i < assignments.size(); ++i) {
    experiment.file.set(assignments[i], i < origins.size() ? origins[i] : std::string());
  }
  experiment.file.reject_unknown_tables(kTables);
  for (const std::string& name : kTables) experiment.tables.push_back(experiment.file.table(name));

  experiment.model = read_model_config(experiment.table("model"));
  experiment.router = read_router_settings(experiment.table("router"));

  const ConfigTable& run = experiment.table("run");
  experiment.run.seed = static_cast<uint64_t>(run.get_int("seed", 0, 0));
  experiment.run.backend = run.get_choice("backend", "auto", kBackendNames);
  experiment.run.threads = run.get_int("threads", 0, 0, kMaxThreads);
  experiment.run.repeats = run.get_int("repeats", experiment.run.repeats, 1);
  experiment.run.warmup = run.get_int("warmup", experiment.run.warmup, 0);
  experiment.run.tf32 = run.get_bool("tf32", experiment.run.tf32);
  cuda::set_tf32(experiment.run.tf32);  // one switch for the process: the GEMMs read it at each call

  const ConfigTable& output = experiment.table("output");
  experiment.output.dir = output.get_string("dir", experiment.output.dir);
  experiment.output.name = output.get_string("name", std::filesystem::path(path).stem().string());
  const std::string& name = experiment.output.name;
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
    output.fail("name", "expected a folder name (the run folder is dir/name-timestamp), found \"" + name + "\"");
  }
  if (experiment.output.dir.empty()) output.fail("dir", "expected a folder, found \"\"");
  return experiment;
}

BuiltExperiment build_experiment(const Experiment& experiment, bool with_task) {
  BuiltExperiment built;
  built.model = std::make_unique<Model>(experiment.model, experiment.router, experiment.table("router"));
  const ConfigTable& task = experiment.table("task");
  if (with_task) {
    const std::string name = task.get_string("name", "forward");
    if (!task_registry().contains(name)) {
      task.fail("name", "unknown task \"" + name + "\"; valid: " + task_registry().names());
    }
    built.task = task_registry().get(name)(TaskContext{task, experiment.model, experiment.run.seed});
  }
  // [training] and [optimizer] are read (and checked) by the trainer, [sweep] by the sweep command.
  for (const ConfigTable& table : experiment.tables) {
    const std::string& name = table.path();
    if (name == "training" || name == "optimizer" || name == "sweep" || (!with_task && name == "task")) continue;
    table.reject_unknown_keys();
  }
  return built;
}

void load_weights(Model& model, const std::string& path) {
  SafetensorsFile file = read_safetensors(path);
  const ModelConfig& config = model.config();
  auto head = file.tensors.find("lm_head.weight");
  if (config.vocab_size > 0 && config.tie_embeddings && head != file.tensors.end()) {
    auto embedding = file.tensors.find("backbone.embedding.weight");
    if (embedding == file.tensors.end() || embedding->second.bytes != head->second.bytes ||
        embedding->second.dtype != head->second.dtype) {
      throw SafetensorsError(path + ": holds an lm_head.weight that differs from backbone.embedding.weight, but "
                             "model.tie_embeddings = true; set tie_embeddings = false to use it");
    }
    file.tensors.erase(head);
  }
  model.parameters().load(file);
}

namespace {

// "cpu (2 threads)", "cpu (1 thread)".
std::string cpu_backend() {
  const int threads = omp_get_max_threads();
  return "cpu (" + std::to_string(threads) + (threads == 1 ? " thread)" : " threads)");
}

}  // namespace

Device resolve_backend(const std::string& requested) {
  if (requested == "cpu") {
    spdlog::info("backend: {}", cpu_backend());
    return Device::cpu;
  }
  const std::string reason = cuda::unavailable_reason();
  if (requested == "cuda") {
    if (!reason.empty()) throw std::runtime_error("backend cuda requested, but " + reason);
    spdlog::info("backend: cuda, {}{}", cuda::device_description(), cuda::tf32() ? ", TF32 GEMMs" : "");
    return Device::cuda;
  }
  if (!reason.empty()) {
    spdlog::info("backend: {}; CUDA not used: {}", cpu_backend(), reason);
    return Device::cpu;
  }
  // auto: the GPU when its kernels agree with the CPU on a small model (forward and backward, well under
  // a second); otherwise the CPU, saying why.
  const std::string failure = cuda_self_check();
  if (!failure.empty()) {
    spdlog::warn("backend: {}; CUDA device {} found, but its self-check against the CPU failed: {}. "
                 "`mamba-r1 validate` compares every op; --backend cuda uses the device anyway",
                 cpu_backend(), cuda::device_description(), failure);
    return Device::cpu;
  }
  spdlog::info("backend: cuda (auto), {}{}; self-check against the CPU passed", cuda::device_description(),
               cuda::tf32() ? ", TF32 GEMMs" : "");
  return Device::cuda;
}

void apply_thread_count(int64_t threads) {
  // Eigen's products run on one thread each; the ops split them into pieces across the threads
  // themselves (for_each_piece in kernels/eigen_maps.h), so that no result depends on the thread count.
  Eigen::setNbThreads(1);
  if (threads <= 0) return;
  omp_set_num_threads(static_cast<int>(threads));
}

}  // namespace mr1
