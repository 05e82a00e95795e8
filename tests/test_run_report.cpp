// A training run's report: report.md's tables from summary.json and metrics.jsonl, its four charts,
// and the readers it shares with the sweep.
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "experiments/files.h"
#include "experiments/run_report.h"
#include "svg_check.h"
#include "test_util.h"

using namespace mr1;
using test::count;
using test::require_well_formed_svg;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

nlohmann::json layer(int64_t block, std::vector<double> load, double cv, double dropped) {
  return {{"layer", block},     {"load", load},           {"load_cv", cv},   {"max_violation", 2 * cv},
          {"entropy", 0.875},   {"dropped_fraction", dropped}, {"aux_loss", 0.0125}, {"z_loss", 0.0}};
}

// Three logging windows of a run with MoE blocks 1 (no drops) and 3; evaluations at steps 100 and 150.
nlohmann::json synthetic_metrics() {
  nlohmann::json metrics = nlohmann::json::array();
  metrics.push_back({{"step", 50},
                     {"train_loss", 2.75},
                     {"train_accuracy", 0.125},
                     {"routing", {layer(1, {0.5, 0.5}, 0.25, 0.0), layer(3, {0.5, 0.5}, 0.5, 0.0625)}}});
  metrics.push_back({{"step", 100},
                     {"train_loss", 2.5},
                     {"train_accuracy", 0.25},
                     {"eval_loss", 2.625},
                     {"eval_accuracy", 0.2},
                     {"routing", {layer(1, {0.5, 0.5}, 0.125, 0.0), layer(3, {0.5, 0.5}, 0.375, 0.03125)}}});
  metrics.push_back({{"step", 150},
                     {"train_loss", 2.25},
                     {"train_accuracy", 0.4},
                     {"eval_loss", 2.375},
                     {"eval_accuracy", 0.5},
                     {"routing", {layer(1, {0.5, 0.5}, 0.0625, 0.0), layer(3, {0.5, 0.5}, 0.25, 0.0)}}});
  return metrics;
}

nlohmann::json synthetic_summary(std::vector<double> second_load) {
  return {{"experiment", "experiments/x.toml"},
          {"blocks", "4 blocks (2 mamba, 2 moe)"},
          {"parameters", 218700},
          {"backend", "cpu"},
          {"task", "induction_heads: recall"},
          {"steps", 1234},
          {"train_seconds", 65.4},
          {"tokens_per_second", 12345.6},
          {"stopped_early", true},
          {"final", {{"train_loss", 2.25}, {"eval_loss", 2.375}, {"eval_accuracy", nullptr}}},
          {"routing", {layer(1, {0.125, 0.375, 0.25, 0.25}, 0.1, 0.05), layer(3, second_load, 0.3, 0.0)}},
          {"routing_overall",
           {{"load_cv", 0.2}, {"max_violation", 0.4}, {"dropped_fraction", 0.025}, {"entropy", 0.875},
            {"aux_loss", 0.0125}, {"z_loss", 0.0}}}};
}

}  // namespace

TEST_CASE("run report: the readers the sweep shares", "[report]") {
  CHECK(grouped_digits(1234567.4) == "1,234,567");
  CHECK(grouped_digits(999.5) == "1,000");
  CHECK(grouped_digits(-12345) == "-12,345");
  CHECK(grouped_digits(-0.2) == "0");
  CHECK(format_duration(0.4) == "0s");
  CHECK(format_duration(59.6) == "1m00s");
  CHECK(format_duration(65.4) == "1m05s");
  CHECK(format_duration(3723) == "1h02m03s");
  CHECK(format_duration(-3) == "0s");

  const nlohmann::json json = {{"a", {{"b", 1.5}}}, {"n", nullptr}, {"s", "text"}};
  CHECK(number_at(json, "/a/b") == 1.5);
  CHECK_FALSE(number_at(json, "/n"));  // NaN as JSON writes it
  CHECK_FALSE(number_at(json, "/s"));
  CHECK_FALSE(number_at(json, "/a/c"));
  CHECK_FALSE(number_at(nlohmann::json::array(), "/a"));

  // A last line cut by a crash ends the lines without an error.
  const std::string path =
      (std::filesystem::temp_directory_path() / ("mamba_r1_report_" + std::to_string(::getpid()) + ".jsonl")).string();
  std::ofstream(path) << "{\"step\": 1}\n\n{\"step\": 2}\n{\"step\": 3, \"tr";
  const nlohmann::json lines = read_json_lines(path);
  REQUIRE(lines.size() == 2);
  CHECK(lines[1]["step"] == 2);
  std::filesystem::remove(path);
}

