// The list of registries and the one place that registers every built-in entry.
#include "registry/registry.h"

#include <mutex>

namespace mr1 {

RegistryBase::RegistryBase(std::string kind) : kind_(std::move(kind)) {}

std::string RegistryBase::names() const {
  std::string joined;
  for (const RegistryEntryInfo& entry : entries()) joined += (joined.empty() ? "" : ", ") + entry.name;
  return joined;
}

std::vector<const RegistryBase*>& all_registries() {
  static std::vector<const RegistryBase*> registries;
  return registries;
}

void register_blocks();
void register_norms();
void register_positional_encodings();
void register_routers();
void register_tasks();
void register_optimizers();

void register_all() {
  static std::once_flag once;
  std::call_once(once, [] {
    register_blocks();
    register_norms();
    register_positional_encodings();
    register_routers();
    register_tasks();
    register_optimizers();
  });
}

}  // namespace mr1
