// The task registry and its built-in tasks.
#include <cmath>

#include "blocks/random.h"
#include "experiments/task.h"

namespace mr1 {

Registry<TaskFactory>& task_registry() {
  static Registry<TaskFactory> registry("task");
  return registry;
}

namespace {

// The seed README's usage: a random (batch, length, dim) N(0, 1) input with an all-ones mask
// (or token ids uniform over the vocabulary when vocab_size > 0). Nothing is scored.
class ForwardTask : public Task {
 public:
  explicit ForwardTask(const TaskContext& context)
      : model_(context.model),
        seed_(context.seed),
        batch_size_(context.table.get_int("batch_size", 4, 1)),
        length_(context.table.get_int("seq_len", 512, 1)),
        mask_(context.table.get_choice("mask", "ones", {"ones", "none", "random"})) {
    if (length_ > model_.max_seq_len) {
      context.table.fail("seq_len", "is " + std::to_string(length_) + ", more than model.max_seq_len = " +
                                        std::to_string(model_.max_seq_len));
    }
    check_batch_fits(context, batch_size_, length_);
  }

  Batch batch(Split split, int64_t index) override {
    Random random(seed_ * 1000003 + static_cast<uint64_t>(index) * 2 + (split == Split::eval));
    Batch batch;
    ModelInput& input = batch.input;
    input.batch = batch_size_;
    input.length = length_;
    const int64_t T = batch_size_ * length_;
    if (model_.vocab_size > 0) {
      input.tokens.resize(static_cast<size_t>(T));
      for (auto& id : input.tokens) id = static_cast<int32_t>(random.below(model_.vocab_size));
    } else {
      input.embeddings = Tensor({batch_size_, length_, model_.dim});
      random.fill_normal(input.embeddings, 0.0, 1.0);
    }
    if (mask_ == "ones") input.mask.assign(static_cast<size_t>(T), 1);
    if (mask_ == "random") {
      input.mask.resize(static_cast<size_t>(T));
      for (auto& keep : input.mask) keep = random.uniform(0, 1) < 0.9 ? 1 : 0;
    }
    return batch;
  }

  bool trainable() const override { return false; }

  std::string describe() const override {
    return "forward: random input (" + std::to_string(batch_size_) + ", " + std::to_string(length_) +
           (model_.vocab_size > 0 ? ") token ids" : ", " + std::to_string(model_.dim) + ") embeddings") +
           ", mask " + mask_;
  }

 private:
  ModelConfig model_;
  uint64_t seed_;
  int64_t batch_size_, length_;
  std::string mask_;
};

}  // namespace

void register_tasks() {
  auto& registry = task_registry();
  registry.add("forward", "the seed example: one random input through the model, timed (no training)",
               [](const TaskContext& context) -> std::unique_ptr<Task> {
                 return std::make_unique<ForwardTask>(context);
               });
  register_training_tasks();
}

}  // namespace mr1
