// The authenticator against tokens and keys served by the real test
// identity provider (oidc-provider dressed as Entra ID).

#include <catch2/catch.hpp>

#include <openssl/hmac.h>

#include <atomic>

#include "encoding.hpp"
#include "entra_authenticator.hpp"
#include "test_idp.hpp"

using namespace clusterconnect;
using namespace clusterconnect::entra;
using clusterconnect::entra::test::TestIdp;

namespace {

std::string client_secret_token(const TestIdp& idp, const std::string& resource) {
  HttpPolicy policy;
  policy.allow_http_loopback = true;
  HttpClient http(policy);
  const auto& c = idp.state()["clients"]["secret"];
  auto r = http.post_form(idp.token_endpoint(), form_encode({{"grant_type", "client_credentials"},
                                                            {"client_id", c["client_id"].get<std::string>()},
                                                            {"client_secret", c["client_secret"].get<std::string>()},
                                                            {"scope", resource + "/.default"}}));
  REQUIRE(r);
  INFO(r->body);
  REQUIRE(r->status == 200);
  return nlohmann::json::parse(r->body)["access_token"].get<std::string>();
}

struct Validator {
  asio::io_context io;
  std::shared_ptr<EntraAuthenticator> auth;
  // The key cache's clock: real time plus what the test adds, so that the
  // refresh rate limit passes without sleeping.
  std::shared_ptr<std::atomic<long long>> advanced_s = std::make_shared<std::atomic<long long>>(0);

  explicit Validator(const TestIdp& idp, nlohmann::json extra = nlohmann::json::object()) {
    nlohmann::json options = {{"tenants", {idp.tenant()}}, {"authority", idp.authority()}, {"allow_http_loopback", true},
                              {"key_refresh_min_interval_seconds", 1}};
    options.update(extra);
    auto config = parse_authenticator_options(options);
    REQUIRE(config);
    config->key_clock = [advanced = advanced_s] { return std::chrono::steady_clock::now() + std::chrono::seconds(advanced->load()); };
    auth = std::make_shared<EntraAuthenticator>(io, std::move(*config));
  }

  AuthOutcome authenticate(const std::string& token) {
    std::optional<AuthOutcome> out;
    auth->async_authenticate(token, [&](AuthOutcome o) { out = std::move(o); });
    for (int i = 0; i < 3000 && !out; ++i) {
      io.restart();
      io.run_for(std::chrono::milliseconds(5));
      if (!out) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    REQUIRE(out);
    return *out;
  }
};

}  // namespace

TEST_CASE("auth-entra/idp: a token the identity provider issued validates", "[auth-entra][idp]") {
  if (auto why = TestIdp::unavailable()) CLUSTERCONNECT_SKIP(*why);
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path());
  Validator v(idp);

  auto out = v.authenticate(client_secret_token(idp, arc_server_app_id));
  INFO(out.message);
  REQUIRE(out.ok());
  const std::string app_oid = idp.state()["clients"]["secret"]["oid"];
  CHECK(out.identity.user == app_oid);  // an application has no upn
  CHECK(out.identity.uid == app_oid);
  CHECK(out.identity.extra.at("tid") == std::vector<std::string>{idp.tenant()});

  // A token for some other resource is refused for its audience.
  auto other = v.authenticate(client_secret_token(idp, "api://some-other-app"));
  CHECK(other.failure == AuthFailure::wrong_audience);

  // The provider publishes a v1 discovery document as Entra does.
  HttpPolicy policy;
  policy.allow_http_loopback = true;
  auto v1 = HttpClient(policy).get(idp.authority() + "/" + idp.tenant() + "/.well-known/openid-configuration");
  REQUIRE(v1);
  REQUIRE(v1->status == 200);
  CHECK(nlohmann::json::parse(v1->body)["issuer"] == idp.authority() + "/" + idp.tenant() + "/");

  // Plain http to the provider needs the explicit flag.
  auto strict = parse_authenticator_options({{"tenants", {idp.tenant()}}, {"authority", idp.authority()}});
  CHECK_FALSE(strict);
}

TEST_CASE("auth-entra/idp: a key rotated at the provider is survived without restart", "[auth-entra][idp]") {
  if (auto why = TestIdp::unavailable()) CLUSTERCONNECT_SKIP(*why);
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path());
  Validator v(idp);

  const std::string old_token = client_secret_token(idp, arc_server_app_id);
  REQUIRE(v.authenticate(old_token).ok());

  auto rotated = idp.admin("rotate-keys");
  REQUIRE(rotated["kid"] != rotated["previous"]);
  *v.advanced_s += 2;  // past the refresh rate limit

  const std::string new_token = client_secret_token(idp, arc_server_app_id);
  auto fresh = v.authenticate(new_token);
  INFO(fresh.message);
  CHECK(fresh.ok());

  auto stale = v.authenticate(old_token);
  CHECK(stale.failure == AuthFailure::unknown_key);
  CHECK(stale.message.find(rotated["previous"].get<std::string>()) != std::string::npos);
}

