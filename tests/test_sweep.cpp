// Sweeps: [sweep] read into axes, combinations in a stable order with readable names, values rendered
// as TOML, the results table and CSV, the SVG plots, resuming a real (tiny) sweep, and the errors.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <unistd.h>

#include "experiments/files.h"
#include "experiments/plot.h"
#include "experiments/sweep.h"
#include "svg_check.h"
#include "test_util.h"

using namespace mr1;
using test::count;
using test::require_well_formed_svg;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

std::vector<SweepAxis> axes_of(const std::string& text, const std::vector<std::string>& sets = {}) {
  ExperimentFile file = ExperimentFile::parse(text, "sweep_test.toml");
  for (const std::string& set : sets) file.set(set);
  return read_sweep_axes(file);
}

std::vector<std::string> names_of(const std::vector<SweepRun>& runs) {
  std::vector<std::string> names;
  for (const SweepRun& run : runs) names.push_back(run.name);
  return names;
}

// The value of `text` (a TOML value) as a node, for the rendering tests.
std::string render(const std::string& text) {
  const toml::table table = toml::parse("value = " + text);
  return render_toml_value(*table.get("value"));
}
std::string show(const std::string& text) {
  const toml::table table = toml::parse("value = " + text);
  return show_toml_value(*table.get("value"));
}

// A fresh temporary folder.
std::string temp_folder(const std::string& what) {
  static int counter = 0;
  const auto path = std::filesystem::temp_directory_path() /
                    ("mamba_r1_sweep_test_" + std::to_string(::getpid()) + "_" + what + "_" + std::to_string(counter++));
  std::filesystem::remove_all(path);
  std::filesystem::create_directories(path);
  return path.string();
}

std::string write_text(const std::string& folder, const std::string& name, const std::string& text) {
  const std::string path = folder + "/" + name;
  std::ofstream(path) << text;
  return path;
}

// Synthetic results: what two finished runs and one pending run of a router sweep look like.
std::vector<SweepResult> synthetic_results(const std::vector<SweepAxis>& axes) {
  const std::vector<SweepRun> runs = expand_sweep(axes);
  std::vector<SweepResult> results(runs.size());
  for (size_t i = 0; i < runs.size(); ++i) results[i].run = runs[i];
  auto summary = [](double eval_loss, double accuracy, double cv, double drop) {
    return nlohmann::json{
        {"final", {{"train_loss", eval_loss + 0.1}, {"eval_loss", eval_loss}, {"eval_accuracy", accuracy}}},
        {"tokens_per_second", 12345.6},
        {"parameters", 199752},
        {"steps", 600},
        {"routing",
         {{{"layer", 1}, {"load", {0.4, 0.3, 0.2, 0.1}}}, {{"layer", 3}, {"load", {0.25, 0.25, 0.25, 0.25}}}}},
        {"routing_overall", {{"load_cv", cv}, {"max_violation", 0.6}, {"dropped_fraction", drop}}}};
  };
  results[0].status = "done";
  results[0].seconds = 61.4;
  results[0].summary = summary(0.5, 0.75, 0.2236, 0.0123);
  results[1].status = "done";
  results[1].seconds = 70;
  results[1].summary = summary(0.25, 0.9, 0.1, 0);
  results[1].summary["final"]["eval_loss"] = 0.25;
  for (int step = 10; step <= 50; step += 10) {
    for (int r = 0; r < 2; ++r) {
      nlohmann::json entry{{"step", step}, {"train_loss", 3.0 / step + r}};
      if (step % 20 == 0) entry["eval_loss"] = 2.5 / step + r, entry["eval_accuracy"] = step / 60.0;
      results[r].metrics.push_back(entry);
    }
  }
  return results;
}

const char* kRouterSweep = R"(
[sweep]
"router.name" = ["switch", "topk", "hash"]
)";

// A model that trains 5 steps in a blink: for the real sweeps below.
const char* kTinyExperiment = R"(
[model]
dim = 8
depth = 1
d_state = 2
expand = 1
num_experts = 2
expert_dim = 8
max_seq_len = 16
vocab_size = 8
positional = []

[task]
name = "induction_heads"
batch_size = 2
seq_len = 16

[training]
steps = 5
log_every = 1
eval_every = 0
eval_batches = 1

[run]
threads = 1

[sweep]
seed = [0, 1]
)";

CommandLine sweep_line(const std::string& path, const std::string& out, bool resume,
                       const std::vector<std::string>& sets = {}) {
  CommandLine line;
  line.command = "sweep";
  line.positional = {path};
  line.sets = sets;
  line.options["out"] = out;
  if (resume) line.flags.insert("resume");
  return line;
}

}  // namespace

