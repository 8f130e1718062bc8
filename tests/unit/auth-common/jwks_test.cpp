#include <catch2/catch.hpp>

#include "encoding.hpp"
#include "jwks.hpp"
#include "../../support/jwt_test_keys.hpp"

using namespace clusterconnect::auth;
using clusterconnect::auth::test::TestEcKey;
using clusterconnect::auth::test::TestKey;

TEST_CASE("auth-common: base64url decoding is strict", "[auth-common][encoding]") {
  CHECK(base64url_decode("aGk") == std::optional<std::string>("hi"));
  CHECK(base64url_decode("") == std::optional<std::string>(""));
  CHECK(base64url_encode("hi?>") == "aGk_Pg");
  CHECK(base64url_decode("aGk_Pg") == std::optional<std::string>("hi?>"));
  CHECK_FALSE(base64url_decode("aGk="));   // padding
  CHECK_FALSE(base64url_decode("aG k"));   // whitespace
  CHECK_FALSE(base64url_decode("aGk/"));   // standard alphabet
  CHECK_FALSE(base64url_decode("aGl"));    // non-zero unused bits: a second spelling of "hi"
  CHECK_FALSE(base64url_decode("aGk_P"));  // impossible length
}

TEST_CASE("auth-common: JWKS parsing keeps RSA signing keys only", "[auth-common][jwks]") {
  TestKey a("a"), b("b");
  nlohmann::json enc = b.jwk();
  enc["use"] = "enc";
  nlohmann::json doc = {{"keys",
                         {a.jwk(), enc, {{"kty", "EC"}, {"kid", "ec"}, {"crv", "P-256"}, {"x", "AA"}, {"y", "AA"}},
                          {{"kty", "RSA"}, {"kid", "broken"}, {"n", "!!"}, {"e", "AQAB"}}}}};
  auto keys = parse_jwks(doc.dump());
  REQUIRE(keys);
  CHECK(keys->size() == 1);
  CHECK(keys->count("a") == 1);

  CHECK_FALSE(parse_jwks("{}"));
  CHECK_FALSE(parse_jwks("not json"));
  CHECK_FALSE(parse_jwks(R"({"keys":[]})"));
}

TEST_CASE("auth-common: RSA keys under 2048 bits are refused", "[auth-common][jwks]") {
  TestKey small("small", 1024);
  auto j = small.jwk();
  CHECK_FALSE(rsa_key_from_jwk(j["n"].get<std::string>(), j["e"].get<std::string>()));
}

TEST_CASE("auth-common: RS256 verification", "[auth-common][jwks]") {
  TestKey a("a"), b("b");
  auto ja = a.jwk();
  auto key = rsa_key_from_jwk(ja["n"].get<std::string>(), ja["e"].get<std::string>());
  REQUIRE(key);
  const std::string input = "header.payload";
  const std::string sig = a.sign(input);
  CHECK(verify_rs256(key->get(), input, sig));
  CHECK_FALSE(verify_rs256(key->get(), "header.payloaD", sig));
  CHECK_FALSE(verify_rs256(key->get(), input, b.sign(input)));
  CHECK_FALSE(verify_rs256(key->get(), input, sig.substr(0, sig.size() - 1)));
  CHECK_FALSE(verify_rs256(key->get(), input, ""));
}

