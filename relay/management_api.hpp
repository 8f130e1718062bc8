#pragma once
// The relay's ARM-shaped management API (listClusterUserCredential and the
// cluster resource). The relay's HTTP front end hands every request that is
// not a tunnel handshake or a health/metrics endpoint to it.

#include <map>
#include <memory>
#include <string>
#include <string_view>

#include <chrono>
#include <functional>
#include <utility>
#include <vector>

#include "clusterconnect/arm_audience.hpp"
#include "clusterconnect/authenticator.hpp"
#include "clusterconnect/unique_function.hpp"
#include "listener_registry.hpp"

namespace spdlog {
class logger;
}

namespace clusterconnect::relay {

struct ManagementRequest {
  std::string method;
  std::string target;  // path and query, as received
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
};

struct ManagementResponse {
  unsigned status = 404;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // besides Content-Type (ARM's x-ms-*, WWW-Authenticate)
};

class ManagementApi {
 public:
  virtual ~ManagementApi() = default;
  // Completes on any thread; must not block an io thread.
  virtual void handle(ManagementRequest request, UniqueFunction<void(ManagementResponse)> respond) = 0;
};

struct RelayConfig;
struct Registry;

// The registry as it is now (a snapshot; never null).
using RegistrySnapshot = std::function<std::shared_ptr<const Registry>()>;

struct ManagementOptions {
  std::string public_host;  // HOST[:PORT] clients dial for tunnels, signed into connect tokens; required
  std::chrono::seconds token_lifetime{3600};
  // Published at /metadata/endpoints (ARM's cloud metadata shape) so clients
  // learn which audience to request and from which authority.
  std::vector<std::string> audiences;
  std::string tenant;
  std::string authority;
  std::string location;  // the resources' "location" (an Azure region name, or where the relay runs); default "local"
  // Role assignments above one cluster (a subscription or a resource group,
  // as ARM's scopes): they cover every cluster under their scope, and the
  // ones that grant connectedClusters/write are what lets a caller create a
  // cluster (PUT) that has no assignments of its own yet. From the
  // configuration's management.role_assignments.
  struct ScopedRoleAssignment {
    std::string scope;  // /subscriptions/{s}[/resourceGroups/{g}]
    std::string principal;
    std::string role;
  };
  std::vector<ScopedRoleAssignment> scoped_role_assignments;
  // A write (PUT, DELETE) answers once the relay's registry snapshot shows it,
  // or after this long (the etcd store applies changes as etcd reports them).
  std::chrono::milliseconds write_visible_timeout{10000};
  // What the relay knows of a cluster's agents (by ClusterEntry::identity()):
  // the resource's connectivity and what its agents reported. When unset, the
  // AgentCount alone decides connectivityStatus.
  std::function<AgentStatus(const std::string& identity)> agent_status;
};

// Agents connected per hybrid connection, for the resource's connectivityStatus.
using AgentCount = std::function<unsigned(const std::string& hybrid_connection)>;

// The ARM-shaped API over the relay's registry: callers authenticate with an
// Entra token for the relay's audience; a role assignment on the cluster (their
// object ID or one of their groups) lets them list its connect credential.
// Every call reads the registry's current snapshot once it has authenticated
// its caller: a removed role assignment refuses the next call.
std::shared_ptr<ManagementApi> make_management_api(RegistrySnapshot registry, ManagementOptions options,
                                                   std::shared_ptr<Authenticator> authenticator, AgentCount agents,
                                                   std::shared_ptr<spdlog::logger> logger);
class RegistryStore;

// Over a store that it reads and writes: besides the above, ARM's PUT and
// DELETE of a cluster and the listKeys action (our extension; see
// docs/management-api.md). Writes run one at a time on a thread of their own.
std::shared_ptr<ManagementApi> make_management_api(std::shared_ptr<RegistryStore> store, ManagementOptions options,
                                                   std::shared_ptr<Authenticator> authenticator, AgentCount agents,
                                                   std::shared_ptr<spdlog::logger> logger);
// Over a fixed registry (the configuration's).
std::shared_ptr<ManagementApi> make_management_api(std::shared_ptr<const RelayConfig> config, ManagementOptions options,
                                                   std::shared_ptr<Authenticator> authenticator, AgentCount agents,
                                                   std::shared_ptr<spdlog::logger> logger);

}  // namespace clusterconnect::relay
