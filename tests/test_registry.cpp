// The registries: every built-in entry is listed with a description; duplicates and unknown names
// are errors that list the valid names.
#include "blocks/catalog.h"
#include "test_util.h"

using namespace mr1;
using Catch::Matchers::Contains;

namespace {
std::vector<std::string> names_of(const RegistryBase& registry) {
  std::vector<std::string> names;
  for (const RegistryEntryInfo& entry : registry.entries()) {
    CHECK_FALSE(entry.description.empty());
    names.push_back(entry.name);
  }
  return names;
}
bool has(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}
}  // namespace

TEST_CASE("the built-in entries of every kind are registered with descriptions", "[registry]") {
  register_all();
  const auto blocks = names_of(block_registry());
  CHECK(has(blocks, "mamba"));
  CHECK(has(blocks, "moe"));
  CHECK(has(blocks, "mlp"));
  const auto norms = names_of(norm_registry());
  CHECK(norms == std::vector<std::string>{"layernorm", "none", "rmsnorm"});
  CHECK(names_of(positional_registry()) == std::vector<std::string>{"learned", "rotary"});
  CHECK(has(names_of(router_registry()), "switch"));
  CHECK(has(names_of(task_registry()), "forward"));
}

TEST_CASE("register_all may be called again without duplicating entries", "[registry]") {
  register_all();
  const size_t before = block_registry().entries().size();
  register_all();
  CHECK(block_registry().entries().size() == before);
}

TEST_CASE("a duplicate name and an unknown name are errors listing the valid names", "[registry]") {
  Registry<int> registry("widget");
  registry.add("a", "first", 1);
  registry.add("b", "second", 2);
  CHECK(registry.get("b") == 2);
  CHECK_THROWS_WITH(registry.add("a", "again", 3), Contains("widget 'a' is registered twice"));
  CHECK_THROWS_WITH(registry.get("c"), Contains("unknown widget 'c'") && Contains("valid: a, b"));
}
