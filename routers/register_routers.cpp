// The router registry and its built-in entries. A new router: one file, one line here.
#include "routers/router.h"
#include "routers/switch_router.h"

namespace mr1 {

Registry<RouterFactory>& router_registry() {
  static Registry<RouterFactory> registry("router");
  return registry;
}

namespace {
template <typename RouterType>
RouterFactory make() {
  return [](const RouterContext& context) -> std::unique_ptr<Router> {
    return std::make_unique<RouterType>(context);
  };
}
}  // namespace

void register_routers() {
  auto& registry = router_registry();
  registry.add("switch", "top-1 softmax routing with capacity factor and dropping (Switch Transformer)",
               make<SwitchRouter>());
}

}  // namespace mr1
