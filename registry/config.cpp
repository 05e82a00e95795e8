// Typed reading of experiment TOML, --set overrides and the errors that name file, key and line.
#include "registry/config.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>

namespace mr1 {

namespace {

const toml::table& empty_table() {
  static const toml::table empty;
  return empty;
}

std::string render(const toml::node& node) {
  std::ostringstream out;
  node.visit([&](const auto& value) { out << value; });
  std::string text = out.str();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

// Where the assignment that gave the key `full` a value or created it as a table came from, if any.
const std::string* set_assignment(const SetAssignments* assignments, const std::string& full) {
  if (!assignments) return nullptr;
  for (auto it = assignments->lower_bound(full); it != assignments->end(); ++it) {
    const std::string& key = it->first;
    if (key.compare(0, full.size(), full) != 0) break;
    if (key.size() == full.size() || key[full.size()] == '.') return &it->second;
  }
  return nullptr;
}

// The parts of a TOML dotted key: model.d_state → {model, d_state}; sweep."model.d_state" →
// {sweep, model.d_state}. Read by TOML++ itself, so quoting and spaces follow TOML.
std::vector<std::string> key_parts(const std::string& origin, const std::string& key) {
  std::vector<std::string> parts;
  try {
    const toml::table parsed = toml::parse(key + " = 0");
    const toml::table* table = &parsed;
    while (table && table->size() == 1) {
      const auto entry = table->begin();  // (its pair lives in the iterator)
      parts.emplace_back(entry->first.str());
      table = entry->second.as_table();
    }
    if (table || parts.empty()) parts.clear();
  } catch (const toml::parse_error&) {
    parts.clear();
  }
  if (parts.empty()) {
    throw ConfigError(origin + ": '" + key + "' is not a key; write table.key, quoting a part " +
                      "that holds dots: sweep.\"model.d_state\"=[16,32]");
  }
  return parts;
}

template <typename Value>
toml::array as_array(const std::vector<Value>& values) {
  toml::array array;
  for (const Value& value : values) array.push_back(value);
  return array;
}

}  // namespace

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string joined;
  for (size_t i = 0; i < items.size(); ++i) joined += (i ? separator : "") + items[i];
  return joined;
}

std::string type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a number";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    default: return "a date or time";
  }
}

std::string render_double(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  // The shortest %g text that reads back as the same double: 3e-3 -> "0.003", not 0.0030000000000000001.
  char buffer[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof buffer, "%.*g", precision, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  std::string text = buffer;
  if (text.find_first_of(".eE") == std::string::npos) text += ".0";  // TOML needs a float to look like one
  return text;
}

namespace {

std::string quote_toml_string(const std::string& value) {
  std::string quoted = "\"";
  for (unsigned char c : value) {
    switch (c) {
      case '"': quoted += "\\\""; break;
      case '\\': quoted += "\\\\"; break;
      case '\n': quoted += "\\n"; break;
      case '\t': quoted += "\\t"; break;
      case '\r': quoted += "\\r"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char escape[8];
          std::snprintf(escape, sizeof escape, "\\u%04x", c);
          quoted += escape;
        } else {
          quoted += static_cast<char>(c);
        }
    }
  }
  return quoted + "\"";
}

void flatten_into(const toml::table& table, const std::string& prefix, std::map<std::string, const toml::node*>& out) {
  for (auto&& [key, node] : table) {
    const std::string path = prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
    if (const toml::table* inner = node.as_table()) {
      flatten_into(*inner, path, out);
    } else {
      out[path] = &node;
    }
  }
}

}  // namespace

std::map<std::string, const toml::node*> flatten_toml(const toml::table& table) {
  std::map<std::string, const toml::node*> out;
  flatten_into(table, "", out);
  return out;
}

std::map<std::string, std::string> flatten_toml_text(const toml::table& table) {
  std::map<std::string, std::string> out;
  for (const auto& [key, node] : flatten_toml(table)) out[key] = render_toml_value(*node);
  return out;
}

std::string toml_key(const std::string& key) {
  const bool bare = !key.empty() && std::all_of(key.begin(), key.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '_' || c == '-';
  });
  return bare ? key : quote_toml_string(key);
}

