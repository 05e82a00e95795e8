// Comparing runs made apart: the settings that differ between their config.toml files as columns, each
// run's status, seeds grouped only when there is something to average, a sweep's folder as its runs,
// the files written, and the errors.
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "experiments/compare.h"
#include "experiments/files.h"
#include "svg_check.h"
#include "test_util.h"

using namespace mr1;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

std::string fresh_folder(const std::string& what) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("mamba_r1_compare_" + std::to_string(::getpid()) + "_" + what);
  std::filesystem::remove_all(path);
  std::filesystem::create_directories(path);
  return path.string();
}

// A run folder: config.toml, and summary.json and metrics.jsonl when given.
std::string make_run(const std::string& parent, const std::string& name, const std::string& config,
                     const nlohmann::json& summary = nullptr) {
  const std::string folder = parent + "/" + name;
  std::filesystem::create_directories(folder);
  write_file_atomic(folder + "/config.toml", config);
  if (summary.is_object()) {
    write_file_atomic(folder + "/summary.json", summary.dump());
    write_file_atomic(folder + "/metrics.jsonl",
                      nlohmann::json{{"step", 5}, {"train_loss", 2.5}, {"eval_loss", 2.75}, {"eval_accuracy", 0.5}}
                              .dump() +
                          "\n");
  }
  return folder;
}

nlohmann::json summary_of(int64_t steps, double eval_loss) {
  return {{"steps", steps},
          {"train_seconds", 12.0},
          {"tokens_per_second", 1000.0},
          {"parameters", 1234},
          {"stopped_early", false},
          {"final", {{"train_loss", eval_loss - 0.25}, {"eval_loss", eval_loss}, {"eval_accuracy", 0.5}}}};
}

std::vector<std::string> keys_of(const Comparison& comparison) {
  std::vector<std::string> keys;
  for (const SweepAxis& axis : comparison.axes) keys.push_back(axis.key);
  return keys;
}

}  // namespace

TEST_CASE("compare: the settings that differ become columns, each run with its status", "[compare]") {
  const std::string root = fresh_folder("columns");
  const std::string common = "[model]\ndim = 8\n[output]\nname = \"x\"\n";
  const std::string a = make_run(root, "a", common + "[router]\nname = \"switch\"\n[run]\nseed = 0\n",
                                 summary_of(10, 2.0));
  const std::string b = make_run(root, "b", common + "[router]\nname = \"topk\"\n[run]\nseed = 0\n");
  const std::string c =
      make_run(root, "c", "[model]\ndim = 8\n[output]\nname = \"y\"\n[router]\nname = \"topk\"\n[run]\nseed = 1\n"
                          "[training]\nsteps = 10\n",
               summary_of(5, 1.5));
  const Comparison comparison = compare_runs({a, b, c}, root + "/out");

  // [output] differs too, but is left out; model.dim is the same everywhere.
  CHECK(keys_of(comparison) == std::vector<std::string>{"router.name", "run.seed", "training.steps"});
  CHECK(comparison.axes[0].shown == std::vector<std::string>{"switch", "topk"});
  CHECK(comparison.axes[2].shown == std::vector<std::string>{"default", "10"});
  REQUIRE(comparison.results.size() == 3);
  CHECK(comparison.results[0].run.choice == std::vector<size_t>{0, 0, 0});
  CHECK(comparison.results[1].run.choice == std::vector<size_t>{1, 0, 0});
  CHECK(comparison.results[2].run.choice == std::vector<size_t>{1, 1, 1});
  // a: a summary (training.steps not in its file); b: none yet; c: 5 of its 10 steps.
  CHECK(comparison.results[0].status == "done");
  CHECK(comparison.results[1].status == "unfinished");
  CHECK(comparison.results[2].status == "interrupted");
  CHECK(comparison.results[2].seconds == 12.0);
  CHECK(comparison.results[0].run.folder == "../a");
  CHECK(comparison.results[0].run.label == "name=switch, seed=0, steps=default");
  // No two runs differ in run.seed alone: nothing to average, so no grouping.
  CHECK_FALSE(comparison.axes[1].repeats);

  const std::string markdown = comparison_markdown(comparison, {"loss_curves.svg"});
  CHECK_THAT(markdown, StartsWith("# Comparison of 3 runs\n\nSettings that differ between the runs: router.name, "
                                  "run.seed, training.steps (from each run's effective.toml"));
  CHECK_THAT(markdown, Contains("| [0](<../a/report.md>) | switch | 0 | default | done | 2.0000 | 0.500 | 1.7500 |"));
  CHECK_THAT(markdown, Contains("| 1 | topk | 0 | default | unfinished | – |"));
  CHECK_THAT(markdown, Contains("| [2](<../c/report.md>) | topk | 1 | 10 | interrupted | 1.5000 |"));
  CHECK_THAT(markdown, Contains("* 1: `" + b + "` (unfinished)\n"));
  CHECK(markdown.find("Over seeds") == std::string::npos);
  CHECK_THAT(markdown, Contains("\n![loss_curves](loss_curves.svg)\n"));
  std::filesystem::remove_all(root);
}

