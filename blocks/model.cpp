// Assembling the model from the block order, and its forward and backward passes.
#include "blocks/model.h"

#include <cmath>
#include <stdexcept>

#include "blocks/random.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/linear.h"

namespace mr1 {

Model::Model(const ModelConfig& config, const RouterSettings& router, const ConfigTable& router_table)
    : config_(config) {
  register_all();
  const int64_t D = config_.dim;
  if (config_.vocab_size > 0) {
    embedding_ = &parameters_.add("backbone.embedding.weight", {config_.vocab_size, D}, true);
    if (!config_.tie_embeddings) lm_head_ = &parameters_.add("lm_head.weight", {config_.vocab_size, D}, true);
  }
  for (const std::string& kind : config_.positional) {
    positional_.push_back(positional_registry().get(kind)(parameters_, config_));
  }
  for (int64_t i = 0; i < config_.block_count(); ++i) {
    const std::string prefix = "backbone.layers." + std::to_string(i) + ".";
    norms_.push_back(norm_registry().get(config_.norm)(parameters_, prefix + "norm", D));
    BlockContext context{config_, router, router_table, parameters_, prefix + "mixer.", i};
    mixers_.push_back(block_registry().get(config_.block_kind(i))(context));
  }
  final_norm_ = norm_registry().get(config_.norm)(parameters_, "backbone.norm_f", D);
}

Model::~Model() = default;

void Model::initialize(uint64_t seed) {
  if (device_ != Device::cpu) throw std::logic_error("Model::initialize runs on the CPU, before to()");
  Random random(seed);
  if (embedding_) random.fill_normal(embedding_->value, 0.0, 0.02);
  if (lm_head_) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(config_.dim));
    random.fill_uniform(lm_head_->value, -bound, bound);
  }
  for (auto& encoding : positional_) encoding->initialize(random);
  for (size_t i = 0; i < mixers_.size(); ++i) {
    norms_[i]->initialize(random);
    mixers_[i]->initialize(random);
  }
  final_norm_->initialize(random);
}

void Model::to(Device device) {
  parameters_.to(device);
  device_ = device;
}

const Tensor& Model::head() const { return lm_head_ ? lm_head_->value : embedding_->value; }
Parameter& Model::head_parameter() { return lm_head_ ? *lm_head_ : *embedding_; }

void Model::check_input(const ModelInput& input) const {
  const int64_t B = input.batch, L = input.length;
  if (B < 1 || L < 1) {
    throw ShapeError("model input: expected batch >= 1 and length >= 1, found (" + std::to_string(B) + ", " +
                     std::to_string(L) + ")");
  }
  if (L > config_.max_seq_len) {
    throw ShapeError("model input: length " + std::to_string(L) + " exceeds model.max_seq_len = " +
                     std::to_string(config_.max_seq_len));
  }
  if (config_.vocab_size > 0) {
    if (static_cast<int64_t>(input.tokens.size()) != B * L) {
      throw ShapeError("model input: the model takes token ids (vocab_size = " + std::to_string(config_.vocab_size) +
                       "): expected " + std::to_string(B * L) + " ids for (" + std::to_string(B) + ", " +
                       std::to_string(L) + "), found " + std::to_string(input.tokens.size()));
    }
  } else {
    if (!input.embeddings.defined()) {
      throw ShapeError("model input: the model takes embeddings (vocab_size = 0) of shape (B, L, " +
                       std::to_string(config_.dim) + "), none given");
    }
    check_shape(input.embeddings, {B, L, config_.dim}, "model input: embeddings");
  }
  if (!input.mask.empty() && static_cast<int64_t>(input.mask.size()) != B * L) {
    throw ShapeError("model input: mask: expected " + std::to_string(B * L) + " entries (B·L), found " +
                     std::to_string(input.mask.size()));
  }
}

ModelOutput Model::forward(const ModelInput& input, const ForwardOptions& options, ForwardTape* tape) {
  check_input(input);
  const int64_t B = input.batch, L = input.length;
  const bool keep = tape != nullptr;
  ForwardTape local;
  ForwardTape& record = tape ? *tape : local;
  record.mask = input.mask;
  record.tokens = input.tokens;
  record.batch = BatchInfo{};
  record.batch.batch = B;
  record.batch.length = L;
  record.batch.mask = record.mask.empty() ? nullptr : &record.mask;
  record.batch.tokens = record.tokens.empty() ? nullptr : &record.tokens;
  record.batch.training = options.training;
  record.batch.keep_for_backward = keep;
  record.batch.random = options.random;
  record.batch.start_position = options.start_position;
  const BatchInfo& batch = record.batch;

  // x: token embeddings or the given embeddings, then each positional encoding in order
  Tensor r = config_.vocab_size > 0 ? embedding_forward(input.tokens, B, L, embedding_->value)
                                    : input.embeddings.to(device_).clone();
  for (auto& encoding : positional_) r = encoding->forward(r, options.start_position);

  ModelOutput output;
  record.norm_saved.clear();
  record.norm_saved.resize(mixers_.size());
  record.records.clear();
  record.records.resize(mixers_.size());
  for (size_t i = 0; i < mixers_.size(); ++i) {
    // r ← r with masked positions set to 0;  r ← r + Mixer_i(Norm_i(r))
    if (batch.mask) zero_masked_rows(r, *batch.mask);
    Tensor normed = norms_[i]->forward(r, keep ? &record.norm_saved[i] : nullptr);
    Tensor mixed = mixers_[i]->forward(normed, batch, record.records[i]);
    r = add(r, mixed);
    output.aux_loss += record.records[i].aux_loss;
    output.routing.push_back(record.records[i].routing);
  }
  output.hidden = final_norm_->forward(r, keep ? &record.final_norm_saved : nullptr);
  if (config_.vocab_size > 0) output.logits = linear_forward(output.hidden, head(), nullptr);
  if (keep) record.hidden = output.hidden;
  return output;
}

void Model::backward(const ForwardTape& tape, const Tensor* grad_logits, const Tensor* grad_hidden,
                     float aux_loss_scale) {
  if (!tape.hidden.defined()) throw std::logic_error("Model::backward needs the tape of a forward pass");
  const BatchInfo& batch = tape.batch;
  Tensor grad = grad_hidden ? grad_hidden->clone() : Tensor(tape.hidden.shape(), device_);
  if (grad_logits) {
    // logits = hidden · Hᵀ
    LinearGrads head_grads = linear_backward(*grad_logits, tape.hidden, head(), false);
    add_inplace(head_parameter().grad, head_grads.weight);
    add_inplace(grad, head_grads.input);
  }
  grad = final_norm_->backward(grad, tape.final_norm_saved.get());
  for (size_t i = mixers_.size(); i-- > 0;) {
    Tensor grad_normed = mixers_[i]->backward(grad, batch, tape.records[i], aux_loss_scale);
    add_inplace(grad, norms_[i]->backward(grad_normed, tape.norm_saved[i].get()));
    if (batch.mask) zero_masked_rows(grad, *batch.mask);
  }
  for (size_t p = positional_.size(); p-- > 0;) grad = positional_[p]->backward(grad, batch.start_position);
  if (config_.vocab_size > 0) {
    add_inplace(embedding_->grad, embedding_backward(grad, tape.tokens, config_.vocab_size));
  }
}

void Model::after_step(const ForwardTape& tape) {
  for (size_t i = 0; i < mixers_.size(); ++i) mixers_[i]->after_step(tape.records[i]);
}

}  // namespace mr1