TEST_CASE("sweep: combinations follow the file's key order, the last key varying fastest", "[sweep]") {
  const auto axes = axes_of(R"(
[sweep]
"router.name" = ["switch", "topk"]
model.d_state = [16, 32, 64]
seed = [0, 1]
)");
  REQUIRE(axes.size() == 3);
  CHECK(axes[0].key == "router.name");
  CHECK(axes[1].key == "model.d_state");
  CHECK(axes[2].key == "run.seed");  // `seed` is short for run.seed
  const auto runs = expand_sweep(axes);
  REQUIRE(runs.size() == 12);
  CHECK(runs[0].name == "00-router.name=switch,model.d_state=16,run.seed=0");
  CHECK(runs[1].name == "01-router.name=switch,model.d_state=16,run.seed=1");
  CHECK(runs[2].name == "02-router.name=switch,model.d_state=32,run.seed=0");
  CHECK(runs[11].name == "11-router.name=topk,model.d_state=64,run.seed=1");
  CHECK(runs[11].label == "name=topk, d_state=64, seed=1");
  CHECK(runs[3].assignments == std::vector<std::string>{"router.name=\"switch\"", "model.d_state=32", "run.seed=1"});
  for (size_t i = 0; i < runs.size(); ++i) CHECK(runs[i].index == static_cast<int64_t>(i));
}

TEST_CASE("sweep: a nested [sweep.TABLE] and a quoted dotted key mean the same", "[sweep]") {
  const auto quoted = axes_of(kRouterSweep);
  const auto nested = axes_of("[sweep.router]\nname = [\"switch\", \"topk\", \"hash\"]\n");
  REQUIRE(quoted.size() == 1);
  REQUIRE(nested.size() == 1);
  CHECK(quoted[0].key == nested[0].key);
  CHECK(quoted[0].values == nested[0].values);
  // One axis: the plot label is the value alone.
  CHECK(expand_sweep(quoted)[2].label == "hash");
  CHECK(names_of(expand_sweep(quoted)) == names_of(expand_sweep(nested)));
}

TEST_CASE("sweep: a --set of a swept key replaces the file's list in its place", "[sweep]") {
  const auto axes = axes_of("[sweep]\n\"router.name\" = [\"switch\", \"topk\"]\n\"model.d_state\" = [8]\n",
                            {"sweep.router.name=[\"hash\"]"});
  REQUIRE(axes.size() == 2);
  CHECK(axes[0].key == "router.name");
  CHECK(axes[0].values == std::vector<std::string>{"\"hash\""});
  CHECK(axes[1].key == "model.d_state");
}

TEST_CASE("sweep: `run` on a sweep's file is told which swept keys keep the file's values", "[sweep]") {
  const std::string text = "[router]\nname = \"topk\"\n[sweep]\n\"router.name\" = [\"switch\", \"topk\"]\n"
                           "seed = [1, 2]\n[sweep.model]\nd_state = [8, 16]\n";
  ExperimentFile file = ExperimentFile::parse(text, "sweep_test.toml");
  CHECK(sweep_keys_left_unset(file) == std::vector<std::string>{"router.name", "run.seed", "model.d_state"});
  // A sweep's run sets every swept key (run.seed for seed), so it is told nothing.
  file.set("router.name=\"switch\"");
  file.set("model.d_state=16");
  CHECK(sweep_keys_left_unset(file) == std::vector<std::string>{"run.seed"});
  file.set("run.seed=2");
  CHECK(sweep_keys_left_unset(file).empty());
  CHECK(sweep_keys_left_unset(ExperimentFile::parse("[router]\nname = \"topk\"\n", "plain.toml")).empty());
}

TEST_CASE("sweep: run names are folder-safe and numbered with enough digits", "[sweep]") {
  CHECK(sanitize_folder_name("router.name=a/b c*") == "router.name=a_b_c_");
  CHECK(sanitize_folder_name(std::string(300, 'x')).size() == 100);
  const auto runs = expand_sweep(axes_of("[sweep]\n\"run.seed\" = [" + [] {
    std::string values;
    for (int i = 0; i < 101; ++i) values += (i ? ", " : "") + std::to_string(i);
    return values;
  }() + "]\n"));
  REQUIRE(runs.size() == 101);
  CHECK(runs[0].name == "000-run.seed=0");
  CHECK(runs[100].name == "100-run.seed=100");
  const auto order = expand_sweep(axes_of("[sweep]\n\"model.order\" = [[\"mamba\", \"moe\"], [\"mlp\"]]\n"));
  CHECK(order[0].name == "00-model.order=mamba+moe");
  CHECK(order[0].assignments[0] == "model.order=[\"mamba\", \"moe\"]");
}

TEST_CASE("sweep: values are rendered as TOML that reads back the same", "[sweep]") {
  CHECK(render("\"topk\"") == "\"topk\"");
  CHECK(render("'a\"b\\c'") == "\"a\\\"b\\\\c\"");
  CHECK(render("32") == "32");
  CHECK(render("-7") == "-7");
  CHECK(render("3e-3") == "0.003");
  CHECK(render("1.0") == "1.0");
  CHECK(render("1e-10") == "1e-10");
  CHECK(render("0.1") == "0.1");
  CHECK(render("true") == "true");
  CHECK(render("false") == "false");
  CHECK(render("[\"mamba\", 'moe']") == "[\"mamba\", \"moe\"]");
  CHECK(render("[]") == "[]");
  CHECK(render("[[1, 2], [3.5]]") == "[[1, 2], [3.5]]");
  CHECK(render("{ k = 2, \"a b\" = true }") == "{ \"a b\" = true, k = 2 }");
  CHECK(show("\"topk\"") == "topk");
  CHECK(show("[\"mamba\", \"moe\"]") == "mamba+moe");
  CHECK(show("[]") == "none");
  CHECK(show("0.003") == "0.003");

  // Through ExperimentFile::set, each rendering gives back the value it came from.
  for (const std::string text : {"\"x\\\"y\"", "32", "3e-3", "0.1", "true", "[\"mamba\", \"moe\"]", "[]", "1e300"}) {
    INFO(text);
    ExperimentFile file = ExperimentFile::parse("", "x.toml");
    file.set("model.value=" + render(text));
    const toml::table expected = toml::parse("value = " + text);
    CHECK(*file.root()["model"].as_table() == expected);
  }
}