TEST_CASE("run report: the expert-load panel has one group per MoE layer", "[report]") {
  const BarPanel same = expert_load_panel(synthetic_summary({0.25, 0.25, 0.25, 0.25}));
  REQUIRE(same.groups == std::vector<std::string>{"block 1", "block 3"});
  CHECK(same.values[0] == std::vector<double>{0.125, 0.375, 0.25, 0.25});
  CHECK(same.reference == 0.25);
  CHECK(same.reference_label == "1/4");
  // Blocks with different expert counts: no single uniform line.
  const BarPanel mixed = expert_load_panel(synthetic_summary({0.5, 0.25, 0.125, 0.0625, 0.0625, 0, 0, 0}));
  CHECK(mixed.values[1].size() == 8);
  CHECK(mixed.reference < 0);
  CHECK(mixed.reference_label.empty());
  CHECK(expert_load_panel(nlohmann::json{{"steps", 3}}).groups.empty());  // a model without MoE layers
}

TEST_CASE("run report: the loss chart draws the cross-entropy beside a loss with aux losses", "[report]") {
  // No aux loss: the logged cross-entropy equals the loss, and one pair of lines is drawn.
  nlohmann::json metrics = nlohmann::json::array(
      {{{"step", 50}, {"train_loss", 2.75}, {"train_lm_loss", 2.75}},
       {{"step", 100}, {"train_loss", 2.5}, {"train_lm_loss", 2.5}, {"eval_loss", 2.625}, {"eval_lm_loss", 2.625}}});
  const std::string plain = run_loss_svg(metrics, "demo: loss");
  CHECK(count(plain, "<polyline") == 2);
  CHECK_THAT(plain, !Contains("cross-entropy"));

  // An aux loss at step 100 only: loss and cross-entropy, each train (solid) and eval (dashed).
  metrics[1]["train_loss"] = 2.5625;
  const std::string both = run_loss_svg(metrics, "demo: loss");
  require_well_formed_svg(both);
  CHECK(count(both, "<polyline") == 4);
  CHECK(count(both, "<polyline data-series=\"loss\"") == 1);
  CHECK(count(both, "<polyline data-series=\"cross-entropy\"") == 1);
  CHECK(count(both, "stroke=\"" + plot_colour(1) + "\" stroke-width=\"1.8\" stroke-dasharray") == 1);
  CHECK_THAT(both, Contains(">loss</text>") && Contains(">cross-entropy</text>") && Contains(">train</text>") &&
                       Contains(">eval</text>"));
  CHECK(count(both, ">train</text>") == 1);  // one style key per line style
}

TEST_CASE("run report: the charts draw what the metrics hold", "[report]") {
  const nlohmann::json metrics = synthetic_metrics();
  const std::string loss = run_loss_svg(metrics, "demo: loss");
  require_well_formed_svg(loss);
  CHECK(count(loss, "<polyline") == 2);  // train, eval
  CHECK(count(loss, "stroke-width=\"1.8\" stroke-dasharray") == 1);  // the eval line
  CHECK_THAT(loss, Contains(">demo: loss</text>") && Contains(">train loss</text>") && Contains(">eval loss</text>"));
  // Two eval points, each with a dot.
  CHECK(count(loss, "<circle") == 2);

  const std::string accuracy = run_accuracy_svg(metrics, "demo: accuracy");
  require_well_formed_svg(accuracy);
  CHECK(count(accuracy, "<polyline") == 2);
  CHECK(run_accuracy_svg(nlohmann::json::array({{{"step", 1}, {"train_loss", 2.0}}}), "x").empty());

  // Block 1 never drops: its load CV alone; block 3: load CV and drop rate, in its own colour.
  const std::string routing = run_routing_svg(metrics, "demo: routing");
  require_well_formed_svg(routing);
  CHECK(count(routing, "<polyline") == 3);
  CHECK(count(routing, "<polyline data-series=\"block 1\"") == 1);
  CHECK(count(routing, "<polyline data-series=\"block 3\"") == 1);
  CHECK(count(routing, "stroke=\"" + plot_colour(1) + "\" stroke-width=\"1.8\" stroke-dasharray") == 1);
  CHECK_THAT(routing, Contains(">drop rate (dropped for capacity)</text>"));
  CHECK(run_routing_svg(nlohmann::json::array({{{"step", 1}, {"train_loss", 2.0}}}), "x").empty());

  const std::string load =
      run_expert_load_svg(synthetic_summary({0.25, 0.25, 0.25, 0.25}), "demo: load", "on the eval batches");
  require_well_formed_svg(load);
  CHECK_THAT(load, Contains(">block 1</text>") && Contains(">block 3</text>") && Contains(">1/4</text>") &&
                       Contains("mean over layers: CV 0.200 · MaxVio 0.400 · drop 2.5%") &&
                       Contains(">share of the routed tokens per expert, on the eval batches</text>"));
  CHECK(count(load, ">expert 3</text>") == 1);
  CHECK(run_expert_load_svg(nlohmann::json{{"steps", 3}}, "x", "y").empty());
}

