// The subcommands: run, forward, init, list, validate.
#include "experiments/commands.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>

#include "blocks/catalog.h"
#include "experiments/experiment.h"
#include "experiments/files.h"
#include "experiments/loss.h"
#include "experiments/run.h"
#include "experiments/safetensors.h"
#include "experiments/sweep.h"
#include "experiments/trainer.h"

namespace mr1 {

namespace {

// The options that take no value; every other option a command reads (CommandSpec) takes one.
const std::set<std::string> kFlags{"backward", "resume", "help", "greedy", "bench"};

// Each command: its lines of the usage text, and the options it reads besides --log-level and --help.
struct CommandSpec {
  std::string name;
  std::string usage;
  std::set<std::string> options;
};

const std::vector<CommandSpec>& command_specs() {
  static const std::vector<CommandSpec> specs{
      {"run",
       "  mamba-r1 run FILE.toml [--set key=value]... [--out DIR] [--resume] [--backend auto|cpu|cuda]\n",
       {"set", "out", "resume", "backend", "seed", "threads"}},
      {"forward",
       "  mamba-r1 forward FILE.toml --weights W.safetensors --input I.safetensors --output O.safetensors\n"
       "                   [--backward] [--backend cpu|cuda] [--set key=value]...\n",
       {"set", "weights", "input", "output", "backward", "backend", "seed", "threads"}},
      {"init", "  mamba-r1 init FILE.toml --output W.safetensors [--seed N] [--set key=value]...\n",
       {"set", "output", "seed", "threads"}},
      {"validate",
       "  mamba-r1 validate [FILE.toml] [--set key=value]... [--only TEXT]   CUDA against the CPU reference,\n"
       "                   every op or those whose name contains TEXT\n",
       {"set", "only", "seed", "threads"}},
      {"list", "  mamba-r1 list                      everything in the registry\n", {}},
      {"sweep",
       "  mamba-r1 sweep FILE.toml [--set key=value]... [--out DIR [--resume]] [--jobs N]   every combination\n"
       "                   of [sweep], N runs at a time (each a process of its own; default 1)\n",
       {"set", "out", "resume", "jobs", "backend", "seed", "threads"}},
      {"compare",
       "  mamba-r1 compare RUN_DIR RUN_DIR... [--out DIR]   runs made apart (or a sweep's folder) side by\n"
       "                   side: the settings that differ, the results table and the charts\n",
       {"out"}},
      {"bench",
       "  mamba-r1 bench FILE.toml [--set key=value]... [--backend auto|cpu|cuda]   forward and training-step\n"
       "                   throughput, and where a training step's time goes\n",
       {"set", "backend", "seed", "threads"}},
      {"generate",
       "  mamba-r1 generate FILE.toml --weights W.safetensors (--prompt TEXT | --prompts-file F)\n"
       "                   [--max-new-tokens N (256)] [--greedy | --temperature T (1) --top-k K (0: all)\n"
       "                   --top-p P (1) --seed S] [--stop-byte B] [--set key=value]... [--backend auto|cpu|cuda]\n"
       "  mamba-r1 generate FILE.toml --bench [--weights W.safetensors] [--max-new-tokens N (2000)]\n"
       "                   decoding speed at batch 1 and 16, and prefill speed\n",
       {"set", "weights", "prompt", "prompts-file", "max-new-tokens", "greedy", "temperature", "top-k", "top-p",
        "seed", "stop-byte", "bench", "backend", "threads"}},
  };
  return specs;
}

const CommandSpec* find_command(const std::string& name) {
  for (const CommandSpec& spec : command_specs()) {
    if (spec.name == name) return &spec;
  }
  return nullptr;
}

// An option some command reads that takes a value (--log-level: every command).
bool is_value_option(const std::string& name) {
  if (name == "log-level") return true;
  if (kFlags.count(name)) return false;
  for (const CommandSpec& spec : command_specs()) {
    if (spec.options.count(name)) return true;
  }
  return false;
}

// The line of the common options `spec` takes (every command's when null).
std::string common_options(const CommandSpec* spec) {
  std::string line = "common options: ";
  if (!spec || spec->options.count("threads")) line += "--threads N (CPU threads, run.threads), ";
  if (!spec || spec->options.count("seed")) line += "--seed N (run.seed), ";
  return line + "--log-level debug|info|warn|error, --help\n";
}

// Refuses an option the command does not read (it would be ignored) and one given twice (but --set).
void check_options(const CommandLine& line, const std::vector<std::string>& given) {
  const CommandSpec* spec = find_command(line.command);
  if (!spec) return;  // an unknown command is reported as such
  std::set<std::string> seen;
  for (const std::string& name : given) {
    if (name != "log-level" && name != "help" && !spec->options.count(name)) {
      std::string valid;
      for (const std::string& option : spec->options) valid += (valid.empty() ? "--" : ", --") + option;
      throw UsageError(line.command + " does not take --" + name + "; its options: " +
                       (valid.empty() ? std::string("none") : valid) + ", --log-level, --help");
    }
    if (name != "set" && !seen.insert(name).second) throw UsageError("--" + name + " is given twice");
  }
}

}  // namespace

std::string usage() {
  std::string text = "usage:\n";
  for (const CommandSpec& spec : command_specs()) text += spec.usage;
  return text + common_options(nullptr);
}

bool is_command(const std::string& name) { return find_command(name) != nullptr; }

std::string command_usage(const std::string& command) {
  const CommandSpec* spec = find_command(command);
  if (!spec) throw UsageError("unknown command '" + command + "'");
  return "usage:\n" + spec->usage + common_options(spec);
}

CommandLine parse_command_line(int argc, char** argv) {
  CommandLine line;
  if (argc < 2) throw UsageError("no command given");
  line.command = argv[1];
  if (line.command == "--help" || line.command == "-h") line.command = "help";
  std::vector<std::string> given;  // the options' names, in order
  for (int i = 2; i < argc; ++i) {
    std::string argument = argv[i];
    if (argument == "-h") argument = "--help";
    if (argument.rfind("--", 0) != 0) {
      line.positional.push_back(argument);
      continue;
    }
    std::string name = argument.substr(2), value;
    const size_t equals = name.find('=');
    const bool inline_value = equals != std::string::npos;  // --out=DIR, --set=model.d_state=32
    if (inline_value) {
      value = name.substr(equals + 1);
      name = name.substr(0, equals);
    }
    if (kFlags.count(name)) {
      if (inline_value) throw UsageError("--" + name + " takes no value");
      line.flags.insert(name);
      given.push_back(name);
      continue;
    }
    if (!is_value_option(name)) throw UsageError("unknown option --" + name);
    if (!inline_value) {
      if (i + 1 >= argc) throw UsageError("--" + name + " needs a value");
      value = argv[++i];
    }
    if (value.empty()) throw UsageError("--" + name + " needs a value, found an empty one");
    given.push_back(name);
    if (name == "set") {
      line.sets.push_back(value);
    } else {
      line.options[name] = value;
    }
  }
  check_options(line, given);
  return line;
}

std::string CommandLine::option(const std::string& name, const std::string& fallback) const {
  auto found = options.find(name);
  return found == options.end() ? fallback : found->second;
}

std::string CommandLine::required(const std::string& name) const {
  auto found = options.find(name);
  if (found == options.end()) throw UsageError(command + " needs --" + name);
  return found->second;
}

std::string CommandLine::experiment_path() const {
  if (positional.empty()) throw UsageError(command + " needs an experiment file (FILE.toml)");
  if (positional.size() > 1) throw UsageError(command + ": unexpected argument '" + positional[1] + "'");
  return positional[0];
}

int64_t parse_integer_option(const CommandLine& line, const std::string& name, int64_t fallback) {
  const std::string text = line.option(name);
  if (text.empty()) return fallback;
  try {
    size_t used = 0;
    const long long value = std::stoll(text, &used);
    if (used != text.size() || value < 0) throw std::invalid_argument(text);
    return value;
  } catch (const std::exception&) {
    throw UsageError("--" + name + " expects a non-negative integer, found '" + text + "'");
  }
}

std::vector<std::string> command_line_assignments(const CommandLine& line) {
  std::vector<std::string> assignments = line.sets;
  const std::string backend = line.option("backend");
  if (!backend.empty() && std::find(kBackendNames.begin(), kBackendNames.end(), backend) == kBackendNames.end()) {
    throw UsageError("--backend expects one of " + join(kBackendNames) + ", found '" + backend + "'");
  }
  if (!backend.empty()) assignments.push_back("run.backend=\"" + backend + "\"");
  if (!line.option("seed").empty()) {
    assignments.push_back("run.seed=" + std::to_string(parse_integer_option(line, "seed", 0)));
  }
  if (!line.option("threads").empty()) {
    const int64_t threads = parse_integer_option(line, "threads", 0);
    if (threads > kMaxThreads) {
      throw UsageError("--threads expects at most " + std::to_string(kMaxThreads) + ", found " +
                       std::to_string(threads));
    }
    assignments.push_back("run.threads=" + std::to_string(threads));
  }
  return assignments;
}

std::string timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  std::ostringstream out;
  out << std::put_time(&local, "%Y%m%d-%H%M%S");
  return out.str();
}

