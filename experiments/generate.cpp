// Sampling, the generation loop, and `mamba-r1 generate` for byte-level models (the `text` task):
// prints the completion as it is produced, then the prefill and decode throughput. With --bench it
// measures decoding instead: tokens/s at batch 1 and 16, the weight bytes read per second at batch 1,
// the time per token early and late in a long generation, and prefill tokens/s.
// Shape letters: B batch (prompts), L length, V vocab_size.
#include "experiments/generate.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

#include "blocks/random.h"
#include "experiments/commands.h"
#include "experiments/experiment.h"
#include "experiments/files.h"
#include "experiments/safetensors.h"
#include "experiments/trainer.h"
#include "kernels/cuda_device.h"

namespace mr1 {

void check_sampling_settings(const SamplingSettings& settings) {
  if (!(settings.temperature >= 0) || !std::isfinite(settings.temperature)) {
    throw std::invalid_argument("sampling: temperature must be a finite number >= 0, found " +
                                std::to_string(settings.temperature));
  }
  if (settings.top_k < 0) {
    throw std::invalid_argument("sampling: top_k must be >= 0 (0 keeps every id), found " +
                                std::to_string(settings.top_k));
  }
  if (!(settings.top_p > 0 && settings.top_p <= 1)) {
    throw std::invalid_argument("sampling: top_p must be in (0, 1], found " + std::to_string(settings.top_p));
  }
}

int32_t greedy_token(const float* logits, int64_t vocab_size) {
  // std::max_element returns the first of equal maxima: the lowest id on ties.
  return static_cast<int32_t>(std::max_element(logits, logits + vocab_size) - logits);
}

std::vector<double> sampling_distribution(const float* logits, int64_t vocab_size, const SamplingSettings& settings) {
  check_sampling_settings(settings);
  if (vocab_size < 1) throw std::invalid_argument("sampling: no logits (vocab_size 0)");
  const size_t V = static_cast<size_t>(vocab_size);
  std::vector<double> p(V, 0.0);
  if (settings.greedy || settings.temperature == 0) {
    p[static_cast<size_t>(greedy_token(logits, vocab_size))] = 1.0;
    return p;
  }
  // p = softmax(logits / T), shifted by the max so that exp never overflows
  const double top = *std::max_element(logits, logits + vocab_size);
  for (size_t v = 0; v < V; ++v) p[v] = std::exp((double(logits[v]) - top) / settings.temperature);

  // ids by decreasing p, the lower id first among equal ones
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  size_t kept = settings.top_k > 0 ? std::min(V, static_cast<size_t>(settings.top_k)) : V;
  double total = 0;
  for (size_t i = 0; i < kept; ++i) total += p[order[i]];
  if (settings.top_p < 1) {
    // the nucleus: the fewest ids, most probable first, whose renormalised total reaches top_p
    double cumulative = 0;
    size_t nucleus = 0;
    while (nucleus < kept) {
      cumulative += p[order[nucleus++]] / total;
      if (cumulative >= settings.top_p) break;
    }
    kept = nucleus;
    total = 0;
    for (size_t i = 0; i < kept; ++i) total += p[order[i]];
  }
  std::vector<double> kept_p(V, 0.0);
  for (size_t i = 0; i < kept; ++i) kept_p[order[i]] = p[order[i]] / total;
  return kept_p;
}

int32_t sample_token(const float* logits, int64_t vocab_size, const SamplingSettings& settings, Random& random) {
  if (settings.greedy || settings.temperature == 0) return greedy_token(logits, vocab_size);
  const std::vector<double> p = sampling_distribution(logits, vocab_size, settings);
  // inverse CDF over the ids in order: the first id whose cumulative probability passes u
  const double u = random.uniform(0.0, 1.0);
  double cumulative = 0;
  int32_t last_kept = 0;
  for (size_t v = 0; v < p.size(); ++v) {
    if (p[v] == 0) continue;
    cumulative += p[v];
    last_kept = static_cast<int32_t>(v);
    if (u < cumulative) return last_kept;
  }
  return last_kept;  // u within rounding of 1
}

void check_generation_length(const std::vector<std::vector<int32_t>>& prompts, int64_t max_new_tokens,
                             int64_t max_seq_len) {
  int64_t longest = 0;
  for (const auto& prompt : prompts) longest = std::max(longest, static_cast<int64_t>(prompt.size()));
  // The last new token is never fed back: positions run up to len_b + max_new_tokens − 2.
  if (longest + max_new_tokens - 1 > max_seq_len) {
    throw ShapeError("generate: a prompt of " + std::to_string(longest) + " tokens and " +
                     std::to_string(max_new_tokens) + " new tokens need " + std::to_string(longest + max_new_tokens - 1) +
                     " positions, more than model.max_seq_len = " + std::to_string(max_seq_len));
  }
}

GenerationResult generate(Model& model, const std::vector<std::vector<int32_t>>& prompts,
                          const GenerationSettings& settings,
                          const std::function<void(int64_t sequence, int32_t token)>& on_token) {
  check_sampling_settings(settings.sampling);
  const ModelConfig& config = model.config();
  if (prompts.empty()) throw std::invalid_argument("generate: no prompt given");
  if (settings.max_new_tokens < 1) {
    throw std::invalid_argument("generate: max_new_tokens must be at least 1, found " +
                                std::to_string(settings.max_new_tokens));
  }
  check_generation_length(prompts, settings.max_new_tokens, config.max_seq_len);
  GenerationResult result;
  for (const auto& prompt : prompts) result.prompt_tokens += static_cast<int64_t>(prompt.size());
  const int64_t B = static_cast<int64_t>(prompts.size()), V = config.vocab_size;
  std::vector<Random> streams;
  for (int64_t b = 0; b < B; ++b) {
    streams.emplace_back(settings.seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(b));  // b = 0: the seed
  }
  result.tokens.assign(static_cast<size_t>(B), {});
  std::vector<uint8_t> finished(static_cast<size_t>(B), 0);
  std::vector<int32_t> next(static_cast<size_t>(B), 0);

  // Draws each unfinished sequence's next token from logits (B, V), in sequence order.
  auto draw = [&](const Tensor& logits_any) {
    const Tensor logits = logits_any.to(Device::cpu);
    bool all_finished = true;
    for (int64_t b = 0; b < B; ++b) {
      auto& tokens = result.tokens[static_cast<size_t>(b)];
      if (!finished[static_cast<size_t>(b)]) {
        Random& stream = streams[static_cast<size_t>(b)];
        const int32_t token = sample_token(logits.data() + b * V, V, settings.sampling, stream);
        tokens.push_back(token);
        next[static_cast<size_t>(b)] = token;
        if (on_token) on_token(b, token);
        if (token == settings.stop_token || static_cast<int64_t>(tokens.size()) >= settings.max_new_tokens) {
          finished[static_cast<size_t>(b)] = 1;
        }
      }
      all_finished = all_finished && finished[static_cast<size_t>(b)];
    }
    return all_finished;
  };
  using Clock = std::chrono::steady_clock;
  auto seconds_since = [](Clock::time_point start) {
    cuda::synchronize();
    return std::chrono::duration<double>(Clock::now() - start).count();
  };

  InferenceCache cache;
  const auto prefill_start = Clock::now();
  bool done = draw(model.prefill(prompt_batch(prompts), cache));
  result.prefill_seconds = seconds_since(prefill_start);
  while (!done) {
    const auto step_start = Clock::now();
    done = draw(model.step(next, cache));
    result.step_seconds.push_back(seconds_since(step_start));
  }
  result.decode_steps = static_cast<int64_t>(result.step_seconds.size());
  result.decode_seconds = std::accumulate(result.step_seconds.begin(), result.step_seconds.end(), 0.0);
  return result;
}

namespace {

// The option's value as a number, or fallback when it is not given.
double number_option(const CommandLine& line, const std::string& name, double fallback) {
  const std::string text = line.option(name);
  if (text.empty()) return fallback;
  try {
    size_t used = 0;
    const double value = std::stod(text, &used);
    if (used != text.size()) throw std::invalid_argument(text);
    return value;
  } catch (const std::exception&) {
    throw UsageError("--" + name + " expects a number, found '" + text + "'");
  }
}

// The option's value as an integer in [low, high], or fallback when it is not given.
int64_t integer_option(const CommandLine& line, const std::string& name, int64_t fallback, int64_t low, int64_t high) {
  const std::string text = line.option(name);
  if (text.empty()) return fallback;
  long long value = 0;
  try {
    size_t used = 0;
    value = std::stoll(text, &used);
    if (used != text.size()) throw std::invalid_argument(text);
  } catch (const std::exception&) {
    throw UsageError("--" + name + " expects an integer, found '" + text + "'");
  }
  if (value < low || value > high) {
    throw UsageError("--" + name + " expects an integer in [" + std::to_string(low) + ", " + std::to_string(high) +
                     "], found " + text);
  }
  return value;
}

std::vector<int32_t> bytes_of(const std::string& text) {
  std::vector<int32_t> ids;
  for (unsigned char byte : text) ids.push_back(byte);
  return ids;
}

// A token as text: the byte itself, or <id> for an id past the bytes.
std::string text_of(int32_t token) {
  return token < 256 ? std::string(1, static_cast<char>(token)) : "<" + std::to_string(token) + ">";
}

// --prompt TEXT (a batch of one) or --prompts-file FILE (one prompt a line; empty lines skipped).
std::vector<std::vector<int32_t>> read_prompts(const CommandLine& line) {
  const std::string text = line.option("prompt"), path = line.option("prompts-file");
  if (text.empty() && path.empty()) throw UsageError("generate needs --prompt TEXT or --prompts-file FILE");
  if (!text.empty() && !path.empty()) throw UsageError("generate takes --prompt or --prompts-file, not both");
  if (!text.empty()) return {bytes_of(text)};
  std::ifstream file(path, std::ios::binary);
  if (!file || std::filesystem::is_directory(path)) throw FileError("--prompts-file: cannot read '" + path + "'");
  std::vector<std::vector<int32_t>> prompts;
  std::string prompt;
  while (std::getline(file, prompt)) {
    if (!prompt.empty() && prompt.back() == '\r') prompt.pop_back();
    if (!prompt.empty()) prompts.push_back(bytes_of(prompt));
  }
  if (prompts.empty()) throw FileError("--prompts-file: '" + path + "' holds no prompt (one a line)");
  return prompts;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// Median seconds per step over steps [first, last) of a generation (clamped to the steps taken).
double median_step(const GenerationResult& result, int64_t first, int64_t last) {
  const int64_t steps = result.decode_steps;
  last = std::min(last, steps);
  first = std::max<int64_t>(0, std::min(first, last - 1));
  return median(std::vector<double>(result.step_seconds.begin() + first, result.step_seconds.begin() + last));
}

std::vector<std::vector<int32_t>> random_prompts(int64_t count, int64_t length, Random& random) {
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(count));
  for (auto& prompt : prompts) {
    for (int64_t l = 0; l < length; ++l) prompt.push_back(static_cast<int32_t>(random.below(256)));
  }
  return prompts;
}

// generate --bench: decode and prefill throughput of the experiment's model. Decoding one token at batch 1
// reads every weight once, so its speed is bounded by memory bandwidth: the weight bytes per second are
// reported beside it.
int decode_benchmark(Model& model, uint64_t seed, int64_t decode_length) {
  const ModelConfig& config = model.config();
  const int64_t parameters = model.parameters().element_count();
  const double weight_bytes = static_cast<double>(parameters) * sizeof(float);
  constexpr int64_t kPromptLength = 16;       // decode runs: a short prompt, then decode_length steps
  constexpr int64_t kWideBatch = 16;
  const int64_t prefill_length = std::min<int64_t>(512, config.max_seq_len);
  decode_length = std::min(decode_length, config.max_seq_len - kPromptLength);
  if (decode_length < 1) throw UsageError("generate --bench: model.max_seq_len leaves no room to decode");
  const int64_t wide_steps = std::min<int64_t>(100, decode_length);  // batch 16: 16 × 100 tokens, as room allows
  Random random(seed + 101);
  GenerationSettings greedy;
  greedy.sampling.greedy = true;
  spdlog::info("generate --bench: {} parameters ({:.1f} MB of float32 weights), prefill 1 x {}, decode batch 1 x {} "
               "and batch {} x {} tokens after {}-token prompts",
               parameters, weight_bytes / 1e6, prefill_length, decode_length, kWideBatch, wide_steps, kPromptLength);

  // prefill: median of 3 after one warm-up, one sequence of prefill_length bytes
  const auto long_prompt = random_prompts(1, prefill_length, random);
  greedy.max_new_tokens = 1;
  std::vector<double> prefill_seconds;
  for (int run = 0; run < 4; ++run) {
    const GenerationResult result = generate(model, long_prompt, greedy);
    if (run > 0) prefill_seconds.push_back(result.prefill_seconds);
  }
  const double prefill = median(prefill_seconds);

  // batch 1: decode_length steps (the first token comes from the prefill)
  greedy.max_new_tokens = decode_length + 1;
  const GenerationSettings warm_up{greedy.sampling, std::min<int64_t>(8, decode_length + 1), -1, 0};
  generate(model, random_prompts(1, kPromptLength, random), warm_up);
  spdlog::info("decoding {} tokens at batch 1 ...", decode_length);
  const GenerationResult narrow = generate(model, random_prompts(1, kPromptLength, random), greedy);
  const double narrow_rate = static_cast<double>(narrow.decode_steps) / narrow.decode_seconds;

  // batch 16, after a warm-up at that batch (its first steps allocate the wider state)
  generate(model, random_prompts(kWideBatch, kPromptLength, random), warm_up);
  greedy.max_new_tokens = wide_steps + 1;
  spdlog::info("decoding {} x {} tokens at batch {} ...", kWideBatch, wide_steps, kWideBatch);
  const GenerationResult wide = generate(model, random_prompts(kWideBatch, kPromptLength, random), greedy);
  const double wide_rate = static_cast<double>(wide.decode_steps * kWideBatch) / wide.decode_seconds;

  const int64_t late = narrow.decode_steps;
  std::printf("%-52s %14s\n", "measurement", "value");
  std::printf("%-52s %14.1f\n", ("prefill tokens/s (batch 1, " + std::to_string(prefill_length) + " tokens)").c_str(),
              prefill_length / prefill);
  std::printf("%-52s %14.2f\n", "decode tokens/s, batch 1", narrow_rate);
  std::printf("%-52s %14.2f\n", "weight GB/s read at batch 1", weight_bytes * narrow_rate / 1e9);
  std::printf("%-52s %14.2f\n", ("decode tokens/s, batch " + std::to_string(kWideBatch)).c_str(), wide_rate);
  if (late >= 110) {
    std::printf("%-52s %14.2f\n", "ms per token at 100 generated (median 90-110)", 1e3 * median_step(narrow, 89, 110));
  }
  std::printf("%-52s %14.2f\n",
              ("ms per token at " + std::to_string(late) + " generated (median of last 20)").c_str(),
              1e3 * median_step(narrow, late - 20, late));
  std::printf("%-52s %14.2f\n", ("ms per step at batch " + std::to_string(kWideBatch) + " (median)").c_str(),
              1e3 * median_step(wide, 0, wide.decode_steps));
  return 0;
}

// The sampling options of the command line, checked: --greedy, or --temperature, --top-k and --top-p.
GenerationSettings read_generation_settings(const CommandLine& line, uint64_t seed) {
  constexpr int64_t kNoLimit = std::numeric_limits<int64_t>::max();
  GenerationSettings settings;
  settings.sampling.greedy = line.flag("greedy");
  for (const char* name : {"temperature", "top-k", "top-p"}) {
    if (settings.sampling.greedy && !line.option(name).empty()) {
      throw UsageError(std::string("--greedy takes the most likely byte; it does not combine with --") + name);
    }
  }
  settings.sampling.temperature = number_option(line, "temperature", 1.0);
  settings.sampling.top_k = integer_option(line, "top-k", 0, 0, kNoLimit);
  settings.sampling.top_p = number_option(line, "top-p", 1.0);
  settings.max_new_tokens = integer_option(line, "max-new-tokens", 256, 1, kNoLimit);
  settings.stop_token = static_cast<int32_t>(integer_option(line, "stop-byte", -1, -1, 255));
  settings.seed = seed;
  try {
    check_sampling_settings(settings.sampling);
  } catch (const std::invalid_argument& error) {
    throw UsageError(error.what());
  }
  return settings;
}

}  // namespace

int command_generate(const CommandLine& line) {
  Experiment experiment = load_experiment(line.experiment_path(), command_line_assignments(line));
  apply_thread_count(experiment.run.threads);
  const uint64_t seed = experiment.run.seed;  // --seed, else [run] seed
  if (experiment.model.vocab_size < 256) {
    throw UsageError("generate works on byte-level models (the text task): needs model.vocab_size >= 256, found " +
                     std::to_string(experiment.model.vocab_size));
  }
  const bool bench = line.flag("bench");
  if (bench) {  // its prompts are its own, and it decodes greedily
    for (const char* name : {"prompt", "prompts-file", "temperature", "top-k", "top-p", "stop-byte"}) {
      if (!line.option(name).empty()) throw UsageError(std::string("generate --bench does not take --") + name);
    }
    if (line.flag("greedy")) throw UsageError("generate --bench does not take --greedy");
  }
  // The command line and the prompts are checked before the model is built and loaded.
  GenerationSettings settings;
  std::vector<std::vector<int32_t>> prompts;
  if (!bench) {
    settings = read_generation_settings(line, seed);
    prompts = read_prompts(line);
    check_generation_length(prompts, settings.max_new_tokens, experiment.model.max_seq_len);
  }
  BuiltExperiment built = build_checked(experiment, false);
  Model& model = *built.model;
  const std::string weights = bench ? line.option("weights") : line.required("weights");
  if (weights.empty()) {
    spdlog::info("no --weights: random weights from seed {} (decoding speed does not depend on their values)", seed);
    model.initialize(seed);
  } else {
    load_weights(model, weights);  // as forward reads them: a tied checkpoint may hold lm_head.weight
  }
  model.to(resolve_backend(experiment.run.backend));
  if (bench) {
    return decode_benchmark(model, seed,
                            integer_option(line, "max-new-tokens", 2000, 1, std::numeric_limits<int64_t>::max()));
  }

  const int64_t B = static_cast<int64_t>(prompts.size());
  if (settings.sampling.greedy) {
    spdlog::info("generate: {} prompt{}, up to {} new bytes, greedy", B, B == 1 ? "" : "s", settings.max_new_tokens);
  } else {
    spdlog::info("generate: {} prompt{}, up to {} new bytes, temperature {}, top-k {}, top-p {}, seed {}", B,
                 B == 1 ? "" : "s", settings.max_new_tokens, settings.sampling.temperature, settings.sampling.top_k,
                 settings.sampling.top_p, seed);
  }
  // One prompt: its completion streams out byte by byte. Several: each completion once all are done.
  const GenerationResult result = generate(model, prompts, settings, [&](int64_t, int32_t token) {
    if (B != 1) return;
    const std::string text = text_of(token);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  });
  if (B == 1) {
    std::fputc('\n', stdout);
  } else {
    for (int64_t b = 0; b < B; ++b) {
      std::string text = "--- completion " + std::to_string(b) + " ---\n";
      for (int32_t token : result.tokens[static_cast<size_t>(b)]) text += text_of(token);
      text += "\n";
      std::fwrite(text.data(), 1, text.size(), stdout);
    }
  }
  std::fflush(stdout);
  // The tokens the steps drew (each sequence's first comes from the prefill); a sequence that stopped is
  // stepped on with the batch but draws no more.
  int64_t decoded = 0;
  for (const auto& tokens : result.tokens) decoded += static_cast<int64_t>(tokens.size()) - 1;
  spdlog::info("prefill: {} tokens in {:.3f} s, {:.1f} tokens/s", result.prompt_tokens, result.prefill_seconds,
               result.prompt_tokens / result.prefill_seconds);
  if (result.decode_steps > 0) {
    spdlog::info("decode: {} steps at batch {}: {} new tokens in {:.3f} s, {:.1f} tokens/s", result.decode_steps, B,
                 decoded, result.decode_seconds, decoded / result.decode_seconds);
  }
  return 0;
}

}  // namespace mr1