TEST_CASE("sweep: the Markdown table has a row per run with the swept values and the metrics", "[sweep]") {
  const auto axes = axes_of(kRouterSweep);
  const auto results = synthetic_results(axes);
  const std::string table = results_markdown(axes, results);
  INFO(table);
  CHECK_THAT(table, StartsWith("| # | router.name | status | eval loss | eval acc | train loss | tokens/s | load CV | "
                               "MaxVio | drop rate | parameters | steps | time (s) |\n"));
  // A finished run's number links to its report.
  CHECK_THAT(table, Contains("| [0](<runs/" + results[0].run.name + "/report.md>) | switch | done | 0.5000 | 0.750 | "
                             "0.6000 | 12,346 | 0.224 | 0.600 | 1.2% | 199,752 | 600 | 61 |"));
  // The best eval loss and accuracy are bold.
  CHECK_THAT(table, Contains("/report.md>) | topk | done | **0.2500** | **0.900** | 0.3500 |"));
  CHECK_THAT(table, Contains("| 2 | hash | pending | – | – | – | – | – | – | – | – | – | – |"));
  CHECK(count(table, "\n") == 2 + 3);

  // Without unfinished runs there is no status column.
  std::vector<SweepResult> finished(results.begin(), results.begin() + 2);
  CHECK_THAT(results_markdown(axes, finished), StartsWith("| # | router.name | eval loss |"));
}

TEST_CASE("sweep: eval CE, the eval loss without the aux losses, is a column of its own, its lowest in bold",
          "[sweep]") {
  const auto axes = axes_of(kRouterSweep);
  std::vector<SweepResult> results = synthetic_results(axes);
  // switch: eval loss 0.30, of which 0.02 aux; topk here: 0.29, all of it cross-entropy (as for a router
  // without an aux loss). By eval loss topk looks best; by the cross-entropy alone, switch is.
  results[0].summary["final"]["eval_loss"] = 0.30;
  results[0].summary["final"]["eval_cross_entropy"] = 0.28;
  results[1].summary["final"]["eval_loss"] = 0.29;
  results[1].summary["final"]["eval_cross_entropy"] = 0.29;
  const std::string table = results_markdown(axes, results);
  INFO(table);
  CHECK_THAT(table, StartsWith("| # | router.name | status | eval loss | eval CE | eval acc | train loss |"));
  CHECK_THAT(table, Contains("| switch | done | 0.3000 | **0.2800** | 0.750 |"));
  CHECK_THAT(table, Contains("| topk | done | **0.2900** | 0.2900 | **0.900** |"));
  CHECK_THAT(table, Contains("| 2 | hash | pending | – | – | – |"));
  CHECK_THAT(results_csv(axes, results), Contains(",switch,done,0.3,0.28,0.75,"));
  const std::string section = results_section(axes, results, "training time", "routers", "");
  CHECK_THAT(section, Contains("eval CE: its cross-entropy alone, without the MoE layers' aux losses"));
}

TEST_CASE("sweep: the results say why each failed run failed", "[sweep]") {
  const auto axes = axes_of(kRouterSweep);
  std::vector<SweepResult> results = synthetic_results(axes);
  CHECK(results_section(axes, results, "training time", "routers", "").find("## Failed runs") == std::string::npos);
  results[2].status = "failed";
  results[2].error = "the loss is nan at step 2: training diverged | see run.log";
  const std::string section = results_section(axes, results, "training time", "routers", "");
  CHECK_THAT(section, Contains("\n## Failed runs\n\n* 2 (" + results[2].run.name +
                               "): the loss is nan at step 2: training diverged \\| see run.log\n"));
}

