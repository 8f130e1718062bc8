// credential:oidc against the plain OpenID provider (tests/fixtures/oidc-idp):
// device authorization with PKCE, and the GitHub Actions runner's own token
// for a cluster whose agent trusts the runner's issuer.

#include <catch2/catch.hpp>

#include <future>

#include "../../support/actions_oidc_fixture.hpp"
#include "oidc_authenticator.hpp"
#include "oidc_credential.hpp"
#include "test_oidc_idp.hpp"

using namespace clusterconnect;
using namespace clusterconnect::oidc;
using clusterconnect::oidc::test::TestOidcIdp;

#define REQUIRE_OIDC_IDP() \
  if (auto why = TestOidcIdp::unavailable()) CLUSTERCONNECT_SKIP(*why)

namespace {

nlohmann::json admin_post(const TestOidcIdp& idp, const std::string& path, const nlohmann::json& body) {
  auth::HttpPolicy policy;
  policy.allow_http_loopback = true;
  policy.max_attempts = 1;
  policy.total_timeout = std::chrono::seconds(30);
  auto r = auth::HttpClient(policy).post_json(idp.issuer() + "/__admin/" + path, body.dump());
  REQUIRE(r);
  INFO(r->body);
  REQUIRE(r->status == 200);
  return nlohmann::json::parse(r->body);
}

int pkce_checked(const TestOidcIdp& idp) {
  auth::HttpPolicy policy;
  policy.allow_http_loopback = true;
  auto r = auth::HttpClient(policy).get(idp.issuer() + "/__admin/state");
  REQUIRE(r);
  return nlohmann::json::parse(r->body)["pkce_checked"].get<int>();
}

}  // namespace

TEST_CASE("auth-oidc/idp: device code with PKCE", "[auth-oidc][idp][credential]") {
  REQUIRE_OIDC_IDP();
  clusterconnect::test::TempDir dir;
  TestOidcIdp idp(dir.path());
  auto config = parse_credential_options({{"method", "device-code"},
                                          {"issuer", idp.issuer()},
                                          {"client_id", idp.state()["clients"]["device"]["client_id"]},
                                          {"allow_http_loopback", true}});
  INFO((config ? std::string() : config.error()));
  REQUIRE(config);
  CHECK(config->scope == "openid offline_access");
  // The person signs in when the prompt appears (through the provider's own pages).
  std::future<nlohmann::json> completed;
  config->device_code_prompt = [&](const DeviceCodePrompt& p) {
    CHECK(p.verification_uri.find(idp.issuer()) == 0);
    completed = std::async(std::launch::async, [&idp, code = p.user_code] { return admin_post(idp, "device/complete", {{"user_code", code}}); });
  };
  config->sleep = [](std::chrono::seconds) { std::this_thread::sleep_for(std::chrono::milliseconds(200)); };
  auto cred = std::make_shared<OidcCredential>(std::move(*config));
  const std::string resource = idp.state()["audience_prefix"].get<std::string>() + "kubernetes";
  auto token = cred->get_token(resource);
  INFO((token ? std::string() : token.error()));
  REQUIRE(token);
  REQUIRE(completed.valid());
  CHECK(completed.get()["ok"] == true);
  CHECK(pkce_checked(idp) >= 1);  // every poll (pending ones too) presented the verifier

  // The token is the person's, for the cluster's audience: the agent's
  // authenticator accepts it.
  asio::io_context io;
  auto auth_config = parse_authenticator_options(
      {{"issuer", idp.issuer()}, {"client_id", "kubernetes"}, {"allow_http_loopback", true}, {"username_claim", "email"}});
  REQUIRE(auth_config);
  auto authenticator = std::make_shared<OidcAuthenticator>(io, std::move(*auth_config));
  std::optional<AuthOutcome> out;
  authenticator->async_authenticate(token->token, [&](AuthOutcome o) { out = std::move(o); });
  for (int i = 0; i < 3000 && !out; ++i) {
    io.restart();
    io.run_for(std::chrono::milliseconds(5));
    if (!out) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  REQUIRE(out);
  INFO(out->message);
  REQUIRE(out->ok());
  CHECK(out->identity.user == "jane@example.org");
}
