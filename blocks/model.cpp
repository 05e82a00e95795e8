// Assembling the model from the block order, its forward and backward passes, and recurrent inference
// (prefill, then one token at a time).
#include "blocks/model.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "blocks/random.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/linear.h"
#include "kernels/ssm_step.h"
#include "routers/router.h"

namespace mr1 {

namespace {

// When no block routes through [router] (no moe block, or each has a router table of its own), the
// table still describes the router it names, so that router reads it as a moe block of [model]'s sizes
// would: its keys are then known and their values checked, and a key no router reads stays unknown.
void read_unused_router_table(const ModelConfig& config, const RouterSettings& router,
                              const ConfigTable& router_table) {
  ParameterStore scratch;
  router_registry().get(router.name)(
      RouterContext{router, router_table, config.num_experts, scratch, "router.", config.dim});
  router_table.get_int("shared_experts", 0, 0);  // read by the moe block
}

// After the first repetition of `order`, the size of the whole model is known (to within per-block keys):
// a depth whose values and gradients cannot fit in memory is refused before thousands of blocks are built.
void check_depth_fits(const ModelConfig& config, int64_t elements_before_blocks, int64_t elements_per_repeat) {
  const long double bytes =
      8.0L * (static_cast<long double>(elements_before_blocks) +
              static_cast<long double>(elements_per_repeat) * static_cast<long double>(config.depth));
  if (fits_in_host_memory(bytes)) return;
  throw ShapeError("model.depth = " + std::to_string(config.depth) + ": " + std::to_string(config.depth) +
                   " repeats of " + join(config.order, ", ") + " with " + std::to_string(elements_per_repeat) +
                   " parameters each would need about " + gib_string(bytes) + " for their values and gradients, and " +
                   host_memory_text());
}

}  // namespace

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
  bool router_table_used = false;  // by a moe block without a router table of its own
  const int64_t elements_before_blocks = parameters_.element_count();
  for (int64_t i = 0; i < config_.block_count(); ++i) {
    if (i == static_cast<int64_t>(config_.order.size())) {
      check_depth_fits(config_, elements_before_blocks, parameters_.element_count() - elements_before_blocks);
    }
    const std::string prefix = "backbone.layers." + std::to_string(i) + ".";
    norms_.push_back(norm_registry().get(config_.norm)(parameters_, prefix + "norm", D));
    // A block's own router table ([model.layers.i.router]) is read over [router], and its keys are checked
    // once the block has read them.
    const BlockOverrides* overrides = config_.overrides(i);
    std::optional<ConfigTable> own_table;
    std::optional<RouterSettings> own_settings;
    if (overrides && overrides->router) {
      own_table = overrides->router->over(router_table);
      own_settings = read_router_settings(*own_table);
    }
    const ModelConfig block = config_.block(i);
    const BlockContext context{block, own_settings ? *own_settings : router,
                               own_table ? *own_table : router_table, parameters_, prefix + "mixer.", i};
    mixers_.push_back(block_registry().get(config_.block_kind(i))(context));
    if (own_table) own_table->reject_unknown_keys();
    router_table_used = router_table_used || (config_.block_kind(i) == "moe" && !own_table);
  }
  if (!router_table_used) read_unused_router_table(config_, router, router_table);
  final_norm_ = norm_registry().get(config_.norm)(parameters_, "backbone.norm_f", D);
  for (const std::string& caveat : caveats()) spdlog::warn("{}", caveat);
}

std::vector<std::string> Model::caveats() const {
  std::vector<std::string> found;
  for (const auto& mixer : mixers_) {
    const std::string caveat = mixer->caveat();
    if (!caveat.empty() && std::find(found.begin(), found.end(), caveat) == found.end()) found.push_back(caveat);
  }
  return found;
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
  return run(input, options, tape, nullptr);
}

