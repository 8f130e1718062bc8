#pragma once
// The relay's management API as onboarding calls it (ARM's shape):
// PUT/GET/DELETE of a connectedClusters resource and listKeys (the relay's
// extension, shaped like Azure Relay's). Control plane, blocking.

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "clusterconnect/result.hpp"

namespace clusterconnect::onboarding {

struct ManagementTarget {
  std::string endpoint;  // https://HOST[:PORT]
  std::string ca_file;   // empty: $SSL_CERT_FILE, else the system store
  std::string token;     // bearer token for the management API's audience
  std::string api_version = "2024-01-01";
};

struct ClusterId {
  std::string subscription, resource_group, name;
  std::string resource_id() const;
};

// Azure Relay's connection string, as listKeys returns it.
struct ListenKey {
  std::string relay;  // HOST[:PORT] from Endpoint=sb://…/
  std::string key_name;
  std::string key;
  std::string entity_path;  // the hybrid connection
};
// Parses Endpoint=sb://HOST/;SharedAccessKeyName=…;SharedAccessKey=…;EntityPath=….
Result<ListenKey> parse_connection_string(const std::string& text);

// The audience the management API accepts, from its /metadata/endpoints;
// refuses Azure Resource Manager's (a token for it is never sent to a relay).
Result<std::string> management_audience(const std::string& endpoint, const std::string& ca_file);

// PUT: the resource as the relay answers it (201 created, 200 updated).
Result<nlohmann::json> put_cluster(const ManagementTarget& m, const ClusterId& id, const nlohmann::json& body);
Result<ListenKey> list_keys(const ManagementTarget& m, const ClusterId& id);
// GET: the resource, or nullopt on 404 ResourceNotFound.
Result<std::optional<nlohmann::json>> get_cluster(const ManagementTarget& m, const ClusterId& id);
// GET of the clusters the caller may read in a subscription, or one of its
// resource groups when `resource_group` is not empty (ARM's list, one page).
Result<nlohmann::json> list_clusters(const ManagementTarget& m, const std::string& subscription,
                                     const std::string& resource_group);
// DELETE: true when it existed (200), false when there was none (204).
Result<bool> delete_cluster(const ManagementTarget& m, const ClusterId& id);

}  // namespace clusterconnect::onboarding
