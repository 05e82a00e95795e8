// The noisy top-k router (Shazeer et al. 2017, "Outrageously Large Neural Networks", §2.1): in training
//   H = logits + ε ⊙ softplus(u · W_noiseᵀ)     (noise = "learned", W_noise: router.w_noise (X, D))
//   H = logits + noise_std · ε                  (noise = "fixed")
// with ε ~ N(0, 1) per (token, expert) from the step's generator; H = logits at evaluation. Each token goes
// to the k largest H (lowest index on ties) with G = softmax(KeepTopK(H, k)), which is softmax(H) of the
// chosen experts normalised over them (normalize_gates, default true when k > 1; false: the raw softmax(H)).
// W_noise starts at zero, as in the paper (noise std softplus(0) = log 2 at first). Capacity and dropping
// as topk. Deviation: the aux loss is the switch formula on softmax(H) with f_j from the first choices,
// not the paper's importance and load losses; the z-loss is taken on the noiseless logits.
// The backward is exact for the drawn ε: dH/dlogits = 1, dH/dn = ε · sigmoid(n), n = u · W_noiseᵀ.
// Shape letters: T tokens, X experts, D dim.
#include "routers/noisy_topk_router.h"

#include <cmath>
#include <stdexcept>

#include "blocks/random.h"
#include "kernels/elementwise.h"
#include "kernels/linear.h"

namespace mr1 {

namespace {

struct NoisySaved : SavedActivations {
  std::unique_ptr<SavedActivations> decision;  // DecisionSaved; its scores are softmax(H)
  bool noisy = false;                          // noise was added (training)
  Tensor epsilon;                              // (T, X)
  Tensor noise_pre;                            // (T, X) n = u · W_noiseᵀ (learned noise)
  Tensor input;                                // (T, D) u (learned noise)
};

double softplus(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); }
double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

NoisyTopKRouter::NoisyTopKRouter(const RouterContext& context)
    : settings_(context.settings),
      num_experts_(context.num_experts),
      k_(read_k(context, 2)),
      normalize_gates_(read_normalize_gates(context, k_)) {
  const ConfigTable& options = context.options;
  learned_ = options.get_choice("noise", "learned", {"learned", "fixed"}) == "learned";
  noise_std_ = options.get_double("noise_std", 1.0);
  if (learned_ && options.has("noise_std")) {
    options.fail("noise_std", "applies to noise = \"fixed\" only; learned noise has the std softplus(u · W_noiseᵀ)");
  }
  if (!(noise_std_ > 0)) options.fail("noise_std", "expected a number > 0, found " + std::to_string(noise_std_));
  if (learned_) {
    if (context.dim < 1) throw std::logic_error("noisy_topk router: learned noise needs RouterContext::dim");
    w_noise_ = &context.parameters.add(context.prefix + "w_noise", {num_experts_, context.dim}, true);
  }
}

Routing NoisyTopKRouter::route(const Tensor& logits_any, const Tensor& input, const BatchInfo& batch,
                               std::unique_ptr<SavedActivations>* saved) {
  const Tensor logits = logits_any.to(Device::cpu);
  const int64_t T = logits.size(0), X = logits.size(1);
  auto keep = std::make_unique<NoisySaved>();
  Tensor noisy = logits;
  if (batch.training) {
    if (!batch.random) {
      throw std::invalid_argument("noisy_topk router: training draws noise, but the batch has no random generator");
    }
    keep->noisy = true;
    keep->epsilon = Tensor({T, X});
    batch.random->fill_normal(keep->epsilon, 0.0, 1.0);
    noisy = logits.clone();
    if (learned_) {
      keep->input = input.to(Device::cpu);
      keep->noise_pre = linear_forward(keep->input, w_noise_->value.to(Device::cpu), nullptr);
      for (int64_t i = 0; i < T * X; ++i) {
        noisy[i] += static_cast<float>(keep->epsilon[i] * softplus(keep->noise_pre[i]));
      }
    } else {
      for (int64_t i = 0; i < T * X; ++i) noisy[i] += static_cast<float>(noise_std_ * keep->epsilon[i]);
    }
  }
  RouterDecision decision = softmax_decision(noisy, k_);
  decision.logits = logits;  // the z-loss reads the noiseless logits
  decision.normalize_gates = normalize_gates_;
  Routing routing = finish_routing(std::move(decision), {settings_.aux_loss_coef, settings_.z_loss_coef}, batch,
                                   batch_capacity(settings_, batch, k_, num_experts_),
                                   saved ? &keep->decision : nullptr);
  if (saved) *saved = std::move(keep);
  return routing;
}

RouterGrads NoisyTopKRouter::backward(const std::vector<float>& grad_gate, const SavedActivations& saved_any,
                                      float aux_loss_scale) {
  const auto& saved = static_cast<const NoisySaved&>(saved_any);
  const auto& decision = static_cast<const DecisionSaved&>(*saved.decision);
  // dL/dH; H = logits + noise, so dL/dlogits gets it all
  Tensor grad_logits = score_gradient(grad_gate, decision, aux_loss_scale);
  Tensor grad_input;
  if (saved.noisy && learned_) {
    // noise = ε ⊙ softplus(n):  dL/dn = dL/dH · ε · sigmoid(n);  n = u · W_noiseᵀ
    Tensor grad_noise_pre(grad_logits.shape());
    for (int64_t i = 0; i < grad_noise_pre.numel(); ++i) {
      grad_noise_pre[i] = static_cast<float>(grad_logits[i] * saved.epsilon[i] * sigmoid(saved.noise_pre[i]));
    }
    LinearGrads grads = linear_backward(grad_noise_pre, saved.input, w_noise_->value.to(Device::cpu), false);
    add_inplace(w_noise_->grad, grads.weight.to(w_noise_->grad.device()));
    grad_input = grads.input;
  }
  add_z_loss_gradient(grad_logits, decision, aux_loss_scale);
  return RouterGrads{grad_logits, grad_input};
}

}  // namespace mr1
