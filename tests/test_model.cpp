// The assembled model: shapes for several block orders and both inputs, the normative parameter
// names, masking, causality, initialisation and input errors.
#include <cmath>
#include <set>
#include <utility>
#include <vector>

#include <omp.h>

#include "blocks/model.h"
#include "blocks/random.h"
#include "experiments/loss.h"
#include "kernels/elementwise.h"
#include "model_fixture.h"
#include "test_util.h"

using namespace mr1;
using Catch::Matchers::Contains;

namespace {

using test::SmallModel;

const char* kSmall =
    "[model]\ndim = 16\nd_state = 4\nd_conv = 3\nexpand = 2\nnum_experts = 3\nexpert_dim = 24\nmax_seq_len = 32\n";

}  // namespace

TEST_CASE("the model's outputs have the documented shapes for every block order", "[model]") {
  for (const std::string order : {"[\"mamba\"]", "[\"moe\"]", "[\"mlp\"]", "[\"mamba\", \"moe\"]",
                                  "[\"mamba\", \"mlp\", \"moe\"]"}) {
    for (const int vocab : {0, 11}) {
      INFO("order " << order << ", vocab " << vocab);
      SmallModel small(std::string(kSmall) + "depth = 2\norder = " + order + "\nvocab_size = " +
                       std::to_string(vocab) + "\n");
      const ModelOutput output = small.model->forward(small.input(2, 5, 3), ForwardOptions{});
      CHECK(output.hidden.shape() == Shape{2, 5, 16});
      if (vocab > 0) {
        CHECK(output.logits.shape() == Shape{2, 5, 11});
      } else {
        CHECK_FALSE(output.logits.defined());
      }
      CHECK(std::isfinite(sum(output.hidden)));
      CHECK(small.model->block_count() == 2 * static_cast<int64_t>(small.config.order.size()));
    }
  }
}

TEST_CASE("parameters carry the normative names and shapes", "[model]") {
  SmallModel small(std::string(kSmall) + "depth = 1\nvocab_size = 10\ndt_rank = 2\n");
  std::map<std::string, Shape> found;
  for (const auto& parameter : small.model->parameters().all()) found[parameter->name] = parameter->value.shape();
  const std::map<std::string, Shape> expected{
      {"backbone.embedding.weight", {10, 16}},
      {"backbone.pos_emb", {32, 16}},
      {"backbone.layers.0.norm.weight", {16}},
      {"backbone.layers.0.mixer.in_proj.weight", {64, 16}},
      {"backbone.layers.0.mixer.conv1d.weight", {32, 1, 3}},
      {"backbone.layers.0.mixer.conv1d.bias", {32}},
      {"backbone.layers.0.mixer.x_proj.weight", {2 + 2 * 4, 32}},
      {"backbone.layers.0.mixer.dt_proj.weight", {32, 2}},
      {"backbone.layers.0.mixer.dt_proj.bias", {32}},
      {"backbone.layers.0.mixer.A_log", {32, 4}},
      {"backbone.layers.0.mixer.D", {32}},
      {"backbone.layers.0.mixer.out_proj.weight", {16, 32}},
      {"backbone.layers.1.norm.weight", {16}},
      {"backbone.layers.1.mixer.router.weight", {3, 16}},
      {"backbone.layers.1.mixer.router.bias", {3}},
      {"backbone.layers.1.mixer.experts.0.fc1.weight", {24, 16}},
      {"backbone.layers.1.mixer.experts.0.fc1.bias", {24}},
      {"backbone.layers.1.mixer.experts.0.fc2.weight", {16, 24}},
      {"backbone.layers.1.mixer.experts.0.fc2.bias", {16}},
      {"backbone.layers.1.mixer.experts.1.fc1.weight", {24, 16}},
      {"backbone.layers.1.mixer.experts.1.fc1.bias", {24}},
      {"backbone.layers.1.mixer.experts.1.fc2.weight", {16, 24}},
      {"backbone.layers.1.mixer.experts.1.fc2.bias", {16}},
      {"backbone.layers.1.mixer.experts.2.fc1.weight", {24, 16}},
      {"backbone.layers.1.mixer.experts.2.fc1.bias", {24}},
      {"backbone.layers.1.mixer.experts.2.fc2.weight", {16, 24}},
      {"backbone.layers.1.mixer.experts.2.fc2.bias", {16}},
      {"backbone.norm_f.weight", {16}},
  };
  CHECK(found == expected);

  SECTION("layernorm adds biases, none removes the norms, an untied head adds lm_head.weight") {
    SmallModel layernorm(std::string(kSmall) + "depth = 1\nnorm = \"layernorm\"\n");
    CHECK(layernorm.model->parameters().find("backbone.layers.0.norm.bias"));
    CHECK(layernorm.model->parameters().find("backbone.norm_f.bias"));
    SmallModel none(std::string(kSmall) + "depth = 1\nnorm = \"none\"\npositional = [\"rotary\"]\n");
    CHECK_FALSE(none.model->parameters().find("backbone.layers.0.norm.weight"));
    CHECK_FALSE(none.model->parameters().find("backbone.pos_emb"));
    SmallModel untied(std::string(kSmall) + "depth = 1\nvocab_size = 10\ntie_embeddings = false\n");
    CHECK(untied.model->parameters().get("lm_head.weight").value.shape() == Shape{10, 16});
  }
}

