// Reading and checking the [model] and [router] tables.
#include "registry/model_config.h"

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

}  // namespace

ModelConfig read_model_config(const ConfigTable& table) {
  register_all();
  ModelConfig config;
  config.dim = table.get_int("dim", config.dim, 1);
  config.depth = table.get_int("depth", config.depth, 1);
  config.order = table.get_string_list("order", config.order);
  if (config.order.empty()) table.fail("order", "expected at least one block; valid blocks: " + block_registry().names());
  for (const std::string& kind : config.order) check_registered(table, "order", block_registry(), kind);
  config.d_state = table.get_int("d_state", config.d_state, 1);
  config.d_conv = table.get_int("d_conv", config.d_conv, 1, 8);
  config.expand = table.get_int("expand", config.expand, 1);

  const toml::node* dt_rank = table.node("dt_rank");
  config.dt_rank = (config.dim + 15) / 16;
  if (dt_rank) {
    if (auto text = dt_rank->value_exact<std::string>()) {
      if (*text != "auto") table.fail("dt_rank", "expected \"auto\" or an integer >= 1, found \"" + *text + "\"");
    } else {
      config.dt_rank = table.get_int("dt_rank", 0, 1);
    }
  }

  config.num_experts = table.get_int("num_experts", config.num_experts, 1);
  config.expert_dim = table.get_int("expert_dim", config.expert_dim, 1);
  config.max_seq_len = table.get_int("max_seq_len", config.max_seq_len, 1);
  config.vocab_size = table.get_int("vocab_size", config.vocab_size, 0, INT32_MAX);
  config.norm = table.get_string("norm", config.norm);
  check_registered(table, "norm", norm_registry(), config.norm);
  config.positional = table.get_string_list("positional", config.positional);
  for (const std::string& kind : config.positional) {
    check_registered(table, "positional", positional_registry(), kind);
    if (kind == "rotary" && config.dim % 2 != 0) {
      table.fail("positional", "rotary needs an even dim, but dim is " + std::to_string(config.dim));
    }
  }
  config.tie_embeddings = table.get_bool("tie_embeddings", config.tie_embeddings);
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
