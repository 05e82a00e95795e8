// Checks on the SVG documents the reports write, shared by the sweep and run-report tests.
#pragma once

#include <catch2/catch.hpp>

#include <cctype>
#include <string>
#include <vector>

namespace mr1::test {

// Tags open and close in a proper nesting, and the document is one <svg> element. (Scanned by hand:
// std::regex recurses once per character, which overflows the stack on a long points="..." list.)
inline void require_well_formed_svg(const std::string& svg) {
  REQUIRE_THAT(svg, Catch::Matchers::StartsWith("<svg xmlns=\"http://www.w3.org/2000/svg\""));
  std::vector<std::string> open;
  for (size_t at = svg.find('<'); at != std::string::npos; at = svg.find('<', at + 1)) {
    const size_t end = svg.find('>', at);
    REQUIRE(end != std::string::npos);
    const bool closing = svg[at + 1] == '/';
    const size_t name_begin = at + (closing ? 2 : 1);
    size_t name_end = name_begin;
    while (name_end < end && std::isalnum(static_cast<unsigned char>(svg[name_end]))) ++name_end;
    const std::string name = svg.substr(name_begin, name_end - name_begin);
    INFO("tag <" << (closing ? "/" : "") << name << "> at offset " << at);
    REQUIRE(!name.empty());
    if (svg[end - 1] == '/') continue;  // self-closing
    if (!closing) {
      open.push_back(name);
      continue;
    }
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