TEST_CASE("sweep: with seeds swept, a table over seeds gives mean ± standard deviation per combination",
          "[sweep]") {
  const auto axes = axes_of("[sweep]\n\"router.name\" = [\"switch\", \"topk\"]\n\"run.seed\" = [0, 1, 2]\n");
  std::vector<SweepResult> results;
  for (const SweepRun& run : expand_sweep(axes)) {
    SweepResult result;
    result.run = run;
    results.push_back(result);
  }
  REQUIRE(results.size() == 6);
  // switch: eval loss 0.2, 0.4, 0.6 and accuracy 1.0, 0.5, 0.9 over its three seeds; topk: one seed finished.
  const double losses[] = {0.2, 0.4, 0.6}, accuracies[] = {1.0, 0.5, 0.9};
  for (int s = 0; s < 3; ++s) {
    results[static_cast<size_t>(s)].status = "done";
    results[static_cast<size_t>(s)].summary = {{"final", {{"eval_loss", losses[s]}, {"eval_accuracy", accuracies[s]}}},
                                               {"tokens_per_second", 1000.0 * (s + 1)}};
  }
  results[3].status = "done";
  results[3].summary = {{"final", {{"eval_loss", 0.3}, {"eval_accuracy", 0.8}}}};
  const std::string table = results_over_seeds_markdown(axes, results);
  INFO(table);
  CHECK_THAT(table, StartsWith("| router.name | seeds | eval loss | eval acc | worst eval acc | train loss | tokens/s | "
                               "load CV | MaxVio | drop rate |\n"));
  // mean 0.4, sample std 0.2; accuracy mean 0.8, std √0.07 = 0.265, worst 0.5; tokens/s 2,000 ± 1,000
  CHECK_THAT(table, Contains("| switch | 3 | 0.4000 ± 0.2000 | 0.800 ± 0.265 | 0.500 | – | 2,000 ± 1,000 | – | – | – |"));
  CHECK_THAT(table, Contains("| topk | 1 | 0.3000 | 0.800 | 0.800 | – | – | – | – | – |"));
  CHECK(count(table, "\n") == 2 + 2);
  // The same figures unrounded in CSV.
  const std::string csv = results_over_seeds_csv(axes, results);
  INFO(csv);
  CHECK_THAT(csv, StartsWith("router.name,seeds,eval_loss_mean,eval_loss_std,eval_accuracy_mean,eval_accuracy_std,"
                             "eval_accuracy_min,train_loss_mean,train_loss_std,tokens_per_second_mean,"));
  CHECK_THAT(csv, Contains("\nswitch,3,0.4,0.2,0.8,0.26457513,0.5,,,2000,1000,"));
  CHECK_THAT(csv, Contains("\ntopk,1,0.3,,0.8,,0.8,,,,,"));
  // Without a seed axis, or with one seed, there is no such table.
  CHECK(results_over_seeds_markdown(axes_of(kRouterSweep), synthetic_results(axes_of(kRouterSweep))).empty());
  CHECK(results_over_seeds_markdown(axes_of("[sweep]\n\"run.seed\" = [4]\n"), {}).empty());
}

TEST_CASE("sweep: with seeds swept, the seeds of a combination share a colour and one legend entry", "[sweep]") {
  const auto axes = axes_of("[sweep]\n\"router.name\" = [\"switch\", \"topk\"]\n\"run.seed\" = [0, 1]\n");
  std::vector<SweepResult> results;
  for (const SweepRun& run : expand_sweep(axes)) {
    SweepResult result;
    result.run = run;
    result.status = "done";
    for (int step = 10; step <= 30; step += 10) {
      result.metrics.push_back({{"step", step}, {"train_loss", 1.0 / step}, {"eval_accuracy", step / 40.0}});
    }
    results.push_back(result);
  }
  const std::string svg = accuracy_curves_svg(axes, results);
  require_well_formed_svg(svg);
  CHECK(count(svg, "<polyline") == 4);
  CHECK(count(svg, ">switch</text>") == 1);
  CHECK(count(svg, ">topk</text>") == 1);
  CHECK(svg.find("seed=") == std::string::npos);
  CHECK_THAT(svg, Contains("one colour per combination, one line per seed"));
  // switch's two seeds in the first colour, topk's in the second
  CHECK(count(svg, "stroke=\"" + plot_colour(0) + "\"") >= 2);
  CHECK(count(svg, "stroke=\"" + plot_colour(1) + "\"") >= 2);
  CHECK(count(svg, "stroke=\"" + plot_colour(2) + "\"") == 0);
}

TEST_CASE("sweep: the CSV has a header, a row per run, raw numbers and empty missing cells", "[sweep]") {
  const auto axes = axes_of(kRouterSweep);
  const std::string csv = results_csv(axes, synthetic_results(axes));
  INFO(csv);
  // Every column, eval_cross_entropy (empty here: runs of earlier versions) included.
  CHECK_THAT(csv, StartsWith("index,name,router.name,status,eval_loss,eval_cross_entropy,eval_accuracy,train_loss,"
                             "tokens_per_second,load_cv,max_violation,dropped_fraction,parameters,steps,seconds\n"));
  CHECK_THAT(csv, Contains("\n0,00-router.name=switch,switch,done,0.5,,0.75,0.6,12345.6,0.2236,0.6,0.0123,199752,600,61.4\n"));
  CHECK_THAT(csv, Contains("\n2,02-router.name=hash,hash,pending,,,,,,,,,,,\n"));
  CHECK(count(csv, "\n") == 4);
  // Cells with commas are quoted.
  const auto order = axes_of("[sweep]\n\"model.order\" = [\"a,b\"]\n");
  std::vector<SweepResult> one(1);
  one[0].run = expand_sweep(order)[0];
  CHECK_THAT(results_csv(order, one), Contains(",\"a,b\",pending"));
}

