#include <catch2/catch.hpp>

#include "cluster_report.hpp"

using namespace clusterconnect;
using namespace clusterconnect::agent;

TEST_CASE("the agent's report: version and node capacity from the API server's answers", "[agent][report]") {
  const std::string version = R"({"major":"1","minor":"32","gitVersion":"v1.32.2+k3s1","platform":"linux/amd64"})";
  const std::string nodes = R"({"kind":"NodeList","items":[
    {"metadata":{"name":"a","labels":{}},"spec":{"providerID":"k3s://a"},"status":{"capacity":{"cpu":"4","memory":"8Gi"}}},
    {"metadata":{"name":"b"},"status":{"capacity":{"cpu":"3500m"}}},
    {"metadata":{"name":"c"},"status":{"capacity":{"cpu":"0.5"}}}]})";
  auto r = report_from_api(version, nodes);
  CHECK(r.kubernetes_version == "v1.32.2+k3s1");
  REQUIRE(r.node_count);
  CHECK(*r.node_count == 3);
  REQUIRE(r.core_count);
  CHECK(*r.core_count == 8);
  CHECK(r.distribution == "k3s");
  CHECK(r.infrastructure == "generic");
}

TEST_CASE("the agent's report: guesses from nodes, and nothing from failed or odd answers", "[agent][report]") {
  auto aks = report_from_api(R"({"gitVersion":"v1.30.1"})",
                             R"({"items":[{"metadata":{"labels":{"kubernetes.azure.com/cluster":"mc_x"}},
                                            "spec":{"providerID":"azure:///subscriptions/x"},"status":{"capacity":{"cpu":"2"}}}]})");
  CHECK(aks.distribution == "aks");
  CHECK(aks.infrastructure == "azure");
  auto none = report_from_api("", "");
  CHECK(none.empty());
  auto odd = report_from_api("not json", R"({"items":"nope"})");
  CHECK(odd.kubernetes_version.empty());
  CHECK_FALSE(odd.node_count);
}

TEST_CASE("the agent's report carries the operator's names and its version as handshake headers", "[agent][report]") {
  ClusterReport report("1.2.3", "aks_edge_k3s", "");
  auto latest = report.latest();
  CHECK(latest.agent_version == "1.2.3");
  CHECK(latest.distribution == "aks_edge_k3s");
  auto headers = tunnel::rendezvous::to_headers(latest);
  auto back = tunnel::rendezvous::agent_report_from_headers([&](std::string_view name) {
    for (const auto& [n, v] : headers)
      if (n == name) return v;
    return std::string();
  });
  CHECK(back == latest);
  // A value the relay could not show safely is not sent.
  latest.kubernetes_version = "v1\r\nX-Injected: 1";
  for (const auto& [n, v] : tunnel::rendezvous::to_headers(latest)) CHECK(v.find('\n') == std::string::npos);
}
