#include "clusterconnect/url.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>

namespace clusterconnect {
namespace {

std::string default_port(const std::string& scheme) {
  if (scheme == "https" || scheme == "wss") return "443";
  return "80";
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

// Only a literal IPv4 address in 127.0.0.0/8, the IPv6 loopback address or
// the name "localhost": a name that merely starts with "127." (such as
// 127.attacker.example) is resolved by DNS and may point anywhere.
bool Url::is_loopback_host() const {
  if (host == "localhost") return true;
  in_addr v4{};
  if (::inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (::inet_pton(AF_INET6, host.c_str(), &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6);
  return false;
}

std::string Url::authority() const {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return port == default_port(scheme) ? h : h + ":" + port;
}

Result<Url> parse_url(std::string_view text) {
  Url u;
  auto sep = text.find("://");
  if (sep == std::string_view::npos) return fail("'" + std::string(text) + "' is not an absolute URL (scheme://host...)");
  u.scheme.assign(text.substr(0, sep));
  std::transform(u.scheme.begin(), u.scheme.end(), u.scheme.begin(), [](unsigned char c) { return std::tolower(c); });
  if (u.scheme != "http" && u.scheme != "https" && u.scheme != "ws" && u.scheme != "wss")
    return fail("unsupported URL scheme '" + u.scheme + "' (use https or wss)");
  auto rest = text.substr(sep + 3);
  auto end = rest.find_first_of("/?#");
  auto authority = rest.substr(0, end);
  rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end);
  if (authority.find('@') != std::string_view::npos) return fail("URLs with user information are not accepted");
  if (!authority.empty() && authority.front() == '[') {
    auto close = authority.find(']');
    if (close == std::string_view::npos) return fail("unterminated IPv6 address in URL");
    u.host.assign(authority.substr(1, close - 1));
    auto after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return fail("bad characters after the IPv6 address in URL");
      u.port.assign(after.substr(1));
    }
  } else {
    auto colon = authority.rfind(':');
    u.host.assign(authority.substr(0, colon));
    if (colon != std::string_view::npos) u.port.assign(authority.substr(colon + 1));
  }
  if (u.host.empty()) return fail("URL '" + std::string(text) + "' has no host");
  std::transform(u.host.begin(), u.host.end(), u.host.begin(), [](unsigned char c) { return std::tolower(c); });
  if (u.port.empty()) u.port = default_port(u.scheme);
  if (u.port.size() > 5 || !std::all_of(u.port.begin(), u.port.end(), [](unsigned char c) { return std::isdigit(c); }) ||
      std::stoul(u.port) == 0 || std::stoul(u.port) > 65535)
    return fail("URL '" + std::string(text) + "' has an invalid port");
  auto hash = rest.find('#');
  if (hash != std::string_view::npos) rest = rest.substr(0, hash);
  auto q = rest.find('?');
  u.path.assign(rest.substr(0, q));
  if (q != std::string_view::npos) u.query.assign(rest.substr(q + 1));
  if (u.path.empty()) u.path = "/";
  return u;
}

bool percent_decode(std::string_view in, std::string& out) {
  out.clear();
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size()) return false;
    int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return true;
}

std::string percent_encode(std::string_view in) {
  return percent_encode(in, [](unsigned char c) { return std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~'; });
}

std::string percent_encode(std::string_view in, bool (*keep)(unsigned char)) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  out.reserve(in.size());
  for (unsigned char c : in) {
    if (keep(c)) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

}  // namespace clusterconnect
