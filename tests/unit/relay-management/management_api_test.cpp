#include <catch2/catch.hpp>

#include <regex>

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
    else if (token == "forged") o = AuthOutcome{AuthFailure::bad_signature, "the signature does not verify", {}};
    else o = AuthOutcome{AuthFailure::expired, "the token expired", {}};
    handler(o);
  }
};

const char* const sub = "00000000-0000-0000-0000-000000000001";

std::shared_ptr<ManagementApi> api(std::string public_host = "relay.example:8443") {
  auto config = std::make_shared<RelayConfig>();
  ClusterEntry demo;
  demo.subscription = sub;
  demo.resource_group = "sandbox";
  demo.name = "demo";
  demo.hybrid_connection = "clusters/" + std::string(sub) + "/sandbox/demo";
  demo.keys = {RelayKey{"listen", {"listen"}, "l-key", {}}, RelayKey{"connect", {"connect"}, "s3cret-key", {}}};
  demo.role_assignments = {{"oid-alice", "Azure Arc Enabled Kubernetes Cluster User Role"},
                           {"group-other", "Reader"},
                           {"group-other", "Azure Arc Kubernetes Cluster Admin"}};
  ClusterEntry team = demo;
  team.name = "team";
  team.hybrid_connection = "clusters/x/sandbox/team";
  team.role_assignments = {{"group-devs", "azure arc enabled kubernetes cluster user role"}};
  config->clusters = {demo, team};
  ManagementOptions options;
  options.public_host = public_host;
  options.token_lifetime = std::chrono::seconds(600);
  return make_management_api(config, options,
                             std::make_shared<TableAuthenticator>(), [](const std::string&) { return 2u; },
                             spdlog::default_logger());
}

ManagementResponse call(const std::string& method, const std::string& target, const std::string& token,
                        const std::string& body = R"({"authenticationMethod":"AAD","clientProxy":true})",
                        const std::string& public_host = "relay.example:8443") {
  ManagementRequest r{method, target, {}, body};
  if (!token.empty()) r.headers["authorization"] = "Bearer " + token;
  r.headers["host"] = "attacker.example/?";
  std::optional<ManagementResponse> out;
  api(public_host)->handle(std::move(r), [&](ManagementResponse resp) { out = std::move(resp); });
  REQUIRE(out.has_value());
  return *out;
}

std::string credential_path(const std::string& rg_segment, const std::string& cluster) {
  return "/subscriptions/" + std::string(sub) + "/" + rg_segment +
         "/sandbox/providers/Microsoft.Kubernetes/connectedClusters/" + cluster + "/listClusterUserCredential?api-version=2021-10-01";
}

