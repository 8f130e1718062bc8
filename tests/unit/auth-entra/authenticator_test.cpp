// The JWT attack matrix against the authenticator, with keys made here and
// served through the authenticator's fetch seam.

#include <catch2/catch.hpp>

#include <atomic>
#include <mutex>
#include <thread>

#include "entra_authenticator.hpp"
#include "../../support/authenticate.hpp"
#include "../../support/jwt_test_keys.hpp"

using namespace clusterconnect;
using namespace clusterconnect::entra;
using clusterconnect::auth::test::rs256_token;
using clusterconnect::auth::test::TestKey;

namespace {

const std::string tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const std::string other_tenant = "f8cdef31-a31e-4b4a-93e4-5f571e91255a";
const std::string authority = "https://login.microsoftonline.com";
const std::string audience = arc_server_app_id;

long long now_s() { return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count(); }

nlohmann::json user_claims() {
  const long long now = now_s();
  return {{"aud", audience},
          {"iss", authority + "/" + tenant + "/v2.0"},
          {"iat", now - 10},
          {"nbf", now - 10},
          {"exp", now + 3600},
          {"tid", tenant},
          {"oid", "0b9c2a43-1c4b-4ad4-9f0e-1b0a1d2c3e4f"},
          {"sub", "p4hFZn8YQ2xW1tq8Y9Qf7u5d3b1a0c2e4g6i8k0m2o4"},
          {"upn", "alice@contoso.example"},
          {"preferred_username", "alice.pref@contoso.example"},
          {"groups", {"g-1", "g-2"}},
          {"ver", "2.0"}};
}

// Serves the tenant's v2 and v1 discovery documents (as Entra's
// multi-tenant documents do, with the {tenantid} placeholder) and its keys
// under `base`; every URL asked for is recorded.
struct Fixture {
  TestKey key{"key-1"};
  nlohmann::json jwks = {{"keys", {key.jwk()}}};
  std::string base = authority;
  std::string v1_issuer = "https://sts.windows.net/{tenantid}/";
  bool serve_v1 = true;
  std::atomic<int> fetches{0};
  std::mutex urls_mutex;  // also guards jwks, read by the fetch thread
  std::vector<std::string> urls;
  // The key cache's clock: real time plus what a test adds.
  std::atomic<long long> advanced_s{0};
  asio::io_context io;
  std::shared_ptr<EntraAuthenticator> auth;

  void set_jwks(nlohmann::json set) {
    std::lock_guard lock(urls_mutex);
    jwks = std::move(set);
  }
  void advance(std::chrono::seconds by) { advanced_s += by.count(); }

  explicit Fixture(nlohmann::json options = nullptr) : Fixture(std::move(options), std::chrono::milliseconds(10)) {}

  Fixture(nlohmann::json options, std::chrono::milliseconds key_check_period) {
    if (options.is_null()) options = {{"tenants", {tenant}}};
    if (options.contains("authority")) base = options["authority"].get<std::string>();
    auto config = parse_authenticator_options(options);
    REQUIRE(config);
    config->key_clock = [this] { return std::chrono::steady_clock::now() + std::chrono::seconds(advanced_s.load()); };
    config->key_check_period = key_check_period;
    auth = std::make_shared<EntraAuthenticator>(io, std::move(*config), [this](const std::string& url) -> Result<std::string> {
      std::lock_guard lock(urls_mutex);
      ++fetches;
      urls.push_back(url);
      if (url == base + "/" + tenant + "/v2.0/.well-known/openid-configuration") {
        return nlohmann::json{{"issuer", base + "/{tenantid}/v2.0"}, {"jwks_uri", base + "/" + tenant + "/discovery/v2.0/keys"}}.dump();
      }
      if (serve_v1 && url == base + "/" + tenant + "/.well-known/openid-configuration") {
        return nlohmann::json{{"issuer", v1_issuer}, {"jwks_uri", base + "/common/discovery/keys"}}.dump();
      }
      if (url == base + "/" + tenant + "/discovery/v2.0/keys") return jwks.dump();
      return fail("HTTP 404 for " + url);
    });
  }

