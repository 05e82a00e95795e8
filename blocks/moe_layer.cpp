// The Mixture-of-Experts layer (registered as block "moe"): router logits, a registered router's
// assignments, experts fc2(gelu(fc1(u))) over the tokens routed to them, combined with the gates, plus
// the ungated output of the shared experts ([router] shared_experts, default 0; DeepSeekMoE, Dai et al.
// 2024: always-on experts beside the routed ones) on every unmasked token.
// Shape letters: B batch, L length, T = B·L tokens, D dim, X experts, F expert_dim, k choices.
#include "blocks/moe_layer.h"

#include <cmath>

#include "blocks/random.h"
#include "kernels/activation.h"
#include "kernels/elementwise.h"
#include "kernels/grouped_linear.h"
#include "kernels/linear.h"
#include "kernels/small_ops.h"

namespace mr1 {

namespace {

// The kept assignments sorted by expert, in token order within an expert: expert j's rows of the
// grouped expert GEMMs are [offsets[j], offsets[j+1]).
struct ExpertOrder {
  std::vector<int64_t> tokens;       // the token of each sorted assignment
  std::vector<int64_t> assignments;  // its index t·k + r in the routing
  std::vector<float> gates;          // its gate
  std::vector<int64_t> offsets;      // X + 1
};

ExpertOrder sort_by_expert(const Routing& routing, int64_t experts) {
  ExpertOrder order;
  order.offsets.assign(static_cast<size_t>(experts + 1), 0);
  for (const int32_t j : routing.expert) {
    if (j >= 0) ++order.offsets[static_cast<size_t>(j) + 1];
  }
  for (int64_t j = 0; j < experts; ++j) order.offsets[j + 1] += order.offsets[j];
  const size_t kept = static_cast<size_t>(order.offsets.back());
  order.tokens.resize(kept);
  order.assignments.resize(kept);
  order.gates.resize(kept);
  std::vector<int64_t> next(order.offsets.begin(), order.offsets.end() - 1);
  for (int64_t a = 0; a < static_cast<int64_t>(routing.expert.size()); ++a) {
    const int32_t j = routing.expert[static_cast<size_t>(a)];
    if (j < 0) continue;  // dropped or masked
    const size_t slot = static_cast<size_t>(next[static_cast<size_t>(j)]++);
    order.tokens[slot] = a / routing.k;
    order.assignments[slot] = a;
    order.gates[slot] = routing.gate[static_cast<size_t>(a)];
  }
  return order;
}

// One of the two linear layers of every expert, as the grouped linear op takes them.
enum class ExpertLinear { fc1, fc2 };
struct GroupedParameters {
  std::vector<const Tensor*> weights, biases;
  std::vector<Tensor*> grad_weights, grad_biases;
};

GroupedParameters grouped_parameters(std::vector<FeedForward>& experts, ExpertLinear which) {
  GroupedParameters grouped;
  for (FeedForward& expert : experts) {
    Parameter& weight = which == ExpertLinear::fc1 ? expert.fc1_weight() : expert.fc2_weight();
    Parameter& bias = which == ExpertLinear::fc1 ? expert.fc1_bias() : expert.fc2_bias();
    grouped.weights.push_back(&weight.value);
    grouped.biases.push_back(&bias.value);
    grouped.grad_weights.push_back(&weight.grad);
    grouped.grad_biases.push_back(&bias.grad);
  }
  return grouped;
}

struct MoeSaved : SavedActivations {
  Tensor u;                                     // (T, D)
  std::unique_ptr<SavedActivations> router;     // the router's own
  ExpertOrder order;                            // A kept assignments sorted by expert
  Tensor expert_in;                             // (A, D) their tokens
  FeedForwardSaved hidden;                      // (A, F) fc1 outputs and their gelu
  Tensor expert_out;                            // (A, D) expert outputs before gating
  std::vector<int64_t> unmasked;                // the tokens the shared experts see
  std::vector<FeedForwardSaved> shared_hidden;  // per shared expert: the same over (T_unmasked, F)
};

}  // namespace

MoeLayer::MoeLayer(const BlockContext& context)
    : dim_(context.model.dim),
      num_experts_(context.model.num_experts),
      router_weight_(context.parameters.add(context.prefix + "router.weight", {num_experts_, dim_}, true)),
      router_bias_(context.parameters.add(context.prefix + "router.bias", {num_experts_}, false)) {
  for (int64_t j = 0; j < num_experts_; ++j) {
    experts_.emplace_back(context.parameters, context.prefix + "experts." + std::to_string(j) + ".", dim_,
                          context.model.expert_dim);
  }
  const int64_t shared = context.router_table.get_int("shared_experts", 0, 0);
  for (int64_t j = 0; j < shared; ++j) {
    shared_experts_.emplace_back(context.parameters, context.prefix + "shared_experts." + std::to_string(j) + ".",
                                 dim_, context.model.expert_dim);
  }
  RouterContext router_context{context.router, context.router_table, num_experts_, context.parameters,
                               context.prefix + "router.", dim_};
  router_ = router_registry().get(context.router.name)(router_context);
}

Tensor MoeLayer::forward(const Tensor& u, const BatchInfo& batch, LayerRecord& record) {
  const int64_t T = batch.tokens_count();
  Tensor tokens = u.reshape({T, dim_});
  // router logits = u · router.weightᵀ + router.bias   (T, X), float32
  Tensor logits = linear_forward(tokens, router_weight_.value, &router_bias_.value);
  auto saved = std::make_unique<MoeSaved>();
  Routing routing = router_->route(logits, tokens, batch, batch.keep_for_backward ? &saved->router : nullptr);

  // out[t] = Σ over t's kept assignments of gate · expert_j(u[t]); dropped and masked tokens get 0.
  // All experts at once: their tokens sorted by expert go through grouped GEMMs (one per layer of the
  // experts), then come back to their places weighted by the gates.
  saved->order = sort_by_expert(routing, num_experts_);
  const ExpertOrder& order = saved->order;
  Tensor out({T, dim_}, u.device());
  if (!order.tokens.empty()) {
    const GroupedParameters fc1 = grouped_parameters(experts_, ExpertLinear::fc1);
    const GroupedParameters fc2 = grouped_parameters(experts_, ExpertLinear::fc2);
    saved->expert_in = gather_rows(tokens, order.tokens);
    saved->hidden.hidden_pre = grouped_linear_forward(saved->expert_in, order.offsets, fc1.weights, fc1.biases);
    saved->hidden.hidden = gelu_forward(saved->hidden.hidden_pre);
    saved->expert_out = grouped_linear_forward(saved->hidden.hidden, order.offsets, fc2.weights, fc2.biases);
    scatter_add_rows(out, saved->expert_out, order.tokens, &order.gates);
  }

  // out[t] += Σ_s shared_s(u[t]) on the unmasked tokens
  if (!shared_experts_.empty()) {
    for (int64_t t = 0; t < T; ++t) {
      if (batch.kept(t)) saved->unmasked.push_back(t);
    }
    saved->shared_hidden.resize(shared_experts_.size());
    if (!saved->unmasked.empty()) {
      const Tensor rows = gather_rows(tokens, saved->unmasked);
      for (size_t s = 0; s < shared_experts_.size(); ++s) {
        scatter_add_rows(out, shared_experts_[s].forward(rows, &saved->shared_hidden[s]), saved->unmasked,
                         nullptr);
      }
    }
  }

  record.routing = routing.stats;
  record.aux_loss = routing.stats.aux_loss + routing.stats.z_loss;
  if (batch.keep_for_backward) {
    saved->u = tokens;
    record.saved = std::move(saved);
  }
  return out.reshape(u.shape());
}

Tensor MoeLayer::backward(const Tensor& grad_out, const BatchInfo& batch, const LayerRecord& record,
                          float aux_loss_scale) {
  const auto& saved = static_cast<const MoeSaved&>(*record.saved);
  const int64_t T = batch.tokens_count();
  Tensor grad = grad_out.reshape({T, dim_});
  Tensor grad_tokens({T, dim_}, grad_out.device());
  std::vector<float> grad_gate(record.routing.assignments > 0 ? static_cast<size_t>(record.routing.assignments) : 0,
                               0.0f);

  const ExpertOrder& order = saved.order;
  if (!order.tokens.empty()) {
    const Tensor grad_rows = gather_rows(grad, order.tokens);
    // dL/dgate = <dL/dout[t], expert_j(u[t])>
    const std::vector<float> dots = row_dot(grad_rows, saved.expert_out);
    for (size_t i = 0; i < dots.size(); ++i) grad_gate[static_cast<size_t>(order.assignments[i])] = dots[i];
    // dL/dexpert_out = gate · dL/dout, then back through fc2, gelu and fc1 of every expert at once.
    const GroupedParameters fc1 = grouped_parameters(experts_, ExpertLinear::fc1);
    const GroupedParameters fc2 = grouped_parameters(experts_, ExpertLinear::fc2);
    const Tensor grad_hidden = grouped_linear_backward(scale_rows(grad_rows, order.gates), saved.hidden.hidden,
                                                       order.offsets, fc2.weights, fc2.grad_weights, fc2.grad_biases);
    const Tensor grad_hidden_pre = gelu_backward(grad_hidden, saved.hidden.hidden_pre, saved.hidden.hidden);
    const Tensor grad_input = grouped_linear_backward(grad_hidden_pre, saved.expert_in, order.offsets, fc1.weights,
                                                      fc1.grad_weights, fc1.grad_biases);
    scatter_add_rows(grad_tokens, grad_input, order.tokens, nullptr);
  }

  if (!shared_experts_.empty() && !saved.unmasked.empty()) {
    const Tensor grad_rows = gather_rows(grad, saved.unmasked);
    const Tensor rows = gather_rows(saved.u, saved.unmasked);
    for (size_t s = 0; s < shared_experts_.size(); ++s) {
      scatter_add_rows(grad_tokens, shared_experts_[s].backward(grad_rows, rows, saved.shared_hidden[s]),
                       saved.unmasked, nullptr);
    }
  }

  // Routers compute on the host: their gradients come back as CPU tensors.
  RouterGrads router_gradients = router_->backward(grad_gate, *saved.router, aux_loss_scale);
  if (router_gradients.input.defined()) add_inplace(grad_tokens, router_gradients.input.to(saved.u.device()));
  linear_backward_add(router_gradients.logits.to(saved.u.device()), saved.u, router_weight_.value, router_weight_.grad,
                      &router_bias_.grad, grad_tokens);
  return grad_tokens.reshape(grad_out.shape());
}

void MoeLayer::initialize(Random& random) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(dim_));
  random.fill_uniform(router_weight_.value, -bound, bound);
  random.fill_uniform(router_bias_.value, -bound, bound);
  for (FeedForward& expert : experts_) expert.initialize(random);
  for (FeedForward& expert : shared_experts_) expert.initialize(random);
  router_->initialize(random);
}

void MoeLayer::after_step(const LayerRecord& record) { router_->after_step(record.routing); }

}  // namespace mr1
