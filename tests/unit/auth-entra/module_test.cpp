// The built module as a host loads it: both capabilities are there and
// create objects from options, refusing bad options with a message.

#include <catch2/catch.hpp>

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "clusterconnect/authenticator.hpp"
#include "clusterconnect/credential.hpp"
#include "clusterconnect/host/runtime.hpp"
#include "../../support/authenticate.hpp"

using namespace clusterconnect;

TEST_CASE("auth-entra: the module provides authenticator:entra and credential:entra", "[auth-entra][module]") {
  auto logger = std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  host::Runtime rt(logger, 1);
  const std::filesystem::path module = std::filesystem::path(AUTH_ENTRA_MODULE_FILE);
  REQUIRE(rt.loader().load_file(module, rt));

  auto authn = rt.capabilities().authenticator("entra");
  REQUIRE(authn);
  auto refused = authn->create(nlohmann::json::object());
  REQUIRE_FALSE(refused);
  CHECK(refused.error().find("tenants") != std::string::npos);
  auto created = authn->create({{"tenants", {"72f988bf-86f1-41af-91ab-2d7cd011db47"}}});
  REQUIRE(created);

  // A token that is not a JWT completes at once, with no key fetch.
  rt.start();
  CHECK(clusterconnect::test::authenticate_on_host(*created.value(), "opaque").failure == AuthFailure::not_applicable);

  auto cred = rt.capabilities().credential("entra");
  REQUIRE(cred);
  auto device = cred->create({{"method", "device-code"}, {"tenant_id", "contoso.onmicrosoft.com"}});
  REQUIRE(device);
  CHECK(device.value()->method() == "device-code");
  CHECK_FALSE(cred->create({{"method", "client-secret"}, {"tenant_id", "t"}, {"client_id", ""}}));
  rt.stop();
}
