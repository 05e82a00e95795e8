// What a person reads after a training run: report.md in the run folder (the figures of summary.json as
// tables) and its charts (loss, accuracy, routing over the steps, the experts' final load), all from
// summary.json and metrics.jsonl. The sweep's report uses the same readers and the expert-load panel.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "experiments/plot.h"

namespace mr1 {

// The lines of a JSON-lines file as an array; a last line cut short by a crash ends it quietly.
nlohmann::json read_json_lines(const std::string& path);
// The finite number at a JSON pointer ("/final/eval_loss"), or nothing (absent, not a number, or NaN,
// which JSON stores as null).
std::optional<double> number_at(const nlohmann::json& json, const std::string& pointer);
// A run folder's summary.json (null when it has none yet) and its metrics.jsonl lines (an empty array
// when it has none).
nlohmann::json read_run_summary(const std::string& folder);
nlohmann::json read_run_metrics(const std::string& folder);
// Rounded to a whole number, the digits grouped by three: 1234567.4 -> "1,234,567".
std::string grouped_digits(double value);
// Whole seconds, rounded: "7s", "12m30s", "1h02m03s".
std::string format_duration(double seconds);

// (step, value of `key`) over the metrics lines that have both as finite numbers.
LineSeries series_of(const nlohmann::json& metrics, const char* key);
// The seconds of each timed pass of a forward-only run, from summary.json's forward_seconds_all (NaN for an
// entry that is not a number); empty when it has none.
std::vector<double> forward_pass_seconds(const nlohmann::json& summary);

// One bar group per MoE layer of summary["routing"] ("block 3": the load fraction of each expert), with
// the uniform 1/X reference line when every layer has X experts. No groups when there is no routing.
BarPanel expert_load_panel(const nlohmann::json& summary);
// The grid's legend: "expert 0", "expert 1", ... for the most experts of any layer in its panels.
void name_experts(BarPanelGrid& grid);

// The charts of one run from its metrics lines; `title` heads each. An empty string when the lines hold
// nothing to draw (accuracy: no train or eval accuracy; routing: no MoE layer).
// Train loss (solid) and eval loss (dashed) against the step, log scale when they span a factor of 10.
std::string run_loss_svg(const nlohmann::json& metrics, const std::string& title);
// Train accuracy (solid, over each logging window) and eval accuracy (dashed), from 0 to 1.
std::string run_accuracy_svg(const nlohmann::json& metrics, const std::string& title);
// Per MoE layer, one colour: the load CV of each logging window (solid) and its drop rate (dashed).
std::string run_routing_svg(const nlohmann::json& metrics, const std::string& title);
// The experts' load per MoE layer, from summary.json; `measured_on` ends the subtitle ("on the eval
// batches after training").
std::string run_expert_load_svg(const nlohmann::json& summary, const std::string& title,
                                const std::string& measured_on);

// report.md: the run's setup and outcome, final losses and accuracies, routing per MoE layer, and the
// charts named in `charts` (file names beside report.md) as images.
std::string run_report_markdown(const std::string& name, const nlohmann::json& summary,
                                const nlohmann::json& metrics, bool interrupted,
                                const std::vector<std::string>& charts);

// report.md of a forward-only run (summary.json has forward_seconds): the setup, the time of each pass,
// the output's statistics and the routing per MoE layer of the last pass.
std::string forward_report_markdown(const std::string& name, const nlohmann::json& summary,
                                    const std::vector<std::string>& charts);

// A chart file beside a Markdown file, as an image named by the file: "![loss](loss.svg)".
std::string chart_image(const std::string& file);

// Writes each (file name, SVG) of `charts` that has something to draw (a non-empty SVG) into the folder,
// each to a temporary file renamed into place, and removes an earlier file of a chart with nothing to
// draw (a comparison written again over other runs); returns the names written.
std::vector<std::string> write_charts(const std::string& folder,
                                      const std::vector<std::pair<std::string, std::string>>& charts);

// loss.svg, accuracy.svg and routing.svg (those with something to draw) from the metrics.jsonl of a
// run folder, written beside it: the trainer calls it after each evaluation, so that the charts follow
// a long run as it goes.
void write_progress_charts(const std::string& folder);

// Reads summary.json and metrics.jsonl of a run's folder and writes report.md and the charts (loss.svg,
// accuracy.svg, routing.svg, expert_load.svg; those with something to draw) beside them, each to a
// temporary file renamed into place. A forward-only run's report is forward_report_markdown's, with
// expert_load.svg alone.
void write_run_report(const std::string& folder, bool interrupted);

}  // namespace mr1
