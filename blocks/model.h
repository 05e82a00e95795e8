// The Mamba R1 model (DESIGN.md §2): input (token ids or embeddings), positional encodings,
// the block order repeated depth times as pre-norm residual blocks, the final norm and the LM head.
// Shape letters: B batch, L length, D dim, V vocab_size.
#pragma once

#include <memory>
#include <vector>

#include "blocks/mixer.h"
#include "blocks/norm_layer.h"
#include "blocks/part_times.h"
#include "blocks/positional.h"

namespace mr1 {

class Random;

struct ModelInput {
  int64_t batch = 0;              // B
  int64_t length = 0;             // L
  std::vector<int32_t> tokens;    // B·L ids, when vocab_size > 0
  Tensor embeddings;              // (B, L, D), when vocab_size = 0
  std::vector<uint8_t> mask;      // B·L, 1 = keep; empty = keep all
};

struct ForwardOptions {
  bool training = false;          // routers use training capacity and noise
  Random* random = nullptr;       // for routers that sample
  int64_t start_position = 0;
  bool dropless = false;          // routers ignore capacity, as in recurrent inference
};

struct ModelOutput {
  Tensor hidden;                      // (B, L, D) after norm_f
  Tensor logits;                      // (B, L, V) when vocab_size > 0
  double aux_loss = 0;                // Σ of the MoE layers' aux and z losses (coefficients applied)
  std::vector<RoutingStats> routing;  // per block; `present` only for MoE blocks
};

// What one forward pass keeps for the backward pass.
struct ForwardTape {
  BatchInfo batch;
  std::vector<uint8_t> mask;
  std::vector<int32_t> tokens;
  std::vector<std::unique_ptr<SavedActivations>> norm_saved;  // per block
  std::vector<LayerRecord> records;                           // per block
  std::unique_ptr<SavedActivations> final_norm_saved;
  Tensor hidden;                                              // (B, L, D) after norm_f
};

// The state of recurrent inference for a batch: each block's state (null for stateless blocks) and each
// sequence's absolute position of its next token. Its size does not depend on the length so far.
struct InferenceCache {
  int64_t batch = 0;                                    // B; 0 until the first prefill or step
  std::vector<int64_t> positions;                       // B
  std::vector<std::unique_ptr<InferenceState>> states;  // per block
};

// Prompts of different lengths as one right-padded input (B, L_max): tokens padded with id 0 and a mask
// marking each prompt as the first len_b positions of its row (no mask when all lengths are equal).
ModelInput prompt_batch(const std::vector<std::vector<int32_t>>& prompts);

class Model {
 public:
  // router_table: the [router] table, from which each MoE layer's router reads its own keys (block i's
  // [model.layers.i.router] keys, when config has them, come first).
  Model(const ModelConfig& config, const RouterSettings& router, const ConfigTable& router_table);
  ~Model();

  const ModelConfig& config() const { return config_; }
  ParameterStore& parameters() { return parameters_; }
  const ParameterStore& parameters() const { return parameters_; }
  int64_t block_count() const { return static_cast<int64_t>(mixers_.size()); }
  Device device() const { return device_; }
  // The blocks' distinct caveats (Mixer::caveat), in block order; the constructor logs each as a warning.
  std::vector<std::string> caveats() const;

  // mamba_ssm's initialisation from one seeded generator (on the CPU; call before to()).
  void initialize(uint64_t seed);
  void to(Device device);

  // Checks the input against the config (shapes, ids, L <= max_seq_len), then runs the model.
  // With a tape, keeps what backward() needs.
  ModelOutput forward(const ModelInput& input, const ForwardOptions& options, ForwardTape* tape = nullptr);
  // Adds to every parameter's gradient: dL/dlogits (B, L, V) and/or dL/dhidden (B, L, D) given,
  // and the MoE aux losses weighted by aux_loss_scale.
  void backward(const ForwardTape& tape, const Tensor* grad_logits, const Tensor* grad_hidden, float aux_loss_scale);
  // After an optimizer step: lets routers update their state from the step's routing (aux_free).
  void after_step(const ForwardTape& tape);
  // From now on, forward and backward add their parts' times to `times` (null: no timing, the default):
  // "embedding" (or "input": the given embeddings' copy), "positional encodings", each block kind with
  // its norm (by name: "mamba", "moe", ...), "final norm and LM head" ("final norm" without a vocabulary).
  void set_part_times(PartTimes* times) { part_times_ = times; }

  // Recurrent inference, for models with token ids (vocab_size > 0); routing is dropless.
  // prefill: the parallel forward over prompts (B, L). input.mask, when given, marks each prompt as the
  // first len_b positions of its row (right padding, see prompt_batch): causality keeps the prompts'
  // outputs free of the padding, and each block keeps its state after the prompt's own last token.
  // Replaces the cache's content; returns the logits (B, V) at each prompt's last position.
  Tensor prefill(const ModelInput& input, InferenceCache& cache);
  // One token per sequence, tokens (B), at the absolute positions cache.positions (which may differ
  // between sequences); advances them. An empty cache starts every sequence at position 0. Returns the
  // logits (B, V). The cost does not grow with the position.
  Tensor step(const std::vector<int32_t>& tokens, InferenceCache& cache);

 private:
  const char* final_part() const { return config_.vocab_size > 0 ? "final norm and LM head" : "final norm"; }
  // forward and prefill: with a cache, the blocks run prefill() and leave their states in it, and the
  // LM head is left to the caller.
  ModelOutput run(const ModelInput& input, const ForwardOptions& options, ForwardTape* tape, InferenceCache* cache);
  void check_input(const ModelInput& input) const;
  const Tensor& head() const;
  Parameter& head_parameter();

  ModelConfig config_;
  ParameterStore parameters_;
  Parameter* embedding_ = nullptr;  // (V, D)
  Parameter* lm_head_ = nullptr;    // (V, D) when not tied
  std::vector<std::unique_ptr<PositionalEncoding>> positional_;
  std::vector<std::unique_ptr<Norm>> norms_;
  std::vector<std::unique_ptr<Mixer>> mixers_;
  std::unique_ptr<Norm> final_norm_;
  Device device_ = Device::cpu;
  PartTimes* part_times_ = nullptr;
};

}  // namespace mr1
