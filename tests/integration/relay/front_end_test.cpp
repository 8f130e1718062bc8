// The relay's public port: what it answers before authentication, and the
// budgets that keep unauthenticated clients from crowding out tunnels.

#include <catch2/catch.hpp>


#include "relay_fixture.hpp"
#include "rendezvous_legs.hpp"

using namespace clusterconnect;
using namespace clusterconnect::test;
using namespace std::chrono_literals;

namespace {

void require_curl() {
  if (run("command -v curl").status != 0) FAIL("curl is needed for this test (scripts/setup.sh installs it)");
}

// A TCP connection that says nothing: it holds a place in the relay's
// pre-authentication budget until the relay's handshake timeout.
using SilentConnection = Fd;

std::string curl(const RelayProcess& relay, const std::string& args) {
  auto r = run("curl -sS --max-time 20 -o - -w '\\n%{http_code}' --cacert " + quote(relay.ca_file()) + " " + args);
  return r.output;
}

std::string status_of(const std::string& curl_output) { return curl_output.substr(curl_output.rfind('\n') + 1); }

}  // namespace

TEST_CASE("the public port does not serve /metrics, the metrics listener does", "[relay][security]") {
  require_curl();
  RelayProcess relay;
  CHECK(status_of(curl(relay, "https://" + relay.host() + "/metrics")) == "404");
  CHECK(status_of(curl(relay, "https://" + relay.host() + "/healthz")) == "200");
  auto metrics = run("curl -sS --max-time 20 " + quote(relay.metrics_url()));
  REQUIRE(metrics.status == 0);
  CHECK_THAT(metrics.output, Catch::Contains("clusterconnect_relay_listeners{hybrid_connection=\"" + demo_path + "\""));
  CHECK(run("curl -sS --max-time 20 " + quote(relay.metrics_url("/readyz"))).output == "ready\n");
  CHECK_THAT(run("curl -sS --max-time 20 -X POST " + quote(relay.metrics_url())).output, Catch::Contains("GET only"));
}

TEST_CASE("a tunnel handshake with a body is refused before the body is read, management bodies are bounded",
          "[relay][security]") {
  require_curl();
  RelayProcess relay;
  const std::string hc = "https://" + relay.host() + "/$hc/" + demo_path + "?sb-hc-action=connect";
  auto with_body = curl(relay, "-X GET --data-binary 'hello' -H 'Connection: Upgrade' -H 'Upgrade: websocket' " + quote(hc));
  CHECK(status_of(with_body) == "400");
  CHECK_THAT(with_body, Catch::Contains("carries no body"));
  // 17 KiB to the management API: refused as too large, answered in ARM's error shape.
  const std::string big(17 * 1024, 'x');
  auto large = curl(relay, "-X POST --data-binary " + quote(big) + " https://" + relay.host() +
                               "/subscriptions/s/resourceGroups/g/providers/Microsoft.Kubernetes/connectedClusters/c/"
                               "listClusterUserCredential?api-version=2021-10-01");
  CHECK(status_of(large) == "413");
  CHECK_THAT(large, Catch::Contains("16 KiB"));
}

TEST_CASE("one address cannot take the whole budget of connections that are not tunnels", "[relay][security]") {
  require_curl();
  nlohmann::json config{{"clusters",
                         {{{"subscription", "s"},
                           {"resource_group", "g"},
                           {"name", "demo"},
                           {"hybrid_connection", demo_path},
                           {"keys", {{{"name", "listen"}, {"rights", {"listen"}}, {"secret_file", "listen.key"}}}}}}},
                        {"limits", {{"max_connections_per_address", 3}}}};
  AgentKey key("demo agent");
  config["clusters"][0]["agent_key_pins"] = {key.pin};
  RelayProcess relay(config, {{"listen.key", "listen-secret\n"}, {"agent.crt", key.pem.cert}, {"agent.key", key.pem.key}});
  // Established control channels leave the budget: three from this address,
  // then three silent connections, and the budget is just full.
  ModuleHost host;
  Agent agent;
  ListenOptions o;
  o.endpoint = relay.endpoint();
  o.token = [&relay] { return relay.listen_token(); };
  o.tunnels = 3;
  relay.set_agent_identity(o);
  auto listener = host.transport().listen(std::move(o), agent.handler());
  REQUIRE(listener);
  REQUIRE(wait_until([&] { return listener->status().tunnels_up == 3; }, 20s));
  // The agent sees its 101 a moment before the relay files the channel and
  // lets go of the connection's place in the budget.
  REQUIRE(wait_until([&] { return relay.listeners() == 3 && relay.connections_active() == 0; }, 20s));
  std::vector<std::unique_ptr<SilentConnection>> silent;
  for (int i = 0; i < 3; ++i) silent.push_back(std::make_unique<SilentConnection>(relay.port()));
  // Accepted in order: once the relay has counted the three, the next is refused.
  REQUIRE(wait_until([&] { return relay.connections_active() == 3; }, 20s));
  CHECK(status_of(curl(relay, "https://" + relay.host() + "/healthz")) != "200");
  CHECK_THAT(run("curl -sS --max-time 10 " + quote(relay.metrics_url())).output,
             Catch::Contains("clusterconnect_relay_handshake_failures_total{reason=\"address_limit\"} 1"));
  silent.pop_back();
  CHECK(wait_until([&] { return status_of(curl(relay, "https://" + relay.host() + "/healthz")) == "200"; }, 20s));
  CHECK(listener->status().tunnels_up == 3);
  listener->close();
}
