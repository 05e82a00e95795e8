// Files a run writes: atomically (temporary file, then rename) so that nothing is half-written.
#pragma once

#include <string>

namespace mr1 {

// Writes `text` to PATH.tmp, then renames it to PATH. Throws naming the path on failure.
void write_file_atomic(const std::string& path, const std::string& text);
// The whole file; throws naming the path when it cannot be read.
std::string read_file(const std::string& path);
// Creates the folder (and its parents); throws naming it on failure.
void make_directories(const std::string& path);

}  // namespace mr1
