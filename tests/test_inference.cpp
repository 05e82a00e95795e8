// Recurrent inference: the single-step ops against the parallel ops, step mode against the parallel
// forward (dropless) at every position for several block orders, conv widths and positional encodings,
// a batch of prompts of different lengths, and greedy generation against repeated full forwards.
//
// Tolerances: step mode computes the same formulas as the parallel forward, but its projections are
// matrix-vector products (Eigen GEMV) where the forward runs GEMMs, which sum in another order, and the
// scan's y = h · C is summed as a tree instead of left to right. Each such sum differs by a few float
// ulps; on these models (logits up to 0.3) the largest difference seen is 2e-7. The model checks allow
// 1e-5 absolute + 1e-5 relative: fifty times that, and far below any real error (a state or a position
// off by one moves logits by 1e-2 and more).
#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "blocks/mamba_mixer.h"
#include "blocks/model.h"
#include "blocks/random.h"
#include "experiments/generate.h"
#include "experiments/loss.h"
#include "experiments/optimizer.h"
#include "kernels/conv1d.h"
#include "kernels/selective_scan.h"
#include "kernels/ssm_step.h"
#include "registry/config.h"
#include "registry/model_config.h"
#include "tests/model_fixture.h"
#include "tests/test_util.h"

using namespace mr1;
using namespace mr1::test;

namespace {

constexpr double kLogitTolerance = 1e-5;  // absolute and relative; see the top of the file

// A small model (seed 1) and its parallel forward, the reference of step mode.
struct InferenceModel : SmallModel {
  using SmallModel::SmallModel;

  // The parallel forward's logits (1, L, V) of one sequence, routing dropless.
  Tensor forward_logits(const std::vector<int32_t>& tokens) const {
    ModelInput input;
    input.batch = 1;
    input.length = static_cast<int64_t>(tokens.size());
    input.tokens = tokens;
    ForwardOptions options;
    options.dropless = true;
    return model->forward(input, options).logits;
  }
};

std::string model_text(const std::string& order, int64_t d_conv, const std::string& positional) {
  return "[model]\ndim = 16\ndepth = 2\nd_state = 4\nexpand = 2\nnum_experts = 3\nexpert_dim = 24\n"
         "max_seq_len = 64\nvocab_size = 19\norder = " +
         order + "\nd_conv = " + std::to_string(d_conv) + "\npositional = " + positional + "\n";
}

std::vector<int32_t> random_tokens(int64_t length, int64_t vocab_size, uint64_t seed) {
  Random random(seed);
  std::vector<int32_t> tokens;
  for (int64_t l = 0; l < length; ++l) tokens.push_back(static_cast<int32_t>(random.below(vocab_size)));
  return tokens;
}

// −(|x| + 0.1) elementwise: a state matrix A whose decays exp(Δ A) lie in (0, 1).
Tensor mapped_negative(Tensor x) {
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = -(std::abs(x[i]) + 0.1f);
  return x;
}

// Row l of logits (1, L, V), as doubles.
std::vector<double> position_row(const Tensor& logits, int64_t l) {
  const int64_t V = logits.size(2);
  std::vector<double> row(static_cast<size_t>(V));
  for (int64_t v = 0; v < V; ++v) row[static_cast<size_t>(v)] = logits[l * V + v];
  return row;
}

// Row b of logits (B, V) as a (V) tensor.
Tensor batch_row(const Tensor& logits, int64_t b) {
  return logits.slice_rows(b, b + 1).reshape({logits.size(1)});
}

}  // namespace