namespace {

// The experiment with the command line's --set, --backend, --seed and --threads applied.
Experiment load_for(const CommandLine& line) {
  Experiment experiment = load_experiment(line.experiment_path(), command_line_assignments(line));
  apply_thread_count(experiment.run.threads);
  return experiment;
}

}  // namespace

int command_run(const CommandLine& line) {
  Experiment experiment = load_for(line);
  const std::vector<std::string> unswept = sweep_keys_left_unset(experiment.file);
  if (!unswept.empty()) {
    spdlog::warn("{}: `run` trains one model, with the file's own value{} of {}, which [sweep] lists; "
                 "`mamba-r1 sweep {}` runs every combination", experiment.file.file(),
                 unswept.size() == 1 ? "" : "s", join(unswept), line.experiment_path());
  }
  drop_sweep_lists(experiment.file);
  const bool resume = line.flag("resume");
  const std::string out = line.option("out");
  if (resume && out.empty()) throw UsageError("--resume needs --out DIR, the folder of the run to continue");
  const std::string earlier = resume || out.empty() ? std::string() : any_output_in(out);
  if (!earlier.empty()) {
    std::string advice;
    if (std::filesystem::exists(out + "/trainer_state.json")) {
      advice = "continue it with --resume, or choose another --out";
    } else if (earlier == "sweep.json") {
      advice = "continue it with `mamba-r1 sweep FILE --resume --out " + out + "`, or choose another --out";
    } else if (earlier == "results.md") {
      advice = "choose another --out";
    } else {
      advice = "choose another --out (or delete it: it has no checkpoint to continue)";
    }
    throw FileError(out + " already holds " +
                    (earlier == "results.md" ? "a comparison" : earlier == "sweep.json" ? "a sweep" : "a run") + " (" +
                    earlier + "); " + advice);
  }
  if (!out.empty()) return run_experiment(experiment, out, resume).interrupted ? 130 : 0;
  // By default a new folder [output] dir / name-timestamp, numbered when taken, that run_experiment makes.
  const std::string stem = experiment.output.dir + "/" + experiment.output.name + "-" + timestamp();
  return run_experiment(experiment, stem, resume, FolderName::new_numbered).interrupted ? 130 : 0;
}

