// Experiment files: the defaults of DESIGN.md §3, --set overrides, and errors that name the file,
// the key, the line and what is valid.
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "experiments/experiment.h"
#include "test_util.h"

using namespace mr1;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

// Writes `text` to a fresh temporary experiment file and returns its path.
std::string write_experiment(const std::string& text) {
  static int counter = 0;
  const auto path = std::filesystem::temp_directory_path() /
                    ("mamba_r1_config_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + ".toml");
  std::ofstream(path) << text;
  return path.string();
}

Experiment load_text(const std::string& text, const std::vector<std::string>& sets = {}) {
  return load_experiment(write_experiment(text), sets);
}

// Loading and building: every error a user can make in a file surfaces here.
void build_text(const std::string& text, const std::vector<std::string>& sets = {}) {
  build_experiment(load_text(text, sets));
}

}  // namespace

TEST_CASE("an empty [model] table gives the seed's technical specifications", "[config]") {
  const Experiment experiment = load_text("[model]\n");
  const ModelConfig& model = experiment.model;
  CHECK(model.dim == 512);
  CHECK(model.depth == 12);
  CHECK(model.order == std::vector<std::string>{"mamba", "moe"});
  CHECK(model.d_state == 64);
  CHECK(model.d_conv == 4);
  CHECK(model.expand == 2);
  CHECK(model.dt_rank == 32);  // "auto" = ceil(512 / 16)
  CHECK(model.num_experts == 8);
  CHECK(model.expert_dim == 2048);
  CHECK(model.max_seq_len == 2048);
  CHECK(model.vocab_size == 0);
  CHECK(model.norm == "rmsnorm");
  CHECK(model.positional == std::vector<std::string>{"learned"});
  CHECK(model.tie_embeddings);
  CHECK(experiment.router.name == "switch");
  CHECK(experiment.router.capacity_factor == 1.0);
  CHECK(experiment.router.min_capacity == 4);
  CHECK(experiment.router.aux_loss_coef == 0.01);
  CHECK(experiment.router.z_loss_coef == 0.0);
}

TEST_CASE("dt_rank auto is ceil(dim / 16), an integer is taken as given", "[config]") {
  CHECK(load_text("[model]\ndim = 100\n").model.dt_rank == 7);
  CHECK(load_text("[model]\ndim = 100\ndt_rank = \"auto\"\n").model.dt_rank == 7);
  CHECK(load_text("[model]\ndim = 100\ndt_rank = 3\n").model.dt_rank == 3);
  CHECK_THROWS_WITH(load_text("[model]\ndt_rank = \"big\"\n"), Contains("model.dt_rank") && Contains("\"auto\""));
}

TEST_CASE("a --set override reaches any key and creates missing tables", "[config]") {
  const Experiment experiment =
      load_text("[model]\nd_state = 16\n", {"model.d_state=32", "router.capacity_factor=0.5", "model.order=[\"mlp\"]"});
  CHECK(experiment.model.d_state == 32);
  CHECK(experiment.router.capacity_factor == 0.5);
  CHECK(experiment.model.order == std::vector<std::string>{"mlp"});
  // A bare word is a string, so an unknown router name is reported as such.
  CHECK_THROWS_WITH(load_text("", {"router.name=nosuch"}), Contains("router.name") && Contains("switch"));
  CHECK_THROWS_WITH(load_text("", {"model.d_state"}), Contains("KEY=VALUE"));
  CHECK_THROWS_WITH(load_text("[model]\ndim = 8\n", {"model.dim.x=1"}), Contains("'model.dim' is not a table"));
  // The key is a TOML key: spaces around its parts, and quoted parts that hold dots or '='.
  const Experiment spaced = load_text("", {"model . d_state = 24"});
  CHECK(spaced.model.d_state == 24);
  ExperimentFile quoted = ExperimentFile::parse("", "x.toml");
  quoted.set("sweep.\"model.d_state\"=[16, 32]");
  quoted.set("sweep.\"a=b\".c=1");
  CHECK(quoted.root().at_path("sweep").as_table()->get("model.d_state")->as_array()->size() == 2);
  CHECK(quoted.root()["sweep"]["a=b"]["c"].value<int64_t>() == 1);
  CHECK_THROWS_WITH(load_text("", {"model..d_state=3"}), Contains("'model..d_state' is not a key"));
}

