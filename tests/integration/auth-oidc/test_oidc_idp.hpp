#pragma once
// Starts the plain OpenID provider (tests/fixtures/oidc-idp/server.js) for
// one test and gets tokens from it with the client credentials grant.

#include <filesystem>
#include <optional>
#include <string>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../../support/node_fixture.hpp"
#include "../../support/test_env.hpp"
#include "encoding.hpp"
#include "http_client.hpp"

namespace clusterconnect::oidc::test {

class TestOidcIdp {
 public:
  static std::optional<std::string> unavailable() {
    return clusterconnect::test::fixture_modules_unavailable(clusterconnect::test::source_dir());
  }

  explicit TestOidcIdp(const std::filesystem::path& dir) {
    const auto script = clusterconnect::test::source_dir() / "tests" / "fixtures" / "oidc-idp" / "server.js";
    const auto ready = dir / "oidc-idp-ready.json";
    const auto state_dir = dir / "oidc-idp-state";
    process_.start(
        {script.string(), "--port", "0", "--ready-file", ready.string(), "--state-dir", state_dir.string(), "--admin"},
        ready, dir / "oidc-idp.log", [&] {
          std::error_code ignored;
          std::filesystem::remove_all(state_dir, ignored);
        });
    state_ = nlohmann::json::parse(clusterconnect::test::slurp_file(state_dir / "state.json"));
    policy_.allow_http_loopback = true;
    policy_.max_attempts = 1;
  }

  std::string issuer() const { return state_["issuer"]; }
  const nlohmann::json& state() const { return state_; }

  // An access token of client `name` (rs256, es256, unverified) for `audience`.
  std::string token(const std::string& name, const std::string& audience = "kubernetes") const {
    const auto& c = state_["clients"][name];
    auth::HttpClient http(policy_);
    auto r = http.post_form(state_["token_endpoint"].get<std::string>(),
                            auth::form_encode({{"grant_type", "client_credentials"},
                                               {"client_id", c["client_id"].get<std::string>()},
                                               {"client_secret", c["client_secret"].get<std::string>()},
                                               {"resource", state_["audience_prefix"].get<std::string>() + audience}}));
    REQUIRE(r);
    INFO(r->body);
    REQUIRE(r->status == 200);
    return nlohmann::json::parse(r->body)["access_token"].get<std::string>();
  }

  // The provider's published keys.
  nlohmann::json jwks() const {
    auto r = auth::HttpClient(policy_).get(state_["jwks_uri"].get<std::string>());
    REQUIRE(r);
    return nlohmann::json::parse(r->body);
  }

  // POST /__admin/<path>.
  nlohmann::json admin(const std::string& path) const {
    auto r = auth::HttpClient(policy_).post_json(issuer() + "/__admin/" + path, "{}");
    REQUIRE(r);
    REQUIRE(r->status == 200);
    return nlohmann::json::parse(r->body);
  }

 private:
  clusterconnect::test::NodeFixture process_;
  nlohmann::json state_;
  auth::HttpPolicy policy_;
};

}  // namespace clusterconnect::oidc::test
