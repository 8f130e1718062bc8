#include "management_api.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <ctime>
#include <mutex>
#include <optional>
#include <thread>
#include <variant>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <spdlog/spdlog.h>

#include "admin_commands.hpp"
#include "clusterconnect/ascii.hpp"
#include "clusterconnect/sas_token.hpp"
#include "clusterconnect/url.hpp"
#include "registry_store.hpp"
#include "relay_config.hpp"

namespace clusterconnect::relay {
namespace {

std::string lower(std::string s) { return ascii_lowered(std::move(s)); }

std::string base64(const std::string& in) {
  std::string out(4 * ((in.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(in.data()),
                          static_cast<int>(in.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

ManagementResponse arm_error(unsigned status, const std::string& code, const std::string& message) {
  return {status, "application/json; charset=utf-8",
          nlohmann::json{{"error", {{"code", code}, {"message", message}}}}.dump(), {}};
}

// /subscriptions/{s}/resourceGroups/{g}/providers/Microsoft.Kubernetes/connectedClusters/{n}[/{action}],
// and the lists: the same without /{n}, and /subscriptions/{s}/providers/
// Microsoft.Kubernetes/connectedClusters. ARM matches the fixed segments
// case-insensitively (clients send "resourcegroups" too).
struct ArmPath {
  std::string subscription, resource_group, name, action;
  bool list = false;  // name is empty; resource_group too for a subscription's list
};

std::optional<ArmPath> parse_arm_path(const std::string& path) {
  std::vector<std::string> seg;
  std::size_t start = 1;
  while (start <= path.size()) {
    auto end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string decoded;
    if (!percent_decode(std::string_view(path).substr(start, end - start), decoded)) return std::nullopt;
    seg.push_back(decoded);
    start = end + 1;
  }
  if (!seg.empty() && seg.back().empty()) seg.pop_back();
  auto provider = [&](std::size_t at) {
    return seg.size() > at + 2 && lower(seg[at]) == "providers" && lower(seg[at + 1]) == "microsoft.kubernetes" &&
           lower(seg[at + 2]) == "connectedclusters";
  };
  if (seg.size() < 5 || lower(seg[0]) != "subscriptions" || seg[1].empty()) return std::nullopt;
  if (seg.size() == 5 && provider(2)) return ArmPath{seg[1], "", "", "", true};
  if (seg.size() < 7 || lower(seg[2]) != "resourcegroups" || seg[3].empty() || !provider(4)) return std::nullopt;
  if (seg.size() == 7) return ArmPath{seg[1], seg[3], "", "", true};
  if (seg.size() != 8 && seg.size() != 9) return std::nullopt;
  return ArmPath{seg[1], seg[3], seg[7], seg.size() == 9 ? seg[8] : "", false};
}

// The api-versions of Microsoft.Kubernetes/connectedClusters this API
// answers (the resource and listClusterUserCredential have kept their shape
// across them).
constexpr std::string_view supported_api_versions[] = {
    "2020-01-01-preview", "2021-03-01",         "2021-04-01-preview", "2021-10-01",         "2022-05-01-preview",
    "2022-10-01-preview", "2023-11-01-preview", "2024-01-01",         "2024-02-01-preview", "2024-06-01-preview",
    "2024-07-01-preview", "2024-07-15-preview", "2024-12-01-preview"};

std::string supported_versions_text() {
  std::string out;
  for (auto v : supported_api_versions) out += (out.empty() ? "" : ", ") + std::string(v);
  return out;
}

// YYYY-MM-DD with an optional -preview (or other) suffix, as ARM spells them.
bool well_formed_api_version(const std::string& v) {
  if (v.size() < 10) return false;
  for (std::size_t i = 0; i < 10; ++i)
    if ((i == 4 || i == 7) ? v[i] != '-' : !std::isdigit(static_cast<unsigned char>(v[i]))) return false;
  if (v.size() == 10) return true;
  if (v[10] != '-' || v.size() == 11) return false;
  return std::all_of(v.begin() + 11, v.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)); });
}

// A random RFC 4122 version-4 UUID, as ARM's request ids are.
std::string new_request_id() {
  unsigned char b[16];
  if (RAND_bytes(b, sizeof b) != 1) std::fill(std::begin(b), std::end(b), 0);
  b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);
  b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += hex[b[i] >> 4];
    out += hex[b[i] & 0x0f];
  }
  return out;
}

std::string query_param(const std::string& query, const std::string& name) {
  std::size_t start = 0;
  while (start < query.size()) {
    auto end = query.find('&', start);
    if (end == std::string::npos) end = query.size();
    auto pair = query.substr(start, end - start);
    auto eq = pair.find('=');
    if (lower(pair.substr(0, eq)) == name) return eq == std::string::npos ? "" : pair.substr(eq + 1);
    start = end + 1;
  }
  return {};
}

// listClusterUserCredential's body (ListClusterUserCredentialProperties).
struct CredentialRequest {
  std::string authentication_method;  // "AAD" or "Token"
  bool client_proxy = true;
};

// ARM's semantics: authenticationMethod is AAD (the caller's Entra token
// reaches the cluster) or Token (a service-account token the caller brings,
// passed through unchanged); clientProxy true asks for the relay endpoint
// and a connect token, for a local client proxy (`connectedk8s proxy`).
// clientProxy false asks for a kubeconfig that reaches the cluster without
// one; a cluster behind this relay accepts no inbound connection, so there is
// nothing such a kubeconfig could name: 400, as ARM answers a combination
// the cluster does not support. Both properties default as the CLI sends
// them (AAD, true) when absent.
std::variant<CredentialRequest, ManagementResponse> parse_credential_request(const std::string& body) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(body.empty() ? "{}" : body);
  } catch (const std::exception&) {
    return arm_error(400, "InvalidRequestContent", "The request content was invalid and could not be deserialized.");
  }
  if (!j.is_object())
    return arm_error(400, "InvalidRequestContent", "The request content must be a JSON object with authenticationMethod and clientProxy.");
  CredentialRequest r;
  r.authentication_method = "AAD";
  if (j.contains("authenticationMethod")) {
    const auto& m = j["authenticationMethod"];
    if (!m.is_string() || (!ascii_iequals(m.get<std::string>(), "AAD") && !ascii_iequals(m.get<std::string>(), "Token")))
      return arm_error(400, "InvalidRequestContent",
                       "The value of authenticationMethod is invalid: it must be \"AAD\" or \"Token\".");
    r.authentication_method = ascii_iequals(m.get<std::string>(), "AAD") ? "AAD" : "Token";
  }
  if (j.contains("clientProxy")) {
    if (!j["clientProxy"].is_boolean())
      return arm_error(400, "InvalidRequestContent", "The value of clientProxy is invalid: it must be true or false.");
    r.client_proxy = j["clientProxy"].get<bool>();
  }
  if (!r.client_proxy)
    return arm_error(400, "BadRequest",
                     "clientProxy false (a kubeconfig that reaches the cluster's API server directly) is not supported: "
                     "the cluster accepts no inbound connection and is reached only through the relay. Send "
                     "clientProxy true and connect with `connectedk8s proxy`" +
                         std::string(r.authentication_method == "Token" ? " --token." : "."));
  return r;
}

