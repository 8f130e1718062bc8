// URL parsing and the loopback test that decides where plain http is allowed.

#include <catch2/catch.hpp>

#include "clusterconnect/url.hpp"

using clusterconnect::parse_url;

namespace {

bool loopback(const char* url) {
  auto u = parse_url(url);
  REQUIRE(u);
  return u->is_loopback_host();
}

}  // namespace

TEST_CASE("loopback hosts are literal loopback addresses and localhost only") {
  CHECK(loopback("http://127.0.0.1:8080/"));
  CHECK(loopback("http://127.1.2.3/"));
  CHECK(loopback("http://127.255.255.254/"));
  CHECK(loopback("http://localhost:5556/"));
  CHECK(loopback("http://LOCALHOST/"));
  CHECK(loopback("http://[::1]:8443/"));
  CHECK(loopback("http://[0:0:0:0:0:0:0:1]/"));
}

TEST_CASE("a name that starts with 127. is not loopback") {
  CHECK_FALSE(loopback("http://127.attacker.example/"));
  CHECK_FALSE(loopback("http://127.0.0.1.attacker.example/"));
  CHECK_FALSE(loopback("http://127.0.0.1.nip.io/"));
  CHECK_FALSE(loopback("http://127/"));
  CHECK_FALSE(loopback("http://127.0.0.256/"));
}

TEST_CASE("other addresses and names are not loopback") {
  CHECK_FALSE(loopback("http://128.0.0.1/"));
  CHECK_FALSE(loopback("http://10.0.0.1/"));
  CHECK_FALSE(loopback("http://[::2]/"));
  CHECK_FALSE(loopback("http://[::ffff:127.0.0.1]/"));
  CHECK_FALSE(loopback("http://localhost.example/"));
  CHECK_FALSE(loopback("http://example.com/"));
}

TEST_CASE("parse_url splits scheme, host, port, path and query") {
  auto u = parse_url("HTTPS://Example.COM:8443/a/b?x=1#frag");
  REQUIRE(u);
  CHECK(u->scheme == "https");
  CHECK(u->host == "example.com");
  CHECK(u->port == "8443");
  CHECK(u->path == "/a/b");
  CHECK(u->query == "x=1");
  auto v6 = parse_url("wss://[::1]/");
  REQUIRE(v6);
  CHECK(v6->host == "::1");
  CHECK(v6->port == "443");
  CHECK_FALSE(parse_url("https://user@example.com/"));
}