TEST_CASE("sweep: forward-only runs are shown without the training columns, their figures explained", "[sweep]") {
  const auto axes = axes_of(kRouterSweep);
  std::vector<SweepResult> results = synthetic_results(axes);
  // Runs of the "forward" task: timed passes and the routing of the last, no steps, losses or metrics.
  for (SweepResult& result : results) {
    if (result.status != "done") continue;
    for (const char* key : {"final", "steps"}) result.summary.erase(key);
    result.summary["forward_seconds"] = 0.25;
    result.metrics = nlohmann::json::array();
  }
  const std::string section = results_section(axes, results, "wall time of the run", "swept values");
  INFO(section);
  CHECK_THAT(section, StartsWith("| # | router.name | status | tokens/s | load CV | MaxVio | drop rate | parameters | "
                                 "time (s) |\n"));
  CHECK_THAT(section, Contains("| [0](<runs/" + results[0].run.name + "/report.md>) | switch | done | 12,346 | 0.224 | "
                               "0.600 | 1.2% | 199,752 | 61 |\n"));
  CHECK_THAT(section, Contains("\ntokens/s: forward throughput; load CV "));
  CHECK_THAT(section, Contains("the mean over MoE layers, measured in the last timed pass; time: wall time of the run.\n"));
  CHECK(section.find("eval loss") == std::string::npos);
  // No run logged a loss: no loss chart; the expert load says where it was measured.
  CHECK(loss_curves_svg(axes, results).empty());
  CHECK_THAT(expert_load_svg(axes, results), Contains("share of the routed tokens per expert, in the last timed pass;"));

  // Mixed with a run that trained: every column, each figure's meaning for both kinds of run.
  results[1] = synthetic_results(axes)[1];
  const std::string mixed = results_section(axes, results, "wall time of the run", "swept values");
  CHECK_THAT(mixed, StartsWith("| # | router.name | status | eval loss |"));
  CHECK_THAT(mixed, Contains("tokens/s: training throughput (forward-only runs: forward throughput);"));
  CHECK_THAT(mixed, Contains("measured on the eval batches at the end (forward-only runs: in the last timed pass);"));
}

TEST_CASE("sweep: the loss chart is a well-formed SVG with a line per run and the legend", "[sweep]") {
  const auto axes = axes_of(kRouterSweep);
  const auto results = synthetic_results(axes);
  const std::string svg = loss_curves_svg(axes, results);
  require_well_formed_svg(svg);
  // Two runs with metrics: a train line each and an eval line each (dashed); the pending run has none.
  CHECK(count(svg, "<polyline") == 4);
  CHECK(svg.find(">hash</text>") == std::string::npos);
  CHECK(count(svg, "stroke-dasharray") >= 2);
  CHECK_THAT(svg, Contains(">switch</text>"));
  CHECK_THAT(svg, Contains(">topk</text>"));
  CHECK_THAT(svg, Contains(">train loss</text>"));
  CHECK_THAT(svg, Contains(">eval loss</text>"));
  CHECK_THAT(svg, Contains("(log scale)"));  // 3/10 .. 1.06: more than a factor of 10
  CHECK_THAT(svg, Contains(">Loss per run</text>"));  // metrics of earlier versions: no cross-entropy

  // With the cross-entropy in the metrics, the chart draws it (not the loss, which adds the aux losses).
  auto with_cross_entropy = results;
  for (SweepResult& result : with_cross_entropy) {
    for (nlohmann::json& entry : result.metrics) {
      entry["train_lm_loss"] = 100.0;  // far from every loss, so that a line drawn from the loss would show
      if (entry.contains("eval_loss")) entry["eval_lm_loss"] = 200.0;
    }
  }
  const std::string cross_entropy = loss_curves_svg(axes, with_cross_entropy);
  require_well_formed_svg(cross_entropy);
  CHECK_THAT(cross_entropy, Contains(">Cross-entropy per run (without the MoE aux losses)</text>"));
  CHECK_THAT(cross_entropy, Contains(">train cross-entropy</text>") && Contains(">eval cross-entropy</text>"));
  CHECK(count(cross_entropy, "<polyline") == 4);
  CHECK(cross_entropy.find("(log scale)") == std::string::npos);  // 100 .. 200: within a factor of 10

  const std::string accuracy = accuracy_curves_svg(axes, results);
  require_well_formed_svg(accuracy);
  CHECK_THAT(accuracy, Contains(">eval accuracy</text>"));
  CHECK(accuracy_curves_svg(axes, {}).empty());
}

TEST_CASE("sweep: the expert-load chart has a panel per run with routing and the uniform line", "[sweep]") {
  const auto axes = axes_of(kRouterSweep);
  const std::string svg = expert_load_svg(axes, synthetic_results(axes));
  require_well_formed_svg(svg);
  CHECK_THAT(svg, Contains(">0: switch</text>"));
  CHECK_THAT(svg, Contains(">1: topk</text>"));
  CHECK(svg.find(">2: hash</text>") == std::string::npos);  // pending: no routing yet
  CHECK(count(svg, ">1/4</text>") == 2);
  CHECK_THAT(svg, Contains(">expert 3</text>"));
  CHECK_THAT(svg, Contains(">block 3</text>"));
  CHECK(count(svg, "<rect") >= 2 * 8);  // two panels of 2 layers × 4 experts
  CHECK(expert_load_svg(axes, {}).empty());
}

