// Whole-model gradient checks: Model::backward's parameter gradients against central finite
// differences of the training loss, for tiny configs covering every block kind, norm, positional
// encoding, input kind, tied and untied heads, masks, the MoE aux and z losses and capacity dropping.
// Shape letters: B batch, L length, D dim, V vocab_size.
#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <iomanip>
#include <random>
#include <sstream>

#include "blocks/model.h"
#include "blocks/random.h"
#include "experiments/loss.h"
#include "test_util.h"

using namespace mr1;

namespace {

// Float32 forward, double loss sum. The finite-difference step of a tensor is relative to the
// size of its values: eps_p = kStepRelative · rms(p), clamped to [kStepMin, kStepMax].
//  - truncation error of the central quotient is (eps²/6)·f''' — f varies on the scale of the
//    parameter itself (the embedding and pos_emb, N(0, 0.02), go through an rmsnorm whose
//    Jacobian is 1/rms ≈ 50), so the step must be small next to that scale: (0.03)²/6 ≈ 2e-4;
//  - rounding error of the float32 forward is about 1e-6·|loss| per evaluation, i.e.
//    ~1e-6/eps in the quotient: 1e-4 at eps = 1e-2, 2e-3 at eps = 6e-4 (the embedding's step,
//    where the gradients are ~50 times larger too).
constexpr double kStepRelative = 0.03;
constexpr double kStepMin = 1e-4;
constexpr double kStepMax = 1e-2;
// |g − fd| <= kLossNoise / eps + kRelativeTolerance · |fd|:
//  - the absolute part is the float32 rounding of the loss (a few 1e-7 relative through a dozen
//    layers, taken as 2e-6 · (1 + |loss|)) divided by the step: below it the quotient sees noise;
//  - the relative part (2%) covers the O(eps²) truncation with a wide margin and float32
//    accumulation in the backward pass; a wrong term in a backward (a missing factor, a sign, a
//    dropped path) is off by O(1).
constexpr double kLossNoise = 1e-7;
constexpr double kRelativeTolerance = 2e-2;
// Coordinates checked per tensor: the largest |gradient| and random others.
constexpr int64_t kCoordinatesPerTensor = 6;

struct GradientCase {
  std::string name;
  std::string toml;  // [model] keys (and a [router] table when wanted)
  int64_t B = 2, L = 6;
  std::vector<uint8_t> mask;  // empty = keep all
  bool expect_dropping = false;
  bool as_initialized = false;  // keep Model::initialize's values (see GradientModel)
};

// A small model from [model] / [router] TOML text (as in test_model.cpp), with its input and loss.
struct GradientModel {
  ExperimentFile file;
  ModelConfig config;
  RouterSettings router;
  std::unique_ptr<Model> model;
  ModelInput input;
  std::vector<int32_t> targets;  // token input: next-token targets
  Tensor weight;                 // embedding input: the loss is Σ hidden ⊙ weight

  GradientModel(const GradientCase& c, uint64_t seed) : file(ExperimentFile::parse(c.toml, c.name + ".toml")) {
    config = read_model_config(file.table("model"));
    router = read_router_settings(file.table("router"));
    model = std::make_unique<Model>(config, router, file.table("router"));
    model->initialize(seed);
    if (!c.as_initialized) move_to_generic_point(seed);
    input.batch = c.B;
    input.length = c.L;
    input.mask = c.mask;
    Random random(seed + 100);
    if (config.vocab_size > 0) {
      for (int64_t i = 0; i < c.B * c.L; ++i) input.tokens.push_back(static_cast<int32_t>(random.below(config.vocab_size)));
      targets = next_token_targets(input);
    } else {
      input.embeddings = test::random_tensor({c.B, c.L, config.dim}, seed + 200);
      weight = test::random_tensor({c.B, c.L, config.dim}, seed + 300);
    }
  }

  // The gradient identity holds at every point; the initialisation is a poor one to test it at:
  //  - dt = softplus(dt_proj.bias) in [1e-3, 1e-1] leaves the scan almost static, so the gradients
  //    of x_proj, dt_proj, A_log are ~1e-5, below what a float32 finite difference resolves;
  //    dt in [0.2, 1] makes every path of the scan matter;
  //  - the embedding and pos_emb, N(0, 0.02), make tied logits ~1e-3 (the loss is nearly flat)
  //    and, without a norm, every activation tiny; N(0, 0.5) makes them O(1).
  void move_to_generic_point(uint64_t seed) {
    Random random(seed + 400);
    for (const auto& parameter : model->parameters().all()) {
      const std::string& name = parameter->name;
      if (name.find("mixer.dt_proj.bias") != std::string::npos) {
        for (int64_t e = 0; e < parameter->value.numel(); ++e) {
          const double dt = random.uniform(0.2, 1.0);
          parameter->value[e] = static_cast<float>(dt + std::log(-std::expm1(-dt)));  // softplus⁻¹(dt)
        }
      } else if (name == "backbone.embedding.weight" || name == "backbone.pos_emb") {
        random.fill_normal(parameter->value, 0.0, 0.5);
      }
    }
  }

