#pragma once
// Where the relay's registry lives: the configuration file (the embedded
// default, one process) or etcd (replicas). Either way the relay reads it
// through an immutable snapshot that is replaced whole when the store
// changes, so a handshake, a token check or a management call sees one
// consistent registry, and a change needs no restart.
//
// Records are per cluster: the JSON shape of the file's clusters[i] (keys
// with their secret or secret_file, role assignments, agent key pins).
// Admin commands edit one record at a time (control plane, blocking).

#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "relay_config.hpp"

namespace spdlog {
class logger;
}

namespace clusterconnect::relay {

class RelayMetrics;

// A cluster's full identity, as ARM names it (case-insensitive).
struct ClusterName {
  std::string subscription;
  std::string resource_group;
  std::string name;
  std::string resource_id() const;
  bool matches(const nlohmann::json& record) const;
};

// Gets the record as stored (null when there is none) and answers the new
// one, or null to remove it. Throws std::runtime_error to change nothing.
using RecordEdit = std::function<nlohmann::json(const nlohmann::json& current)>;

class RegistryStore {
 public:
  using ChangeListener = std::function<void(const Registry& before, const Registry& after)>;

  virtual ~RegistryStore() = default;

  // The current registry; never null. Thread-safe.
  std::shared_ptr<const Registry> snapshot() const;
  // Called (on the store's own thread) after each change, with the
  // snapshots before and after it. Set before the store starts watching.
  void on_change(ChangeListener listener);

  // "file PATH" or "etcd ENDPOINTS (prefix P)": for messages.
  virtual std::string describe() const = 0;

  // Control plane, blocking; throw std::runtime_error with a message that
  // names the store.
  virtual std::vector<nlohmann::json> cluster_records() const = 0;
  // Applies `edit` to the cluster's record as one change (the etcd store
  // retries when another writer changed the record in between). The new
  // record is checked against the rest of the registry before it is written.
  virtual void edit_cluster(const ClusterName& cluster, const RecordEdit& edit) = 0;
  // What a key record holds for `secret`: {"secret_file": …} written 0600
  // beside the configuration (file store), or {"secret": …} (etcd, the trust
  // root).
  virtual nlohmann::json store_secret(const ClusterName& cluster, const std::string& key_name, const std::string& secret) = 0;

  // Keeps the snapshot current until stop() (a thread of the store's own).
  virtual void start_watching() = 0;
  virtual void stop() noexcept = 0;

 protected:
  // Replaces the snapshot and tells the listener.
  void publish(std::shared_ptr<const Registry> next);
  // The registry without `cluster`, to check an edited record against.
  static Registry without(const Registry& registry, const ClusterName& cluster);

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const Registry> current_ = std::make_shared<Registry>();
  ChangeListener listener_;
};

// The registry part of the relay's configuration file. Watching reloads it
// when the file or one of its secret files changes (checked every 250 ms);
// a file that no longer parses keeps the registry as it was, and says why.
std::unique_ptr<RegistryStore> make_file_store(std::filesystem::path file, std::shared_ptr<spdlog::logger> logger);

// A registry that never changes and cannot be edited (no --config, no --store).
std::unique_ptr<RegistryStore> make_fixed_store(Registry registry);

struct EtcdOptions {
  std::vector<std::string> endpoints;  // http(s)://HOST:PORT
  std::string prefix = "/clusterconnect/";
  std::string ca_file, cert_file, key_file;  // https: the CA that signs etcd's certificate, a client certificate and key
};

// etcd://HOST:PORT[,HOST:PORT…] (plain HTTP) or etcds://… (TLS).
EtcdOptions parse_etcd_url(const std::string& url);

// The registry under PREFIX in etcd: PREFIX clusters/<subscription>/<group>/<name>
// (lower case) and PREFIX roles/<name>, one JSON record each. Reads the whole
// registry at once (an unreachable store is an error naming the endpoint);
// watching applies each change as etcd reports it and resumes from the last
// revision after an error. A record that does not parse is refused with its
// key (logged, counted in `metrics`), and the rest of the registry serves.
std::unique_ptr<RegistryStore> make_etcd_store(EtcdOptions options, std::shared_ptr<spdlog::logger> logger,
                                               RelayMetrics* metrics = nullptr);

// The etcd key of a cluster's record, and of a role definition's.
std::string etcd_cluster_key(const std::string& prefix, const ClusterName& cluster);
std::string etcd_role_key(const std::string& prefix, const std::string& role);

// One-shot: every cluster (secrets read from their files) and role
// definition of the file `from` into etcd. Answers how many clusters.
std::size_t import_file_registry(const std::filesystem::path& from, const EtcdOptions& to);

}  // namespace clusterconnect::relay