TEST_CASE("errors name the file, the line, the key and what was expected", "[config]") {
  const std::string path = write_experiment("[model]\ndim = 64\nd_state = \"big\"\n");
  CHECK_THROWS_WITH(load_experiment(path, {}),
                    Contains(path + ":3") && Contains("model.d_state") && Contains("expected an integer") &&
                        Contains("big"));
  CHECK_THROWS_WITH(load_text("[model]\nexpert_dim = 0\n"), Contains("model.expert_dim") && Contains(">= 1"));
  CHECK_THROWS_WITH(load_text("[model]\nd_conv = 0\n"), Contains("model.d_conv") && Contains(">= 1"));
  CHECK(load_text("[model]\nd_conv = 12\n").model.d_conv == 12);  // any width: DESIGN sets no upper limit
  CHECK_THROWS_WITH(load_text("[model]\ntie_embeddings = 1\n"), Contains("expected true or false"));
  CHECK_THROWS_WITH(load_text("[model]\norder = [\"mamba\", 3]\n"), Contains("list of strings"));
  CHECK_THROWS_WITH(load_text("[router]\naux_loss_coef = -1.0\n"), Contains("router.aux_loss_coef"));
}

TEST_CASE("a number that is not finite is refused wherever a number is read", "[config]") {
  CHECK_THROWS_WITH(load_text("[router]\ncapacity_factor = nan\n"),
                    Contains(":2: router.capacity_factor: expected a finite number, found nan"));
  CHECK_THROWS_WITH(load_text("[router]\nz_loss_coef = -inf\n"), Contains("router.z_loss_coef: expected a finite number"));
  CHECK_THROWS_WITH(load_text("[model]\ndim = 8\n", {"router.eval_capacity_factor=inf"}),
                    StartsWith("--set router.eval_capacity_factor=inf: router.eval_capacity_factor: expected a finite"));
  CHECK(load_text("[router]\ncapacity_factor = 1e300\n").router.capacity_factor == 1e300);  // finite: taken
}

TEST_CASE("an experiment file that is a folder, a block number with a leading zero, an encoding listed twice and "
          "an output name with a '/' are refused", "[config]") {
  const std::string folder = std::filesystem::temp_directory_path() / ("mamba_r1_config_dir_" + std::to_string(::getpid()));
  std::filesystem::create_directories(folder);
  CHECK_THROWS_WITH(load_experiment(folder, {}), Contains(folder + ": is a folder; expected an experiment file"));
  std::filesystem::remove_all(folder);
  const std::string model = "[model]\ndim = 8\ndepth = 2\norder = [\"mamba\", \"moe\"]\n";
  CHECK_THROWS_WITH(load_text(model + "[model.layers.1]\nnum_experts = 3\n[model.layers.01]\nnum_experts = 5\n"),
                    Contains("model.layers.01: expected a block number without leading zeros (1)"));
  CHECK(load_text(model + "[model.layers.0]\nd_state = 3\n").model.layers.at(0).d_state == 3);
  CHECK_THROWS_WITH(load_text(model + "positional = [\"learned\", \"rotary\", \"learned\"]\n"),
                    Contains("model.positional: \"learned\" is listed twice"));
  CHECK_THROWS_WITH(load_text(model, {"output.name=\"../x\""}), Contains("output.name: expected a folder name"));
  CHECK_THROWS_WITH(load_text(model, {"output.name=\"\""}), Contains("output.name: expected a folder name"));
}

