#include <catch2/catch.hpp>

#include "clusterconnect/sas_token.hpp"

using namespace clusterconnect;
using namespace std::chrono_literals;
using Clock = std::chrono::system_clock;

namespace {
SasKeyLookup keys(std::string name, std::string secret) {
  return [name, secret](std::string_view n) -> std::optional<std::string> {
    if (n == name) return secret;
    return std::nullopt;
  };
}
const Clock::time_point t1700 = Clock::time_point(std::chrono::seconds(1700000000));
}  // namespace

TEST_CASE("make_sas_token matches the Azure Relay algorithm", "[sas]") {
  // Computed independently (Python hmac/base64/quote): HMAC-SHA256 keyed with
  // the key string over urlenc(sr) + "\n" + se.
  CHECK(make_sas_token("http://ns.servicebus.windows.net:443/hc", "root", "secret", t1700) ==
        "SharedAccessSignature sr=http%3A%2F%2Fns.servicebus.windows.net%3A443%2Fhc"
        "&sig=d3ZVVtgXm75XXetiCAvNvoi9EQd4RmnEO54xVWlbyB4%3D&se=1700000000&skn=root");
}

TEST_CASE("a valid token verifies, with :443 and scheme normalised", "[sas]") {
  auto tok = make_sas_token("http://NS.example.net:443/clusters/a/b", "connect", "k1", Clock::now() + 1h);
  auto v = verify_sas_token(tok, "https://ns.example.net/clusters/a/b", keys("connect", "k1"));
  CHECK(v.ok());
  CHECK(v.key_name == "connect");
  CHECK(verify_sas_token(tok, "wss://ns.example.net:443/$hc/clusters/a/b", keys("connect", "k1")).ok());
  // Path prefix on whole segments, case-insensitive.
  CHECK(verify_sas_token(tok, "https://ns.example.net/clusters/A/b/sub", keys("connect", "k1")).ok());
  auto v2 = verify_sas_token(tok, "https://ns.example.net/clusters/a/bc", keys("connect", "k1"));
  CHECK(v2.error == SasError::wrong_resource);
  CHECK(v2.http_status == 403);
}

TEST_CASE("verification failures are told apart", "[sas]") {
  const auto now = Clock::now();
  auto tok = make_sas_token("https://ns.example.net/hc", "connect", "k1", now + 1h);
  SECTION("missing") {
    auto v = verify_sas_token("", "https://ns.example.net/hc", keys("connect", "k1"));
    CHECK(v.error == SasError::missing);
    CHECK(v.http_status == 401);
  }
  SECTION("malformed") {
    for (std::string bad : {"Bearer x", "SharedAccessSignature sr=a&sig=b", "SharedAccessSignature sr=%zz&sig=b&se=1&skn=k",
                            "SharedAccessSignature sr=a&sig=b&se=99999999999999&skn=k",
                            "SharedAccessSignature sr=a&sig=b&se=notanumber&skn=k"}) {
      auto v = verify_sas_token(bad, "https://ns.example.net/hc", keys("connect", "k1"));
      CHECK(v.error == SasError::malformed);
      CHECK(v.http_status == 401);
    }
  }
  SECTION("wrong key secret") {
    auto v = verify_sas_token(tok, "https://ns.example.net/hc", keys("connect", "k2"));
    CHECK(v.error == SasError::bad_signature);
    CHECK(v.http_status == 401);
  }
  SECTION("unknown key name") {
    auto v = verify_sas_token(tok, "https://ns.example.net/hc", keys("listen", "k1"));
    CHECK(v.error == SasError::unknown_key);
    CHECK(v.http_status == 401);
  }
  SECTION("tampered expiry") {
    std::string t = tok;
    auto p = t.find("&se=") + 4;
    t[p] = t[p] == '2' ? '3' : '2';
    CHECK(verify_sas_token(t, "https://ns.example.net/hc", keys("connect", "k1")).error == SasError::bad_signature);
  }
  SECTION("expired") {
    auto old = make_sas_token("https://ns.example.net/hc", "connect", "k1", now - 1s);
    auto v = verify_sas_token(old, "https://ns.example.net/hc", keys("connect", "k1"), now);
    CHECK(v.error == SasError::expired);
    CHECK(v.http_status == 401);
    CHECK(v.reason == "token expired");
  }
  SECTION("wrong host or path") {
    CHECK(verify_sas_token(tok, "https://other.example.net/hc", keys("connect", "k1")).http_status == 403);
    CHECK(verify_sas_token(tok, "https://ns.example.net/hc2", keys("connect", "k1")).http_status == 403);
    CHECK(verify_sas_token(tok, "https://ns.example.net:8443/hc", keys("connect", "k1")).http_status == 403);
  }
}

TEST_CASE("token fields may come in any order", "[sas]") {
  auto tok = make_sas_token("https://ns.example.net/hc", "connect", "k1", Clock::now() + 1h);
  auto parsed = parse_sas_token(tok);
  REQUIRE(parsed);
  std::string body = tok.substr(std::string("SharedAccessSignature ").size());
  std::vector<std::string> fields;
  for (std::size_t s = 0; s <= body.size();) {
    auto e = body.find('&', s);
    if (e == std::string::npos) e = body.size();
    fields.push_back(body.substr(s, e - s));
    s = e + 1;
  }
  REQUIRE(fields.size() == 4);
  std::string reordered = "SharedAccessSignature " + fields[3] + "&" + fields[2] + "&" + fields[0] + "&" + fields[1];
  CHECK(verify_sas_token(reordered, "https://ns.example.net/hc", keys("connect", "k1")).ok());
}

TEST_CASE("a token whose resource is not a plain path grants nothing", "[sas][security]") {
  const auto later = Clock::now() + 1h;
  // Each of these, if accepted, would normalise to a prefix of every path.
  for (std::string resource : {"https://relay.example.com/?/clusters/a/b", "https://relay.example.com/#x",
                               "https://relay.example.com/", "https://relay.example.com", "https://relay.example.com/clusters/../",
                               "https://relay.example.com/clusters/%2e%2e/x", "https://relay.example.com/./clusters/a/b",
                               "https://relay.example.com//clusters/a/b", "https://user@relay.example.com/clusters/a/b"}) {
    auto tok = make_sas_token(resource, "connect", "k1", later);
    auto v = verify_sas_token(tok, "https://relay.example.com/clusters/a/b", keys("connect", "k1"));
    INFO(resource);
    CHECK(v.error == SasError::wrong_resource);
    CHECK(v.http_status == 403);
  }
  // The plain form, with or without a trailing slash, still verifies.
  for (std::string resource : {"https://relay.example.com/clusters/a", "https://relay.example.com/clusters/a/"}) {
    auto tok = make_sas_token(resource, "connect", "k1", later);
    INFO(resource);
    CHECK(verify_sas_token(tok, "https://relay.example.com/clusters/a/b", keys("connect", "k1")).ok());
  }
}