TEST_CASE("the model gathers its blocks' caveats once each: expert_choice's, however many layers use it",
          "[model]") {
  // Blocks 1 and 3 are moe: both expert_choice, one, or neither.
  const std::string model = std::string(kSmall) + "depth = 2\nvocab_size = 10\n";
  const SmallModel both(model + "[router]\nname = \"expert_choice\"\n");
  REQUIRE(both.model->caveats().size() == 1);
  CHECK_THAT(both.model->caveats()[0], Contains("router expert_choice") && Contains("leaks the future"));
  const SmallModel one(model + "[model.layers.3.router]\nname = \"expert_choice\"\n");
  CHECK(one.model->caveats() == both.model->caveats());
  CHECK(SmallModel(model + "[model.layers.3.router]\nname = \"topk\"\n").model->caveats().empty());
  // A [router] table that no block routes through builds its router only to check its keys: no caveat.
  CHECK(SmallModel(std::string(kSmall) + "depth = 1\norder = [\"mamba\"]\n[router]\nname = \"expert_choice\"\n")
            .model->caveats()
            .empty());
}

TEST_CASE("per-block keys ([model.layers.i]) change their block alone", "[model]") {
  // Blocks 0 and 2 mamba, 1 and 3 moe. Block 2: other d_state, d_conv, expand and dt_rank; block 3: more,
  // narrower experts and its own router, top-2, whose other keys come from [router].
  const std::string text = std::string(kSmall) +
                           "depth = 2\nvocab_size = 10\ndt_rank = 2\n"
                           "[model.layers.2]\nd_state = 6\nd_conv = 2\nexpand = 1\ndt_rank = 3\n"
                           "[model.layers.3]\nnum_experts = 5\nexpert_dim = 7\n"
                           "[model.layers.3.router]\nname = \"topk\"\ntop_k = 2\n";
  SmallModel small(text + "[router]\naux_loss_coef = 0.5\n");
  ParameterStore& parameters = small.model->parameters();
  const auto shape = [&](const std::string& name) { return parameters.get(name).value.shape(); };
  // Block 0 keeps [model]'s values (E = 32, N = 4, K = 3, R = 2); block 2 has E = 16, N = 6, K = 2, R = 3.
  CHECK(shape("backbone.layers.0.mixer.A_log") == Shape{32, 4});
  CHECK(shape("backbone.layers.0.mixer.conv1d.weight") == Shape{32, 1, 3});
  CHECK(shape("backbone.layers.0.mixer.x_proj.weight") == Shape{2 + 2 * 4, 32});
  CHECK(shape("backbone.layers.2.mixer.in_proj.weight") == Shape{32, 16});
  CHECK(shape("backbone.layers.2.mixer.conv1d.weight") == Shape{16, 1, 2});
  CHECK(shape("backbone.layers.2.mixer.x_proj.weight") == Shape{3 + 2 * 6, 16});
  CHECK(shape("backbone.layers.2.mixer.dt_proj.weight") == Shape{16, 3});
  CHECK(shape("backbone.layers.2.mixer.A_log") == Shape{16, 6});
  CHECK(shape("backbone.layers.2.mixer.out_proj.weight") == Shape{16, 16});
  // Block 1: 3 experts of 24; block 3: 5 of 7.
  CHECK(shape("backbone.layers.1.mixer.router.weight") == Shape{3, 16});
  CHECK_FALSE(parameters.find("backbone.layers.1.mixer.experts.3.fc1.weight"));
  CHECK(shape("backbone.layers.3.mixer.router.weight") == Shape{5, 16});
  CHECK(shape("backbone.layers.3.mixer.experts.4.fc1.weight") == Shape{7, 16});
  CHECK(shape("backbone.layers.3.mixer.experts.4.fc2.weight") == Shape{16, 7});

  // Block 1 routes each token once (switch), block 3 twice (top-2).
  const ModelInput input = small.input(2, 12, 5);
  ForwardOptions options;
  options.training = true;
  const ModelOutput output = small.model->forward(input, options);
  REQUIRE(output.routing.size() == 4);
  CHECK(output.routing[1].assignments == 24);
  CHECK(output.routing[1].load.size() == 3);
  CHECK(output.routing[3].assignments == 48);
  CHECK(output.routing[3].load.size() == 5);

  // Block 3's aux_loss_coef is [router]'s 0.5: its aux loss is 50 times that of the same model with 0.01
  // given in [model.layers.3.router] (the same weights: the same shapes from the same seed).
  SmallModel explicit_coef(text + "aux_loss_coef = 0.01\n[router]\naux_loss_coef = 0.5\n");
  const ModelOutput smaller = explicit_coef.model->forward(input, options);
  REQUIRE(smaller.routing[3].aux_loss > 0);
  CHECK(output.routing[3].aux_loss / smaller.routing[3].aux_loss == Approx(50.0).epsilon(1e-9));
  CHECK(output.routing[1].aux_loss == smaller.routing[1].aux_loss);
}

