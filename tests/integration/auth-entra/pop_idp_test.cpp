// Proof-of-possession end to end against the real test identity provider:
// the credential obtains a token bound to its key (req_cnf -> cnf.kid), signs
// a request with it, and the authenticator in PoP mode accepts it for its own
// cluster only.

#include <catch2/catch.hpp>

#include <future>

#include "encoding.hpp"
#include "entra_authenticator.hpp"
#include "entra_credential.hpp"
#include "pop.hpp"
#include "test_idp.hpp"

using namespace clusterconnect;
using namespace clusterconnect::entra;
using clusterconnect::entra::test::TestIdp;
namespace fs = std::filesystem;

namespace {

const std::string cluster =
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/prod/providers/Microsoft.Kubernetes/"
    "connectedClusters/prod-eu";
const std::string other_cluster =
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/staging/providers/Microsoft.Kubernetes/"
    "connectedClusters/prod-eu";

#define REQUIRE_IDP()                                                 \
  do {                                                                \
    if (auto why = TestIdp::unavailable()) CLUSTERCONNECT_SKIP(*why); \
  } while (false)

nlohmann::json payload_of(const std::string& jwt) {
  auto first = jwt.find('.');
  auto second = jwt.find('.', first + 1);
  return nlohmann::json::parse(*base64url_decode(jwt.substr(first + 1, second - first - 1)));
}

std::shared_ptr<EntraCredential> make_credential(const nlohmann::json& options, const fs::path& cache_dir = {},
                                                 std::function<void(const DeviceCodePrompt&)> prompt = {}) {
  auto config = parse_credential_options(options, cache_dir);
  INFO((config ? std::string() : config.error()));
  REQUIRE(config);
  if (prompt) config->device_code_prompt = std::move(prompt);
  config->sleep = [](std::chrono::seconds) { std::this_thread::sleep_for(std::chrono::milliseconds(200)); };
  return std::make_shared<EntraCredential>(std::move(*config));
}

AuthOutcome validate(const TestIdp& idp, const std::string& token, bool pop) {
  asio::io_context io;
  auto config = parse_authenticator_options({{"tenants", {idp.tenant()}},
                                             {"authority", idp.authority()},
                                             {"allow_http_loopback", true},
                                             {"pop", pop},
                                             {"cluster_resource_id", cluster}});
  REQUIRE(config);
  auto auth = std::make_shared<EntraAuthenticator>(io, std::move(*config));
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

}  // namespace

TEST_CASE("auth-entra/idp: a PoP token from the identity provider, signed for one cluster, is accepted there only",
          "[auth-entra][idp][pop]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path());
  const auto& c = idp.state()["clients"]["secret"];
  nlohmann::json options = {{"tenant_id", idp.tenant()},   {"authority", idp.authority()},
                            {"allow_http_loopback", true}, {"method", "client-secret"},
                            {"client_id", c["client_id"]}, {"client_secret", c["client_secret"]}};
  auto cred = make_credential(options, dir.path() / "cache");

  auto token = cred->get_pop_token(arc_server_app_id);
  INFO((token ? std::string() : token.error()));
  REQUIRE(token);
  auto signer = cred->pop_signer();
  REQUIRE(signer);
  // Bound to the credential's key, as Entra binds it.
  CHECK(payload_of(token->token)["cnf"] == nlohmann::json{{"kid", signer->thumbprint()}});

  auto shr = signer->sign_request(token->token, cluster);
  REQUIRE(shr);
  auto out = validate(idp, *shr, true);
  INFO(out.message);
  REQUIRE(out.ok());
  CHECK(out.identity.uid == c["oid"]);

  // Signed for another cluster: refused there.
  auto elsewhere = validate(idp, *signer->sign_request(token->token, other_cluster), true);
  CHECK(elsewhere.failure == AuthFailure::wrong_cluster);
  // The PoP token alone, as a bearer token: refused in PoP mode.
  CHECK(validate(idp, token->token, true).failure == AuthFailure::pop_required);

  // Cached in memory for this key; a bearer request gets a bearer token, and
  // the PoP token is never written to the cache file.
  auto again = cred->get_pop_token(arc_server_app_id);
  REQUIRE(again);
  CHECK(again->token == token->token);
  auto bearer = cred->get_token(arc_server_app_id);
  REQUIRE(bearer);
  CHECK_FALSE(payload_of(bearer->token).contains("cnf"));
  CHECK(validate(idp, bearer->token, false).ok());
  CHECK(validate(idp, bearer->token, true).failure == AuthFailure::pop_required);
  const auto cache_text = entra::test::slurp(dir.path() / "cache" / "entra-token-cache.json");
  CHECK(cache_text.find(bearer->token) != std::string::npos);
  CHECK(cache_text.find(token->token) == std::string::npos);

  // Another process has another key: its PoP token is bound to that one, and
  // the first process's token does not verify with it.
  auto second = make_credential(options, dir.path() / "cache");
  auto token2 = second->get_pop_token(arc_server_app_id);
  REQUIRE(token2);
  CHECK(token2->token != token->token);
  CHECK(payload_of(token2->token)["cnf"]["kid"] == second->pop_signer()->thumbprint());
  CHECK(second->pop_signer()->thumbprint() != signer->thumbprint());
  auto mixed = validate(idp, *second->pop_signer()->sign_request(token->token, cluster), true);
  CHECK(mixed.failure == AuthFailure::bad_signature);
  CHECK(validate(idp, *second->pop_signer()->sign_request(token2->token, cluster), true).ok());
}

TEST_CASE(
    "auth-entra/idp: a device-code PoP sign-in is refreshed with the key, and a new process reuses the refresh token",
    "[auth-entra][idp][pop]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path(), {{"device_interval", 1}});
  nlohmann::json options = {{"tenant_id", idp.tenant()},
                            {"authority", idp.authority()},
                            {"allow_http_loopback", true},
                            {"method", "device-code"},
                            {"client_id", idp.state()["clients"]["public"]["client_id"]}};
  std::promise<DeviceCodePrompt> prompted;
  std::atomic<int> prompts{0};
  auto cred = make_credential(options, dir.path() / "cache", [&](const DeviceCodePrompt& p) {
    if (prompts++ == 0) prompted.set_value(p);
  });
  auto pending = std::async(std::launch::async, [&] { return cred->get_pop_token(arc_server_app_id); });
  auto prompt_future = prompted.get_future();
  REQUIRE(prompt_future.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  idp.admin("device/complete", {{"user_code", prompt_future.get().user_code}});
  REQUIRE(pending.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
  auto token = pending.get();
  INFO((token ? std::string() : token.error()));
  REQUIRE(token);
  auto out = validate(idp, *cred->pop_signer()->sign_request(token->token, cluster), true);
  INFO(out.message);
  REQUIRE(out.ok());
  CHECK(out.identity.user == "alice@contoso.example");

  // A new process (a new key) signs in from the shared refresh token, without
  // a prompt, and gets a token bound to its own key.
  auto later = make_credential(options, dir.path() / "cache", [&](const DeviceCodePrompt&) { ++prompts; });
  auto token2 = later->get_pop_token(arc_server_app_id);
  INFO((token2 ? std::string() : token2.error()));
  REQUIRE(token2);
  CHECK(prompts == 1);
  CHECK(payload_of(token2->token)["cnf"]["kid"] == later->pop_signer()->thumbprint());
  CHECK(validate(idp, *later->pop_signer()->sign_request(token2->token, cluster), true).ok());
  CHECK(entra::test::slurp(dir.path() / "cache" / "entra-token-cache.json").find(token2->token) == std::string::npos);
}

TEST_CASE("auth-entra/idp: an identity provider without PoP support is reported, not used as if it had it",
          "[auth-entra][idp][pop]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path(), {{"pop", false}});
  const auto& c = idp.state()["clients"]["secret"];
  nlohmann::json options = {{"tenant_id", idp.tenant()},   {"authority", idp.authority()},
                            {"allow_http_loopback", true}, {"method", "client-secret"},
                            {"client_id", c["client_id"]}, {"client_secret", c["client_secret"]}};
  auto cred = make_credential(options);
  auto token = cred->get_pop_token(arc_server_app_id);
  REQUIRE_FALSE(token);
  CHECK(token.error().find("does not support PoP tokens") != std::string::npos);
  CHECK(token.error().find("without --pop") != std::string::npos);
  // Bearer sign-in still works.
  CHECK(cred->get_token(arc_server_app_id));
}
