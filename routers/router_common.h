// What the routers share: the capacity of a batch, the options several of them read, and the one path
// from a routing decision (chosen experts and the scores their gates come from) to gates, capacity,
// statistics, and back to dL/dlogits. Shape letters: T tokens (B·L), X experts, k assignments per token.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "routers/router.h"

namespace mr1 {

// How a router's gates come from its logits.
enum class GateScores {
  softmax,  // probabilities softmax(logits): switch, topk, noisy_topk, expert_choice, sinkhorn
  sigmoid,  // affinities sigmoid(logits): aux_free
  none,     // no scores, every routed gate is 1: hash, random
};

// What a router decided, before capacity.
struct RouterDecision {
  GateScores kind = GateScores::softmax;
  Tensor logits;                   // (T, X) the router logits, which the z-loss reads
  Tensor scores;                   // (T, X) softmax or sigmoid of the logits (noisy_topk: of the noisy
                                   // logits); undefined for GateScores::none
  int64_t k = 1;                   // assignments per token
  std::vector<int32_t> chosen;     // T·k experts, −1 = none; masked tokens are cleared by finish_routing
  bool normalize_gates = false;    // gates divided by the sum of the token's chosen scores
  // The choices counted in f_j of the load-balancing loss, balance_k per token (the first choices: 1).
  std::vector<int32_t> balance_choice;
  int64_t balance_k = 1;
};

// The loss coefficients a router applies (aux already resolved: see explicit_aux_loss_coef).
struct LossCoefficients {
  double aux = 0;
  double z = 0;
};

// What backward needs of a routing decision: the decision, the kept assignments and the aux loss's f.
struct DecisionSaved : SavedActivations {
  GateScores kind = GateScores::softmax;
  Tensor logits, scores;           // (T, X)
  Tensor ratio;                    // (T, X) sigmoid: the scores the normalised quantities were taken on
  int64_t k = 1;
  std::vector<int32_t> chosen;     // T·k before capacity
  std::vector<int32_t> expert;     // T·k after capacity
  bool normalize_gates = false;
  std::vector<double> fraction;    // X: f_j of the load-balancing loss
  LossCoefficients coefficients;
  std::vector<uint8_t> token_mask;  // empty = every token kept
};

// The capacity C of this batch: max(floor(factor · k · T / X), min_capacity) with T the unmasked tokens
// (assignments counted, as GShard counts its two choices), factor = eval_capacity_factor outside
// training when it is not 0, else capacity_factor. −1 (no limit) when batch.dropless or factor <= 0.
int64_t batch_capacity(const RouterSettings& settings, const BatchInfo& batch, int64_t k, int64_t experts);

// The decision of a softmax router: scores = softmax(logits), chosen = the top k (ties to the lowest
// index), balance_choice = the first choices.
RouterDecision softmax_decision(const Tensor& logits, int64_t k);

// The shared tail of every route(): clears masked tokens' choices, applies `capacity` (−1 = none; first
// choices claim slots before second choices, tokens in flattened order), gathers the gates, fills every
// RoutingStats field and, when `saved` is given, what decision_backward needs. For GateScores::none the
// router has no probabilities: entropy 0, aux loss 0 and mean_probability = the load (its one-hot decisions).
// The aux loss of sigmoid scores is taken on the scores normalised over all X experts per token.
Routing finish_routing(RouterDecision decision, const LossCoefficients& coefficients, const BatchInfo& batch,
                       int64_t capacity, std::unique_ptr<SavedActivations>* saved);

// dL/d(the input of the softmax or sigmoid that made the scores) from dL/dgate and the aux loss, the
// decisions held fixed; zero for GateScores::none. The z-loss is not included (add_z_loss_gradient).
Tensor score_gradient(const std::vector<float>& grad_gate, const DecisionSaved& saved, float aux_loss_scale);
// Adds aux_loss_scale · z · dz/dlogits to grad_logits (T, X).
void add_z_loss_gradient(Tensor& grad_logits, const DecisionSaved& saved, float aux_loss_scale);
// Both: the gradients of a router whose scores come straight from its logits.
RouterGrads decision_backward(const std::vector<float>& grad_gate, const SavedActivations& saved,
                              float aux_loss_scale);

// The decision of a router without probabilities (hash, random): one chosen expert per token (T), gates 1.
RouterDecision fixed_decision(const Tensor& logits, std::vector<int32_t> chosen);

// Base of the routers whose backward is decision_backward: the shared settings and loss coefficients.
class DecisionRouter : public Router {
 public:
  DecisionRouter(const RouterContext& context, LossCoefficients coefficients)
      : settings_(context.settings), num_experts_(context.num_experts), coefficients_(coefficients) {}
  RouterGrads backward(const std::vector<float>& grad_gate, const SavedActivations& saved,
                       float aux_loss_scale) override {
    return decision_backward(grad_gate, saved, aux_loss_scale);
  }

 protected:
  RouterSettings settings_;
  int64_t num_experts_;
  LossCoefficients coefficients_;
};

// Options several routers read from the [router] table.
// `k`: assignments per token, 1 to X.
int64_t read_k(const RouterContext& context, int64_t fallback);
// `normalize_gates`: default true when k > 1. With k = 1 normalising would make every gate 1 and leave
// the router without a gradient, so the default is then false and true is an error.
bool read_normalize_gates(const RouterContext& context, int64_t k);
// The aux-loss coefficient of a router whose paper needs no balancing loss (expert_choice, aux_free):
// 0 unless the [router] table sets aux_loss_coef itself (the shared default is not applied).
double explicit_aux_loss_coef(const RouterContext& context);

// SplitMix64 (Steele, Lea & Flood 2014): a fixed 64-bit mixing function for hash and random routing.
uint64_t splitmix64(uint64_t x);

}  // namespace mr1
