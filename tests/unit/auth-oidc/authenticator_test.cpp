// kube-apiserver's OIDC semantics and the JWT attack matrix against the
// OIDC authenticator, with keys made here and served through its fetch seam.

#include <catch2/catch.hpp>

#include <atomic>
#include <mutex>

#include "../../support/authenticate.hpp"
#include "../../support/jwt_test_keys.hpp"
#include "encoding.hpp"
#include "oidc_authenticator.hpp"

using namespace clusterconnect;
using namespace clusterconnect::oidc;
using namespace clusterconnect::auth::test;

namespace {

const std::string issuer = "https://idp.example/realms/dev";
const std::string client_id = "kubernetes";

long long now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

nlohmann::json claims() {
  const long long now = now_s();
  return {{"iss", issuer},          {"aud", client_id},        {"sub", "user-1234"},
          {"iat", now - 10},        {"exp", now + 600},        {"email", "jane@example.org"},
          {"email_verified", true}, {"groups", {"dev", "ops"}}};
}

// Serves the issuer's discovery document and its keys; counts fetches.
struct Fixture {
  TestKey rsa{"rsa-1"};
  TestEcKey ec{"ec-1"};
  nlohmann::json jwks = {{"keys", {rsa.jwk(), ec.jwk()}}};
  std::string published_issuer = issuer;
  std::mutex mutex;  // guards jwks and published_issuer, read by the fetch thread
  std::atomic<int> fetches{0};
  std::atomic<long long> advanced_s{0};  // the key cache's clock: real time plus this
  asio::io_context io;
  std::shared_ptr<OidcAuthenticator> auth;

  explicit Fixture(nlohmann::json options = nlohmann::json::object()) {
    if (!options.contains("issuer")) options["issuer"] = issuer;
    if (!options.contains("client_id")) options["client_id"] = client_id;
    auto config = parse_authenticator_options(options);
    REQUIRE(config);
    config->key_clock = [this] { return std::chrono::steady_clock::now() + std::chrono::seconds(advanced_s.load()); };
    auth = std::make_shared<OidcAuthenticator>(
        io, std::move(*config), [this](const std::string& url) -> Result<std::string> {
          std::lock_guard lock(mutex);
          ++fetches;
          if (url == issuer + "/.well-known/openid-configuration")
            return nlohmann::json{{"issuer", published_issuer}, {"jwks_uri", issuer + "/protocol/openid-connect/certs"}}
                .dump();
          if (url == issuer + "/protocol/openid-connect/certs") return jwks.dump();
          return fail("HTTP 404 for " + url);
        });
  }

  void set_jwks(nlohmann::json set) {
    std::lock_guard lock(mutex);
    jwks = std::move(set);
  }

  AuthOutcome authenticate(const std::string& token) {
    return clusterconnect::test::authenticate_now(io, *auth, token);
  }
};

}  // namespace