std::string render_toml_value(const toml::node& node) {
  if (auto value = node.value_exact<std::string>()) return quote_toml_string(*value);
  if (auto value = node.value_exact<int64_t>()) return std::to_string(*value);
  if (auto value = node.value_exact<double>()) return render_double(*value);
  if (auto value = node.value_exact<bool>()) return *value ? "true" : "false";
  if (const toml::array* array = node.as_array()) {
    std::vector<std::string> items;
    for (const toml::node& item : *array) items.push_back(render_toml_value(item));
    return "[" + join(items, ", ") + "]";
  }
  if (const toml::table* table = node.as_table()) {
    std::vector<std::string> items;
    for (const auto& [key, value] : *table) {
      items.push_back(toml_key(std::string(key.str())) + " = " + render_toml_value(value));
    }
    return items.empty() ? "{}" : "{ " + join(items, ", ") + " }";
  }
  std::ostringstream out;  // dates and times: TOML++ writes them as TOML
  node.visit([&](const auto& value) { out << value; });
  return out.str();
}

namespace {

// A table's values, then each sub-table as a [path] section (TOML's order).
void write_table(std::ostringstream& out, const toml::table& table, const std::string& path) {
  for (const auto& [key, node] : table) {
    if (!node.is_table()) out << toml_key(std::string(key.str())) << " = " << render_toml_value(node) << "\n";
  }
  for (const auto& [key, node] : table) {
    if (!node.is_table()) continue;
    const std::string inner = (path.empty() ? "" : path + ".") + toml_key(std::string(key.str()));
    const toml::table& sub = *node.as_table();
    // A header for a table with values of its own or none at all ([model.layers] holds tables only).
    const bool values = std::any_of(sub.begin(), sub.end(), [](const auto& entry) { return !entry.second.is_table(); });
    if (values || sub.empty()) out << (out.tellp() > 0 ? "\n" : "") << "[" << inner << "]\n";
    write_table(out, sub, inner);
  }
}

}  // namespace

std::string toml_document(const toml::table& table) {
  std::ostringstream out;
  write_table(out, table, "");
  return out.str();
}

ConfigTable::ConfigTable(const toml::table* table, std::string file, std::string path,
                         std::shared_ptr<const SetAssignments> assignments, std::shared_ptr<toml::table> effective)
    : table_(table ? table : &empty_table()),
      file_(std::move(file)),
      path_(std::move(path)),
      read_keys_(std::make_shared<std::set<std::string>>()),
      assignments_(std::move(assignments)),
      effective_(std::move(effective)) {}

const toml::node* ConfigTable::lookup(const std::string& key) const {
  read_keys_->insert(key);
  if (fallback_ && !table_->contains(key)) return fallback_->lookup(key);
  return table_->get(key);
}

bool ConfigTable::has(const std::string& key) const {
  return table_->contains(key) || (fallback_ && fallback_->has(key));
}

std::vector<std::string> ConfigTable::keys() const {
  std::vector<std::string> names;
  for (const auto& [key, node] : *table_) names.emplace_back(key.str());
  return names;
}

ConfigTable ConfigTable::over(const ConfigTable& fallback) const {
  ConfigTable layered = *this;
  layered.fallback_ = std::make_shared<const ConfigTable>(fallback);
  return layered;
}

std::string ConfigTable::where(const std::string& key) const {
  if (fallback_ && !table_->contains(key) && fallback_->has(key)) return fallback_->where(key);
  const std::string full = path_.empty() ? key : path_ + "." + key;
  if (const std::string* origin = set_assignment(assignments_.get(), full)) {
    return *origin + ": " + full;
  }
  std::string location = file_;
  const toml::node* node = table_->get(key);
  if (node && node->source().begin.line > 0) {
    location += ":" + std::to_string(node->source().begin.line);
  } else if (table_->source().begin.line > 0) {
    location += ":" + std::to_string(table_->source().begin.line);
  }
  return location + ": " + full;
}

void ConfigTable::fail(const std::string& key, const std::string& message) const {
  throw ConfigError(where(key) + ": " + message);
}

// The value of `key` as exactly a T (an integer is not a string, a float not an integer), or
// `fallback` when the key is absent; recorded as the effective value either way.
template <typename T>
T ConfigTable::read_exact(const std::string& key, const T& fallback, const std::string& expected) const {
  T result = fallback;
  if (const toml::node* node = lookup(key)) {
    auto value = node->value_exact<T>();
    if (!value) fail(key, "expected " + expected + ", found " + type_name(*node) + " " + render(*node));
    result = *value;
  }
  record_node(key, toml::value<T>(result));
  return result;
}