std::string cluster_path(const std::string& name, const std::string& api_version = "2021-10-01") {
  return "/subscriptions/" + std::string(sub) + "/resourceGroups/sandbox/providers/Microsoft.Kubernetes/connectedClusters/" + name +
         "?api-version=" + api_version;
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

TEST_CASE("a group role assignment grants access, other principals get 403 in ARM's error shape", "[relay][management]") {
  CHECK(call("POST", credential_path("resourceGroups", "team"), "bob").status == 200);
  auto r = call("POST", credential_path("resourceGroups", "demo"), "carol");
  CHECK(r.status == 403);
  CHECK(error_code_of(r) == "AuthorizationFailed");
  CHECK_THAT(nlohmann::json::parse(r.body)["error"]["message"].get<std::string>(), Catch::Contains("oid-carol"));
}

TEST_CASE("only a role that grants listClusterUserCredential lets a caller connect", "[relay][management][security]") {
  // carol's group holds Reader and a data-plane admin role on demo: she may
  // read the resource, not fetch its connect token.
  auto get = call("GET", "/subscriptions/" + std::string(sub) +
                             "/resourceGroups/sandbox/providers/Microsoft.Kubernetes/connectedClusters/demo?api-version=2021-10-01",
                  "carol", "");
  CHECK(get.status == 200);
  auto list = call("POST", credential_path("resourceGroups", "demo"), "carol");
  CHECK(list.status == 403);
  CHECK_THAT(nlohmann::json::parse(list.body)["error"]["message"].get<std::string>(),
             Catch::Contains("listClusterUserCredential/action"));
}

TEST_CASE("role definitions: built-in Azure roles, the registry's own, and wildcards", "[relay][config][security]") {
  auto config = parse_relay_config(nlohmann::json::parse(R"({
    "role_definitions": [{"name": "Connector", "actions": ["Microsoft.Kubernetes/connectedClusters/*"],
                          "not_actions": ["Microsoft.Kubernetes/connectedClusters/delete"]}]})"),
                                   ".");
  auto allows = [&](const std::string& role, std::string_view action) {
    const RoleDefinition* r = config.role(role);
    REQUIRE(r);
    return r->allows(action);
  };
  CHECK(allows("Azure Arc Enabled Kubernetes Cluster User Role", action_list_credential));
  CHECK(allows("Owner", action_list_credential));
  CHECK_FALSE(allows("Reader", action_list_credential));
  CHECK(allows("Reader", action_read));
  CHECK_FALSE(allows("Azure Arc Kubernetes Cluster Admin", action_list_credential));
  CHECK(allows("connector", action_list_credential));
  CHECK_FALSE(allows("Connector", "Microsoft.Kubernetes/connectedClusters/delete"));
  CHECK_FALSE(allows("Connector", "Microsoft.Kubernetes/connectedClustersX/read"));
  CHECK(config.role("No Such Role") == nullptr);

  auto refused = [](const char* text) {
    try {
      parse_relay_config(nlohmann::json::parse(text), ".");
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  CHECK_THAT(refused(R"({"clusters": [{"name": "c", "hybrid_connection": "c", "keys": [],
                          "role_assignments": [{"principal": "p", "role": "Azure Arc Kubernetes Cluster User"}]}]})"),
             Catch::Contains("clusters[0]") && Catch::Contains("is not defined"));
  CHECK_THAT(refused(R"({"clusters": [{"name": "c", "hybrid_connection": "c", "keys": [],
                          "role_assignments": [{"principal": "p"}]}]})"),
             Catch::Contains("role"));
  CHECK_THAT(refused(R"({"role_definitions": [{"name": "Owner", "actions": ["*"]}]})"), Catch::Contains("already defined"));
}