TEST_CASE("auth-oidc: options follow kube-apiserver's flags", "[auth-oidc][options]") {
  auto base = [] { return nlohmann::json{{"issuer", issuer}, {"client_id", client_id}}; };
  auto c = parse_authenticator_options(base());
  REQUIRE(c);
  CHECK(c->rules.username_claim == "sub");
  CHECK(c->rules.username_prefix == issuer + "#");  // the default for claims other than email
  CHECK(c->rules.signing_algs == std::vector<std::string>{"RS256", "ES256"});

  auto o = base();
  o["username_claim"] = "email";
  REQUIRE(parse_authenticator_options(o));
  CHECK(parse_authenticator_options(o)->rules.username_prefix.empty());
  o["username_prefix"] = "oidc:";
  CHECK(parse_authenticator_options(o)->rules.username_prefix == "oidc:");
  o = base();
  o["username_prefix"] = "-";
  CHECK(parse_authenticator_options(o)->rules.username_prefix.empty());

  o = base();
  o["required_claims"] = {"hd=example.org", "tier=gold"};
  REQUIRE(parse_authenticator_options(o));
  CHECK(parse_authenticator_options(o)->rules.required_claims ==
        std::map<std::string, std::string>{{"hd", "example.org"}, {"tier", "gold"}});
  o["signing_algs"] = "ES256";
  CHECK(parse_authenticator_options(o)->rules.signing_algs == std::vector<std::string>{"ES256"});

  auto refused = [&](nlohmann::json bad, const std::string& why) {
    auto r = parse_authenticator_options(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().find(why) != std::string::npos);
  };
  refused({{"client_id", client_id}}, "issuer");
  refused({{"issuer", issuer}}, "client_id");
  refused({{"issuer", "http://idp.example"}, {"client_id", client_id}}, "https");
  refused({{"issuer", "http://127.0.0.1:5556"}, {"client_id", client_id}}, "allow_http_loopback");
  CHECK(parse_authenticator_options(
      {{"issuer", "http://127.0.0.1:5556"}, {"client_id", client_id}, {"allow_http_loopback", true}}));
  for (const char* alg : {"none", "HS256", "RS512", "PS256"}) {
    auto bad = base();
    bad["signing_algs"] = {alg};
    refused(bad, "not supported");
  }
  auto bad = base();
  bad["username_prefix"] = "system:";
  refused(bad, "reserved");
  bad = base();
  bad["required_claims"] = {"novalue"};
  refused(bad, "claim=value");
  bad = base();
  bad["clock_skew_seconds"] = 3600;
  refused(bad, "clock_skew_seconds");
}

TEST_CASE("auth-oidc: RS256 and ES256 tokens map to user and groups as kube-apiserver does",
          "[auth-oidc][authenticator]") {
  Fixture f(nlohmann::json{{"groups_claim", "groups"}, {"groups_prefix", "oidc:"}});
  auto out = f.authenticate(rs256_token(f.rsa, claims()));
  REQUIRE(out.ok());
  CHECK(out.identity.user == issuer + "#user-1234");
  CHECK(out.identity.groups == std::vector<std::string>{"oidc:dev", "oidc:ops"});
  CHECK(f.fetches == 2);  // discovery, keys

  // Keys are cached: the next token completes inline, without a fetch.
  std::optional<AuthOutcome> inline_out;
  f.auth->async_authenticate(es256_token(f.ec, claims()), [&](AuthOutcome o) { inline_out = std::move(o); });
  REQUIRE(inline_out);
  CHECK(inline_out->ok());
  CHECK(inline_out->identity.user == issuer + "#user-1234");
  CHECK(f.fetches == 2);

  // A single group may come as a string; without groups_claim no groups are taken.
  auto one = claims();
  one["groups"] = "dev";
  CHECK(f.authenticate(rs256_token(f.rsa, one)).identity.groups == std::vector<std::string>{"oidc:dev"});
  Fixture plain;
  CHECK(plain.authenticate(rs256_token(plain.rsa, claims())).identity.groups.empty());
}

TEST_CASE("auth-oidc: the email claim needs no prefix and a verified address", "[auth-oidc][authenticator]") {
  Fixture f(nlohmann::json{{"username_claim", "email"}});
  auto out = f.authenticate(rs256_token(f.rsa, claims()));
  REQUIRE(out.ok());
  CHECK(out.identity.user == "jane@example.org");

  auto unverified = claims();
  unverified["email_verified"] = false;
  out = f.authenticate(rs256_token(f.rsa, unverified));
  CHECK(out.failure == AuthFailure::malformed);
  CHECK(out.message.find("not verified") != std::string::npos);
  unverified["email_verified"] = "true";  // a string is not a boolean
  CHECK_FALSE(f.authenticate(rs256_token(f.rsa, unverified)).ok());
  // kube-apiserver accepts a token without the claim at all.
  auto absent = claims();
  absent.erase("email_verified");
  CHECK(f.authenticate(rs256_token(f.rsa, absent)).ok());
  auto no_email = claims();
  no_email.erase("email");
  out = f.authenticate(rs256_token(f.rsa, no_email));
  CHECK(out.failure == AuthFailure::malformed);
  CHECK(out.message.find("'email'") != std::string::npos);
}