TEST_CASE("an error about a value given by --set names the assignment, not a line of the file", "[config]") {
  // The file's [router] table is at line 3; the bad key and value come from the command line.
  const std::string text = "[model]\ndim = 8\n[router]\nname = \"switch\"\n";
  CHECK_THROWS_WITH(build_text(text, {"router.top_k=2"}),
                    StartsWith("--set router.top_k=2: router.top_k: unknown key") && Contains("capacity_factor"));
  CHECK_THROWS_WITH(load_text(text, {"model.d_state=abc"}),
                    StartsWith("--set model.d_state=abc: model.d_state: expected an integer"));
  // A value the file had and --set replaced is the assignment's too.
  CHECK_THROWS_WITH(load_text(text, {"model.dim=0"}), StartsWith("--set model.dim=0: model.dim: expected an integer >= 1"));
  // A table created by --set is named with its assignment.
  CHECK_THROWS_WITH(build_text(text, {"router.x.y=1"}), StartsWith("--set router.x.y=1: router.x: unknown key"));
  CHECK_THROWS_WITH(load_text(text, {"modle.dim=8"}), StartsWith("--set modle.dim=8: modle: unknown table"));
  // A key next to one given by --set keeps its file and line.
  const std::string path = write_experiment("[model]\ndim = 8\nd_state = \"big\"\n");
  CHECK_THROWS_WITH(load_experiment(path, {"model.dim=16", "model.dims=1"}), StartsWith(path + ":3: model.d_state"));
}

TEST_CASE("per-block keys ([model.layers.i]) are checked against the block's kind", "[config]") {
  const std::string model = "[model]\ndim = 8\ndepth = 2\norder = [\"mamba\", \"moe\"]\nnum_experts = 3\n";
  const Experiment experiment = load_text(model + "[model.layers.2]\nd_state = 32\ndt_rank = \"auto\"\n"
                                                  "[model.layers.3]\nexpert_dim = 5\n");
  REQUIRE(experiment.model.layers.size() == 2);
  CHECK(experiment.model.block(0).d_state == 64);
  CHECK(experiment.model.block(2).d_state == 32);
  CHECK(experiment.model.block(2).dt_rank == 1);  // ceil(8 / 16)
  CHECK(experiment.model.block(3).expert_dim == 5);
  CHECK(experiment.model.block(1).expert_dim == 2048);
  CHECK(experiment.model.block(3).num_experts == 3);

  // A key the block's kind does not take, with the file's line and the keys it does take.
  const std::string path = write_experiment(model + "[model.layers.1]\nd_state = 4\n");
  CHECK_THROWS_WITH(load_experiment(path, {}),
                    StartsWith(path + ":7: model.layers.1.d_state: block 1 is a moe block, which takes only: "
                                      "num_experts, expert_dim, router"));
  CHECK_THROWS_WITH(load_text(model + "[model.layers.0]\nrouter = { name = \"topk\" }\n"),
                    Contains("model.layers.0.router: block 0 is a mamba block, which takes only: d_state"));
  // Block numbers: 0 to 3 here.
  CHECK_THROWS_WITH(load_text(model + "[model.layers.4]\nd_state = 4\n"),
                    Contains("model.layers.4: no such block: the model has 4 blocks, numbered 0 to 3"));
  CHECK_THROWS_WITH(load_text(model + "[model.layers.last]\nd_state = 4\n"),
                    Contains("model.layers.last: expected a block number"));
  CHECK_THROWS_WITH(load_text(model + "layers = 3\n"), Contains("model.layers: expected a table, found an integer"));
  CHECK_THROWS_WITH(load_text(model, {"model.layers.2=3"}), Contains("model.layers.2: expected a table"));
  // Values are checked as in [model].
  CHECK_THROWS_WITH(load_text(model + "[model.layers.2]\nd_conv = 0\n"),
                    Contains("model.layers.2.d_conv: expected an integer >= 1, found 0"));
  CHECK_THROWS_WITH(load_text(model + "[model.layers.3]\nnum_experts = 0\n"),
                    Contains("model.layers.3.num_experts: expected an integer >= 1"));
  // A block's router table is checked when the model is built, its keys against its own router.
  CHECK_THROWS_WITH(build_text(model + "[model.layers.3.router]\nname = \"topk\"\ntop_k = 4\n"),
                    Contains("model.layers.3.router.top_k: expected at most block 3's num_experts = 3"));
  // [router]'s top_k against a block's own, smaller num_experts: the error names that block.
  CHECK_THROWS_WITH(build_text(model + "[router]\nname = \"topk\"\ntop_k = 3\n[model.layers.1]\nnum_experts = 2\n"),
                    Contains("router.top_k: expected at most block 1's num_experts = 2, found 3"));
  CHECK_THROWS_WITH(build_text(model + "[model.layers.3.router]\ntop_k = 2\n"),
                    Contains("model.layers.3.router.top_k: unknown key"));  // the switch router has no top_k
  CHECK_THROWS_WITH(build_text(model + "[model.layers.3.router]\nname = \"best\"\n"),
                    Contains("model.layers.3.router.name: unknown router \"best\"; valid:"));
  CHECK_NOTHROW(build_text(model + "[model.layers.3]\nnum_experts = 4\n[model.layers.3.router]\nname = \"topk\"\n"
                                   "top_k = 4\n"));
}

