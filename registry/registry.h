// The string-keyed registries: one typed Registry per kind of thing (block, router, norm,
// positional encoding, task, optimizer), each entry with a one-line description.
#pragma once

#include <algorithm>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace mr1 {

// An unknown or duplicate registry name; the message lists the valid names.
class RegistryError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct RegistryEntryInfo {
  std::string name;
  std::string description;
};

// What `mamba-r1 list` sees of a registry, whatever its factory type.
class RegistryBase {
 public:
  explicit RegistryBase(std::string kind);
  virtual ~RegistryBase() = default;
  const std::string& kind() const { return kind_; }
  virtual std::vector<RegistryEntryInfo> entries() const = 0;
  // "a, b, c": the valid names, for error messages.
  std::string names() const;

 private:
  std::string kind_;
};

// Every registry, in the order they were created.
std::vector<const RegistryBase*>& all_registries();

template <typename Factory>
class Registry : public RegistryBase {
 public:
  explicit Registry(std::string kind) : RegistryBase(std::move(kind)) { all_registries().push_back(this); }
  ~Registry() override {
    auto& registries = all_registries();
    registries.erase(std::remove(registries.begin(), registries.end(), this), registries.end());
  }
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  void add(const std::string& name, const std::string& description, Factory factory) {
    if (entries_.count(name)) throw RegistryError(kind() + " '" + name + "' is registered twice");
    entries_.emplace(name, Entry{description, std::move(factory)});
  }

  bool contains(const std::string& name) const { return entries_.count(name) != 0; }

  // The factory of `name`; an unknown name throws RegistryError listing the valid ones.
  const Factory& get(const std::string& name) const {
    auto found = entries_.find(name);
    if (found == entries_.end()) {
      throw RegistryError("unknown " + kind() + " '" + name + "'; valid: " + names());
    }
    return found->second.factory;
  }

  const std::string& description(const std::string& name) const {
    get(name);
    return entries_.at(name).description;
  }

  std::vector<RegistryEntryInfo> entries() const override {
    std::vector<RegistryEntryInfo> list;
    for (const auto& [name, entry] : entries_) list.push_back({name, entry.description});
    return list;
  }

 private:
  struct Entry {
    std::string description;
    Factory factory;
  };
  std::map<std::string, Entry> entries_;  // sorted by name
};

// Registers every built-in entry of every kind, once; safe to call repeatedly. Registration is
// explicit (a register_* function per folder, called from here) so that no entry can be dropped
// by the linker.
void register_all();

}  // namespace mr1
