#include <catch2/catch.hpp>

#include "actions_id_token.hpp"

using namespace clusterconnect::auth;

TEST_CASE("auth-common: the runner's token URL gets its audience after ? or &", "[auth-common][github-actions]") {
  const std::string aud = "api://AzureADTokenExchange";
  CHECK(actions_id_token_url("https://runner.example/idtoken?api-version=2.0", aud) ==
        "https://runner.example/idtoken?api-version=2.0&audience=api%3A%2F%2FAzureADTokenExchange");
  CHECK(actions_id_token_url("https://runner.example/idtoken", aud) ==
        "https://runner.example/idtoken?audience=api%3A%2F%2FAzureADTokenExchange");
  CHECK(actions_id_token_url("https://runner.example/idtoken?", aud) ==
        "https://runner.example/idtoken?audience=api%3A%2F%2FAzureADTokenExchange");
  CHECK(actions_id_token_url("https://runner.example/idtoken?a=1&", aud) ==
        "https://runner.example/idtoken?a=1&audience=api%3A%2F%2FAzureADTokenExchange");
}

TEST_CASE("auth-common: the runner's request token goes only to https or a loopback test endpoint", "[auth-common][github-actions]") {
  HttpPolicy strict;
  CHECK(check_actions_id_token_url("https://pipelines.actions.githubusercontent.com/x?api-version=2.0", strict));
  CHECK_FALSE(check_actions_id_token_url("http://127.0.0.1:1/x", strict));
  HttpPolicy loopback;
  loopback.allow_http_loopback = true;
  CHECK(check_actions_id_token_url("http://127.0.0.1:1/x", loopback));
  auto remote = check_actions_id_token_url("http://runner.example/x", loopback);
  REQUIRE_FALSE(remote);
  CHECK(remote.error().find("only over https") != std::string::npos);
  CHECK_FALSE(check_actions_id_token_url("ftp://runner.example/x", loopback));
}
