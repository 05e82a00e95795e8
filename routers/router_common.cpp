// The routing path every router shares: capacity, gates, statistics and the backward pass.
// Shape letters: T tokens, X experts, k assignments per token.
#include "routers/router_common.h"

#include <algorithm>
#include <cmath>
#include <mutex>

#include <spdlog/spdlog.h>

#include "kernels/activation.h"
#include "kernels/routing.h"

namespace mr1 {

namespace {

// Every expert for every unmasked token (T·X, −1 on masked rows): gather_gates over these with
// normalisation gives the scores normalised over all experts, s'[t, j] = s[t, j] / Σ_i s[t, i].
std::vector<int32_t> every_expert(int64_t T, int64_t X, const std::vector<uint8_t>* token_mask) {
  std::vector<int32_t> all(static_cast<size_t>(T * X), -1);
  for (int64_t t = 0; t < T; ++t) {
    if (token_mask && (*token_mask)[static_cast<size_t>(t)] == 0) continue;
    for (int64_t j = 0; j < X; ++j) all[static_cast<size_t>(t * X + j)] = static_cast<int32_t>(j);
  }
  return all;
}

// Sigmoid scores for the normalised quantities (gates over the chosen experts, the balance over all):
// a ratio s_i / Σ s_j is unchanged by scaling a row, so a row whose largest logit is below kScaledBelow,
// where sigmoid nears float's underflow (exactly 0 below −103.9, and 0/0 in the ratio), is taken as
// exp(log s − max log s), with log s = −softplus(−x) in double. Other rows are the scores themselves, bit
// for bit.
constexpr double kScaledBelow = -60.0;

Tensor ratio_scores(const Tensor& logits, const Tensor& scores) {
  const int64_t T = logits.size(0), X = logits.size(1);
  Tensor ratio = scores.clone();
  const auto log_sigmoid = [](double x) { return x < 0 ? x - std::log1p(std::exp(x)) : -std::log1p(std::exp(-x)); };
  for (int64_t t = 0; t < T; ++t) {
    const float* row = logits.data() + t * X;
    const double largest = *std::max_element(row, row + X);
    if (!(largest < kScaledBelow)) continue;
    const double top = log_sigmoid(largest);
    for (int64_t j = 0; j < X; ++j) ratio[t * X + j] = static_cast<float>(std::exp(log_sigmoid(row[j]) - top));
  }
  return ratio;
}

// The probabilities the balance statistics are taken on: softmax probabilities as they are; sigmoid
// affinities normalised over the experts (DeepSeek-V3 eq. 19), from ratio_scores.
Tensor balance_probabilities(GateScores kind, const Tensor& scores, const std::vector<uint8_t>* token_mask) {
  if (kind == GateScores::softmax) return scores;
  const int64_t T = scores.size(0), X = scores.size(1);
  const std::vector<int32_t> all = every_expert(T, X, token_mask);
  return Tensor::from({T, X}, gather_gates(scores, all, all, X, true));
}

}  // namespace

int64_t batch_capacity(const RouterSettings& settings, const BatchInfo& batch, int64_t k, int64_t experts) {
  if (batch.dropless) return -1;
  const double factor = !batch.training && settings.eval_capacity_factor != 0 ? settings.eval_capacity_factor
                                                                            : settings.capacity_factor;
  const int64_t tokens = unmasked_count(batch.tokens_count(), batch.mask);
  const int64_t capacity = expert_capacity(factor * static_cast<double>(k), tokens, experts, settings.min_capacity);
  if (capacity == 0 && tokens > 0) {
    static std::once_flag warned;
    std::call_once(warned, [&] {
      spdlog::warn("router capacity is 0 for a batch of {} tokens over {} experts (capacity factor {}, "
                   "min_capacity {}): every token is dropped and the moe blocks add nothing; raise "
                   "router.capacity_factor or router.min_capacity",
                   tokens, experts, factor, settings.min_capacity);
    });
  }
  return capacity;
}

RouterDecision softmax_decision(const Tensor& logits, int64_t k) {
  RouterDecision decision;
  decision.kind = GateScores::softmax;
  decision.logits = logits.to(Device::cpu);
  decision.scores = softmax_forward(decision.logits);
  decision.k = k;
  std::vector<float> unused;
  top_k(decision.scores, k, decision.chosen, unused);
  decision.balance_k = 1;
  decision.balance_choice.resize(static_cast<size_t>(decision.logits.size(0)));
  for (size_t t = 0; t < decision.balance_choice.size(); ++t) {
    decision.balance_choice[t] = decision.chosen[t * static_cast<size_t>(k)];
  }
  return decision;
}

RouterDecision fixed_decision(const Tensor& logits, std::vector<int32_t> chosen) {
  RouterDecision decision;
  decision.kind = GateScores::none;
  decision.logits = logits.to(Device::cpu);
  decision.k = 1;
  decision.chosen = std::move(chosen);
  return decision;
}

Routing finish_routing(RouterDecision decision, const LossCoefficients& coefficients, const BatchInfo& batch,
                       int64_t capacity, std::unique_ptr<SavedActivations>* saved) {
  const Tensor& logits = decision.logits;
  const int64_t T = logits.size(0), X = logits.size(1), k = decision.k;
  const std::vector<uint8_t>* mask = batch.mask;
  if (T != batch.tokens_count()) {
    throw ShapeError("router: logits: expected " + std::to_string(batch.tokens_count()) + " rows (B·L), found " +
                     logits.shape_string());
  }
  if (static_cast<int64_t>(decision.chosen.size()) != T * k) {
    throw ShapeError("router: expected " + std::to_string(T * k) + " choices (T·k), found " +
                     std::to_string(decision.chosen.size()));
  }
  for (int64_t t = 0; t < T; ++t) {
    if (batch.kept(t)) continue;
    for (int64_t r = 0; r < k; ++r) decision.chosen[static_cast<size_t>(t * k + r)] = -1;
  }

  auto keep = saved ? std::make_unique<DecisionSaved>() : nullptr;
  Routing routing;
  routing.k = k;
  routing.expert = decision.chosen;
  RoutingStats& stats = routing.stats;
  stats.present = true;
  stats.dropped = apply_capacity(routing.expert, k, X, capacity, mask);
  stats.routed_tokens = unmasked_count(T, mask);
  stats.assignments = T * k;
  stats.droppable = stats.routed_tokens * k;
  stats.load = assignment_load(decision.chosen, k, X, mask);
  if (decision.kind == GateScores::none) {
    routing.gate.assign(routing.expert.size(), 0.0f);
    for (size_t a = 0; a < routing.expert.size(); ++a) routing.gate[a] = routing.expert[a] >= 0 ? 1.0f : 0.0f;
    stats.mean_probability = stats.load;
  } else {
    const Tensor ratio =
        decision.kind == GateScores::sigmoid ? ratio_scores(decision.logits, decision.scores) : decision.scores;
    routing.gate = gather_gates(decision.normalize_gates ? ratio : decision.scores, decision.chosen, routing.expert,
                                k, decision.normalize_gates);
    const Tensor probabilities = balance_probabilities(decision.kind, ratio, mask);
    if (saved) keep->ratio = ratio;
    std::vector<double> fraction;
    const double balance = load_balance_loss(probabilities, decision.balance_choice, decision.balance_k, mask,
                                             &fraction, &stats.mean_probability);
    stats.aux_loss = coefficients.aux * balance;
    stats.entropy = normalized_router_entropy(probabilities, mask);
    if (saved) keep->fraction = std::move(fraction);
  }
  stats.z_loss = coefficients.z > 0 ? coefficients.z * router_z_loss(logits, mask) : 0.0;

  if (saved) {
    keep->kind = decision.kind;
    keep->logits = decision.logits;
    keep->scores = decision.scores;
    keep->k = k;
    keep->chosen = std::move(decision.chosen);
    keep->expert = routing.expert;
    keep->normalize_gates = decision.normalize_gates;
    keep->coefficients = coefficients;
    if (mask) keep->token_mask = *mask;
    *saved = std::move(keep);
  }
  return routing;
}

Tensor score_gradient(const std::vector<float>& grad_gate, const DecisionSaved& saved, float aux_loss_scale) {
  const int64_t T = saved.logits.size(0), X = saved.logits.size(1);
  if (saved.kind == GateScores::none) return Tensor({T, X});
  const std::vector<uint8_t>* mask = saved.token_mask.empty() ? nullptr : &saved.token_mask;
  // gates → scores: the normalised gates of sigmoid scores are taken on their ratio scores r = c·s
  const bool ratio_gates = saved.kind == GateScores::sigmoid && saved.normalize_gates;
  Tensor grad_scores = gather_gates_backward(grad_gate, ratio_gates ? saved.ratio : saved.scores, saved.chosen,
                                             saved.expert, saved.k, saved.normalize_gates);
  // aux loss → scores (f held fixed); sigmoid scores reach it through their normalisation over experts
  Tensor grad_ratio;  // sigmoid: dL/dr of what was computed on the ratio scores
  if (saved.coefficients.aux > 0) {
    const float scale = aux_loss_scale * static_cast<float>(saved.coefficients.aux);
    if (saved.kind == GateScores::softmax) {
      load_balance_loss_backward(grad_scores, saved.fraction, mask, scale);
    } else {
      Tensor grad_normalized({T, X});
      load_balance_loss_backward(grad_normalized, saved.fraction, mask, scale);
      const std::vector<int32_t> all = every_expert(T, X, mask);
      grad_ratio = gather_gates_backward(grad_normalized.to_vector(), saved.ratio, all, all, X, true);
    }
  }
  if (saved.kind == GateScores::softmax) return softmax_backward(grad_scores, saved.scores);
  // s = sigmoid(x), r = c·s with c fixed per row: dL/dx = dL/ds · s (1 − s) = dL/dr · r (1 − s), the
  // second finite where s underflows (dL/dr · r is the normalised ratio times a bounded gradient).
  // Where r = s (every row above kScaledBelow) both are one product, as (gate + aux) · s (1 − s).
  for (int64_t i = 0; i < T * X; ++i) {
    const float s = saved.scores[i], r = saved.ratio[i], one_minus = 1.0f - s;
    const float gate = grad_scores[i];
    if (!grad_ratio.defined()) {
      grad_scores[i] = gate * ((ratio_gates ? r : s) * one_minus);
    } else if (ratio_gates || r == s) {
      grad_scores[i] = (gate + grad_ratio[i]) * (r * one_minus);
    } else {
      grad_scores[i] = gate * (s * one_minus) + grad_ratio[i] * (r * one_minus);
    }
  }
  return grad_scores;
}

void add_z_loss_gradient(Tensor& grad_logits, const DecisionSaved& saved, float aux_loss_scale) {
  if (saved.coefficients.z <= 0) return;
  const std::vector<uint8_t>* mask = saved.token_mask.empty() ? nullptr : &saved.token_mask;
  router_z_loss_backward(grad_logits, saved.logits, mask, aux_loss_scale * static_cast<float>(saved.coefficients.z));
}

RouterGrads decision_backward(const std::vector<float>& grad_gate, const SavedActivations& saved_any,
                              float aux_loss_scale) {
  const auto& saved = static_cast<const DecisionSaved&>(saved_any);
  Tensor grad_logits = score_gradient(grad_gate, saved, aux_loss_scale);
  add_z_loss_gradient(grad_logits, saved, aux_loss_scale);
  return RouterGrads{grad_logits, Tensor()};
}

int64_t read_k(const RouterContext& context, int64_t fallback) {
  const int64_t k = context.options.get_int("top_k", std::min(fallback, context.num_experts), 1);
  if (k > context.num_experts) {
    // The block, when the router belongs to one ("backbone.layers.3.mixer.router."): its num_experts may be
    // its own ([model.layers.3]) rather than [model]'s.
    const std::string layers = "backbone.layers.";
    std::string owner;
    if (context.prefix.rfind(layers, 0) == 0) {
      owner = "block " + context.prefix.substr(layers.size(), context.prefix.find('.', layers.size()) - layers.size()) +
              "'s ";
    }
    context.options.fail("top_k", "expected at most " + owner + "num_experts = " +
                                      std::to_string(context.num_experts) + ", found " + std::to_string(k));
  }
  return k;
}

bool read_normalize_gates(const RouterContext& context, int64_t k) {
  if (k > 1) return context.options.get_bool("normalize_gates", true);
  if (context.options.get_bool("normalize_gates", false)) {
    context.options.fail("normalize_gates", "with k = 1 every normalised gate is 1 and the router gets no "
                                            "gradient; set it false or leave it unset");
  }
  return false;
}

double explicit_aux_loss_coef(const RouterContext& context) {
  if (context.options.has("aux_loss_coef")) return context.settings.aux_loss_coef;
  // effective.toml then says 0, the value used, and running it again gives the same run.
  context.options.record_resolved("aux_loss_coef", 0.0);
  return 0.0;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace mr1