TEST_CASE("causal_conv1d_step, repeated, equals causal_conv1d_forward for every width", "[inference]") {
  const int64_t B = 2, L = 7, E = 5;
  for (int64_t K = 1; K <= 4; ++K) {
    INFO("K = " << K);
    const Tensor x = random_tensor({B, L, E}, 10 + K);
    const Tensor weight = random_tensor({E, 1, K}, 20 + K);
    const Tensor bias = random_tensor({E}, 30 + K);
    const Tensor expected = causal_conv1d_forward(x, weight, bias);
    Tensor state({B, E, K - 1});
    for (int64_t t = 0; t < L; ++t) {
      Tensor x_t({B, E});
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t e = 0; e < E; ++e) x_t[b * E + e] = x[(b * L + t) * E + e];
      }
      const Tensor y_t = causal_conv1d_step(state, x_t, weight, bias);
      std::vector<double> want;
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t e = 0; e < E; ++e) want.push_back(expected[(b * L + t) * E + e]);
      }
      // The same products summed in the same order: equal to float rounding of a fused multiply-add.
      require_close(y_t, want, 1e-6, 1e-6, "conv step at t = " + std::to_string(t));
      // After t + 1 tokens the state is what a prefill of those tokens leaves.
      Tensor prefix({B, t + 1, E});
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t s = 0; s <= t; ++s) {
          for (int64_t e = 0; e < E; ++e) prefix[(b * (t + 1) + s) * E + e] = x[(b * L + s) * E + e];
        }
      }
      CHECK(causal_conv1d_final_state(prefix, K).to_vector() == state.to_vector());
    }
  }
}

TEST_CASE("causal_conv1d_final_state takes each prompt's own last inputs, zero before its start", "[inference]") {
  // x (1 batch row per prompt, L = 4, E = 1): values 1..4 and 5..8; lengths 4 and 2, K = 4.
  const Tensor x = Tensor::from({2, 4, 1}, {1, 2, 3, 4, 5, 6, 7, 8});
  const std::vector<int64_t> lengths{4, 2};
  CHECK(causal_conv1d_final_state(x, 4, &lengths).to_vector() == std::vector<float>{2, 3, 4, 0, 5, 6});
  CHECK(causal_conv1d_final_state(x, 1, &lengths).numel() == 0);
  const std::vector<int64_t> too_long{5, 2};
  CHECK_THROWS_AS(causal_conv1d_final_state(x, 4, &too_long), ShapeError);
}

TEST_CASE("selective_scan_step, repeated, equals selective_scan_forward and its final state", "[inference]") {
  const int64_t B = 2, L = 9, E = 19, N = 5;  // E not a multiple of the forward's 16 lanes
  const Tensor u = random_tensor({B, L, E}, 1), delta = random_tensor({B, L, E}, 2);
  const Tensor A = mapped_negative(random_tensor({E, N}, 3));
  const Tensor Bm = random_tensor({B, L, N}, 4), Cm = random_tensor({B, L, N}, 5);
  const Tensor D = random_tensor({E}, 6), z = random_tensor({B, L, E}, 7), bias = random_tensor({E}, 8);
  SelectiveScanInputs in;
  in.u = &u;
  in.delta = &delta;
  in.A = &A;
  in.B = &Bm;
  in.C = &Cm;
  in.D = &D;
  in.z = &z;
  in.delta_bias = &bias;
  Tensor final_state;
  const Tensor expected = selective_scan_forward(in, &final_state);

  // Position t of a (B, L, F) tensor as (B, F).
  auto at = [&](const Tensor& x, int64_t t) {
    const int64_t F = x.size(2);
    Tensor row({B, F});
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t f = 0; f < F; ++f) row[b * F + f] = x[(b * L + t) * F + f];
    }
    return row;
  };
  Tensor state({B, E, N});
  for (int64_t t = 0; t < L; ++t) {
    const Tensor u_t = at(u, t), delta_t = at(delta, t), B_t = at(Bm, t), C_t = at(Cm, t), z_t = at(z, t);
    SelectiveScanStepInputs step;
    step.u = &u_t;
    step.delta = &delta_t;
    step.A = &A;
    step.B = &B_t;
    step.C = &C_t;
    step.D = &D;
    step.z = &z_t;
    step.delta_bias = &bias;
    const Tensor out = selective_scan_step(state, step);
    // Same formulas; only the order of the N-term sum y = h · C differs: a few ulps of values of order 1.
    require_close(out, at(expected, t), 1e-5, 1e-5, "scan step at t = " + std::to_string(t));
  }
  require_close(state, final_state, 1e-6, 1e-5, "state after L steps against the forward's final state");

  SECTION("a state of the wrong shape is refused") {
    Tensor wrong({B, E, N + 1});
    const Tensor u_0 = at(u, 0), delta_0 = at(delta, 0), B_0 = at(Bm, 0), C_0 = at(Cm, 0);
    SelectiveScanStepInputs step;
    step.u = &u_0;
    step.delta = &delta_0;
    step.A = &A;
    step.B = &B_0;
    step.C = &C_0;
    CHECK_THROWS_AS(selective_scan_step(wrong, step), ShapeError);
  }
}

