// The training tasks (selective_copying, induction_heads, mqar, text): batch shapes, which positions
// are scored, answers recomputed from the tokens, determinism, splits and config errors.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include <unistd.h>

#include "experiments/task.h"
#include "test_util.h"

using namespace mr1;
using Catch::Matchers::Contains;

namespace {

const std::string kSourceDir = MAMBA_R1_SOURCE_DIR;
const std::string kCorpus = kSourceDir + "/experiments/data/tiny_corpus.txt";

ModelConfig token_model(int64_t vocab_size, int64_t max_seq_len = 2048) {
  ModelConfig model;
  model.vocab_size = vocab_size;
  model.max_seq_len = max_seq_len;
  return model;
}

// Builds the task named in `task_toml` (the body of a [task] table) against `model`. `file` is the
// experiment file it pretends to come from (relative text paths are read from its folder).
std::unique_ptr<Task> make_task(const std::string& task_toml, const ModelConfig& model, uint64_t seed = 7,
                                const std::string& file = "test.toml") {
  register_all();
  const ExperimentFile experiment = ExperimentFile::parse("[task]\n" + task_toml, file);
  const ConfigTable table = experiment.table("task");
  auto task = task_registry().get(table.get_string("name", ""))(TaskContext{table, model, seed});
  table.reject_unknown_keys();  // every key the tests set is one the task reads
  return task;
}

// The message of the ConfigError that building the task throws ("no ConfigError" when it builds);
// any other exception escapes and fails the test.
std::string config_error(const std::string& task_toml, const ModelConfig& model,
                         const std::string& file = "test.toml") {
  try {
    make_task(task_toml, model, 7, file);
  } catch (const ConfigError& error) {
    return error.what();
  }
  return "no ConfigError";
}

// Checks the shapes every training batch shares: (B·L) tokens and targets, an all-ones mask.
void require_batch_shape(const Batch& batch, int64_t B, int64_t L) {
  REQUIRE(batch.input.batch == B);
  REQUIRE(batch.input.length == L);
  REQUIRE(batch.input.tokens.size() == static_cast<size_t>(B * L));
  REQUIRE(batch.targets.size() == static_cast<size_t>(B * L));
  REQUIRE(batch.input.embeddings.numel() == 0);
  REQUIRE((batch.input.mask.empty() ||
           std::all_of(batch.input.mask.begin(), batch.input.mask.end(), [](uint8_t keep) { return keep == 1; })));
}

// The scored positions of row b (targets != −1).
std::vector<int64_t> scored_positions(const Batch& batch, int64_t b) {
  std::vector<int64_t> positions;
  const int64_t L = batch.input.length;
  for (int64_t t = 0; t < L; ++t) {
    if (batch.targets[b * L + t] != -1) positions.push_back(t);
  }
  return positions;
}

std::vector<int64_t> range(int64_t begin, int64_t end) {
  std::vector<int64_t> values;
  for (int64_t i = begin; i < end; ++i) values.push_back(i);
  return values;
}

bool same_batch(const Batch& a, const Batch& b) {
  return a.input.tokens == b.input.tokens && a.targets == b.targets;
}

std::string read_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

std::string write_temp_file(const std::string& text) {
  static int counter = 0;
  const auto path = std::filesystem::temp_directory_path() /
                    ("mamba_r1_tasks_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + ".txt");
  std::ofstream(path, std::ios::binary) << text;
  return path.string();
}

}  // namespace

TEST_CASE("the training tasks are registered, each with a description", "[tasks]") {
  make_task("name = \"mqar\"", token_model(64));
  for (const std::string name : {"forward", "selective_copying", "induction_heads", "mqar", "text"}) {
    INFO(name);
    REQUIRE(task_registry().contains(name));
    CHECK_FALSE(task_registry().description(name).empty());
  }
}

TEST_CASE("selective_copying: the data tokens of the region are copied, in order, after the marker", "[tasks]") {
  const int64_t B = 8, L = 64, n = 6, V = 12;
  auto task = make_task("name = \"selective_copying\"\nbatch_size = 8\nseq_len = 64\nnum_tokens = 6", token_model(V));
  CHECK(task->trainable());
  CHECK_THAT(task->describe(), Contains("selective_copying"));
  const Batch batch = task->batch(Split::train, 0);
  require_batch_shape(batch, B, L);

  const int64_t R = L - n - 1;  // the region; the marker sits at R
  std::set<std::vector<int32_t>> layouts;
  for (int64_t b = 0; b < B; ++b) {
    INFO("row " << b);
    const int32_t* tokens = &batch.input.tokens[b * L];
    const int32_t* targets = &batch.targets[b * L];
    std::vector<int32_t> data;            // the region's data tokens, in order
    std::vector<int32_t> data_positions;
    for (int64_t t = 0; t < R; ++t) {
      REQUIRE(tokens[t] != 1);            // the marker only follows the region
      REQUIRE((tokens[t] == 0 || (tokens[t] >= 2 && tokens[t] < V)));
      if (tokens[t] != 0) {
        data.push_back(tokens[t]);
        data_positions.push_back(static_cast<int32_t>(t));
      }
    }
    layouts.insert(data_positions);
    REQUIRE(data.size() == static_cast<size_t>(n));
    REQUIRE(tokens[R] == 1);
    REQUIRE(scored_positions(batch, b) == range(R, L - 1));
    for (int64_t k = 0; k < n; ++k) {
      CHECK(targets[R + k] == data[k]);        // the answer, recomputed from the region
      CHECK(targets[R + k] == tokens[R + k + 1]);  // the LM convention: the next token
    }
  }
  CHECK(layouts.size() > 1);  // the data positions are random, not fixed
}

TEST_CASE("induction_heads: only the final trigger is scored, and its answer follows the first trigger", "[tasks]") {
  const int64_t B = 16, L = 32, V = 10;
  auto task = make_task("name = \"induction_heads\"\nbatch_size = 16\nseq_len = 32", token_model(V));
  CHECK_THAT(task->describe(), Contains("induction_heads"));
  const Batch batch = task->batch(Split::train, 0);
  require_batch_shape(batch, B, L);

  std::set<int64_t> first_triggers;
  for (int64_t b = 0; b < B; ++b) {
    INFO("row " << b);
    const int32_t* tokens = &batch.input.tokens[b * L];
    REQUIRE(scored_positions(batch, b) == std::vector<int64_t>{L - 2});
    const int32_t trigger = tokens[L - 2];
    const int64_t first = std::find(tokens, tokens + L, trigger) - tokens;
    REQUIRE(first < L - 3);
    REQUIRE(std::count(tokens, tokens + L, trigger) == 2);  // once early, once at the end
    first_triggers.insert(first);
    CHECK(batch.targets[b * L + L - 2] == tokens[first + 1]);
    CHECK(batch.targets[b * L + L - 2] == tokens[L - 1]);
    for (int64_t t = 0; t < L; ++t) REQUIRE((tokens[t] >= 0 && tokens[t] < V));
  }
  CHECK(first_triggers.size() > 1);
}

TEST_CASE("mqar: each query is scored with the value paired with its key earlier in the sequence", "[tasks]") {
  const int64_t B = 16, L = 48, P = 8, Q = 5, V = 40;
  auto task =
      make_task("name = \"mqar\"\nbatch_size = 16\nseq_len = 48\nnum_pairs = 8\nnum_queries = 5", token_model(V));
  CHECK_THAT(task->describe(), Contains("mqar"));
  const Batch batch = task->batch(Split::train, 0);
  require_batch_shape(batch, B, L);

  bool some_query_out_of_order = false;
  for (int64_t b = 0; b < B; ++b) {
    INFO("row " << b);
    const int32_t* tokens = &batch.input.tokens[b * L];
    std::set<int32_t> keys;
    for (int64_t i = 0; i < P; ++i) {
      REQUIRE((tokens[2 * i] >= 1 && tokens[2 * i] < V / 2));       // keys: the lower half
      REQUIRE((tokens[2 * i + 1] >= V / 2 && tokens[2 * i + 1] < V));  // values: the upper half
      keys.insert(tokens[2 * i]);
    }
    REQUIRE(keys.size() == static_cast<size_t>(P));  // distinct, so every query has one answer

    std::vector<int64_t> queries;
    for (int64_t j = 0; j < Q; ++j) queries.push_back(2 * (P + j));
    REQUIRE(scored_positions(batch, b) == queries);
    std::set<int32_t> queried;
    int64_t previous_pair = -1;
    for (int64_t t : queries) {
      const int32_t key = tokens[t];
      queried.insert(key);
      const int64_t pair = std::find(tokens, tokens + 2 * P, key) - tokens;
      REQUIRE(pair < 2 * P);
      REQUIRE(pair % 2 == 0);
      CHECK(batch.targets[b * L + t] == tokens[pair + 1]);  // the value recalled
      CHECK(batch.targets[b * L + t] == tokens[t + 1]);     // the LM convention: the next token
      if (pair < previous_pair) some_query_out_of_order = true;
      previous_pair = pair;
    }
    CHECK(queried.size() == static_cast<size_t>(Q));
    for (int64_t t = 2 * (P + Q); t < L; ++t) REQUIRE(tokens[t] == 0);  // padding, never scored
  }
  CHECK(some_query_out_of_order);  // queries come in random order
}

TEST_CASE("text: every position predicts the next byte of a window of its own split", "[tasks]") {
  const int64_t B = 6, L = 100;
  // The path is relative to the (pretend) experiment file in experiments/.
  auto task = make_task("name = \"text\"\nbatch_size = 6\nseq_len = 100\npath = \"data/tiny_corpus.txt\"",
                        token_model(256), 7, kSourceDir + "/experiments/pretend.toml");
  CHECK_THAT(task->describe(), Contains("tiny_corpus.txt"));
  const std::string corpus = read_file(kCorpus);
  REQUIRE(corpus.size() > 20000);
  const size_t eval_begin = corpus.size() - static_cast<size_t>(0.1 * static_cast<double>(corpus.size()));
  const std::string train_part = corpus.substr(0, eval_begin), eval_part = corpus.substr(eval_begin);

  for (Split split : {Split::train, Split::eval}) {
    const Batch batch = task->batch(split, 2);
    require_batch_shape(batch, B, L);
    for (int64_t b = 0; b < B; ++b) {
      INFO("row " << b << (split == Split::train ? " of train" : " of eval"));
      REQUIRE(scored_positions(batch, b) == range(0, L));
      std::string window;
      for (int64_t t = 0; t < L; ++t) window += static_cast<char>(batch.input.tokens[b * L + t]);
      window += static_cast<char>(batch.targets[b * L + L - 1]);
      for (int64_t t = 0; t + 1 < L; ++t) CHECK(batch.targets[b * L + t] == batch.input.tokens[b * L + t + 1]);
      // The whole window, last target included, lies within its split.
      CHECK((split == Split::train ? train_part : eval_part).find(window) != std::string::npos);
    }
  }
}

TEST_CASE("a batch depends only on the task seed, the split and the index", "[tasks]") {
  const std::vector<std::pair<std::string, ModelConfig>> tasks{
      {"name = \"selective_copying\"\nseq_len = 128", token_model(18)},
      {"name = \"induction_heads\"\nseq_len = 128", token_model(16)},
      {"name = \"mqar\"", token_model(64)},
      {"name = \"text\"\nseq_len = 64\npath = \"" + kCorpus + "\"", token_model(256)},
  };
  for (const auto& [toml, model] : tasks) {
    INFO(toml);
    auto task = make_task(toml, model, 7);
    auto same_seed = make_task(toml, model, 7);
    auto other_seed = make_task(toml, model, 8);
    const Batch batch = task->batch(Split::train, 3);
    require_batch_shape(batch, 32, batch.input.length);  // batch_size defaults to 32
    CHECK(same_batch(batch, task->batch(Split::train, 3)));
    CHECK(same_batch(batch, same_seed->batch(Split::train, 3)));
    CHECK_FALSE(same_batch(batch, task->batch(Split::train, 4)));
    CHECK_FALSE(same_batch(batch, task->batch(Split::eval, 3)));
    CHECK_FALSE(same_batch(batch, other_seed->batch(Split::train, 3)));
    CHECK(same_batch(task->batch(Split::eval, 0), same_seed->batch(Split::eval, 0)));
  }
}

TEST_CASE("a task's errors name the key and what is valid", "[tasks]") {
  SECTION("a vocabulary too small for the symbols and special tokens") {
    CHECK_THAT(config_error("name = \"selective_copying\"\nnum_symbols = 16", token_model(10)),
               Contains("task.num_symbols") && Contains("need model.vocab_size >= 18, found 10"));
    CHECK_THAT(config_error("name = \"selective_copying\"", token_model(2)),
               Contains("task.num_symbols") && Contains("need model.vocab_size >= 3, found 2"));
    CHECK_THAT(config_error("name = \"induction_heads\"", token_model(1)), Contains("task.num_symbols"));
    CHECK_THAT(config_error("name = \"mqar\"\nnum_pairs = 8", token_model(16)),
               Contains("task.num_pairs") && Contains("model.vocab_size >= 18"));
    CHECK_THAT(config_error("name = \"text\"\npath = \"" + kCorpus + "\"", token_model(100)),
               Contains("task.name") && Contains("vocab_size >= 256"));
  }
  SECTION("a model that takes embeddings, not token ids") {
    for (const std::string name : {"selective_copying", "induction_heads", "mqar"}) {
      CHECK_THAT(config_error("name = \"" + name + "\"", token_model(0)),
                 Contains("task.name") && Contains("model.vocab_size"));
    }
  }
  SECTION("seq_len beyond model.max_seq_len, or too short for the layout") {
    CHECK_THAT(config_error("name = \"induction_heads\"\nseq_len = 300", token_model(16, 256)),
               Contains("task.seq_len") && Contains("max_seq_len = 256"));
    CHECK_THAT(config_error("name = \"text\"\nseq_len = 300\npath = \"" + kCorpus + "\"", token_model(256, 256)),
               Contains("task.seq_len"));
    CHECK_THAT(config_error("name = \"selective_copying\"\nseq_len = 32", token_model(18)),
               Contains("task.seq_len") && Contains(">= 2*num_tokens + 1 = 33"));
    CHECK_THAT(config_error("name = \"mqar\"\nseq_len = 30\nnum_pairs = 8", token_model(64)),
               Contains("task.seq_len") && Contains(">= 2*(num_pairs + num_queries) = 32"));
    CHECK_THAT(config_error("name = \"mqar\"\nnum_pairs = 4\nnum_queries = 5", token_model(64)),
               Contains("task.num_queries"));
  }
  SECTION("a text file that is missing, unreadable or too short") {
    CHECK_THAT(config_error("name = \"text\"", token_model(256)), Contains("task.path") && Contains("missing"));
    CHECK_THAT(config_error("name = \"text\"\npath = \"no_such_corpus.txt\"", token_model(256),
                            "/tmp/experiments/x.toml"),
               Contains("task.path") && Contains("/tmp/experiments/no_such_corpus.txt"));
    CHECK_THAT(config_error("name = \"text\"\npath = \"/tmp\"", token_model(256)),
               Contains("task.path") && Contains("cannot read"));
    const std::string short_file = write_temp_file(std::string(1000, 'a'));
    CHECK_THAT(config_error("name = \"text\"\nseq_len = 256\npath = \"" + short_file + "\"", token_model(256)),
               Contains("task.path") && Contains(short_file) && Contains("1000 bytes"));
    std::filesystem::remove(short_file);
    CHECK_THAT(config_error("name = \"text\"\neval_fraction = 1.5\npath = \"" + kCorpus + "\"", token_model(256)),
               Contains("task.eval_fraction"));
  }
}