TEST_CASE("initialisation follows mamba_ssm and is reproducible from the seed", "[model]") {
  SmallModel small(std::string(kSmall) + "depth = 1\n");
  const Tensor& A_log = small.model->parameters().get("backbone.layers.0.mixer.A_log").value;
  for (int64_t n = 0; n < 4; ++n) CHECK(A_log[5 * 4 + n] == Approx(std::log(n + 1.0)));
  CHECK(max_abs(small.model->parameters().get("backbone.layers.0.mixer.D").value) == 1.0f);
  // dt_proj.bias = softplus⁻¹(dt), dt in [1e-3, 1e-1]
  const Tensor& bias = small.model->parameters().get("backbone.layers.0.mixer.dt_proj.bias").value;
  for (int64_t e = 0; e < bias.numel(); ++e) {
    const double dt = std::log1p(std::exp(double(bias[e])));
    CHECK(dt >= 1e-3 * 0.999);
    CHECK(dt <= 1e-1 * 1.001);
  }
  SmallModel again(std::string(kSmall) + "depth = 1\n");
  const auto& a = small.model->parameters().all();
  const auto& b = again.model->parameters().all();
  for (size_t i = 0; i < a.size(); ++i) CHECK(a[i]->value.to_vector() == b[i]->value.to_vector());
}

TEST_CASE("inputs at masked positions do not change any output", "[model]") {
  SmallModel small(std::string(kSmall) + "depth = 2\norder = [\"mamba\", \"moe\", \"mlp\"]\n");
  ModelInput input = small.input(2, 6, 5);
  input.mask = {1, 1, 0, 1, 1, 1, /**/ 0, 1, 1, 1, 0, 1};
  const ModelOutput first = small.model->forward(input, ForwardOptions{});
  for (size_t i = 0; i < input.mask.size(); ++i) {
    if (input.mask[i]) continue;
    for (int64_t d = 0; d < 16; ++d) input.embeddings[static_cast<int64_t>(i) * 16 + d] = 100.0f;
  }
  const ModelOutput second = small.model->forward(input, ForwardOptions{});
  CHECK(first.hidden.to_vector() == second.hidden.to_vector());
}

TEST_CASE("without capacity limits the model is causal", "[model]") {
  SmallModel small(std::string(kSmall) + "depth = 2\n[router]\ncapacity_factor = 0.0\n");
  ModelInput input = small.input(1, 8, 7);
  const ModelOutput before = small.model->forward(input, ForwardOptions{});
  for (int64_t d = 0; d < 16; ++d) input.embeddings[5 * 16 + d] += 1.0f;
  const ModelOutput after = small.model->forward(input, ForwardOptions{});
  const auto a = before.hidden.to_vector(), b = after.hidden.to_vector();
  for (int64_t l = 0; l < 8; ++l) {
    double change = 0;
    for (int64_t d = 0; d < 16; ++d) change = std::max(change, double(std::abs(a[l * 16 + d] - b[l * 16 + d])));
    INFO("position " << l);
    if (l < 5) CHECK(change == 0.0);
    else CHECK(change > 1e-4);
  }
}

