#pragma once
// ASCII case-insensitive comparison, as HTTP header names and ARM path
// segments need (locale-independent on purpose).

#include <string>
#include <string_view>

namespace clusterconnect {

constexpr char ascii_lower(char c) noexcept { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

constexpr bool ascii_iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  return true;
}

constexpr bool ascii_istarts_with(std::string_view s, std::string_view prefix) noexcept {
  return s.size() >= prefix.size() && ascii_iequals(s.substr(0, prefix.size()), prefix);
}

inline std::string ascii_lowered(std::string s) {
  for (auto& c : s) c = ascii_lower(c);
  return s;
}

}  // namespace clusterconnect
