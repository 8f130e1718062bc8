// connect's API-server client against the stand-in kube-apiserver: the
// kubeconfig's credentials, server-side apply that creates and then updates,
// reading a Secret back (connect reuses the agent's key from it), and the
// API server's refusal reported in its own words.
#include <catch2/catch.hpp>

#include <fstream>

#include <openssl/evp.h>

#include <yaml-cpp/yaml.h>

#include "agent_identity.hpp"
#include "agent_manifests.hpp"
#include "clusterconnect/certificates.hpp"
#include "kube_client.hpp"
#include "node_fixture.hpp"
#include "test_env.hpp"

using namespace clusterconnect;
using namespace clusterconnect::onboarding;
using namespace clusterconnect::test;

namespace {

std::string base64(const std::string& in) {
  std::string out(4 * ((in.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

struct StandInApiServer {
  TempDir dir;
  NodeFixture node;
  int port = 0;
  std::string ca_pem;

  StandInApiServer() {
    auto ca = tls::create_ca("stand-in apiserver CA", 1);
    REQUIRE(ca);
    auto server = tls::issue_server_cert(ca.value(), {"localhost"}, {"127.0.0.1"}, 1);
    REQUIRE(server);
    ca_pem = ca->cert;
    std::ofstream(dir.path() / "server.crt") << server->cert;
    std::ofstream(dir.path() / "server.key") << server->key;
    std::ofstream(dir.path() / "tokens.json") << R"({"tokens": [
      {"token": "admin-token", "user": "admin", "groups": ["system:masters"]},
      {"token": "viewer-token", "user": "viewer"}]})";
    const auto ready = dir.path() / "ready.json";
    node.start({(source_dir() / "tests/fixtures/apiserver/server.js").string(), "--port", "0", "--cert",
                (dir.path() / "server.crt").string(), "--key", (dir.path() / "server.key").string(), "--tokens",
                (dir.path() / "tokens.json").string(), "--ready-file", ready.string()},
               ready, dir.path() / "apiserver.log", [] {});
    port = nlohmann::json::parse(slurp_file(ready))["port"].get<int>();
  }

  std::filesystem::path kubeconfig(const std::string& token) {
    const auto file = dir.path() / ("kubeconfig-" + token);
    std::ofstream(file)
        << "apiVersion: v1\nkind: Config\ncurrent-context: sandbox\nclusters:\n- name: sandbox\n  cluster:\n"
           "    server: https://127.0.0.1:"
        << port << "\n    certificate-authority-data: " << base64(ca_pem)
        << "\ncontexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    user: u\nusers:\n- name: u\n"
           "  user:\n    token: "
        << token << "\n";
    return file;
  }
};

std::vector<nlohmann::json> installable(const AgentInstall& install) {
  std::vector<nlohmann::json> out;
  for (const auto& o : agent_objects(install, false)) out.push_back(object_json(o));
  return out;
}

}  // namespace

TEST_CASE("connect applies its objects with the kubeconfig's credentials, applying again updates them",
          "[onboarding][integration]") {
  if (run("node --version >/dev/null 2>&1").status != 0) CLUSTERCONNECT_SKIP("node is not installed");
  StandInApiServer api;
  auto target = load_kube_target(api.kubeconfig("admin-token"), "");
  REQUIRE(target);
  CHECK(target->context == "sandbox");

  auto id = create_agent_identity("clusterconnect-agent store1", 30);
  REQUIRE(id);
  AgentInstall install;
  install.relay_url = "wss://relay.example/$hc/clusters/s/g/store1";
  install.listen_key = "first-listen-key";
  install.agent_cert_pem = id->cert_pem;
  install.agent_key_pem = id->key_pem;
  auto objects = installable(install);
  REQUIRE(objects.size() == 10);
  for (const auto& o : objects) {
    auto applied = apply_object(target.value(), o);
    INFO(o["kind"].get<std::string>());
    REQUIRE(applied);
  }
  auto secret = get_object(target.value(), "/api/v1/namespaces/clusterconnect/secrets/agent-identity");
  REQUIRE(secret);
  REQUIRE(secret->has_value());
  // What a second connect reads back to keep the agent's key.
  auto cert = secret_data(**secret, "tls.crt");
  auto key = secret_data(**secret, "tls.key");
  REQUIRE(cert);
  REQUIRE(key);
  auto reused = load_agent_identity(*cert, *key);
  REQUIRE(reused);
  CHECK(reused->spki_der_base64 == id->spki_der_base64);

  // Applying again (a new listen key) updates in place.
  install.listen_key = "second-listen-key";
  for (const auto& o : installable(install)) REQUIRE(apply_object(target.value(), o));
  auto listen = get_object(target.value(), "/api/v1/namespaces/clusterconnect/secrets/relay-listen-key");
  REQUIRE(listen);
  REQUIRE(listen->has_value());
  CHECK(secret_data(**listen, "listen.key") == std::optional<std::string>("second-listen-key"));

  auto deployment =
      get_object(target.value(), "/apis/apps/v1/namespaces/clusterconnect/deployments/clusterconnect-agent");
  REQUIRE(deployment);
  REQUIRE(deployment->has_value());
  CHECK((**deployment)["spec"]["replicas"] == 2);
  auto binding = get_object(target.value(),
                            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/clusterconnect-agent-impersonator");
  REQUIRE(binding);
  CHECK(binding->has_value());

  auto absent = get_object(target.value(), "/api/v1/namespaces/clusterconnect/secrets/nothing-here");
  REQUIRE(absent);
  CHECK_FALSE(absent->has_value());

  // What `connectedk8s delete` does on the cluster's side: every object, then nothing left.
  for (auto it = objects.rbegin(); it != objects.rend(); ++it) {
    auto path = object_path(*it);
    REQUIRE(path);
    auto gone = delete_object(target.value(), path.value());
    INFO(path.value());
    REQUIRE(gone);
    CHECK(gone.value());
    auto again = delete_object(target.value(), path.value());
    REQUIRE(again);
    CHECK_FALSE(again.value());
  }
  auto after = get_object(target.value(), "/apis/apps/v1/namespaces/clusterconnect/deployments/clusterconnect-agent");
  REQUIRE(after);
  CHECK_FALSE(after->has_value());
}

TEST_CASE("the API server's refusal is reported in its words", "[onboarding][integration]") {
  if (run("node --version >/dev/null 2>&1").status != 0) CLUSTERCONNECT_SKIP("node is not installed");
  StandInApiServer api;
  auto viewer = load_kube_target(api.kubeconfig("viewer-token"), "");
  REQUIRE(viewer);
  nlohmann::json ns{{"apiVersion", "v1"}, {"kind", "Namespace"}, {"metadata", {{"name", "clusterconnect"}}}};
  auto refused = apply_object(viewer.value(), ns);
  REQUIRE_FALSE(refused);
  CHECK_THAT(refused.error(), Catch::Contains("forbidden"));
  // A server that does not trust us: no certificate-authority, the system store refuses the stand-in.
  auto other = viewer.value();
  other.ca_pem.clear();
  auto untrusted = apply_object(other, ns);
  REQUIRE_FALSE(untrusted);
  CHECK_THAT(untrusted.error(), Catch::Contains("127.0.0.1"));
}
