// The synthetic training tasks (selective_copying, induction_heads, mqar), each generated from the
// task seed, and what every training task shares: the seed of a batch, [task] batch_size and seq_len.
//
// Every sequence follows the LM convention of task.h: the answers are part of the input (teacher
// forcing) and targets[t] = tokens[t + 1] at the scored positions, −1 elsewhere. Special tokens take
// the lowest ids; the data symbols follow them.
// Shape letters: B batch_size, L seq_len.
#include <algorithm>
#include <string>
#include <vector>

#include "blocks/random.h"
#include "experiments/task.h"

namespace mr1 {

// The seed of batch `index` of `split`: splitmix64 of the task seed, the index and the split, so that
// neighbouring indices, the two splits and neighbouring run seeds give unrelated streams.
uint64_t batch_seed(uint64_t task_seed, Split split, int64_t index) {
  auto mix = [](uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  };
  return mix(mix(mix(task_seed) ^ static_cast<uint64_t>(index)) ^ (split == Split::eval ? 0x5eed5eedull : 0));
}

// [task] batch_size (B).
int64_t read_batch_size(const TaskContext& context) { return context.table.get_int("batch_size", 32, 1); }

// [task] seq_len (L): the length of every sequence the model sees, at most model.max_seq_len.
int64_t read_seq_len(const TaskContext& context, int64_t default_length) {
  const int64_t length = context.table.get_int("seq_len", default_length, 1);
  if (length > context.model.max_seq_len) {
    context.table.fail("seq_len", "is " + std::to_string(length) + ", more than model.max_seq_len = " +
                                      std::to_string(context.model.max_seq_len));
  }
  return length;
}

// One activation of the batch, B·L rows of the model's widest per-position value (dim, or the logits over
// the vocabulary), must fit in memory; the model holds several, so this only stops the hopeless cases early.
void check_batch_fits(const TaskContext& context, int64_t batch_size, int64_t length) {
  const bool logits_widest = context.model.vocab_size > context.model.dim;
  const int64_t width = logits_widest ? context.model.vocab_size : context.model.dim;
  const long double bytes = 4.0L * static_cast<long double>(batch_size) * static_cast<long double>(length) *
                            static_cast<long double>(width);
  if (fits_in_host_memory(bytes)) return;
  context.table.fail("batch_size", std::to_string(batch_size) + " sequences of seq_len " + std::to_string(length) +
                                       " with " + (logits_widest ? "model.vocab_size " : "model.dim ") +
                                       std::to_string(width) + " floats a position: one activation alone needs " +
                                       gib_string(bytes) + ", and " + host_memory_text());
}

// Tasks on token ids need model.vocab_size > 0 (0 means the model takes embeddings).
void require_token_input(const TaskContext& context, const std::string& task_name) {
  if (context.model.vocab_size <= 0) {
    context.table.fail("name", task_name + " feeds token ids: set model.vocab_size > 0 (found " +
                                   std::to_string(context.model.vocab_size) + ", which means embedding input)");
  }
}

namespace {

// A task whose sequences are made one at a time by fill_sequence, from one generator per batch.
class SyntheticTask : public Task {
 public:
  SyntheticTask(const TaskContext& context, const std::string& name, int64_t default_length)
      : seed_(context.seed),
        shape_{read_batch_size(context), read_seq_len(context, default_length)} {
    require_token_input(context, name);
    check_batch_fits(context, shape_.batch_size, shape_.length);
  }

  Batch batch(Split split, int64_t index) override {
    Random random(batch_seed(seed_, split, index));
    const int64_t B = shape_.batch_size, L = shape_.length;
    Batch batch;
    batch.input.batch = B;
    batch.input.length = L;
    batch.input.tokens.resize(static_cast<size_t>(B * L));
    batch.input.mask.assign(static_cast<size_t>(B * L), 1);
    batch.targets.assign(static_cast<size_t>(B * L), -1);
    std::vector<int32_t> scratch;
    for (int64_t b = 0; b < B; ++b) {
      fill_sequence(random, batch.input.tokens.data() + b * L, batch.targets.data() + b * L, scratch);
    }
    return batch;
  }

