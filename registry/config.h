// Reading experiment files: TOML tables to typed options, with errors that name the file,
// the key, its line and what was expected. Every key an entry reads is recorded, so a key
// nobody read is reported as unknown together with the valid ones.
#pragma once

#include <toml++/toml.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace mr1 {

// A user error in an experiment file or a --set override. The message is complete:
// "experiments/x.toml:12: model.d_state: expected an integer >= 1, found -3".
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "a, b, c": the items with `separator` between them (names in messages, cells of a table).
std::string join(const std::vector<std::string>& items, const std::string& separator = ", ");

// "an integer", "a string", ...: what a TOML value is, for error messages.
std::string type_name(const toml::node& node);

// A double as the shortest text that reads back as the same value, in TOML's form (0.003, 1.0, 1e-40, nan).
std::string render_double(double value);

// A value as TOML text: strings quoted and escaped, floats that read back exactly (3e-3 -> 0.003, not
// 0.0030000000000000001), arrays "[a, b]", inline tables "{ k = v }".
std::string render_toml_value(const toml::node& node);
// Every value of `table` (and of its sub-tables) by its dotted key, "model.d_state", in key order.
std::map<std::string, const toml::node*> flatten_toml(const toml::table& table);
// flatten_toml with each value as render_toml_value writes it.
std::map<std::string, std::string> flatten_toml_text(const toml::table& table);
// A key as TOML writes it: bare when it can be, else quoted.
std::string toml_key(const std::string& key);
// A table as a TOML document: its values, then each sub-table as a [path] section, values rendered as
// render_toml_value does.
std::string toml_document(const toml::table& table);

// The assignments applied to an experiment: full key path ("training.lr") to where the value came from,
// as messages name it: "--set training.lr=-1", or "x.toml:12: sweep.training.lr, value -1" for a sweep's.
using SetAssignments = std::map<std::string, std::string>;

// A view of one TOML table ("model", "router", "task", ...) that reads typed values.
// Copies share the record of which keys were read.
class ConfigTable {
 public:
  // `assignments`: the experiment's --set assignments (may be null), so that an error about a value
  // set there names the assignment instead of a line of the file. `effective` (may be null): the table
  // into which every get_* records, under this table's path, the value it returned (the file's or the
  // default), which ExperimentFile::effective_toml writes out.
  ConfigTable(const toml::table* table, std::string file, std::string path,
              std::shared_ptr<const SetAssignments> assignments = nullptr,
              std::shared_ptr<toml::table> effective = nullptr);

  const std::string& path() const { return path_; }
  const std::string& file() const { return file_; }
  bool has(const std::string& key) const;
  // This table's own keys, sorted by name (a fallback's are not included).
  std::vector<std::string> keys() const;

  int64_t get_int(const std::string& key, int64_t fallback, int64_t min = INT64_MIN, int64_t max = INT64_MAX) const;
  double get_double(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;
  // A string that must be one of `choices`.
  std::string get_choice(const std::string& key, const std::string& fallback,
                         const std::vector<std::string>& choices) const;
  // A list of strings; a single string is taken as a list of one.
  std::vector<std::string> get_string_list(const std::string& key, const std::vector<std::string>& fallback) const;
  // The sub-table `key` (an empty table when absent); marks `key` as read.
  ConfigTable table(const std::string& key) const;
  // This table read over `fallback`: a key this table lacks is read from `fallback` (and marked read
  // there; errors about it name its place there). reject_unknown_keys checks this table's own keys.
  // Shares this table's record of read keys.
  ConfigTable over(const ConfigTable& fallback) const;
  const toml::node* node(const std::string& key) const;  // raw node; marks `key` as read (and records it)
  // Records `value` as the effective value of `key`, for a setting given by name that resolves to a
  // number (dt_rank = "auto" is ceil(dim / 16)): effective_toml then holds the number used.
  void record_resolved(const std::string& key, int64_t value) const;
  // The same for a number whose default differs by context (a router that applies aux_loss_coef only
  // when it is given records 0 when it is not).
  void record_resolved(const std::string& key, double value) const;
  // The same for a string setting resolved to another text (a path relative to the file's folder,
  // recorded as the absolute path it named, so that effective.toml runs from anywhere).
  void record_resolved(const std::string& key, const std::string& value) const;

  // Throws ConfigError for the first key of this table that no get_* asked for, listing the keys that were.
  void reject_unknown_keys() const;
  // An error about `key` in this table, with its file and line.
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;
  // "file:line: path.key", or "--set path.key=value: path.key" for a key given (or under a table
  // created) by a --set assignment.
  std::string where(const std::string& key) const;

 private:
  const toml::node* lookup(const std::string& key) const;
  template <typename T>
  T read_exact(const std::string& key, const T& fallback, const std::string& expected) const;
  // Records `value` as the effective value of this table's `key`.
  void record_node(const std::string& key, const toml::node& value) const;
  const toml::table* table_;
  std::string file_;
  std::string path_;
  std::shared_ptr<std::set<std::string>> read_keys_;
  std::shared_ptr<const SetAssignments> assignments_;
  std::shared_ptr<const ConfigTable> fallback_;
  std::shared_ptr<toml::table> effective_;
};

// A whole experiment file with the --set overrides applied.
class ExperimentFile {
 public:
  // Parses `path`; a syntax error becomes a ConfigError with the file and line.
  static ExperimentFile load(const std::string& path);
  static ExperimentFile parse(const std::string& text, const std::string& name);

  // Applies "model.d_state=32": the value is read as TOML (32, 1.5, true, "x", [..]) or, failing
  // that, as a bare string. Creates missing tables. `origin` names the assignment in messages about its
  // value (empty: "--set model.d_state=32").
  void set(const std::string& assignment, const std::string& origin = "");

  const std::string& file() const { return file_; }
  // Where each assignment applied came from, by full key path.
  const SetAssignments& assignments() const { return *assignments_; }
  toml::table& root() { return *root_; }
  const toml::table& root() const { return *root_; }
  // The top-level table `name` (empty when absent).
  ConfigTable table(const std::string& name) const;
  // Top-level keys other than `known` are errors naming the valid tables.
  void reject_unknown_tables(const std::vector<std::string>& known) const;
  // The resolved file as TOML text (for the run's output folder).
  std::string to_toml() const;
  // Every setting the program read from this file's tables so far, with the value it used, the file's
  // or its default, as TOML text (effective.toml in the run's folder).
  std::string effective_toml() const;
  // Leaves the top-level table `name` out of effective_toml: one read only to check it (the [training]
  // of a task that does not train).
  void forget_effective(const std::string& name) const;

 private:
  // "file:line: name", or "--set name.key=value: name" for a table an assignment created.
  std::string top_level_where(const std::string& name, const toml::node& node) const;

  std::string file_;
  std::shared_ptr<toml::table> root_;
  std::shared_ptr<SetAssignments> assignments_ = std::make_shared<SetAssignments>();
  std::shared_ptr<toml::table> effective_ = std::make_shared<toml::table>();
};

}  // namespace mr1
