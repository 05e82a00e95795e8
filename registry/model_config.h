// The normative [model] and [router] keys of DESIGN.md §3, read into typed options.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "registry/config.h"

namespace mr1 {

// One block's [model.layers.i] table: [model] keys given again for block i alone. Which keys a block
// takes depends on its kind (block_override_keys): mamba d_state, d_conv, expand, dt_rank; moe
// num_experts, expert_dim and a [model.layers.i.router] table read over [router]; mlp expert_dim.
struct BlockOverrides {
  std::optional<int64_t> d_state, d_conv, expand, dt_rank, num_experts, expert_dim;
  std::optional<ConfigTable> router;  // this block's router keys (a key it lacks comes from [router])
};

struct ModelConfig {
  int64_t dim = 512;                             // D
  int64_t depth = 12;                            // times `order` is repeated
  std::vector<std::string> order{"mamba", "moe"};
  int64_t d_state = 64;                          // N
  int64_t d_conv = 4;                            // K
  int64_t expand = 2;                            // E = expand · D
  int64_t dt_rank = 0;                           // R; "auto" = ceil(D / 16)
  int64_t num_experts = 8;                       // X
  int64_t expert_dim = 2048;                     // F
  int64_t max_seq_len = 2048;
  int64_t vocab_size = 0;                        // V; 0 = the input is embeddings (B, L, D)
  std::string norm = "rmsnorm";
  std::vector<std::string> positional{"learned"};
  bool tie_embeddings = true;
  std::map<int64_t, BlockOverrides> layers;      // [model.layers.i], by block number i

  int64_t d_inner() const { return expand * dim; }
  int64_t block_count() const { return depth * static_cast<int64_t>(order.size()); }
  // The registry name of block i (order repeated depth times).
  const std::string& block_kind(int64_t i) const { return order[static_cast<size_t>(i) % order.size()]; }
  // What block i is built from: this config with its [model.layers.i] keys applied (layers left empty).
  ModelConfig block(int64_t i) const;
  // Block i's [model.layers.i] keys, or null.
  const BlockOverrides* overrides(int64_t i) const;
};

// The [model.layers.i] keys a block of `kind` takes (empty for a kind that takes none).
const std::vector<std::string>& block_override_keys(const std::string& kind);

// Reads [model], checking types, ranges, registry names and shape relations (rotary needs an
// even dim, ...), and its [model.layers.i] tables (their keys are checked here, their router tables
// when the model is built). Does not reject unknown keys of [model] itself: the caller does once every
// reader has run.
ModelConfig read_model_config(const ConfigTable& table);

// The keys every router shares; each router reads its own further keys from the same table.
struct RouterSettings {
  std::string name = "switch";
  double capacity_factor = 1.0;       // <= 0: no dropping
  double eval_capacity_factor = 0.0;  // used at evaluation; 0 = same as capacity_factor
  int64_t min_capacity = 4;
  double aux_loss_coef = 0.01;
  double z_loss_coef = 0.0;
};

RouterSettings read_router_settings(const ConfigTable& table);

}  // namespace mr1