 protected:
  // tokens (L): the sequence; targets (L), all −1 on entry: set to tokens[t + 1] where scored.
  // scratch: the batch's working memory, shared by its sequences (so that none allocates).
  virtual void fill_sequence(Random& random, int32_t* tokens, int32_t* targets,
                             std::vector<int32_t>& scratch) const = 0;

  std::string shape_text() const {
    return "batch " + std::to_string(shape_.batch_size) + " x " + std::to_string(shape_.length);
  }

  struct Shape {
    int64_t batch_size;  // B
    int64_t length;      // L
  };
  uint64_t seed_;
  Shape shape_;
};

// [task] num_symbols: the data symbols of a task whose `special` lowest ids are special tokens
// (`special_names`); by default every id they leave. Checked against model.vocab_size.
int64_t read_symbol_count(const TaskContext& context, int64_t special, const std::string& special_names) {
  const int64_t V = context.model.vocab_size;
  const int64_t symbols = context.table.get_int("num_symbols", V - special, 1);
  const std::string specials = std::to_string(special) + (special == 1 ? " special id (" : " special ids (") +
                               special_names + ")";
  if (symbols < 1) {
    context.table.fail("num_symbols", "defaults to model.vocab_size - " + std::to_string(special) + " = " +
                                          std::to_string(symbols) + ": " + specials +
                                          " and at least one data symbol need model.vocab_size >= " +
                                          std::to_string(special + 1) + ", found " + std::to_string(V));
  }
  if (symbols + special > V) {
    context.table.fail("num_symbols", "is " + std::to_string(symbols) + ": " + std::to_string(symbols) +
                                          " data symbols and " + specials + " need model.vocab_size >= " +
                                          std::to_string(symbols + special) + ", found " + std::to_string(V) +
                                          (V > special ? "; num_symbols can be at most " + std::to_string(V - special)
                                                       : std::string()));
  }
  return symbols;
}

// Selective copying (Gu & Dao 2023, §4.1.1). With n = num_tokens and R = L − n − 1:
//   positions 0..R−1   the region: n data tokens at random distinct positions, in order, the rest noise
//   position  R        the marker
//   positions R+1..L−1 the n data tokens again, in the order they appear in the region
// Scored: positions R..L−2 (the marker and every copied token but the last), each predicting the
// next data token. Ids: 0 noise, 1 marker, 2..num_symbols+1 data symbols (drawn uniformly).
class SelectiveCopyingTask : public SyntheticTask {
 public:
  static constexpr int32_t kNoise = 0, kMarker = 1, kFirstSymbol = 2;

  explicit SelectiveCopyingTask(const TaskContext& context)
      : SyntheticTask(context, "selective_copying", 256),
        token_count_(context.table.get_int("num_tokens", 16, 1)),
        symbol_count_(read_symbol_count(context, 2, "noise, marker")) {
    if (shape_.length < 2 * token_count_ + 1) {
      context.table.fail("seq_len", "is " + std::to_string(shape_.length) + ": " + std::to_string(token_count_) +
                                        " tokens to copy need seq_len >= 2*num_tokens + 1 = " +
                                        std::to_string(2 * token_count_ + 1) +
                                        " (a region of at least num_tokens, the marker, the copy)");
    }
  }

  std::string describe() const override {
    return "selective_copying: copy " + std::to_string(token_count_) + " tokens (of " +
           std::to_string(symbol_count_) + " symbols) scattered among " + std::to_string(region_length()) +
           " positions of noise, then a marker, " + shape_text();
  }

