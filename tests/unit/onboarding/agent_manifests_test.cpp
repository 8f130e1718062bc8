// What `connectedk8s connect` installs: the deploy/ base's objects plus the
// Secrets and ConfigMap they mount, secrets redacted unless asked for, and an
// agent identity whose public key the relay pins.
#include <catch2/catch.hpp>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include <yaml-cpp/yaml.h>

#include "../../support/test_env.hpp"
#include "agent_identity.hpp"
#include "agent_manifests.hpp"
#include "clusterconnect/certificates.hpp"
#include "connected_clusters.hpp"
#include "kube_client.hpp"

using namespace clusterconnect;
using namespace clusterconnect::onboarding;
using namespace clusterconnect::test;

namespace {

AgentInstall sample(const AgentIdentity& id) {
  AgentInstall i;
  i.relay_url = "wss://relay.example:8443/$hc/clusters/s/g/store1";
  i.tenant = "tenant-1";
  i.listen_key = "LISTEN-KEY-VALUE";
  i.agent_cert_pem = id.cert_pem;
  i.agent_key_pem = id.key_pem;
  i.relay_ca_pem = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n";
  return i;
}

std::string key_of(const YAML::Node& o) {
  return o["kind"].as<std::string>() + "/" + o["metadata"]["name"].as<std::string>();
}

}  // namespace

TEST_CASE("connect installs the kustomize base's objects and the Secrets and ConfigMap they mount",
          "[onboarding][deploy]") {
  auto id = create_agent_identity("clusterconnect-agent store1", 30);
  REQUIRE(id);
  auto objects = agent_objects(sample(id.value()), false);
  std::set<std::string> rendered;
  for (const auto& o : objects) rendered.insert(key_of(o));
  CHECK(key_of(objects.front()) == "Namespace/clusterconnect");
  CHECK(key_of(objects.back()) == "Deployment/clusterconnect-agent");

  if (run("kubectl version --client >/dev/null 2>&1").status != 0) CLUSTERCONNECT_SKIP("kubectl is not installed");
  auto built = run("kubectl kustomize " + quote((source_dir() / "deploy").string()));
  REQUIRE(built.status == 0);
  std::set<std::string> base;
  for (const auto& d : YAML::LoadAll(built.output)) base.insert(key_of(d));
  std::set<std::string> expected = base;
  expected.insert({"Secret/relay-listen-key", "Secret/agent-identity", "ConfigMap/relay-ca"});
  CHECK(rendered == expected);
}

TEST_CASE("the Deployment dials the cluster's hybrid connection with 2 replicas", "[onboarding][deploy]") {
  auto id = create_agent_identity("clusterconnect-agent store1", 30);
  REQUIRE(id);
  for (const auto& o : agent_objects(sample(id.value()), true)) {
    if (o["kind"].as<std::string>() != "Deployment") continue;
    CHECK(o["spec"]["replicas"].as<int>() == 2);
    std::map<std::string, std::string> env;
    for (const auto& e : o["spec"]["template"]["spec"]["containers"][0]["env"])
      env[e["name"].as<std::string>()] = e["value"].as<std::string>();
    CHECK(env["RELAY_URL"] == "wss://relay.example:8443/$hc/clusters/s/g/store1");
    CHECK(env["TENANT_ID"] == "tenant-1");
  }
}

TEST_CASE("printed objects hold no secret unless secrets are asked for", "[onboarding][security]") {
  auto id = create_agent_identity("clusterconnect-agent store1", 30);
  REQUIRE(id);
  const auto install = sample(id.value());
  const std::string redacted = agent_objects_yaml(install, true);
  CHECK(redacted.find("LISTEN-KEY-VALUE") == std::string::npos);
  CHECK(redacted.find("PRIVATE KEY") == std::string::npos);
  CHECK(redacted.find(redacted_secret) != std::string::npos);
  // The certificate is public: proxies pin its key.
  CHECK(redacted.find("BEGIN CERTIFICATE") != std::string::npos);
  const std::string shown = agent_objects_yaml(install, false);
  CHECK(shown.find("LISTEN-KEY-VALUE") != std::string::npos);
  CHECK(shown.find("PRIVATE KEY") != std::string::npos);
  // The YAML stream parses back to the same objects.
  CHECK(YAML::LoadAll(shown).size() == agent_objects(install, false).size());
}

TEST_CASE("the agent identity is an EC key whose pin the relay derives from agentPublicKeyCertificate",
          "[onboarding]") {
  auto id = create_agent_identity("clusterconnect-agent store1", 30);
  REQUIRE(id);
  auto pin = tls::public_key_pin(id->cert_pem);
  REQUIRE(pin);
  CHECK(tls::is_public_key_pin(pin.value()));
  // agentPublicKeyCertificate is the DER SPKI whose SHA-256 is that pin.
  const std::string& b64 = id->spki_der_base64;
  std::string der(b64.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(der.data()),
                          reinterpret_cast<const unsigned char*>(b64.data()), static_cast<int>(b64.size()));
  REQUIRE(n > 0);
  der.resize(static_cast<std::size_t>(n) - static_cast<std::size_t>(std::count(b64.end() - 2, b64.end(), '=')));
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(der.data()), der.size(), md);
  std::string hex;
  for (unsigned char c : md) hex += "0123456789abcdef"[c >> 4], hex += "0123456789abcdef"[c & 15];
  CHECK(hex == pin.value());
  auto reloaded = load_agent_identity(id->cert_pem, id->key_pem);
  REQUIRE(reloaded);
  CHECK(reloaded->spki_der_base64 == id->spki_der_base64);
  auto other = create_agent_identity("other", 30);
  REQUIRE(other);
  CHECK_FALSE(load_agent_identity(id->cert_pem, other->key_pem));
  CHECK(other->spki_der_base64 != id->spki_der_base64);
}