// ARM's date-time: UTC, seconds, "Z".
std::string arm_time(std::chrono::system_clock::time_point t) {
  const std::time_t s = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&s, &tm);
  char out[32];
  std::strftime(out, sizeof out, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return out;
}

bool is_guid(const std::string& s) {
  if (s.size() != 36) return false;
  for (std::size_t i = 0; i < s.size(); ++i)
    if ((i == 8 || i == 13 || i == 18 || i == 23) ? s[i] != '-' : !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  return true;
}

// A GUID derived from `name` (RFC 9562 version 8: SHA-256 based), the same
// on every replica and across restarts.
std::string derived_guid(const std::string& name) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(name.data()), name.size(), d);
  d[6] = static_cast<unsigned char>((d[6] & 0x0f) | 0x80);
  d[8] = static_cast<unsigned char>((d[8] & 0x3f) | 0x80);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += hex[d[i] >> 4];
    out += hex[d[i] & 0x0f];
  }
  return out;
}

std::string raw_string(const nlohmann::json& raw, const char* key) {
  if (!raw.is_object()) return {};
  auto it = raw.find(key);
  return it != raw.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// ARM's connectivityStatus from what this relay saw: Connected while a
// control channel is up, Offline once the last one closed, Expired when none
// was seen for 90 days (Arc's limit, after which an agent's managed-identity
// certificate has expired), Connecting when no agent has ever come (here).
std::string connectivity_status(const AgentStatus& s, std::chrono::system_clock::time_point now) {
  if (s.control_channels > 0) return "Connected";
  if (!s.last_connected) return "Connecting";
  return now - *s.last_connected > std::chrono::hours(24 * 90) ? "Expired" : "Offline";
}

class Api final : public ManagementApi, public std::enable_shared_from_this<Api> {
 public:
  Api(RegistrySnapshot registry, ManagementOptions options, std::shared_ptr<Authenticator> authenticator, AgentCount agents,
      std::shared_ptr<spdlog::logger> logger)
      : registry_(std::move(registry)),
        options_(std::move(options)),
        authenticator_(std::move(authenticator)),
        agents_(std::move(agents)),
        logger_(std::move(logger)) {}

  void handle(ManagementRequest request, UniqueFunction<void(ManagementResponse)> respond_raw) override {
    // Every answer carries ARM's request ids: a fresh x-ms-request-id, and the
    // caller's correlation id (or the request id) back.
    const std::string request_id = new_request_id();
    std::string correlation = request_id;
    if (auto c = request.headers.find("x-ms-correlation-request-id");
        c != request.headers.end() && !c->second.empty() && c->second.size() <= 128 &&
        std::all_of(c->second.begin(), c->second.end(), [](char ch) { return ch > ' ' && ch <= '~'; }))
      correlation = c->second;
    auto respond = [respond_raw = std::move(respond_raw), request_id, correlation](ManagementResponse r) mutable {
      r.headers.emplace_back("x-ms-request-id", request_id);
      r.headers.emplace_back("x-ms-correlation-request-id", correlation);
      respond_raw(std::move(r));
    };
    auto q = request.target.find('?');
    std::string path = request.target.substr(0, q);
    std::string query = q == std::string::npos ? "" : request.target.substr(q + 1);
    if (ascii_iequals(path, "/metadata/endpoints")) {
      if (request.method != "GET") return respond(arm_error(405, "MethodNotAllowed", "/metadata/endpoints takes GET"));
      return respond(metadata());
    }
    auto arm = parse_arm_path(path);
    if (!arm) return respond(arm_error(404, "NotFound", "no such resource or endpoint: " + path));
    bool list_credential = lower(arm->action) == "listclusterusercredential";
    const bool list_keys = lower(arm->action) == "listkeys";
    if (!arm->action.empty() && !list_credential && !list_keys)
      return respond(arm_error(404, "NotFound", "unknown action '" + arm->action + "' on connectedClusters"));
    if ((list_credential || list_keys) && request.method != "POST")
      return respond(arm_error(405, "MethodNotAllowed", arm->action + " takes POST"));
    const bool write = !arm->list && (request.method == "PUT" || request.method == "DELETE");
    if (!list_credential && !list_keys && request.method != "GET" && !write)
      return respond(arm_error(405, "MethodNotAllowed",
                               arm->list ? "a list of connectedClusters takes GET"
                                         : "the connectedClusters resource takes GET, PUT and DELETE"));
    std::string api_version;
    if (!percent_decode(query_param(query, "api-version"), api_version) || api_version.empty())
      return respond(arm_error(400, "MissingApiVersionParameter",
                               "The api-version query parameter (?api-version=) is required for all requests."));
    if (!well_formed_api_version(api_version))
      return respond(arm_error(400, "InvalidApiVersionParameter",
                               "The api-version '" + api_version.substr(0, 64) + "' is invalid. The supported versions are '" +
                                   supported_versions_text() + "'."));
    if (std::find(std::begin(supported_api_versions), std::end(supported_api_versions), api_version) ==
        std::end(supported_api_versions))
      return respond(arm_error(400, "NoRegisteredProviderFound",
                               "No registered resource provider found for location '" + location() + "' and API version '" +
                                   api_version + "' for type 'connectedClusters'. The supported api-versions are '" +
                                   supported_versions_text() + "'."));

    std::string token;
    auto auth = request.headers.find("authorization");
    if (auth != request.headers.end() && auth->second.size() > 7 && lower(auth->second.substr(0, 7)) == "bearer ")
      token = auth->second.substr(7);
    if (token.empty())
      return respond(unauthenticated("AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.",
                                     "The authentication failed because of missing 'Authorization' header."));
    if (!authenticator_)
      return respond(arm_error(503, "ServiceUnavailable", "the relay has no authenticator configured for its management API"));

    // Connect tokens are signed for the configured public host only, never for
    // a Host header the caller chose.
    std::string host = options_.public_host;
    if (host.empty())
      return respond(arm_error(503, "ServiceUnavailable", "the relay has no public_host configured; it cannot issue connect tokens"));
    auto self = shared_from_this();
    authenticator_->async_authenticate(
        std::move(token),
        [self, arm = *arm, list_credential, list_keys, write, method = request.method, body = std::move(request.body),
         host = std::move(host), respond = std::move(respond)](AuthOutcome outcome) mutable {
          if (outcome.ok() && (write || list_keys))
            return self->writer(outcome.identity, arm, method, list_keys, body, host, std::move(respond));
          respond(self->authorized(outcome, arm, list_credential, body, host));
        });
  }

 private:
  ManagementResponse authorized(const AuthOutcome& outcome, const ArmPath& arm, bool list_credential,
                                const std::string& body, const std::string& public_host) {
    if (!outcome.ok()) {
      logger_->info("management request refused: {} ({})", outcome.message, to_string(outcome.failure));
      if (outcome.failure == AuthFailure::expired)
        return unauthenticated("ExpiredAuthenticationToken", "The access token has expired: " + outcome.message,
                               "The access token has expired.");
      return unauthenticated("InvalidAuthenticationToken", "The access token is invalid: " + outcome.message,
                             "The access token is invalid.");
    }
    const auto& id = outcome.identity;
    // One snapshot for the whole call, taken now: the registry as it is
    // when the caller is known.
    const auto snapshot = registry_();
    const Registry& reg = *snapshot;
    const bool subscription_known =
        std::any_of(reg.clusters.begin(), reg.clusters.end(),
                    [&](const ClusterEntry& c) { return ascii_iequals(c.subscription, arm.subscription); }) ||
        scope_known("/subscriptions/" + arm.subscription);
    if (!subscription_known)
      return arm_error(404, "SubscriptionNotFound", "The subscription '" + arm.subscription + "' could not be found.");
    const bool group_known =
        arm.resource_group.empty() ||
        std::any_of(reg.clusters.begin(), reg.clusters.end(),
                    [&](const ClusterEntry& c) {
                      return ascii_iequals(c.subscription, arm.subscription) &&
                             ascii_iequals(c.resource_group, arm.resource_group);
                    }) ||
        scope_known("/subscriptions/" + arm.subscription + "/resourceGroups/" + arm.resource_group);
    if (!group_known)
      return arm_error(404, "ResourceGroupNotFound", "Resource group '" + arm.resource_group + "' could not be found.");
    if (arm.list) return list(reg, arm, id);
    const ClusterEntry* cluster = reg.cluster_by_name(arm.subscription, arm.resource_group, arm.name);
    if (!cluster)
      return arm_error(404, "ResourceNotFound",
                       "The Resource 'Microsoft.Kubernetes/connectedClusters/" + arm.name + "' under resource group '" +
                           arm.resource_group + "' was not found.");
    // The registry's spelling, whatever the request's casing.
    const std::string scope = scope_of(*cluster);
    const std::string action(list_credential ? action_list_credential : action_read);
    if (!allows(reg, *cluster, id, action)) {
      logger_->info("management request by {} refused: no role assignment on {}", id.uid, scope);
      return arm_error(403, "AuthorizationFailed",
                       "The client '" + id.user + "' with object id '" + id.uid +
                           "' does not have authorization to perform action '" + action + "' over scope '" + scope +
                           "' or the scope is invalid.");
    }
    if (!list_credential) return resource(*cluster, scope);

    auto asked = parse_credential_request(body);
    if (auto* refused = std::get_if<ManagementResponse>(&asked)) return std::move(*refused);

    const RelayKey* key = cluster->key_with_right("connect");  // connect-only: the registry refuses mixed keys
    if (!key)
      return arm_error(409, "ConnectKeyMissing", "cluster " + cluster->name + " has no key with the connect right in the relay's registry");
    auto expiry = std::chrono::system_clock::now() + options_.token_lifetime;
    auto expiry_s = std::chrono::duration_cast<std::chrono::seconds>(expiry.time_since_epoch()).count();
    std::string resource_uri = "https://" + public_host + "/" + cluster->hybrid_connection;
    std::string sas = make_sas_token(resource_uri, key->name, key->secret, expiry);
    // AAD and Token get the same endpoint and kubeconfig: the local proxy
    // supplies the caller's credential either way (the Entra token, or with
    // --token the service-account token it passes through unchanged).
    logger_->info("issued a connect token for {} to {} ({}), {} authentication, valid {} s", cluster->name, id.user, id.uid,
                  std::get<CredentialRequest>(asked).authentication_method, options_.token_lifetime.count());

    std::string user = "clusterUser_" + cluster->resource_group + "_" + cluster->name;
    std::string kubeconfig = "apiVersion: v1\nkind: Config\nclusters:\n- name: " + cluster->name +
                             "\n  cluster:\n    server: https://127.0.0.1:47011\ncontexts:\n- name: " + cluster->name +
                             "\n  context:\n    cluster: " + cluster->name + "\n    user: " + user +
                             "\ncurrent-context: " + cluster->name + "\nusers:\n- name: " + user + "\n  user: {}\n";
    nlohmann::json reply{
        {"hybridConnectionConfig",
         {{"expirationTime", expiry_s},
          {"hybridConnectionName", cluster->hybrid_connection},
          {"relay", public_host},
          {"token", sas},
          {"agentKeyPins", cluster->agent_key_pins}}},
        {"kubeconfigs", nlohmann::json::array({{{"name", "credentialUser"}, {"value", base64(kubeconfig)}}})}};
    return {200, "application/json; charset=utf-8", reply.dump(), {}};
  }

  // ARM's cloud metadata document (what `az cloud register` reads), reduced
  // to what a client needs to sign in for this API. Public, as ARM's is.
  ManagementResponse metadata() const {
    std::string login = options_.authority.empty() ? "https://login.microsoftonline.com/" : options_.authority;
    if (login.back() != '/') login += '/';
    nlohmann::json j{{"authentication",
                      {{"loginEndpoint", login},
                       {"audiences", options_.audiences},
                       {"tenant", options_.tenant.empty() ? "common" : options_.tenant},
                       {"identityProvider", "AAD"}}},
                     {"name", "clusterconnect-relay"},
                     {"resourceManager", "https://" + options_.public_host + "/"}};
    return {200, "application/json; charset=utf-8", j.dump(), {}};
  }

  static std::string scope_of(const ClusterEntry& c) {
    return "/subscriptions/" + c.subscription + "/resourceGroups/" + c.resource_group +
           "/providers/Microsoft.Kubernetes/connectedClusters/" + c.name;
  }

  std::string location() const { return options_.location.empty() ? "local" : options_.location; }

  // An assignment counts when it names the caller (or one of the caller's
  // groups) and its role grants this very action.
  bool allows(const Registry& reg, const ClusterEntry& cluster, const Identity& id, std::string_view action) const {
    if (scoped_allows(reg, scope_of(cluster), id, action)) return true;
    return std::any_of(cluster.role_assignments.begin(), cluster.role_assignments.end(), [&](const ConfiguredRoleAssignment& r) {
      const bool mine = ascii_iequals(r.principal, id.uid) ||
                        std::any_of(id.groups.begin(), id.groups.end(), [&](const std::string& g) { return ascii_iequals(g, r.principal); });
      const RoleDefinition* role = mine ? reg.role(r.role) : nullptr;
      return role && role->allows(std::string(action));
    });
  }

  // ARM's 401: its error code, and a WWW-Authenticate challenge that names
  // where to sign in.
  ManagementResponse unauthenticated(const std::string& code, const std::string& message, const std::string& description) const {
    auto r = arm_error(401, code, message);
    std::string authority = options_.authority.empty() ? "https://login.microsoftonline.com/" : options_.authority;
    if (authority.back() != '/') authority += '/';
    r.headers.emplace_back("WWW-Authenticate", "Bearer authorization_uri=\"" + authority + options_.tenant +
                                                   "\", error=\"invalid_token\", error_description=\"" + description + "\"");
    return r;
  }

  // The clusters of a subscription or resource group the caller may read, as
  // ARM lists them (one page).
  ManagementResponse list(const Registry& reg, const ArmPath& arm, const Identity& id) {
    nlohmann::json value = nlohmann::json::array();
    for (const auto& c : reg.clusters) {
      if (!ascii_iequals(c.subscription, arm.subscription)) continue;
      if (!arm.resource_group.empty() && !ascii_iequals(c.resource_group, arm.resource_group)) continue;
      if (allows(reg, c, id, action_read)) value.push_back(resource_json(c));
    }
    return {200, "application/json; charset=utf-8", nlohmann::json{{"value", std::move(value)}}.dump(), {}};
  }

  ManagementResponse resource(const ClusterEntry& c, const std::string&) {
    return {200, "application/json; charset=utf-8", resource_json(c).dump(), {}};
  }

  // The connectedCluster resource as ARM answers it. What ARM records at
  // PUT (identity, systemData, the agent's public key, distribution) comes
  // from the registry record when it holds it; what the agents report comes
  // from their latest control channel; what nobody knows is left out.
  nlohmann::json resource_json(const ClusterEntry& c) {
    const auto now = std::chrono::system_clock::now();
    AgentStatus status;
    if (options_.agent_status) status = options_.agent_status(c.identity());
    if (agents_ && status.control_channels == 0) status.control_channels = agents_(c.hybrid_connection);
    if (status.control_channels > 0 && !status.last_connected) status.last_connected = now;
    const nlohmann::json& raw = c.raw;

    nlohmann::json properties{{"provisioningState", "Succeeded"},
                              {"connectivityStatus", connectivity_status(status, now)},
                              {"agentTunnels", status.control_channels}};
    if (auto cert = raw_string(raw, "agent_public_key_certificate"); !cert.empty())
      properties["agentPublicKeyCertificate"] = cert;
    const auto& r = status.report;
    if (!r.kubernetes_version.empty())  // ARM's shape is "1.32.2", not gitVersion's "v1.32.2"
      properties["kubernetesVersion"] =
          r.kubernetes_version[0] == 'v' ? r.kubernetes_version.substr(1) : r.kubernetes_version;
    if (r.node_count) properties["totalNodeCount"] = *r.node_count;
    if (r.core_count) properties["totalCoreCount"] = *r.core_count;
    if (!r.agent_version.empty()) properties["agentVersion"] = r.agent_version;
    auto distribution = r.distribution.empty() ? raw_string(raw, "distribution") : r.distribution;
    if (!distribution.empty()) properties["distribution"] = distribution;
    auto infrastructure = r.infrastructure.empty() ? raw_string(raw, "infrastructure") : r.infrastructure;
    if (!infrastructure.empty()) properties["infrastructure"] = infrastructure;
    if (status.last_connected) properties["lastConnectivityTime"] = arm_time(*status.last_connected);

    nlohmann::json j{{"id", scope_of(c)},
                     {"name", c.name},
                     {"type", "Microsoft.Kubernetes/connectedClusters"},
                     {"location", location()},
                     {"tags", raw.is_object() && raw.contains("tags") && raw["tags"].is_object() ? raw["tags"]
                                                                                                : nlohmann::json::object()},
                     {"identity", identity_json(c)},
                     {"properties", std::move(properties)}};
    if (auto system_data = system_data_json(raw); !system_data.empty()) j["systemData"] = std::move(system_data);
    return j;
  }

  // ARM gives every connected cluster a system-assigned identity. The
  // registry's record wins; otherwise the principal is derived from the
  // resource ID (stable, distinct per cluster) and the tenant is the
  // management API's (or derived from the subscription when it has none).
  nlohmann::json identity_json(const ClusterEntry& c) const {
    std::string principal, tenant;
    if (c.raw.is_object() && c.raw.contains("identity") && c.raw["identity"].is_object()) {
      principal = raw_string(c.raw["identity"], "principalId");
      tenant = raw_string(c.raw["identity"], "tenantId");
    }
    if (principal.empty()) principal = derived_guid("connectedClusters identity " + c.identity());
    if (tenant.empty()) tenant = is_guid(options_.tenant) ? options_.tenant : derived_guid("tenant " + lower(c.subscription));
    return {{"type", "SystemAssigned"}, {"principalId", principal}, {"tenantId", tenant}};
  }

  // Only what the registry recorded, under ARM's names.
  static nlohmann::json system_data_json(const nlohmann::json& raw) {
    nlohmann::json out = nlohmann::json::object();
    if (!raw.is_object() || !raw.contains("system_data") || !raw["system_data"].is_object()) return out;
    for (const char* key : {"createdBy", "createdByType", "createdAt", "lastModifiedBy", "lastModifiedByType", "lastModifiedAt"})
      if (auto v = raw_string(raw["system_data"], key); !v.empty()) out[key] = v;
    return out;
  }

  // --- Writes: PUT and DELETE of a cluster, and listKeys (our extension) ---

 public:
  void set_store(std::shared_ptr<RegistryStore> store) { store_ = std::move(store); }

 private:
  static constexpr unsigned max_writes_in_flight = 8;

  // Whether a scope (a subscription or resource group) has role assignments
  // of its own: ARM knows it even when it holds no cluster yet.
  bool scope_known(const std::string& scope) const {
    return std::any_of(options_.scoped_role_assignments.begin(), options_.scoped_role_assignments.end(),
                       [&](const ManagementOptions::ScopedRoleAssignment& a) {
                         return ascii_iequals(a.scope.substr(0, scope.size()), scope) &&
                                (a.scope.size() == scope.size() || a.scope[scope.size()] == '/');
                       });
  }

  // An assignment at a scope covers every resource under it (ARM's
  // inheritance): the resource ID starts with the scope at a '/'.
  bool scoped_allows(const Registry& reg, const std::string& resource_id, const Identity& id,
                     std::string_view action) const {
    return std::any_of(
        options_.scoped_role_assignments.begin(), options_.scoped_role_assignments.end(),
        [&](const ManagementOptions::ScopedRoleAssignment& a) {
          std::string scope = a.scope;
          while (!scope.empty() && scope.back() == '/') scope.pop_back();
          if (scope.empty() || resource_id.size() <= scope.size() ||
              !ascii_iequals(resource_id.substr(0, scope.size()), scope) || resource_id[scope.size()] != '/')
            return false;
          const bool mine = ascii_iequals(a.principal, id.uid) ||
                            std::any_of(id.groups.begin(), id.groups.end(),
                                        [&](const std::string& g) { return ascii_iequals(g, a.principal); });
          const RoleDefinition* role = mine ? reg.role(a.role) : nullptr;
          return role && role->allows(action);
        });
  }

  bool allows_on(const Registry& reg, const ClusterEntry* cluster, const std::string& resource_id, const Identity& id,
                 std::string_view action) const {
    return cluster ? allows(reg, *cluster, id, action) : scoped_allows(reg, resource_id, id, action);
  }

  static ManagementResponse forbidden(const Identity& id, std::string_view action, const std::string& scope) {
    return arm_error(403, "AuthorizationFailed",
                     "The client '" + id.user + "' with object id '" + id.uid +
                         "' does not have authorization to perform action '" + std::string(action) + "' over scope '" +
                         scope + "' or the scope is invalid.");
  }

  // ARM's rule for connectedClusters names: 1 to 63 letters, digits, '-',
  // '_' and '.', starting and ending with a letter or digit.
  static bool valid_cluster_name(const std::string& n) {
    auto alnum = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; };
    return !n.empty() && n.size() <= 63 && alnum(n.front()) && alnum(n.back()) &&
           std::all_of(n.begin(), n.end(), [&](char c) { return alnum(c) || c == '-' || c == '_' || c == '.'; });
  }

  // ARM compares locations without case and spaces ("East US" is "eastus").
  static std::string normalized_location(const std::string& l) {
    std::string out;
    for (char c : l)
      if (c != ' ') out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
  }

  static std::string random_key() {
    unsigned char b[32];
    if (RAND_bytes(b, sizeof b) != 1) throw std::runtime_error("no randomness for a new key");
    return base64(std::string(reinterpret_cast<const char*>(b), sizeof b));
  }

  // What a PUT body asks for, checked as ARM's resource provider checks it.
  struct ClusterPut {
    std::string location;
    std::string identity_type;
    std::string agent_certificate;  // as sent (base64 SPKI DER)
    std::string agent_key_pin;
    nlohmann::json tags = nlohmann::json::object();
  };

  std::variant<ClusterPut, ManagementResponse> parse_put(const std::string& body) const {
    auto bad = [](const std::string& message) { return arm_error(400, "InvalidRequestContent", message); };
    nlohmann::json j = nlohmann::json::parse(body.empty() ? "null" : body, nullptr, false);
    if (j.is_discarded() || !j.is_object())
      return bad("The request content was invalid and could not be deserialized: a JSON object is required.");
    ClusterPut put;
    if (!j.contains("location") || !j["location"].is_string() || j["location"].get<std::string>().empty())
      return arm_error(400, "LocationRequired", "The location property is required for this definition.");
    put.location = j["location"].get<std::string>();
    if (normalized_location(put.location) != normalized_location(location()))
      return arm_error(400, "LocationNotAvailableForResourceType",
                       "The provided location '" + put.location.substr(0, 64) +
                           "' is not available for resource type 'Microsoft.Kubernetes/connectedClusters'. List of "
                           "available regions for the resource type is '" +
                           location() + "'.");
    if (!j.contains("identity") || !j["identity"].is_object() || !j["identity"].contains("type") ||
        !j["identity"]["type"].is_string())
      return bad(
          "The request content is missing the required property 'identity.type' (\"SystemAssigned\" or \"None\").");
    put.identity_type = j["identity"]["type"].get<std::string>();
    if (put.identity_type != "SystemAssigned" && put.identity_type != "None")
      return bad("identity.type must be \"SystemAssigned\" or \"None\".");
    if (j.contains("tags")) {
      if (!j["tags"].is_object() || j["tags"].size() > 50) return bad("tags must be an object of at most 50 strings.");
      for (const auto& [k, v] : j["tags"].items())
        if (!v.is_string() || k.size() > 512 || v.get<std::string>().size() > 256)
          return bad("tags must be an object of at most 50 strings.");
      put.tags = j["tags"];
    }
    const auto& props = j.contains("properties") && j["properties"].is_object() ? j["properties"] : nlohmann::json();
    if (!props.contains("agentPublicKeyCertificate") || !props["agentPublicKeyCertificate"].is_string() ||
        props["agentPublicKeyCertificate"].get<std::string>().empty())
      return bad(
          "The request content is missing the required property 'properties.agentPublicKeyCertificate' (the "
          "base64 DER SubjectPublicKeyInfo of the agent's public key).");
    put.agent_certificate = props["agentPublicKeyCertificate"].get<std::string>();
    const auto& b64 = put.agent_certificate;
    if (b64.size() > 8192 || b64.size() % 4 != 0)
      return bad("properties.agentPublicKeyCertificate is not base64 of a DER SubjectPublicKeyInfo.");
    std::string der(b64.size() / 4 * 3, '\0');
    int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(der.data()),
                            reinterpret_cast<const unsigned char*>(b64.data()), static_cast<int>(b64.size()));
    if (n < 0) return bad("properties.agentPublicKeyCertificate is not base64 of a DER SubjectPublicKeyInfo.");
    der.resize(static_cast<std::size_t>(n) - (b64.size() >= 2 && b64[b64.size() - 2] == '=' ? 2
                                              : b64.back() == '='                           ? 1
                                                                                            : 0));
    try {
      put.agent_key_pin = agent_key_pin_from_spki_der(der);
    } catch (const std::exception&) {
      return bad("properties.agentPublicKeyCertificate is not base64 of a DER SubjectPublicKeyInfo.");
    }
    return put;
  }

  // PUT, DELETE and listKeys: authorized against the current snapshot, then
  // (PUT, DELETE) written by a thread of their own, one at a time, so the
  // store's blocking calls never hold an io thread.
  void writer(const Identity& id, const ArmPath& arm, const std::string& method, bool list_keys,
              const std::string& body, const std::string& public_host,
              UniqueFunction<void(ManagementResponse)> respond) {
    if (!store_)
      return respond(
          arm_error(405, "MethodNotAllowed", "this relay's registry is read-only (start it with --config or --store)"));
    const auto snapshot = registry_();
    const Registry& reg = *snapshot;
    const ClusterEntry* cluster = reg.cluster_by_name(arm.subscription, arm.resource_group, arm.name);
    const std::string resource_id = cluster ? scope_of(*cluster)
                                            : "/subscriptions/" + arm.subscription + "/resourceGroups/" +
                                                  arm.resource_group +
                                                  "/providers/Microsoft.Kubernetes/connectedClusters/" + arm.name;
    const std::string write_action = "Microsoft.Kubernetes/connectedClusters/write";
    const std::string delete_action = "Microsoft.Kubernetes/connectedClusters/delete";
    const std::string& action = method == "DELETE" && !list_keys ? delete_action : write_action;
    if (!allows_on(reg, cluster, resource_id, id, action)) {
      logger_->info("management {} by {} refused: no role grants {} on {}", list_keys ? "listKeys" : method, id.uid,
                    action, resource_id);
      return respond(forbidden(id, action, resource_id));
    }
    if (list_keys) return respond(listen_keys(cluster, arm, public_host));
    if (method == "DELETE" && !cluster) return respond({204, "application/json; charset=utf-8", "", {}});
    std::optional<ClusterPut> put;
    if (method == "PUT") {
      if (!valid_cluster_name(arm.name))
        return respond(arm_error(400, "InvalidResourceName",
                                 "Resource name " + arm.name.substr(0, 80) +
                                     " is invalid. The name can be up to 63 characters long: letters, digits, '-', '_' "
                                     "and '.', starting and ending with a letter or digit."));
      auto parsed = parse_put(body);
      if (auto* r = std::get_if<ManagementResponse>(&parsed)) return respond(std::move(*r));
      put = std::get<ClusterPut>(std::move(parsed));
    }
    if (writes_in_flight_.fetch_add(1) >= max_writes_in_flight) {
      writes_in_flight_.fetch_sub(1);
      auto r = arm_error(429, "TooManyRequests", "too many registry writes in progress; retry shortly");
      r.headers.emplace_back("Retry-After", "1");
      return respond(std::move(r));
    }
    auto self = shared_from_this();
    std::thread([self, arm, put = std::move(put), id, respond = std::move(respond)]() mutable {
      ManagementResponse r;
      try {
        std::lock_guard lock(self->write_mutex_);
        r = put ? self->put_cluster(arm, *put, id) : self->delete_cluster(arm, id);
      } catch (const std::exception& e) {
        self->logger_->error("management {} {}: the registry was not changed: {}", put ? "PUT" : "DELETE", arm.name,
                             e.what());
        r = arm_error(500, "InternalServerError", "The relay could not write its registry; see its log.");
      }
      self->writes_in_flight_.fetch_sub(1);
      respond(std::move(r));
    }).detach();
  }

  ManagementResponse put_cluster(const ArmPath& arm, const ClusterPut& put, const Identity& id) {
    ClusterName name{arm.subscription, arm.resource_group, arm.name};
    bool created = false;
    nlohmann::json written;
    store_->edit_cluster(name, [&](const nlohmann::json& current) {
      nlohmann::json record = current;
      created = current.is_null();
      if (created) {
        // The cluster's keys are made here and never leave the relay except
        // through listKeys (listen) and connect tokens (connect).
        auto key = [&](const std::string& key_name, const char* right) {
          nlohmann::json k = store_->store_secret(name, key_name, random_key());
          k["name"] = key_name;
          k["rights"] = nlohmann::json::array({right});
          return k;
        };
        record = {{"subscription", arm.subscription},
                  {"resource_group", arm.resource_group},
                  {"name", arm.name},
                  {"hybrid_connection", "clusters/" + arm.subscription + "/" + arm.resource_group + "/" + arm.name},
                  {"keys", nlohmann::json::array({key("listen", "listen"), key("connect", "connect")})},
                  {"created_by", id.uid}};
      }
      // The agent's key is the one the PUT names: a new key pair replaces the
      // pin (key rotation is a PUT with the new key).
      record["agent_key_pins"] = nlohmann::json::array({put.agent_key_pin});
      record["agent_public_key_certificate"] = put.agent_certificate;
      record["location"] = location();
      record["tags"] = put.tags;
      nlohmann::json identity{{"type", put.identity_type}};
      if (put.identity_type == "SystemAssigned") {
        const auto& old = current.is_object() ? current.value("identity", nlohmann::json()) : nlohmann::json();
        identity["principalId"] =
            old.is_object() && old.contains("principalId") ? old["principalId"] : nlohmann::json(new_request_id());
        identity["tenantId"] = options_.tenant;
      }
      record["identity"] = identity;
      written = record;
      return record;
    });
    logger_->info("cluster {} {} by {} ({})", scope_of_name(arm), created ? "created" : "updated", id.user, id.uid);
    wait_visible([&](const Registry& reg) {
      const ClusterEntry* c = reg.cluster_by_name(arm.subscription, arm.resource_group, arm.name);
      return c && c->agent_key_pins == std::vector<std::string>{put.agent_key_pin};
    });
    ClusterEntry entry;
    entry.subscription = arm.subscription;
    entry.resource_group = arm.resource_group;
    entry.name = arm.name;
    entry.hybrid_connection = written["hybrid_connection"].get<std::string>();
    if (auto snapshot = registry_();
        const ClusterEntry* c = snapshot->cluster_by_name(arm.subscription, arm.resource_group, arm.name))
      entry = *c;
    nlohmann::json body = resource_json(entry);
    body["identity"] = written["identity"];
    body["tags"] = written["tags"];
    body["properties"]["agentPublicKeyCertificate"] = put.agent_certificate;
    body["properties"]["provisioningState"] = "Succeeded";
    return {created ? 201u : 200u, "application/json; charset=utf-8", body.dump(), {}};
  }

  ManagementResponse delete_cluster(const ArmPath& arm, const Identity& id) {
    ClusterName name{arm.subscription, arm.resource_group, arm.name};
    bool existed = false;
    store_->edit_cluster(name, [&](const nlohmann::json& current) {
      existed = !current.is_null();
      return nlohmann::json();
    });
    logger_->info("cluster {} deleted by {} ({})", scope_of_name(arm), id.user, id.uid);
    wait_visible(
        [&](const Registry& reg) { return !reg.cluster_by_name(arm.subscription, arm.resource_group, arm.name); });
    return {existed ? 200u : 204u, "application/json; charset=utf-8", "", {}};
  }

  // Our extension, shaped like Azure Relay's listKeys on a hybrid
  // connection's authorization rule: the listen key the cluster's agent
  // signs its control channels with. Only for callers that may write the
  // cluster (they install the agent).
  ManagementResponse listen_keys(const ClusterEntry* cluster, const ArmPath& arm, const std::string& public_host) {
    if (!cluster)
      return arm_error(404, "ResourceNotFound",
                       "The Resource 'Microsoft.Kubernetes/connectedClusters/" + arm.name + "' under resource group '" +
                           arm.resource_group + "' was not found.");
    const RelayKey* key = cluster->key_with_right("listen");
    if (!key)
      return arm_error(409, "ListenKeyMissing", "cluster " + cluster->name + " has no key with the listen right");
    // Azure Relay names its namespace without a port; ours may listen on one.
    nlohmann::json j{{"keyName", key->name},
                     {"primaryKey", key->secret},
                     {"primaryConnectionString", "Endpoint=sb://" + public_host + "/;SharedAccessKeyName=" + key->name +
                                                     ";SharedAccessKey=" + key->secret +
                                                     ";EntityPath=" + cluster->hybrid_connection}};
    logger_->info("listKeys for {}", scope_of(*cluster));
    return {200, "application/json; charset=utf-8", j.dump(), {}};
  }

  static std::string scope_of_name(const ArmPath& arm) {
    return "/subscriptions/" + arm.subscription + "/resourceGroups/" + arm.resource_group +
           "/providers/Microsoft.Kubernetes/connectedClusters/" + arm.name;
  }

  // Until the relay's snapshot shows the write (bounded): a caller that gets
  // its answer can use the cluster at once (listKeys, the agent's handshake).
  void wait_visible(const std::function<bool(const Registry&)>& done) const {
    const auto deadline = std::chrono::steady_clock::now() + options_.write_visible_timeout;
    while (!done(*registry_())) {
      if (std::chrono::steady_clock::now() >= deadline) {
        logger_->warn("a registry write is not visible yet after {} ms; answering anyway",
                      options_.write_visible_timeout.count());
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  std::shared_ptr<RegistryStore> store_;
  std::mutex write_mutex_;
  std::atomic<unsigned> writes_in_flight_{0};
  RegistrySnapshot registry_;
  ManagementOptions options_;
  std::shared_ptr<Authenticator> authenticator_;
  AgentCount agents_;
  std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace

std::shared_ptr<ManagementApi> make_management_api(RegistrySnapshot registry, ManagementOptions options,
                                                   std::shared_ptr<Authenticator> authenticator, AgentCount agents,
                                                   std::shared_ptr<spdlog::logger> logger) {
  return std::make_shared<Api>(std::move(registry), std::move(options), std::move(authenticator), std::move(agents),
                               std::move(logger));
}

std::shared_ptr<ManagementApi> make_management_api(std::shared_ptr<RegistryStore> store, ManagementOptions options,
                                                   std::shared_ptr<Authenticator> authenticator, AgentCount agents,
                                                   std::shared_ptr<spdlog::logger> logger) {
  auto api = std::make_shared<Api>([store] { return store->snapshot(); }, std::move(options), std::move(authenticator),
                                   std::move(agents), std::move(logger));
  api->set_store(std::move(store));
  return api;
}

std::shared_ptr<ManagementApi> make_management_api(std::shared_ptr<const RelayConfig> config, ManagementOptions options,
                                                   std::shared_ptr<Authenticator> authenticator, AgentCount agents,
                                                   std::shared_ptr<spdlog::logger> logger) {
  std::shared_ptr<const Registry> fixed = std::move(config);
  return make_management_api([fixed] { return fixed; }, std::move(options), std::move(authenticator), std::move(agents),
                             std::move(logger));
}

}  // namespace clusterconnect::relay
