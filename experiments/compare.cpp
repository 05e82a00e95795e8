// Comparing run folders: their settings' differences as axes, their outcomes as a sweep's results.
#include "experiments/compare.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <numeric>
#include <set>
#include <sstream>

#include "experiments/files.h"
#include "experiments/run.h"
#include "experiments/run_report.h"
#include "registry/config.h"
#include "registry/model_config.h"

namespace mr1 {

namespace {

namespace fs = std::filesystem;

constexpr size_t kSettingColumns = 4;  // more differing settings go into a table of their own

// The run folders a path stands for: itself, or each of a sweep's runs/* (in name order, which is the
// sweep's order).
std::vector<std::string> run_folders(const std::string& path) {
  if (fs::exists(path + "/config.toml")) return {path};
  if (fs::exists(path + "/sweep.json") && fs::is_directory(path + "/runs")) {
    std::vector<std::string> runs;
    for (const fs::directory_entry& entry : fs::directory_iterator(path + "/runs")) {
      if (fs::exists(entry.path() / "config.toml")) runs.push_back(entry.path().string());
    }
    std::sort(runs.begin(), runs.end());
    if (!runs.empty()) return runs;
  }
  throw ConfigError(path + ": not a run folder (config.toml, summary.json, metrics.jsonl) nor a sweep folder " +
                    "(sweep.json, runs/)");
}

struct RecordedSettings {
  std::map<std::string, std::string> values;  // dotted key -> TOML text
  std::map<std::string, std::string> shown;   // dotted key -> as shown in tables
  bool effective = false;                     // read from effective.toml: every setting the run used
};

// Every value of a config file by its dotted key, as TOML text and as shown, [output] and [sweep] left out.
void flatten(const toml::table& table, RecordedSettings& settings) {
  for (const auto& [path, node] : flatten_toml(table)) {
    const std::string top = path.substr(0, path.find('.'));
    if (top == "output" || top == "sweep") continue;
    settings.values[path] = render_toml_value(*node);
    settings.shown[path] = show_toml_value(*node);
  }
}

// A run's settings: its effective.toml (every setting with the value used, defaults included) when it has
// one, else its config.toml (the file and its --set values; runs of earlier versions).
RecordedSettings read_settings(const std::string& folder) {
  RecordedSettings settings;
  settings.effective = fs::exists(folder + "/effective.toml");
  const ExperimentFile file = ExperimentFile::load(folder + (settings.effective ? "/effective.toml" : "/config.toml"));
  flatten(file.root(), settings);
  return settings;
}

// "A", "B", ..., "Z", "AA", "AB", ...
std::string combination_name(size_t index) {
  std::string name;
  for (size_t i = index + 1; i > 0; i = (i - 1) / 26) {
    name.insert(name.begin(), static_cast<char>('A' + (i - 1) % 26));
  }
  return name;
}

std::string status_of(const nlohmann::json& summary, const RecordedSettings& settings) {
  if (!summary.is_object()) return "unfinished";
  if (summary.contains("error")) return "failed";  // its summary.json holds the error alone
  const auto steps = number_at(summary, "/steps");
  const auto planned = settings.values.find("training.steps");
  if (steps && planned != settings.values.end() && !summary.value("stopped_early", false) &&
      *steps < std::stod(planned->second)) {
    return "interrupted";
  }
  return "done";
}

// The seconds a run spent on its work: its training, or for a forward-only run (task "forward") its timed
// passes together (NaN, shown "–", when a pass is not a number); 0 when the summary has neither (unfinished).
double work_seconds(const nlohmann::json& summary) {
  if (const auto seconds = number_at(summary, "/train_seconds")) return *seconds;
  const std::vector<double> passes = forward_pass_seconds(summary);
  return std::accumulate(passes.begin(), passes.end(), 0.0);
}

// A folder relative to `base` when both resolve, else as given.
std::string relative_to(const std::string& folder, const std::string& base) {
  std::error_code error;
  const fs::path relative = fs::relative(fs::absolute(folder), fs::absolute(base), error);
  return error || relative.empty() ? folder : relative.generic_string();
}

// The kind of block i of a run ("mamba", "moe", ...) from its recorded model.order; empty when not recorded.
std::string block_kind(const RecordedSettings& run, int64_t i) {
  const auto order = run.values.find("model.order");
  if (order == run.values.end()) return "";
  try {
    const toml::table parsed = toml::parse("order = " + order->second);
    const toml::array* kinds = parsed["order"].as_array();
    if (!kinds || kinds->empty()) return "";
    return kinds->get(static_cast<size_t>(i) % kinds->size())->value_or(std::string());
  } catch (const toml::parse_error&) {
    return "";
  }
}

// Where a run without a per-block setting took its value: model.layers.i.K from model.K, and
// model.layers.i.router.K from router.K, when block i of that run is of a kind that reads it; otherwise
// the key itself. So a block that inherits the same value as another run's explicit one does not differ.
std::string inherited_key(const RecordedSettings& run, const std::string& key) {
  const std::string layers = "model.layers.";
  if (run.values.count(key) || key.rfind(layers, 0) != 0) return key;
  const size_t dot = key.find('.', layers.size());
  if (dot == std::string::npos) return key;
  int64_t i = 0;
  try {
    i = std::stoll(key.substr(layers.size(), dot - layers.size()));
  } catch (const std::exception&) {
    return key;
  }
  const std::string rest = key.substr(dot + 1);
  const std::string kind = block_kind(run, i);
  const std::vector<std::string>& valid = block_override_keys(kind);
  const std::string first = rest.substr(0, rest.find('.'));
  if (std::find(valid.begin(), valid.end(), first) == valid.end()) return key;
  return first == "router" ? rest : "model." + rest;
}

// A run's value of a setting, as TOML text. One it lacks is "(unused)" in an effective.toml (the run did
// not read it: top_k of a switch router) and empty in a config.toml (the program's default applied).
std::string value_of(const RecordedSettings& run, const std::string& key) {
  const auto found = run.values.find(inherited_key(run, key));
  return found != run.values.end() ? found->second : run.effective ? std::string("(unused)") : std::string();
}

// The settings in which the runs differ (a key one run gives and another does not included), sorted by
// key, as axes with their values in the order first met; and per run, the index of its value on each.
void find_differing_settings(const std::vector<RecordedSettings>& settings, Comparison& comparison) {
  std::set<std::string> keys;
  for (const RecordedSettings& run : settings) {
    for (const auto& entry : run.values) keys.insert(entry.first);
  }
  comparison.values.assign(settings.size(), {});
  for (const std::string& key : keys) {
    const bool differs = std::any_of(settings.begin(), settings.end(), [&](const RecordedSettings& run) {
      return value_of(run, key) != value_of(settings.front(), key);
    });
    if (!differs) continue;
    SweepAxis axis;
    axis.key = key;
    for (size_t r = 0; r < settings.size(); ++r) {
      const std::string value = value_of(settings[r], key);
      auto at = std::find(axis.values.begin(), axis.values.end(), value);
      if (at == axis.values.end()) {
        const auto shown = settings[r].shown.find(inherited_key(settings[r], key));
        axis.values.push_back(value);
        axis.shown.push_back(shown != settings[r].shown.end() ? shown->second
                             : settings[r].effective              ? "unused"
                                                                  : "default");
        at = axis.values.end() - 1;
      }
      comparison.values[r].push_back(static_cast<size_t>(at - axis.values.begin()));
    }
    comparison.settings.push_back(std::move(axis));
  }
}

// Whether some runs differ in run.seed alone (there is something to average), which marks the seed axis
// as repeats. others: each run's values but its seed (when a seed axis exists).
struct SeedRepeats {
  size_t axis;       // the index of run.seed among the settings; settings.size() when it does not differ
  bool repeated = false;
  std::vector<std::vector<size_t>> others;
};

SeedRepeats find_seed_repeats(Comparison& comparison) {
  SeedRepeats seeds{comparison.settings.size(), false, std::vector<std::vector<size_t>>(comparison.values.size())};
  for (size_t a = 0; a < comparison.settings.size(); ++a) {
    if (comparison.settings[a].key == "run.seed") seeds.axis = a;
  }
  if (seeds.axis == comparison.settings.size()) return seeds;
  std::set<std::vector<size_t>> distinct;  // (runs alike in every setting, seed included, are not repeats)
  for (size_t r = 0; r < comparison.values.size(); ++r) {
    seeds.others[r] = comparison.values[r];
    seeds.others[r].erase(seeds.others[r].begin() + static_cast<std::ptrdiff_t>(seeds.axis));
    seeds.repeated = !distinct.insert(seeds.others[r]).second || seeds.repeated;
  }
  if (seeds.repeated) comparison.settings[seeds.axis].repeats = true;
  return seeds;
}

// The table's and charts' axes: the settings themselves when few; else one axis naming each combination
// of them (A, B, ...; with seeds repeated, each combination of the others), and the seed axis. Returns
// each run's choice over those axes.
std::vector<std::vector<size_t>> choose_axes(const SeedRepeats& seeds, Comparison& comparison) {
  if (comparison.settings.size() <= kSettingColumns) {
    comparison.axes = comparison.settings;
    return comparison.values;
  }
  const std::vector<std::vector<size_t>>& values = comparison.values;
  const std::vector<std::vector<size_t>>& keys_of_run = seeds.repeated ? seeds.others : values;
  SweepAxis combination;
  combination.key = "settings";
  std::vector<std::vector<size_t>> seen, choices(values.size());
  for (size_t r = 0; r < values.size(); ++r) {
    auto at = std::find(seen.begin(), seen.end(), keys_of_run[r]);
    if (at == seen.end()) {
      seen.push_back(keys_of_run[r]);
      combination.shown.push_back(combination_name(seen.size() - 1));
      combination.values.push_back("\"" + combination.shown.back() + "\"");
      at = seen.end() - 1;
    }
    choices[r] = {static_cast<size_t>(at - seen.begin())};
    if (seeds.repeated) choices[r].push_back(values[r][seeds.axis]);
  }
  comparison.axes.push_back(std::move(combination));
  if (seeds.repeated) comparison.axes.push_back(comparison.settings[seeds.axis]);
  return choices;
}

// Run r of the comparison, as the tables and charts take it: its choice over the axes, its label, summary,
// metrics and status, and its folder relative to `out`.
SweepResult compared_run(const std::string& folder, size_t r, const std::vector<size_t>& choice,
                         const std::vector<SweepAxis>& axes, const RecordedSettings& settings, const std::string& out) {
  SweepResult result;
  result.run.index = static_cast<int64_t>(r);
  result.run.choice = choice;
  result.run.name = fs::path(folder).filename().string();
  if (result.run.name.empty()) result.run.name = fs::path(folder).parent_path().filename().string();  // "x/"
  result.run.folder = relative_to(folder, out);
  // The legend: the differing values when they are short, else the run's folder name.
  const std::string label = sweep_label(axes, choice);
  result.run.label = axes.empty() || label.size() > 48 ? result.run.name : label;
  result.summary = read_run_summary(folder);
  result.metrics = read_run_metrics(folder);
  result.status = status_of(result.summary, settings);
  if (result.status == "failed" && result.summary["error"].is_string()) result.error = result.summary["error"];
  result.seconds = work_seconds(result.summary);
  return result;
}

}  // namespace

Comparison compare_runs(const std::vector<std::string>& paths, const std::string& out) {
  Comparison comparison;
  for (const std::string& path : paths) {
    for (const std::string& folder : run_folders(path)) comparison.folders.push_back(folder);
  }
  std::vector<RecordedSettings> settings;
  for (const std::string& folder : comparison.folders) settings.push_back(read_settings(folder));
  find_differing_settings(settings, comparison);
  const SeedRepeats seeds = find_seed_repeats(comparison);
  const std::vector<std::vector<size_t>> choices = choose_axes(seeds, comparison);
  for (size_t r = 0; r < comparison.folders.size(); ++r) {
    comparison.results.push_back(
        compared_run(comparison.folders[r], r, choices[r], comparison.axes, settings[r], out));
  }
  return comparison;
}

std::string comparison_markdown(const Comparison& comparison, const std::vector<std::string>& charts) {
  std::ostringstream out;
  out << "# Comparison of " << comparison.results.size() << " runs\n\n";
  if (comparison.settings.empty()) {
    out << "Their settings do not differ (other than in [output]).\n\n";
  } else {
    out << "Settings that differ between the runs: " << axis_keys(comparison.settings)
        << " (from each run's effective.toml, every setting with the value used; for a run without one, from "
           "its config.toml, where `default` marks a setting left to the program's default; `unused`: a "
           "setting the run did not read; a block's setting a run does not give is its [model] or [router] "
           "value).\n\n";
  }
  if (!comparison.axes.empty() && comparison.axes.front().key == "settings") {
    // One column per combination of the settings (A, B, ...), one row per setting.
    const SweepAxis& combination = comparison.axes.front();
    const size_t count = combination.values.size();
    std::vector<size_t> first_run(count, 0);  // a run of each combination, for its values
    std::vector<std::vector<std::string>> runs(count);
    for (const SweepResult& result : comparison.results) {
      const size_t c = result.run.choice.front();
      if (runs[c].empty()) first_run[c] = static_cast<size_t>(result.run.index);
      runs[c].push_back(std::to_string(result.run.index));
    }
    out << "| setting |";
    for (const std::string& name : combination.shown) out << " " << name << " |";
    out << "\n|---|";
    for (size_t c = 0; c < count; ++c) out << "---|";
    out << "\n";
    for (size_t a = 0; a < comparison.settings.size(); ++a) {
      if (comparison.settings[a].repeats) continue;  // a column of its own in the tables below
      out << "| " << comparison.settings[a].key << " |";
      for (size_t c = 0; c < count; ++c) out << " " << comparison.settings[a].shown[comparison.values[first_run[c]][a]] << " |";
      out << "\n";
    }
    out << "| (runs) |";
    for (size_t c = 0; c < count; ++c) out << " " << join(runs[c], ", ") << " |";
    out << "\n\n";
  }
  out << results_section(comparison.axes, comparison.results, "training time", "differing settings",
                         "the timed forward passes together");
  out << "\n## Runs\n\n";
  for (const SweepResult& result : comparison.results) {
    out << "* " << result.run.index << ": `" << comparison.folders[static_cast<size_t>(result.run.index)] << "`"
        << (result.status == "done" ? "" : " (" + result.status + ")") << "\n";
  }
  for (const std::string& chart : charts) out << "\n" << chart_image(chart) << "\n";
  return out.str();
}

int command_compare(const CommandLine& line) {
  if (line.positional.size() < 2 && !(line.positional.size() == 1 && fs::exists(line.positional[0] + "/sweep.json"))) {
    throw UsageError("compare needs two or more run folders (or a sweep's folder)");
  }
  std::string out = line.option("out");
  const std::string earlier = out.empty() ? std::string() : run_output_in(out);
  if (!earlier.empty()) {
    throw FileError(out + " holds a run or a sweep (" + earlier +
                    "), whose files the comparison would replace; choose another --out");
  }
  // By default a new folder runs/compare-timestamp, numbered when taken (which leaves the runs' paths
  // relative to it as they are).
  const bool new_folder = out.empty();
  if (new_folder) out = "runs/compare-" + timestamp();
  const Comparison comparison = compare_runs(line.positional, out);
  if (new_folder) {
    out = make_new_folder(out);
  } else {
    make_directories(out);
  }

  const std::vector<std::string> written =
      write_charts(out, sweep_charts(comparison.axes, comparison.results, "differing"));
  write_file_atomic(out + "/results.csv", results_csv(comparison.axes, comparison.results));
  const std::string over_seeds = results_over_seeds_csv(comparison.axes, comparison.results);  // empty without repeated seeds
  if (!over_seeds.empty()) {
    write_file_atomic(out + "/results_over_seeds.csv", over_seeds);
  } else {
    std::filesystem::remove(out + "/results_over_seeds.csv");  // one written before over other runs
  }
  write_file_atomic(out + "/results.md", comparison_markdown(comparison, written));

  spdlog::info("compared {} runs; differing settings: {}", comparison.results.size(),
               comparison.settings.empty() ? std::string("none") : axis_keys(comparison.settings));
  std::fputs(results_markdown(comparison.axes, comparison.results).c_str(), stdout);
  spdlog::info("wrote {}/results.md, results.csv and the charts", out);
  return 0;
}

}  // namespace mr1