namespace {

// The model's input from a safetensors file holding `tokens` or `embeddings`, and maybe `mask`.
ModelInput read_model_input(const std::string& path, const ModelConfig& model) {
  const SafetensorsFile file = read_safetensors(path);
  ModelInput input;
  const bool by_tokens = model.vocab_size > 0;
  const std::string wanted = by_tokens ? "tokens" : "embeddings";
  for (const auto& [name, tensor] : file.tensors) {
    if (name != wanted && name != "mask") {
      throw SafetensorsError(path + ": unexpected tensor '" + name + "'; the input holds '" + wanted +
                             "' and optionally 'mask'");
    }
  }
  if (!file.contains(wanted)) {
    throw SafetensorsError(path + ": missing '" + wanted + "' (" +
                           (by_tokens ? "I64 or I32, B×L: the model has vocab_size " + std::to_string(model.vocab_size)
                                      : "F32, B×L×" + std::to_string(model.dim) + ": the model has vocab_size 0") +
                           ")");
  }
  const StoredTensor& main = file.get(wanted);
  if (by_tokens) {
    if (main.dtype != DType::I64 && main.dtype != DType::I32) {
      throw SafetensorsError(path + ": 'tokens' must be I64 or I32, found " + dtype_name(main.dtype));
    }
    if (main.shape.size() != 2) {
      throw SafetensorsError(path + ": 'tokens' must have shape (B, L), found " + shape_string(main.shape));
    }
    input.batch = main.shape[0];
    input.length = main.shape[1];
    for (int64_t id : main.to_int64()) {
      if (id < 0 || id >= model.vocab_size) {
        throw SafetensorsError(path + ": 'tokens' holds id " + std::to_string(id) + ", outside [0, " +
                               std::to_string(model.vocab_size) + ")");
      }
      input.tokens.push_back(static_cast<int32_t>(id));
    }
  } else {
    if (main.dtype != DType::F32) {
      throw SafetensorsError(path + ": 'embeddings' must be F32, found " + dtype_name(main.dtype));
    }
    if (main.shape.size() != 3 || main.shape[2] != model.dim) {
      throw SafetensorsError(path + ": 'embeddings' must have shape (B, L, " + std::to_string(model.dim) +
                             "), found " + shape_string(main.shape));
    }
    input.batch = main.shape[0];
    input.length = main.shape[1];
    input.embeddings = main.to_float();
  }
  if (file.contains("mask")) {
    const StoredTensor& mask = file.get("mask");
    if (mask.dtype != DType::U8 && mask.dtype != DType::BOOL) {
      throw SafetensorsError(path + ": 'mask' must be U8 or BOOL, found " + dtype_name(mask.dtype));
    }
    if (mask.shape != Shape{input.batch, input.length}) {
      throw SafetensorsError(path + ": 'mask' must have shape " + shape_string({input.batch, input.length}) +
                             " like the input, found " + shape_string(mask.shape));
    }
    for (int64_t keep : mask.to_int64()) input.mask.push_back(keep != 0 ? 1 : 0);
  }
  return input;
}

}  // namespace