ModelOutput Model::run(const ModelInput& input, const ForwardOptions& options, ForwardTape* tape,
                       InferenceCache* cache) {
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
  record.batch.dropless = options.dropless;
  const BatchInfo& batch = record.batch;

  // x: token embeddings or the given embeddings, then each positional encoding in order
  Tensor r;
  {
    const PartTimer timer(part_times_, config_.vocab_size > 0 ? "embedding" : "input", Pass::forward);
    r = config_.vocab_size > 0 ? embedding_forward(input.tokens, B, L, embedding_->value)
                               : input.embeddings.to(device_).clone();
  }
  if (!positional_.empty()) {
    const PartTimer timer(part_times_, "positional encodings", Pass::forward);
    for (auto& encoding : positional_) r = encoding->forward(r, options.start_position);
  }

  ModelOutput output;
  record.norm_saved.clear();
  record.norm_saved.resize(mixers_.size());
  record.records.clear();
  record.records.resize(mixers_.size());
  const std::optional<RowMask> mask = batch.mask ? std::optional<RowMask>(*batch.mask) : std::nullopt;
  // Each block's output waits in `mixed` to be added to r by the next norm, in the norm's own kernel where
  // it can (forward_after_add), unless a mask must zero rows of r between the add and the norm.
  const bool add_in_norm = !mask || mask->keeps_all();
  Tensor mixed;
  for (size_t i = 0; i < mixers_.size(); ++i) {
    const PartTimer timer(part_times_, config_.block_kind(static_cast<int64_t>(i)), Pass::forward);
    // r ← r + the previous block's output; r ← r with masked positions set to 0;  mixed = Mixer_i(Norm_i(r))
    std::unique_ptr<SavedActivations>* saved = keep ? &record.norm_saved[i] : nullptr;
    Tensor normed;
    if (mixed.defined() && add_in_norm) {
      normed = norms_[i]->forward_after_add(r, mixed, saved);
    } else {
      if (mixed.defined()) r = add(r, mixed);
      if (mask) zero_masked_rows(r, *mask);
      normed = norms_[i]->forward(r, saved);
    }
    mixed = cache ? mixers_[i]->prefill(normed, batch, cache->states[i])
                  : mixers_[i]->forward(normed, batch, record.records[i]);
    output.aux_loss += record.records[i].aux_loss;
    output.routing.push_back(record.records[i].routing);
  }
  const PartTimer timer(part_times_, final_part(), Pass::forward);
  std::unique_ptr<SavedActivations>* final_saved = keep ? &record.final_norm_saved : nullptr;
  output.hidden = mixed.defined() ? final_norm_->forward_after_add(r, mixed, final_saved)
                                  : final_norm_->forward(r, final_saved);
  if (config_.vocab_size > 0 && !cache) output.logits = linear_forward(output.hidden, head(), nullptr);
  if (keep) record.hidden = output.hidden;
  return output;
}

ModelInput prompt_batch(const std::vector<std::vector<int32_t>>& prompts) {
  ModelInput input;
  input.batch = static_cast<int64_t>(prompts.size());
  for (const auto& prompt : prompts) input.length = std::max(input.length, static_cast<int64_t>(prompt.size()));
  bool ragged = false;
  for (const auto& prompt : prompts) {
    const int64_t length = static_cast<int64_t>(prompt.size());
    if (length == 0) throw ShapeError("prompt_batch: an empty prompt; each prompt needs at least one token");
    ragged = ragged || length != input.length;
    input.tokens.insert(input.tokens.end(), prompt.begin(), prompt.end());
    input.tokens.insert(input.tokens.end(), static_cast<size_t>(input.length - length), 0);
    input.mask.insert(input.mask.end(), static_cast<size_t>(length), 1);
    input.mask.insert(input.mask.end(), static_cast<size_t>(input.length - length), 0);
  }
  if (!ragged) input.mask.clear();
  return input;
}

Tensor Model::prefill(const ModelInput& input, InferenceCache& cache) {
  if (config_.vocab_size <= 0) {
    throw std::invalid_argument("prefill: recurrent inference needs a model of token ids (vocab_size > 0)");
  }
  check_input(input);
  const int64_t B = input.batch, L = input.length, D = config_.dim;
  const std::vector<int64_t> lengths = prompt_lengths(input.mask.empty() ? nullptr : &input.mask, B, L);
  cache.batch = B;
  cache.positions = lengths;
  cache.states.clear();
  cache.states.resize(mixers_.size());
  ForwardOptions options;
  options.dropless = true;
  const ModelOutput output = run(input, options, nullptr, &cache);
  // logits at each prompt's last position: hidden[b, len_b − 1] · Hᵀ
  std::vector<int64_t> last_rows;
  for (int64_t b = 0; b < B; ++b) last_rows.push_back(b * L + lengths[static_cast<size_t>(b)] - 1);
  const Tensor last_hidden = gather_rows(output.hidden.reshape({B * L, D}), last_rows);  // (B, D)
  return linear_forward(last_hidden, head(), nullptr);
}

