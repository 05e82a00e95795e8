// The mixer of a residual block (mamba, moe, mlp, ...) and the block registry.
// Shape letters: B batch, L length, D model dim.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "blocks/layer.h"
#include "blocks/parameters.h"
#include "registry/config.h"
#include "registry/model_config.h"
#include "registry/registry.h"

namespace mr1 {

class Random;

// What a block carries from one step of recurrent inference to the next (mamba: conv and SSM states).
struct InferenceState {
  virtual ~InferenceState() = default;
};

class Mixer {
 public:
  virtual ~Mixer() = default;
  // u (B, L, D) → (B, L, D). Fills record.saved when batch.keep_for_backward.
  virtual Tensor forward(const Tensor& u, const BatchInfo& batch, LayerRecord& record) = 0;
  // dL/dout (B, L, D) → dL/du (B, L, D); adds the parameters' gradients (aux losses included,
  // scaled by aux_loss_scale: the weight of this batch's loss).
  virtual Tensor backward(const Tensor& grad_out, const BatchInfo& batch, const LayerRecord& record,
                          float aux_loss_scale) = 0;
  virtual void initialize(Random& random) = 0;
  // Called once after each optimizer step with this step's forward record (aux_free's bias update).
  virtual void after_step(const LayerRecord& record) {}
  // A warning for the log when the block does not suit the experiment (moe: its router's), or "".
  virtual std::string caveat() const { return ""; }

  // Step mode: u (B, 1, D), one new token per sequence, row b at batch.position(b); `state` is what
  // the block carries between steps (null before the first step). Stateless blocks (moe, mlp) run their
  // forward and leave it null; the caller sets batch.dropless. Returns (B, 1, D).
  virtual Tensor step(const Tensor& u, const BatchInfo& batch, std::unique_ptr<InferenceState>& state) {
    LayerRecord record;
    return forward(u, batch, record);
  }
  // Prefill: the parallel forward over a prompt u (B, L, D) that also leaves in `state` the state after
  // its last token, ready for step().
  virtual Tensor prefill(const Tensor& u, const BatchInfo& batch, std::unique_ptr<InferenceState>& state) {
    LayerRecord record;
    return forward(u, batch, record);
  }
};

// Everything a block factory may read: the model config, the router table (MoE) and where
// its parameters go ("backbone.layers.{i}.mixer.").
struct BlockContext {
  const ModelConfig& model;
  const RouterSettings& router;
  const ConfigTable& router_table;
  ParameterStore& parameters;
  std::string prefix;
  int64_t layer_index;
};

using BlockFactory = std::function<std::unique_ptr<Mixer>(const BlockContext&)>;
Registry<BlockFactory>& block_registry();

}  // namespace mr1