int64_t ConfigTable::get_int(const std::string& key, int64_t fallback, int64_t min, int64_t max) const {
  const int64_t value = read_exact<int64_t>(key, fallback, "an integer");
  if (has(key) && (value < min || value > max)) {
    std::string range = min == INT64_MIN ? "<= " + std::to_string(max)
                        : max == INT64_MAX ? ">= " + std::to_string(min)
                                           : "from " + std::to_string(min) + " to " + std::to_string(max);
    fail(key, "expected an integer " + range + ", found " + std::to_string(value));
  }
  return value;
}

double ConfigTable::get_double(const std::string& key, double fallback) const {
  double result = fallback;
  if (const toml::node* node = lookup(key)) {
    if (!node->is_number()) fail(key, "expected a number, found " + type_name(*node) + " " + render(*node));
    result = *node->value<double>();
    if (!std::isfinite(result)) fail(key, "expected a finite number, found " + render(*node));
  }
  record_node(key, toml::value<double>(result));
  return result;
}

bool ConfigTable::get_bool(const std::string& key, bool fallback) const {
  return read_exact<bool>(key, fallback, "true or false");
}

std::string ConfigTable::get_string(const std::string& key, const std::string& fallback) const {
  return read_exact<std::string>(key, fallback, "a string");
}

std::string ConfigTable::get_choice(const std::string& key, const std::string& fallback,
                                    const std::vector<std::string>& choices) const {
  std::string value = get_string(key, fallback);
  for (const std::string& choice : choices) {
    if (choice == value) return value;
  }
  fail(key, "unknown value \"" + value + "\"; valid: " + join(choices));
}

std::vector<std::string> ConfigTable::get_string_list(const std::string& key,
                                                      const std::vector<std::string>& fallback) const {
  const std::vector<std::string> result = [&]() -> std::vector<std::string> {
    const toml::node* node = lookup(key);
    if (!node) return fallback;
    if (auto single = node->value_exact<std::string>()) return {*single};
    const toml::array* array = node->as_array();
    if (!array) fail(key, "expected a list of strings, found " + type_name(*node) + " " + render(*node));
    std::vector<std::string> values;
    for (const toml::node& item : *array) {
      auto value = item.value_exact<std::string>();
      if (!value) fail(key, "expected a list of strings, found an element that is " + type_name(item));
      values.push_back(*value);
    }
    return values;
  }();
  record_node(key, as_array(result));
  return result;
}

const toml::node* ConfigTable::node(const std::string& key) const {
  const toml::node* found = lookup(key);
  if (found) record_node(key, *found);
  return found;
}

void ConfigTable::record_resolved(const std::string& key, int64_t value) const {
  record_node(key, toml::value<int64_t>(value));
}

void ConfigTable::record_resolved(const std::string& key, double value) const {
  record_node(key, toml::value<double>(value));
}

void ConfigTable::record_resolved(const std::string& key, const std::string& value) const {
  record_node(key, toml::value<std::string>(value));
}

void ConfigTable::record_node(const std::string& key, const toml::node& value) const {
  if (!effective_) return;
  toml::table* table = effective_.get();
  for (size_t begin = 0; !path_.empty() && begin <= path_.size();) {
    const size_t end = std::min(path_.find('.', begin), path_.size());
    const std::string part = path_.substr(begin, end - begin);
    if (!table->contains(part)) table->insert(part, toml::table{});
    table = table->get_as<toml::table>(part);
    if (!table) return;  // a value where a table would go: nothing to record under it
    begin = end + 1;
  }
  value.visit([&](const auto& copy) { table->insert_or_assign(key, copy); });
}

ConfigTable ConfigTable::table(const std::string& key) const {
  if (fallback_ && !table_->contains(key)) {
    read_keys_->insert(key);
    return fallback_->table(key);
  }
  const toml::node* node = lookup(key);
  if (node && !node->is_table()) fail(key, "expected a table, found " + type_name(*node) + " " + render(*node));
  return ConfigTable(node ? node->as_table() : nullptr, file_, path_.empty() ? key : path_ + "." + key, assignments_,
                     effective_);
}

