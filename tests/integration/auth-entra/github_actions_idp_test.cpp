// CI without secrets: the credential takes the GitHub Actions runner's OIDC
// token (from the stand-in for the runner's token endpoint) as a federated
// client assertion, and the test identity provider checks it against the
// workload-identity client's federated credentials as Entra ID does.

#include <catch2/catch.hpp>

#include "../../support/actions_oidc_fixture.hpp"
#include "entra_authenticator.hpp"
#include "entra_credential.hpp"
#include "test_idp.hpp"

using namespace clusterconnect;
using namespace clusterconnect::entra;
using clusterconnect::entra::test::TestIdp;
using clusterconnect::test::ActionsOidcStandIn;
using clusterconnect::test::ScopedEnv;

namespace {

const std::string main_branch_subject = "repo:contoso/deployments:ref:refs/heads/main";

#define REQUIRE_IDP() \
  if (auto why = TestIdp::unavailable()) CLUSTERCONNECT_SKIP(*why)

// The runner's variables, as a job with `permissions: id-token: write` has them.
struct RunnerEnv {
  RunnerEnv(const ActionsOidcStandIn& runner, const std::string& token)
      : url("ACTIONS_ID_TOKEN_REQUEST_URL", runner.request_url()), token_("ACTIONS_ID_TOKEN_REQUEST_TOKEN", token) {}
  ScopedEnv url;
  ScopedEnv token_;
};

nlohmann::json options_for(const TestIdp& idp) {
  return {{"tenant_id", idp.tenant()},
          {"authority", idp.authority()},
          {"allow_http_loopback", true},
          {"client_id", idp.state()["clients"]["federated"]["client_id"]}};
}

Result<AccessToken> sign_in(const nlohmann::json& options) {
  auto config = parse_credential_options(options, {});
  if (!config) return fail(config.error());
  return std::make_shared<EntraCredential>(std::move(*config))->get_token(arc_server_app_id);
}

AuthOutcome validate(const TestIdp& idp, const std::string& token) {
  asio::io_context io;
  auto config = parse_authenticator_options({{"tenants", {idp.tenant()}}, {"authority", idp.authority()}, {"allow_http_loopback", true}});
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

int refusals(const TestIdp& idp) { return idp.admin("state", nullptr)["federation_refusals"].get<int>(); }

}  // namespace

TEST_CASE("auth-entra/github-actions: the runner's OIDC token signs in without a secret", "[auth-entra][idp][credential][github-actions]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  ActionsOidcStandIn runner(dir.path());
  REQUIRE(runner.subject() == main_branch_subject);
  TestIdp idp(dir.path(), {{"federated_credentials", {{{"issuer", runner.issuer()}, {"subject", main_branch_subject}}}}});
  RunnerEnv env(runner, runner.request_token());

  // `auto` finds the runner's variables (client and tenant given).
  auto config = parse_credential_options(options_for(idp), {});
  INFO((config ? std::string() : config.error()));
  REQUIRE(config);
  CHECK(config->method == "github-actions");
  auto cred = std::make_shared<EntraCredential>(std::move(*config));
  auto token = cred->get_token(arc_server_app_id);
  INFO((token ? std::string() : token.error()));
  REQUIRE(token);
  auto out = validate(idp, token->token);
  INFO(out.message);
  REQUIRE(out.ok());
  CHECK(out.identity.uid == idp.state()["clients"]["federated"]["oid"]);
  CHECK(idp.admin("state", nullptr)["federated_sign_ins"] == 1);
  CHECK(runner.id_token_requests() == 1);

  // The access token is cached; the runner is not asked again for it.
  REQUIRE(cred->get_token(arc_server_app_id));
  CHECK(runner.id_token_requests() == 1);

  // Every exchange asks the runner for a fresh token (they live minutes).
  auto other = cred->get_token("https://management.core.windows.net/");
  INFO((other ? std::string() : other.error()));
  REQUIRE(other);
  CHECK(runner.id_token_requests() == 2);
  CHECK(idp.admin("state", nullptr)["federated_sign_ins"] == 2);

  // The explicit method works the same.
  auto options = options_for(idp);
  options["method"] = "github-actions";
  REQUIRE(sign_in(options));
  CHECK(runner.id_token_requests() == 3);
}

TEST_CASE("auth-entra/github-actions: each refusal says what was wrong", "[auth-entra][idp][credential][github-actions]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  ActionsOidcStandIn runner(dir.path());
  ActionsOidcStandIn stranger(dir.path(), "stranger-oidc");
  TestIdp idp(dir.path(), {{"federated_credentials", {{{"issuer", runner.issuer()}, {"subject", main_branch_subject}}}}});
  const auto options = options_for(idp);
  auto no_secret_in = [&](const std::string& error) {
    CHECK(error.find(runner.request_token()) == std::string::npos);
    CHECK(error.find(stranger.request_token()) == std::string::npos);
  };

  SECTION("a wrong request token: the runner refuses") {
    RunnerEnv env(runner, "not-the-request-token");
    auto got = sign_in(options);
    REQUIRE_FALSE(got);
    CHECK(got.error().find("refused the ID token request (HTTP 401)") != std::string::npos);
    CHECK(got.error().find("not-the-request-token") == std::string::npos);
    CHECK(idp.admin("state", nullptr)["token_requests"] == 0);
  }
  SECTION("another branch: no federated credential has that subject") {
    RunnerEnv env(runner, runner.request_token());
    runner.set_job({{"ref", "refs/heads/feature"}});
    auto got = sign_in(options);
    REQUIRE_FALSE(got);
    CHECK(got.error().find("GitHub Actions workload identity sign-in was refused") != std::string::npos);
    CHECK(got.error().find("AADSTS700213") != std::string::npos);
    CHECK(got.error().find("repo:contoso/deployments:ref:refs/heads/feature") != std::string::npos);
    CHECK(refusals(idp) == 1);
    no_secret_in(got.error());
  }
  SECTION("another audience: no federated credential accepts it") {
    RunnerEnv env(runner, runner.request_token());
    auto other = options;
    other["federated_audience"] = "https://github.com/contoso";
    auto got = sign_in(other);
    REQUIRE_FALSE(got);
    CHECK(got.error().find("AADSTS700212") != std::string::npos);
    CHECK(refusals(idp) == 1);
  }
  SECTION("an expired runner token") {
    RunnerEnv env(runner, runner.request_token());
    runner.set_job({{"ttl", -120}});
    auto got = sign_in(options);
    REQUIRE_FALSE(got);
    CHECK(got.error().find("AADSTS700024") != std::string::npos);
    CHECK(refusals(idp) == 1);
  }
  SECTION("an issuer the application does not trust") {
    RunnerEnv env(stranger, stranger.request_token());
    auto got = sign_in(options);
    REQUIRE_FALSE(got);
    CHECK(got.error().find("AADSTS700211") != std::string::npos);
    CHECK(got.error().find(stranger.issuer()) != std::string::npos);
    CHECK(refusals(idp) == 1);
    no_secret_in(got.error());
  }
  SECTION("the runner answers without a token") {
    RunnerEnv env(runner, runner.request_token());
    runner.set_job({{"answer", "no-value"}});
    auto got = sign_in(options);
    REQUIRE_FALSE(got);
    CHECK(got.error().find("without a 'value'") != std::string::npos);
    runner.set_job({{"answer", "not-json"}});
    got = sign_in(options);
    REQUIRE_FALSE(got);
    CHECK(got.error().find("not a JSON object") != std::string::npos);
    CHECK(idp.admin("state", nullptr)["token_requests"] == 0);
  }
  SECTION("the request token is sent over https only") {
    ScopedEnv url("ACTIONS_ID_TOKEN_REQUEST_URL", "http://runner.example/idtoken?api-version=2.0");
    ScopedEnv token("ACTIONS_ID_TOKEN_REQUEST_TOKEN", runner.request_token());
    auto got = sign_in(options);
    REQUIRE_FALSE(got);
    CHECK(got.error().find("must use https") != std::string::npos);
    no_secret_in(got.error());
  }
  SECTION("without the runner's variables the method says what the job needs") {
    auto explicit_method = options;
    explicit_method["method"] = "github-actions";
    auto got = sign_in(explicit_method);
    REQUIRE_FALSE(got);
    CHECK(got.error().find("id-token: write") != std::string::npos);
  }
}

TEST_CASE("auth-entra/idp: a federated token file from an external issuer (Azure Pipelines and GitLab)", "[auth-entra][idp][credential]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  // The stand-in plays GitLab's issuer here: a job's ID token, written to a file
  // as the pipeline's script does.
  ActionsOidcStandIn gitlab(dir.path());
  const std::string gitlab_subject = "project_path:contoso/deployments:ref_type:branch:ref:main";
  gitlab.set_job({{"subject", gitlab_subject}});
  TestIdp idp(dir.path(), {{"federated_credentials", {{{"issuer", gitlab.issuer()}, {"subject", gitlab_subject}}}}});
  auth::HttpPolicy loopback;
  loopback.allow_http_loopback = true;
  auto id_token = auth::fetch_actions_id_token(auth::HttpClient(loopback), {gitlab.request_url(), gitlab.request_token()},
                                               auth::entra_token_exchange_audience);
  INFO((id_token ? std::string() : id_token.error()));
  REQUIRE(id_token);
  const auto file = dir.path() / "federated-token";
  std::ofstream(file) << *id_token;

  auto options = options_for(idp);
  options["federated_token_file"] = file.string();
  auto config = parse_credential_options(options, {});
  REQUIRE(config);
  CHECK(config->method == "workload-identity");
  auto token = std::make_shared<EntraCredential>(std::move(*config))->get_token(arc_server_app_id);
  INFO((token ? std::string() : token.error()));
  REQUIRE(token);
  CHECK(validate(idp, token->token).ok());
  CHECK(idp.admin("state", nullptr)["federated_sign_ins"] == 1);

  // A token of another project is refused with the subject named.
  gitlab.set_job({{"subject", "project_path:contoso/other:ref_type:branch:ref:main"}});
  id_token = auth::fetch_actions_id_token(auth::HttpClient(loopback), {gitlab.request_url(), gitlab.request_token()},
                                          auth::entra_token_exchange_audience);
  REQUIRE(id_token);
  std::ofstream(file, std::ios::trunc) << *id_token;
  auto refused = sign_in(options);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().find("AADSTS700213") != std::string::npos);
  CHECK(refused.error().find("project_path:contoso/other") != std::string::npos);
}
