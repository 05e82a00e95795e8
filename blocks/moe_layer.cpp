// The Mixture-of-Experts layer (registered as block "moe"): router logits, a registered router's
// assignments, experts fc2(gelu(fc1(u))) over the tokens routed to them, combined with the gates, plus
// the ungated output of the shared experts ([router] shared_experts, default 0; DeepSeekMoE, Dai et al.
// 2024: always-on experts beside the routed ones) on every unmasked token.
// Shape letters: B batch, L length, T = B·L tokens, D dim, X experts, F expert_dim, k choices.
#include "blocks/moe_layer.h"

#include <cmath>

#include "blocks/random.h"
#include "kernels/elementwise.h"
#include "kernels/linear.h"
#include "kernels/small_ops.h"

namespace mr1 {

namespace {

struct MoeSaved : SavedActivations {
  Tensor u;                                       // (T, D)
  std::unique_ptr<SavedActivations> router;       // the router's own
  std::vector<std::vector<int64_t>> rows;         // per expert: the tokens routed to it
  std::vector<std::vector<int64_t>> assignments;  // per expert: the assignment index t·k + r of each row
  std::vector<std::vector<float>> gates;          // per expert: the gate of each row
  std::vector<FeedForwardSaved> hidden;           // per expert: fc1 output and its gelu (T_j, F)
  std::vector<Tensor> expert_out;                 // per expert: expert output before gating (T_j, D)
  std::vector<int64_t> unmasked;                  // the tokens the shared experts see
  std::vector<FeedForwardSaved> shared_hidden;    // per shared expert: the same over (T_unmasked, F)
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

  // Group the assignments by expert, in token order.
  saved->rows.assign(static_cast<size_t>(num_experts_), {});
  saved->assignments.assign(static_cast<size_t>(num_experts_), {});
  saved->gates.assign(static_cast<size_t>(num_experts_), {});
  for (int64_t a = 0; a < static_cast<int64_t>(routing.expert.size()); ++a) {
    const int32_t j = routing.expert[static_cast<size_t>(a)];
    if (j < 0) continue;
    saved->rows[static_cast<size_t>(j)].push_back(a / routing.k);
    saved->assignments[static_cast<size_t>(j)].push_back(a);
    saved->gates[static_cast<size_t>(j)].push_back(routing.gate[static_cast<size_t>(a)]);
  }

  // out[t] = Σ over t's assignments of gate · expert_j(u[t]); dropped and masked tokens get 0.
  Tensor out({T, dim_}, u.device());
  saved->hidden.resize(static_cast<size_t>(num_experts_));
  saved->expert_out.resize(static_cast<size_t>(num_experts_));
  for (int64_t j = 0; j < num_experts_; ++j) {
    const auto& rows = saved->rows[static_cast<size_t>(j)];
    if (rows.empty()) continue;
    Tensor y = experts_[static_cast<size_t>(j)].forward(gather_rows(tokens, rows),
                                                         &saved->hidden[static_cast<size_t>(j)]);
    scatter_add_rows(out, y, rows, &saved->gates[static_cast<size_t>(j)]);
    saved->expert_out[static_cast<size_t>(j)] = y;
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

  for (int64_t j = 0; j < num_experts_; ++j) {
    const auto& rows = saved.rows[static_cast<size_t>(j)];
    if (rows.empty()) continue;
    Tensor grad_rows = gather_rows(grad, rows);
    // dL/dgate = <dL/dout[t], expert_j(u[t])>
    std::vector<float> dots = row_dot(grad_rows, saved.expert_out[static_cast<size_t>(j)]);
    const auto& assignments = saved.assignments[static_cast<size_t>(j)];
    for (size_t i = 0; i < rows.size(); ++i) grad_gate[static_cast<size_t>(assignments[i])] = dots[i];
    // dL/dexpert_out = gate · dL/dout
    Tensor grad_input = experts_[static_cast<size_t>(j)].backward(
        scale_rows(grad_rows, saved.gates[static_cast<size_t>(j)]), gather_rows(saved.u, rows),
        saved.hidden[static_cast<size_t>(j)]);
    scatter_add_rows(grad_tokens, grad_input, rows, nullptr);
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
  LinearGrads router_grads =
      linear_backward(router_gradients.logits.to(saved.u.device()), saved.u, router_weight_.value, true);
  add_inplace(router_weight_.grad, router_grads.weight);
  add_inplace(router_bias_.grad, router_grads.bias);
  add_inplace(grad_tokens, router_grads.input);
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
