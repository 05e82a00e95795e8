// The `text` task: byte-level language modelling on one file. The file's last eval_fraction is the
// eval split, the rest the train split; a batch is B random windows of one split.
// Shape letters: B batch_size, L seq_len.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "blocks/random.h"
#include "experiments/task.h"

namespace mr1 {

namespace {

constexpr int64_t kByteVocabulary = 256;

// Each row is a window of L + 1 consecutive bytes w of one split: tokens = w[0..L−1] and
// targets = w[1..L], every position scored. Train windows lie in bytes [0, N − E) and eval windows in
// [N − E, N), E = floor(eval_fraction · N), so no target of one split is a byte of the other.
class TextTask : public Task {
 public:
  explicit TextTask(const TaskContext& context)
      : seed_(context.seed), batch_size_(read_batch_size(context)), length_(read_seq_len(context, 256)) {
    const ConfigTable& table = context.table;
    if (context.model.vocab_size < kByteVocabulary) {
      table.fail("name", "text models bytes: needs model.vocab_size >= 256, found " +
                             std::to_string(context.model.vocab_size));
    }
    check_batch_fits(context, batch_size_, length_);
    eval_fraction_ = table.get_double("eval_fraction", 0.1);
    if (!(eval_fraction_ > 0 && eval_fraction_ < 1)) {
      table.fail("eval_fraction", "expected a number between 0 and 1 (exclusive), found " +
                                      render_double(eval_fraction_));
    }
    const std::string path = table.get_string("path", "");
    if (path.empty()) {
      table.fail("path", "missing: the text file to model, relative to the experiment file's folder");
    }
    path_ = resolve(path, table.file());
    table.record_resolved("path", std::filesystem::absolute(path_).lexically_normal().string());
    std::error_code error;
    const auto size = std::filesystem::file_size(path_, error);  // fails for a directory or a missing file
    std::ifstream file(path_, std::ios::binary);
    bytes_.resize(error ? 0 : size);
    if (error || !file || !file.read(reinterpret_cast<char*>(bytes_.data()), static_cast<std::streamsize>(size))) {
      table.fail("path", "cannot read \"" + path_ + "\"" +
                             (path_ == path ? std::string()
                                            : " (\"" + path + "\" taken relative to the experiment file's folder)"));
    }
    const int64_t N = static_cast<int64_t>(bytes_.size());
    eval_begin_ = N - static_cast<int64_t>(eval_fraction_ * static_cast<double>(N));
    const int64_t shorter = std::min(eval_begin_, N - eval_begin_);
    if (shorter < length_ + 1) {
      table.fail("path", "\"" + path_ + "\" has " + std::to_string(N) + " bytes: the train part has " +
                             std::to_string(eval_begin_) + " and the eval part (eval_fraction " +
                             render_double(eval_fraction_) + ") " + std::to_string(N - eval_begin_) +
                             ", and each needs seq_len + 1 = " + std::to_string(length_ + 1) +
                             " for one window; use a longer file or a shorter seq_len");
    }
  }

  Batch batch(Split split, int64_t index) override {
    Random random(batch_seed(seed_, split, index));
    const int64_t B = batch_size_, L = length_;
    const int64_t begin = split == Split::train ? 0 : eval_begin_;
    const int64_t end = split == Split::train ? eval_begin_ : static_cast<int64_t>(bytes_.size());
    Batch batch;
    batch.input.batch = B;
    batch.input.length = L;
    batch.input.tokens.resize(static_cast<size_t>(B * L));
    batch.input.mask.assign(static_cast<size_t>(B * L), 1);
    batch.targets.resize(static_cast<size_t>(B * L));
    for (int64_t b = 0; b < B; ++b) {
      const unsigned char* window = bytes_.data() + begin + random.below(end - begin - L);  // L + 1 bytes
      int32_t* tokens = batch.input.tokens.data() + b * L;
      int32_t* targets = batch.targets.data() + b * L;
      for (int64_t t = 0; t < L; ++t) {
        tokens[t] = window[t];
        targets[t] = window[t + 1];
      }
    }
    return batch;
  }

  std::string describe() const override {
    return "text: bytes of " + path_ + " (" + std::to_string(eval_begin_) + " train, " +
           std::to_string(bytes_.size() - eval_begin_) + " eval), batch " + std::to_string(batch_size_) + " x " +
           std::to_string(length_);
  }

 private:
  // A relative path is taken from the experiment file's folder (the current folder when the file
  // has none, as for text given on the command line).
  static std::string resolve(const std::string& path, const std::string& experiment_file) {
    const std::filesystem::path given(path);
    if (given.is_absolute()) return path;
    return (std::filesystem::path(experiment_file).parent_path() / given).lexically_normal().string();
  }

  uint64_t seed_;
  int64_t batch_size_;                // B
  int64_t length_;                    // L
  double eval_fraction_ = 0.1;
  std::string path_;                  // as resolved
  std::vector<unsigned char> bytes_;  // the whole file
  int64_t eval_begin_ = 0;            // first byte of the eval split
};

}  // namespace

std::unique_ptr<Task> make_text_task(const TaskContext& context) { return std::make_unique<TextTask>(context); }

}  // namespace mr1