TEST_CASE("auth-entra/idp: over TLS, trusted through ca_file only", "[auth-entra][idp][tls]") {
  if (auto why = TestIdp::unavailable()) CLUSTERCONNECT_SKIP(*why);
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path(), nullptr, /*tls=*/true);
  REQUIRE(idp.authority().rfind("https://127.0.0.1:", 0) == 0);
  const auto& c = idp.state()["clients"]["secret"];

  HttpPolicy policy;
  policy.ca_file = idp.ca_file();
  HttpClient http(policy);
  auto r = http.post_form(idp.token_endpoint(), form_encode({{"grant_type", "client_credentials"},
                                                            {"client_id", c["client_id"].get<std::string>()},
                                                            {"client_secret", c["client_secret"].get<std::string>()},
                                                            {"scope", std::string(arc_server_app_id) + "/.default"}}));
  REQUIRE(r);
  REQUIRE(r->status == 200);
  const std::string token = nlohmann::json::parse(r->body)["access_token"];

  auto validate_with = [&](nlohmann::json options) {
    asio::io_context io;
    options["tenants"] = {idp.tenant()};
    options["authority"] = idp.authority();
    auto config = parse_authenticator_options(options);
    REQUIRE(config);
    auto auth = std::make_shared<EntraAuthenticator>(io, std::move(*config));
    std::optional<AuthOutcome> out;
    auth->async_authenticate(token, [&](AuthOutcome o) { out = std::move(o); });
    for (int i = 0; i < 6000 && !out; ++i) {
      io.restart();
      io.run_for(std::chrono::milliseconds(5));
      if (!out) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    REQUIRE(out);
    return *out;
  };

  auto trusted = validate_with({{"ca_file", idp.ca_file()}});
  INFO(trusted.message);
  CHECK(trusted.ok());

  // Without the provider's certificate the system trust store refuses it.
  auto untrusted = validate_with(nlohmann::json::object());
  CHECK(untrusted.failure == AuthFailure::keys_unavailable);
  CHECK(untrusted.message.find("certificate") != std::string::npos);
}

TEST_CASE("auth-entra/idp: attacks on a token the identity provider issued", "[auth-entra][idp]") {
  if (auto why = TestIdp::unavailable()) CLUSTERCONNECT_SKIP(*why);
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path());
  Validator v(idp, {{"clock_skew_seconds", 0}});
  const std::string token = client_secret_token(idp, arc_server_app_id);
  REQUIRE(v.authenticate(token).ok());
  const auto first = token.find('.'), second = token.rfind('.');
  auto payload = nlohmann::json::parse(*base64url_decode(token.substr(first + 1, second - first - 1)));
  auto header = nlohmann::json::parse(*base64url_decode(token.substr(0, first)));

  {  // tampered payload
    auto p = payload;
    p["oid"] = "00000000-0000-0000-0000-000000000000";
    CHECK(v.authenticate(token.substr(0, first + 1) + base64url_encode(p.dump()) + token.substr(second)).failure == AuthFailure::bad_signature);
  }
  {  // alg none, and HS256 keyed with the provider's public key
    auto h = header;
    h["alg"] = "none";
    CHECK(v.authenticate(base64url_encode(h.dump()) + token.substr(first, second - first) + ".").failure == AuthFailure::disallowed_algorithm);

    HttpPolicy policy;
    policy.allow_http_loopback = true;
    auto jwks = nlohmann::json::parse(HttpClient(policy).get(idp.state()["jwks_uri"].get<std::string>())->body);
    const std::string n = jwks["keys"][0]["n"];
    h["alg"] = "HS256";
    const std::string input = base64url_encode(h.dump()) + token.substr(first, second - first);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    HMAC(EVP_sha256(), n.data(), static_cast<int>(n.size()), reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, &len);
    CHECK(v.authenticate(input + "." + base64url_encode(std::string(reinterpret_cast<char*>(mac), len))).failure ==
          AuthFailure::disallowed_algorithm);
  }
  {  // truncated
    CHECK(v.authenticate(token.substr(0, second)).failure == AuthFailure::malformed);
    CHECK_FALSE(v.authenticate(token.substr(0, token.size() - 2)).ok());
  }
  {  // another tenant
    Validator other(idp, {{"tenants", {"3c7e1d52-9a4f-4b8e-8d21-6f0a9b3c5e74"}}});
    CHECK(other.authenticate(token).failure == AuthFailure::wrong_issuer);
  }
  {  // expired, with no skew allowed
    idp.admin("access-token-lifetime", {{"seconds", 1}});
    const std::string short_lived = client_secret_token(idp, arc_server_app_id);
    Validator later(idp, {{"clock_skew_seconds", 0}});
    later.auth->set_clock([] { return std::chrono::system_clock::now() + std::chrono::seconds(5); });
    CHECK(later.authenticate(short_lived).failure == AuthFailure::expired);
  }
}