void ConfigTable::reject_unknown_keys() const {
  for (const auto& [key, node] : *table_) {
    const std::string name(key.str());
    if (read_keys_->count(name)) continue;
    std::vector<std::string> valid(read_keys_->begin(), read_keys_->end());
    fail(name, "unknown key; valid keys here: " + (valid.empty() ? std::string("none") : join(valid)));
  }
}

ExperimentFile ExperimentFile::load(const std::string& path) {
  if (std::filesystem::is_directory(path)) throw ConfigError(path + ": is a folder; expected an experiment file (.toml)");
  try {
    ExperimentFile file;
    file.file_ = path;
    file.root_ = std::make_shared<toml::table>(toml::parse_file(path));
    return file;
  } catch (const toml::parse_error& error) {
    const auto& begin = error.source().begin;
    std::string message(error.description());
    if (message.find("File could not be opened") != std::string::npos) {
      throw ConfigError(path + ": cannot open the experiment file");
    }
    throw ConfigError(path + ":" + std::to_string(begin.line) + ":" + std::to_string(begin.column) +
                      ": TOML syntax error: " + message);
  }
}

ExperimentFile ExperimentFile::parse(const std::string& text, const std::string& name) {
  try {
    ExperimentFile file;
    file.file_ = name;
    file.root_ = std::make_shared<toml::table>(toml::parse(text, name));
    return file;
  } catch (const toml::parse_error& error) {
    throw ConfigError(name + ":" + std::to_string(error.source().begin.line) +
                      ": TOML syntax error: " + std::string(error.description()));
  }
}

void ExperimentFile::set(const std::string& assignment, const std::string& given_origin) {
  const std::string origin = given_origin.empty() ? "--set " + assignment : given_origin;
  // The key ends at the first '=' outside double quotes (a quoted part may hold '=' and '.').
  size_t equals = 0;
  for (bool quoted = false; equals < assignment.size() && (quoted || assignment[equals] != '='); ++equals) {
    if (assignment[equals] == '"') quoted = !quoted;
  }
  if (equals == assignment.size() || equals == 0) {
    throw ConfigError(origin + ": expected KEY=VALUE, for example model.d_state=32");
  }
  const std::vector<std::string> parts = key_parts(origin, assignment.substr(0, equals));
  const std::string text = assignment.substr(equals + 1);

  // The value as TOML; "abc" without quotes is taken as the string abc.
  toml::table parsed;
  try {
    parsed = toml::parse("value = " + text);
  } catch (const toml::parse_error&) {
    parsed = toml::table{{"value", text}};
  }

  toml::table* table = root_.get();
  std::string path;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    const std::string& part = parts[i];
    path += (path.empty() ? "" : ".") + part;
    toml::node* child = table->get(part);
    if (!child) {
      table->insert(part, toml::table{});
      child = table->get(part);
    }
    if (!child->is_table()) throw ConfigError(origin + ": '" + path + "' is not a table");
    table = child->as_table();
  }
  table->insert_or_assign(parts.back(), *parsed.get("value"));
  (*assignments_)[path + (path.empty() ? "" : ".") + parts.back()] = origin;
}

ConfigTable ExperimentFile::table(const std::string& name) const {
  const toml::node* node = root_->get(name);
  if (node && !node->is_table()) {
    throw ConfigError(top_level_where(name, *node) + ": expected a table [" + name + "], found " + type_name(*node));
  }
  return ConfigTable(node ? node->as_table() : nullptr, file_, name, assignments_, effective_);
}

std::string ExperimentFile::top_level_where(const std::string& name, const toml::node& node) const {
  if (const std::string* origin = set_assignment(assignments_.get(), name)) {
    return *origin + ": " + name;
  }
  return file_ + ":" + std::to_string(node.source().begin.line) + ": " + name;
}

void ExperimentFile::reject_unknown_tables(const std::vector<std::string>& known) const {
  for (const auto& [key, node] : *root_) {
    const std::string name(key.str());
    bool found = false;
    for (const std::string& table : known) found = found || table == name;
    if (!found) {
      throw ConfigError(top_level_where(name, node) + ": unknown table or key; valid tables: " + join(known));
    }
  }
}

std::string ExperimentFile::to_toml() const { return toml_document(*root_); }

std::string ExperimentFile::effective_toml() const { return toml_document(*effective_); }

void ExperimentFile::forget_effective(const std::string& name) const { effective_->erase(name); }

}  // namespace mr1