TEST_CASE("step mode equals the parallel forward at every position", "[inference]") {
  // Block orders, the last with per-block keys: block 2 (mamba) with another state size and width, and
  // its own conv width, block 1 (moe) with more experts.
  const std::vector<std::pair<std::string, std::string>> orders{
      {"[\"mamba\"]", ""},
      {"[\"mamba\", \"moe\"]", ""},
      {"[\"moe\", \"mamba\", \"mlp\"]", ""},
      {"[\"mlp\", \"mamba\"]", ""},
      {"[\"mamba\", \"moe\"]", "[model.layers.2]\nd_state = 7\nexpand = 1\nd_conv = 12\n[model.layers.1]\nnum_experts = 5\n"}};
  const std::vector<std::string> positionals{"[]", "[\"learned\"]", "[\"rotary\"]"};
  for (const auto& [order, per_block] : orders) {
    for (int64_t d_conv = 1; d_conv <= 4; ++d_conv) {
      for (const std::string& positional : positionals) {
        INFO("order " << order << ", d_conv " << d_conv << ", positional " << positional << "\n" << per_block);
        InferenceModel small(model_text(order, d_conv, positional) + per_block);
        const int64_t L = 11, V = small.config.vocab_size;
        const std::vector<int32_t> first = random_tokens(L, V, 3), second = random_tokens(L, V, 4);
        const Tensor expected_first = small.forward_logits(first), expected_second = small.forward_logits(second);

        // From an empty cache: every token through step(), a batch of two sequences.
        InferenceCache cache;
        for (int64_t l = 0; l < L; ++l) {
          const Tensor logits = small.model->step({first[l], second[l]}, cache);
          REQUIRE(logits.shape() == Shape{2, V});
          require_close(batch_row(logits, 0), position_row(expected_first, l), kLogitTolerance, kLogitTolerance,
                        "sequence 0, step at position " + std::to_string(l));
          require_close(batch_row(logits, 1), position_row(expected_second, l), kLogitTolerance, kLogitTolerance,
                        "sequence 1, step at position " + std::to_string(l));
        }
        CHECK(cache.positions == std::vector<int64_t>{L, L});

        // Prefill of the first 5 tokens, then steps.
        const int64_t P = 5;
        ModelInput prompt = prompt_batch({std::vector<int32_t>(first.begin(), first.begin() + P),
                                          std::vector<int32_t>(second.begin(), second.begin() + P)});
        InferenceCache prefilled;
        Tensor logits = small.model->prefill(prompt, prefilled);
        for (int64_t l = P - 1; l < L; ++l) {
          require_close(batch_row(logits, 0), position_row(expected_first, l), kLogitTolerance, kLogitTolerance,
                        "sequence 0 after prefill, position " + std::to_string(l));
          require_close(batch_row(logits, 1), position_row(expected_second, l), kLogitTolerance, kLogitTolerance,
                        "sequence 1 after prefill, position " + std::to_string(l));
          if (l + 1 < L) logits = small.model->step({first[l + 1], second[l + 1]}, prefilled);
        }
      }
    }
  }
}

