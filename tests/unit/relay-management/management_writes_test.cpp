// ARM's PUT and DELETE of a connected cluster, and listKeys, over a file
// store in a temporary directory.
#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "admin_commands.hpp"
#include "management_api.hpp"
#include "registry_store.hpp"
#include "relay_config.hpp"

using namespace clusterconnect;
using namespace clusterconnect::relay;

namespace {

class TableAuthenticator final : public Authenticator {
 public:
  void async_authenticate(std::string token, UniqueFunction<void(AuthOutcome)> handler) noexcept override {
    AuthOutcome o;
    if (token == "alice")
      o.identity = {"alice@contoso.example", "oid-alice", {}, {}};
    else if (token == "bob")
      o.identity = {"bob@contoso.example", "oid-bob", {"group-ops"}, {}};
    else if (token == "carol")
      o.identity = {"carol@contoso.example", "oid-carol", {}, {}};
    else
      o = AuthOutcome{AuthFailure::expired, "the token expired", {}};
    handler(o);
  }
};

const std::string sub = "00000000-0000-0000-0000-0000000000aa";

std::string base64(const std::string& in) {
  std::string out(4 * ((in.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

// A fresh EC P-256 public key, as DER SubjectPublicKeyInfo.
std::string new_agent_spki() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  REQUIRE(key);
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(key, &der);
  REQUIRE(n > 0);
  std::string out(reinterpret_cast<char*>(der), static_cast<std::size_t>(n));
  OPENSSL_free(der);
  EVP_PKEY_free(key);
  return out;
}

struct Relay {
  std::filesystem::path dir;
  std::shared_ptr<RegistryStore> store;
  std::shared_ptr<ManagementApi> api;

  Relay() {
    std::mt19937_64 rng(std::random_device{}());
    dir = std::filesystem::temp_directory_path() / ("cc-mgmt-writes-" + std::to_string(rng()));
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "relay.json") << R"({"clusters": []})";
    store = make_file_store(dir / "relay.json", spdlog::default_logger());
    store->start_watching();
    ManagementOptions options;
    options.public_host = "relay.example:8443";
    options.location = "westeurope";
    options.tenant = "tenant-1";
    options.scoped_role_assignments = {
        {"/subscriptions/" + sub + "/resourceGroups/edge", "oid-alice", "Kubernetes Cluster - Azure Arc Onboarding"},
        {"/subscriptions/" + sub, "group-ops", "Azure Arc Kubernetes Cluster Manager"},
        {"/subscriptions/" + sub + "/resourceGroups/edge", "oid-carol", "Reader"}};
    api = make_management_api(
        store, options, std::make_shared<TableAuthenticator>(), [](const std::string&) { return 0u; },
        spdlog::default_logger());
  }
  ~Relay() {
    store->stop();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  ManagementResponse call(const std::string& method, const std::string& target, const std::string& token,
                          const std::string& body = "") {
    ManagementRequest r{method, target, {{"authorization", "Bearer " + token}}, body};
    auto promise = std::make_shared<std::promise<ManagementResponse>>();
    auto future = promise->get_future();
    api->handle(std::move(r), [promise](ManagementResponse resp) { promise->set_value(std::move(resp)); });
    REQUIRE(future.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
    return future.get();
  }
};

std::string cluster_path(const std::string& name, const std::string& group = "edge") {
  return "/subscriptions/" + sub + "/resourceGroups/" + group + "/providers/Microsoft.Kubernetes/connectedClusters/" +
         name + "?api-version=2024-01-01";
}
std::string list_keys_path(const std::string& name) {
  return "/subscriptions/" + sub + "/resourceGroups/edge/providers/Microsoft.Kubernetes/connectedClusters/" + name +
         "/listKeys?api-version=2024-01-01";
}

std::string put_body(const std::string& spki_der, const std::string& location = "West Europe") {
  return nlohmann::json{{"location", location},
                        {"identity", {{"type", "SystemAssigned"}}},
                        {"properties", {{"agentPublicKeyCertificate", base64(spki_der)}}}}
      .dump();
}

std::string error_code_of(const ManagementResponse& r) { return nlohmann::json::parse(r.body)["error"]["code"]; }

}  // namespace

TEST_CASE("PUT creates a cluster with its keys and agent pin, the same PUT again updates it",
          "[relay][management][onboarding]") {
  Relay relay;
  const std::string spki = new_agent_spki();
  auto created = relay.call("PUT", cluster_path("store1"), "alice", put_body(spki));
  REQUIRE(created.status == 201);
  auto body = nlohmann::json::parse(created.body);
  CHECK(body["id"] ==
        "/subscriptions/" + sub + "/resourceGroups/edge/providers/Microsoft.Kubernetes/connectedClusters/store1");
  CHECK(body["name"] == "store1");
  CHECK(body["type"] == "Microsoft.Kubernetes/connectedClusters");
  CHECK(body["identity"]["type"] == "SystemAssigned");
  CHECK(body["identity"]["tenantId"] == "tenant-1");
  CHECK(body["properties"]["agentPublicKeyCertificate"] == base64(spki));
  CHECK(body["properties"]["provisioningState"] == "Succeeded");

  // The relay serves it at once: its pin, a listen key and a connect key.
  auto snapshot = relay.store->snapshot();
  const ClusterEntry* c = snapshot->cluster_by_name(sub, "edge", "store1");
  REQUIRE(c);
  CHECK(c->agent_key_pins == std::vector<std::string>{agent_key_pin_from_spki_der(spki)});
  REQUIRE(c->key_with_right("listen"));
  REQUIRE(c->key_with_right("connect"));
  CHECK(c->key_with_right("listen")->secret != c->key_with_right("connect")->secret);
  // Secrets live in 0600 files beside the configuration, not in it.
  std::ifstream in(relay.dir / "relay.json");
  std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(file.find(c->key_with_right("listen")->secret) == std::string::npos);
  const std::string listen_secret = c->key_with_right("listen")->secret;

  auto again = relay.call("PUT", cluster_path("store1"), "alice", put_body(spki));
  REQUIRE(again.status == 200);
  CHECK(nlohmann::json::parse(again.body)["identity"]["principalId"] == body["identity"]["principalId"]);
  auto after = relay.store->snapshot();
  REQUIRE(after->cluster_by_name(sub, "edge", "store1"));
  CHECK(after->cluster_by_name(sub, "edge", "store1")->key_with_right("listen")->secret == listen_secret);
  CHECK(after->clusters.size() == 1);

  // A new key pair replaces the pin.
  const std::string rotated = new_agent_spki();
  REQUIRE(relay.call("PUT", cluster_path("store1"), "alice", put_body(rotated)).status == 200);
  CHECK(relay.store->snapshot()->cluster_by_name(sub, "edge", "store1")->agent_key_pins ==
        std::vector<std::string>{agent_key_pin_from_spki_der(rotated)});
}

TEST_CASE("listKeys hands the listen key in Azure Relay's shape to callers that may write the cluster",
          "[relay][management][onboarding][security]") {
  Relay relay;
  REQUIRE(relay.call("PUT", cluster_path("store2"), "alice", put_body(new_agent_spki())).status == 201);
  auto keys = relay.call("POST", list_keys_path("store2"), "alice");
  REQUIRE(keys.status == 200);
  auto j = nlohmann::json::parse(keys.body);
  const ClusterEntry* c = relay.store->snapshot()->cluster_by_name(sub, "edge", "store2");
  REQUIRE(c);
  CHECK(j["keyName"] == "listen");
  CHECK(j["primaryKey"] == c->key_with_right("listen")->secret);
  CHECK(j["primaryConnectionString"] ==
        "Endpoint=sb://relay.example:8443/;SharedAccessKeyName=listen;SharedAccessKey=" +
            c->key_with_right("listen")->secret + ";EntityPath=" + c->hybrid_connection);
  // A reader sees the resource, never its keys.
  CHECK(relay.call("GET", cluster_path("store2"), "carol").status == 200);
  auto refused = relay.call("POST", list_keys_path("store2"), "carol");
  CHECK(refused.status == 403);
  CHECK(error_code_of(refused) == "AuthorizationFailed");
  CHECK(refused.body.find(c->key_with_right("listen")->secret) == std::string::npos);
  CHECK(relay.call("GET", list_keys_path("store2"), "alice").status == 405);
  CHECK(relay.call("POST", list_keys_path("absent"), "alice").status == 404);
}

TEST_CASE("PUT validation errors are ARM's 400s and write nothing", "[relay][management][onboarding]") {
  Relay relay;
  const std::string spki = new_agent_spki();
  auto no_location = relay.call(
      "PUT", cluster_path("c1"), "alice",
      R"({"identity":{"type":"SystemAssigned"},"properties":{"agentPublicKeyCertificate":")" + base64(spki) + "\"}}");
  CHECK(no_location.status == 400);
  CHECK(error_code_of(no_location) == "LocationRequired");
  auto elsewhere = relay.call("PUT", cluster_path("c1"), "alice", put_body(spki, "eastus"));
  CHECK(elsewhere.status == 400);
  CHECK(error_code_of(elsewhere) == "LocationNotAvailableForResourceType");
  auto no_key = relay.call("PUT", cluster_path("c1"), "alice",
                           R"({"location":"westeurope","identity":{"type":"SystemAssigned"}})");
  CHECK(no_key.status == 400);
  CHECK(error_code_of(no_key) == "InvalidRequestContent");
  CHECK_THAT(no_key.body, Catch::Contains("agentPublicKeyCertificate"));
  auto not_a_key = relay.call("PUT", cluster_path("c1"), "alice", put_body("not a key at all"));
  CHECK(not_a_key.status == 400);
  auto no_identity =
      relay.call("PUT", cluster_path("c1"), "alice",
                 R"({"location":"westeurope","properties":{"agentPublicKeyCertificate":")" + base64(spki) + "\"}}");
  CHECK(no_identity.status == 400);
  auto not_json = relay.call("PUT", cluster_path("c1"), "alice", "{");
  CHECK(not_json.status == 400);
  CHECK(error_code_of(not_json) == "InvalidRequestContent");
  auto bad_name = relay.call("PUT", cluster_path("-bad!"), "alice", put_body(spki));
  CHECK(bad_name.status == 400);
  CHECK(error_code_of(bad_name) == "InvalidResourceName");
  CHECK(relay.store->snapshot()->clusters.empty());
  CHECK(relay.store->cluster_records().empty());
}

TEST_CASE("PUT and DELETE need a role that grants write and delete at or above the cluster",
          "[relay][management][onboarding][security]") {
  Relay relay;
  const std::string spki = new_agent_spki();
  // Reader on the group: no write.
  auto carol = relay.call("PUT", cluster_path("c2"), "carol", put_body(spki));
  CHECK(carol.status == 403);
  CHECK_THAT(carol.body, Catch::Contains("Microsoft.Kubernetes/connectedClusters/write"));
  // alice's assignment is on group edge only.
  CHECK(relay.call("PUT", cluster_path("c2", "other"), "alice", put_body(spki)).status == 403);
  CHECK(relay.store->snapshot()->clusters.empty());
  // A group's subscription-wide role covers every group.
  REQUIRE(relay.call("PUT", cluster_path("c2", "other"), "bob", put_body(spki)).status == 201);
  REQUIRE(relay.call("PUT", cluster_path("c2"), "alice", put_body(spki)).status == 201);
  // The onboarding role creates clusters, it does not delete them.
  auto refused = relay.call("DELETE", cluster_path("c2"), "alice");
  CHECK(refused.status == 403);
  CHECK_THAT(refused.body, Catch::Contains("Microsoft.Kubernetes/connectedClusters/delete"));
  CHECK(relay.store->snapshot()->cluster_by_name(sub, "edge", "c2"));
  auto deleted = relay.call("DELETE", cluster_path("c2"), "bob");
  CHECK(deleted.status == 200);
  CHECK_FALSE(relay.store->snapshot()->cluster_by_name(sub, "edge", "c2"));
  CHECK(relay.store->snapshot()->cluster_by_name(sub, "other", "c2"));
  CHECK(relay.call("DELETE", cluster_path("c2"), "bob").status == 204);
  CHECK(relay.call("GET", cluster_path("c2"), "bob").status == 404);
  CHECK(relay.call("PUT", cluster_path("c3"), "expired", put_body(spki)).status == 401);
}

TEST_CASE("a management API over a fixed registry refuses writes", "[relay][management][onboarding]") {
  auto config = std::make_shared<RelayConfig>();
  ManagementOptions options;
  options.public_host = "relay.example:8443";
  options.scoped_role_assignments = {{"/subscriptions/" + sub, "oid-alice", "Owner"}};
  auto api = make_management_api(
      std::shared_ptr<const RelayConfig>(config), options, std::make_shared<TableAuthenticator>(),
      [](const std::string&) { return 0u; }, spdlog::default_logger());
  std::optional<ManagementResponse> out;
  api->handle(
      ManagementRequest{"PUT", cluster_path("c4"), {{"authorization", "Bearer alice"}}, put_body(new_agent_spki())},
      [&](ManagementResponse r) { out = std::move(r); });
  REQUIRE(out);
  CHECK(out->status == 405);
}