TEST_CASE("auth-oidc: required claims must be present with their value", "[auth-oidc][authenticator]") {
  Fixture f(nlohmann::json{{"required_claims", {{"hd", "example.org"}}}});
  auto c = claims();
  auto out = f.authenticate(rs256_token(f.rsa, c));
  CHECK(out.failure == AuthFailure::malformed);
  CHECK(out.message.find("lacks the required claim 'hd'") != std::string::npos);
  c["hd"] = "evil.example";
  CHECK(f.authenticate(rs256_token(f.rsa, c)).message.find("required value") != std::string::npos);
  c["hd"] = "example.org";
  CHECK(f.authenticate(rs256_token(f.rsa, c)).ok());
}

TEST_CASE("auth-oidc: attacks on the token are refused precisely", "[auth-oidc][authenticator]") {
  Fixture f(nlohmann::json{{"groups_claim", "groups"}});
  REQUIRE(f.authenticate(rs256_token(f.rsa, claims())).ok());  // keys loaded
  const long long now = now_s();

  auto with = [](const char* name, nlohmann::json value) {
    auto c = claims();
    c[name] = std::move(value);
    return c;
  };
  CHECK(f.authenticate(rs256_token(f.rsa, with("exp", now - 3600))).failure == AuthFailure::expired);
  CHECK(f.authenticate(es256_token(f.ec, with("exp", now - 3600))).failure == AuthFailure::expired);
  CHECK(f.authenticate(rs256_token(f.rsa, with("nbf", now + 3600))).failure == AuthFailure::not_yet_valid);
  CHECK(f.authenticate(rs256_token(f.rsa, with("iat", now + 3600))).failure == AuthFailure::not_yet_valid);
  auto no_exp = claims();
  no_exp.erase("exp");
  CHECK(f.authenticate(rs256_token(f.rsa, no_exp)).failure == AuthFailure::malformed);
  CHECK(f.authenticate(rs256_token(f.rsa, with("aud", "another-app"))).failure == AuthFailure::wrong_audience);
  CHECK(f.authenticate(rs256_token(f.rsa, with("aud", {"a", "b"}))).failure == AuthFailure::wrong_audience);
  CHECK(f.authenticate(rs256_token(f.rsa, with("aud", {"a", client_id}))).ok());
  CHECK(f.authenticate(rs256_token(f.rsa, with("iss", "https://evil.example/realms/dev"))).failure ==
        AuthFailure::wrong_issuer);
  CHECK(f.authenticate(rs256_token(f.rsa, with("iss", issuer + "/"))).failure == AuthFailure::wrong_issuer);

  // alg none: no signature at all.
  const std::string unsigned_input = encode_part({{"alg", "none"}, {"typ", "JWT"}}) + "." + encode_part(claims());
  auto out = f.authenticate(unsigned_input + ".");
  CHECK(out.failure == AuthFailure::disallowed_algorithm);
  CHECK(out.message.find("'none'") != std::string::npos);
  // HS256 "signed" with the provider's public key as the HMAC secret.
  CHECK(f.authenticate(hs256_token(f.rsa.public_pem(), {{"alg", "HS256"}, {"typ", "JWT"}, {"kid", "rsa-1"}}, claims()))
            .failure == AuthFailure::disallowed_algorithm);
  // An ES256 header naming the RSA key, and the other way round.
  CHECK(f.authenticate(es256_token(f.ec, claims(), {{"alg", "ES256"}, {"kid", "rsa-1"}})).failure ==
        AuthFailure::bad_signature);
  CHECK(f.authenticate(rs256_token(f.rsa, claims(), {{"alg", "RS256"}, {"kid", "ec-1"}})).failure ==
        AuthFailure::bad_signature);
  // Signed by a key the provider never published.
  TestKey stranger("rsa-1");
  CHECK(f.authenticate(rs256_token(stranger, claims())).failure == AuthFailure::bad_signature);
  // Tampered payload: the signature of the original over another payload.
  const std::string good = rs256_token(f.rsa, claims());
  const auto d1 = good.find('.'), d2 = good.rfind('.');
  const std::string forged = good.substr(0, d1 + 1) + encode_part(with("sub", "admin")) + good.substr(d2);
  CHECK(f.authenticate(forged).failure == AuthFailure::bad_signature);
  // Names Kubernetes reserves are never impersonated.
  Fixture unprefixed(nlohmann::json{{"username_prefix", "-"}, {"groups_claim", "groups"}});
  CHECK(unprefixed.authenticate(rs256_token(unprefixed.rsa, with("sub", "system:admin"))).failure ==
        AuthFailure::malformed);
  CHECK(unprefixed.authenticate(rs256_token(unprefixed.rsa, with("groups", {"system:masters"}))).failure ==
        AuthFailure::malformed);
  CHECK(unprefixed.authenticate(rs256_token(unprefixed.rsa, with("groups", {"dev", 7}))).failure ==
        AuthFailure::malformed);
  // No kid, and not a JWT at all.
  CHECK(f.authenticate(rs256_token(f.rsa, claims(), {{"alg", "RS256"}})).failure == AuthFailure::unknown_key);
  CHECK(f.authenticate("opaque-service-account-token").failure == AuthFailure::not_applicable);
}