TEST_CASE("a key holds exactly one of listen and connect", "[relay][config][security]") {
  auto parse = [](const char* rights) {
    auto j = nlohmann::json::parse(std::string(R"({"clusters": [{"name": "c", "hybrid_connection": "c",
                                                    "keys": [{"name": "k", "secret": "s", "rights": )") +
                                   rights + "}]}]}");
    try {
      parse_relay_config(j, ".");
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  CHECK(parse(R"(["listen"])") == "accepted");
  CHECK(parse(R"(["connect"])") == "accepted");
  CHECK_THAT(parse(R"(["listen", "connect"])"), Catch::Contains("exactly one"));
  CHECK_THAT(parse(R"([])"), Catch::Contains("exactly one"));
  CHECK_THAT(parse(R"(["manage"])"), Catch::Contains("exactly one"));
}

TEST_CASE("connect tokens are signed for the configured public host, never the request's Host", "[relay][management][security]") {
  auto r = call("POST", credential_path("resourceGroups", "demo"), "alice");
  REQUIRE(r.status == 200);
  auto token = nlohmann::json::parse(r.body)["hybridConnectionConfig"]["token"].get<std::string>();
  auto parsed = parse_sas_token(token);
  REQUIRE(parsed);
  CHECK(parsed->resource == "https://relay.example:8443/clusters/" + std::string(sub) + "/sandbox/demo");
  auto unset = call("POST", credential_path("resourceGroups", "demo"), "alice",
                    R"({"authenticationMethod":"AAD","clientProxy":true})", "");
  CHECK(unset.status == 503);
  CHECK_THAT(unset.body, Catch::Contains("public_host"));
}

TEST_CASE("missing or invalid tokens get 401, unknown clusters 404, bad bodies 400", "[relay][management]") {
  auto none = call("POST", credential_path("resourceGroups", "demo"), "");
  CHECK(none.status == 401);
  CHECK(error_code_of(none) == "AuthenticationFailed");
  auto bad = call("POST", credential_path("resourceGroups", "demo"), "expired-token");
  CHECK(bad.status == 401);
  CHECK(error_code_of(bad) == "ExpiredAuthenticationToken");
  CHECK(bad.body.find("expired-token") == std::string::npos);
  auto forged = call("POST", credential_path("resourceGroups", "demo"), "forged");
  CHECK(forged.status == 401);
  CHECK(error_code_of(forged) == "InvalidAuthenticationToken");
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
  auto r = call("GET", cluster_path("demo"), "alice", "");
  REQUIRE(r.status == 200);
  auto j = nlohmann::json::parse(r.body);
  CHECK(j["type"] == "Microsoft.Kubernetes/connectedClusters");
  CHECK(j["properties"]["connectivityStatus"] == "Connected");
}

TEST_CASE("the management API has its own audience and publishes it, never ARM's", "[relay][management][security]") {
  for (const char* arm : {"https://management.azure.com/", "https://management.azure.com", "HTTPS://MANAGEMENT.CORE.WINDOWS.NET/",
                          "https://management.usgovcloudapi.net/", "797f4846-ba00-4fd7-ba43-dac1f8f63013"})
    CHECK(is_arm_audience(arm));
  CHECK_FALSE(is_arm_audience("5e1a7000-0000-4000-8000-00000000c0de"));
  CHECK_FALSE(is_arm_audience("https://management.azure.com.attacker.example/"));

  ManagementOptions o;
  o.public_host = "relay.example:8443";
  o.audiences = {"5e1a7000-0000-4000-8000-00000000c0de"};
  o.tenant = "tenant-1";
  o.authority = "https://login.example";
  auto api = make_management_api(std::make_shared<RelayConfig>(), o, std::make_shared<TableAuthenticator>(),
                                 [](const std::string&) { return 0u; }, spdlog::default_logger());
  std::optional<ManagementResponse> out;
  api->handle(ManagementRequest{"GET", "/metadata/endpoints?api-version=2022-09-01", {}, ""},
              [&](ManagementResponse r) { out = std::move(r); });
  REQUIRE(out);
  REQUIRE(out->status == 200);
  auto j = nlohmann::json::parse(out->body);
  CHECK(j["authentication"]["audiences"] == nlohmann::json::array({"5e1a7000-0000-4000-8000-00000000c0de"}));
  CHECK(j["authentication"]["loginEndpoint"] == "https://login.example/");
  CHECK(j["authentication"]["tenant"] == "tenant-1");
}

namespace {

std::string header_of(const ManagementResponse& r, const std::string& name) {
  for (const auto& [k, v] : r.headers)
    if (k == name) return v;
  return {};
}

}  // namespace

TEST_CASE("api-version is checked as ARM checks it", "[relay][management][arm]") {
  auto malformed = call("GET", cluster_path("demo", "not-a-version"), "alice", "");
  CHECK(malformed.status == 400);
  CHECK(error_code_of(malformed) == "InvalidApiVersionParameter");
  CHECK_THAT(malformed.body, Catch::Contains("2021-10-01"));
  auto unknown = call("GET", cluster_path("demo", "2099-01-01"), "alice", "");
  CHECK(unknown.status == 400);
  CHECK(error_code_of(unknown) == "NoRegisteredProviderFound");
  CHECK_THAT(unknown.body, Catch::Contains("'2099-01-01'"));
  for (const char* v : {"2021-10-01", "2024-07-15-preview", "2024-01-01"}) {
    INFO(v);
    CHECK(call("GET", cluster_path("demo", v), "alice", "").status == 200);
  }
}

TEST_CASE("every answer carries ARM's request ids, and a 401 its challenge", "[relay][management][arm]") {
  auto ok = call("GET", cluster_path("demo"), "alice", "");
  const auto id = header_of(ok, "x-ms-request-id");
  REQUIRE(id.size() == 36);
  CHECK(id[14] == '4');
  CHECK(header_of(ok, "x-ms-correlation-request-id") == id);
  auto other = call("GET", cluster_path("demo"), "alice", "");
  CHECK(header_of(other, "x-ms-request-id") != id);

  ManagementRequest r{"GET", cluster_path("nosuch"), {{"x-ms-correlation-request-id", "c0ffee-42"}}, ""};
  r.headers["authorization"] = "Bearer alice";
  std::optional<ManagementResponse> out;
  api()->handle(std::move(r), [&](ManagementResponse resp) { out = std::move(resp); });
  REQUIRE(out);
  CHECK(out->status == 404);
  CHECK(header_of(*out, "x-ms-correlation-request-id") == "c0ffee-42");
  CHECK(header_of(*out, "x-ms-request-id").size() == 36);

  auto none = call("GET", cluster_path("demo"), "", "");
  CHECK(none.status == 401);
  CHECK_THAT(header_of(none, "WWW-Authenticate"), Catch::StartsWith("Bearer authorization_uri=") &&
                                                       Catch::Contains("error=\"invalid_token\""));
  auto expired = call("GET", cluster_path("demo"), "expired-token", "");
  CHECK_THAT(header_of(expired, "WWW-Authenticate"), Catch::Contains("expired"));
}

TEST_CASE("unknown subscriptions and resource groups get ARM's codes, names come back as registered",
          "[relay][management][arm]") {
  auto no_sub = call("GET", "/subscriptions/99999999-0000-0000-0000-000000000000/resourceGroups/sandbox/providers/"
                            "Microsoft.Kubernetes/connectedClusters/demo?api-version=2021-10-01",
                     "alice", "");
  CHECK(no_sub.status == 404);
  CHECK(error_code_of(no_sub) == "SubscriptionNotFound");
  auto no_group = call("GET", "/subscriptions/" + std::string(sub) +
                                  "/resourceGroups/elsewhere/providers/Microsoft.Kubernetes/connectedClusters/demo?api-version=2021-10-01",
                       "alice", "");
  CHECK(no_group.status == 404);
  CHECK(error_code_of(no_group) == "ResourceGroupNotFound");
  auto shouted = call("GET", "/subscriptions/" + std::string(sub) +
                                 "/resourcegroups/SANDBOX/providers/microsoft.kubernetes/connectedclusters/DEMO?api-version=2021-10-01",
                      "alice", "");
  REQUIRE(shouted.status == 200);
  auto j = nlohmann::json::parse(shouted.body);
  CHECK(j["name"] == "demo");
  CHECK(j["id"] == "/subscriptions/" + std::string(sub) + "/resourceGroups/sandbox/providers/Microsoft.Kubernetes/connectedClusters/demo");
}

TEST_CASE("clusters are listed by resource group and by subscription, only those the caller may read",
          "[relay][management][arm]") {
  const std::string by_group = "/subscriptions/" + std::string(sub) +
                               "/resourceGroups/sandbox/providers/Microsoft.Kubernetes/connectedClusters?api-version=2021-10-01";
  const std::string by_sub =
      "/subscriptions/" + std::string(sub) + "/providers/Microsoft.Kubernetes/connectedClusters?api-version=2021-10-01";
  auto names = [](const ManagementResponse& r) {
    std::vector<std::string> out;
    const auto j = nlohmann::json::parse(r.body);
    for (const auto& c : j.at("value")) out.push_back(c.at("name"));
    return out;
  };
  // alice reads demo (her own assignment) and team (her group's); bob reads
  // team (his group's); carol's Reader assignment on demo lets her read it.
  for (const auto& path : {by_group, by_sub}) {
    INFO(path);
    auto a = call("GET", path, "alice", "");
    REQUIRE(a.status == 200);
    CHECK(names(a) == std::vector<std::string>{"demo", "team"});
    auto b = call("GET", path, "bob", "");
    REQUIRE(b.status == 200);
    CHECK(names(b) == std::vector<std::string>{"team"});
    auto c = call("GET", path, "carol", "");
    REQUIRE(c.status == 200);
    CHECK(names(c) == std::vector<std::string>{"demo"});
  }
  CHECK(call("POST", by_group, "alice", "").status == 405);
  CHECK(call("GET", by_group, "", "").status == 401);
}

TEST_CASE("management API: each call reads the registry as it is then (a removed role assignment refuses the next credential)",
          "[relay][management][registry]") {
  auto first = std::make_shared<Registry>();
  ClusterEntry demo;
  demo.subscription = sub;
  demo.resource_group = "sandbox";
  demo.name = "demo";
  demo.hybrid_connection = "clusters/demo";
  demo.keys = {RelayKey{"connect", {"connect"}, "s3cret-key", {}}};
  demo.role_assignments = {{"oid-alice", "Azure Arc Enabled Kubernetes Cluster User Role"}};
  first->clusters = {demo};
  auto second = std::make_shared<Registry>(*first);
  second->clusters[0].role_assignments.clear();
  std::shared_ptr<const Registry> current = first;
  ManagementOptions options;
  options.public_host = "relay.example:8443";
  auto management = make_management_api([&current] { return current; }, options, std::make_shared<TableAuthenticator>(),
                                        nullptr, spdlog::default_logger());
  auto list = [&] {
    ManagementRequest r{"POST",
                        "/subscriptions/" + std::string(sub) +
                            "/resourceGroups/sandbox/providers/Microsoft.Kubernetes/connectedClusters/demo/"
                            "listClusterUserCredential?api-version=2024-01-01",
                        {{"authorization", "Bearer alice"}},
                        R"({"authenticationMethod":"AAD","clientProxy":true})"};
    ManagementResponse out;
    management->handle(r, [&out](ManagementResponse resp) { out = std::move(resp); });
    return out;
  };
  CHECK(list().status == 200);
  current = second;
  auto refused = list();
  CHECK(refused.status == 403);
  CHECK_THAT(refused.body, Catch::Contains("AuthorizationFailed"));
}

namespace {

// The demo cluster with what ARM records at PUT, and its agents' status as
// the front end would report it.
ManagementResponse get_with_status(AgentStatus status, nlohmann::json raw = nlohmann::json::object(),
                                   std::string tenant = "") {
  auto config = std::make_shared<RelayConfig>();
  ClusterEntry demo;
  demo.subscription = sub;
  demo.resource_group = "sandbox";
  demo.name = "demo";
  demo.hybrid_connection = "clusters/demo";
  demo.keys = {RelayKey{"connect", {"connect"}, "s3cret-key", {}}};
  demo.role_assignments = {{"oid-alice", "Reader"}};
  demo.raw = std::move(raw);
  ClusterEntry other = demo;
  other.name = "other";
  other.hybrid_connection = "clusters/other";
  config->clusters = {demo, other};
  ManagementOptions options;
  options.public_host = "relay.example:8443";
  options.tenant = std::move(tenant);
  options.agent_status = [status, identity = demo.identity()](const std::string& id) {
    return id == identity ? status : AgentStatus{};
  };
  auto management = make_management_api(config, options, std::make_shared<TableAuthenticator>(), nullptr,
                                         spdlog::default_logger());
  ManagementRequest r{"GET", cluster_path("demo"), {{"authorization", "Bearer alice"}}, ""};
  std::optional<ManagementResponse> out;
  management->handle(std::move(r), [&](ManagementResponse resp) { out = std::move(resp); });
  REQUIRE(out.has_value());
  return *out;
}

}  // namespace

TEST_CASE("GET reports what the agents said on their control channels, in ARM's fields", "[relay][management][arm]") {
  AgentStatus status;
  status.control_channels = 2;
  status.last_connected = std::chrono::system_clock::now();
  status.report.agent_version = "0.9.1";
  status.report.kubernetes_version = "v1.32.2+k3s1";
  status.report.node_count = 3;
  status.report.core_count = 12;
  status.report.distribution = "k3s";
  status.report.infrastructure = "generic";
  auto r = get_with_status(status);
  REQUIRE(r.status == 200);
  auto p = nlohmann::json::parse(r.body)["properties"];
  CHECK(p["connectivityStatus"] == "Connected");
  CHECK(p["provisioningState"] == "Succeeded");
  CHECK(p["kubernetesVersion"] == "1.32.2+k3s1");
  CHECK(p["agentVersion"] == "0.9.1");
  CHECK(p["totalNodeCount"] == 3);
  CHECK(p["totalCoreCount"] == 12);
  CHECK(p["distribution"] == "k3s");
  CHECK(p["infrastructure"] == "generic");
  // ISO 8601 in UTC, as ARM's date-time.
  CHECK(std::regex_match(p["lastConnectivityTime"].get<std::string>(),
                         std::regex(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)")));
}

TEST_CASE("connectivityStatus follows ARM: Connecting before any agent, Offline after, Expired after 90 days",
          "[relay][management][arm]") {
  auto status_of = [](AgentStatus s) {
    return nlohmann::json::parse(get_with_status(s).body)["properties"]["connectivityStatus"].get<std::string>();
  };
  AgentStatus never;
  CHECK(status_of(never) == "Connecting");
  CHECK_FALSE(nlohmann::json::parse(get_with_status(never).body)["properties"].contains("lastConnectivityTime"));
  AgentStatus gone;
  gone.last_connected = std::chrono::system_clock::now() - std::chrono::minutes(5);
  CHECK(status_of(gone) == "Offline");
  AgentStatus long_gone;
  long_gone.last_connected = std::chrono::system_clock::now() - std::chrono::hours(24 * 91);
  CHECK(status_of(long_gone) == "Expired");
}

TEST_CASE("identity and systemData come from the registry record, unknown facts are left out", "[relay][management][arm]") {
  nlohmann::json raw{{"identity", {{"principalId", "d8cd1fd9-154f-4da7-b348-595f283c13a3"},
                                   {"tenantId", "72f988bf-86f1-41af-91ab-2d7cd011db47"}}},
                     {"system_data", {{"createdAt", "2026-12-01T10:00:00Z"}, {"createdByType", "User"}}},
                     {"agent_public_key_certificate", "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"},
                     {"distribution", "aks_edge_k3s"}};
  auto j = nlohmann::json::parse(get_with_status(AgentStatus{}, raw).body);
  CHECK(j["identity"]["type"] == "SystemAssigned");
  CHECK(j["identity"]["principalId"] == "d8cd1fd9-154f-4da7-b348-595f283c13a3");
  CHECK(j["identity"]["tenantId"] == "72f988bf-86f1-41af-91ab-2d7cd011db47");
  CHECK(j["systemData"] == nlohmann::json{{"createdAt", "2026-12-01T10:00:00Z"}, {"createdByType", "User"}});
  CHECK(j["properties"]["agentPublicKeyCertificate"] == "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA");
  CHECK(j["properties"]["distribution"] == "aks_edge_k3s");
  CHECK_FALSE(j["properties"].contains("kubernetesVersion"));
  CHECK_FALSE(j["properties"].contains("totalNodeCount"));
  CHECK(j["tags"] == nlohmann::json::object());

  // Without a record: a stable GUID per cluster, the management tenant, no systemData.
  auto a = nlohmann::json::parse(get_with_status(AgentStatus{}, {}, "11111111-2222-3333-4444-555555555555").body);
  auto b = nlohmann::json::parse(get_with_status(AgentStatus{}, {}, "11111111-2222-3333-4444-555555555555").body);
  CHECK(a["identity"]["principalId"] == b["identity"]["principalId"]);
  CHECK(std::regex_match(a["identity"]["principalId"].get<std::string>(),
                         std::regex("[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")));
  CHECK(a["identity"]["tenantId"] == "11111111-2222-3333-4444-555555555555");
  CHECK_FALSE(a.contains("systemData"));
  CHECK_FALSE(a["properties"].contains("agentPublicKeyCertificate"));
}

TEST_CASE("listClusterUserCredential: authenticationMethod and clientProxy with ARM's semantics", "[relay][management][arm]") {
  auto ok = [](const std::string& body) { return call("POST", credential_path("resourceGroups", "demo"), "alice", body); };
  auto token_mode = ok(R"({"authenticationMethod":"Token","clientProxy":true})");
  REQUIRE(token_mode.status == 200);
  auto j = nlohmann::json::parse(token_mode.body);
  CHECK(j["hybridConnectionConfig"]["token"].get<std::string>().rfind("SharedAccessSignature ", 0) == 0);
  CHECK(j["kubeconfigs"].size() == 1);
  // No direct kubeconfig exists for a cluster behind the relay.
  for (const char* body : {R"({"authenticationMethod":"AAD","clientProxy":false})",
                           R"({"authenticationMethod":"Token","clientProxy":false})"}) {
    auto r = ok(body);
    CHECK(r.status == 400);
    CHECK(error_code_of(r) == "BadRequest");
    CHECK_THAT(r.body, Catch::Contains("clientProxy true"));
  }
  for (const char* body : {R"({"authenticationMethod":"AAD","clientProxy":"yes"})", R"({"authenticationMethod":1})",
                           R"([1,2])", R"({"authenticationMethod":"Basic","clientProxy":true})"}) {
    auto r = ok(body);
    CHECK(r.status == 400);
    CHECK(error_code_of(r) == "InvalidRequestContent");
  }
  // The CLI's defaults when a property is absent.
  CHECK(ok("{}").status == 200);
  CHECK(ok("").status == 200);
}
