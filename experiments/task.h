// Tasks: where a run's batches come from (synthetic tasks generated from a seed, text files, or
// the seed example's random input), and which positions are scored. Each task is a registered entry.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "blocks/model.h"
#include "registry/config.h"
#include "registry/model_config.h"
#include "registry/registry.h"

namespace mr1 {

class Random;

enum class Split { train, eval };

struct Batch {
  ModelInput input;               // tokens or embeddings, and the mask
  std::vector<int32_t> targets;   // B·L: the token expected at each position, −1 = not scored; empty = no loss
};

class Task {
 public:
  virtual ~Task() = default;
  // A batch of the split; the same (split, index) always gives the same batch for a given task seed.
  virtual Batch batch(Split split, int64_t index) = 0;
  // false for tasks that only run the model (the seed example's "forward").
  virtual bool trainable() const { return true; }
  // One line for the log: "selective_copying: 16 tokens to copy among 256, vocab 16".
  virtual std::string describe() const = 0;
};

// table: the [task] table (the task reads its keys from it); model: checked against the task's needs.
struct TaskContext {
  const ConfigTable& table;
  const ModelConfig& model;
  uint64_t seed;
};

using TaskFactory = std::function<std::unique_ptr<Task>(const TaskContext&)>;
Registry<TaskFactory>& task_registry();

// Shared by the training tasks (experiments/synthetic_tasks.cpp):
// the seed of batch (split, index), mixed with splitmix64 so that splits never share a stream;
uint64_t batch_seed(uint64_t task_seed, Split split, int64_t index);
// [task] batch_size (default 32) and seq_len (checked against model.max_seq_len);
int64_t read_batch_size(const TaskContext& context);
int64_t read_seq_len(const TaskContext& context, int64_t default_length);
// a batch of B sequences of length L whose activations cannot fit in memory is an error naming batch_size;
void check_batch_fits(const TaskContext& context, int64_t batch_size, int64_t length);
// a task on token ids needs model.vocab_size > 0.
void require_token_input(const TaskContext& context, const std::string& task_name);
std::unique_ptr<Task> make_text_task(const TaskContext& context);
void register_training_tasks();

}  // namespace mr1