TEST_CASE("plot: ticks are round numbers that cover the range", "[sweep]") {
  const std::vector<double> unit = nice_ticks(0, 1, 5);
  REQUIRE(unit.size() == 6);
  for (size_t i = 0; i < unit.size(); ++i) CHECK(unit[i] == Approx(0.2 * i));
  const auto ticks = nice_ticks(10, 600, 8);
  CHECK(ticks.front() == 100);
  CHECK(ticks.back() == 600);
  const std::vector<double> expected{0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1};
  const std::vector<double> logarithmic = log_ticks(0.01, 1);
  REQUIRE(logarithmic.size() == expected.size());
  for (size_t i = 0; i < expected.size(); ++i) CHECK(logarithmic[i] == Approx(expected[i]));
  CHECK(tick_label(0.25, 0.05) == "0.25");
  CHECK(tick_label(1500, 500) == "1500");
  CHECK(tick_label(0.0001, 0.0001) == "1e-04");
  require_well_formed_svg(line_chart_svg(LineChart{}));  // no data still renders

  // A log scale for positive values over more than a factor of 10, across series, NaN left out.
  const auto chart_of = [](std::vector<std::vector<double>> ys) {
    LineChart chart;
    for (auto& y : ys) {
      LineSeries series;
      series.x.assign(y.size(), 1.0);
      series.y = std::move(y);
      chart.series.push_back(std::move(series));
    }
    return chart;
  };
  CHECK(spans_decades(chart_of({{0.5, 2.0}, {NAN, 6.0}})));
  CHECK_FALSE(spans_decades(chart_of({{1.0, 9.0}, {NAN}})));
  CHECK_FALSE(spans_decades(chart_of({{0.0, 20.0}})));  // a zero has no place on a log scale
  CHECK_FALSE(spans_decades(chart_of({})));
}

TEST_CASE("plot: a line of many more points than pixels keeps each column's extremes", "[sweep]") {
  // 100,000 steps of a slow wave with one spike at step 61,234: drawn through at most 4 points per pixel
  // column, with the same highest and lowest pixel, the spike among them.
  LineChart chart;
  LineSeries wave;
  for (int step = 1; step <= 100000; ++step) {
    wave.x.push_back(step);
    wave.y.push_back(step == 61234 ? 5.0 : 2.0 + std::sin(step / 5000.0) + 0.1 * std::sin(step * 1.7));
  }
  LineSeries whole = wave;  // of 300 points: kept as they are
  whole.x.resize(300);
  whole.y.resize(300);
  chart.series = {wave, whole};
  const std::string svg = line_chart_svg(chart);
  require_well_formed_svg(svg);
  std::vector<std::vector<std::pair<double, double>>> lines;
  // (std::regex recurses per character: a long match would overflow the stack.)
  for (size_t at = svg.find("<polyline"); at != std::string::npos; at = svg.find("<polyline", at + 1)) {
    const size_t begin = svg.find(" points=\"", at) + 9;
    std::istringstream points(svg.substr(begin, svg.find('"', begin) - begin));
    lines.emplace_back();
    for (std::string point; points >> point;) {
      const size_t comma = point.find(',');
      lines.back().push_back({std::stod(point.substr(0, comma)), std::stod(point.substr(comma + 1))});
    }
  }
  REQUIRE(lines.size() == 2);
  const std::vector<std::pair<double, double>>& drawn = lines[0];
  CHECK(drawn.size() > 1000);  // one to four per column of a plot some hundreds of pixels wide
  CHECK(drawn.size() < 4000);
  CHECK(lines[1].size() == 300);
  const auto by_y = [](const auto& a, const auto& b) { return a.second < b.second; };
  const auto top = std::min_element(drawn.begin(), drawn.end(), by_y);   // the spike: SVG's y grows downwards
  const auto bottom = std::max_element(drawn.begin(), drawn.end(), by_y);
  // The spike is 3 above the wave's top (3.1): the highest point, far above the others.
  CHECK(std::count_if(drawn.begin(), drawn.end(), [&](const auto& p) { return p.second < top->second + 20; }) == 1);
  CHECK(bottom->second > top->second + 100);
  CHECK(std::is_sorted(drawn.begin(), drawn.end(), [](const auto& a, const auto& b) { return a.first < b.first; }));
}