int command_forward(const CommandLine& line) {
  Experiment experiment = load_for(line);
  BuiltExperiment built = build_checked(experiment, false);
  const std::string weights = line.required("weights");
  const std::string input_path = line.required("input");
  const std::string output_path = line.required("output");
  const bool backward = line.flag("backward");
  using Named = std::pair<const char*, const std::string&>;
  for (const auto& [name, path] : {Named{"weights", weights}, Named{"input", input_path}}) {
    std::error_code error;
    if (std::filesystem::equivalent(output_path, path, error)) {
      throw UsageError("forward: --output " + output_path + " is the --" + name + " file; it would be overwritten");
    }
  }
  if (backward && experiment.model.vocab_size == 0) {
    throw UsageError("forward --backward needs a model with a vocabulary (model.vocab_size > 0): the loss is the "
                     "LM loss over token ids");
  }
  const Device device = resolve_backend(experiment.run.backend);
  Model& model = *built.model;
  load_weights(model, weights);
  model.to(device);
  const ModelInput input = read_model_input(input_path, experiment.model);
  spdlog::info("forward{}: input ({}, {}){}, weights {}", backward ? " and backward" : "", input.batch, input.length,
               input.mask.empty() ? "" : " with mask", weights);

  const auto start = std::chrono::steady_clock::now();
  ForwardTape tape;
  ModelOutput output = model.forward(input, ForwardOptions{}, backward ? &tape : nullptr);
  std::map<std::string, StoredTensor> tensors;
  if (backward) {
    const LossResult loss = language_model_loss(output, next_token_targets(input), true);
    model.parameters().zero_grad();
    model.backward(tape, &loss.grad_logits, nullptr, 1.0f);
    tensors["loss"] = StoredTensor::from_float(Tensor::from({}, {static_cast<float>(loss.loss)}));
    for (const auto& parameter : model.parameters().all()) {
      tensors["grad." + parameter->name] = StoredTensor::from_float(parameter->grad.to(Device::cpu));
    }
    spdlog::info("loss {:.6f} (cross-entropy {:.6f} over {} targets, aux {:.6f})", loss.loss, loss.lm_loss,
                 loss.scored, loss.aux_loss);
    if (loss.scored == 0) {
      spdlog::warn("no position has a target (L = 1, or the mask keeps no position after the first): the "
                   "cross-entropy and its gradients are 0");
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  tensors["hidden"] = StoredTensor::from_float(output.hidden.to(Device::cpu));
  if (output.logits.defined()) tensors["logits"] = StoredTensor::from_float(output.logits.to(Device::cpu));
  write_safetensors(output_path, tensors);
  spdlog::info("wrote {} ({:.3f} s, {:.0f} tokens/s)", output_path, seconds, input.batch * input.length / seconds);
  return 0;
}

int command_init(const CommandLine& line) {
  Experiment experiment = load_for(line);
  BuiltExperiment built = build_checked(experiment, false);
  const std::string output_path = line.required("output");
  built.model->initialize(experiment.run.seed);
  std::map<std::string, std::string> metadata{{"format", "pt"}, {"mamba_r1_seed", std::to_string(experiment.run.seed)}};
  write_safetensors(output_path, built.model->parameters().to_stored(), metadata);
  spdlog::info("wrote {}: {} tensors, {} parameters (seed {})", output_path, built.model->parameters().all().size(),
               built.model->parameters().element_count(), experiment.run.seed);
  return 0;
}

int command_list(const CommandLine& line) {
  if (!line.positional.empty()) throw UsageError("list takes no arguments");
  register_all();
  for (const RegistryBase* registry : all_registries()) {
    std::printf("%s:\n", registry->kind().c_str());
    for (const RegistryEntryInfo& entry : registry->entries()) {
      std::string description = entry.description;
      if (registry == &block_registry() && !block_override_keys(entry.name).empty()) {
        description += "; per block in [model.layers.i]: " + join(block_override_keys(entry.name));
      }
      std::printf("  %-18s %s\n", entry.name.c_str(), description.c_str());
    }
  }
  return 0;
}

// command_validate: experiments/validate.cpp.

}  // namespace mr1
