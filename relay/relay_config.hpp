#pragma once
// The relay's configuration file (JSON): listener, TLS, limits, and the
// registry of clusters with their SAS keys and role assignments. Shared with
// the management API, which mints connect tokens and reads role assignments.
// Unknown fields are kept in `raw` for the parts that read them.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace clusterconnect::relay {

struct RelayKey {
  std::string name;
  std::vector<std::string> rights;  // exactly one of "listen" (agents) and "connect" (clients)
  std::string secret;                // loaded from secret_file (trailing newline trimmed)
  std::filesystem::path secret_file;
  bool has_right(std::string_view right) const;
};

// A role as ARM defines one: the actions it allows (`*` matches any run of
// characters, case-insensitively) minus its not_actions.
struct RoleDefinition {
  std::string name;
  std::vector<std::string> actions;
  std::vector<std::string> not_actions;
  bool allows(std::string_view action) const;
};

// The Azure built-in roles that concern connected clusters. Only a role whose
// actions include listClusterUserCredential/action lets a caller connect.
const std::vector<RoleDefinition>& builtin_role_definitions();

inline constexpr std::string_view action_read = "Microsoft.Kubernetes/connectedClusters/read";
inline constexpr std::string_view action_list_credential =
    "Microsoft.Kubernetes/connectedClusters/listClusterUserCredential/action";

struct ConfiguredRoleAssignment {
  std::string principal;  // object id of a user, group or application
  std::string role;
};

struct ClusterEntry {
  std::string subscription;
  std::string resource_group;
  std::string name;
  std::string hybrid_connection;  // path after /$hc/, several segments
  std::vector<RelayKey> keys;
  std::vector<ConfiguredRoleAssignment> role_assignments;
  // The keys the cluster's agents prove in an end-to-end rendezvous (SHA-256
  // of the public key, lowercase hex); handed to proxies, which pin them.
  std::vector<std::string> agent_key_pins;
  nlohmann::json raw;

  const RelayKey* key(std::string_view key_name) const;
  // The cluster's identity as the relay keys it (its resource ID in lower
  // case: ARM's names are case-insensitive); stable across registry changes,
  // unlike the entry's address.
  std::string identity() const;
  // ARM's resource ID, the cluster's full identity (names are unique only
  // within a resource group).
  std::string resource_id() const;
  // The first key with this right (for minting tokens), or null.
  const RelayKey* key_with_right(std::string_view right) const;
};

// The relay carries no mux since v2: what is left to limit is connections.
struct RelayLimits {
  std::size_t max_tunnels_per_cluster = 25;  // control channels, as Azure Relay's listeners per hybrid connection
  std::size_t max_connections = 10000;           // TLS connections not (yet) authenticated: handshakes, management calls
  std::size_t max_connections_per_address = 256;  // of those, from one client address
  std::chrono::milliseconds idle_timeout{45000};  // a control channel that answers no ping for this long is dropped
  std::chrono::milliseconds drain_timeout{30000};  // after SIGTERM, for channels to finish their closing handshakes
  // Hybrid Connections HTTP mode: a request's or a response's body is held
  // whole by the relay, up to this many bytes (413 / 502 beyond it).
  std::size_t max_http_body = 4 * 1024 * 1024;
  std::chrono::milliseconds http_response_timeout{60000};  // for a listener's response (then 504)
};

// The registry: clusters with their keys, role assignments and agent pins,
// and the registry's own role definitions. The relay reads it through
// immutable snapshots (RegistryStore) that are replaced whole when the store
// changes; an entry's address is valid as long as its snapshot is held.
struct Registry {
  std::vector<ClusterEntry> clusters;
  std::vector<RoleDefinition> role_definitions;  // the registry's own, beside the built-in ones

  // The cluster whose hybrid connection path is `path` (case-insensitive), or null.
  const ClusterEntry* cluster_by_path(std::string_view path) const;
  // The cluster whose path is the longest one that is `path` or a prefix of it
  // ending at a '/' (case-insensitive); `rest` is what follows it ("" or
  // "/…"). Null when none is.
  const ClusterEntry* cluster_by_path_prefix(std::string_view path, std::string_view& rest) const;
  const ClusterEntry* cluster_by_name(std::string_view subscription, std::string_view resource_group,
                                      std::string_view name) const;
  const ClusterEntry* cluster_by_identity(std::string_view identity) const;
  // The registry's role of that name, else the built-in one, else null (case-insensitive).
  const RoleDefinition* role(std::string_view name) const;
};

// The configuration file: the relay's own settings, and the registry the
// file store serves (its "clusters" and "role_definitions").
struct RelayConfig : Registry {
  std::string listen = "127.0.0.1:8443";
  std::string cert_file;
  std::string key_file;
  std::string public_host;  // host[:port] clients use; empty = the request's Host
  std::string metrics_listen;  // ADDRESS:PORT of the plain-HTTP metrics listener; empty = none
  RelayLimits limits;
  nlohmann::json management = nlohmann::json::object();
  nlohmann::json raw = nlohmann::json::object();
  std::filesystem::path base_dir;  // directory of the config file
};

// One cluster entry (the file's clusters[i], an etcd record's value), checked
// against the roles `registry` defines and the clusters it already has (a
// path or identity used twice is refused). `where` prefixes every message;
// relative secret files are read from `base_dir`. Throws std::runtime_error.
ClusterEntry parse_cluster_entry(const nlohmann::json& cj, const std::string& where, const Registry& registry,
                                 const std::filesystem::path& base_dir);
RoleDefinition parse_role_definition(const nlohmann::json& rj, const std::string& where, const Registry& registry);

// Control plane: throws std::runtime_error with a message naming the file and field.
RelayConfig parse_relay_config(const nlohmann::json& j, const std::filesystem::path& base_dir);
RelayConfig load_relay_config(const std::filesystem::path& file);

}  // namespace clusterconnect::relay