  std::vector<std::string> fetched() {
    std::lock_guard lock(urls_mutex);
    return urls;
  }

  AuthOutcome authenticate(const std::string& token) { return clusterconnect::test::authenticate_now(io, *auth, token); }

  std::string token(const nlohmann::json& claims) { return rs256_token(key, claims); }
};

}  // namespace

TEST_CASE("auth-entra: a valid Entra v2 user token yields the user's identity", "[auth-entra][authenticator]") {
  Fixture f;
  auto out = f.authenticate(f.token(user_claims()));
  REQUIRE(out.ok());
  CHECK(out.identity.user == "alice@contoso.example");
  CHECK(out.identity.uid == "0b9c2a43-1c4b-4ad4-9f0e-1b0a1d2c3e4f");
  CHECK(out.identity.groups == std::vector<std::string>{"g-1", "g-2"});
  CHECK(out.identity.extra.at("oid") == std::vector<std::string>{"0b9c2a43-1c4b-4ad4-9f0e-1b0a1d2c3e4f"});
  CHECK(out.identity.extra.at("tid") == std::vector<std::string>{tenant});
  CHECK(f.fetches == 3);  // v2 discovery, v1 discovery, keys

  // Keys are cached: the second token needs no fetch and completes inline.
  std::optional<AuthOutcome> inline_out;
  f.auth->async_authenticate(f.token(user_claims()), [&](AuthOutcome o) { inline_out = std::move(o); });
  REQUIRE(inline_out);
  CHECK(inline_out->ok());
  CHECK(f.fetches == 3);
}

TEST_CASE("auth-entra: v1 issuer and the user name fallbacks", "[auth-entra][authenticator]") {
  Fixture f;
  auto claims = user_claims();
  claims["iss"] = "https://sts.windows.net/" + tenant + "/";
  claims.erase("upn");
  auto out = f.authenticate(f.token(claims));
  REQUIRE(out.ok());
  // Never preferred_username unless configured: without upn, the oid (Arc's mapping).
  CHECK(out.identity.user == claims["oid"]);

  claims.erase("preferred_username");
  claims["idtyp"] = "app";
  out = f.authenticate(f.token(claims));
  REQUIRE(out.ok());
  CHECK(out.identity.user == claims["oid"]);

  Fixture by_oid({{"tenants", {tenant}}, {"username_claim", "oid"}});
  out = by_oid.authenticate(by_oid.token(user_claims()));
  REQUIRE(out.ok());
  CHECK(out.identity.user == "0b9c2a43-1c4b-4ad4-9f0e-1b0a1d2c3e4f");
}

TEST_CASE("auth-entra: user claim and prefixes are configurable as kube-apiserver's", "[auth-entra][authenticator]") {
  Fixture f({{"tenants", {tenant}}, {"username_claim", "preferred_username"}, {"username_prefix", "entra:"}, {"groups_prefix", "entra:"}});
  auto out = f.authenticate(f.token(user_claims()));
  REQUIRE(out.ok());
  CHECK(out.identity.user == "entra:alice.pref@contoso.example");
  CHECK(out.identity.groups == std::vector<std::string>{"entra:g-1", "entra:g-2"});
  // A configured claim must be present.
  auto c = user_claims();
  c.erase("preferred_username");
  out = f.authenticate(f.token(c));
  CHECK(out.failure == AuthFailure::malformed);
  CHECK_THAT(out.message, Catch::Contains("preferred_username"));
  // With a prefix, a name that looks reserved is not reserved any more.
  c = user_claims();
  c["groups"] = {"system:masters"};
  out = f.authenticate(f.token(c));
  REQUIRE(out.ok());
  CHECK(out.identity.groups == std::vector<std::string>{"entra:system:masters"});

  CHECK_FALSE(parse_authenticator_options({{"tenants", {tenant}}, {"username_prefix", "system:"}}));
  CHECK_FALSE(parse_authenticator_options({{"tenants", {tenant}}, {"groups_prefix", "a b"}}));
  CHECK_FALSE(parse_authenticator_options({{"tenants", {tenant}}, {"username_claim", "a b"}}));
}