TEST_CASE("a batch of prompts of different lengths prefills and steps like each prompt alone", "[inference]") {
  for (const std::string positional : {"[\"learned\"]", "[\"rotary\"]", "[\"learned\", \"rotary\"]"}) {
    for (int64_t d_conv = 1; d_conv <= 4; ++d_conv) {
      INFO("positional " << positional << ", d_conv " << d_conv);
      InferenceModel small(model_text("[\"mamba\", \"moe\", \"mlp\"]", d_conv, positional));
      const int64_t V = small.config.vocab_size, total = 12;
      // Prompts of 2 and 7 tokens (the short one shorter than K − 1 when d_conv = 4), each continued to 12.
      const std::vector<int32_t> long_sequence = random_tokens(total, V, 5);
      const std::vector<int32_t> short_sequence = random_tokens(total, V, 6);
      const std::vector<int64_t> prompt_length{2, 7};
      const std::vector<std::vector<int32_t>> sequences{short_sequence, long_sequence};
      // The reference: each whole sequence alone through the parallel forward, mask-free.
      const std::vector<Tensor> expected{small.forward_logits(short_sequence), small.forward_logits(long_sequence)};

      std::vector<std::vector<int32_t>> prompts;
      for (size_t b = 0; b < 2; ++b) {
        prompts.emplace_back(sequences[b].begin(), sequences[b].begin() + prompt_length[b]);
      }
      const ModelInput input = prompt_batch(prompts);
      REQUIRE(input.length == 7);
      REQUIRE(input.mask.size() == 14);
      InferenceCache cache;
      Tensor logits = small.model->prefill(input, cache);
      CHECK(cache.positions == prompt_length);
      // Each sequence advances from its own position: 2, 3, ... and 7, 8, ...
      for (int64_t step = 0; step < total - 7; ++step) {
        std::vector<int32_t> next;
        for (size_t b = 0; b < 2; ++b) {
          const int64_t position = prompt_length[b] + step - 1;  // of the logits in hand
          require_close(batch_row(logits, static_cast<int64_t>(b)), position_row(expected[b], position),
                        kLogitTolerance, kLogitTolerance,
                        "sequence " + std::to_string(b) + " at position " + std::to_string(position));
          next.push_back(sequences[b][static_cast<size_t>(position + 1)]);
        }
        logits = small.model->step(next, cache);
      }
    }
  }
}

TEST_CASE("routers keyed by position route each batched sequence at its own position in step mode",
          "[inference]") {
  // random routes row b at position p by (b, p) at evaluation; in step mode the rows are at different
  // positions, so the reference is the parallel forward of the same two rows, not each row alone.
  InferenceModel small(model_text("[\"mamba\", \"moe\"]", 4, "[]") + "[router]\nname = \"random\"\n");
  const int64_t V = small.config.vocab_size, total = 12;
  const std::vector<std::vector<int32_t>> sequences{random_tokens(total, V, 7), random_tokens(total, V, 8)};
  ModelInput whole;
  whole.batch = 2;
  whole.length = total;
  for (const auto& sequence : sequences) whole.tokens.insert(whole.tokens.end(), sequence.begin(), sequence.end());
  ForwardOptions options;
  options.dropless = true;
  const Tensor expected = small.model->forward(whole, options).logits;  // (2, 12, V)

  const std::vector<int64_t> prompt_length{3, 8};
  std::vector<std::vector<int32_t>> prompts;
  for (size_t b = 0; b < 2; ++b) prompts.emplace_back(sequences[b].begin(), sequences[b].begin() + prompt_length[b]);
  InferenceCache cache;
  Tensor logits = small.model->prefill(prompt_batch(prompts), cache);
  for (int64_t step = 0; step < total - 8; ++step) {
    std::vector<int32_t> next;
    for (int64_t b = 0; b < 2; ++b) {
      const int64_t position = prompt_length[static_cast<size_t>(b)] + step - 1;
      const Tensor row = expected.slice_rows(b, b + 1).reshape({total, V}).slice_rows(position, position + 1);
      require_close(batch_row(logits, b), to_double(row), kLogitTolerance, kLogitTolerance,
                    "row " + std::to_string(b) + " at position " + std::to_string(position));
      next.push_back(sequences[static_cast<size_t>(b)][static_cast<size_t>(position + 1)]);
    }
    logits = small.model->step(next, cache);
  }
}

TEST_CASE("the inference state does not grow with the length", "[inference]") {
  InferenceModel small(model_text("[\"mamba\", \"moe\"]", 4, "[\"rotary\"]"));
  InferenceCache cache;
  small.model->step({1, 2, 3}, cache);
  auto sizes = [&] {
    std::vector<Shape> shapes;
    for (const auto& state : cache.states) {
      if (const auto* mamba = dynamic_cast<const MambaState*>(state.get())) {
        shapes.push_back(mamba->conv_state.shape());
        shapes.push_back(mamba->ssm_state.shape());
      } else {
        CHECK(state == nullptr);  // moe: stateless
      }
    }
    return shapes;
  };
  const std::vector<Shape> after_one = sizes();
  CHECK(after_one == std::vector<Shape>{{3, 32, 3}, {3, 32, 4}, {3, 32, 3}, {3, 32, 4}});
  for (int i = 0; i < 40; ++i) small.model->step({4, 5, 6}, cache);
  CHECK(sizes() == after_one);
}