  struct Loss {
    double value = 0;      // the training loss, summed in double
    double magnitude = 0;  // Σ of the absolute values of its terms: the scale of its float32 rounding
    std::vector<RoutingStats> routing;  // per block: load per expert and drops of each MoE layer
  };

  // The training loss: the LM loss (token input) or Σ hidden ⊙ weight (embedding input), plus every
  // MoE aux loss. With a tape, also runs Model::backward into freshly zeroed gradients.
  Loss evaluate(bool with_backward) {
    ForwardOptions options;
    options.training = true;
    ForwardTape tape;
    const ModelOutput output = model->forward(input, options, with_backward ? &tape : nullptr);
    Loss loss;
    loss.routing = output.routing;
    if (with_backward) model->parameters().zero_grad();
    if (config.vocab_size > 0) {
      const LossResult result = language_model_loss(output, targets, with_backward);
      if (with_backward) model->backward(tape, &result.grad_logits, nullptr, 1.0f);
      loss.value = result.loss;
      loss.magnitude = result.lm_loss + result.aux_loss;  // both sums of positive terms
      return loss;
    }
    if (with_backward) model->backward(tape, nullptr, &weight, 1.0f);
    loss.value = output.aux_loss;
    loss.magnitude = output.aux_loss;
    for (int64_t i = 0; i < output.hidden.numel(); ++i) {
      const double term = double(output.hidden[i]) * double(weight[i]);
      loss.value += term;
      loss.magnitude += std::abs(term);
    }
    return loss;
  }
};

// Two forward passes routed every token the same way: same load per expert and same drops in
// every MoE layer. A perturbation that moves a token to another expert moves one unit of load,
// so comparing the loads detects it (two opposite moves in one layer from one tiny step would not
// be, but would need two near-ties at once).
bool same_routing(const std::vector<RoutingStats>& a, const std::vector<RoutingStats>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].present != b[i].present || a[i].load != b[i].load || a[i].dropped != b[i].dropped) return false;
  }
  return true;
}

struct CheckResult {
  int64_t checked = 0;
  int64_t skipped = 0;     // coordinates whose ± step changed a routing decision
  double worst_ratio = 0;  // max over coordinates of |g − fd| / tolerance (must be <= 1)
  std::string worst;       // that coordinate, described
  double worst_relative = 0;  // max |g − fd| / |fd| over coordinates with |fd| well above the noise
  std::string worst_relative_at;
  int64_t dropped = 0;     // tokens dropped for capacity in the unperturbed pass
  std::string unresolved;  // tensors whose largest gradient is within 10x the noise floor
};

