#pragma once
// Absolute URLs as the binaries take them on the command line:
// scheme://host[:port][/path][?query]. IPv6 literals in brackets.

#include <string>
#include <string_view>

#include "clusterconnect/result.hpp"

namespace clusterconnect {

struct Url {
  std::string scheme;  // lower-case
  std::string host;    // without brackets
  std::string port;    // explicit or the scheme's default
  std::string path;    // "/" when absent
  std::string query;   // without '?'

  bool is_loopback_host() const;
  // host[:port], with the port omitted when it is the scheme's default.
  std::string authority() const;
};

// Accepts http, https, ws, wss.
Result<Url> parse_url(std::string_view text);

// Percent-decoding of one URL component; false on a bad escape.
bool percent_decode(std::string_view in, std::string& out);
// Percent-encoding leaving RFC 3986 unreserved characters as they are.
std::string percent_encode(std::string_view in);
// Percent-encoding of every byte for which `keep` is false (%XX, upper case).
std::string percent_encode(std::string_view in, bool (*keep)(unsigned char));

}  // namespace clusterconnect
