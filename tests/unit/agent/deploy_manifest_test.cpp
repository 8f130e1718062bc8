// The manifests under deploy/ must match the agent they deploy: every flag in
// the Deployment exists, and the ClusterRole grants exactly the impersonation
// the agent performs.

#include <catch2/catch.hpp>

#include <regex>
#include <set>

#include <yaml-cpp/yaml.h>

#include "../../support/test_env.hpp"

using namespace clusterconnect::test;

namespace {
std::vector<YAML::Node> documents() { return YAML::LoadAllFromFile((source_dir() / "deploy" / "clusterconnect-agent.yaml").string()); }
YAML::Node find_kind(const std::string& kind) {
  for (auto& d : documents())
    if (d["kind"].as<std::string>() == kind) return d;
  FAIL("no " << kind << " in deploy/clusterconnect-agent.yaml");
  return {};
}
}  // namespace

TEST_CASE("every flag in the Deployment is one the agent accepts", "[agent][deploy]") {
  auto help = run(quote((stage_dir() / "bin" / "clusterconnect-agent").string()) + " --help");
  REQUIRE(help.status == 0);
  auto deployment = find_kind("Deployment");
  CHECK(deployment["spec"]["replicas"].as<int>() == 2);
  auto container = deployment["spec"]["template"]["spec"]["containers"][0];
  auto args = container["args"];
  REQUIRE(args.size() > 3);
  for (const auto& a : args) {
    auto arg = a.as<std::string>();
    auto flag = arg.substr(0, arg.find('='));
    INFO(flag);
    // The whole flag, not a prefix of a longer one.
    const std::regex exact("(^|[\\s,])" + flag + "([\\s=,]|$)");
    CHECK(std::regex_search(help.output, exact));
  }
  CHECK(deployment["spec"]["template"]["spec"]["serviceAccountName"].as<std::string>() == "clusterconnect-agent");
}

TEST_CASE("the ClusterRole lets the agent impersonate users, groups, uids and the extras it sets, and nothing else", "[agent][deploy]") {
  auto role = find_kind("ClusterRole");
  std::set<std::string> granted;
  for (const auto& rule : role["rules"]) {
    std::vector<std::string> verbs = rule["verbs"].as<std::vector<std::string>>();
    CHECK(verbs == std::vector<std::string>{"impersonate"});
    for (const auto& g : rule["apiGroups"])
      for (const auto& r : rule["resources"]) granted.insert(g.as<std::string>() + "/" + r.as<std::string>());
  }
  // Never service accounts: a caller must not become one of the cluster's workloads.
  CHECK(granted == std::set<std::string>{"/users", "/groups", "authentication.k8s.io/uids",
                                         "authentication.k8s.io/userextras/oid", "authentication.k8s.io/userextras/tid"});
  auto binding = find_kind("ClusterRoleBinding");
  CHECK(binding["roleRef"]["name"].as<std::string>() == role["metadata"]["name"].as<std::string>());
  CHECK(binding["subjects"][0]["name"].as<std::string>() == "clusterconnect-agent");
}

TEST_CASE("deploy/ is a kustomize base that builds the same objects as the manifest", "[agent][deploy]") {
  if (run("kubectl version --client >/dev/null 2>&1").status != 0) CLUSTERCONNECT_SKIP("kubectl is not installed");
  auto built = run("kubectl kustomize " + quote((source_dir() / "deploy").string()));
  REQUIRE(built.status == 0);
  auto kustomized = YAML::LoadAll(built.output);
  std::set<std::string> from_base, from_file;
  for (const auto& d : kustomized)
    from_base.insert(d["kind"].as<std::string>() + "/" + d["metadata"]["name"].as<std::string>());
  for (const auto& d : documents()) from_file.insert(d["kind"].as<std::string>() + "/" + d["metadata"]["name"].as<std::string>());
  CHECK(from_base == from_file);
  CHECK(from_base.count("Deployment/clusterconnect-agent") == 1);
  CHECK(from_base.count("ClusterRoleBinding/clusterconnect-agent-impersonator") == 1);
}