CheckResult check_gradients(const GradientCase& c, uint64_t seed) {
  GradientModel m(c, seed);
  const GradientModel::Loss base = m.evaluate(true);
  CheckResult result;
  for (const RoutingStats& stats : base.routing) result.dropped += stats.dropped;

  std::mt19937_64 generator(seed);
  for (const auto& parameter : m.model->parameters().all()) {
    Tensor& value = parameter->value;
    const std::vector<float> grad = parameter->grad.to_vector();
    const int64_t n = value.numel();
    double squares = 0;
    for (int64_t i = 0; i < n; ++i) squares += double(value[i]) * double(value[i]);
    const double eps = std::clamp(kStepRelative * std::sqrt(squares / double(n)), kStepMin, kStepMax);
    const double absolute_tolerance = kLossNoise * base.magnitude / eps;

    // The coordinates: the largest |gradient| first, then distinct random ones.
    std::vector<int64_t> coordinates;
    int64_t largest = 0;
    for (int64_t i = 1; i < n; ++i) {
      if (std::abs(grad[size_t(i)]) > std::abs(grad[size_t(largest)])) largest = i;
    }
    coordinates.push_back(largest);
    if (std::abs(grad[size_t(largest)]) < 10 * absolute_tolerance) result.unresolved += parameter->name + " ";
    if (n <= kCoordinatesPerTensor) {
      coordinates.clear();
      for (int64_t i = 0; i < n; ++i) coordinates.push_back(i);
    } else {
      std::uniform_int_distribution<int64_t> pick(0, n - 1);
      while (static_cast<int64_t>(coordinates.size()) < kCoordinatesPerTensor) {
        const int64_t i = pick(generator);
        if (std::find(coordinates.begin(), coordinates.end(), i) == coordinates.end()) coordinates.push_back(i);
      }
    }

    for (const int64_t i : coordinates) {
      const float original = value[i];
      // The float32 steps actually taken, so that rounding of original ± eps does not bias the quotient.
      const float up = static_cast<float>(original + eps), down = static_cast<float>(original - eps);
      value[i] = up;
      const GradientModel::Loss loss_up = m.evaluate(false);
      value[i] = down;
      const GradientModel::Loss loss_down = m.evaluate(false);
      value[i] = original;
      if (!same_routing(base.routing, loss_up.routing) || !same_routing(base.routing, loss_down.routing)) {
        ++result.skipped;
        continue;
      }
      ++result.checked;
      const double fd = (loss_up.value - loss_down.value) / (double(up) - double(down));
      const double g = grad[size_t(i)];
      const double error = std::abs(g - fd);
      const double tolerance = absolute_tolerance + kRelativeTolerance * std::abs(fd);
      std::ostringstream where;
      where << parameter->name << "[" << i << "]: backward " << g << ", finite difference " << fd << " (eps " << eps
            << ", tolerance " << tolerance << ")";
      if (error / tolerance > result.worst_ratio) {
        result.worst_ratio = error / tolerance;
        result.worst = where.str();
      }
      if (std::abs(fd) > 10 * absolute_tolerance && error / std::abs(fd) > result.worst_relative) {
        result.worst_relative = error / std::abs(fd);
        result.worst_relative_at = where.str();
      }
    }
  }
  return result;
}

const char* kTiny =
    "[model]\ndim = 8\nd_state = 3\nd_conv = 3\nexpand = 2\ndt_rank = 2\nnum_experts = 3\nexpert_dim = 12\n"
    "max_seq_len = 8\n";

std::string tiny(const std::string& more) { return std::string(kTiny) + more; }

void run_case(const GradientCase& c, uint64_t seed = 1) {
  if (const char* env = std::getenv("GRAD_SEED")) seed = std::strtoull(env, nullptr, 10);
  const CheckResult result = check_gradients(c, seed);
  std::ostringstream summary;
  summary << std::setprecision(4) << c.name << ": " << result.checked << " coordinates checked, " << result.skipped
          << " skipped for a routing change, " << result.dropped << " tokens dropped; worst error/tolerance "
          << result.worst_ratio << " at " << result.worst << "; worst relative error " << result.worst_relative
          << " at " << result.worst_relative_at << "; unresolved: " << result.unresolved;
  INFO(summary.str());
  CHECK(result.checked > 0);
  // A routing change is rare with these seeds; many would mean the check tests little.
  CHECK(result.skipped * 10 <= result.checked);
  if (c.expect_dropping) CHECK(result.dropped > 0);
  CHECK(result.worst_ratio <= 1.0);
}

}  // namespace

TEST_CASE("every block kind's parameter gradients match finite differences", "[gradients]") {
  SECTION("mamba, embeddings") {
    run_case({"mamba", tiny("depth = 2\norder = [\"mamba\"]\n")});
  }
  SECTION("moe, tokens") {
    run_case({"moe", tiny("depth = 2\norder = [\"moe\"]\nvocab_size = 11\n")});
  }
  SECTION("mlp, tokens") {
    run_case({"mlp", tiny("depth = 2\norder = [\"mlp\"]\nvocab_size = 11\n")});
  }
  SECTION("mamba then moe, tokens") {
    run_case({"mamba-moe", tiny("depth = 1\norder = [\"mamba\", \"moe\"]\nvocab_size = 11\n")});
  }
  SECTION("mamba, mlp, moe, embeddings") {
    run_case({"mamba-mlp-moe", tiny("depth = 1\norder = [\"mamba\", \"mlp\", \"moe\"]\n")});
  }
}

TEST_CASE("gradients match finite differences for every norm", "[gradients]") {
  for (const std::string norm : {"rmsnorm", "layernorm", "none"}) {
    SECTION(norm) {
      run_case({"norm " + norm, tiny("depth = 1\norder = [\"mamba\", \"moe\"]\nvocab_size = 11\nnorm = \"" + norm + "\"\n")});
      run_case({"norm " + norm + ", embeddings", tiny("depth = 1\norder = [\"mamba\", \"mlp\"]\nnorm = \"" + norm + "\"\n")});
    }
  }
}