TEST_CASE("compare: a run that stopped early at its accuracy threshold is done; one that raised an error failed",
          "[compare]") {
  const std::string root = fresh_folder("statuses");
  nlohmann::json early = summary_of(5, 1.5);
  early["stopped_early"] = true;  // 5 of 10 steps, on purpose
  const std::string a = make_run(root, "a", "[training]\nsteps = 10\n[run]\nseed = 0\n", early);
  const std::string b =
      make_run(root, "b", "[training]\nsteps = 10\n[run]\nseed = 1\n", nlohmann::json{{"error", "out of memory"}});
  const Comparison comparison = compare_runs({a, b}, root + "/out");
  REQUIRE(comparison.results.size() == 2);
  CHECK(comparison.results[0].status == "done");
  CHECK(comparison.results[1].status == "failed");
  std::filesystem::remove_all(root);
}

TEST_CASE("compare: runs that differ in run.seed alone are grouped over seeds", "[compare]") {
  const std::string root = fresh_folder("seeds");
  const auto config = [](const char* router, int seed) {
    return std::string("[router]\nname = \"") + router + "\"\n[run]\nseed = " + std::to_string(seed) + "\n";
  };
  const std::string x = make_run(root, "x", config("topk", 0), summary_of(10, 2.0));
  const std::string y = make_run(root, "y", config("topk", 1), summary_of(10, 1.0));
  const std::string z = make_run(root, "z", config("switch", 1), summary_of(10, 3.0));
  const Comparison grouped = compare_runs({x, y, z}, root);
  REQUIRE(keys_of(grouped) == std::vector<std::string>{"router.name", "run.seed"});
  CHECK(grouped.axes[1].repeats);
  const std::string over_seeds = results_over_seeds_markdown(grouped.axes, grouped.results);
  // topk over seeds 0 and 1: eval loss 1.5 ± 0.7071 (sample standard deviation of 2 and 1).
  CHECK_THAT(over_seeds, Contains("| topk | 2 | 1.5000 ± 0.7071 |"));
  CHECK_THAT(over_seeds, Contains("| switch | 1 | 3.0000 |"));

  // Without y, the seeds differ too, but every combination has one: not grouped.
  const Comparison single = compare_runs({x, z}, root);
  REQUIRE(keys_of(single) == std::vector<std::string>{"router.name", "run.seed"});
  CHECK_FALSE(single.axes[1].repeats);
  CHECK(results_over_seeds_markdown(single.axes, single.results).empty());

  // Two runs of the same settings: nothing differs, nothing to group.
  const std::string twin = make_run(root, "twin", config("topk", 0), summary_of(10, 2.5));
  const Comparison alike = compare_runs({x, twin}, root);
  CHECK(alike.settings.empty());
  CHECK(alike.axes.empty());
  CHECK(alike.results[1].run.label == "twin");
  CHECK_THAT(comparison_markdown(alike, {}), Contains("Their settings do not differ"));
  std::filesystem::remove_all(root);
}

