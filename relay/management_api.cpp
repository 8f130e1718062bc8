#include "management_api.hpp"

#include <algorithm>
#include <cctype>
#include <optional>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include "clusterconnect/ascii.hpp"
#include "clusterconnect/sas_token.hpp"
#include "clusterconnect/url.hpp"
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
          nlohmann::json{{"error", {{"code", code}, {"message", message}}}}.dump()};
}

// /subscriptions/{s}/resourceGroups/{g}/providers/Microsoft.Kubernetes/connectedClusters/{n}[/{action}]
// ARM matches the fixed segments case-insensitively (clients send
// "resourcegroups" too).
struct ArmPath {
  std::string subscription, resource_group, name, action;
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
  if (seg.size() != 8 && seg.size() != 9) return std::nullopt;
  if (lower(seg[0]) != "subscriptions" || lower(seg[2]) != "resourcegroups" || lower(seg[4]) != "providers" ||
      lower(seg[5]) != "microsoft.kubernetes" || lower(seg[6]) != "connectedclusters")
    return std::nullopt;
  return ArmPath{seg[1], seg[3], seg[7], seg.size() == 9 ? seg[8] : ""};
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

class Api final : public ManagementApi, public std::enable_shared_from_this<Api> {
 public:
  Api(std::shared_ptr<const RelayConfig> config, ManagementOptions options, std::shared_ptr<Authenticator> authenticator,
      AgentCount agents, std::shared_ptr<spdlog::logger> logger)
      : config_(std::move(config)),
        options_(std::move(options)),
        authenticator_(std::move(authenticator)),
        agents_(std::move(agents)),
        logger_(std::move(logger)) {}

  void handle(ManagementRequest request, UniqueFunction<void(ManagementResponse)> respond) override {
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
    if (!arm->action.empty() && !list_credential)
      return respond(arm_error(404, "NotFound", "unknown action '" + arm->action + "' on connectedClusters"));
    if (list_credential && request.method != "POST")
      return respond(arm_error(405, "MethodNotAllowed", "listClusterUserCredential takes POST"));
    if (!list_credential && request.method != "GET")
      return respond(arm_error(405, "MethodNotAllowed", "the connectedClusters resource takes GET"));
    if (query_param(query, "api-version").empty())
      return respond(arm_error(400, "MissingApiVersionParameter",
                               "The api-version query parameter (?api-version=) is required for all requests."));

    std::string token;
    auto auth = request.headers.find("authorization");
    if (auth != request.headers.end() && auth->second.size() > 7 && lower(auth->second.substr(0, 7)) == "bearer ")
      token = auth->second.substr(7);
    if (token.empty())
      return respond(arm_error(401, "AuthenticationFailed",
                               "Authentication failed. The 'Authorization' header is missing."));
    if (!authenticator_)
      return respond(arm_error(503, "ServiceUnavailable", "the relay has no authenticator configured for its management API"));

    // Connect tokens are signed for the configured public host only, never for
    // a Host header the caller chose.
    std::string host = options_.public_host;
    if (host.empty())
      return respond(arm_error(503, "ServiceUnavailable", "the relay has no public_host configured; it cannot issue connect tokens"));
    auto self = shared_from_this();
    authenticator_->async_authenticate(
        std::move(token), [self, arm = *arm, list_credential, body = std::move(request.body), host = std::move(host),
                           respond = std::move(respond)](AuthOutcome outcome) mutable {
          respond(self->authorized(outcome, arm, list_credential, body, host));
        });
  }