TEST_CASE("auth-oidc: only the configured algorithms are accepted", "[auth-oidc][authenticator]") {
  Fixture f(nlohmann::json{{"signing_algs", {"RS256"}}});
  CHECK(f.authenticate(rs256_token(f.rsa, claims())).ok());
  auto out = f.authenticate(es256_token(f.ec, claims()));
  CHECK(out.failure == AuthFailure::disallowed_algorithm);
  CHECK(out.message.find("ES256") != std::string::npos);
}

TEST_CASE("auth-oidc: an unknown kid refetches the keys at a bounded rate", "[auth-oidc][authenticator]") {
  Fixture f;
  REQUIRE(f.authenticate(rs256_token(f.rsa, claims())).ok());
  CHECK(f.fetches == 2);

  // Rotation at the provider: a token with the new kid arrives.
  TestKey next("rsa-2");
  f.set_jwks({{"keys", {next.jwk()}}});
  f.advanced_s += 11;  // past the minimum interval between fetches
  CHECK(f.authenticate(rs256_token(next, claims())).ok());
  CHECK(f.fetches == 4);
  // The rotated-out key no longer validates, and invented kids cause no fetch
  // until the interval has passed again.
  CHECK(f.authenticate(rs256_token(f.rsa, claims())).failure == AuthFailure::unknown_key);
  TestKey invented("invented");
  for (int i = 0; i < 5; ++i)
    CHECK(f.authenticate(rs256_token(invented, claims())).failure == AuthFailure::unknown_key);
  CHECK(f.fetches == 4);
}

TEST_CASE("auth-oidc: a discovery document naming another issuer yields no keys", "[auth-oidc][authenticator]") {
  Fixture f;
  {
    std::lock_guard lock(f.mutex);
    f.published_issuer = "https://evil.example/realms/dev";
  }
  auto out = f.authenticate(rs256_token(f.rsa, claims()));
  CHECK(out.failure == AuthFailure::keys_unavailable);
  CHECK(out.message.find("names issuer") != std::string::npos);
  // A token of another issuer never causes a fetch.
  const int before = f.fetches;
  auto c = claims();
  c["iss"] = "https://kubernetes.default.svc.cluster.local";
  CHECK(f.authenticate(rs256_token(f.rsa, c)).failure == AuthFailure::wrong_issuer);
  CHECK(f.fetches == before);
}
