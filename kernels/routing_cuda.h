// GPU routing ops: top-k choice, expert capacity, and the permutation of tokens to experts and back.
// Not wired into the routers: they route on the host from the router logits copied there, which serves
// every router, and the MoE layer's grouped GEMMs need each expert's row count on the host anyway. These
// are the pieces of a routing path on the device, checked against the CPU ops by the [cuda] tests.
// Raw device pointers; plain C++ header. Shape letters: T tokens, X experts, k choices per token,
// S kept assignments, D features.
#pragma once

#include <cstdint>

namespace mr1 {

// The k largest scores of each row of scores (T, X), best first; ties go to the lowest index (as the
// CPU's top_k). index, value: (T, k).
void top_k_cuda(const float* scores, int64_t T, int64_t X, int64_t k, int32_t* index, float* value, void* stream);

// Slots of the experts claimed in the CPU's order (choice rank r = 0 .. k − 1 first, then token t):
// an assignment (t, r) of expert j keeps slot s = the number of earlier assignments to j, and is
// dropped (expert set to −1, slot −1) when s >= capacity (capacity < 0: no limit). Masked tokens
// (token_mask[t] == 0; token_mask may be null) lose every assignment and are not counted.
// expert (T, k) in place; slot (T, k); routed (X): assignments to each expert before dropping; kept (X).
// The dropped count of apply_capacity is Σ_j routed[j] − kept[j].
void apply_capacity_cuda(int32_t* expert, int64_t T, int64_t k, int64_t X, int64_t capacity, const uint8_t* token_mask,
                         int32_t* slot, int64_t* routed, int64_t* kept, void* stream);

// The expert-major order of the kept assignments: with first_row[j] = Σ_{i<j} kept[i] (X + 1 values),
// assignment a = t·k + r of expert j and slot s goes to row p = first_row[j] + s:
// token_of_row[p] = t, position[a] = p (−1 for a dropped assignment). Gathering the input rows by
// token_of_row gives each expert a contiguous block of rows [first_row[j], first_row[j + 1]).
void routing_permutation_cuda(const int32_t* expert, const int32_t* slot, const int64_t* first_row, int64_t T,
                              int64_t k, int64_t* token_of_row, int64_t* position, void* stream);

// out[t] = Σ_{r < k, position[t·k + r] >= 0} gate[t·k + r] · expert_out[position[t·k + r]], in r order
// (deterministic: one thread per output value). expert_out (S, D), out (T, D) overwritten.
void combine_from_experts_cuda(const float* expert_out, const int64_t* position, const float* gate, float* out,
                               int64_t T, int64_t k, int64_t D, void* stream);

}  // namespace mr1