TEST_CASE("auth-common: JWKS cache refreshes at a bounded rate", "[auth-common][jwks]") {
  TestKey a("a"), b("b");
  nlohmann::json jwks = {{"keys", {a.jwk()}}};
  int fetches = 0;
  auto now = std::chrono::steady_clock::time_point(std::chrono::hours(1000));
  JwksCache cache({"https://login.example", std::chrono::seconds(2), std::chrono::hours(1), [&] { return now; }}, [&](const std::string& url) -> clusterconnect::Result<std::string> {
    ++fetches;
    if (url == "https://login.example/t1/v2.0/.well-known/openid-configuration")
      return std::string(R"({"issuer":"https://login.example/{tenantid}/v2.0","jwks_uri":"https://login.example/t1/keys"})");
    if (url == "https://login.example/t1/.well-known/openid-configuration")
      return std::string(R"({"issuer":"https://sts.example/t1/"})");
    if (url == "https://login.example/t1/keys") return jwks.dump();
    return clusterconnect::fail("unexpected URL " + url);
  });
  CHECK(cache.refresh_due("t1"));
  auto first = cache.refresh("t1");
  REQUIRE(first);
  CHECK(first.value());  // fetched
  CHECK(fetches == 3);
  CHECK(cache.issuers("t1") == std::vector<std::string>{"https://login.example/t1/v2.0", "https://sts.example/t1/"});
  CHECK(cache.find("t1", "a"));
  CHECK_FALSE(cache.find("t1", "b"));

  jwks = {{"keys", {b.jwk()}}};
  CHECK_FALSE(cache.refresh_due("t1"));
  auto limited = cache.refresh("t1");
  REQUIRE(limited);
  CHECK_FALSE(limited.value());  // rate-limited: no fetch, old set kept
  CHECK(fetches == 3);
  CHECK_FALSE(cache.find("t1", "b"));

  now += std::chrono::seconds(1);
  CHECK_FALSE(cache.refresh_due("t1"));
  now += std::chrono::seconds(1);
  CHECK(cache.refresh_due("t1"));
  CHECK_FALSE(cache.stale("t1"));
  REQUIRE(cache.refresh("t1"));
  CHECK(fetches == 6);
  CHECK(cache.find("t1", "b"));
  CHECK_FALSE(cache.find("t1", "a"));  // rotated out

  // Past the maximum age the keys are stale and due for the background refresh.
  CHECK(cache.stale_tenants().empty());
  now += std::chrono::hours(1) + std::chrono::seconds(1);
  CHECK(cache.stale("t1"));
  CHECK(cache.stale_tenants() == std::vector<std::string>{"t1"});

  auto failing = cache.refresh("other");
  CHECK_FALSE(failing);
  CHECK(failing.error().find("OpenID configuration") != std::string::npos);
}

TEST_CASE("auth-common: P-256 keys are kept only where ES256 is accepted", "[auth-common][jwks]") {
  TestKey rsa("r");
  TestEcKey ec("e");
  nlohmann::json rs_only = ec.jwk();
  rs_only["alg"] = "RS256";  // a key's `alg` that contradicts its type
  nlohmann::json off_curve = ec.jwk();
  off_curve["kid"] = "off";
  off_curve["y"] = off_curve["x"];
  nlohmann::json doc = {{"keys", {rsa.jwk(), ec.jwk(), rs_only, off_curve}}};
  auto both = parse_jwks(doc.dump(), {"RS256", "ES256"});
  REQUIRE(both);
  CHECK(both->size() == 2);
  CHECK(both->count("r") == 1);
  CHECK(both->count("e") == 1);
  auto es_only = parse_jwks(doc.dump(), {"ES256"});
  REQUIRE(es_only);
  CHECK(es_only->size() == 1);
  CHECK(es_only->count("e") == 1);
  auto rs_default = parse_jwks(doc.dump());
  REQUIRE(rs_default);
  CHECK(rs_default->count("e") == 0);
}

TEST_CASE("auth-common: ES256 verification and no algorithm confusion", "[auth-common][jwks]") {
  TestKey rsa("r");
  TestEcKey ec("e"), other("o");
  auto keys = parse_jwks(nlohmann::json{{"keys", {rsa.jwk(), ec.jwk()}}}.dump(), {"RS256", "ES256"});
  REQUIRE(keys);
  const std::string input = "header.payload";
  const std::string sig = ec.sign(input);
  REQUIRE(sig.size() == 64);
  CHECK(verify_es256(keys->at("e").get(), input, sig));
  CHECK(verify_signature("ES256", keys->at("e").get(), input, sig));
  CHECK_FALSE(verify_es256(keys->at("e").get(), "header.payloaD", sig));
  CHECK_FALSE(verify_es256(keys->at("e").get(), input, other.sign(input)));
  CHECK_FALSE(verify_es256(keys->at("e").get(), input, sig.substr(0, 63)));
  // A signature made for one algorithm never verifies under another, nor with the other key type.
  CHECK_FALSE(verify_signature("RS256", keys->at("e").get(), input, sig));
  CHECK_FALSE(verify_signature("ES256", keys->at("r").get(), input, rsa.sign(input)));
  CHECK_FALSE(verify_signature("RS256", keys->at("r").get(), input, sig));
  CHECK_FALSE(verify_signature("none", keys->at("r").get(), input, ""));
  CHECK_FALSE(verify_signature("HS256", keys->at("r").get(), input, rsa.sign(input)));
}

TEST_CASE("auth-common: discovery by issuer must name that issuer", "[auth-common][jwks]") {
  TestEcKey ec("e");
  std::string issuer_in_document = "https://idp.example/realms/a";
  JwksCache::Settings settings;
  settings.layout = JwksCache::Layout::issuer;
  settings.algorithms = {"RS256", "ES256"};
  std::vector<std::string> urls;
  JwksCache cache(settings, [&](const std::string& url) -> clusterconnect::Result<std::string> {
    urls.push_back(url);
    if (url == "https://idp.example/realms/a/.well-known/openid-configuration")
      return nlohmann::json{{"issuer", issuer_in_document}, {"jwks_uri", "https://idp.example/keys"}}.dump();
    if (url == "https://idp.example/keys") return nlohmann::json{{"keys", {ec.jwk()}}}.dump();
    return clusterconnect::fail("unexpected URL " + url);
  });
  REQUIRE(cache.refresh("https://idp.example/realms/a"));
  CHECK(urls == std::vector<std::string>{"https://idp.example/realms/a/.well-known/openid-configuration", "https://idp.example/keys"});
  CHECK(cache.find("https://idp.example/realms/a", "e"));
  CHECK(cache.issuers("https://idp.example/realms/a") == std::vector<std::string>{"https://idp.example/realms/a"});

  issuer_in_document = "https://evil.example/realms/a";
  JwksCache impostor(settings, [&](const std::string& url) -> clusterconnect::Result<std::string> {
    if (url == "https://idp.example/realms/a/.well-known/openid-configuration")
      return nlohmann::json{{"issuer", issuer_in_document}, {"jwks_uri", "https://idp.example/keys"}}.dump();
    return nlohmann::json{{"keys", {ec.jwk()}}}.dump();
  });
  auto refused = impostor.refresh("https://idp.example/realms/a");
  REQUIRE_FALSE(refused);
  CHECK(refused.error().find("names issuer") != std::string::npos);
  CHECK_FALSE(impostor.find("https://idp.example/realms/a", "e"));
}