TEST_CASE("run report: report.md states the summary's figures", "[report]") {
  const std::string report = run_report_markdown("demo-run", synthetic_summary({0.25, 0.25, 0.25, 0.25}),
                                                 synthetic_metrics(), false, {"loss.svg", "routing.svg"});
  CHECK_THAT(report, StartsWith("# demo-run\n\nexperiments/x.toml · 4 blocks (2 mamba, 2 moe) · 218,700 parameters "
                                "· backend cpu  \ntask: induction_heads: recall  \nsettings: [config.toml](config.toml)"));
  CHECK_THAT(report, Contains("\n1,234 steps in 1m05s (12,346 tokens/s); stopped early: eval accuracy reached "
                              "training.stop_at_eval_accuracy.\n"));
  // Train accuracy from the last metrics line; the eval accuracy, null in summary.json, as "–".
  CHECK_THAT(report, Contains("| train (last logging window) | 2.2500 | 0.400 |\n"));
  CHECK_THAT(report, Contains("| eval (last evaluation) | 2.3750 | – |\n"));
  CHECK_THAT(report, Contains("| 1 | 4 | 0.100 | 0.200 | 5.0% | 0.875 | 0.0125 | 0.0000 |\n"));
  CHECK_THAT(report, Contains("| 3 | 4 | 0.300 | 0.600 | 0.0% | 0.875 | 0.0125 | 0.0000 |\n"));
  CHECK_THAT(report, Contains("| mean |  | 0.200 | 0.400 | 2.5% | 0.875 | 0.0125 | 0.0000 |\n"));
  CHECK_THAT(report, Contains("\n![loss](loss.svg)\n![routing](routing.svg)\n"));

  // Interrupted: how to continue; a model without MoE layers has no routing section.
  nlohmann::json dense = synthetic_summary({});
  dense.erase("routing");
  dense.erase("routing_overall");
  const std::string interrupted = run_report_markdown("dense", dense, nlohmann::json::array(), true, {});
  CHECK_THAT(interrupted, Contains("; interrupted: continue with `--resume`.\n"));
  CHECK_THAT(interrupted, Contains("| train (last logging window) | 2.2500 | – |\n"));
  CHECK(interrupted.find("Routing") == std::string::npos);
  CHECK(interrupted.find("![") == std::string::npos);
  CHECK(interrupted.find("Caveat") == std::string::npos);

  // The model's caveats (expert_choice's look at later tokens) head the report; a failed run states its error.
  nlohmann::json leaky = synthetic_summary({0.25, 0.25, 0.25, 0.25});
  leaky["caveats"] = {"router expert_choice: it leaks the future"};
  CHECK_THAT(run_report_markdown("leaky", leaky, synthetic_metrics(), false, {}),
             Contains("[metrics.jsonl](metrics.jsonl)\n\n**Caveat:** router expert_choice: it leaks the future\n\n"
                      "1,234 steps"));
  const nlohmann::json failed{{"error", "the loss is nan at step 3"}, {"experiment", "experiments/x.toml"}};
  const std::string failure = run_report_markdown("failed", failed, synthetic_metrics(), false, {"loss.svg"});
  CHECK_THAT(failure, Contains("\n**The run failed:** the loss is nan at step 3\n"));
  CHECK_THAT(failure, Contains("\n![loss](loss.svg)\n"));
  CHECK(failure.find("steps in") == std::string::npos);
}