TEST_CASE("bad inputs are refused with the shape that was expected", "[model]") {
  SmallModel embeddings(std::string(kSmall) + "depth = 1\n");
  CHECK_THROWS_WITH(embeddings.model->forward(embeddings.input(1, 33, 1), ForwardOptions{}),
                    Contains("length 33") && Contains("max_seq_len = 32"));
  ModelInput wrong = embeddings.input(1, 4, 1);
  wrong.embeddings = Tensor({1, 4, 15});
  CHECK_THROWS_WITH(embeddings.model->forward(wrong, ForwardOptions{}), Contains("(1, 4, 16)") && Contains("(1, 4, 15)"));
  ModelInput short_mask = embeddings.input(1, 4, 1);
  short_mask.mask = {1, 1};
  CHECK_THROWS_WITH(embeddings.model->forward(short_mask, ForwardOptions{}), Contains("mask"));

  SmallModel tokens(std::string(kSmall) + "depth = 1\nvocab_size = 10\n");
  ModelInput bad = tokens.input(1, 4, 1);
  bad.tokens[2] = 10;
  CHECK_THROWS_WITH(tokens.model->forward(bad, ForwardOptions{}), Contains("10"));
  CHECK_THROWS_WITH(tokens.model->forward(embeddings.input(1, 4, 1), ForwardOptions{}), Contains("token ids"));
}

TEST_CASE("part times add up per part and pass, in the order first timed", "[model]") {
  PartTimes times;
  times.add("mamba", Pass::forward, 0.5);
  times.add("head", Pass::forward, 0.125);
  times.add("mamba", Pass::forward, 0.25);
  times.add("mamba", Pass::backward, 1.0);
  times.add("AdamW update", Pass::other, 2.0);
  REQUIRE(times.parts().size() == 3);
  const PartTimes::Part& mamba = times.parts()[0];
  CHECK(mamba.name == "mamba");
  CHECK(mamba.seconds[0] == 0.75);
  CHECK(mamba.count[0] == 2);
  CHECK(mamba.seconds[1] == 1.0);
  CHECK(mamba.count[1] == 1);
  CHECK(mamba.total_seconds() == 1.75);
  CHECK(times.parts()[1].name == "head");
  CHECK(times.parts()[2].total_seconds() == 2.0);
  CHECK(times.parts()[2].count[2] == 1);
}

TEST_CASE("timing the model's parts names each part and leaves every result unchanged", "[model]") {
  SmallModel small(std::string(kSmall) + "depth = 2\norder = [\"mamba\", \"moe\"]\nvocab_size = 11\n");
  const ModelInput input = small.input(2, 6, 4);
  const Tensor grad_logits = test::random_tensor({2, 6, 11}, 5);
  const auto run = [&](PartTimes* times) {
    small.model->set_part_times(times);
    small.model->parameters().zero_grad();
    ForwardTape tape;
    const ModelOutput output = small.model->forward(input, ForwardOptions{}, &tape);
    small.model->backward(tape, &grad_logits, nullptr, 1.0f);
    small.model->set_part_times(nullptr);
    std::vector<double> values = test::to_double(output.logits);
    for (const auto& parameter : small.model->parameters().all()) {
      const std::vector<double> grad = test::to_double(parameter->grad);
      values.insert(values.end(), grad.begin(), grad.end());
    }
    return values;
  };
  const std::vector<double> untimed = run(nullptr);
  PartTimes times;
  CHECK(run(&times) == untimed);

  std::vector<std::string> names;
  for (const PartTimes::Part& part : times.parts()) {
    names.push_back(part.name);
    CHECK(part.total_seconds() >= 0);
  }
  CHECK(names ==
        std::vector<std::string>{"embedding", "positional encodings", "mamba", "moe", "final norm and LM head"});
  for (const PartTimes::Part& part : times.parts()) {
    INFO(part.name);
    const int64_t per_pass = part.name == "mamba" || part.name == "moe" ? 2 : 1;  // depth 2
    CHECK(part.count[0] == per_pass);
    CHECK(part.count[1] == per_pass);
    CHECK(part.count[2] == 0);
  }
}

namespace {

// The logits, the loss and every parameter's gradient of one training-mode forward and backward of the
// model `text` describes, at `threads` OpenMP threads.
struct GradientsAt {
  double loss = 0;
  std::vector<std::pair<std::string, std::vector<float>>> values;  // logits, then each gradient

