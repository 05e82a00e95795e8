// The block registry and its built-in entries: mamba, moe, mlp.
#include "blocks/feed_forward.h"
#include "blocks/mamba_mixer.h"
#include "blocks/moe_layer.h"

namespace mr1 {

Registry<BlockFactory>& block_registry() {
  static Registry<BlockFactory> registry("block");
  return registry;
}

namespace {

// The dense baseline: fc2(gelu(fc1(u))) on every token, with the names of one expert.
struct MlpSaved : SavedActivations {
  Tensor u;
  FeedForwardSaved hidden;
};

class MlpBlock : public Mixer {
 public:
  explicit MlpBlock(const BlockContext& context)
      : dim_(context.model.dim),
        network_(context.parameters, context.prefix, context.model.dim, context.model.expert_dim) {}

  Tensor forward(const Tensor& u, const BatchInfo& batch, LayerRecord& record) override {
    Tensor tokens = u.reshape({batch.tokens_count(), dim_});
    auto saved = std::make_unique<MlpSaved>();
    Tensor y = network_.forward(tokens, &saved->hidden);
    if (batch.keep_for_backward) {
      saved->u = tokens;
      record.saved = std::move(saved);
    }
    return y.reshape(u.shape());
  }

  Tensor backward(const Tensor& grad_out, const BatchInfo& batch, const LayerRecord& record, float) override {
    const auto& saved = static_cast<const MlpSaved&>(*record.saved);
    Tensor grad = network_.backward(grad_out.reshape({batch.tokens_count(), dim_}), saved.u, saved.hidden);
    return grad.reshape(grad_out.shape());
  }

  void initialize(Random& random) override { network_.initialize(random); }

 private:
  int64_t dim_;
  FeedForward network_;
};

template <typename Block>
BlockFactory make() {
  return [](const BlockContext& context) -> std::unique_ptr<Mixer> { return std::make_unique<Block>(context); };
}

}  // namespace

void register_blocks() {
  auto& registry = block_registry();
  registry.add("mamba", "selective state-space mixer (mamba_ssm Mamba v1): conv1d, selective scan, silu gate",
               make<MambaMixer>());
  registry.add("moe", "mixture of experts fc2(gelu(fc1(u))) behind the [router] variant", make<MoeLayer>());
  registry.add("mlp", "dense feed-forward fc2(gelu(fc1(u))) of width expert_dim (baseline)", make<MlpBlock>());
}

}  // namespace mr1
