// Generation with recurrent inference: sampling from the LM head's logits (greedy, temperature,
// top-k, top-p, seeded), the generation loop over a batch of prompts, and `mamba-r1 generate`.
// Shape letters: B batch (prompts), V vocab_size.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "blocks/model.h"

namespace mr1 {

class Random;

struct SamplingSettings {
  bool greedy = false;       // the argmax (lowest id on ties), no draw; also when temperature is 0
  double temperature = 1.0;  // p = softmax(logits / temperature); >= 0
  int64_t top_k = 0;         // keep the top_k most probable ids; 0 keeps all
  double top_p = 1.0;        // then keep the fewest most probable ids whose probability reaches top_p; in (0, 1]
};

// Throws std::invalid_argument naming the setting and the valid range.
void check_sampling_settings(const SamplingSettings& settings);

// The argmax of logits (V), lowest id on ties.
int32_t greedy_token(const float* logits, int64_t vocab_size);

// The distribution a draw uses (V probabilities summing to 1, 0 outside the kept ids), in double:
//   p = softmax(logits / temperature)
//   keep the top_k ids of highest p (ties: lower id first); renormalise
//   keep the shortest prefix of those, by decreasing p, whose total reaches top_p; renormalise
// Greedy (or temperature 0): one-hot at greedy_token.
std::vector<double> sampling_distribution(const float* logits, int64_t vocab_size, const SamplingSettings& settings);

// One id drawn from sampling_distribution with one uniform number of `random` (greedy: none drawn).
int32_t sample_token(const float* logits, int64_t vocab_size, const SamplingSettings& settings, Random& random);

struct GenerationSettings {
  SamplingSettings sampling;
  int64_t max_new_tokens = 128;  // per sequence, >= 1
  int32_t stop_token = -1;       // a sequence ends after producing this id (the end byte); −1: none
  // Sequence b draws from a generator of its own, seeded from seed and b (sequence 0: seed itself), so that
  // its completion does not depend on the other prompts of the batch.
  uint64_t seed = 0;
};

struct GenerationResult {
  std::vector<std::vector<int32_t>> tokens;  // per sequence: the new tokens, the stop token included
  int64_t prompt_tokens = 0;                 // Σ_b len_b
  double prefill_seconds = 0;                // the batched prefill and the first draw
  int64_t decode_steps = 0;                  // batched steps, each B tokens
  double decode_seconds = 0;                 // the steps and their draws
  std::vector<double> step_seconds;          // per step
};

// Throws ShapeError when the longest prompt and max_new_tokens need more positions than max_seq_len
// (the last new token is never fed back: len + max_new_tokens − 1).
void check_generation_length(const std::vector<std::vector<int32_t>>& prompts, int64_t max_new_tokens,
                             int64_t max_seq_len);

// Prefills the prompts as one right-padded batch, draws each sequence's first token from its last
// prompt position, then steps the batch one token at a time until every sequence has max_new_tokens
// tokens or has produced stop_token (a finished sequence keeps stepping on its last token, unread).
// on_token(b, id) sees each new token as soon as it is drawn. A longest prompt of P tokens needs
// P + max_new_tokens − 1 <= model.max_seq_len positions, else ShapeError.
GenerationResult generate(Model& model, const std::vector<std::vector<int32_t>>& prompts,
                          const GenerationSettings& settings,
                          const std::function<void(int64_t sequence, int32_t token)>& on_token = nullptr);

}  // namespace mr1
