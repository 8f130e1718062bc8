#pragma once
// The relay's TLS front end: tunnel handshakes (/$hc/...), health, metrics,
// and everything else to the management API. Light header; Beast lives in
// front_end.cpp only.

#include <chrono>
#include <cstdint>
#include <utility>
#include <memory>
#include <string>

#include "clusterconnect/asio_fwd.hpp"
#include "clusterconnect/result.hpp"
#include "listener_registry.hpp"
#include "management_api.hpp"
#include "relay_config.hpp"
#include "relay_metrics.hpp"

namespace boost::asio::ssl {
class context;
}

namespace clusterconnect::relay {

class RendezvousPort;
class RegistryStore;
class ReplicaPeers;

class FrontEnd {
 public:
  virtual ~FrontEnd() = default;

  // Binds and starts accepting. Port 0 picks an ephemeral port. `config`
  // gives the settings (it must outlive the front end), `registry` the
  // clusters: every lookup reads its current snapshot.
  static Result<std::shared_ptr<FrontEnd>> listen(asio::io_context& io, const std::string& address, unsigned short port,
                                                  std::shared_ptr<asio::ssl::context> tls, const RelayConfig& config,
                                                  std::shared_ptr<RegistryStore> registry, RelayMetrics& metrics,
                                                  std::shared_ptr<spdlog::logger> logger);

  virtual unsigned short port() const noexcept = 0;
  // Requests that are not tunnels or health/metrics go here; until one is
  // set they get 404 with an ARM-shaped error body.
  virtual void set_management_api(std::shared_ptr<ManagementApi> api) = 0;
  virtual void set_ready(bool ready) noexcept = 0;
  // Serves rendezvous: a POST connect gets a ticket for `port`, announced to
  // one of the cluster's control channels as `tls://<advertise>`.
  virtual void set_rendezvous(std::shared_ptr<RendezvousPort> port, std::string advertise) = 0;
  // Replicas (--store etcd): a connect for a cluster whose control channels
  // are on another replica is announced there; accept addresses name this
  // replica's advertised host; the listen handshake names this replica. Set
  // before serving.
  virtual void set_replicas(std::shared_ptr<ReplicaPeers> peers) = 0;
  // Closes every agent control channel and paired WebSocket (1001) with `reason`.
  virtual void close_control_channels(const std::string& reason) noexcept = 0;
  // Shutdown, in steps: the agent control channels only (what was queued on
  // them is written first), then the paired WebSockets.
  virtual void close_listeners(const std::string& reason) noexcept = 0;
  virtual void close_paired_websockets(const std::string& reason) noexcept = 0;
  // Drain, ws form: blocks (shutdown only) until every paired WebSocket has
  // ended by itself (its session closed after GOAWAY), or `deadline`; true
  // when all have. What is left is cut by close_paired_websockets.
  virtual bool drain_paired_websockets(std::chrono::steady_clock::time_point deadline) = 0;
  // Rendezvous of either form open when the drain began: how many ended by
  // themselves, how many were cut.
  virtual std::pair<std::uint64_t, std::uint64_t> drain_outcome() const = 0;
  // Drain (docs/tunnel-protocol.md, "Drain"): a `drain` notice naming this
  // relay's rendezvous addresses on each of its control channels whose
  // listener takes them, and, through the replica that holds a control
  // channel of each other cluster spliced here, on that one's. Blocks
  // (shutdown only) until the other replicas answered or `deadline`; how
  // many control channels here took a notice.
  virtual std::size_t announce_drain(const std::string& reason, std::chrono::steady_clock::time_point deadline) = 0;
  // Drain: refuses every handshake from now on (503, draining) except a
  // listener's accept of a ws-form rendezvous still pending here, and stops
  // accepting connections, at once when none is pending, else once
  // drain_pending_websockets lets go; thread-safe, idempotent.
  virtual void stop_accepting() noexcept = 0;
  // Drain, ws form: blocks (shutdown only) until no sender waits here for
  // its listener's accept (each paired, was answered or expired), or
  // `until`, then stops accepting connections; true when none waits.
  virtual bool drain_pending_websockets(std::chrono::steady_clock::time_point until) = 0;
  // Blocks (shutdown only) until every control channel and paired WebSocket
  // has closed, or the deadline; true when all have.
  virtual bool wait_closed(std::chrono::steady_clock::time_point deadline) = 0;
  // After a registry change (the store's thread): closes the control
  // channels of clusters no longer in `after`, with a reason.
  virtual void registry_changed(const Registry& before, const Registry& after) noexcept = 0;
  // Control channels up for a hybrid connection (its agents' presence).
  virtual unsigned listeners(const std::string& hybrid_connection) const = 0;
  // A cluster's agents as this relay knows them (by ClusterEntry::identity()).
  virtual AgentStatus agent_status(const std::string& identity) const = 0;
  // A plain-HTTP listener for /metrics (which names every cluster), /healthz
  // and /readyz, apart from the public port; returns its port.
  virtual Result<unsigned short> serve_metrics(const std::string& address, unsigned short port) = 0;
};

}  // namespace clusterconnect::relay