TEST_CASE("sweep: a real sweep runs every combination; --resume skips the finished runs", "[sweep]") {
  const std::string folder = temp_folder("resume");
  const std::string path = write_text(folder, "tiny.toml", kTinyExperiment);
  const std::string out = folder + "/out";
  REQUIRE(command_sweep(sweep_line(path, out, false)) == 0);
  const std::string first = out + "/runs/00-run.seed=0", second = out + "/runs/01-run.seed=1";
  for (const std::string& run : {first, second}) {
    CHECK(std::filesystem::exists(run + "/summary.json"));
    CHECK(std::filesystem::exists(run + "/metrics.jsonl"));
    CHECK(std::filesystem::exists(run + "/report.md"));  // and its charts, as after every training run
    CHECK_THAT(read_file(run + "/effective.toml"), Contains("\n[training]\n"));  // the trainer's settings too
    require_well_formed_svg(read_file(run + "/loss.svg"));
    // A run's config.toml is that run alone: its seed set, its [sweep] emptied.
    CHECK(read_file(run + "/config.toml").find("seed = [") == std::string::npos);
  }
  CHECK_THAT(read_file(second + "/config.toml"), Contains("seed = 1"));
  for (const char* file : {"sweep.json", "results.md", "results.csv", "loss_curves.svg", "expert_load.svg"}) {
    INFO(file);
    CHECK(std::filesystem::exists(out + "/" + file));
  }
  CHECK(count(read_file(out + "/results.csv"), ",done,") == 2);
  require_well_formed_svg(read_file(out + "/loss_curves.svg"));
  CHECK_THAT(read_file(out + "/results.md"), Contains("| [1](<runs/01-run.seed=1/report.md>) | 1 |"));

  // Rerunning into the same folder without --resume is refused.
  CHECK_THROWS_WITH(command_sweep(sweep_line(path, out, false)), Contains("--resume"));

  // Mark the first run's summary, and make the second look unfinished; --resume runs only the second.
  nlohmann::json summary = nlohmann::json::parse(read_file(first + "/summary.json"));
  summary["marker"] = "kept";
  write_file_atomic(first + "/summary.json", summary.dump());
  nlohmann::json state = nlohmann::json::parse(read_file(out + "/sweep.json"));
  REQUIRE(state["runs"].size() == 2);
  CHECK(state["runs"][0]["status"] == "done");
  state["runs"][1]["status"] = "pending";
  write_file_atomic(out + "/sweep.json", state.dump());
  std::filesystem::remove(second + "/summary.json");

  REQUIRE(command_sweep(sweep_line(path, out, true)) == 0);
  CHECK(nlohmann::json::parse(read_file(first + "/summary.json")).value("marker", "") == "kept");
  CHECK(std::filesystem::exists(second + "/summary.json"));
  const nlohmann::json resumed = nlohmann::json::parse(read_file(out + "/sweep.json"));
  CHECK(resumed["runs"][0]["status"] == "done");
  CHECK(resumed["runs"][1]["status"] == "done");

  // A run left running (the sweep killed) or interrupted continues from the checkpoint in its folder: here
  // its last step's, so it trains no further and its summary records the resume.
  for (const char* left : {"running", "interrupted"}) {
    INFO(left);
    nlohmann::json stopped = nlohmann::json::parse(read_file(out + "/sweep.json"));
    stopped["runs"][1]["status"] = left;
    write_file_atomic(out + "/sweep.json", stopped.dump());
    std::filesystem::remove(second + "/summary.json");
    REQUIRE(command_sweep(sweep_line(path, out, true)) == 0);
    const nlohmann::json continued = nlohmann::json::parse(read_file(second + "/summary.json"));
    CHECK(continued.value("resumes", nlohmann::json::array()).size() == (std::string(left) == "running" ? 1 : 2));
    CHECK(nlohmann::json::parse(read_file(out + "/sweep.json"))["runs"][1]["status"] == "done");
  }

  // --resume with other combinations is refused.
  CHECK_THROWS_WITH(command_sweep(sweep_line(path, out, true, {"sweep.seed=[5]"})), Contains("combinations differ"));
  std::filesystem::remove_all(folder);
}

TEST_CASE("sweep: --jobs 2 runs each combination in a process of its own, with the same results", "[sweep]") {
  const std::string folder = temp_folder("jobs");
  const std::string path = write_text(folder, "tiny.toml", kTinyExperiment);
  // One thread per run both ways: the thread count changes the rounding of some sums.
  REQUIRE(command_sweep(sweep_line(path, folder + "/one", false, {"run.threads=1"})) == 0);
  CommandLine parallel = sweep_line(path, folder + "/two", false, {"run.threads=1"});
  parallel.options["jobs"] = "2";
  parallel.program = MAMBA_R1_PROGRAM;
  REQUIRE(command_sweep(parallel) == 0);
  for (const char* run : {"/runs/00-run.seed=0", "/runs/01-run.seed=1"}) {
    INFO(run);
    // The same run, whether in this process or in a child: its record, weights and metrics.
    CHECK(read_file(folder + "/two" + run + "/config.toml") == read_file(folder + "/one" + run + "/config.toml"));
    CHECK(read_file(folder + "/two" + run + "/model.safetensors") ==
          read_file(folder + "/one" + run + "/model.safetensors"));
    const nlohmann::json one = nlohmann::json::parse(read_file(folder + "/one" + run + "/summary.json"));
    const nlohmann::json two = nlohmann::json::parse(read_file(folder + "/two" + run + "/summary.json"));
    CHECK(two.at("final") == one.at("final"));
    CHECK_THAT(read_file(folder + "/two" + run + "/run.log"), Contains("wrote"));  // the child's log
  }
  CHECK(count(read_file(folder + "/two/results.csv"), ",done,") == 2);

  // With run.threads = 0 (every core), the runs at a time share the cores: 2 at a time, each on half.
  CommandLine sharing = sweep_line(path, folder + "/shared", false);
  sharing.options["jobs"] = "2";
  sharing.program = MAMBA_R1_PROGRAM;
  REQUIRE(command_sweep(sharing) == 0);
  const unsigned share = std::max(1u, std::thread::hardware_concurrency() / 2);
  CHECK_THAT(read_file(folder + "/shared/runs/00-run.seed=0/run.log"),
             Contains("backend: cpu (" + std::to_string(share) + (share == 1 ? " thread)" : " threads)")));

  // A run whose process fails is marked failed with its exit status; the sweep goes on and exits 1.
  CommandLine failing = sweep_line(path, folder + "/failing", false);
  failing.options["jobs"] = "2";
  failing.program = "/bin/false";
  CHECK(command_sweep(failing) == 1);
  const nlohmann::json state = nlohmann::json::parse(read_file(folder + "/failing/sweep.json"));
  for (const nlohmann::json& run : state.at("runs")) {
    CHECK(run.at("status") == "failed");
    CHECK(run.at("error") == "exited with status 1");
  }
  parallel.options["jobs"] = "0";
  CHECK_THROWS_WITH(command_sweep(parallel), Contains("--jobs expects at least 1"));
  std::filesystem::remove_all(folder);
}

