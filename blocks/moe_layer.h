// The Mixture-of-Experts feed-forward layer (registered as block "moe").
#pragma once

#include <memory>
#include <vector>

#include "blocks/feed_forward.h"
#include "blocks/mixer.h"
#include "routers/router.h"

namespace mr1 {

class MoeLayer : public Mixer {
 public:
  explicit MoeLayer(const BlockContext& context);
  Tensor forward(const Tensor& u, const BatchInfo& batch, LayerRecord& record) override;
  Tensor backward(const Tensor& grad_out, const BatchInfo& batch, const LayerRecord& record,
                  float aux_loss_scale) override;
  void initialize(Random& random) override;
  void after_step(const LayerRecord& record) override;
  std::string caveat() const override { return router_->caveat(); }

 private:
  int64_t dim_, num_experts_;
  Parameter& router_weight_;  // (X, D)
  Parameter& router_bias_;    // (X)
  std::vector<FeedForward> experts_;
  std::vector<FeedForward> shared_experts_;  // always on, ungated ([router] shared_experts, DeepSeekMoE)
  std::unique_ptr<Router> router_;
};

}  // namespace mr1
