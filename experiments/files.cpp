// Atomic writes and plain reads.
#include "experiments/files.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>

namespace mr1 {

void write_file_atomic(const std::string& path, const std::string& text) {
  if (std::filesystem::is_directory(path)) throw FileError(path + ": is a folder; cannot write a file there");
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(temporary + ": cannot open for writing");
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.flush();
    if (!out) throw std::runtime_error(temporary + ": write failed (disk full?)");
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) throw std::runtime_error(path + ": cannot rename " + temporary + " into place: " + error.message());
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in || std::filesystem::is_directory(path)) throw FileError(path + ": cannot open for reading");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

nlohmann::json read_json_file(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    throw FileError(path + ": not valid JSON (" + error.what() + ")");
  }
}

void make_directories(const std::string& path) {
  std::error_code error;
  std::filesystem::create_directories(path, error);
  if (error) throw FileError(path + ": cannot create the folder: " + error.message());
}

std::string make_new_folder(const std::string& stem) {
  const std::string parent = std::filesystem::path(stem).parent_path().string();
  if (!parent.empty()) make_directories(parent);
  for (int n = 1;; ++n) {
    const std::string path = n == 1 ? stem : stem + "-" + std::to_string(n);
    std::error_code error;
    if (std::filesystem::create_directory(path, error)) return path;
    if (error) throw FileError(path + ": cannot create the folder: " + error.message());
  }
}

}  // namespace mr1
