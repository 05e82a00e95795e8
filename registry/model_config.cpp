// Reading and checking the [model] and [router] tables.
#include "registry/model_config.h"

#include <algorithm>
#include <limits>

#include "blocks/catalog.h"

namespace mr1 {

namespace {

// Throws naming the key when `name` is not in `registry`.
template <typename RegistryType>
void check_registered(const ConfigTable& table, const std::string& key, const RegistryType& registry,
                      const std::string& name) {
  if (!registry.contains(name)) {
    table.fail(key, "unknown " + registry.kind() + " \"" + name + "\"; valid: " + registry.names());
  }
}

// dt_rank: "auto" (ceil(dim / 16)) or an integer >= 1; `fallback` when absent. The effective settings
// hold the rank used, also for "auto".
int64_t read_dt_rank(const ConfigTable& table, int64_t dim, int64_t fallback) {
  if (!table.has("dt_rank")) return table.get_int("dt_rank", fallback, 1);
  const toml::node* node = table.node("dt_rank");
  if (auto text = node->value_exact<std::string>()) {
    if (*text != "auto") table.fail("dt_rank", "expected \"auto\" or an integer >= 1, found \"" + *text + "\"");
    const int64_t rank = (dim + 15) / 16;
    table.record_resolved("dt_rank", rank);
    return rank;
  }
  return table.get_int("dt_rank", 0, 1);
}

// An optional integer key: absent stays absent.
std::optional<int64_t> optional_int(const ConfigTable& table, const std::string& key, int64_t min,
                                    int64_t max = INT64_MAX) {
  if (!table.has(key)) return std::nullopt;
  return table.get_int(key, 0, min, max);
}

// [model.layers]: one table per block number, with the keys its block's kind takes.
std::map<int64_t, BlockOverrides> read_block_overrides(const ConfigTable& model, const ModelConfig& config) {
  std::map<int64_t, BlockOverrides> overrides;
  const ConfigTable layers = model.table("layers");
  const int64_t blocks = config.block_count();
  const std::string numbers = "the model has " + std::to_string(blocks) + " blocks, numbered 0 to " +
                              std::to_string(blocks - 1) + " as in backbone.layers.{i}";
  for (const std::string& key : layers.keys()) {
    const bool digits = !key.empty() && key.size() <= 9 && key.find_first_not_of("0123456789") == std::string::npos;
    if (!digits) layers.fail(key, "expected a block number; " + numbers);
    // One spelling per block: "01" would be a second table for block 1, one of which would go unread.
    if (key.size() > 1 && key[0] == '0') {
      layers.fail(key, "expected a block number without leading zeros (" + std::to_string(std::stoll(key)) + ")");
    }
    const int64_t i = std::stoll(key);
    if (i >= blocks) layers.fail(key, "no such block: " + numbers);
    const ConfigTable block = layers.table(key);
    const std::string& kind = config.block_kind(i);
    const std::vector<std::string>& valid = block_override_keys(kind);
    for (const std::string& name : block.keys()) {
      if (std::find(valid.begin(), valid.end(), name) == valid.end()) {
        block.fail(name, "block " + key + " is a " + kind + " block, which takes " +
                             (valid.empty() ? std::string("no per-block keys") : "only: " + join(valid)));
      }
    }
    BlockOverrides& o = overrides[i];
    o.d_state = optional_int(block, "d_state", 1);
    o.d_conv = optional_int(block, "d_conv", 1);
    o.expand = optional_int(block, "expand", 1);
    if (block.has("dt_rank")) o.dt_rank = read_dt_rank(block, config.dim, 0);
    o.num_experts = optional_int(block, "num_experts", 1);
    o.expert_dim = optional_int(block, "expert_dim", 1);
    if (block.has("router")) o.router = block.table("router");
  }
  return overrides;
}

}  // namespace

const std::vector<std::string>& block_override_keys(const std::string& kind) {
  static const std::map<std::string, std::vector<std::string>> keys{
      {"mamba", {"d_state", "d_conv", "expand", "dt_rank"}},
      {"moe", {"num_experts", "expert_dim", "router"}},
      {"mlp", {"expert_dim"}},
  };
  static const std::vector<std::string> none;
  auto found = keys.find(kind);
  return found == keys.end() ? none : found->second;
}

const BlockOverrides* ModelConfig::overrides(int64_t i) const {
  auto found = layers.find(i);
  return found == layers.end() ? nullptr : &found->second;
}

ModelConfig ModelConfig::block(int64_t i) const {
  ModelConfig config = *this;
  config.layers.clear();
  if (const BlockOverrides* o = overrides(i)) {
    config.d_state = o->d_state.value_or(d_state);
    config.d_conv = o->d_conv.value_or(d_conv);
    config.expand = o->expand.value_or(expand);
    config.dt_rank = o->dt_rank.value_or(dt_rank);
    config.num_experts = o->num_experts.value_or(num_experts);
    config.expert_dim = o->expert_dim.value_or(expert_dim);
  }
  return config;
}

ModelConfig read_model_config(const ConfigTable& table) {
  register_all();
  ModelConfig config;
  config.dim = table.get_int("dim", config.dim, 1);
  config.depth = table.get_int("depth", config.depth, 1);
  config.order = table.get_string_list("order", config.order);
  if (config.order.empty()) table.fail("order", "expected at least one block; valid blocks: " + block_registry().names());
  for (const std::string& kind : config.order) check_registered(table, "order", block_registry(), kind);
  if (config.depth > std::numeric_limits<int32_t>::max() / static_cast<int64_t>(config.order.size())) {
    table.fail("depth", "expected at most " +
                            std::to_string(std::numeric_limits<int32_t>::max() / config.order.size()) +
                            " repeats of the " + std::to_string(config.order.size()) + " blocks of order, found " +
                            std::to_string(config.depth));
  }
  config.d_state = table.get_int("d_state", config.d_state, 1);
  config.d_conv = table.get_int("d_conv", config.d_conv, 1);
  config.expand = table.get_int("expand", config.expand, 1);

  config.dt_rank = read_dt_rank(table, config.dim, (config.dim + 15) / 16);

  config.num_experts = table.get_int("num_experts", config.num_experts, 1);
  config.expert_dim = table.get_int("expert_dim", config.expert_dim, 1);
  config.max_seq_len = table.get_int("max_seq_len", config.max_seq_len, 1);
  config.vocab_size = table.get_int("vocab_size", config.vocab_size, 0, INT32_MAX);
  config.norm = table.get_string("norm", config.norm);
  check_registered(table, "norm", norm_registry(), config.norm);
  config.positional = table.get_string_list("positional", config.positional);
  for (size_t k = 0; k < config.positional.size(); ++k) {
    const std::string& kind = config.positional[k];
    check_registered(table, "positional", positional_registry(), kind);
    if (std::find(config.positional.begin(), config.positional.begin() + static_cast<std::ptrdiff_t>(k), kind) !=
        config.positional.begin() + static_cast<std::ptrdiff_t>(k)) {
      table.fail("positional", "\"" + kind + "\" is listed twice; each encoding is applied once");
    }
    if (kind == "rotary" && config.dim % 2 != 0) {
      table.fail("positional", "rotary needs an even dim, but dim is " + std::to_string(config.dim));
    }
  }
  config.tie_embeddings = table.get_bool("tie_embeddings", config.tie_embeddings);
  config.layers = read_block_overrides(table, config);
  return config;
}

RouterSettings read_router_settings(const ConfigTable& table) {
  register_all();
  RouterSettings settings;
  settings.name = table.get_string("name", settings.name);
  check_registered(table, "name", router_registry(), settings.name);
  settings.capacity_factor = table.get_double("capacity_factor", settings.capacity_factor);
  settings.eval_capacity_factor = table.get_double("eval_capacity_factor", settings.eval_capacity_factor);
  settings.min_capacity = table.get_int("min_capacity", settings.min_capacity, 0);
  settings.aux_loss_coef = table.get_double("aux_loss_coef", settings.aux_loss_coef);
  settings.z_loss_coef = table.get_double("z_loss_coef", settings.z_loss_coef);
  if (settings.aux_loss_coef < 0) table.fail("aux_loss_coef", "expected a number >= 0");
  if (settings.z_loss_coef < 0) table.fail("z_loss_coef", "expected a number >= 0");
  return settings;
}

}  // namespace mr1