TEST_CASE("sweep: a [sweep] key whose value is not a list is an error naming the key", "[sweep]") {
  CHECK_THROWS_AS(axes_of("[sweep]\nmodel.d_state = 16\n"), ConfigError);
  CHECK_THROWS_WITH(axes_of("[model]\n[sweep]\nmodel.d_state = 16\n"),
                    Contains("sweep_test.toml:3: sweep.model.d_state: expected a list of values"));
  CHECK_THROWS_WITH(axes_of("[sweep]\n\"model.d_state\" = []\n"), Contains("sweep.model.d_state: expected at least one"));
  CHECK_THROWS_WITH(axes_of("[sweep]\nd_state = [1]\n"), Contains("sweep.d_state: a swept key is a dotted path"));
  CHECK_THROWS_WITH(axes_of("[sweep]\n\"router.name\" = [\"a\"]\n[sweep.router]\nname = [\"b\"]\n"),
                    Contains("swept twice"));
  CHECK_THROWS_WITH(axes_of("[model]\ndim = 8\n"), Contains("no [sweep] table"));
  CHECK_THROWS_WITH(axes_of("[sweep]\n"), Contains("[sweep] is empty"));
  // Lists whose product passes kMaxSweepRuns (10 000), without expanding them: 100 × 100 is allowed, one more
  // list of two is not.
  std::string hundred = "[";
  for (int i = 0; i < 100; ++i) hundred += std::to_string(i) + (i < 99 ? ", " : "]");
  const std::string two_lists = "[sweep]\n\"run.seed\" = " + hundred + "\n\"training.steps\" = " + hundred + "\n";
  CHECK(axes_of(two_lists).size() == 2);
  CHECK_THROWS_WITH(axes_of(two_lists + "\"model.d_state\" = [4, 8]\n"),
                    Contains("sweep_test.toml: [sweep]: its lists (100 × 100 × 2 values) make more than 10000 runs"));
}

TEST_CASE("sweep: an unknown key or a bad value in any combination stops the sweep before it runs", "[sweep]") {
  const std::string folder = temp_folder("errors");
  const std::string path = write_text(folder, "tiny.toml", kTinyExperiment);
  const std::string out = folder + "/out";
  // An unknown key path, named in the message with the list that gave it: the --set, or the file's line.
  CHECK_THROWS_WITH(command_sweep(sweep_line(path, out, false, {"sweep.model.bogus=[1, 2]"})),
                    Contains("--set sweep.model.bogus=[1, 2], value 1: model.bogus: unknown key") &&
                        Contains("nothing was run"));
  const std::string in_file = std::string(kTinyExperiment) + "\"model.dstate\" = [4, 8]\n";
  const auto line = std::count(in_file.begin(), in_file.end(), '\n');
  const std::string with_list = write_text(folder, "listed.toml", in_file);
  CHECK_THROWS_WITH(command_sweep(sweep_line(with_list, out, false)),
                    Contains(with_list + ":" + std::to_string(line) + ": sweep.model.dstate, value 4: model.dstate: "
                                                                      "unknown key"));
  CHECK_THROWS_WITH(command_sweep(sweep_line(path, out, false, {"sweep.modle.dim=[8]"})), Contains("modle"));
  CHECK_THROWS_WITH(command_sweep(sweep_line(path, out, false, {"sweep.training.bogus=[1]"})),
                    Contains("training.bogus") && Contains("unknown key"));
  // The second combination is bad: the first does not run either.
  CHECK_THROWS_WITH(command_sweep(sweep_line(path, out, false, {"sweep.router.name=[\"switch\", \"nosuch\"]"})),
                    Contains("sweep run 01-run.seed=0,router.name=nosuch") && Contains("router.name") && Contains("valid:"));
  CHECK_FALSE(std::filesystem::exists(out));
  std::filesystem::remove_all(folder);
}