Tensor Model::step(const std::vector<int32_t>& tokens, InferenceCache& cache) {
  if (config_.vocab_size <= 0) {
    throw std::invalid_argument("step: recurrent inference needs a model of token ids (vocab_size > 0)");
  }
  const int64_t B = static_cast<int64_t>(tokens.size());
  if (cache.batch == 0) {
    cache.batch = B;
    cache.positions.assign(static_cast<size_t>(B), 0);
    cache.states.resize(mixers_.size());
  }
  if (B != cache.batch || static_cast<int64_t>(cache.positions.size()) != B || cache.states.size() != mixers_.size()) {
    throw ShapeError("step: expected one token for each of the cache's " + std::to_string(cache.batch) +
                     " sequences, found " + std::to_string(B) + " tokens");
  }
  for (int64_t position : cache.positions) {
    if (position >= config_.max_seq_len) {
      throw ShapeError("step: position " + std::to_string(position) + " is past model.max_seq_len = " +
                       std::to_string(config_.max_seq_len));
    }
  }
  const bool same_position =
      std::all_of(cache.positions.begin(), cache.positions.end(), [&](int64_t p) { return p == cache.positions[0]; });

  BatchInfo batch;
  batch.batch = B;
  batch.length = 1;
  batch.tokens = &tokens;
  batch.dropless = true;
  // Each row at its own position (BatchInfo::position), whether or not they differ.
  batch.row_start_positions = &cache.positions;

  // x: the token embeddings (B, 1, D), each positional encoding at each sequence's own position
  Tensor r = embedding_forward(tokens, B, 1, embedding_->value);
  for (auto& encoding : positional_) {
    if (same_position) {
      r = encoding->forward(r, cache.positions[0]);
      continue;
    }
    for (int64_t b = 0; b < B; ++b) {
      Tensor row = r.slice_rows(b, b + 1);
      row.copy_from(encoding->forward(row, cache.positions[static_cast<size_t>(b)]));
    }
  }
  Tensor mixed;  // as in forward: each block's output is added to r by the next norm
  for (size_t i = 0; i < mixers_.size(); ++i) {
    // r ← r + Mixer_i(Norm_i(r)), one position
    const Tensor normed =
        mixed.defined() ? norms_[i]->forward_after_add(r, mixed, nullptr) : norms_[i]->forward(r, nullptr);
    mixed = mixers_[i]->step(normed, batch, cache.states[i]);
  }
  const Tensor hidden =
      mixed.defined() ? final_norm_->forward_after_add(r, mixed, nullptr) : final_norm_->forward(r, nullptr);
  for (int64_t& position : cache.positions) ++position;
  return linear_forward(hidden, head(), nullptr).reshape({B, config_.vocab_size});
}

void Model::backward(const ForwardTape& tape, const Tensor* grad_logits, const Tensor* grad_hidden,
                     float aux_loss_scale) {
  if (!tape.hidden.defined()) throw std::logic_error("Model::backward needs the tape of a forward pass");
  const BatchInfo& batch = tape.batch;
  Tensor grad;
  {
    const PartTimer timer(part_times_, final_part(), Pass::backward);
    // logits = hidden · Hᵀ
    if (grad_hidden) {
      grad = grad_hidden->clone();
      if (grad_logits) linear_backward_add(*grad_logits, tape.hidden, head(), head_parameter().grad, nullptr, grad);
    } else if (grad_logits) {
      grad = linear_backward_accumulate(*grad_logits, tape.hidden, head(), head_parameter().grad, nullptr);
    } else {
      grad = Tensor(tape.hidden.shape(), device_);
    }
    grad = final_norm_->backward(grad, tape.final_norm_saved.get());
  }
  const std::optional<RowMask> mask = batch.mask ? std::optional<RowMask>(*batch.mask) : std::nullopt;
  for (size_t i = mixers_.size(); i-- > 0;) {
    const PartTimer timer(part_times_, config_.block_kind(static_cast<int64_t>(i)), Pass::backward);
    Tensor grad_normed = mixers_[i]->backward(grad, batch, tape.records[i], aux_loss_scale);
    norms_[i]->backward_add(grad_normed, tape.norm_saved[i].get(), grad);
    if (mask) zero_masked_rows(grad, *mask);
  }
  if (!positional_.empty()) {
    const PartTimer timer(part_times_, "positional encodings", Pass::backward);
    for (size_t p = positional_.size(); p-- > 0;) grad = positional_[p]->backward(grad, batch.start_position);
  }
  if (config_.vocab_size > 0) {
    const PartTimer timer(part_times_, "embedding", Pass::backward);
    add_inplace(embedding_->grad, embedding_backward(grad, tape.tokens, config_.vocab_size));
  }
}

void Model::after_step(const ForwardTape& tape) {
  for (size_t i = 0; i < mixers_.size(); ++i) mixers_[i]->after_step(tape.records[i]);
}

}  // namespace mr1