 protected:
  void fill_sequence(Random& random, int32_t* tokens, int32_t* targets, std::vector<int32_t>&) const override {
    const int64_t n = token_count_, R = region_length();
    int32_t* copy = tokens + R + 1;
    for (int64_t k = 0; k < n; ++k) copy[k] = kFirstSymbol + static_cast<int32_t>(random.below(symbol_count_));
    // n distinct region positions (Floyd's sampling), flagged with the marker id, which the region never
    // holds otherwise; then the flagged slots get the data tokens in order.
    std::fill(tokens, tokens + R, kNoise);
    for (int64_t j = R - n; j < R; ++j) {
      const int64_t pick = random.below(j + 1);
      tokens[tokens[pick] == kMarker ? j : pick] = kMarker;
    }
    for (int64_t t = 0, k = 0; t < R; ++t) {
      if (tokens[t] == kMarker) tokens[t] = copy[k++];
    }
    tokens[R] = kMarker;
    for (int64_t t = R; t < R + n; ++t) targets[t] = tokens[t + 1];
  }

 private:
  int64_t region_length() const { return shape_.length - token_count_ - 1; }

  int64_t token_count_, symbol_count_;
};

// Induction heads (Gu & Dao 2023, §4.1.2; Olsson et al. 2022). With p uniform in 0..L−4:
//   random data symbols everywhere, except
//   position p     the trigger, position p+1 the key (a random data symbol)
//   position L−2   the trigger again, position L−1 the key again
// Scored: position L−2 only, predicting the key. The trigger appears nowhere else.
// Ids: 0 trigger, 1..num_symbols data symbols.
class InductionHeadsTask : public SyntheticTask {
 public:
  static constexpr int32_t kTrigger = 0, kFirstSymbol = 1;

  explicit InductionHeadsTask(const TaskContext& context)
      : SyntheticTask(context, "induction_heads", 256),
        symbol_count_(read_symbol_count(context, 1, "the trigger")) {
    if (shape_.length < 4) {
      context.table.fail("seq_len", "is " + std::to_string(shape_.length) +
                                        ": induction_heads needs seq_len >= 4 (trigger, key, trigger, key)");
    }
  }

  std::string describe() const override {
    return "induction_heads: recall the key after the one earlier trigger, " + std::to_string(symbol_count_) +
           " symbols, " + shape_text();
  }

 protected:
  void fill_sequence(Random& random, int32_t* tokens, int32_t* targets, std::vector<int32_t>&) const override {
    const int64_t L = shape_.length;
    for (int64_t t = 0; t < L; ++t) tokens[t] = kFirstSymbol + static_cast<int32_t>(random.below(symbol_count_));
    const int64_t p = random.below(L - 3);
    tokens[p] = kTrigger;
    tokens[L - 2] = kTrigger;
    tokens[L - 1] = tokens[p + 1];
    targets[L - 2] = tokens[L - 1];
  }

 private:
  int64_t symbol_count_;
};

// Multi-query associative recall (Arora et al. 2023, "Zoology"). With P = num_pairs, Q = num_queries:
//   positions 0..2P−1      k_1 v_1 ... k_P v_P: P distinct keys, each followed by its value
//   positions 2P..2P+2Q−1  q_1 a_1 ... q_Q a_Q: Q distinct keys of the pairs in random order, each
//                          followed by its value
//   the rest               padding
// Scored: the query positions 2P + 2j (j < Q), predicting the value. Ids: 0 padding,
// keys 1..V/2−1, values V/2..V−1 (V = model.vocab_size); values are drawn independently (may repeat).
class MultiQueryRecallTask : public SyntheticTask {
 public:
  static constexpr int32_t kPadding = 0, kFirstKey = 1;

  explicit MultiQueryRecallTask(const TaskContext& context)
      : SyntheticTask(context, "mqar", 64),
        pair_count_(context.table.get_int("num_pairs", 8, 1)),
        query_count_(context.table.get_int("num_queries", pair_count_, 1, pair_count_)),
        key_count_(context.model.vocab_size / 2 - kFirstKey),
        first_value_(context.model.vocab_size / 2),
        value_count_(context.model.vocab_size - first_value_) {
    if (key_count_ < pair_count_) {
      context.table.fail("num_pairs", std::to_string(pair_count_) + " distinct keys need model.vocab_size >= " +
                                          std::to_string(2 * (pair_count_ + kFirstKey)) + ", found " +
                                          std::to_string(context.model.vocab_size) +
                                          " (id 0 pads, keys are 1..V/2-1, values V/2..V-1)");
    }
    if (shape_.length < 2 * (pair_count_ + query_count_)) {
      context.table.fail("seq_len", "is " + std::to_string(shape_.length) + ": " + std::to_string(pair_count_) +
                                        " pairs and " + std::to_string(query_count_) +
                                        " queries need seq_len >= 2*(num_pairs + num_queries) = " +
                                        std::to_string(2 * (pair_count_ + query_count_)));
    }
  }