TEST_CASE("[router] is read by the router it names even when no block routes through it", "[config]") {
  // No moe block: [router]'s keys are those of its router (sinkhorn: iterations, gate), values checked.
  const std::string mamba_only = "[model]\ndim = 8\norder = [\"mamba\"]\n[router]\nname = \"sinkhorn\"\n";
  CHECK_NOTHROW(build_text(mamba_only + "iterations = 3\ngate = \"sigmoid\"\nshared_experts = 1\n"));
  CHECK_THROWS_WITH(build_text(mamba_only + "iterations = 0\n"),
                    Contains("router.iterations: expected an integer from 1 to 1000, found 0"));
  CHECK_THROWS_WITH(build_text(mamba_only + "top_k = 2\n"), Contains("router.top_k: unknown key") &&
                                                                  Contains("iterations"));
  // Every moe block with a router of its own: [router] is still checked as sinkhorn, and a block's router
  // takes from it only the keys that router reads.
  const std::string overridden = "[model]\ndim = 8\nnum_experts = 3\norder = [\"mamba\", \"moe\"]\n"
                                 "[model.layers.1.router]\nname = \"topk\"\ntop_k = 2\n"
                                 "[router]\nname = \"sinkhorn\"\ncapacity_factor = 2.0\n";
  CHECK_NOTHROW(build_text(overridden + "iterations = 3\n"));
  CHECK_THROWS_WITH(build_text(overridden + "iterations = 0\n"), Contains("router.iterations: expected an integer"));
  CHECK_THROWS_WITH(build_text(overridden + "bogus = 1\n"), Contains("router.bogus: unknown key"));
}

TEST_CASE("unknown registry names list the valid ones", "[config]") {
  CHECK_THROWS_WITH(load_text("[model]\norder = [\"mamba\", \"attention\"]\n"),
                    Contains("model.order") && Contains("\"attention\"") && Contains("mamba, mlp, moe"));
  CHECK_THROWS_WITH(load_text("[model]\nnorm = \"batchnorm\"\n"), Contains("rmsnorm") && Contains("layernorm"));
  CHECK_THROWS_WITH(load_text("[model]\npositional = [\"alibi\"]\n"), Contains("learned, rotary"));
  CHECK_THROWS_WITH(load_text("[router]\nname = \"best\"\n"), Contains("router.name") && Contains("switch"));
  CHECK_THROWS_WITH(build_text("[task]\nname = \"chess\"\n"), Contains("task.name") && Contains("forward"));
}

TEST_CASE("unknown keys and tables are errors that list the valid ones", "[config]") {
  CHECK_THROWS_WITH(build_text("[model]\ndim = 8\ndimm = 8\n"),
                    Contains(":3") && Contains("model.dimm") && Contains("unknown key") && Contains("d_state"));
  CHECK_THROWS_WITH(build_text("[router]\ntop_k = 2\n"), Contains("router.top_k") && Contains("capacity_factor"));
  CHECK_THROWS_WITH(build_text("[task]\nbatch = 2\n"), Contains("task.batch") && Contains("batch_size"));
  CHECK_THROWS_WITH(load_text("[modle]\ndim = 8\n"), Contains("modle") && Contains("model, router"));
  CHECK_THROWS_WITH(load_text("[run]\nbackend = \"tpu\"\n"), Contains("run.backend") && Contains("auto, cpu, cuda"));
}

TEST_CASE("impossible shapes are refused before any math", "[config]") {
  CHECK_THROWS_WITH(load_text("[model]\ndim = 7\npositional = [\"rotary\"]\n"),
                    Contains("rotary needs an even dim") && Contains("7"));
  CHECK_THROWS_WITH(build_text("[model]\nmax_seq_len = 16\n[task]\nseq_len = 32\n"),
                    Contains("task.seq_len") && Contains("max_seq_len = 16"));
  CHECK_THROWS_WITH(load_text("[model]\norder = []\n"), Contains("at least one block"));
}