 private:
  ManagementResponse authorized(const AuthOutcome& outcome, const ArmPath& arm, bool list_credential,
                                const std::string& body, const std::string& public_host) {
    if (!outcome.ok()) {
      logger_->info("management request refused: {} ({})", outcome.message, to_string(outcome.failure));
      return arm_error(401, "InvalidAuthenticationToken", "The access token is invalid: " + outcome.message);
    }
    const ClusterEntry* cluster = config_->cluster_by_name(arm.subscription, arm.resource_group, arm.name);
    std::string scope = "/subscriptions/" + arm.subscription + "/resourceGroups/" + arm.resource_group +
                        "/providers/Microsoft.Kubernetes/connectedClusters/" + arm.name;
    if (!cluster)
      return arm_error(404, "ResourceNotFound",
                       "The Resource 'Microsoft.Kubernetes/connectedClusters/" + arm.name + "' under resource group '" +
                           arm.resource_group + "' was not found.");
    const auto& id = outcome.identity;
    const std::string action(list_credential ? action_list_credential : action_read);
    // An assignment counts when it names the caller (or one of the caller's
    // groups) and its role grants this very action.
    bool allowed = std::any_of(cluster->role_assignments.begin(), cluster->role_assignments.end(), [&](const ConfiguredRoleAssignment& r) {
      const bool mine = ascii_iequals(r.principal, id.uid) ||
                        std::any_of(id.groups.begin(), id.groups.end(), [&](const std::string& g) { return ascii_iequals(g, r.principal); });
      const RoleDefinition* role = mine ? config_->role(r.role) : nullptr;
      return role && role->allows(action);
    });
    if (!allowed) {
      logger_->info("management request by {} refused: no role assignment on {}", id.uid, scope);
      return arm_error(403, "AuthorizationFailed",
                       "The client '" + id.user + "' with object id '" + id.uid +
                           "' does not have authorization to perform action '" + action + "' over scope '" + scope +
                           "' or the scope is invalid.");
    }
    if (!list_credential) return resource(*cluster, scope);

    nlohmann::json request;
    try {
      request = nlohmann::json::parse(body.empty() ? "{}" : body);
    } catch (const std::exception&) {
      return arm_error(400, "InvalidRequestContent", "The request content was invalid and could not be deserialized.");
    }
    std::string method = request.is_object() ? request.value("authenticationMethod", std::string("AAD")) : "";
    if (method != "AAD" && method != "Token")
      return arm_error(400, "InvalidRequestContent", "authenticationMethod must be \"AAD\" or \"Token\"");
    if (request.is_object() && request.contains("clientProxy") && !request["clientProxy"].is_boolean())
      return arm_error(400, "InvalidRequestContent", "clientProxy must be a boolean");

    const RelayKey* key = cluster->key_with_right("connect");  // connect-only: the registry refuses mixed keys
    if (!key)
      return arm_error(409, "ConnectKeyMissing", "cluster " + cluster->name + " has no key with the connect right in the relay's registry");
    auto expiry = std::chrono::system_clock::now() + options_.token_lifetime;
    auto expiry_s = std::chrono::duration_cast<std::chrono::seconds>(expiry.time_since_epoch()).count();
    std::string resource_uri = "https://" + public_host + "/" + cluster->hybrid_connection;
    std::string sas = make_sas_token(resource_uri, key->name, key->secret, expiry);
    logger_->info("issued a connect token for {} to {} ({}), valid {} s", cluster->name, id.user, id.uid,
                  options_.token_lifetime.count());

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
    return {200, "application/json; charset=utf-8", reply.dump()};
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
    return {200, "application/json; charset=utf-8", j.dump()};
  }

  ManagementResponse resource(const ClusterEntry& c, const std::string& scope) {
    unsigned agents = agents_ ? agents_(c.hybrid_connection) : 0;
    nlohmann::json r{{"id", scope},
                     {"name", c.name},
                     {"type", "Microsoft.Kubernetes/connectedClusters"},
                     {"location", "local"},
                     {"properties",
                      {{"provisioningState", "Succeeded"},
                       {"connectivityStatus", agents > 0 ? "Connected" : "Offline"},
                       {"agentTunnels", agents}}}};
    return {200, "application/json; charset=utf-8", r.dump()};
  }

  std::shared_ptr<const RelayConfig> config_;
  ManagementOptions options_;
  std::shared_ptr<Authenticator> authenticator_;
  AgentCount agents_;
  std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace

std::shared_ptr<ManagementApi> make_management_api(std::shared_ptr<const RelayConfig> config, ManagementOptions options,
                                                   std::shared_ptr<Authenticator> authenticator, AgentCount agents,
                                                   std::shared_ptr<spdlog::logger> logger) {
  return std::make_shared<Api>(std::move(config), std::move(options), std::move(authenticator), std::move(agents),
                               std::move(logger));
}

}  // namespace clusterconnect::relay
