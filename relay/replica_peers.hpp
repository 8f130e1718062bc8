#pragma once
// What the front end needs of the other replicas (light header: the etcd
// directory behind it lives in replica_directory.cpp).

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "listener_registry.hpp"

namespace clusterconnect::relay {

class ReplicaPeers {
 public:
  virtual ~ReplicaPeers() = default;
  // This replica's id (returned to agents in the listen handshake).
  virtual const std::string& replica_id() const = 0;
  // HOST:PORT of this replica's --advertise-url: accept addresses it hands
  // out name it, not the load balancer in front of all replicas.
  virtual const std::string& advertise_host() const = 0;
  // Whether another live replica holds a control channel of the cluster
  // (by ClusterEntry::identity()).
  virtual bool remote_channel(const std::string& identity) const = 0;
  // Asks a replica that holds a control channel of the cluster to send
  // `message` (an `accept`) on it. Bounded (a short timeout, a bounded
  // queue); `done` runs on a thread of the directory's, once.
  using Done = std::function<void(bool sent, std::string why)>;
  virtual void forward_accept(const std::string& identity, std::string message, Done done) = 0;
  // This replica's control channels of the cluster changed: how many it
  // holds now, when one was last open and the agent's latest report (from
  // any thread; published to the other replicas).
  virtual void channels_changed(const std::string& identity, const AgentStatus& here) = 0;
  // What the other live replicas published of the cluster's agents: their
  // control channels summed, the latest time one was open and the latest
  // report. For the management API, which any replica may serve.
  virtual AgentStatus remote_status(const std::string& identity) const = 0;
  // Whether `secret` is the replicas' shared secret (constant time).
  virtual bool authentic(std::string_view secret) const = 0;
};

// The header a replica names the shared secret in, and the path it calls.
inline constexpr std::string_view replica_secret_header = "X-Clusterconnect-Replica-Secret";
inline constexpr std::string_view replica_id_header = "X-Clusterconnect-Replica";  // as in the listen handshake
inline constexpr std::string_view replica_accept_path = "/$replica/accept";

}  // namespace clusterconnect::relay
