#pragma once
// The agents' control channels (Hybrid Connections listeners), by cluster:
// a connect is announced with an `accept` message on one of them, the least
// recently used, so a cluster's listeners share the rendezvous. Listeners
// are kept by the cluster's identity, not its entry's address: registry
// snapshots come and go while a control channel stays up.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "rendezvous/agent_report.hpp"

namespace clusterconnect::relay {

struct ClusterEntry;

// What this relay knows of a cluster's agents, for the management API.
struct AgentStatus {
  std::size_t control_channels = 0;
  // When a control channel of the cluster was last open: now while one is,
  // else when the last one closed; none when this relay has seen none.
  std::optional<std::chrono::system_clock::time_point> last_connected;
  // The latest report an agent made when it opened a control channel.
  tunnel::rendezvous::AgentReport report;
};

class ControlChannelSink {
 public:
  virtual ~ControlChannelSink() = default;
  // Queues one text message, and `binary` right after it when given (an
  // HTTP-mode request's body: nothing else goes between); false when the
  // channel is closed or its queue is full (a listener that does not read
  // gets no more rendezvous).
  virtual bool send(std::string text, std::optional<std::string> binary = std::nullopt) = 0;
  // WebSocket close code and reason (1001 going away, 1008 policy). Messages
  // already queued are written first.
  virtual void close(std::uint16_t code, std::string reason) = 0;
  // Whether the listener announced that it takes drain notices.
  virtual bool takes_drain() const { return false; }
};

class ListenerRegistry {
 public:
  explicit ListenerRegistry(std::size_t max_per_cluster) : max_per_cluster_(max_per_cluster) {}

  // Told (under the registry's lock, so in order) the cluster's status after
  // each add and remove: replicas publish it. It must not call back into the
  // registry. Set before the first listener.
  using CountObserver = std::function<void(const std::string& identity, const AgentStatus& status)>;
  void on_count_change(CountObserver observer);

  // A new listener for `cluster`: its id, or nothing when the cluster has
  // its maximum of listeners. A non-empty `report` replaces the cluster's.
  std::optional<std::uint64_t> add(const ClusterEntry* cluster, std::weak_ptr<ControlChannelSink> sink,
                                   tunnel::rendezvous::AgentReport report = {});
  void remove(std::uint64_t id);

  // Sends `text` (and `binary` after it) to one listener of the cluster, the
  // one that was given a message longest ago (or never); another is tried if
  // it refuses. The id of the listener that took it; none when none did.
  std::optional<std::uint64_t> send_to_one(const ClusterEntry* cluster, const std::string& text,
                                           const std::optional<std::string>& binary = std::nullopt);

  std::size_t count(const ClusterEntry* cluster) const;
  // Listeners by hybrid connection path.
  std::map<std::string, std::size_t> counts() const;
  // The cluster's (by ClusterEntry::identity()).
  AgentStatus status(const std::string& identity) const;
  void close_all(std::uint16_t code, const std::string& reason);
  // Sends `text` (a drain notice) to every listener that takes them, of the
  // clusters `of` accepts (all without it); how many took it.
  std::size_t send_to_drain_takers(const std::string& text,
                                   const std::function<bool(const std::string& identity)>& of = nullptr);
  // Closes the listeners of clusters (by ClusterEntry::identity()) that
  // `keep` rejects; how many.
  std::size_t close_unless(const std::function<bool(const std::string& identity)>& keep, std::uint16_t code,
                           const std::string& reason);

 private:
  struct Listener {
    std::uint64_t id;
    std::string identity;
    std::string hybrid_connection;
    std::weak_ptr<ControlChannelSink> sink;
    std::uint64_t last_used;  // 0: never
  };
  AgentStatus status_locked(const std::string& identity) const;
  std::size_t max_per_cluster_;
  CountObserver observer_;
  mutable std::mutex mutex_;
  std::vector<Listener> listeners_;
  struct Seen {
    std::chrono::system_clock::time_point last_connected;
    tunnel::rendezvous::AgentReport report;
  };
  // By identity; one entry per cluster that ever had a control channel here
  // (bounded by the registry's clusters).
  std::map<std::string, Seen> seen_;
  std::uint64_t next_id_ = 1;
  std::uint64_t use_clock_ = 0;
};

}  // namespace clusterconnect::relay
