#pragma once
// The relay's ARM-shaped management API, as `az connectedk8s proxy` calls it:
// listClusterUserCredential returns the relay, the hybrid connection and a
// short-lived connect token for one cluster.

#include <chrono>
#include <string>
#include <vector>

#include "clusterconnect/result.hpp"

namespace clusterconnect::proxy {

struct ClusterRef {
  std::string subscription;
  std::string resource_group;
  std::string name;
};

struct ClusterCredential {
  std::string relay;                 // HOST[:PORT] of the relay
  std::string hybrid_connection;     // path after /$hc/
  std::string token;                 // SharedAccessSignature ... (connect right)
  std::chrono::system_clock::time_point expires_on;
  // The pins of the keys the cluster's agents prove end to end (tls transport).
  std::vector<std::string> agent_key_pins;
};

struct ManagementClientOptions {
  std::string endpoint;  // https://HOST[:PORT]
  std::string ca_file;   // empty: system store
  std::string api_version = "2024-01-01";
};

// GETs the relay's /metadata/endpoints (ARM's cloud metadata shape) and
// returns the audience its management API accepts. Refuses an ARM audience:
// the proxy never hands the relay a token that is good for Azure itself.
Result<std::string> discover_management_audience(const ManagementClientOptions& options);

// POSTs {"authenticationMethod": AAD|Token, "clientProxy": true}. Retries
// 429/5xx with backoff (honouring Retry-After); errors carry the ARM error
// code and message.
Result<ClusterCredential> list_cluster_user_credential(const ManagementClientOptions& options, const ClusterRef& cluster,
                                                       const std::string& access_token, bool token_mode);

// The connected clusters of a subscription (or of one resource group of it,
// when `resource_group` is not empty) that the caller may read, as ARM lists
// them (GET .../connectedClusters, following nextLink on the same endpoint),
// each named by its resource ID.
Result<std::vector<ClusterRef>> list_connected_clusters(const ManagementClientOptions& options,
                                                        const std::string& subscription,
                                                        const std::string& resource_group,
                                                        const std::string& access_token);

// Subscription, group and name from a connectedClusters resource ID
// (/subscriptions/S/resourceGroups/G/providers/Microsoft.Kubernetes/connectedClusters/N),
// the fixed segments compared case-insensitively as ARM does.
Result<ClusterRef> parse_cluster_id(const std::string& id);

}  // namespace clusterconnect::proxy