TEST_CASE("run report: a forward-only run's report states its passes, output and routing", "[report]") {
  nlohmann::json summary = synthetic_summary({0.25, 0.25, 0.25, 0.25});
  for (const char* key : {"steps", "train_seconds", "stopped_early", "final"}) summary.erase(key);
  summary["task"] = "forward: random input (4, 64, 32) embeddings, mask ones";
  summary["tokens"] = 256;
  summary["warmup_passes"] = 1;
  summary["forward_seconds_all"] = {0.5, 0.25, 0.125};
  summary["forward_seconds"] = 0.875 / 3;
  summary["forward_seconds_best"] = 0.125;
  summary["tokens_per_second"] = 256 / (0.875 / 3);
  summary["output_shape"] = {4, 64, 32};
  summary["output_mean"] = 0.0625;
  summary["output_std"] = 1.5;
  summary["aux_loss"] = 0.025;
  const std::string report = forward_report_markdown("seed", summary, {"expert_load.svg"});
  CHECK_THAT(report, StartsWith("# seed\n\nexperiments/x.toml · 4 blocks (2 mamba, 2 moe) · 218,700 parameters · "
                                "backend cpu  \ntask: forward: random input (4, 64, 32) embeddings, mask ones  \n"));
  // No metrics.jsonl to link: the run logged none.
  CHECK_THAT(report, Contains("(every setting with the value used)\n"));
  CHECK(report.find("metrics.jsonl") == std::string::npos);
  CHECK_THAT(report, Contains("\nForward passes only (no training): 3 timed after 1 warm-up, 256 tokens each.\n"));
  // tokens/s of each row = 256 / its seconds: mean 256 / 0.291666 = 877.7, best 2048, passes 512, 1024, 2048.
  CHECK_THAT(report, Contains("| mean | 0.2917 | 878 |\n| best | 0.1250 | 2,048 |\n| 1 | 0.5000 | 512 |\n"
                              "| 2 | 0.2500 | 1,024 |\n| 3 | 0.1250 | 2,048 |\n"));
  CHECK_THAT(report, Contains("\nOutput (4, 64, 32) after the final norm: mean 0.0625, std 1.5000; aux and z losses of "
                              "the MoE layers 0.0250.\n"));
  CHECK_THAT(report, Contains("## Routing of the last timed pass\n"));
  CHECK_THAT(report, Contains("| 3 | 4 | 0.300 | 0.600 | 0.0% | 0.875 | 0.0125 | 0.0000 |\n"));
  CHECK_THAT(report, Contains("\n![expert_load](expert_load.svg)\n"));
  CHECK(report.find("steps") == std::string::npos);

  // More passes than fit on a screen: the slowest stands for them.
  summary["forward_seconds_all"] = std::vector<double>(25, 0.125);
  summary["forward_seconds_all"][7] = 0.5;
  const std::string many = forward_report_markdown("seed", summary, {});
  CHECK_THAT(many, Contains("| best | 0.1250 | 2,048 |\n| slowest | 0.5000 | 512 |\n\nOutput"));
}

TEST_CASE("run report: the files written into a run folder", "[report]") {
  const std::string folder =
      (std::filesystem::temp_directory_path() / ("mamba_r1_report_run_" + std::to_string(::getpid()))).string();
  std::filesystem::remove_all(folder);
  std::filesystem::create_directories(folder);
  std::string lines;
  for (const nlohmann::json& line : synthetic_metrics()) lines += line.dump() + "\n";
  write_file_atomic(folder + "/metrics.jsonl", lines);

  // During training: the three charts of the metrics, no report yet.
  write_progress_charts(folder + "/");
  for (const char* file : {"loss.svg", "accuracy.svg", "routing.svg"}) {
    INFO(file);
    require_well_formed_svg(read_file(folder + "/" + file));
  }
  CHECK_FALSE(std::filesystem::exists(folder + "/expert_load.svg"));
  CHECK_FALSE(std::filesystem::exists(folder + "/report.md"));
  const std::string name = std::filesystem::path(folder).filename().string();
  CHECK_THAT(read_file(folder + "/loss.svg"), Contains(">" + name + ": loss</text>"));  // named without the '/'

  // At the end: report.md with every chart, the expert load from summary.json.
  write_file_atomic(folder + "/summary.json", synthetic_summary({0.25, 0.25, 0.25, 0.25}).dump());
  write_run_report(folder, false);
  const std::string report = read_file(folder + "/report.md");
  CHECK_THAT(report, StartsWith("# " + name + "\n"));
  CHECK_THAT(report, Contains("![loss](loss.svg)\n![accuracy](accuracy.svg)\n![routing](routing.svg)\n"
                              "![expert_load](expert_load.svg)\n"));
  require_well_formed_svg(read_file(folder + "/expert_load.svg"));

  // A forward-only run (summary.json has forward_seconds): its report and the expert load alone, whatever
  // else the folder holds.
  const std::string forward = folder + "/forward";
  std::filesystem::create_directories(forward);
  nlohmann::json summary = synthetic_summary({0.5, 0.5, 0.0, 0.0});
  summary["forward_seconds"] = 0.5;
  write_file_atomic(forward + "/summary.json", summary.dump());
  write_run_report(forward, false);
  CHECK_THAT(read_file(forward + "/report.md"),
             StartsWith("# forward\n") && Contains("## Routing of the last timed pass\n") &&
                 Contains("\n![expert_load](expert_load.svg)\n"));
  CHECK_THAT(read_file(forward + "/expert_load.svg"), Contains("per expert, in the last timed pass</text>"));
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(forward)) ++files;
  CHECK(files == 3);  // summary.json, report.md, expert_load.svg
  std::filesystem::remove_all(folder);
}
