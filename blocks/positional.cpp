// The registered positional encodings: learned (added table) and rotary.
#include "blocks/positional.h"

#include "blocks/random.h"
#include "kernels/elementwise.h"
#include "kernels/rotary.h"

namespace mr1 {

Registry<PositionalFactory>& positional_registry() {
  static Registry<PositionalFactory> registry("positional encoding");
  return registry;
}

namespace {

// x + backbone.pos_emb[start : start + L], broadcast over the batch.
class LearnedPositions : public PositionalEncoding {
 public:
  LearnedPositions(ParameterStore& parameters, const ModelConfig& model)
      : table_(parameters.add("backbone.pos_emb", {model.max_seq_len, model.dim}, true)) {}

  Tensor forward(const Tensor& x, int64_t start_position) override {
    const int64_t B = x.size(0), L = x.size(1);
    Tensor rows = table_.value.slice_rows(start_position, start_position + L);
    Tensor y = x.clone();
    for (int64_t b = 0; b < B; ++b) {
      Tensor sequence = y.slice_rows(b, b + 1).reshape(rows.shape());
      add_inplace(sequence, rows);
    }
    return y;
  }

  Tensor backward(const Tensor& grad_y, int64_t start_position) override {
    const int64_t B = grad_y.size(0), L = grad_y.size(1);
    Tensor rows = table_.grad.slice_rows(start_position, start_position + L);
    for (int64_t b = 0; b < B; ++b) add_inplace(rows, grad_y.slice_rows(b, b + 1).reshape(rows.shape()));
    return grad_y;
  }

  // Not in mamba_ssm (which has no positions); N(0, 0.02) like the embedding.
  void initialize(Random& random) override { random.fill_normal(table_.value, 0.0, 0.02); }

 private:
  Parameter& table_;
};

class RotaryPositions : public PositionalEncoding {
 public:
  Tensor forward(const Tensor& x, int64_t start_position) override { return rotary_forward(x, start_position); }
  Tensor backward(const Tensor& grad_y, int64_t start_position) override {
    return rotary_backward(grad_y, start_position);
  }
};

}  // namespace

void register_positional_encodings() {
  auto& registry = positional_registry();
  registry.add("learned", "adds a learned table backbone.pos_emb (max_seq_len, dim)",
               [](ParameterStore& p, const ModelConfig& model) -> std::unique_ptr<PositionalEncoding> {
                 return std::make_unique<LearnedPositions>(p, model);
               });
  registry.add("rotary", "rotates feature pairs (j, j + D/2) by l * 10000^(-2j/D) (RoFormer)",
               [](ParameterStore&, const ModelConfig&) -> std::unique_ptr<PositionalEncoding> {
                 return std::make_unique<RotaryPositions>();
               });
}

}  // namespace mr1