TEST_CASE("recurrent inference refuses what it cannot do", "[inference]") {
  InferenceModel small(model_text("[\"mamba\"]", 3, "[\"learned\"]"));
  InferenceCache cache;
  small.model->step({1, 2}, cache);
  CHECK_THROWS_AS(small.model->step({1, 2, 3}, cache), ShapeError);  // batch of 2, three tokens
  ModelInput holes = prompt_batch({{1, 2, 3}, {4, 5, 6}});
  holes.mask = {1, 0, 1, 1, 1, 1};  // a hole inside a prompt: not a right-padded batch
  CHECK_THROWS_AS(small.model->prefill(holes, cache), ShapeError);
  CHECK_THROWS_AS(prompt_batch({{1}, {}}), ShapeError);
  // Positions run out at max_seq_len.
  InferenceCache long_cache;
  small.model->prefill(prompt_batch({std::vector<int32_t>(64, 1)}), long_cache);
  CHECK_THROWS_AS(small.model->step({1}, long_cache), ShapeError);
  // A model of embeddings has no tokens to step on.
  InferenceModel embeddings("[model]\ndim = 16\ndepth = 1\nd_state = 4\nvocab_size = 0\n");
  InferenceCache none;
  CHECK_THROWS_AS(embeddings.model->step({1}, none), std::invalid_argument);
}

namespace {

// Greedy decoding the slow way: the whole growing sequence through the parallel forward, argmax of the last row.
std::vector<int32_t> greedy_by_full_forward(const InferenceModel& small, std::vector<int32_t> sequence, int64_t count) {
  std::vector<int32_t> generated;
  for (int64_t i = 0; i < count; ++i) {
    const Tensor logits = small.forward_logits(sequence);
    const int64_t V = logits.size(2), last = static_cast<int64_t>(sequence.size()) - 1;
    const int32_t token = greedy_token(logits.data() + last * V, V);
    generated.push_back(token);
    sequence.push_back(token);
  }
  return generated;
}

// A few dozen AdamW steps of next-byte prediction on windows of the tiny corpus.
void train_briefly(InferenceModel& small, int64_t steps) {
  std::ifstream file(std::string(MAMBA_R1_SOURCE_DIR) + "/experiments/data/tiny_corpus.txt", std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  REQUIRE(text.size() > 1000);
  ConfigTable no_options(nullptr, "test.toml", "optimizer");
  std::unique_ptr<Optimizer> optimizer = optimizer_registry().get("adamw")(no_options, small.model->parameters());
  Random random(9);
  const int64_t B = 4, L = 32;
  double first_loss = 0, last_loss = 0;
  for (int64_t step = 0; step < steps; ++step) {
    ModelInput input;
    input.batch = B;
    input.length = L;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t start = random.below(static_cast<int64_t>(text.size()) - L);
      for (int64_t l = 0; l < L; ++l) input.tokens.push_back(static_cast<unsigned char>(text[start + l]));
    }
    ForwardTape tape;
    ForwardOptions options;
    options.training = true;
    options.random = &random;
    const ModelOutput output = small.model->forward(input, options, &tape);
    const LossResult loss = language_model_loss(output, next_token_targets(input), true);
    small.model->parameters().zero_grad();
    small.model->backward(tape, &loss.grad_logits, nullptr, 1.0f);
    optimizer->step(small.model->parameters(), 3e-3);
    (step == 0 ? first_loss : last_loss) = loss.lm_loss;
  }
  INFO("loss " << first_loss << " -> " << last_loss);
  CHECK(last_loss < first_loss);  // it learnt something: the logits are no longer those of random weights
}

}  // namespace