TEST_CASE("compare: forward-only runs are timed by their passes, training runs by their training", "[compare]") {
  const std::string root = fresh_folder("forward");
  // Runs of the "forward" task: timed passes and routing, no steps, losses or metrics.jsonl.
  const auto forward_run = [&](const char* name, const char* router, std::vector<double> passes) {
    const nlohmann::json summary = {{"forward_seconds_all", passes},
                                    {"forward_seconds", 0.0},
                                    {"tokens_per_second", 2048.0},
                                    {"parameters", 1234},
                                    {"routing_overall", {{"load_cv", 0.25}}}};
    const std::string folder =
        make_run(root, name, std::string("[task]\nname = \"forward\"\n[router]\nname = \"") + router + "\"\n", summary);
    std::filesystem::remove(folder + "/metrics.jsonl");
    return folder;
  };
  const std::string a = forward_run("a", "switch", {0.1, 0.4});
  const std::string b = forward_run("b", "topk", {1.5, 2.0, 2.5});
  const Comparison comparison = compare_runs({a, b}, root + "/out");
  REQUIRE(comparison.results.size() == 2);
  CHECK(comparison.results[0].seconds == Approx(0.5));
  CHECK(comparison.results[1].seconds == Approx(6.0));
  const std::string markdown = comparison_markdown(comparison, {});
  INFO(markdown);
  CHECK_THAT(markdown, Contains("| # | router.name | tokens/s | load CV | MaxVio | drop rate | parameters | time (s) |\n"));
  // Under 1 s two significant digits, under 10 s one decimal.
  CHECK_THAT(markdown, Contains("| switch | 2,048 | 0.250 | – | – | 1,234 | 0.50 |\n"));
  CHECK_THAT(markdown, Contains("| topk | 2,048 | 0.250 | – | – | 1,234 | 6.0 |\n"));
  CHECK_THAT(markdown, Contains("; time: the timed forward passes together.\n"));

  // Beside a training run, each kind of run keeps its own time, and the sentence says which is which.
  const std::string trained =
      make_run(root, "c", "[router]\nname = \"hash\"\n[training]\nsteps = 10\n", summary_of(10, 2.0));
  const Comparison mixed = compare_runs({a, trained}, root + "/out");
  CHECK(mixed.results[1].seconds == 12.0);
  const std::string mixed_markdown = comparison_markdown(mixed, {});
  CHECK_THAT(mixed_markdown, Contains("; time: training time (forward-only runs: the timed forward passes together).\n"));
  CHECK_THAT(mixed_markdown, Contains(" | 12 |\n"));
  std::filesystem::remove_all(root);
}

TEST_CASE("compare: a sweep's folder stands for its runs; the files written; the errors", "[compare]") {
  const std::string root = fresh_folder("files");
  const std::string sweep = root + "/sweep";
  std::filesystem::create_directories(sweep + "/runs");
  write_file_atomic(sweep + "/sweep.json", "{}");
  make_run(sweep + "/runs", "01-router.name=topk", "[router]\nname = \"topk\"\n", summary_of(10, 1.0));
  make_run(sweep + "/runs", "00-router.name=switch", "[router]\nname = \"switch\"\n", summary_of(10, 2.0));
  const std::string other = make_run(root, "other", "[router]\nname = \"hash\"\n", summary_of(10, 3.0));

  CommandLine line;
  line.command = "compare";
  line.positional = {sweep, other};
  line.options["out"] = root + "/out";
  REQUIRE(command_compare(line) == 0);
  const std::string markdown = read_file(root + "/out/results.md");
  CHECK_THAT(markdown, StartsWith("# Comparison of 3 runs\n"));
  // The sweep's runs in its order, then the other run.
  CHECK_THAT(markdown, Contains("| [0](<../sweep/runs/00-router.name=switch/report.md>) | switch |"));
  CHECK_THAT(markdown, Contains("| [1](<../sweep/runs/01-router.name=topk/report.md>) | topk |"));
  CHECK_THAT(markdown, Contains("| [2](<../other/report.md>) | hash |"));
  const std::string csv = read_file(root + "/out/results.csv");
  CHECK(test::count(csv, "\n") == 4);
  test::require_well_formed_svg(read_file(root + "/out/loss_curves.svg"));
  CHECK_THAT(read_file(root + "/out/loss_curves.svg"), Contains("differing: router.name"));

  line.positional = {other};
  CHECK_THROWS_AS(command_compare(line), UsageError);
  CHECK_THROWS_WITH(compare_runs({other, root + "/nothing"}, root),
                    Contains(root + "/nothing: not a run folder") && Contains("nor a sweep folder"));
  // A broken config.toml is named with its line and column.
  write_file_atomic(other + "/config.toml", "[router\n");
  CHECK_THROWS_WITH(compare_runs({sweep, other}, root), Contains(other + "/config.toml:1:8: TOML syntax error"));
  std::filesystem::remove_all(root);
}

