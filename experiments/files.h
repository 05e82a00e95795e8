// Files a run writes: atomically (temporary file, then rename) so that nothing is half-written.
#pragma once

#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>

namespace mr1 {

// A file or folder the user named (or a run's own file, read back) that is missing, unreadable or not
// what it should be: one message naming the path and what was expected. The command exits with 2.
class FileError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Writes `text` to PATH.tmp, then renames it to PATH. Throws naming the path on failure.
void write_file_atomic(const std::string& path, const std::string& text);
// The whole file; throws FileError naming the path when it cannot be read.
std::string read_file(const std::string& path);
// The file parsed as JSON; throws FileError naming the path when it cannot be read or parsed.
nlohmann::json read_json_file(const std::string& path);
// Creates the folder (and its parents); throws FileError naming it on failure.
void make_directories(const std::string& path);
// Creates a new folder `stem`, or stem-2, stem-3, ... when that one exists (runs started in the same
// second), and returns the one made. Atomic: two processes never get the same folder.
std::string make_new_folder(const std::string& stem);

}  // namespace mr1
