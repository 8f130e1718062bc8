#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include "clusterconnect/sas_token.hpp"
#include "management_api.hpp"
#include "relay_config.hpp"

using namespace clusterconnect;
using namespace clusterconnect::relay;

namespace {

class TableAuthenticator final : public Authenticator {
 public:
  void async_authenticate(std::string token, UniqueFunction<void(AuthOutcome)> handler) noexcept override {
    AuthOutcome o;
    if (token == "alice") o.identity = {"alice@contoso.example", "oid-alice", {"group-devs"}, {}};
    else if (token == "bob") o.identity = {"bob@contoso.example", "oid-bob", {"group-devs"}, {}};
    else if (token == "carol") o.identity = {"carol@contoso.example", "oid-carol", {"group-other"}, {}};
    else o = AuthOutcome{AuthFailure::expired, "the token expired", {}};
    handler(o);
  }
};

const char* const sub = "00000000-0000-0000-0000-000000000001";

std::shared_ptr<ManagementApi> api() {
  auto config = std::make_shared<RelayConfig>();
  ClusterEntry demo;
  demo.subscription = sub;
  demo.resource_group = "sandbox";
  demo.name = "demo";
  demo.hybrid_connection = "clusters/" + std::string(sub) + "/sandbox/demo";
  demo.keys = {RelayKey{"listen", {"listen"}, "l-key", {}}, RelayKey{"connect", {"connect"}, "s3cret-key", {}}};
  demo.role_assignments = {{"oid-alice", "Azure Arc Kubernetes Cluster User"}};
  ClusterEntry team = demo;
  team.name = "team";
  team.hybrid_connection = "clusters/x/sandbox/team";
  team.role_assignments = {{"group-devs", "Reader"}};
  config->clusters = {demo, team};
  return make_management_api(config, {"relay.example:8443", std::chrono::seconds(600)},
                             std::make_shared<TableAuthenticator>(), [](const std::string&) { return 2u; },
                             spdlog::default_logger());
}

ManagementResponse call(const std::string& method, const std::string& target, const std::string& token,
                        const std::string& body = R"({"authenticationMethod":"AAD","clientProxy":true})") {
  ManagementRequest r{method, target, {}, body};
  if (!token.empty()) r.headers["authorization"] = "Bearer " + token;
  std::optional<ManagementResponse> out;
  api()->handle(std::move(r), [&](ManagementResponse resp) { out = std::move(resp); });
  REQUIRE(out.has_value());
  return *out;
}

std::string credential_path(const std::string& rg_segment, const std::string& cluster) {
  return "/subscriptions/" + std::string(sub) + "/" + rg_segment +
         "/sandbox/providers/Microsoft.Kubernetes/connectedClusters/" + cluster + "/listClusterUserCredential?api-version=2021-10-01";
}

std::string error_code_of(const ManagementResponse& r) { return nlohmann::json::parse(r.body)["error"]["code"]; }

}  // namespace

TEST_CASE("listClusterUserCredential returns a connect token for the cluster, in Azure's shape", "[relay][management]") {
  auto r = call("POST", credential_path("resourcegroups", "demo"), "alice");
  REQUIRE(r.status == 200);
  CHECK_THAT(r.content_type, Catch::StartsWith("application/json"));
  auto j = nlohmann::json::parse(r.body);
  const auto& hc = j["hybridConnectionConfig"];
  CHECK(hc["relay"] == "relay.example:8443");
  CHECK(hc["hybridConnectionName"] == "clusters/" + std::string(sub) + "/sandbox/demo");
  auto now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  CHECK(hc["expirationTime"].get<long long>() > now + 500);
  CHECK(hc["expirationTime"].get<long long>() <= now + 601);
  auto token = hc["token"].get<std::string>();
  CHECK_THAT(token, Catch::StartsWith("SharedAccessSignature "));
  CHECK_THAT(token, Catch::Contains("skn=connect"));
  // The token verifies with the connect key for the cluster's tunnel path.
  auto verdict = verify_sas_token(token, "wss://relay.example:8443/$hc/clusters/" + std::string(sub) + "/sandbox/demo",
                                  [](std::string_view name) -> std::optional<std::string> {
                                    if (name == "connect") return std::string("s3cret-key");
                                    return std::nullopt;
                                  });
  CHECK(verdict.ok());
  // The kubeconfig is base64 YAML naming the cluster.
  auto value = j["kubeconfigs"][0]["value"].get<std::string>();
  std::string yaml(value.size(), '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(yaml.data()), reinterpret_cast<const unsigned char*>(value.data()),
                          static_cast<int>(value.size()));
  REQUIRE(n > 0);
  CHECK_THAT(yaml, Catch::Contains("name: demo"));
}

TEST_CASE("a group role assignment grants access; other principals get 403 in ARM's error shape", "[relay][management]") {
  CHECK(call("POST", credential_path("resourceGroups", "team"), "bob").status == 200);
  auto r = call("POST", credential_path("resourceGroups", "demo"), "carol");
  CHECK(r.status == 403);
  CHECK(error_code_of(r) == "AuthorizationFailed");
  CHECK_THAT(nlohmann::json::parse(r.body)["error"]["message"].get<std::string>(), Catch::Contains("oid-carol"));
}

TEST_CASE("missing or invalid tokens get 401, unknown clusters 404, bad bodies 400", "[relay][management]") {
  auto none = call("POST", credential_path("resourceGroups", "demo"), "");
  CHECK(none.status == 401);
  CHECK(error_code_of(none) == "AuthenticationFailed");
  auto bad = call("POST", credential_path("resourceGroups", "demo"), "expired-token");
  CHECK(bad.status == 401);
  CHECK(error_code_of(bad) == "InvalidAuthenticationToken");
  CHECK(bad.body.find("expired-token") == std::string::npos);
  auto missing = call("POST", credential_path("resourceGroups", "nosuch"), "alice");
  CHECK(missing.status == 404);
  CHECK(error_code_of(missing) == "ResourceNotFound");
  CHECK(call("POST", credential_path("resourceGroups", "demo"), "alice", "{not json").status == 400);
  CHECK(call("POST", credential_path("resourceGroups", "demo"), "alice", R"({"authenticationMethod":"Basic"})").status == 400);
  auto no_version = call("POST", "/subscriptions/" + std::string(sub) +
                                     "/resourceGroups/sandbox/providers/Microsoft.Kubernetes/connectedClusters/demo/listClusterUserCredential",
                         "alice");
  CHECK(no_version.status == 400);
  CHECK(error_code_of(no_version) == "MissingApiVersionParameter");
  CHECK(call("GET", "/nothing/here", "alice").status == 404);
}

TEST_CASE("GET on the cluster resource answers the resource with its connectivity", "[relay][management]") {
  auto r = call("GET", "/subscriptions/" + std::string(sub) +
                           "/resourceGroups/sandbox/providers/Microsoft.Kubernetes/connectedClusters/demo?api-version=2021-10-01",
                "alice", "");
  REQUIRE(r.status == 200);
  auto j = nlohmann::json::parse(r.body);
  CHECK(j["type"] == "Microsoft.Kubernetes/connectedClusters");
  CHECK(j["properties"]["connectivityStatus"] == "Connected");
}