  std::string describe() const override {
    return "mqar: " + std::to_string(pair_count_) + " key-value pairs, " + std::to_string(query_count_) +
           " queries, " + std::to_string(key_count_) + " keys and " + std::to_string(value_count_) + " values, " +
           shape_text();
  }

 protected:
  void fill_sequence(Random& random, int32_t* tokens, int32_t* targets, std::vector<int32_t>& scratch) const override {
    const int64_t P = pair_count_, Q = query_count_, L = shape_.length;
    // scratch: one flag per key id (all 0 between sequences), then P pair indices.
    scratch.resize(static_cast<size_t>(key_count_ + P));
    int32_t* used = scratch.data();
    int32_t* order = used + key_count_;
    // P distinct keys (Floyd's sampling), each with a random value.
    for (int64_t j = key_count_ - P, i = 0; j < key_count_; ++j, ++i) {
      int64_t key = random.below(j + 1);
      if (used[key]) key = j;
      used[key] = 1;
      tokens[2 * i] = kFirstKey + static_cast<int32_t>(key);
      tokens[2 * i + 1] = first_value_ + static_cast<int32_t>(random.below(value_count_));
    }
    for (int64_t i = 0; i < P; ++i) used[tokens[2 * i] - kFirstKey] = 0;
    // Floyd's sampling leaves the keys in a biased order: shuffle the pairs (Fisher–Yates).
    for (int64_t i = P - 1; i > 0; --i) {
      const int64_t other = random.below(i + 1);
      std::swap(tokens[2 * i], tokens[2 * other]);
      std::swap(tokens[2 * i + 1], tokens[2 * other + 1]);
    }
    // The queries: the first Q pairs of a random permutation (partial Fisher–Yates), each key then its value.
    for (int64_t i = 0; i < P; ++i) order[i] = static_cast<int32_t>(i);
    for (int64_t j = 0; j < Q; ++j) {
      std::swap(order[j], order[j + random.below(P - j)]);
      const int64_t pair = order[j], query = 2 * (P + j);
      tokens[query] = tokens[2 * pair];
      tokens[query + 1] = tokens[2 * pair + 1];
      targets[query] = tokens[query + 1];
    }
    std::fill(tokens + 2 * (P + Q), tokens + L, kPadding);
  }

 private:
  int64_t pair_count_, query_count_;
  int64_t key_count_;     // ids kFirstKey .. kFirstKey + key_count_ − 1
  int32_t first_value_;
  int64_t value_count_;   // ids first_value_ .. first_value_ + value_count_ − 1
};

template <typename SomeTask>
TaskFactory factory_of() {
  return [](const TaskContext& context) -> std::unique_ptr<Task> { return std::make_unique<SomeTask>(context); };
}

}  // namespace

void register_training_tasks() {
  auto& registry = task_registry();
  registry.add("selective_copying",
               "Mamba paper 4.1.1: copy num_tokens data tokens scattered among noise, in order, after a marker",
               factory_of<SelectiveCopyingTask>());
  registry.add("induction_heads",
               "Mamba paper 4.1.2: after the final trigger, recall the token that followed it earlier",
               factory_of<InductionHeadsTask>());
  registry.add("mqar", "Zoology's multi-query associative recall: num_pairs key-value pairs, then queried keys",
               factory_of<MultiQueryRecallTask>());
  registry.add("text", "byte-level language modelling on the file `path`; the last eval_fraction is held out",
               make_text_task);
}

}  // namespace mr1
