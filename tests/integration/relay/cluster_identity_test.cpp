// Clusters are known by their full identity, never by name alone: the
// registry refuses one identity twice. (That each one's users reach only
// their own agent is proven end to end, in both rendezvous forms, in
// rendezvous_transport_test.cpp.)

#include <catch2/catch.hpp>

#include "relay_config.hpp"
#include "relay_fixture.hpp"

using namespace clusterconnect;
using namespace clusterconnect::test;

namespace {
const std::string& subscription = prod_subscription;
}  // namespace

TEST_CASE("a registry that names one cluster twice is refused", "[relay][config][security]") {
  nlohmann::json entry{{"subscription", subscription},
                       {"resource_group", "team-a"},
                       {"name", "prod"},
                       {"hybrid_connection", path_a},
                       {"keys", nlohmann::json::array()}};
  auto twin = entry;
  twin["hybrid_connection"] = path_b;
  twin["resource_group"] = "TEAM-A";  // ARM names match case-insensitively
  nlohmann::json config{{"clusters", {entry, twin}}};
  try {
    relay::parse_relay_config(config, ".");
    FAIL("a duplicate cluster identity was accepted");
  } catch (const std::runtime_error& e) {
    CHECK_THAT(e.what(), Catch::Contains("clusters[1]") && Catch::Contains("registered twice"));
  }
}
