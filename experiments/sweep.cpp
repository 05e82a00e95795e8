// Parameter sweeps: reading [sweep], expanding it into runs, running them into one folder with
// resuming, and the comparison table and plots of the results.
#include "experiments/sweep.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "experiments/child_process.h"
#include "experiments/experiment.h"
#include "experiments/files.h"
#include "experiments/plot.h"
#include "experiments/run.h"
#include "experiments/run_report.h"
#include "experiments/trainer.h"

namespace mr1 {

// ---------------------------------------------------------------------------------------------
// Values as TOML text and as shown.

std::string show_toml_value(const toml::node& node) {
  if (auto value = node.value_exact<std::string>()) return *value;
  if (const toml::array* array = node.as_array()) {
    if (array->empty()) return "none";
    std::vector<std::string> items;
    for (const toml::node& item : *array) items.push_back(show_toml_value(item));
    return join(items, "+");
  }
  return render_toml_value(node);
}

std::string sanitize_folder_name(const std::string& text) {
  std::string name;
  for (unsigned char c : text) {
    const bool keep = std::isalnum(c) || c == '.' || c == '_' || c == '=' || c == ',' || c == '+' || c == '-';
    name += keep ? static_cast<char>(c) : '_';
  }
  if (name.size() > 100) name.resize(100);
  return name;
}

// ---------------------------------------------------------------------------------------------
// Reading [sweep] and expanding it.

namespace {

// A key found under [sweep], with where it came from.
struct FoundKey {
  std::string key;        // as written, joined with dots: "router.name"
  const toml::node* node;
  bool from_file;         // false: added by --set (TOML++ gives such nodes no source path)
  int64_t line, column;
};

void collect_sweep_keys(const toml::table& table, const std::string& prefix, std::vector<FoundKey>& found) {
  for (const auto& [name, node] : table) {
    const std::string key = prefix.empty() ? std::string(name.str()) : prefix + "." + std::string(name.str());
    if (const toml::table* inner = node.as_table()) {
      collect_sweep_keys(*inner, key, found);
      continue;
    }
    const toml::source_region& source = node.source();
    found.push_back({key, &node, source.path != nullptr, static_cast<int64_t>(source.begin.line),
                     static_cast<int64_t>(source.begin.column)});
  }
}

// File order (line, column), the keys added by --set after them (a stable sort keeps those in name order).
bool in_file_order(const FoundKey& a, const FoundKey& b) {
  if (a.from_file != b.from_file) return a.from_file;
  if (!a.from_file) return false;
  return std::make_pair(a.line, a.column) < std::make_pair(b.line, b.column);
}

// The full path a swept key stands for: seed is short for run.seed.
std::string swept_path(const std::string& key) { return key == "seed" ? "run.seed" : key; }

[[noreturn]] void fail_sweep_key(const ExperimentFile& file, const FoundKey& found, const std::string& message) {
  std::string location = file.file();
  if (found.from_file && found.line > 0) location += ":" + std::to_string(found.line);
  throw ConfigError(location + ": sweep." + found.key + ": " + message);
}

std::string last_component(const std::string& key) {
  const size_t dot = key.rfind('.');
  return dot == std::string::npos ? key : key.substr(dot + 1);
}

}  // namespace

void drop_sweep_lists(ExperimentFile& file) {
  if (toml::table* sweep = file.root()["sweep"].as_table()) sweep->clear();
}

std::vector<std::string> sweep_keys_left_unset(const ExperimentFile& file) {
  const toml::table* sweep = file.root()["sweep"].as_table();
  if (!sweep) return {};
  std::vector<FoundKey> found;
  collect_sweep_keys(*sweep, "", found);
  std::stable_sort(found.begin(), found.end(), in_file_order);
  std::vector<std::string> unset;
  for (const FoundKey& entry : found) {
    const std::string path = swept_path(entry.key);
    if (file.assignments().count(path) == 0 && std::find(unset.begin(), unset.end(), path) == unset.end()) {
      unset.push_back(path);
    }
  }
  return unset;
}

std::vector<SweepAxis> read_sweep_axes(const ExperimentFile& file) {
  const toml::node* sweep = file.root().get("sweep");
  const std::string example = "for example [sweep] \"router.name\" = [\"switch\", \"topk\"]";
  if (!sweep) throw ConfigError(file.file() + ": no [sweep] table; a sweep lists values for keys, " + example);
  if (!sweep->is_table()) throw ConfigError(file.file() + ": sweep: expected a table [sweep], found " + type_name(*sweep));
  std::vector<FoundKey> found;
  collect_sweep_keys(*sweep->as_table(), "", found);
  if (found.empty()) throw ConfigError(file.file() + ": [sweep] is empty; it lists values for keys, " + example);

  // The full path of each key; a --set entry replaces a file entry of the same path and takes its place.
  std::map<std::string, FoundKey> by_path;
  for (FoundKey& entry : found) {
    const toml::array* values = entry.node->as_array();
    if (!values) {
      fail_sweep_key(file, entry, "expected a list of values, for example [16, 32], found " + type_name(*entry.node) +
                                      " " + render_toml_value(*entry.node));
    }
    if (values->empty()) fail_sweep_key(file, entry, "expected at least one value, found an empty list");
    const std::string path = swept_path(entry.key);
    if (path.find('.') == std::string::npos) {
      fail_sweep_key(file, entry, "a swept key is a dotted path TABLE.KEY, for example \"router.name\" or "
                                  "model.d_state (or seed, short for run.seed)");
    }
    if (path.rfind("sweep.", 0) == 0) fail_sweep_key(file, entry, "the [sweep] table itself cannot be swept");
    auto [existing, inserted] = by_path.emplace(path, entry);
    if (inserted) continue;
    FoundKey& kept = existing->second;
    if (kept.from_file != entry.from_file) {
      FoundKey& from_set = kept.from_file ? entry : kept;
      const FoundKey& from_file = kept.from_file ? kept : entry;
      kept = {from_set.key, from_set.node, true, from_file.line, from_file.column};
      continue;
    }
    fail_sweep_key(file, entry, "swept twice (also as sweep." + kept.key + "); list its values once");
  }

  // In file order (in_file_order).
  std::vector<std::pair<std::string, FoundKey>> ordered(by_path.begin(), by_path.end());
  std::stable_sort(ordered.begin(), ordered.end(),
                   [](const auto& a, const auto& b) { return in_file_order(a.second, b.second); });
  std::vector<SweepAxis> axes;
  for (const auto& [path, entry] : ordered) {
    // A --set (or --seed) of a swept key would be overridden in every run: say so instead of ignoring it.
    const auto set = file.assignments().find(path);
    if (set != file.assignments().end()) {
      throw ConfigError(set->second + ": the sweep lists " + path + ", whose values replace it in " +
                        "every run; set the list instead, for example --set 'sweep.\"" + path + "\"=[...]'");
    }
    SweepAxis axis;
    axis.key = path;
    axis.repeats = path == "run.seed";
    const auto given = file.assignments().find("sweep." + entry.key);  // a --set list replaces the file's
    axis.origin = given != file.assignments().end()
                      ? given->second
                      : file.file() + (entry.line > 0 ? ":" + std::to_string(entry.line) : "") + ": sweep." + entry.key;
    for (const toml::node& value : *entry.node->as_array()) {
      axis.values.push_back(render_toml_value(value));
      axis.shown.push_back(show_toml_value(value));
    }
    axes.push_back(std::move(axis));
  }
  // Each combination is a run with its own folder: a product of lists that no machine could run is refused
  // before it is expanded.
  size_t total = 1;
  std::vector<std::string> counts;
  for (const SweepAxis& axis : axes) {
    counts.push_back(std::to_string(axis.values.size()));
    total = std::min(total * axis.values.size(), kMaxSweepRuns + 1);
  }
  if (total > kMaxSweepRuns) {
    throw ConfigError(file.file() + ": [sweep]: its lists (" + join(counts, " × ") + " values) make more than " +
                      std::to_string(kMaxSweepRuns) + " runs, the most one sweep runs; split it into smaller sweeps");
  }
  return axes;
}

std::string sweep_label(const std::vector<SweepAxis>& axes, const std::vector<size_t>& choice) {
  // The last part of each key ("name", "d_state") unless two axes share it.
  std::map<std::string, int> last_parts;
  for (const SweepAxis& axis : axes) ++last_parts[last_component(axis.key)];
  std::vector<std::string> parts;
  for (size_t a = 0; a < axes.size() && a < choice.size(); ++a) {
    const SweepAxis& axis = axes[a];
    const std::string& shown = axis.shown[choice[a]];
    const std::string short_key = last_parts[last_component(axis.key)] > 1 ? axis.key : last_component(axis.key);
    // One axis of strings (router names): the value says it all; numbers need their key.
    const bool bare = axes.size() == 1 && !axis.values[choice[a]].empty() && axis.values[choice[a]].front() == '"';
    parts.push_back(bare ? shown : short_key + "=" + shown);
  }
  return join(parts, ", ");
}

std::vector<SweepRun> expand_sweep(const std::vector<SweepAxis>& axes) {
  size_t total = 1;
  for (const SweepAxis& axis : axes) total *= axis.values.size();
  const int digits = std::max(2, static_cast<int>(std::to_string(total > 0 ? total - 1 : 0).size()));

  std::vector<SweepRun> runs;
  std::vector<size_t> choice(axes.size(), 0);
  for (size_t index = 0; index < total; ++index) {
    SweepRun run;
    run.index = static_cast<int64_t>(index);
    run.choice = choice;
    std::vector<std::string> name_parts;
    for (size_t a = 0; a < axes.size(); ++a) {
      const SweepAxis& axis = axes[a];
      run.assignments.push_back(axis.key + "=" + axis.values[choice[a]]);
      run.origins.push_back(axis.origin + ", value " + axis.shown[choice[a]]);
      name_parts.push_back(axis.key + "=" + axis.shown[choice[a]]);
    }
    std::string prefix = std::to_string(index);
    prefix.insert(0, static_cast<size_t>(std::max(0, digits - static_cast<int>(prefix.size()))), '0');
    run.name = sanitize_folder_name(prefix + "-" + join(name_parts, ","));
    run.folder = "runs/" + run.name;
    run.label = sweep_label(axes, choice);
    runs.push_back(std::move(run));
    // The last axis varies fastest, like nested loops in file order.
    for (size_t a = axes.size(); a-- > 0;) {
      if (++choice[a] < axes[a].values.size()) break;
      choice[a] = 0;
    }
  }
  return runs;
}

// ---------------------------------------------------------------------------------------------
// The comparison table.

namespace {

enum class Format { fixed, percent, grouped, seconds };

// One column of the results: where its value is in summary.json and how Markdown shows it.
struct ResultColumn {
  const char* title;    // Markdown
  const char* csv;      // CSV header
  const char* pointer;  // in summary.json; empty: the run's wall time
  Format format;
  int decimals;
};

const std::vector<ResultColumn>& result_columns() {
  static const std::vector<ResultColumn> columns{
      {"eval loss", "eval_loss", "/final/eval_loss", Format::fixed, 4},
      {"eval CE", "eval_cross_entropy", "/final/eval_cross_entropy", Format::fixed, 4},
      {"eval acc", "eval_accuracy", "/final/eval_accuracy", Format::fixed, 3},
      {"train loss", "train_loss", "/final/train_loss", Format::fixed, 4},
      {"tokens/s", "tokens_per_second", "/tokens_per_second", Format::grouped, 0},
      {"load CV", "load_cv", "/routing_overall/load_cv", Format::fixed, 3},
      {"MaxVio", "max_violation", "/routing_overall/max_violation", Format::fixed, 3},
      {"drop rate", "dropped_fraction", "/routing_overall/dropped_fraction", Format::percent, 1},
      {"parameters", "parameters", "/parameters", Format::grouped, 0},
      {"steps", "steps", "/steps", Format::fixed, 0},
      {"time (s)", "seconds", "", Format::seconds, 0},
  };
  return columns;
}

std::optional<double> column_value(const ResultColumn& column, const SweepResult& result) {
  if (column.pointer[0] == '\0') {
    return result.seconds > 0 ? std::optional<double>(result.seconds) : std::nullopt;
  }
  return number_at(result.summary, column.pointer);
}

std::string show_number(const ResultColumn& column, double value) {
  char buffer[48];
  switch (column.format) {
    case Format::grouped: return grouped_digits(value);
    case Format::percent: std::snprintf(buffer, sizeof buffer, "%.*f%%", column.decimals, 100 * value); break;
    case Format::fixed: std::snprintf(buffer, sizeof buffer, "%.*f", column.decimals, value); break;
    // Whole seconds from 10 s up; below, the digits that tell short runs (forward passes) apart.
    case Format::seconds:
      std::snprintf(buffer, sizeof buffer, value >= 10 ? "%.0f" : value >= 1 ? "%.1f" : "%#.2g", value);
      break;
  }
  return buffer;
}

std::string markdown_cell(const std::string& text) {
  std::string cell;
  for (char c : text) cell += c == '|' ? std::string("\\|") : std::string(1, c);
  return cell;
}

// Whether some runs trained (their summary has steps) and whether some ran forward passes only (task
// "forward": forward_seconds), which time forward passes and route their input without training.
struct RunKinds {
  bool trained = false, forward = false;
  bool cross_entropy = false;  // some summary has final.eval_cross_entropy (runs of earlier versions lack it)
  bool forward_only() const { return forward && !trained; }
  // What a figure means: `training`'s meaning, `forward_pass`'s when every run is forward-only, both
  // when the runs are mixed (once when they are the same).
  std::string either(const std::string& training, const std::string& forward_pass) const {
    if (forward_only() || training == forward_pass) return forward_pass;
    return forward ? training + " (forward-only runs: " + forward_pass + ")" : training;
  }
};

RunKinds run_kinds(const std::vector<SweepResult>& results) {
  RunKinds kinds;
  for (const SweepResult& result : results) {
    if (!result.summary.is_object()) continue;
    kinds.trained = kinds.trained || result.summary.contains("steps");
    kinds.forward = kinds.forward || result.summary.contains("forward_seconds");
    kinds.cross_entropy = kinds.cross_entropy || number_at(result.summary, "/final/eval_cross_entropy").has_value();
  }
  return kinds;
}

std::string csv_cell(const std::string& text) {
  if (text.find_first_of(",\"\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

// The columns of the results table: all, but for runs that are all forward-only, which have no losses,
// accuracy or steps.
std::vector<ResultColumn> shown_columns(const RunKinds& kinds) {
  std::vector<ResultColumn> columns;
  for (const ResultColumn& column : result_columns()) {
    const std::string pointer = column.pointer;
    if (kinds.forward_only() && (pointer.rfind("/final/", 0) == 0 || pointer == "/steps")) continue;
    if (!kinds.cross_entropy && pointer == "/final/eval_cross_entropy") continue;
    columns.push_back(column);
  }
  return columns;
}

// The best eval loss and eval CE (lowest) and eval accuracy (highest) among finished runs, as shown, by
// column pointer; none for a column where every finished run shows the same.
std::map<std::string, std::string> best_cells(const std::vector<ResultColumn>& columns,
                                              const std::vector<SweepResult>& results) {
  std::map<std::string, std::string> best;
  for (const ResultColumn& column : columns) {
    const std::string pointer = column.pointer;
    const bool lower_is_better = pointer == "/final/eval_loss" || pointer == "/final/eval_cross_entropy";
    if (!lower_is_better && pointer != "/final/eval_accuracy") continue;
    std::optional<double> best_value;
    std::set<std::string> shown;
    for (const SweepResult& result : results) {
      const auto value = number_at(result.summary, pointer);
      if (!value || result.status != "done") continue;
      shown.insert(show_number(column, *value));
      const bool better = lower_is_better ? *value < best_value.value_or(INFINITY)
                                          : *value > best_value.value_or(-INFINITY);
      if (better) best_value = value;
    }
    if (shown.size() >= 2) best[pointer] = show_number(column, *best_value);
  }
  return best;
}

}  // namespace

std::string results_markdown(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results) {
  const std::vector<ResultColumn> columns = shown_columns(run_kinds(results));
  const bool show_status =
      std::any_of(results.begin(), results.end(), [](const SweepResult& r) { return r.status != "done"; });
  const std::map<std::string, std::string> best = best_cells(columns, results);  // shown in bold

  std::ostringstream out;
  out << "| # |";
  for (const SweepAxis& axis : axes) out << " " << markdown_cell(axis.key) << " |";
  if (show_status) out << " status |";
  for (const ResultColumn& column : columns) out << " " << column.title << " |";
  out << "\n|--:|";
  for (size_t i = 0; i < axes.size(); ++i) out << "---|";
  if (show_status) out << "---|";
  for (size_t i = 0; i < columns.size(); ++i) out << "--:|";
  out << "\n";
  for (const SweepResult& result : results) {
    // A finished run (trained, or forward only) has its own report beside its files.
    const bool reported = (result.status == "done" || result.status == "interrupted") && result.summary.is_object() &&
                          (result.summary.contains("steps") || result.summary.contains("forward_seconds"));
    if (reported) {
      out << "| [" << result.run.index << "](<" << result.run.folder << "/report.md>) |";
    } else {
      out << "| " << result.run.index << " |";
    }
    for (size_t a = 0; a < axes.size() && a < result.run.choice.size(); ++a) {
      out << " " << markdown_cell(axes[a].shown[result.run.choice[a]]) << " |";
    }
    if (show_status) out << " " << result.status << " |";
    for (const ResultColumn& column : columns) {
      const auto value = column_value(column, result);
      std::string cell = value ? show_number(column, *value) : "–";
      const auto bold = best.find(column.pointer);
      if (value && result.status == "done" && bold != best.end() && bold->second == cell) cell = "**" + cell + "**";
      out << " " << cell << " |";
    }
    out << "\n";
  }
  return out.str();
}

namespace {

// A column's values over the finished seeds of one combination.
struct SeedStatistics {
  size_t count = 0;
  double mean = NAN, deviation = NAN, lowest = NAN;  // deviation: sample standard deviation (n − 1)
};

// One combination of the swept values other than run.seed, over its finished seeds.
struct SeedGroup {
  std::vector<std::string> shown;        // the other axes' values, as shown
  std::vector<const SweepResult*> runs;  // its finished runs
  std::vector<SeedStatistics> columns;   // per seed_columns(results) entry
};

// The columns summarised over seeds: the final losses and accuracy, tokens/s and the routing figures (eval
// CE when some run has it).
std::vector<const ResultColumn*> seed_columns(const std::vector<SweepResult>& results) {
  const bool cross_entropy = run_kinds(results).cross_entropy;
  std::vector<const ResultColumn*> columns;
  for (const ResultColumn& column : result_columns()) {
    const std::string pointer = column.pointer;
    if (!cross_entropy && pointer == "/final/eval_cross_entropy") continue;
    if (pointer.rfind("/final/", 0) == 0 || pointer.rfind("/routing_overall/", 0) == 0 ||
        pointer == "/tokens_per_second") {
      columns.push_back(&column);
    }
  }
  return columns;
}

// The axis of repeats (run.seed) when it has two or more values, else axes.size().
size_t seed_axis_index(const std::vector<SweepAxis>& axes) {
  for (size_t a = 0; a < axes.size(); ++a) {
    if (axes[a].repeats && axes[a].values.size() >= 2) return a;
  }
  return axes.size();
}

// The combinations in the order they first appear, with their statistics; empty without a seed axis.
std::vector<SeedGroup> seed_groups(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results) {
  const size_t seed = seed_axis_index(axes);
  std::vector<SeedGroup> groups;
  if (seed == axes.size()) return groups;
  std::vector<std::vector<size_t>> keys;
  for (const SweepResult& result : results) {
    std::vector<size_t> key;
    for (size_t a = 0; a < axes.size() && a < result.run.choice.size(); ++a) {
      if (a != seed) key.push_back(result.run.choice[a]);
    }
    auto found = std::find(keys.begin(), keys.end(), key);
    if (found == keys.end()) {
      keys.push_back(key);
      SeedGroup group;
      for (size_t i = 0, a = 0; a < axes.size(); ++a) {
        if (a != seed) group.shown.push_back(axes[a].shown[key[i++]]);
      }
      groups.push_back(group);
      found = keys.end() - 1;
    }
    if (result.status == "done") groups[static_cast<size_t>(found - keys.begin())].runs.push_back(&result);
  }
  for (SeedGroup& group : groups) {
    for (const ResultColumn* column : seed_columns(results)) {
      std::vector<double> values;
      for (const SweepResult* result : group.runs) {
        if (const auto value = column_value(*column, *result)) values.push_back(*value);
      }
      SeedStatistics statistics;
      statistics.count = values.size();
      if (!values.empty()) {
        statistics.mean = 0;
        for (double v : values) statistics.mean += v / static_cast<double>(values.size());
        statistics.lowest = *std::min_element(values.begin(), values.end());
      }
      if (values.size() >= 2) {
        double squares = 0;
        for (double v : values) squares += (v - statistics.mean) * (v - statistics.mean);
        statistics.deviation = std::sqrt(squares / static_cast<double>(values.size() - 1));
      }
      group.columns.push_back(statistics);
    }
  }
  return groups;
}

bool is_accuracy(const ResultColumn* column) { return std::string(column->pointer) == "/final/eval_accuracy"; }

}  // namespace

std::string results_over_seeds_markdown(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results) {
  const std::vector<SeedGroup> groups = seed_groups(axes, results);
  if (groups.empty()) return "";
  const size_t seed = seed_axis_index(axes);
  const auto columns = seed_columns(results);
  std::ostringstream out;
  out << "|";
  for (size_t a = 0; a < axes.size(); ++a) {
    if (a != seed) out << " " << markdown_cell(axes[a].key) << " |";
  }
  out << " seeds |";
  for (const ResultColumn* column : columns) out << " " << column->title << (is_accuracy(column) ? " | worst eval acc |" : " |");
  out << "\n|";
  for (size_t a = 0; a + 1 < axes.size(); ++a) out << "---|";
  out << "--:|";
  for (const ResultColumn* column : columns) out << (is_accuracy(column) ? "--:|--:|" : "--:|");
  out << "\n";
  for (const SeedGroup& group : groups) {
    out << "|";
    for (const std::string& shown : group.shown) out << " " << markdown_cell(shown) << " |";
    out << " " << group.runs.size() << " |";
    for (size_t c = 0; c < columns.size(); ++c) {
      const SeedStatistics& statistics = group.columns[c];
      // mean ± sample standard deviation over the seeds that have the value
      std::string cell = statistics.count == 0 ? "–" : show_number(*columns[c], statistics.mean);
      if (statistics.count >= 2) cell += " ± " + show_number(*columns[c], statistics.deviation);
      out << " " << cell << " |";
      if (is_accuracy(columns[c])) {
        out << " " << (statistics.count == 0 ? "–" : show_number(*columns[c], statistics.lowest)) << " |";
      }
    }
    out << "\n";
  }
  return out.str();
}

std::string results_over_seeds_csv(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results) {
  const std::vector<SeedGroup> groups = seed_groups(axes, results);
  if (groups.empty()) return "";
  const size_t seed = seed_axis_index(axes);
  const auto columns = seed_columns(results);
  std::ostringstream out;
  std::vector<std::string> header;
  for (size_t a = 0; a < axes.size(); ++a) {
    if (a != seed) header.push_back(csv_cell(axes[a].key));
  }
  header.push_back("seeds");
  for (const ResultColumn* column : columns) {
    header.push_back(std::string(column->csv) + "_mean");
    header.push_back(std::string(column->csv) + "_std");
    if (is_accuracy(column)) header.push_back(std::string(column->csv) + "_min");
  }
  out << join(header, ",") << "\n";
  const auto number = [](double value) {
    if (!std::isfinite(value)) return std::string();
    char buffer[48];
    std::snprintf(buffer, sizeof buffer, "%.8g", value);
    return std::string(buffer);
  };
  for (const SeedGroup& group : groups) {
    std::vector<std::string> row;
    for (const std::string& shown : group.shown) row.push_back(csv_cell(shown));
    row.push_back(std::to_string(group.runs.size()));
    for (size_t c = 0; c < columns.size(); ++c) {
      row.push_back(number(group.columns[c].mean));
      row.push_back(number(group.columns[c].deviation));
      if (is_accuracy(columns[c])) row.push_back(number(group.columns[c].lowest));
    }
    out << join(row, ",") << "\n";
  }
  return out.str();
}

std::string results_csv(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results) {
  std::ostringstream out;
  out << "index,name";
  for (const SweepAxis& axis : axes) out << "," << csv_cell(axis.key);
  out << ",status";
  for (const ResultColumn& column : result_columns()) out << "," << column.csv;
  out << "\n";
  for (const SweepResult& result : results) {
    out << result.run.index << "," << csv_cell(result.run.name);
    for (size_t a = 0; a < axes.size() && a < result.run.choice.size(); ++a) {
      out << "," << csv_cell(axes[a].shown[result.run.choice[a]]);
    }
    out << "," << result.status;
    for (const ResultColumn& column : result_columns()) {
      out << ",";
      if (const auto value = column_value(column, result)) {
        char buffer[48];
        std::snprintf(buffer, sizeof buffer, "%.8g", *value);
        out << buffer;
      }
    }
    out << "\n";
  }
  return out.str();
}

// ---------------------------------------------------------------------------------------------
// Plots.

std::string axis_keys(const std::vector<SweepAxis>& axes) {
  std::vector<std::string> keys;
  for (const SweepAxis& axis : axes) keys.push_back(axis.key);
  return join(keys, ", ");
}

namespace {

// The keys for a chart's subtitle, which has room for about 90 characters of them.
std::string chart_keys(const std::vector<SweepAxis>& axes) {
  const std::string keys = axis_keys(axes);
  return keys.size() <= 90 ? keys : std::to_string(axes.size()) + " keys, as in results.md";
}

// The axis of run.seed when it is swept over two or more values beside other keys, else axes.size().
size_t grouped_seed_axis(const std::vector<SweepAxis>& axes) {
  return axes.size() >= 2 ? seed_axis_index(axes) : axes.size();
}

// A run's colour and legend text. With seeds grouped (grouped_seed_axis), the seeds of one combination
// of the other values share a colour and are named by that combination; otherwise each run has its own.
std::pair<size_t, std::string> run_style(const std::vector<SweepAxis>& axes, const SweepRun& run) {
  const size_t seed = grouped_seed_axis(axes);
  if (seed == axes.size()) return {static_cast<size_t>(run.index), run.label};
  size_t colour = 0;
  std::vector<std::string> parts;
  for (size_t a = 0; a < axes.size(); ++a) {
    if (a == seed) continue;
    colour = colour * axes[a].values.size() + run.choice[a];
    const std::string& shown = axes[a].shown[run.choice[a]];
    parts.push_back(axes.size() == 2 ? shown : last_component(axes[a].key) + "=" + shown);
  }
  std::string label = join(parts, ", ");
  if (label.size() > 48) label = label.substr(0, 45) + "...";  // the table has them all
  return {colour, label};
}

// The legend text of a run's line: with seeds grouped, only the first line of each colour has one.
std::string legend_label(const std::vector<SweepAxis>& axes, const SweepRun& run, std::set<size_t>& labelled) {
  const auto [colour, label] = run_style(axes, run);
  if (grouped_seed_axis(axes) == axes.size()) return label;
  return labelled.insert(colour).second ? label : "";
}

std::string chart_subtitle(const std::vector<SweepAxis>& axes, const std::string& varied) {
  std::string subtitle = varied + ": " + chart_keys(axes);
  if (grouped_seed_axis(axes) != axes.size()) subtitle += "; one colour per combination, one line per seed";
  return subtitle;
}

// (step, value) of `key` over the metrics lines of a run that have it, in the run's colour.
LineSeries metric_series(const std::vector<SweepAxis>& axes, const SweepResult& result, const char* key) {
  LineSeries series = series_of(result.metrics, key);
  series.colour = run_style(axes, result.run).first;
  return series;
}

}  // namespace

std::string loss_curves_svg(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results,
                            const std::string& varied) {
  // The cross-entropy, without the MoE layers' aux losses (which some routers have and others lack), when
  // the metrics hold it; the loss for metrics of earlier versions.
  bool cross_entropy = false;
  for (const SweepResult& result : results) {
    for (const nlohmann::json& entry : result.metrics) cross_entropy = cross_entropy || entry.contains("train_lm_loss");
  }
  const char* name = cross_entropy ? "cross-entropy" : "loss";
  LineChart chart;
  chart.title = cross_entropy ? "Cross-entropy per run (without the MoE aux losses)" : "Loss per run";
  chart.subtitle = chart_subtitle(axes, varied);
  chart.x_label = "step";
  chart.y_label = name;
  bool any_eval = false;
  std::set<size_t> labelled;
  for (const SweepResult& result : results) {
    LineSeries train = metric_series(axes, result, cross_entropy ? "train_lm_loss" : "train_loss");
    if (!train.y.empty()) train.label = legend_label(axes, result.run, labelled);
    LineSeries eval = metric_series(axes, result, cross_entropy ? "eval_lm_loss" : "eval_loss");
    eval.dashed = true;
    any_eval = any_eval || !eval.y.empty();
    if (!train.y.empty()) chart.series.push_back(std::move(train));  // runs not started yet stay out
    if (!eval.y.empty()) chart.series.push_back(std::move(eval));
  }
  if (chart.series.empty()) return "";
  chart.log_y = spans_decades(chart);
  chart.style_keys.push_back({false, std::string("train ") + name});
  if (any_eval) chart.style_keys.push_back({true, std::string("eval ") + name});
  return line_chart_svg(chart);
}

std::string accuracy_curves_svg(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results,
                                const std::string& varied) {
  LineChart chart;
  chart.title = "Eval accuracy per run";
  chart.subtitle = chart_subtitle(axes, varied);
  chart.x_label = "step";
  chart.y_label = "eval accuracy";
  chart.y_low = 0;
  chart.y_high = 1;
  bool any = false;
  std::set<size_t> labelled;
  for (const SweepResult& result : results) {
    LineSeries series = metric_series(axes, result, "eval_accuracy");
    if (series.y.empty()) continue;
    series.label = legend_label(axes, result.run, labelled);
    any = true;
    chart.series.push_back(std::move(series));
  }
  return any ? line_chart_svg(chart) : "";
}

std::string expert_load_svg(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results,
                            const std::string& varied) {
  BarPanelGrid grid;
  grid.title = "Expert load per MoE layer";
  grid.subtitle = "share of the routed tokens per expert, " +
                  run_kinds(results).either("on the eval batches after training", "in the last timed pass") +
                  "; dashed: uniform 1/X";
  grid.y_label = "load fraction";
  for (const SweepResult& result : results) {
    const nlohmann::json& summary = result.summary;
    BarPanel panel = expert_load_panel(summary);
    if (panel.groups.empty()) continue;
    panel.title = std::to_string(result.run.index) + ": " + result.run.label;
    std::vector<std::string> figures;
    for (const auto& [pointer, name] : {std::pair<std::string, std::string>{"/routing_overall/load_cv", "CV"},
                                        std::pair<std::string, std::string>{"/routing_overall/max_violation", "MaxVio"}}) {
      if (const auto value = number_at(summary, pointer)) figures.push_back(name + " " + tick_label(*value, 0.001));
    }
    if (const auto value = number_at(summary, "/routing_overall/dropped_fraction")) {
      figures.push_back("drop " + tick_label(100 * *value, 0.1) + "%");
    }
    panel.subtitle = join(figures, " · ");
    grid.panels.push_back(std::move(panel));
  }
  if (grid.panels.empty()) return "";
  name_experts(grid);
  grid.subtitle += " · " + varied + ": " + chart_keys(axes);
  return bar_panels_svg(grid);
}

std::vector<std::pair<std::string, std::string>> sweep_charts(const std::vector<SweepAxis>& axes,
                                                              const std::vector<SweepResult>& results,
                                                              const std::string& varied) {
  return {{"loss_curves.svg", loss_curves_svg(axes, results, varied)},
          {"eval_accuracy.svg", accuracy_curves_svg(axes, results, varied)},
          {"expert_load.svg", expert_load_svg(axes, results, varied)}};
}

std::string results_section(const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results,
                            const std::string& time, const std::string& others, const std::string& forward_time) {
  const RunKinds kinds = run_kinds(results);
  std::ostringstream out;
  out << results_markdown(axes, results) << "\n";
  if (!kinds.forward_only()) {
    out << "eval loss and accuracy: the last evaluation; ";
    if (kinds.cross_entropy) {
      out << "eval CE: its cross-entropy alone, without the MoE layers' aux losses that eval loss adds (routers "
             "without an aux loss, and dense blocks, add none), so the figure to compare routers by; ";
    }
    out << "train loss: the mean over the last logging window; ";
  }
  out << "tokens/s: "
      << kinds.either("training throughput", "forward throughput")
      << "; load CV (coefficient of variation of the experts' load), MaxVio (max load / mean load − 1) and drop "
         "rate (the share of assignments dropped for capacity; expert_choice: of tokens no expert chose): the "
         "mean over MoE layers, measured "
      << kinds.either("on the eval batches at the end", "in the last timed pass")
      << "; time: " << kinds.either(time, forward_time.empty() ? time : forward_time) << ".\n";
  const std::string over_seeds = results_over_seeds_markdown(axes, results);
  if (!over_seeds.empty()) {
    out << "\n## Over seeds\n\n"
        << over_seeds << "\n"
        << "Each combination of the other " << others << " over its finished seeds: mean ± sample standard "
        << "deviation, and the lowest eval accuracy of any seed.\n";
  }
  // Why each failed run failed, so that the table's "failed" does not send the reader to the logs first.
  bool any_failed = false;
  for (const SweepResult& result : results) {
    if (result.status != "failed" || result.error.empty()) continue;
    if (!any_failed) out << "\n## Failed runs\n\n";
    any_failed = true;
    out << "* " << result.run.index << " (" << markdown_cell(result.run.name) << "): " << markdown_cell(result.error)
        << "\n";
  }
  return out.str();
}

// ---------------------------------------------------------------------------------------------
// The sweep command.

namespace {

// The run's experiment: the file with the command line's overrides, then the combination's values.
// Its [sweep] table is emptied, so that the run's config.toml describes that run alone.
Experiment load_run_experiment(const std::string& path, const std::vector<std::string>& sets, const SweepRun& run) {
  std::vector<std::string> assignments = sets;
  assignments.insert(assignments.end(), run.assignments.begin(), run.assignments.end());
  std::vector<std::string> origins(sets.size());
  origins.insert(origins.end(), run.origins.begin(), run.origins.end());
  Experiment experiment = load_experiment(path, assignments, origins);
  drop_sweep_lists(experiment.file);
  return experiment;
}

// Everything a run would check before its first step, without running: the model, the task, and the
// [training] and [optimizer] tables (which the trainer reads only once training starts).
void validate_run(const Experiment& experiment) { build_checked(experiment, true); }

// Whether a run of a resumed sweep continues from the checkpoint in its folder: one interrupted, or running
// when the sweep stopped, that saved a checkpoint. Any other run not done starts afresh.
bool continues_from_checkpoint(const SweepResult& result, const std::string& run_folder) {
  return (result.status == "interrupted" || result.status == "running") &&
         std::filesystem::exists(run_folder + "/trainer_state.json");
}

// Fills in the summary (finished or interrupted runs) and the metrics of a run from its folder.
void read_run_outputs(SweepResult& result, const std::string& folder) {
  result.summary = nullptr;
  result.metrics = nlohmann::json::array();
  if (result.status == "pending") return;
  if (result.status == "done" || result.status == "interrupted") result.summary = read_run_summary(folder);
  result.metrics = read_run_metrics(folder);
}

nlohmann::json sweep_state(const std::string& experiment_path, const std::vector<std::string>& sets,
                           const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results) {
  nlohmann::json state;
  state["experiment"] = experiment_path;
  state["overrides"] = sets;
  state["axes"] = nlohmann::json::array();
  for (const SweepAxis& axis : axes) {
    state["axes"].push_back({{"key", axis.key}, {"values", axis.values}, {"shown", axis.shown}});
  }
  state["runs"] = nlohmann::json::array();
  double total = 0;
  for (const SweepResult& result : results) {
    nlohmann::json values = nlohmann::json::object();
    for (size_t a = 0; a < axes.size(); ++a) values[axes[a].key] = axes[a].shown[result.run.choice[a]];
    state["runs"].push_back({{"index", result.run.index},
                             {"name", result.run.name},
                             {"label", result.run.label},
                             {"values", values},
                             {"assignments", result.run.assignments},
                             {"status", result.status},
                             {"seconds", result.seconds},
                             {"error", result.error}});
    total += result.seconds;
  }
  state["seconds"] = total;
  return state;
}

// sweep.json, results.md, results.csv and the plots, from what is known so far.
void write_sweep_outputs(const std::string& folder, const std::string& experiment_path,
                         const std::vector<std::string>& sets, const std::vector<SweepAxis>& axes,
                         const std::vector<SweepResult>& results) {
  write_file_atomic(folder + "/sweep.json", sweep_state(experiment_path, sets, axes, results).dump(2) + "\n");
  write_file_atomic(folder + "/results.csv", results_csv(axes, results));

  int64_t done = 0;
  double seconds = 0;
  for (const SweepResult& result : results) done += result.status == "done", seconds += result.seconds;
  std::ostringstream markdown;
  markdown << "# Sweep of " << experiment_path << "\n\n"
           << done << " of " << results.size() << " runs finished (" << format_duration(seconds)
           << " of run time); swept: " << axis_keys(axes) << ".\n\n"
           << results_section(axes, results, "wall time of the run", "swept values");
  const std::string over_seeds = results_over_seeds_csv(axes, results);  // empty without repeated seeds
  if (!over_seeds.empty()) {
    write_file_atomic(folder + "/results_over_seeds.csv", over_seeds);
  } else {
    std::filesystem::remove(folder + "/results_over_seeds.csv");  // one written before over other runs
  }
  for (const std::string& file : write_charts(folder, sweep_charts(axes, results))) {
    markdown << "\n" << chart_image(file) << "\n";
  }
  write_file_atomic(folder + "/results.md", markdown.str());
}

std::string shell_quote(const std::string& text) {
  const bool plain = std::all_of(text.begin(), text.end(), [](unsigned char c) {
    return std::isalnum(c) || std::string("/._-=+,:").find(static_cast<char>(c)) != std::string::npos;
  });
  if (plain && !text.empty()) return text;
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

// The command that continues this sweep.
std::string resume_command(const CommandLine& line, const std::string& folder) {
  std::string command = "mamba-r1 sweep " + shell_quote(line.experiment_path());
  for (const std::string& set : line.sets) command += " --set " + shell_quote(set);
  for (const char* option : {"backend", "seed", "threads", "jobs"}) {
    if (!line.option(option).empty()) command += std::string(" --") + option + " " + shell_quote(line.option(option));
  }
  return command + " --out " + shell_quote(folder) + " --resume";
}

// Wall-clock seconds since `start`.
double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// A sweep under way: its folder, its runs' results, and the bookkeeping before and after each run (the sweep's
// files and the progress line), the same for runs in this process and in processes of their own.
class SweepProgress {
 public:
  SweepProgress(std::string path, std::vector<std::string> sets, std::vector<SweepAxis> axes, std::string folder,
                std::vector<SweepResult> results)
      : path_(std::move(path)),
        sets_(std::move(sets)),
        axes_(std::move(axes)),
        folder_(std::move(folder)),
        results_(std::move(results)) {}

  const std::string& path() const { return path_; }
  const std::vector<std::string>& sets() const { return sets_; }
  std::vector<SweepResult>& results() { return results_; }
  std::string run_folder(const SweepResult& result) const { return folder_ + "/runs/" + result.run.name; }

  // sweep.json, results.md, results.csv and the plots, as they stand.
  void write() const { write_sweep_outputs(folder_, path_, sets_, axes_, results_); }

  // Before a run: false for one that finished before (done, with its summary.json), which is skipped;
  // else marks it running and sets continue_run when it picks up its checkpoint.
  bool begin_run(SweepResult& result, const Experiment& experiment, bool& continue_run) {
    const SweepRun& run = result.run;
    const std::string folder = run_folder(result);
    if (result.status == "done" && std::filesystem::exists(folder + "/summary.json")) {
      spdlog::info("sweep run {}/{}: {} finished before, skipped", run.index + 1, results_.size(), run.name);
      const std::string config = folder + "/config.toml";
      if (std::filesystem::exists(config) && read_file(config) != experiment.file.to_toml() + "\n") {
        spdlog::warn("{}: the experiment has changed since this run (its config.toml differs); it is kept as it is",
                     run.name);
      }
      return false;
    }
    continue_run = continues_from_checkpoint(result, folder);
    // A run started afresh leaves nothing of an earlier attempt (a failed run's files) behind.
    if (!continue_run) std::filesystem::remove_all(folder);
    result.status = "running";
    result.error.clear();
    write();
    spdlog::info("sweep run {}/{}: {}{}", run.index + 1, results_.size(), run.name,
                 continue_run ? " (continuing from its checkpoint)" : "");
    return true;
  }

  // A run that could not start or threw: failed, with the error.
  static void mark_failed(SweepResult& result, const std::string& error) {
    result.status = "failed";
    result.error = error;
    spdlog::error("sweep run {} failed: {}", result.run.name, error);
  }

  // After a run, whatever its status: its time and outputs into the sweep's files, and the progress.
  void end_run(SweepResult& result, double seconds) {
    result.seconds += seconds;
    read_run_outputs(result, run_folder(result));
    write();
    ++ran_;
    if (result.status == "interrupted") return;
    const double elapsed = seconds_since(start_);
    int64_t left = 0;
    for (const SweepResult& other : results_) left += other.status != "done" && other.status != "failed";
    spdlog::info("sweep: {} of {} runs finished, {} elapsed, about {} left", results_.size() - left, results_.size(),
                 format_duration(elapsed), format_duration(elapsed / ran_ * left));
  }

  // The closing lines and the results table; returns the number of runs that failed or were cut short
  // (killed after a checkpoint: interrupted).
  int64_t finish() const {
    const auto count = [&](const char* status) {
      return std::count_if(results_.begin(), results_.end(),
                           [&](const SweepResult& result) { return result.status == status; });
    };
    const int64_t failed = count("failed"), cut_short = count("interrupted");
    spdlog::info("sweep finished: {} run{} ({} failed{}) in {}; results in {}/results.md", results_.size(),
                 results_.size() == 1 ? "" : "s", failed,
                 cut_short > 0 ? ", " + std::to_string(cut_short) + " interrupted: continue with --resume" : "",
                 format_duration(seconds_since(start_)), folder_);
    spdlog::info("results:\n{}", results_markdown(axes_, results_));
    return failed + cut_short;
  }

 private:
  const std::string path_;
  const std::vector<std::string> sets_;
  const std::vector<SweepAxis> axes_;
  const std::string folder_;
  std::vector<SweepResult> results_;
  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  int64_t ran_ = 0;  // runs ended in this invocation (for the time left)
};

// Runs the sweep's runs one after another in this process. Returns whether it was interrupted (Ctrl-C): the
// run under way saves its checkpoint, and no further run starts.
bool run_in_this_process(SweepProgress& sweep) {
  for (SweepResult& result : sweep.results()) {
    Experiment experiment = load_run_experiment(sweep.path(), sweep.sets(), result.run);
    bool continue_run = false;
    if (!sweep.begin_run(result, experiment, continue_run)) continue;
    apply_thread_count(experiment.run.threads);
    const auto start = std::chrono::steady_clock::now();
    bool interrupted = false;
    try {
      interrupted = run_experiment(experiment, sweep.run_folder(result), continue_run).interrupted;
      result.status = interrupted ? "interrupted" : "done";
    } catch (const std::exception& error) {
      SweepProgress::mark_failed(result, error.what());
    }
    sweep.end_run(result, seconds_since(start));
    if (interrupted) return true;
  }
  return false;
}

// Runs the sweep's runs as child processes, `jobs` at a time: each is `mamba-r1 run FILE --set ... --out
// RUN_FOLDER [--resume]` of line.program (or this program), with `environment` set over this process's,
// writing its log to RUN_FOLDER/run.log, and the same bookkeeping as runs in this process. Returns whether
// the sweep was interrupted (Ctrl-C, or a run that was): no further run starts, and those running are
// waited for while they save their checkpoints.
bool run_processes(const CommandLine& line, int64_t jobs, const std::vector<std::string>& environment,
                   SweepProgress& sweep) {
  const std::string program = line.program.empty() ? own_executable() : line.program;
  if (program.empty()) throw std::runtime_error("--jobs: this program's path (/proc/self/exe) cannot be read");
  std::vector<SweepResult>& results = sweep.results();

  struct Running {
    SweepResult* result;
    pid_t pid;
    std::chrono::steady_clock::time_point start;
  };
  std::vector<Running> running;
  size_t next = 0;
  bool interrupted = false, passed_on = false;
  InterruptGuard guard;
  while (true) {
    while (!interrupted && static_cast<int64_t>(running.size()) < jobs && next < results.size()) {
      SweepResult& result = results[next++];
      bool continue_run = false;
      if (!sweep.begin_run(result, load_run_experiment(sweep.path(), sweep.sets(), result.run), continue_run)) {
        continue;
      }
      const std::string run_folder = sweep.run_folder(result);
      std::vector<std::string> arguments{program, "run", sweep.path()};
      std::vector<std::string> assignments = sweep.sets();  // as load_run_experiment applies them
      assignments.insert(assignments.end(), result.run.assignments.begin(), result.run.assignments.end());
      for (const std::string& assignment : assignments) arguments.insert(arguments.end(), {"--set", assignment});
      arguments.insert(arguments.end(), {"--out", run_folder});
      if (continue_run) arguments.push_back("--resume");
      const std::string level = line.option("log-level");
      if (!level.empty()) arguments.insert(arguments.end(), {"--log-level", level});
      make_directories(run_folder);
      const std::string log = run_folder + "/run.log";
      try {
        running.push_back({&result, start_child(arguments, log, environment), std::chrono::steady_clock::now()});
        spdlog::info("  its log: {}", log);
      } catch (const std::exception& error) {
        SweepProgress::mark_failed(result, error.what());
        sweep.end_run(result, 0);
      }
    }
    if (running.empty()) break;
    // A terminal's Ctrl-C reaches the runs too; a signal sent to the sweep alone is passed on to them.
    const auto pass_on_interrupt = [&] {
      if (!InterruptGuard::interrupt_received() || passed_on) return;
      for (const Running& child : running) kill(child.pid, SIGINT);
      passed_on = interrupted = true;
    };
    pass_on_interrupt();
    const ChildExit exit = wait_for_child();
    pass_on_interrupt();
    if (exit.pid < 0) continue;
    const auto found =
        std::find_if(running.begin(), running.end(), [&](const Running& child) { return child.pid == exit.pid; });
    if (found == running.end()) continue;
    SweepResult& result = *found->result;
    const auto start = found->start;
    running.erase(found);
    if (exit.code == 0) {
      result.status = "done";
    } else if (exit.code == 130) {  // interrupted: exit(130), or ended by SIGINT (128 + 2)
      result.status = "interrupted";
      interrupted = true;
    } else if (exit.code > 128 && std::filesystem::exists(sweep.run_folder(result) + "/trainer_state.json")) {
      // Killed by a signal (SIGKILL of the out-of-memory killer, say) after a checkpoint: --resume continues
      // it from there instead of starting it again; the other runs go on.
      result.status = "interrupted";
      spdlog::warn("sweep run {} ended by signal {}; its last checkpoint is kept: sweep --resume continues it",
                   result.run.name, exit.code - 128);
    } else {
      result.status = "failed";
      const std::string log = sweep.run_folder(result) + "/run.log";
      const std::string error = last_error_line(log);
      result.error = error.empty() ? "exited with status " + std::to_string(exit.code) : error;
      spdlog::error("sweep run {} failed: {} (its log: {})", result.run.name, result.error, log);
    }
    sweep.end_run(result, seconds_since(start));
  }
  return interrupted;
}

// Loads every combination and checks it as far as it can be without running; the first bad one ends the
// sweep before anything runs. With --resume (`results` read from `folder`), a run that will continue from
// its checkpoint may change only what a resumed run may (resumed_setting_changes): any other change of the
// experiment ends the sweep here too, before a run starts or a status changes.
void check_combinations(const std::string& path, const std::vector<std::string>& sets,
                        const std::vector<SweepAxis>& axes, const std::vector<SweepResult>& results,
                        const std::string& folder) {
  std::vector<std::string> described;
  for (const SweepAxis& axis : axes) described.push_back(axis.key + " (" + std::to_string(axis.values.size()) + ")");
  spdlog::info("sweep of {}: {} run{} over {}", path, results.size(), results.size() == 1 ? "" : "s",
               join(described, " × "));
  for (const SweepResult& result : results) {
    const SweepRun& run = result.run;
    Experiment experiment;
    try {
      experiment = load_run_experiment(path, sets, run);
      validate_run(experiment);
    } catch (const std::exception& error) {
      throw ConfigError("sweep run " + run.name + " (" + join(run.assignments, ", ") + "): " + error.what() +
                        "\nnothing was run");
    }
    const std::string run_folder = folder + "/runs/" + run.name;
    if (!continues_from_checkpoint(result, run_folder)) continue;
    try {
      resumed_setting_changes(run_folder, experiment);
    } catch (const std::exception& error) {
      throw ConfigError("sweep run " + run.name + ": " + error.what() + "\nnothing was run");
    }
  }
  spdlog::info("checked all {} combinations", results.size());
}

// --resume: the status, time and error of each run from the sweep.json in `folder`, and the outputs of
// its folder; the runs must be the same combinations, in the same order.
void read_previous_results(const std::string& folder, std::vector<SweepResult>& results) {
  const std::string state_path = folder + "/sweep.json";
  if (!std::filesystem::exists(state_path)) {
    throw FileError("--resume: " + state_path + " not found; is " + folder + " the folder of a sweep?");
  }
  const nlohmann::json previous = read_json_file(state_path);
  if (!previous.is_object() || !previous.contains("runs") || !previous["runs"].is_array()) {
    throw FileError(state_path + ": expected a JSON object with a list \"runs\", as a sweep writes it");
  }
  const nlohmann::json& previous_runs = previous.at("runs");
  for (size_t i = 0; i < std::max(results.size(), previous_runs.size()); ++i) {
    const std::string here = i < results.size() ? results[i].run.name : "(none)";
    std::string there = "(none)";
    try {
      if (i < previous_runs.size()) there = previous_runs[i].at("name").get<std::string>();
      if (here == there) {
        results[i].status = previous_runs[i].value("status", "pending");
        results[i].seconds = previous_runs[i].value("seconds", 0.0);
        results[i].error = previous_runs[i].value("error", "");
      }
    } catch (const nlohmann::json::exception& error) {
      throw FileError(state_path + ": run " + std::to_string(i) + " is not as a sweep writes it (" + error.what() + ")");
    }
    if (here != there) {
      throw FileError("--resume: the combinations differ from those of the sweep in " + folder + ": run " +
                      std::to_string(i) + " is " + here + " now and " + there +
                      " there; use the same file and --set options, or another --out");
    }
    read_run_outputs(results[i], folder + "/runs/" + here);
  }
}

// The environment of each run of --jobs N: runs of run.threads = 0 (every core) share the cores, as OpenMP
// threads of runs at a time that outnumber the cores spin-wait on each other (which made a small model's
// steps 10 to 70 times slower); runs of a set thread count that together outnumber the cores get a warning.
std::vector<std::string> child_environment(int64_t threads, int64_t jobs) {
  const int64_t cores = std::max(1u, std::thread::hardware_concurrency());
  if (threads == 0) {
    const int64_t share = std::max<int64_t>(1, cores / jobs);
    spdlog::info("--jobs {}: each run on {} of the {} cores (run.threads = 0); set run.threads to choose", jobs,
                 share, cores);
    return {"OMP_NUM_THREADS=" + std::to_string(share)};
  }
  if (jobs * threads > cores) {
    spdlog::warn("--jobs {}: runs of {} thread{} each, {} at a time on {} cores, will slow each other down "
                 "({} at a time would not)",
                 jobs, threads, threads == 1 ? "" : "s", jobs, cores, std::max<int64_t>(1, cores / threads));
  }
  return {};
}

}  // namespace

int command_sweep(const CommandLine& line) {
  const std::string path = line.experiment_path();
  const std::vector<std::string> sets = command_line_assignments(line);
  const bool resume = line.flag("resume");
  if (resume && line.option("out").empty()) {
    throw UsageError("--resume needs --out DIR, the folder of the sweep to continue");
  }
  const int64_t jobs = parse_integer_option(line, "jobs", 1);
  if (jobs < 1) throw UsageError("--jobs expects at least 1 (runs at a time), found 0");

  const Experiment base = load_experiment(path, sets);
  std::vector<SweepAxis> axes = read_sweep_axes(base.file);
  const std::vector<SweepRun> runs = expand_sweep(axes);
  std::vector<SweepResult> results(runs.size());
  for (size_t i = 0; i < runs.size(); ++i) results[i].run = runs[i];
  std::string folder = line.option("out");  // with --resume, the sweep's folder
  if (resume) read_previous_results(folder, results);
  check_combinations(path, sets, axes, results, folder);

  // By default a new folder [output] dir / name-sweep-timestamp, numbered when taken.
  if (folder.empty()) folder = make_new_folder(base.output.dir + "/" + base.output.name + "-sweep-" + timestamp());
  if (!resume) {
    if (std::filesystem::exists(folder + "/sweep.json")) {
      throw FileError(folder + " already holds a sweep (sweep.json); continue it with --resume, or choose another "
                      "--out");
    }
    const std::string earlier = any_output_in(folder);
    if (!earlier.empty()) {
      throw FileError(folder + " holds a run or a comparison (" + earlier + "); choose another --out for the sweep");
    }
  }
  make_directories(folder + "/runs");
  SweepProgress sweep(path, sets, std::move(axes), folder, std::move(results));
  sweep.write();
  spdlog::info("sweep folder: {}", folder);

  const bool interrupted = jobs == 1 ? run_in_this_process(sweep)
                                     : run_processes(line, jobs, child_environment(base.run.threads, jobs), sweep);
  if (interrupted) {
    spdlog::warn("sweep interrupted; finished runs are kept. Continue with:\n  {}", resume_command(line, folder));
    return 130;
  }
  return sweep.finish() > 0 ? 1 : 0;
}

}  // namespace mr1
