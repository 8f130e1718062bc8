// Proof-of-possession: Signed HTTP Requests made by PopKey, and the
// authenticator's PoP mode against good, stale, replayed, misdirected and
// forged ones, with an injected clock.

#include <catch2/catch.hpp>

#include <atomic>
#include <thread>

#include "encoding.hpp"
#include "entra_authenticator.hpp"
#include "entra_credential.hpp"
#include "jwks.hpp"
#include "pop.hpp"
#include "../../support/authenticate.hpp"
#include "../../support/jwt_test_keys.hpp"

using namespace clusterconnect;
using namespace clusterconnect::entra;
using clusterconnect::auth::test::encode_part;
using clusterconnect::auth::test::hs256_token;
using clusterconnect::auth::test::rs256_token;
using clusterconnect::auth::test::TestKey;

namespace {

const std::string tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const std::string authority = "https://login.microsoftonline.com";
const std::string cluster =
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/Prod/providers/Microsoft.Kubernetes/"
    "connectedClusters/Prod-EU";
const std::string cluster_lower =
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourcegroups/prod/providers/microsoft.kubernetes/"
    "connectedclusters/prod-eu";
const std::string other_cluster =
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/Other/providers/Microsoft.Kubernetes/"
    "connectedClusters/Prod-EU";

using Clock = std::chrono::system_clock;

long long to_s(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

nlohmann::json access_claims(long long now) {
  return {{"aud", arc_server_app_id},
          {"iss", authority + "/" + tenant + "/v2.0"},
          {"iat", now - 10},
          {"nbf", now - 10},
          {"exp", now + 3600},
          {"tid", tenant},
          {"oid", "0b9c2a43-1c4b-4ad4-9f0e-1b0a1d2c3e4f"},
          {"upn", "alice@contoso.example"},
          {"groups", {"g-1"}},
          {"ver", "2.0"}};
}

nlohmann::json decode_part(const std::string& token, int index) {
  std::size_t start = 0;
  for (int i = 0; i < index; ++i) start = token.find('.', start) + 1;
  auto end = token.find('.', start);
  return nlohmann::json::parse(*base64url_decode(token.substr(start, end - start)));
}

// The tenant's signing key served through the fetch seam, a client's PoP key,
// and an authenticator in PoP mode for `cluster` whose clock the test sets.
struct Fixture {
  TestKey tenant_key{"tenant-key"};
  std::shared_ptr<PopKey> client = *PopKey::generate();
  asio::io_context io;
  std::shared_ptr<EntraAuthenticator> auth;
  std::shared_ptr<std::atomic<long long>> now_s = std::make_shared<std::atomic<long long>>(to_s(Clock::now()));

  explicit Fixture(nlohmann::json extra = nlohmann::json::object()) {
    nlohmann::json options = {{"tenants", {tenant}}, {"pop", true}, {"cluster_resource_id", cluster}};
    options.update(extra);
    auto config = parse_authenticator_options(options);
    REQUIRE(config);
    const nlohmann::json jwks = {{"keys", {tenant_key.jwk()}}};
    auth = std::make_shared<EntraAuthenticator>(
        io, std::move(*config), [jwks](const std::string& url) -> Result<std::string> {
          if (url == authority + "/" + tenant + "/v2.0/.well-known/openid-configuration")
            return nlohmann::json{{"issuer", authority + "/{tenantid}/v2.0"},
                                  {"jwks_uri", authority + "/" + tenant + "/discovery/v2.0/keys"}}
                .dump();
          if (url == authority + "/" + tenant + "/discovery/v2.0/keys") return jwks.dump();
          return fail("HTTP 404 for " + url);
        });
    auth->set_clock([now = now_s] { return Clock::time_point(std::chrono::seconds(now->load())); });
  }

  long long now() const { return now_s->load(); }

  // An access token the tenant issued, bound to `thumbprint` (none: bearer).
  std::string access_token(const std::string& thumbprint) {
    auto claims = access_claims(now());
    if (!thumbprint.empty()) claims["cnf"] = {{"kid", thumbprint}};
    return rs256_token(tenant_key, claims);
  }

  std::string shr(const std::string& at, const std::string& u, long long ts,
                  const std::string& nonce = random_nonce()) {
    auto t = client->sign_request_at(at, u, ts, nonce);
    REQUIRE(t);
    return *t;
  }

  AuthOutcome authenticate(const std::string& token) { return clusterconnect::test::authenticate_now(io, *auth, token); }
};

// A Signed HTTP Request put together by hand: any header, payload and key.
std::string hand_made(const TestKey& signer, const nlohmann::json& header, const nlohmann::json& payload) {
  const std::string input = encode_part(header) + "." + encode_part(payload);
  return input + "." + base64url_encode(signer.sign(input));
}

nlohmann::json jwk_of(const TestKey& key) {
  auto j = key.jwk();
  const std::string thumbprint = rsa_jwk_thumbprint(j["n"].get<std::string>(), j["e"].get<std::string>());
  return {{"kty", "RSA"}, {"e", j["e"]}, {"n", j["n"]}, {"alg", "RS256"}, {"kid", thumbprint}};
}

}  // namespace

TEST_CASE("pop: the JWK thumbprint is RFC 7638's", "[auth-entra][pop]") {
  // RFC 7638 section 3.1.
  const std::string n =
      "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_"
      "BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-"
      "5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"
      "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-"
      "bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
  CHECK(rsa_jwk_thumbprint(n, "AQAB") == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
}

TEST_CASE("pop: a Signed HTTP Request carries at, ts, u, cnf.jwk and a nonce, signed RS256 by the key",
          "[auth-entra][pop]") {
  auto key = PopKey::generate();
  REQUIRE(key);
  auto k = *key;
  CHECK(k->thumbprint().size() == 43);
  CHECK(k->jwk()["kid"] == k->thumbprint());
  CHECK(rsa_jwk_thumbprint(k->jwk()["n"].get<std::string>(), k->jwk()["e"].get<std::string>()) == k->thumbprint());
  CHECK(nlohmann::json::parse(*base64url_decode(pop_req_cnf(k->thumbprint()))) ==
        nlohmann::json{{"kid", k->thumbprint()}, {"xms_ksl", "sw"}});

  const long long before = to_s(Clock::now());
  auto token = k->sign_request("the.access.token", cluster_lower);
  REQUIRE(token);
  auto header = decode_part(*token, 0);
  auto payload = decode_part(*token, 1);
  CHECK(header == nlohmann::json{{"typ", "pop"}, {"alg", "RS256"}, {"kid", k->thumbprint()}});
  CHECK(payload["at"] == "the.access.token");
  CHECK(payload["u"] == cluster_lower);
  CHECK(payload["ts"].get<long long>() >= before);
  CHECK(payload["ts"].get<long long>() <= to_s(Clock::now()));
  CHECK(payload["cnf"]["jwk"] == k->jwk());
  CHECK(payload["cnf"]["jwk"]["kty"] == "RSA");
  CHECK(payload["nonce"].get<std::string>().size() == 32);
  // Every request gets its own nonce.
  CHECK(decode_part(*k->sign_request("the.access.token", cluster_lower), 1)["nonce"] != payload["nonce"]);

  auto parsed = parse_jws(*token);
  REQUIRE(parsed.ok());
  auto pub = rsa_key_from_jwk(k->jwk()["n"].get<std::string>(), k->jwk()["e"].get<std::string>());
  REQUIRE(pub);
  CHECK(verify_rs256(pub->get(), parsed.jws.signing_input, parsed.jws.signature));
  CHECK(EVP_PKEY_get_bits(k->get()) == 2048);
}

TEST_CASE("pop: a good Signed HTTP Request is accepted with the inner token's identity", "[auth-entra][pop]") {
  Fixture f;
  auto out = f.authenticate(f.shr(f.access_token(f.client->thumbprint()), cluster_lower, f.now()));
  INFO(out.message);
  REQUIRE(out.ok());
  CHECK(out.identity.user == "alice@contoso.example");
  CHECK(out.identity.groups == std::vector<std::string>{"g-1"});
  // `u` is compared without regard to case; so is the configured ID.
  CHECK(f.authenticate(f.shr(f.access_token(f.client->thumbprint()), cluster, f.now())).ok());
  // A few minutes old, or a little ahead of the agent's clock, is fine.
  CHECK(f.authenticate(f.shr(f.access_token(f.client->thumbprint()), cluster, f.now() - 14 * 60)).ok());
  CHECK(f.authenticate(f.shr(f.access_token(f.client->thumbprint()), cluster, f.now() + 4 * 60)).ok());
}

TEST_CASE("pop: a Signed HTTP Request for another cluster is refused", "[auth-entra][pop]") {
  Fixture f;
  auto out = f.authenticate(f.shr(f.access_token(f.client->thumbprint()), other_cluster, f.now()));
  CHECK(out.failure == AuthFailure::wrong_cluster);
  CHECK(out.message.find("not this cluster") != std::string::npos);
  CHECK(f.authenticate(f.shr(f.access_token(f.client->thumbprint()), "", f.now())).failure ==
        AuthFailure::wrong_cluster);
}

TEST_CASE("pop: a Signed HTTP Request older than 15 minutes, or 5 minutes ahead, is refused", "[auth-entra][pop]") {
  Fixture f;
  auto out = f.authenticate(f.shr(f.access_token(f.client->thumbprint()), cluster, f.now() - 16 * 60));
  CHECK(out.failure == AuthFailure::expired);
  CHECK(out.message.find("960 s ago") != std::string::npos);
  CHECK(f.authenticate(f.shr(f.access_token(f.client->thumbprint()), cluster, f.now() + 6 * 60)).failure ==
        AuthFailure::not_yet_valid);

  // The same request, good now, is refused once the clock passes 15 minutes.
  const std::string at = f.access_token(f.client->thumbprint());
  const std::string token = f.shr(at, cluster, f.now());
  *f.now_s += 15 * 60 + 1;
  CHECK(f.authenticate(token).failure == AuthFailure::expired);
}

TEST_CASE("pop: a replayed Signed HTTP Request is refused", "[auth-entra][pop]") {
  Fixture f;
  const std::string token = f.shr(f.access_token(f.client->thumbprint()), cluster, f.now());
  REQUIRE(f.authenticate(token).ok());
  auto again = f.authenticate(token);
  CHECK(again.failure == AuthFailure::replayed);
  CHECK(again.message.find("used before") != std::string::npos);
  // The same nonce in a freshly signed request is a replay too.
  const std::string nonce = random_nonce();
  REQUIRE(f.authenticate(f.shr(f.access_token(f.client->thumbprint()), cluster, f.now(), nonce)).ok());
  CHECK(f.authenticate(f.shr(f.access_token(f.client->thumbprint()), cluster, f.now() - 1, nonce)).failure ==
        AuthFailure::replayed);
  // A refused request does not use up its nonce.
  const std::string n2 = random_nonce();
  CHECK(f.authenticate(f.shr(f.access_token(f.client->thumbprint()), other_cluster, f.now(), n2)).failure ==
        AuthFailure::wrong_cluster);
  CHECK(f.authenticate(f.shr(f.access_token(f.client->thumbprint()), cluster, f.now(), n2)).ok());
}

TEST_CASE("pop: a signature by another key than cnf.jwk is refused", "[auth-entra][pop]") {
  Fixture f;
  TestKey attacker("attacker");
  const nlohmann::json payload = {{"at", f.access_token(f.client->thumbprint())},
                                  {"ts", f.now()},
                                  {"u", cluster},
                                  {"cnf", {{"jwk", f.client->jwk()}}},
                                  {"nonce", random_nonce()}};
  auto out =
      f.authenticate(hand_made(attacker, {{"typ", "pop"}, {"alg", "RS256"}, {"kid", f.client->thumbprint()}}, payload));
  CHECK(out.failure == AuthFailure::bad_signature);
  CHECK(out.message.find("does not verify") != std::string::npos);

  // The attacker's own key in cnf.jwk: the signature verifies, but the
  // access token is bound to the client's key.
  auto own = payload;
  own["cnf"]["jwk"] = jwk_of(attacker);
  auto bound =
      f.authenticate(hand_made(attacker, {{"typ", "pop"}, {"alg", "RS256"}, {"kid", jwk_of(attacker)["kid"]}}, own));
  CHECK(bound.failure == AuthFailure::bad_signature);
  CHECK(bound.message.find("bound to another key") != std::string::npos);

  // cnf.jwk.kid that is not the key's thumbprint.
  auto wrong_kid = own;
  wrong_kid["cnf"]["jwk"]["kid"] = f.client->thumbprint();
  CHECK(f.authenticate(hand_made(attacker, {{"typ", "pop"}, {"alg", "RS256"}}, wrong_kid)).failure ==
        AuthFailure::bad_signature);
}

TEST_CASE("pop: an RSA key under 2048 bits or a non-RSA key in cnf.jwk is refused", "[auth-entra][pop]") {
  Fixture f;
  TestKey small("small", 1024);
  const nlohmann::json payload = {
      {"at", f.access_token(rsa_jwk_thumbprint(small.jwk()["n"].get<std::string>(), "AQAB"))},
      {"ts", f.now()},
      {"u", cluster},
      {"cnf", {{"jwk", jwk_of(small)}}},
      {"nonce", random_nonce()}};
  auto out = f.authenticate(hand_made(small, {{"typ", "pop"}, {"alg", "RS256"}}, payload));
  CHECK(out.failure == AuthFailure::disallowed_algorithm);
  CHECK(out.message.find("2048") != std::string::npos);
  auto ec = payload;
  ec["cnf"]["jwk"] = {{"kty", "EC"}, {"crv", "P-256"}, {"x", "AA"}, {"y", "AA"}};
  CHECK(f.authenticate(hand_made(small, {{"typ", "pop"}, {"alg", "RS256"}}, ec)).failure ==
        AuthFailure::disallowed_algorithm);
}

TEST_CASE("pop: an inner access token without cnf, or bound to another key, is refused", "[auth-entra][pop]") {
  Fixture f;
  auto bearer_inside = f.authenticate(f.shr(f.access_token(""), cluster, f.now()));
  CHECK(bearer_inside.failure == AuthFailure::pop_required);
  CHECK(bearer_inside.message.find("no 'cnf' claim") != std::string::npos);

  auto other_key = *PopKey::generate();
  auto other = f.authenticate(f.shr(f.access_token(other_key->thumbprint()), cluster, f.now()));
  CHECK(other.failure == AuthFailure::bad_signature);
  CHECK(other.message.find("bound to another key") != std::string::npos);

  // The inner token passes the full access-token validation: a forged one
  // (signed by a key the tenant does not publish) is refused.
  TestKey forger("tenant-key");
  auto claims = access_claims(f.now());
  claims["cnf"] = {{"kid", f.client->thumbprint()}};
  auto forged = f.authenticate(f.shr(rs256_token(forger, claims), cluster, f.now()));
  CHECK(forged.failure == AuthFailure::bad_signature);
  CHECK(forged.message.find("access token in the proof-of-possession token") != std::string::npos);
  // ...and so is an expired one.
  claims = access_claims(f.now() - 7200);
  claims["cnf"] = {{"kid", f.client->thumbprint()}};
  CHECK(f.authenticate(f.shr(rs256_token(f.tenant_key, claims), cluster, f.now())).failure == AuthFailure::expired);
}

TEST_CASE("pop: alg none and HS256 Signed HTTP Requests are refused", "[auth-entra][pop]") {
  Fixture f;
  const nlohmann::json payload = {{"at", f.access_token(f.client->thumbprint())},
                                  {"ts", f.now()},
                                  {"u", cluster},
                                  {"cnf", {{"jwk", f.client->jwk()}}},
                                  {"nonce", random_nonce()}};
  const std::string unsigned_token = encode_part({{"typ", "pop"}, {"alg", "none"}}) + "." + encode_part(payload) + ".";
  CHECK(f.authenticate(unsigned_token + "AAAA").failure == AuthFailure::disallowed_algorithm);
  // HS256 with the public modulus as the secret: the classic key confusion.
  auto hs =
      f.authenticate(hs256_token(f.client->jwk()["n"].get<std::string>(), {{"typ", "pop"}, {"alg", "HS256"}}, payload));
  CHECK(hs.failure == AuthFailure::disallowed_algorithm);
  CHECK(hs.message.find("only RS256") != std::string::npos);
  CHECK(f.authenticate(hs256_token("secret", {{"typ", "pop"}, {"alg", "RS512"}}, payload)).failure ==
        AuthFailure::disallowed_algorithm);
}

TEST_CASE("pop: a bearer token is refused in PoP mode", "[auth-entra][pop]") {
  Fixture f;
  // Even one bound to the client's key: without the signed request it proves nothing.
  for (const auto& thumbprint : {std::string(), f.client->thumbprint()}) {
    auto out = f.authenticate(f.access_token(thumbprint));
    CHECK(out.failure == AuthFailure::pop_required);
    CHECK(out.message.find("accepts only proof-of-possession tokens") != std::string::npos);
  }
  // Another issuer's token stays another issuer's (the agent's `both` mode passes it on).
  auto claims = access_claims(f.now());
  claims["iss"] = "https://kubernetes.default.svc";
  claims.erase("tid");
  CHECK(f.authenticate(rs256_token(f.tenant_key, claims)).failure == AuthFailure::wrong_issuer);
  // Without PoP mode the same bearer token is accepted (the test above is not vacuous).
  Fixture bearer(nlohmann::json{{"pop", false}});
  CHECK(bearer.authenticate(bearer.access_token("")).ok());
}

TEST_CASE("pop: the nonce cache forgets nonces after 15 minutes and refuses new ones when full", "[auth-entra][pop]") {
  NonceCache cache(3);
  const auto t0 = Clock::time_point(std::chrono::seconds(1'800'000'000));
  const long long ts = to_s(t0);
  CHECK(cache.use("a", ts, t0).ok());
  CHECK(cache.use("a", ts, t0).failure == AuthFailure::replayed);
  CHECK(cache.use("b", ts, t0).ok());
  CHECK(cache.use("c", ts + 60, t0).ok());
  auto full = cache.use("d", ts, t0);
  CHECK(full.failure == AuthFailure::replayed);
  CHECK(full.message.find("too many") != std::string::npos);
  // Once "a" and "b" are older than the window they go, and room returns;
  // "c" is still remembered.
  const auto later = t0 + pop_max_age + std::chrono::seconds(1);
  CHECK(cache.use("d", to_s(later), later).ok());
  CHECK(cache.size() == 2);
  CHECK(cache.use("c", ts + 60, later).failure == AuthFailure::replayed);
}

TEST_CASE("pop: options need the cluster's resource ID and check its form", "[auth-entra][pop]") {
  auto no_id = parse_authenticator_options({{"tenants", {tenant}}, {"pop", true}});
  REQUIRE_FALSE(no_id);
  CHECK(no_id.error().find("cluster_resource_id") != std::string::npos);
  auto bad = parse_authenticator_options({{"tenants", {tenant}}, {"pop", true}, {"cluster_resource_id", "prod-eu"}});
  REQUIRE_FALSE(bad);
  CHECK(bad.error().find("not a connected cluster's resource ID") != std::string::npos);
  auto good = parse_authenticator_options({{"tenants", {tenant}}, {"pop", true}, {"cluster_resource_id", cluster}});
  REQUIRE(good);
  CHECK(good->pop);
  CHECK(good->cluster_resource_id == cluster_lower);
  CHECK_FALSE(parse_authenticator_options({{"tenants", {tenant}}})->pop);  // bearer stays the default
  CHECK(normalize_cluster_resource_id(cluster + "/").ok() == false);
  CHECK(normalize_cluster_resource_id(
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.Kubernetes/connectedClusters/a b")
            .ok() == false);
}

TEST_CASE("pop: the Azure CLI method cannot obtain PoP tokens and says what to use instead", "[auth-entra][pop]") {
  auto config = parse_credential_options({{"method", "azure-cli"}}, {});
  REQUIRE(config);
  EntraCredential cred(std::move(*config));
  auto token = cred.get_pop_token(arc_server_app_id);
  REQUIRE_FALSE(token);
  CHECK(token.error().find("Azure CLI cannot obtain proof-of-possession tokens") != std::string::npos);
  CHECK(token.error().find("without --pop") != std::string::npos);
}