TEST_CASE("greedy generation equals repeated full forwards and argmax", "[inference]") {
  // A byte-level model as the text task trains it: vocabulary 256, mamba and moe blocks, learned positions.
  const std::string text =
      "[model]\ndim = 32\ndepth = 2\nd_state = 8\nd_conv = 4\nexpand = 2\nnum_experts = 2\nexpert_dim = 32\n"
      "max_seq_len = 96\nvocab_size = 256\norder = [\"mamba\", \"moe\"]\n";
  const std::vector<std::vector<int32_t>> prompts{
      {'T', 'h', 'e', ' ', 'k', 'e', 'e', 'p', 'e', 'r'}, {'I', ' ', 'c', 'a', 'm', 'e'}};
  const int64_t count = 40;
  GenerationSettings settings;
  settings.sampling.greedy = true;
  settings.max_new_tokens = count;

  for (const bool trained : {false, true}) {
    INFO((trained ? "briefly trained" : "random weights"));
    InferenceModel small(text);
    if (trained) train_briefly(small, 40);
    // Both prompts in one batch (of different lengths), and each alone.
    const GenerationResult together = generate(*small.model, prompts, settings);
    for (size_t b = 0; b < prompts.size(); ++b) {
      INFO("prompt " << b);
      const std::vector<int32_t> expected = greedy_by_full_forward(small, prompts[b], count);
      CHECK(together.tokens[b] == expected);
      CHECK(generate(*small.model, {prompts[b]}, settings).tokens[0] == expected);
    }
    CHECK(together.decode_steps == count - 1);
  }
}

TEST_CASE("generation stops at the stop token and at max_new_tokens, and checks max_seq_len", "[inference]") {
  InferenceModel small(model_text("[\"mamba\", \"mlp\"]", 4, "[\"learned\"]"));
  GenerationSettings settings;
  settings.sampling.greedy = true;
  settings.max_new_tokens = 20;
  const std::vector<int32_t> prompt{1, 2, 3};
  const std::vector<int32_t> free_run = generate(*small.model, {prompt}, settings).tokens[0];
  REQUIRE(free_run.size() == 20);
  // Stop at the third token's id: generation ends at its first occurrence, which it includes.
  settings.stop_token = free_run[2];
  const size_t first = static_cast<size_t>(std::find(free_run.begin(), free_run.end(), free_run[2]) - free_run.begin());
  const GenerationResult stopped = generate(*small.model, {prompt, {4, 5}}, settings);
  CHECK(stopped.tokens[0] == std::vector<int32_t>(free_run.begin(), free_run.begin() + first + 1));
  // 64 positions: a 3-token prompt allows 62 new tokens, not 63.
  settings.stop_token = -1;
  settings.max_new_tokens = 62;
  CHECK(generate(*small.model, {prompt}, settings).tokens[0].size() == 62);
  settings.max_new_tokens = 63;
  CHECK_THROWS_AS(generate(*small.model, {prompt}, settings), ShapeError);
}

TEST_CASE("sampled generation repeats with the seed", "[inference]") {
  InferenceModel small(model_text("[\"mamba\", \"moe\"]", 4, "[\"rotary\"]"));
  GenerationSettings settings;
  settings.sampling.temperature = 1.5;  // flatter than the model: draws differ between seeds
  settings.sampling.top_k = 10;
  settings.sampling.top_p = 0.95;
  settings.max_new_tokens = 30;
  settings.seed = 5;
  const std::vector<std::vector<int32_t>> prompts{{1, 2, 3}, {4}};
  const GenerationResult first = generate(*small.model, prompts, settings);
  CHECK(generate(*small.model, prompts, settings).tokens == first.tokens);
  settings.seed = 6;
  CHECK(generate(*small.model, prompts, settings).tokens != first.tokens);
  // Each prompt draws from its own stream: the first alone, or with other prompts after it, completes the
  // same; the second does not repeat the first's draws.
  settings.seed = 5;
  CHECK(generate(*small.model, {prompts[0]}, settings).tokens[0] == first.tokens[0]);
  CHECK(generate(*small.model, {prompts[0], {7, 7, 7, 7, 7}, {2}}, settings).tokens[0] == first.tokens[0]);
  CHECK(generate(*small.model, {prompts[0], prompts[0]}, settings).tokens[1] != first.tokens[0]);
}
