#include "impersonation.hpp"

#include <cctype>

#include "clusterconnect/ascii.hpp"
#include "clusterconnect/url.hpp"

namespace clusterconnect::agent {
namespace {

// RFC 9110 token characters, which client-go leaves unescaped in header keys.
bool legal_header_key_byte(unsigned char c) {
  if (std::isalnum(c)) return true;
  switch (c) {
    case '!': case '#': case '$': case '&': case '\'': case '*': case '+': case '-':
    case '.': case '^': case '_': case '`': case '|': case '~':
      return true;
    default:
      return false;
  }
}

}  // namespace

bool has_caller_impersonation(const http::RequestHead& head) {
  for (const auto& h : head.headers)
    if (ascii_istarts_with(h.name, "impersonate-")) return true;
  return false;
}

std::string bearer_token(const http::RequestHead& head) {
  const std::string* auth = head.find("authorization");
  if (!auth || !ascii_istarts_with(*auth, "bearer ")) return {};
  std::string_view t(*auth);
  t.remove_prefix(7);
  while (!t.empty() && t.front() == ' ') t.remove_prefix(1);
  while (!t.empty() && t.back() == ' ') t.remove_suffix(1);
  return std::string(t);
}

std::string escape_extra_key(std::string_view key) {
  return percent_encode(key, [](unsigned char c) { return legal_header_key_byte(c) && c != '%'; });
}

bool header_safe(std::string_view value) {
  for (unsigned char c : value)
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  return true;
}

namespace {

bool reserved(std::string_view name) {
  if (name.empty()) return true;
  if (name.size() >= 7 && ascii_istarts_with(name, "system:")) return true;
  for (unsigned char c : name)
    if (c <= 0x20 || c == 0x7f) return true;
  // UTF-8 no-break and other Unicode spaces.
  for (std::string_view s : {"\xc2\x85", "\xc2\xa0", "\xe1\x9a\x80", "\xe2\x80\xa8", "\xe2\x80\xa9", "\xe2\x80\xaf",
                             "\xe2\x81\x9f", "\xe3\x80\x80", "\xef\xbb\xbf"})
    if (name.find(s) != std::string_view::npos) return true;
  for (unsigned char third = 0x80; third <= 0x8b; ++third) {
    const char seq[] = {static_cast<char>(0xe2), static_cast<char>(0x80), static_cast<char>(third), 0};
    if (name.find(seq) != std::string_view::npos) return true;
  }
  return false;
}

}  // namespace

std::string refused_identity(const Identity& id) {
  if (reserved(id.user)) return "the user name is reserved (system:) or contains whitespace or control characters";
  for (const auto& g : id.groups)
    if (reserved(g)) return "a group name is reserved (system:) or contains whitespace or control characters";
  return {};
}

std::optional<ImpersonationHeaders> impersonation_headers(const Identity& id) {
  if (id.user.empty() || !header_safe(id.user) || !header_safe(id.uid)) return std::nullopt;
  for (const auto& g : id.groups)
    if (!header_safe(g)) return std::nullopt;
  for (const auto& [k, values] : id.extra)
    for (const auto& v : values)
      if (!header_safe(v) || k.empty()) return std::nullopt;

  ImpersonationHeaders block;
  block.headers.push_back({"Impersonate-User", id.user});
  if (!id.uid.empty()) block.headers.push_back({"Impersonate-Uid", id.uid});
  // One header per group: a group name may contain a comma, so the values
  // must never be folded into one comma-separated list.
  for (const auto& g : id.groups) block.headers.push_back({"Impersonate-Group", g});
  for (const auto& [k, values] : id.extra) {
    const std::string name = "Impersonate-Extra-" + escape_extra_key(k);
    for (const auto& v : values) block.headers.push_back({name, v});
  }
  return block;
}

void apply_impersonation(http::RequestHead& head, const ImpersonationHeaders& block, const std::string& agent_token) {
  head.remove("authorization");
  head.remove_prefix("impersonate-");
  head.headers.reserve(head.headers.size() + 1 + block.headers.size());
  head.headers.push_back({"Authorization", "Bearer " + agent_token});
  head.headers.insert(head.headers.end(), block.headers.begin(), block.headers.end());
}

bool apply_impersonation(http::RequestHead& head, const Identity& id, const std::string& agent_token) {
  auto block = impersonation_headers(id);
  if (!block) return false;
  apply_impersonation(head, *block, agent_token);
  return true;
}

}  // namespace clusterconnect::agent