TEST_CASE("manifest objects become the JSON the API server takes, at their REST paths", "[onboarding]") {
  auto id = create_agent_identity("a", 1);
  REQUIRE(id);
  AgentInstall install;
  install.relay_url = "wss://r/$hc/x";
  install.tenant = "00000000-0000-0000-0000-000000000000";
  std::map<std::string, std::string> paths;  // by kind/name
  for (const auto& o : agent_objects(install, true)) {
    auto j = object_json(o);
    auto path = object_path(j);
    REQUIRE(path);
    paths[j["kind"].get<std::string>() + "/" + j["metadata"]["name"].get<std::string>()] = path.value();
    if (j["kind"] == "Deployment") {
      CHECK(j["spec"]["replicas"] == 2);
      // YAML 1.1 as kubectl reads it: 0440 is octal.
      CHECK(j["spec"]["template"]["spec"]["volumes"][0]["secret"]["defaultMode"] == 0440);
      // A quoted scalar stays a string, whatever it looks like.
      for (const auto& e : j["spec"]["template"]["spec"]["containers"][0]["env"])
        if (e["name"] == "TENANT_ID") CHECK(e["value"].is_string());
    }
  }
  CHECK(paths["Namespace/clusterconnect"] == "/api/v1/namespaces/clusterconnect");
  CHECK(paths["ServiceAccount/clusterconnect-agent"] ==
        "/api/v1/namespaces/clusterconnect/serviceaccounts/clusterconnect-agent");
  CHECK(paths["Secret/agent-identity"] == "/api/v1/namespaces/clusterconnect/secrets/agent-identity");
  for (const char* role : {"clusterconnect-agent-impersonator", "clusterconnect-agent-node-reader"}) {
    CHECK(paths[std::string("ClusterRole/") + role] == std::string("/apis/rbac.authorization.k8s.io/v1/clusterroles/") + role);
    CHECK(paths[std::string("ClusterRoleBinding/") + role] ==
          std::string("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/") + role);
  }
  CHECK(paths["Deployment/clusterconnect-agent"] ==
        "/apis/apps/v1/namespaces/clusterconnect/deployments/clusterconnect-agent");
  CHECK_FALSE(object_path(nlohmann::json{{"apiVersion", "v1"}, {"kind", "Pod"}, {"metadata", {{"name", "p"}}}}));
}

TEST_CASE("the kubeconfig's context gives the server, CA and credentials, what connect cannot use is refused",
          "[onboarding]") {
  TempDir dir;
  std::ofstream(dir.path() / "ca.crt") << "CA-PEM";
  std::ofstream(dir.path() / "kubeconfig") << R"(apiVersion: v1
kind: Config
current-context: a
clusters:
- name: ca
  cluster: {server: "https://10.0.0.1:6443/", certificate-authority: ca.crt}
- name: insecure
  cluster: {server: "https://10.0.0.2:6443", insecure-skip-tls-verify: true}
contexts:
- name: a
  context: {cluster: ca, user: certs}
- name: b
  context: {cluster: insecure, user: certs}
- name: c
  context: {cluster: ca, user: exec}
users:
- name: certs
  user: {client-certificate-data: Q0VSVA==, client-key-data: S0VZ}
- name: exec
  user: {exec: {command: kubelogin}}
)";
  auto a = load_kube_target(dir.path() / "kubeconfig", "");
  REQUIRE(a);
  CHECK(a->context == "a");
  CHECK(a->server == "https://10.0.0.1:6443");
  CHECK(a->ca_pem == "CA-PEM");
  CHECK(a->client_cert_pem == "CERT");
  CHECK(a->client_key_pem == "KEY");
  auto b = load_kube_target(dir.path() / "kubeconfig", "b");
  REQUIRE_FALSE(b);
  CHECK_THAT(b.error(), Catch::Contains("insecure-skip-tls-verify"));
  auto c = load_kube_target(dir.path() / "kubeconfig", "c");
  REQUIRE_FALSE(c);
  CHECK_THAT(c.error(), Catch::Contains("exec"));
  auto none = load_kube_target(dir.path() / "kubeconfig", "nope");
  REQUIRE_FALSE(none);
  CHECK_THAT(none.error(), Catch::Contains("nope"));
}

TEST_CASE("listKeys' connection string gives the relay, the key and the hybrid connection", "[onboarding]") {
  auto k = parse_connection_string(
      "Endpoint=sb://relay.example:8443/;SharedAccessKeyName=listen;SharedAccessKey=abc=;EntityPath=clusters/s/g/n");
  REQUIRE(k);
  CHECK(k->relay == "relay.example:8443");
  CHECK(k->key_name == "listen");
  CHECK(k->key == "abc=");
  CHECK(k->entity_path == "clusters/s/g/n");
  CHECK_FALSE(
      parse_connection_string("Endpoint=https://relay.example/;SharedAccessKeyName=l;SharedAccessKey=k;EntityPath=e"));
  CHECK_FALSE(parse_connection_string("Endpoint=sb://relay.example/;SharedAccessKeyName=l;EntityPath=e"));
  CHECK(ClusterId{"s", "my group", "n"}.resource_id() ==
        "/subscriptions/s/resourceGroups/my%20group/providers/Microsoft.Kubernetes/connectedClusters/n");
}
