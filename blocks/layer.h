// What every layer of the model shares: the batch it runs on, and the record a forward pass
// leaves for the backward pass (explicit, never hidden state in the layer).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/tensor.h"

namespace mr1 {

class Random;

struct BatchInfo {
  int64_t batch = 0;                             // B
  int64_t length = 0;                            // L
  const std::vector<uint8_t>* mask = nullptr;    // B·L, 1 = keep; null = every position kept
  const std::vector<int32_t>* tokens = nullptr;  // B·L token ids when the input is tokens
  bool training = false;                         // routers: noise, sampling, training capacity
  bool keep_for_backward = false;                // layers fill their saved activations
  bool dropless = false;                         // routers ignore capacity (recurrent inference)
  Random* random = nullptr;                      // for routers that sample
  int64_t start_position = 0;                    // absolute position of l = 0
  const std::vector<int64_t>* row_start_positions = nullptr;  // B; when given, row b's position of l = 0
                                                              // (step mode, sequences at different positions)

  int64_t tokens_count() const { return batch * length; }
  // The absolute position of token flat_position = b·L + l.
  int64_t position(int64_t flat_position) const {
    const int64_t start =
        row_start_positions ? (*row_start_positions)[static_cast<size_t>(flat_position / length)] : start_position;
    return start + flat_position % length;
  }
  bool kept(int64_t flat_position) const { return !mask || (*mask)[static_cast<size_t>(flat_position)] != 0; }
};

// Base of every layer's saved activations; each layer defines what it keeps.
struct SavedActivations {
  virtual ~SavedActivations() = default;
};

// Routing statistics of one MoE layer in one forward pass (empty for other layers).
struct RoutingStats {
  bool present = false;
  std::vector<double> load;        // X: fraction of the routed assignments each expert received, before dropping
  std::vector<double> mean_probability;  // X: mean router probability (P_j)
  int64_t routed_tokens = 0;       // T: unmasked tokens
  int64_t assignments = 0;         // T·k, masked tokens' included
  // The drop rate is dropped / droppable: the unmasked assignments dropped for capacity, of
  // routed_tokens·k; for expert choice, the unmasked tokens no expert chose, of routed_tokens.
  int64_t dropped = 0;
  int64_t droppable = 0;
  double entropy = 0;              // mean router entropy / log X
  double aux_loss = 0;             // load-balance loss, times its coefficient
  double z_loss = 0;               // z-loss, times its coefficient
};

// What one forward pass of one layer leaves behind.
struct LayerRecord {
  std::unique_ptr<SavedActivations> saved;  // only when BatchInfo::keep_for_backward
  double aux_loss = 0;                      // added to the training loss
  RoutingStats routing;
};

}  // namespace mr1