TEST_CASE("compare: more than 4 differing settings get a table of their own, one column per combination",
          "[compare]") {
  const std::string root = fresh_folder("wide");
  const auto config = [](int dim, const char* router, int seed) {
    return "[model]\ndim = " + std::to_string(dim) + "\nd_state = " + std::to_string(dim / 2) + "\nexpert_dim = " +
           std::to_string(2 * dim) + "\n[router]\nname = \"" + router + "\"\n[training]\nsteps = " +
           std::to_string(dim) + "\n[run]\nseed = " + std::to_string(seed) + "\n";
  };
  const std::string p = make_run(root, "p", config(8, "switch", 0), summary_of(8, 3.0));
  const std::string q = make_run(root, "q", config(16, "topk", 0), summary_of(16, 2.0));
  const std::string r = make_run(root, "r", config(16, "topk", 1), summary_of(16, 1.0));
  const Comparison comparison = compare_runs({p, q, r}, root);
  REQUIRE(keys_of(comparison) == std::vector<std::string>{"settings", "run.seed"});
  CHECK(comparison.settings.size() == 6);  // model.d_state, dim, expert_dim, router.name, run.seed, training.steps
  CHECK(comparison.axes[0].shown == std::vector<std::string>{"A", "B"});
  CHECK(comparison.results[0].run.choice == std::vector<size_t>{0, 0});
  CHECK(comparison.results[2].run.choice == std::vector<size_t>{1, 1});
  // The charts: one colour per combination, named by its letter.
  const std::string loss = loss_curves_svg(comparison.axes, comparison.results, "differing");
  CHECK(test::count(loss, ">A</text>") == 1);
  CHECK(test::count(loss, ">B</text>") == 1);

  const std::string markdown = comparison_markdown(comparison, {});
  CHECK_THAT(markdown, Contains("| setting | A | B |\n|---|---|---|\n| model.d_state | 4 | 8 |\n| model.dim | 8 | 16 |\n"
                                "| model.expert_dim | 16 | 32 |\n| router.name | switch | topk |\n"
                                "| training.steps | 8 | 16 |\n| (runs) | 0 | 1, 2 |\n"));
  CHECK_THAT(markdown, Contains("| [2](<r/report.md>) | B | 1 | **1.0000** |"));
  // B over its two seeds: eval loss 1.5 ± 0.7071.
  CHECK_THAT(markdown, Contains("| B | 2 | 1.5000 ± 0.7071 |"));
  std::filesystem::remove_all(root);
}

TEST_CASE("compare: a run's effective.toml, every setting it used, is compared in place of its config.toml",
          "[compare]") {
  const std::string root = fresh_folder("effective");
  // Both files leave the learning rate to its default; their effective.toml files say what it was. The
  // switch run never read top_k.
  const std::string a = make_run(root, "a", "[router]\nname = \"switch\"\n", summary_of(10, 2.0));
  const std::string b = make_run(root, "b", "[router]\nname = \"topk\"\n", summary_of(10, 1.0));
  write_file_atomic(a + "/effective.toml", "[router]\nname = \"switch\"\n[training]\nlearning_rate = 0.001\n"
                                           "steps = 10\n");
  write_file_atomic(b + "/effective.toml", "[router]\nname = \"topk\"\ntop_k = 2\n[training]\n"
                                           "learning_rate = 0.001\nsteps = 20\n");
  const Comparison comparison = compare_runs({a, b}, root);
  CHECK(keys_of(comparison) == std::vector<std::string>{"router.name", "router.top_k", "training.steps"});
  CHECK(comparison.settings[1].shown == std::vector<std::string>{"unused", "2"});
  // b's summary has 10 of its 20 steps.
  CHECK(comparison.results[0].status == "done");
  CHECK(comparison.results[1].status == "interrupted");
  std::filesystem::remove_all(root);
}

TEST_CASE("compare: a block setting one run gives and another inherits from [model] or [router] is compared "
          "with the inherited value", "[compare]") {
  const std::string root = fresh_folder("inherited");
  const std::string a = make_run(root, "a", "[model]\norder = [\"mamba\", \"moe\"]\n", summary_of(10, 2.0));
  const std::string b = make_run(root, "b", "[model]\norder = [\"mamba\", \"moe\"]\n", summary_of(10, 1.0));
  // a: no per-block tables. b: block 1 (moe) with its own router table holding [router]'s capacity_factor,
  // block 0 (mamba) with its own d_state, and block 2 (mamba) with [model]'s.
  write_file_atomic(a + "/effective.toml", "[model]\norder = [\"mamba\", \"moe\"]\nd_state = 16\n"
                                           "[router]\nname = \"switch\"\ncapacity_factor = 1.25\n");
  write_file_atomic(b + "/effective.toml",
                    "[model]\norder = [\"mamba\", \"moe\"]\nd_state = 16\n[model.layers.0]\nd_state = 64\n"
                    "[model.layers.2]\nd_state = 16\n[model.layers.1.router]\nname = \"topk\"\ncapacity_factor = 1.25\n"
                    "top_k = 2\n[router]\nname = \"switch\"\ncapacity_factor = 1.25\n");
  const Comparison comparison = compare_runs({a, b}, root);
  CHECK(keys_of(comparison) == std::vector<std::string>{"model.layers.0.d_state", "model.layers.1.router.name",
                                                         "model.layers.1.router.top_k"});
  CHECK(comparison.settings[0].shown == std::vector<std::string>{"16", "64"});
  CHECK(comparison.settings[1].shown == std::vector<std::string>{"switch", "topk"});
  CHECK(comparison.settings[2].shown == std::vector<std::string>{"unused", "2"});  // switch has no top_k
  std::filesystem::remove_all(root);
}