TEST_CASE("auth-entra: reserved and look-alike user and group names are refused", "[auth-entra][authenticator]") {
  Fixture f;
  auto refused = [&](const char* claim, nlohmann::json value) {
    auto c = user_claims();
    c[claim] = value;
    auto out = f.authenticate(f.token(c));
    INFO(claim << " = " << value.dump());
    CHECK(out.failure == AuthFailure::malformed);
    CHECK_THAT(out.message, Catch::Contains("not accepted"));
  };
  refused("upn", "system:admin");
  refused("upn", "System:Admin");
  refused("upn", "alice@contoso.example\t");
  refused("upn", "alice @contoso.example");
  refused("upn", "alice\u00a0@contoso.example");
  refused("upn", "alice\u200b@contoso.example");
  refused("groups", {"g-1", "system:masters"});
  refused("groups", {"system:authenticated"});
  refused("groups", {"g-1\t"});
  refused("groups", {"g\n1"});
  // An ordinary name with a colon is fine.
  auto c = user_claims();
  c["groups"] = {"team:system"};
  CHECK(f.authenticate(f.token(c)).ok());
}

TEST_CASE("auth-entra: issuers come from the authority's v1 and v2 discovery documents", "[auth-entra][authenticator]") {
  // A sovereign cloud: its v1 issuer is not sts.windows.net.
  const std::string china = "https://login.chinacloudapi.cn";
  Fixture f({{"tenants", {tenant}}, {"authority", china}});
  f.v1_issuer = "https://sts.chinacloudapi.cn/{tenantid}/";
  auto claims = user_claims();
  claims["iss"] = "https://sts.chinacloudapi.cn/" + tenant + "/";
  claims["ver"] = "1.0";
  auto out = f.authenticate(f.token(claims));
  INFO(out.message);
  CHECK(out.ok());
  claims["iss"] = china + "/" + tenant + "/v2.0";
  CHECK(f.authenticate(f.token(claims)).ok());
  // The public cloud's v1 issuer is not this authority's.
  claims["iss"] = "https://sts.windows.net/" + tenant + "/";
  out = f.authenticate(f.token(claims));
  CHECK(out.failure == AuthFailure::wrong_issuer);
  CHECK(out.message.find("https://sts.chinacloudapi.cn/" + tenant + "/") != std::string::npos);
  // Another tenant's token is refused before anything is fetched for it.
  claims["iss"] = "https://sts.chinacloudapi.cn/" + other_tenant + "/";
  claims["tid"] = other_tenant;
  CHECK(f.authenticate(f.token(claims)).failure == AuthFailure::wrong_issuer);
  for (const auto& url : f.fetched()) CHECK(url.find(other_tenant) == std::string::npos);
  // The tenant check holds for an issuer the documents publish, too.
  claims["iss"] = "https://sts.chinacloudapi.cn/" + tenant + "/";
  claims["tid"] = other_tenant;
  CHECK(f.authenticate(f.token(claims)).failure == AuthFailure::wrong_issuer);
}

TEST_CASE("auth-entra: without a v1 discovery document only v2 tokens are accepted", "[auth-entra][authenticator]") {
  Fixture f;
  f.serve_v1 = false;
  CHECK(f.authenticate(f.token(user_claims())).ok());
  auto claims = user_claims();
  claims["iss"] = "https://sts.windows.net/" + tenant + "/";
  CHECK(f.authenticate(f.token(claims)).failure == AuthFailure::wrong_issuer);
}

