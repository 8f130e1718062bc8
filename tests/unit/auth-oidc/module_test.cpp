// The built module as a host loads it: authenticator:oidc is there and
// creates authenticators from options, refusing bad options with a message.

#include <catch2/catch.hpp>

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <cstdlib>

#include "../../support/authenticate.hpp"
#include "clusterconnect/authenticator.hpp"
#include "clusterconnect/credential.hpp"
#include "clusterconnect/host/runtime.hpp"

using namespace clusterconnect;

TEST_CASE("auth-oidc: the module provides authenticator:oidc and credential:oidc", "[auth-oidc][module]") {
  auto logger = std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  host::Runtime rt(logger, 1);
  REQUIRE(rt.loader().load_file(std::filesystem::path(AUTH_OIDC_MODULE_FILE), rt));

  auto authn = rt.capabilities().authenticator("oidc");
  REQUIRE(authn);
  CHECK_FALSE(rt.capabilities().authenticator("entra"));
  auto refused = authn->create({{"issuer", "https://idp.example"}});
  REQUIRE_FALSE(refused);
  CHECK(refused.error().find("client_id") != std::string::npos);
  auto created = authn->create({{"issuer", "https://idp.example"}, {"client_id", "kubernetes"}});
  REQUIRE(created);

  rt.start();
  CHECK(clusterconnect::test::authenticate_on_host(*created.value(), "opaque").failure == AuthFailure::not_applicable);
  rt.stop();

  auto cred = rt.capabilities().credential("oidc");
  REQUIRE(cred);
  auto file = cred->create({{"method", "token-file"}, {"token_file", "/nonexistent/token"}});
  REQUIRE(file);
  CHECK(file.value()->method() == "token-file");
  auto missing = file.value()->get_token("");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().find("/nonexistent/token") != std::string::npos);
  auto no_secret =
      cred->create({{"method", "client-credentials"}, {"issuer", "https://idp.example"}, {"client_id", "c"}});
  if (!std::getenv("OIDC_CLIENT_SECRET")) CHECK_FALSE(no_secret);
  CHECK_FALSE(cred->create({{"method", "password"}}));
}
