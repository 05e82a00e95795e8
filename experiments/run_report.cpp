// report.md and the charts of one training run, from the files the run wrote.
#include "experiments/run_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "experiments/files.h"
#include "registry/config.h"

namespace mr1 {

nlohmann::json read_json_lines(const std::string& path) {
  nlohmann::json lines = nlohmann::json::array();
  std::ifstream in(path);
  std::string text;
  while (std::getline(in, text)) {
    if (text.empty()) continue;
    try {
      lines.push_back(nlohmann::json::parse(text));
    } catch (const nlohmann::json::exception&) {
      break;  // a line cut by a crash: keep what came before
    }
  }
  return lines;
}

namespace {

std::optional<double> finite_number(const nlohmann::json& value) {
  if (!value.is_number()) return std::nullopt;  // NaN is written to JSON as null
  const double number = value.get<double>();
  return std::isfinite(number) ? std::optional<double>(number) : std::nullopt;
}

}  // namespace

std::optional<double> number_at(const nlohmann::json& json, const std::string& pointer) {
  if (!json.is_object()) return std::nullopt;
  const nlohmann::json::json_pointer path(pointer);
  if (!json.contains(path)) return std::nullopt;
  return finite_number(json.at(path));
}

std::string grouped_digits(double value) {
  std::string digits = std::to_string(static_cast<long long>(std::llround(std::abs(value))));
  for (int at = static_cast<int>(digits.size()) - 3; at > 0; at -= 3) digits.insert(static_cast<size_t>(at), ",");
  return (std::llround(value) < 0 ? "-" : "") + digits;
}

std::string format_duration(double seconds) {
  const int64_t total = static_cast<int64_t>(std::llround(std::max(0.0, seconds)));
  if (total >= 3600) return fmt::format("{}h{:02}m{:02}s", total / 3600, total / 60 % 60, total % 60);
  if (total >= 60) return fmt::format("{}m{:02}s", total / 60, total % 60);
  return fmt::format("{}s", total);
}

BarPanel expert_load_panel(const nlohmann::json& summary) {
  BarPanel panel;
  if (!summary.is_object() || !summary.contains("routing") || !summary["routing"].is_array()) return panel;
  size_t experts = 0;
  bool same_experts = true;  // per-block num_experts may differ: then no single uniform line
  for (const nlohmann::json& layer : summary["routing"]) {
    if (!layer.contains("load") || !layer["load"].is_array()) continue;
    panel.groups.push_back("block " + std::to_string(layer.value("layer", 0)));
    panel.values.push_back(layer["load"].get<std::vector<double>>());
    same_experts = same_experts && (experts == 0 || experts == panel.values.back().size());
    experts = std::max(experts, panel.values.back().size());
  }
  if (same_experts && experts > 0) {
    panel.reference = 1.0 / static_cast<double>(experts);
    panel.reference_label = "1/" + std::to_string(experts);
  }
  return panel;
}

void name_experts(BarPanelGrid& grid) {
  size_t experts = 0;
  for (const BarPanel& panel : grid.panels) {
    for (const auto& values : panel.values) experts = std::max(experts, values.size());
  }
  grid.bar_names.clear();
  for (size_t j = 0; j < experts; ++j) grid.bar_names.push_back("expert " + std::to_string(j));
}

namespace {

// The finite number under `key` of a JSON object, or nothing (number_at for one key, without parsing a
// pointer: the charts read every metrics line).
std::optional<double> number_in(const nlohmann::json& object, const char* key) {
  if (!object.is_object()) return std::nullopt;
  const auto found = object.find(key);
  return found == object.end() ? std::nullopt : finite_number(*found);
}

}  // namespace

LineSeries series_of(const nlohmann::json& metrics, const char* key) {
  LineSeries series;
  if (!metrics.is_array()) return series;
  for (const nlohmann::json& entry : metrics) {
    const auto step = number_in(entry, "step");
    const auto value = number_in(entry, key);
    if (!step || !value) continue;
    series.x.push_back(*step);
    series.y.push_back(*value);
  }
  return series;
}

namespace {

// Per MoE layer, in the order first met: its block number and its (step, load CV) and (step, drop rate)
// series, in one pass over the metrics lines.
struct LayerSeries {
  int64_t block;
  LineSeries cv, dropped;
};

std::vector<LayerSeries> layer_series(const nlohmann::json& metrics) {
  std::vector<LayerSeries> layers;
  if (!metrics.is_array()) return layers;
  for (const nlohmann::json& entry : metrics) {
    const auto step = number_in(entry, "step");
    const auto routing = entry.find("routing");
    if (!step || routing == entry.end() || !routing->is_array()) continue;
    for (const nlohmann::json& layer : *routing) {
      const int64_t block = layer.value("layer", int64_t{-1});
      auto found = std::find_if(layers.begin(), layers.end(), [&](const LayerSeries& l) { return l.block == block; });
      if (found == layers.end()) found = layers.insert(layers.end(), LayerSeries{block, {}, {}});
      for (auto [series, key] : {std::pair<LineSeries*, const char*>{&found->cv, "load_cv"},
                                 {&found->dropped, "dropped_fraction"}}) {
        if (const auto value = number_in(layer, key)) {
          series->x.push_back(*step);
          series->y.push_back(*value);
        }
      }
    }
  }
  return layers;
}

// A train series (solid) and its eval series (dashed, the same colour), each with its style key, when
// it has points.
void add_train_and_eval(LineChart& chart, LineSeries train, LineSeries eval, const std::string& train_key,
                        const std::string& eval_key) {
  eval.dashed = true;
  for (auto [series, key] : {std::pair<LineSeries*, const std::string*>{&train, &train_key}, {&eval, &eval_key}}) {
    if (series->y.empty()) continue;
    chart.style_keys.push_back({series->dashed, *key});
    chart.series.push_back(std::move(*series));
  }
}

}  // namespace

std::string chart_image(const std::string& file) {
  return "![" + file.substr(0, file.rfind('.')) + "](" + file + ")";
}

namespace {

std::string fixed(double value, int decimals) { return fmt::format("{:.{}f}", value, decimals); }

// A figure of summary.json, or "–".
std::string figure(const nlohmann::json& json, const std::string& pointer, int decimals) {
  const auto value = number_at(json, pointer);
  return value ? fixed(*value, decimals) : "–";
}

// "Resumed at step N with `training.steps 800 -> 1600`." for each --resume of the run (the schedule
// follows a changed training.steps from there on).
void write_resumes(std::ostream& out, const nlohmann::json& summary) {
  if (!summary.is_object() || !summary.contains("resumes") || !summary["resumes"].is_array()) return;
  for (const nlohmann::json& resume : summary["resumes"]) {
    std::vector<std::string> changed;
    if (resume.contains("changed") && resume["changed"].is_array()) {
      for (const nlohmann::json& change : resume["changed"]) {
        if (change.is_string()) changed.push_back("`" + change.get<std::string>() + "`");
      }
    }
    const auto step = number_at(resume, "/step");
    out << "Resumed at step " << (step ? grouped_digits(*step) : "?")
        << (changed.empty() ? std::string(" with the same settings") : " with " + join(changed, ", ")) << ".\n";
  }
  if (!summary["resumes"].empty()) out << "\n";
}

std::string percent(const nlohmann::json& json, const std::string& pointer) {
  const auto value = number_at(json, pointer);
  return value ? fixed(100 * *value, 1) + "%" : "–";
}

}  // namespace

std::string run_loss_svg(const nlohmann::json& metrics, const std::string& title) {
  LineChart chart;
  chart.title = title;
  chart.x_label = "step";
  chart.y_label = "loss";
  LineSeries train = series_of(metrics, "train_loss"), eval = series_of(metrics, "eval_loss");
  LineSeries train_entropy = series_of(metrics, "train_lm_loss"), eval_entropy = series_of(metrics, "eval_lm_loss");
  // Without aux losses (no MoE layer, or coefficients of 0) the loss is the cross-entropy: one pair of lines.
  const bool aux = (!train_entropy.y.empty() && train_entropy.y != train.y) ||
                   (!eval_entropy.y.empty() && eval_entropy.y != eval.y);
  if (!aux) {
    chart.subtitle = "train loss: the mean over each logging window; eval loss: on the eval batches";
    add_train_and_eval(chart, std::move(train), std::move(eval), "train loss", "eval loss");
  } else {
    chart.subtitle = "loss = cross-entropy + the MoE aux losses; train: the mean over each logging window; eval: "
                     "on the eval batches";
    train.label = "loss";
    train_entropy.label = "cross-entropy";
    train_entropy.colour = eval_entropy.colour = 1;
    add_train_and_eval(chart, std::move(train), std::move(eval), "train", "eval");
    const size_t keys = chart.style_keys.size();
    add_train_and_eval(chart, std::move(train_entropy), std::move(eval_entropy), "train", "eval");
    chart.style_keys.resize(keys);  // the same two line styles
  }
  chart.log_y = spans_decades(chart);
  return line_chart_svg(chart);
}

std::string run_accuracy_svg(const nlohmann::json& metrics, const std::string& title) {
  LineSeries train = series_of(metrics, "train_accuracy");
  LineSeries eval = series_of(metrics, "eval_accuracy");
  if (train.y.empty() && eval.y.empty()) return "";
  LineChart chart;
  chart.title = title;
  chart.subtitle = "next-token accuracy on the positions the task scores";
  chart.x_label = "step";
  chart.y_label = "accuracy";
  chart.y_low = 0;
  chart.y_high = 1;
  add_train_and_eval(chart, std::move(train), std::move(eval), "train accuracy (each logging window)",
                     "eval accuracy");
  return line_chart_svg(chart);
}

std::string run_routing_svg(const nlohmann::json& metrics, const std::string& title) {
  std::vector<LayerSeries> layers = layer_series(metrics);
  if (layers.empty()) return "";
  LineChart chart;
  chart.title = title;
  chart.subtitle = "per MoE layer over each logging window: load CV (coefficient of variation of the experts' "
                   "load) and drop rate";
  chart.x_label = "step";
  chart.y_label = "load CV, drop rate";
  bool any_dropped = false;
  for (size_t i = 0; i < layers.size(); ++i) {
    LineSeries& cv = layers[i].cv;
    LineSeries& dropped = layers[i].dropped;
    cv.label = "block " + std::to_string(layers[i].block);
    cv.colour = dropped.colour = i;
    dropped.dashed = true;
    // A router that never drops (no capacity) would draw a flat line at 0 per layer: left out.
    const bool drops = std::any_of(dropped.y.begin(), dropped.y.end(), [](double y) { return y > 0; });
    any_dropped = any_dropped || drops;
    chart.series.push_back(std::move(cv));
    if (drops) chart.series.push_back(std::move(dropped));
  }
  chart.style_keys.push_back({false, "load CV"});
  if (any_dropped) chart.style_keys.push_back({true, "drop rate (dropped for capacity)"});
  return line_chart_svg(chart);
}

std::string run_expert_load_svg(const nlohmann::json& summary, const std::string& title, const std::string& measured_on) {
  BarPanel panel = expert_load_panel(summary);
  if (panel.groups.empty()) return "";
  const size_t groups = panel.groups.size();
  panel.title = "load per expert";
  panel.subtitle = "mean over layers: CV " + figure(summary, "/routing_overall/load_cv", 3) + " · MaxVio " +
                   figure(summary, "/routing_overall/max_violation", 3) + " · drop " +
                   percent(summary, "/routing_overall/dropped_fraction");
  BarPanelGrid grid;
  grid.title = title;
  grid.subtitle = "share of the routed tokens per expert, " + measured_on;
  grid.y_label = "load fraction";
  grid.columns = 1;
  grid.panels.push_back(std::move(panel));
  name_experts(grid);
  grid.panel_width = std::max(300, static_cast<int>(groups * (grid.bar_names.size() * 18 + 40)));
  return bar_panels_svg(grid);
}

namespace {

// A report's head: the run's name, its setup in one line, the task, and links to its settings (and to
// metrics.jsonl when the run logged one).
void write_report_head(std::ostringstream& out, const std::string& name, const nlohmann::json& summary,
                       bool metrics) {
  out << "# " << name << "\n\n";
  const auto text = [&](const char* key) { return summary.is_object() ? summary.value(key, std::string()) : ""; };
  std::vector<std::string> setup;
  for (const char* key : {"experiment", "blocks"}) {
    if (!text(key).empty()) setup.push_back(text(key));
  }
  if (const auto parameters = number_at(summary, "/parameters")) {
    setup.push_back(grouped_digits(*parameters) + " parameters");
  }
  if (!text("backend").empty()) setup.push_back("backend " + text("backend"));
  out << join(setup, " · ") << "  \n";
  if (!text("task").empty()) out << "task: " << text("task") << "  \n";
  out << "settings: [config.toml](config.toml) (the experiment file with its --set values), "
         "[effective.toml](effective.toml) (every setting with the value used)";
  if (metrics) out << "; per logging window: [metrics.jsonl](metrics.jsonl)";
  out << "\n";
  // What the log warned about the model (expert_choice's look at later tokens): it bears on every figure below.
  if (summary.is_object() && summary.contains("caveats") && summary["caveats"].is_array()) {
    for (const nlohmann::json& caveat : summary["caveats"]) {
      if (caveat.is_string()) out << "\n**Caveat:** " << caveat.get<std::string>() << "\n";
    }
  }
}

// The table of summary["routing"], one row per MoE layer and the mean, under `heading`; nothing when the
// model has no MoE layer.
void write_routing_section(std::ostringstream& out, const nlohmann::json& summary, const std::string& heading) {
  if (!summary.is_object() || !summary.contains("routing") || !summary["routing"].is_array()) return;
  out << "\n## " << heading << "\n\n"
      << "| block | experts | load CV | MaxVio | drop rate | entropy | aux loss | z loss |\n"
      << "|---|---|---|---|---|---|---|---|\n";
  const auto row = [&](const std::string& block, const std::string& experts, const nlohmann::json& figures) {
    out << "| " << block << " | " << experts << " | " << figure(figures, "/load_cv", 3) << " | "
        << figure(figures, "/max_violation", 3) << " | " << percent(figures, "/dropped_fraction") << " | "
        << figure(figures, "/entropy", 3) << " | " << figure(figures, "/aux_loss", 4) << " | "
        << figure(figures, "/z_loss", 4) << " |\n";
  };
  for (const nlohmann::json& layer : summary["routing"]) {
    const size_t experts = layer.contains("load") && layer["load"].is_array() ? layer["load"].size() : 0;
    row(std::to_string(layer.value("layer", int64_t{-1})), std::to_string(experts), layer);
  }
  if (summary.contains("routing_overall")) row("mean", "", summary["routing_overall"]);
  out << "\nload CV: coefficient of variation of the experts' load; MaxVio: max load / mean load − 1; drop "
         "rate: the share of assignments dropped for capacity (expert_choice: of tokens no expert chose); "
         "entropy: the mean per token of the entropy of the router's probabilities over log(experts) (1: "
         "uniform; hash and random have no probabilities and show 0); aux loss: 0 for routers without one "
         "(hash, random, and expert_choice and aux_free unless router.aux_loss_coef is given).\n";
}

// The charts, named by their files, as images, one line each.
void write_chart_links(std::ostringstream& out, const std::vector<std::string>& charts) {
  if (!charts.empty()) out << "\n";
  for (const std::string& chart : charts) out << chart_image(chart) << "\n";
}

}  // namespace

std::string run_report_markdown(const std::string& name, const nlohmann::json& summary,
                                const nlohmann::json& metrics, bool interrupted,
                                const std::vector<std::string>& charts) {
  std::ostringstream out;
  write_report_head(out, name, summary, true);
  if (summary.is_object() && summary.contains("error") && summary["error"].is_string()) {
    out << "\n**The run failed:** " << summary["error"].get<std::string>() << "\n\n"
        << "The charts show the logging windows before the failure ([metrics.jsonl](metrics.jsonl)).\n";
    write_chart_links(out, charts);
    return out.str();
  }

  const auto steps = number_at(summary, "/steps");
  const auto seconds = number_at(summary, "/train_seconds");
  const auto speed = number_at(summary, "/tokens_per_second");
  out << "\n" << (steps ? grouped_digits(*steps) : "?") << " steps";
  if (seconds) out << " in " << format_duration(*seconds);
  if (speed) out << " (" << grouped_digits(*speed) << " tokens/s)";
  if (interrupted) {
    out << "; interrupted: continue with `--resume`";
  } else if (summary.is_object() && summary.value("stopped_early", false)) {
    out << "; stopped early: eval accuracy reached training.stop_at_eval_accuracy";
  }
  out << ".\n\n";
  write_resumes(out, summary);

  // Train accuracy is not in summary.json: the last logging window's, from the metrics lines.
  std::string train_accuracy = "–";
  const LineSeries accuracy = series_of(metrics, "train_accuracy");
  if (!accuracy.y.empty()) train_accuracy = fixed(accuracy.y.back(), 3);
  out << "| | loss | accuracy |\n|---|---|---|\n"
      << "| train (last logging window) | " << figure(summary, "/final/train_loss", 4) << " | " << train_accuracy
      << " |\n"
      << "| eval (last evaluation) | " << figure(summary, "/final/eval_loss", 4) << " | "
      << figure(summary, "/final/eval_accuracy", 3) << " |\n";
  // The losses include the MoE layers' aux losses; the cross-entropy alone compares across routers.
  if (number_at(summary, "/final/eval_cross_entropy") && number_at(summary, "/routing_overall/aux_loss")) {
    out << "| eval cross-entropy alone (without the aux losses) | "
        << figure(summary, "/final/eval_cross_entropy", 4) << " | |\n";
  }

  write_routing_section(out, summary, "Routing at the end (eval batches)");
  write_chart_links(out, charts);
  return out.str();
}

std::vector<double> forward_pass_seconds(const nlohmann::json& summary) {
  std::vector<double> passes;
  if (summary.is_object() && summary.contains("forward_seconds_all") && summary["forward_seconds_all"].is_array()) {
    for (const nlohmann::json& seconds : summary["forward_seconds_all"]) {
      passes.push_back(seconds.is_number() ? seconds.get<double>() : NAN);
    }
  }
  return passes;
}

std::string forward_report_markdown(const std::string& name, const nlohmann::json& summary,
                                    const std::vector<std::string>& charts) {
  std::ostringstream out;
  write_report_head(out, name, summary, false);

  const std::vector<double> passes = forward_pass_seconds(summary);
  const auto tokens = number_at(summary, "/tokens");
  const auto warmup = number_at(summary, "/warmup_passes");
  out << "\nForward passes only (no training): " << passes.size() << " timed";
  if (warmup) out << " after " << grouped_digits(*warmup) << " warm-up";
  if (tokens) out << ", " << grouped_digits(*tokens) << " tokens each";
  out << ".\n\n| pass | seconds | tokens/s |\n|---|---|---|\n";
  const auto row = [&](const std::string& pass, std::optional<double> seconds) {
    const bool timed = seconds && std::isfinite(*seconds) && *seconds > 0;
    out << "| " << pass << " | " << (timed ? fixed(*seconds, 4) : "–") << " | "
        << (timed && tokens ? grouped_digits(*tokens / *seconds) : "–") << " |\n";
  };
  row("mean", number_at(summary, "/forward_seconds"));
  row("best", number_at(summary, "/forward_seconds_best"));
  // Each pass, when they fit on a screen; else the slowest alone.
  constexpr size_t kPassRows = 20;
  if (passes.size() <= kPassRows) {
    for (size_t i = 0; i < passes.size(); ++i) row(std::to_string(i + 1), passes[i]);
  } else {
    row("slowest", *std::max_element(passes.begin(), passes.end()));
  }

  std::string shape;
  if (summary.is_object() && summary.contains("output_shape") && summary["output_shape"].is_array()) {
    std::vector<std::string> sizes;
    for (const nlohmann::json& size : summary["output_shape"]) sizes.push_back(size.dump());
    shape = " (" + join(sizes) + ")";
  }
  out << "\nOutput" << shape << " after the final norm: mean " << figure(summary, "/output_mean", 4) << ", std "
      << figure(summary, "/output_std", 4) << "; aux and z losses of the MoE layers " << figure(summary, "/aux_loss", 4)
      << ".\n";

  write_routing_section(out, summary, "Routing of the last timed pass");
  write_chart_links(out, charts);
  return out.str();
}

std::vector<std::string> write_charts(const std::string& folder,
                                      const std::vector<std::pair<std::string, std::string>>& charts) {
  std::vector<std::string> written;
  for (const auto& [file, svg] : charts) {
    if (svg.empty()) {
      std::filesystem::remove(folder + "/" + file);
      continue;
    }
    write_file_atomic(folder + "/" + file, svg);
    written.push_back(file);
  }
  return written;
}

nlohmann::json read_run_summary(const std::string& folder) {
  const std::string path = folder + "/summary.json";
  if (!std::filesystem::exists(path)) return nullptr;
  nlohmann::json summary = read_json_file(path);
  if (!summary.is_object()) throw FileError(path + ": expected a JSON object, as a run writes it");
  return summary;
}

nlohmann::json read_run_metrics(const std::string& folder) {
  const std::string path = folder + "/metrics.jsonl";
  return std::filesystem::exists(path) ? read_json_lines(path) : nlohmann::json::array();
}

namespace {

std::string folder_name(const std::string& folder) {
  std::filesystem::path path(folder);
  if (!path.has_filename()) path = path.parent_path();  // "runs/x/"
  return path.filename().string();
}

std::vector<std::pair<std::string, std::string>> metrics_charts(const nlohmann::json& metrics,
                                                                const std::string& name) {
  return {{"loss.svg", run_loss_svg(metrics, name + ": loss")},
          {"accuracy.svg", run_accuracy_svg(metrics, name + ": accuracy")},
          {"routing.svg", run_routing_svg(metrics, name + ": routing during training")}};
}

}  // namespace

void write_progress_charts(const std::string& folder) {
  write_charts(folder, metrics_charts(read_run_metrics(folder), folder_name(folder)));
}

void write_run_report(const std::string& folder, bool interrupted) {
  const nlohmann::json summary = read_run_summary(folder);  // written just before
  const std::string name = folder_name(folder);
  if (summary.contains("forward_seconds")) {
    const std::vector<std::string> written = write_charts(
        folder, {{"expert_load.svg", run_expert_load_svg(summary, name + ": expert load", "in the last timed pass")}});
    write_file_atomic(folder + "/report.md", forward_report_markdown(name, summary, written));
    return;
  }
  const nlohmann::json metrics = read_run_metrics(folder);
  std::vector<std::pair<std::string, std::string>> charts = metrics_charts(metrics, name);
  charts.push_back(
      {"expert_load.svg", run_expert_load_svg(summary, name + ": expert load", "on the eval batches after training")});
  const std::vector<std::string> written = write_charts(folder, charts);
  write_file_atomic(folder + "/report.md", run_report_markdown(name, summary, metrics, interrupted, written));
}

}  // namespace mr1