TEST_CASE("auth-entra: the JWT attack matrix", "[auth-entra][authenticator]") {
  // A long refresh interval: the unknown-kid burst below must not outlast
  // it, however slow key generation is on a busy runner.
  Fixture f({{"tenants", {tenant}}, {"key_refresh_min_interval_seconds", 3600}});
  const long long now = now_s();

  SECTION("expired beyond the skew") {
    auto c = user_claims();
    c["exp"] = now - 301;
    auto out = f.authenticate(f.token(c));
    CHECK(out.failure == AuthFailure::expired);
    c["exp"] = now - 200;  // within the 300 s default skew
    CHECK(f.authenticate(f.token(c)).ok());
  }
  SECTION("not yet valid") {
    auto c = user_claims();
    c["nbf"] = now + 400;
    CHECK(f.authenticate(f.token(c)).failure == AuthFailure::not_yet_valid);
  }
  SECTION("wrong audience") {
    auto c = user_claims();
    c["aud"] = "api://" + audience;  // not configured, so not accepted
    auto out = f.authenticate(f.token(c));
    CHECK(out.failure == AuthFailure::wrong_audience);
    CHECK(out.message.find(audience) != std::string::npos);
  }
  SECTION("wrong issuer") {
    auto c = user_claims();
    c["iss"] = "https://evil.example/" + tenant + "/v2.0";
    CHECK(f.authenticate(f.token(c)).failure == AuthFailure::wrong_issuer);
    // Only the configured tenant's own documents were read, never a URL
    // taken from the token.
    for (const auto& url : f.fetched()) CHECK(url.rfind(authority + "/", 0) == 0);
    c["iss"] = "https://sts.windows.net/" + other_tenant + "/";  // v1 form, another tenant's issuer
    CHECK(f.authenticate(f.token(c)).failure == AuthFailure::wrong_issuer);
  }
  SECTION("wrong tenant") {
    auto c = user_claims();
    c["iss"] = authority + "/" + other_tenant + "/v2.0";
    c["tid"] = other_tenant;
    CHECK(f.authenticate(f.token(c)).failure == AuthFailure::wrong_issuer);
    c["iss"] = authority + "/" + tenant + "/v2.0";  // tid disagrees with iss
    CHECK(f.authenticate(f.token(c)).failure == AuthFailure::wrong_issuer);
    CHECK(f.fetches == 0);
  }
  SECTION("alg none") {
    nlohmann::json h = {{"alg", "none"}, {"typ", "JWT"}};
    auto t = auth::test::encode_part(h) + "." + auth::test::encode_part(user_claims()) + ".";
    CHECK(f.authenticate(t).failure == AuthFailure::disallowed_algorithm);
  }
  SECTION("HS256 signed with the public key") {
    nlohmann::json h = {{"alg", "HS256"}, {"typ", "JWT"}, {"kid", f.key.kid()}};
    CHECK(f.authenticate(auth::test::hs256_token(f.key.public_pem(), h, user_claims())).failure == AuthFailure::disallowed_algorithm);
    nlohmann::json jwk = f.key.jwk();
    CHECK(f.authenticate(auth::test::hs256_token(jwk["n"].get<std::string>(), h, user_claims())).failure == AuthFailure::disallowed_algorithm);
  }
  SECTION("other asymmetric algorithms") {
    for (const char* alg : {"ES256", "PS256", "RS512", "rs256"}) {
      nlohmann::json h = {{"alg", alg}, {"kid", f.key.kid()}};
      CHECK(f.authenticate(rs256_token(f.key, user_claims(), h)).failure == AuthFailure::disallowed_algorithm);
    }
  }
  SECTION("unknown kid") {
    TestKey stranger("key-2");
    std::vector<std::string> forged;
    for (int i = 0; i < 5; ++i) forged.push_back(rs256_token(TestKey("forged-" + std::to_string(i)), user_claims()));
    auto out = f.authenticate(rs256_token(stranger, user_claims()));
    CHECK(out.failure == AuthFailure::unknown_key);
    CHECK(f.fetches == 3);
    // A burst of forged kids right after a refresh costs no further fetches.
    for (const auto& t : forged) CHECK(f.authenticate(t).failure == AuthFailure::unknown_key);
    CHECK(f.fetches == 3);
  }
  SECTION("same kid, different key") {
    TestKey impostor("key-1");
    CHECK(f.authenticate(rs256_token(impostor, user_claims())).failure == AuthFailure::bad_signature);
  }
  SECTION("tampered payload") {
    auto t = f.token(user_claims());
    auto c = user_claims();
    c["upn"] = "admin@contoso.example";
    auto first = t.find('.'), second = t.find('.', first + 1);
    auto forged = t.substr(0, first + 1) + auth::test::encode_part(c) + t.substr(second);
    CHECK(f.authenticate(forged).failure == AuthFailure::bad_signature);
  }
  SECTION("truncated") {
    auto t = f.token(user_claims());
    auto second = t.rfind('.');
    CHECK(f.authenticate(t.substr(0, second)).failure == AuthFailure::malformed);       // no signature part
    CHECK(f.authenticate(t.substr(0, second + 1)).failure == AuthFailure::bad_signature);  // empty signature
    for (std::size_t cut : {t.size() - 1, t.size() - 3, second + 10, t.find('.') + 5, t.find('.') + 1}) {
      auto out = f.authenticate(t.substr(0, cut));
      CHECK_FALSE(out.ok());
      CHECK(out.failure != AuthFailure::not_applicable);
    }
  }
  SECTION("oversized") {
    auto c = user_claims();
    c["padding"] = std::string(17 * 1024, 'x');
    auto out = f.authenticate(f.token(c));
    CHECK(out.failure == AuthFailure::malformed);
    CHECK(out.message.find("16384") != std::string::npos);
  }
  SECTION("group overage") {
    auto c = user_claims();
    c.erase("groups");
    c["_claim_names"] = {{"groups", "src1"}};
    c["_claim_sources"] = {{"src1", {{"endpoint", "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}}}};
    auto out = f.authenticate(f.token(c));
    CHECK(out.failure == AuthFailure::group_overage);
    CHECK(out.message.find("overage") != std::string::npos);
  }
  SECTION("duplicate claims") {
    auto header = auth::test::encode_part({{"alg", "RS256"}, {"kid", f.key.kid()}});
    auto c = user_claims();
    c["aud"] = "something-else";
    std::string dup = c.dump();
    dup.insert(1, "\"aud\":\"" + audience + "\",");
    const std::string input = header + "." + base64url_encode(dup);
    auto t = input + "." + base64url_encode(f.key.sign(input));
    CHECK(f.authenticate(t).failure == AuthFailure::malformed);
  }
  SECTION("missing claims") {
    for (const char* claim : {"exp", "aud", "iss", "oid"}) {
      auto c = user_claims();
      c.erase(claim);
      CHECK(f.authenticate(f.token(c)).failure == AuthFailure::malformed);
    }
  }
  SECTION("not a JWT at all") {
    CHECK(f.authenticate("sha256~NotAJwtJustAnOpaqueToken").failure == AuthFailure::not_applicable);
    CHECK(f.authenticate("").failure == AuthFailure::not_applicable);
    CHECK(f.authenticate("a.b.c").failure == AuthFailure::not_applicable);
  }
}

TEST_CASE("auth-entra: a key rotated at the provider is picked up without restart", "[auth-entra][authenticator]") {
  Fixture f({{"tenants", {tenant}}, {"key_refresh_min_interval_seconds", 1}});
  REQUIRE(f.authenticate(f.token(user_claims())).ok());
  TestKey next("key-2");
  f.set_jwks({{"keys", {next.jwk()}}});
  f.advance(std::chrono::seconds(2));  // past the refresh rate limit
  auto out = f.authenticate(rs256_token(next, user_claims()));
  CHECK(out.ok());
  CHECK(f.fetches == 6);
  CHECK(f.authenticate(f.token(user_claims())).failure == AuthFailure::unknown_key);
}

TEST_CASE("auth-entra: keys are refreshed in the background, and a key removed from the set stops its remembered tokens", "[auth-entra][authenticator]") {
  Fixture f;
  const auto token = f.token(user_claims());
  REQUIRE(f.authenticate(token).ok());
  REQUIRE(f.authenticate(token).ok());  // now remembered as verified
  CHECK(f.fetches == 3);

  TestKey next("key-2");
  f.set_jwks({{"keys", {next.jwk()}}});  // key-1 leaves the published set
  CHECK(f.authenticate(token).ok());     // not yet known here
  f.advance(std::chrono::seconds(3601));  // past the hourly refresh
  // The background refresh fetches again without any request asking for it.
  for (int i = 0; i < 6000 && f.fetches < 6; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  REQUIRE(f.fetches == 6);
  auto out = f.authenticate(token);
  CHECK(out.failure == AuthFailure::unknown_key);
  CHECK(f.authenticate(rs256_token(next, user_claims())).ok());
}

TEST_CASE("auth-entra: a remembered token is not trusted past the key age without a refresh", "[auth-entra][authenticator]") {
  // No background refresh here: the request path must refresh by itself.
  Fixture f({{"tenants", {tenant}}}, std::chrono::hours(24));
  const auto token = f.token(user_claims());
  REQUIRE(f.authenticate(token).ok());
  REQUIRE(f.authenticate(token).ok());  // remembered
  CHECK(f.fetches == 3);
  f.set_jwks({{"keys", {TestKey("key-3").jwk()}}});
  CHECK(f.authenticate(token).ok());  // keys still fresh
  f.advance(std::chrono::seconds(3601));
  CHECK(f.authenticate(token).failure == AuthFailure::unknown_key);
  CHECK(f.fetches == 6);
}

TEST_CASE("auth-entra: keys that cannot be fetched give keys_unavailable", "[auth-entra][authenticator]") {
  Fixture f;
  f.set_jwks("not a key set");
  auto out = f.authenticate(f.token(user_claims()));
  CHECK(out.failure == AuthFailure::keys_unavailable);
  CHECK(out.message.find("signing keys") != std::string::npos);
}

TEST_CASE("auth-entra: authenticator options are checked", "[auth-entra][options]") {
  CHECK_FALSE(parse_authenticator_options(nlohmann::json::object()));
  CHECK_FALSE(parse_authenticator_options({{"tenants", {tenant}}, {"clock_skew_seconds", 601}}));
  CHECK(parse_authenticator_options({{"tenants", {tenant}}, {"username_claim", "email"}}));
  CHECK_FALSE(parse_authenticator_options({{"tenants", {tenant}}, {"username_claim", ""}}));
  CHECK_FALSE(parse_authenticator_options({{"tenants", {"../evil"}}}));
  auto domain = parse_authenticator_options({{"tenants", {"contoso.onmicrosoft.com"}}});
  REQUIRE_FALSE(domain);
  CHECK(domain.error().find("GUID") != std::string::npos);
  CHECK_FALSE(parse_authenticator_options({{"tenants", {tenant}}, {"authority", "http://127.0.0.1:1234"}}));
  CHECK_FALSE(parse_authenticator_options({{"tenants", {tenant}}, {"authority", "http://idp.example"}, {"allow_http_loopback", true}}));
  CHECK_FALSE(parse_authenticator_options({{"tenants", {tenant}}, {"group_source", "graph"}}));
  CHECK_FALSE(parse_authenticator_options({{"tenants", {tenant}}, {"key_refresh_interval_seconds", 59}}));
  CHECK(parse_authenticator_options({{"tenants", {tenant}}})->key_refresh_interval == std::chrono::hours(1));
  auto ok = parse_authenticator_options({{"tenants", {tenant}}, {"authority", "http://127.0.0.1:1234/"}, {"allow_http_loopback", true}});
  REQUIRE(ok);
  CHECK(ok->rules.authority == "http://127.0.0.1:1234");
  CHECK(ok->rules.audiences == std::vector<std::string>{audience});
  CHECK(ok->rules.clock_skew == std::chrono::seconds(300));

  ::setenv("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/", 1);
  auto env = parse_authenticator_options({{"tenants", {tenant}}});
  ::unsetenv("AZURE_AUTHORITY_HOST");
  REQUIRE(env);
  CHECK(env->rules.authority == "https://login.microsoftonline.us");
}