  GradientsAt(const std::string& text, int threads) {
    const int before = omp_get_max_threads();
    omp_set_num_threads(threads);
    SmallModel small(text);
    const ModelInput input = small.input(4, 128, 7);
    ForwardOptions options;
    options.training = true;
    Random random(11);  // for the routers that sample (noisy_topk, random)
    options.random = &random;
    ForwardTape tape;
    const ModelOutput output = small.model->forward(input, options, &tape);
    const LossResult result = language_model_loss(output, next_token_targets(input), true);
    small.model->parameters().zero_grad();
    small.model->backward(tape, &result.grad_logits, nullptr, 1.0f);
    omp_set_num_threads(before);
    loss = result.loss;
    values.push_back({"logits", output.logits.to_vector()});
    for (const auto& parameter : small.model->parameters().all()) {
      values.push_back({"grad." + parameter->name, parameter->grad.to_vector()});
    }
  }
};

// Values whose bits differ (a NaN never equals itself: counted).
int64_t differing(const std::vector<float>& a, const std::vector<float>& b) {
  int64_t count = 0;
  for (size_t i = 0; i < a.size(); ++i) count += !(a[i] == b[i]);
  return count;
}

}  // namespace

TEST_CASE("the forward, the loss and every gradient are the same bits at any thread count", "[model]") {
  // Big enough that every op splits its work: 4 x 128 tokens; mamba (E 128, N 16), an MoE block with
  // capacity and a z-loss, an mlp block; tokens in and logits out. Every router; the other norm and
  // positional encoding, and an untied head, with switch.
  const std::string model =
      "[model]\ndim = 64\ndepth = 1\norder = [\"mamba\", \"moe\", \"mlp\", \"mamba\"]\nd_state = 16\n"
      "expand = 2\nnum_experts = 4\nexpert_dim = 128\nmax_seq_len = 128\nvocab_size = 64\n";
  const std::string other_model = "norm = \"layernorm\"\npositional = [\"rotary\"]\ntie_embeddings = false\n";
  const std::vector<std::pair<std::string, std::string>> variants{  // ([model] keys, [router] keys)
      {"", "name = \"topk\"\ntop_k = 2\n"},        {other_model, "name = \"switch\"\n"},
      {"", "name = \"noisy_topk\"\ntop_k = 2\n"},  {"", "name = \"expert_choice\"\n"},
      {"", "name = \"hash\"\n"},                    {"", "name = \"random\"\n"},
      {"", "name = \"sinkhorn\"\n"},                {"", "name = \"aux_free\"\ntop_k = 2\n"}};
  for (const auto& [model_keys, router_keys] : variants) {
    const std::string text =
        model + model_keys + "[router]\n" + router_keys + "capacity_factor = 1.0\nz_loss_coef = 0.001\n";
    INFO(text);
    const GradientsAt one(text, 1), two(text, 2), three(text, 3);
    CHECK(two.loss == one.loss);
    CHECK(three.loss == one.loss);
    REQUIRE(two.values.size() == one.values.size());
    REQUIRE(three.values.size() == one.values.size());
    for (size_t i = 0; i < one.values.size(); ++i) {
      INFO(one.values[i].first << " (" << one.values[i].second.size() << " values)");
      CHECK(differing(two.values[i].second, one.values[i].second) == 0);
      CHECK(differing(three.values[i].second, one.values[i].second) == 0);
    }
  }
}

TEST_CASE("an A_log above ln(FLT_MAX) leaves the forward and every gradient finite", "[model]") {
  // exp(88.8) overflows float: A saturates at −FLT_MAX, where the decay exp(Δ·A) is 0 and so is g·A.
  SmallModel small(std::string(kSmall) + "depth = 1\norder = [\"mamba\"]\nvocab_size = 11\n");
  Parameter& A_log = small.model->parameters().get("backbone.layers.0.mixer.A_log");
  A_log.value[0] = 88.8f;
  A_log.value[1] = 200.0f;
  const ModelInput input = small.input(2, 6, 4);
  const Tensor grad_logits = test::random_tensor({2, 6, 11}, 5);
  ForwardTape tape;
  const ModelOutput output = small.model->forward(input, ForwardOptions{}, &tape);
  small.model->backward(tape, &grad_logits, nullptr, 1.0f);
  for (const double value : test::to_double(output.logits)) REQUIRE(std::isfinite(value));
  for (const auto& parameter : small.model->parameters().all()) {
    CAPTURE(parameter->name);
    for (const double value : test::to_double(parameter->grad)) REQUIRE(std::isfinite(value));
  }
}