TEST_CASE("sizes whose tensors overflow or cannot fit in memory are refused before the memory is touched",
          "[config]") {
  const std::string small = "[model]\ndim = 8\ndepth = 1\nnum_experts = 2\nexpert_dim = 8\nd_state = 4\n"
                            "vocab_size = 16\nmax_seq_len = 64\n[task]\nname = \"induction_heads\"\nseq_len = 32\n";
  // A shape whose element count wraps around 64 bits, as a learned position table of 2^63 - 1 rows would.
  CHECK_THROWS_WITH(build_text(small, {"model.max_seq_len=9223372036854775807", "model.positional=[\"learned\"]"}),
                    Contains("parameter backbone.pos_emb: shape (9223372036854775807, 8) has more elements than a "
                             "64-bit count holds"));
  // Parameters and gradients beyond this machine's memory (64 TiB here, beyond any machine): the first one
  // past it is named with its shape.
  CHECK_THROWS_WITH(build_text(small, {"model.vocab_size=2147483647", "model.dim=4096"}),
                    Contains("parameter backbone.embedding.weight (2147483647, 4096): the model's parameters and their "
                             "gradients would need") &&
                        Contains("this machine has"));
  // A depth that cannot fit is refused after one repeat of the order, from that repeat's size.
  CHECK_THROWS_WITH(build_text(small, {"model.depth=1000000000"}),
                    Contains("model.depth = 1000000000: 1000000000 repeats of mamba, moe with") &&
                        Contains("parameters each would need about"));
  CHECK_THROWS_WITH(load_text(small, {"model.depth=9000000000000000000"}),
                    Contains("model.depth: expected at most 1073741823 repeats of the 2 blocks of order"));
  // One activation of the batch beyond memory, where B·L·D would also wrap around.
  CHECK_THROWS_WITH(build_text(small, {"task.batch_size=576460752303423489"}),
                    Contains("task.batch_size: 576460752303423489 sequences of seq_len 32 with model.vocab_size 16 "
                             "floats a position: one activation alone needs"));
  CHECK_THROWS_WITH(build_text(small, {"task.name=\"forward\"", "model.vocab_size=0", "task.batch_size=4000000000",
                                       "task.seq_len=64"}),
                    Contains("task.batch_size: 4000000000 sequences of seq_len 64 with model.dim 8"));
  CHECK_NOTHROW(build_text(small));
}

TEST_CASE("a TOML syntax error names the file and line", "[config]") {
  const std::string path = write_experiment("[model]\ndim = = 3\n");
  CHECK_THROWS_AS(load_experiment(path, {}), ConfigError);
  CHECK_THROWS_WITH(load_experiment(path, {}), Contains(path + ":2") && Contains("syntax"));
  CHECK_THROWS_WITH(load_experiment("/nonexistent/x.toml", {}), Contains("cannot open"));
}

TEST_CASE("the shipped experiment files load and build", "[config]") {
  for (const auto& entry : std::filesystem::directory_iterator(std::string(MAMBA_R1_SOURCE_DIR) + "/experiments")) {
    if (entry.path().extension() != ".toml") continue;
    INFO(entry.path());
    CHECK_NOTHROW(build_experiment(load_experiment(entry.path().string(), {})));
  }
}

