// Checks on the SVG documents the reports write, shared by the sweep and run-report tests.
#pragma once

#include <catch2/catch.hpp>

#include <regex>
#include <string>
#include <vector>

namespace mr1::test {

// Tags open and close in a proper nesting, and the document is one <svg> element.
inline void require_well_formed_svg(const std::string& svg) {
  REQUIRE_THAT(svg, Catch::Matchers::StartsWith("<svg xmlns=\"http://www.w3.org/2000/svg\""));
  std::vector<std::string> open;
  const std::regex tag("<(/?)([a-zA-Z][a-zA-Z0-9]*)[^>]*?(/?)>");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), tag); it != std::sregex_iterator(); ++it) {
    const std::string closing = (*it)[1], name = (*it)[2], self_closing = (*it)[3];
    if (!self_closing.empty()) continue;
    if (closing.empty()) {
      open.push_back(name);
      continue;
    }
    INFO("closing </" << name << "> at offset " << it->position());
    REQUIRE(!open.empty());
    REQUIRE(open.back() == name);
    open.pop_back();
  }
  CHECK(open.empty());
  CHECK(svg.find("nan") == std::string::npos);
  CHECK(svg.find("inf\"") == std::string::npos);
}

inline size_t count(const std::string& text, const std::string& part) {
  size_t found = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++found;
  return found;
}

}  // namespace mr1::test
