// Which clusters one proxy serves and what the kubeconfig calls them; the
// connected clusters' resource IDs as ARM lists them.

#include <catch2/catch.hpp>

#include "cluster_selection.hpp"
#include "management_client.hpp"

using namespace clusterconnect::proxy;

namespace {
const std::string sub = "00000000-0000-0000-0000-00000000c0de";
}

TEST_CASE("bare names take the group of -g and GROUP/NAME its own", "[proxy][clusters]") {
  auto r = select_clusters({"a", "prod/b", "c"}, "dev", sub);
  REQUIRE(r);
  REQUIRE(r->size() == 3);
  CHECK(r->at(0).resource_group == "dev");
  CHECK(r->at(0).name == "a");
  CHECK(r->at(1).resource_group == "prod");
  CHECK(r->at(1).name == "b");
  CHECK(r->at(2).resource_group == "dev");
  CHECK(r->at(2).subscription == sub);
}

TEST_CASE("a bare name without -g is refused saying both ways to name its group", "[proxy][clusters]") {
  auto r = select_clusters({"prod/b", "a"}, "", sub);
  REQUIRE_FALSE(r);
  CHECK(r.error().find("-g GROUP") != std::string::npos);
  CHECK(r.error().find("-n GROUP/a") != std::string::npos);
  CHECK(select_clusters({"prod/b"}, "", sub));
}

TEST_CASE("malformed cluster names are refused", "[proxy][clusters]") {
  CHECK_FALSE(select_clusters({}, "g", sub));
  CHECK_FALSE(select_clusters({"a/b/c"}, "g", sub));
  CHECK_FALSE(select_clusters({"/b"}, "g", sub));
  CHECK_FALSE(select_clusters({"g/"}, "g", sub));
  CHECK_FALSE(select_clusters({"a b"}, "g", sub));
  CHECK_FALSE(select_clusters({"a?x=1"}, "g", sub));
  CHECK_FALSE(select_clusters({std::string(64, 'a')}, "g", sub));
}

TEST_CASE("the same cluster given twice is served once", "[proxy][clusters]") {
  auto r = select_clusters({"a", "DEV/A", "dev/a", "b"}, "dev", sub);
  REQUIRE(r);
  REQUIRE(r->size() == 2);
  CHECK(r->at(0).name == "a");
  CHECK(r->at(1).name == "b");
}

TEST_CASE("one cluster keeps the single-cluster kubeconfig names", "[proxy][clusters]") {
  auto refs = select_clusters({"demo"}, "sandbox", sub);
  REQUIRE(refs);
  auto one = name_contexts(refs.value(), "");
  REQUIRE(one);
  CHECK(one->at(0).context == "demo");
  CHECK(one->at(0).user == "clusterUser_sandbox_demo");
  auto renamed = name_contexts(refs.value(), "mine");
  REQUIRE(renamed);
  CHECK(renamed->at(0).context == "mine");
}

TEST_CASE("several clusters get a context each and shared names are told apart by group", "[proxy][clusters]") {
  auto refs = select_clusters({"dev/api", "prod/api", "dev/web"}, "", sub);
  REQUIRE(refs);
  auto named = name_contexts(refs.value(), "");
  REQUIRE(named);
  CHECK(named->at(0).context == "dev/api");
  CHECK(named->at(1).context == "prod/api");
  CHECK(named->at(2).context == "web");
  CHECK(named->at(0).user != named->at(1).user);
  auto refused = name_contexts(refs.value(), "one");
  REQUIRE_FALSE(refused);
  CHECK(refused.error().find("--kube-context") != std::string::npos);
}

TEST_CASE("resource IDs from the list name subscription group and cluster", "[proxy][clusters]") {
  auto ok = parse_cluster_id("/subscriptions/" + sub + "/resourcegroups/Dev/providers/microsoft.kubernetes/connectedClusters/api");
  REQUIRE(ok);
  CHECK(ok->subscription == sub);
  CHECK(ok->resource_group == "Dev");
  CHECK(ok->name == "api");
  CHECK_FALSE(parse_cluster_id("/subscriptions/" + sub + "/resourceGroups/dev/providers/Microsoft.Compute/virtualMachines/x"));
  CHECK_FALSE(parse_cluster_id("/subscriptions/" + sub + "/resourceGroups/dev"));
  CHECK_FALSE(parse_cluster_id("subscriptions/" + sub + "/resourceGroups/dev/providers/Microsoft.Kubernetes/connectedClusters/a"));
  CHECK_FALSE(parse_cluster_id("/subscriptions/" + sub + "/resourceGroups//providers/Microsoft.Kubernetes/connectedClusters/a"));
}