TEST_CASE("the effective settings: every value read, defaults included, as TOML that reads back", "[config]") {
  const Experiment experiment =
      load_text("[model]\ndim = 8\norder = [\"mamba\", \"moe\"]\nnum_experts = 3\nvocab_size = 5\n"
                "[model.layers.1.router]\nname = \"topk\"\n[training]\nlearning_rate = 3e-3\n",
                {"router.capacity_factor=2.0"});
  build_experiment(experiment);
  const std::string text = experiment.file.effective_toml();
  INFO(text);
  const toml::table effective = toml::parse(text);
  CHECK(effective["model"]["dim"].value<int64_t>() == 8);
  CHECK(effective["model"]["d_state"].value<int64_t>() == 64);  // the default, not in the file
  CHECK(effective["model"]["dt_rank"].value<int64_t>() == 1);    // "auto": ceil(8 / 16), the rank used
  CHECK(effective["model"]["norm"].value<std::string>() == "rmsnorm");
  CHECK(effective["router"]["name"].value<std::string>() == "switch");
  CHECK(effective["router"]["capacity_factor"].value<double>() == 2.0);  // from --set
  // Block 1's router: its own name, top_k's default for topk, capacity_factor from [router].
  CHECK(effective["model"]["layers"]["1"]["router"]["name"].value<std::string>() == "topk");
  CHECK(effective["model"]["layers"]["1"]["router"]["top_k"].value<int64_t>() == 2);
  CHECK(effective["model"]["layers"]["1"]["router"]["capacity_factor"].value<double>() == 2.0);
  CHECK(effective["task"]["name"].value<std::string>() == "forward");
  // [training] is read by the trainer, which has not run here.
  CHECK_FALSE(effective.contains("training"));
  // Floats as the shortest text that reads back: 0.003, not 0.0030000000000000001.
  CHECK_THAT(experiment.file.to_toml(), Contains("\nlearning_rate = 0.003\n"));
  CHECK_THAT(text, Contains("\n[model.layers.1.router]\n"));
  CHECK(text.find("[model.layers]\n") == std::string::npos);  // no header for a table of tables only

  // dt_rank = "auto" given, in [model] and in a block's keys: the rank it stood for.
  const Experiment named = load_text("[model]\ndim = 40\norder = [\"mamba\"]\ndepth = 2\ndt_rank = \"auto\"\n"
                                     "[model.layers.1]\ndt_rank = \"auto\"\nd_state = 4\n");
  build_experiment(named);
  const toml::table resolved = toml::parse(named.file.effective_toml());
  CHECK(resolved["model"]["dt_rank"].value_exact<int64_t>() == 3);  // ceil(40 / 16)
  CHECK(resolved["model"]["layers"]["1"]["dt_rank"].value_exact<int64_t>() == 3);

  // aux_free and expert_choice apply aux_loss_coef only when it is given: without it the value used, 0, is
  // recorded (not [router]'s default 0.01), so that effective.toml runs the same run again.
  for (const std::string router : {"aux_free", "expert_choice"}) {
    CAPTURE(router);
    const std::string base =
        "[model]\ndim = 8\norder = [\"moe\"]\nnum_experts = 2\n[router]\nname = \"" + router + "\"\n";
    const Experiment implicit = load_text(base);
    build_experiment(implicit);
    CHECK(toml::parse(implicit.file.effective_toml())["router"]["aux_loss_coef"].value<double>() == 0.0);
    const Experiment given = load_text(base + "aux_loss_coef = 0.02\n");
    build_experiment(given);
    CHECK(toml::parse(given.file.effective_toml())["router"]["aux_loss_coef"].value<double>() == 0.02);
  }
  const Experiment switch_router = load_text("[model]\ndim = 8\norder = [\"moe\"]\nnum_experts = 2\n");
  build_experiment(switch_router);
  CHECK(toml::parse(switch_router.file.effective_toml())["router"]["aux_loss_coef"].value<double>() == 0.01);

  // The routers' own defaults, as documented in their descriptions, recorded when not given.
  const auto effective_router = [&](const std::string& router_keys) {
    const Experiment built =
        load_text("[model]\ndim = 8\norder = [\"moe\"]\nnum_experts = 4\n[router]\n" + router_keys);
    build_experiment(built);
    return toml::parse(built.file.effective_toml());  // the table, by value
  };
  CHECK(effective_router("name = \"sinkhorn\"\n")["router"]["iterations"].value_exact<int64_t>() == 8);
  CHECK(effective_router("name = \"sinkhorn\"\n")["router"]["gate"].value<std::string>() == "softmax");
  CHECK(effective_router("name = \"noisy_topk\"\n")["router"]["noise"].value<std::string>() == "learned");
  CHECK(effective_router("name = \"noisy_topk\"\nnoise = \"fixed\"\n")["router"]["noise_std"].value<double>() ==
        1.0);
  CHECK(effective_router("name = \"topk\"\n")["router"]["top_k"].value_exact<int64_t>() == 2);
}