TEST_CASE("gradients match finite differences for rotary, learned and both positions", "[gradients]") {
  for (const std::string positional : {"[\"rotary\"]", "[\"learned\"]", "[\"learned\", \"rotary\"]", "[]"}) {
    SECTION(positional) {
      run_case({"positional " + positional,
                tiny("depth = 1\norder = [\"mamba\", \"moe\"]\nvocab_size = 11\npositional = " + positional + "\n")});
      run_case({"positional " + positional + ", embeddings",
                tiny("depth = 1\norder = [\"mamba\", \"mlp\"]\npositional = " + positional + "\n")});
    }
  }
}

TEST_CASE("gradients match finite differences with tied and untied embeddings", "[gradients]") {
  for (const std::string tie : {"true", "false"}) {
    SECTION("tie_embeddings = " + tie) {
      run_case({"tie " + tie, tiny("depth = 1\norder = [\"mamba\", \"mlp\"]\nvocab_size = 11\ntie_embeddings = " + tie + "\n")});
    }
  }
}

TEST_CASE("gradients match finite differences with masked positions", "[gradients]") {
  const std::vector<uint8_t> mask{1, 1, 0, 1, 1, 1, /**/ 0, 1, 1, 1, 0, 1};
  run_case({"mask, tokens", tiny("depth = 1\norder = [\"mamba\", \"mlp\", \"moe\"]\nvocab_size = 11\n"), 2, 6, mask});
  run_case({"mask, embeddings", tiny("depth = 1\norder = [\"mamba\", \"mlp\", \"moe\"]\n"), 2, 6, mask});
}

TEST_CASE("the MoE aux and z losses' gradients match finite differences", "[gradients]") {
  // Coefficients far above the defaults so that a wrong aux gradient shows above the tolerance.
  run_case({"aux and z loss", tiny("depth = 1\norder = [\"mamba\", \"moe\"]\nvocab_size = 11\n"
                                   "[router]\naux_loss_coef = 0.5\nz_loss_coef = 0.1\n")});
  run_case({"aux and z loss, embeddings, mask", tiny("depth = 1\norder = [\"moe\"]\n"
                                                     "[router]\naux_loss_coef = 0.5\nz_loss_coef = 0.1\n"),
            2, 6, {1, 1, 1, 0, 1, 1, /**/ 1, 0, 1, 1, 1, 1}});
}

TEST_CASE("gradients match finite differences when MoE capacity drops tokens", "[gradients]") {
  // C = max(floor(0.5 · 12 / 3), min_capacity) = 2 slots per expert for 12 tokens: some are dropped.
  for (const std::string min_capacity : {"0", "1"}) {
    SECTION("min_capacity = " + min_capacity) {
      GradientCase tokens{"capacity, tokens", tiny("depth = 1\norder = [\"mamba\", \"moe\"]\nvocab_size = 11\n"
                                                  "[router]\ncapacity_factor = 0.5\nmin_capacity = " + min_capacity +
                                                  "\n")};
      tokens.expect_dropping = true;
      run_case(tokens);
      GradientCase embeddings{"capacity, embeddings, mask",
                              tiny("depth = 1\norder = [\"moe\"]\n[router]\ncapacity_factor = 0.5\nmin_capacity = " +
                                   min_capacity + "\n"),
                              2, 6, {1, 1, 1, 1, 0, 1, /**/ 1, 1, 1, 1, 1, 1}};
      embeddings.expect_dropping = true;
      run_case(embeddings);
    }
  }
}

TEST_CASE("debug fd sweep", "[.debugfd]") {
  GradientCase c{"rot", tiny("depth = 1\norder = [\"mamba\", \"mlp\"]\npositional = [\"rotary\"]\n")};
  GradientModel m(c, 5);
  const double loss = m.evaluate(true).value;
  Parameter& p = m.model->parameters().get(std::getenv("PNAME"));
  const int64_t i = std::atoll(std::getenv("PIDX"));
  std::printf("loss %.9g grad %.9g\n", loss, p.grad[i]);
  const float original = p.value[i];
  for (double eps : {3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4}) {
    const float up = float(original + eps), down = float(original - eps);
    p.value[i] = up; const double a = m.evaluate(false).value;
    p.value[i] = down; const double b = m.evaluate(false).value;
    p.value[i] = original;
    std::printf("eps %g fd %.9g\n", eps, (a - b) / (double(up) - double(down)));
  }
}
