#pragma once
// The relay's switch: agent tunnels registered per cluster, client streams
// routed to the least-loaded live agent tunnel and spliced with backpressure.

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "protocol/session.hpp"
#include "relay_config.hpp"
#include "relay_metrics.hpp"

namespace clusterconnect::relay {

enum class TunnelSide { agent, client };

// The verdict on a tunnel token, the same at the handshake and for RENEW.
struct TokenCheck {
  bool ok = false;
  unsigned status = 200;  // 401 missing/invalid/expired, 403 wrong path or no right
  std::string label;      // metrics label
  std::string reason;     // one line, never containing the token
  std::chrono::system_clock::time_point expiry{};
};
// Checks a token for the path and action the tunnel was opened for.
using TokenVerifier = std::function<TokenCheck(std::string_view token)>;

class TunnelSwitch : public std::enable_shared_from_this<TunnelSwitch> {
 public:
  TunnelSwitch(const RelayConfig& config, RelayMetrics& metrics, std::shared_ptr<spdlog::logger> logger);

  tunnel::SessionOptions session_options(TunnelSide side, const std::string& name) const;
  // False when the cluster has its maximum of agent tunnels.
  bool may_add_agent(const ClusterEntry& cluster) const;
  // Registers and starts a session accepted by the front end. When its token
  // expires the tunnel gets GOAWAY ("token expired") and is closed after the
  // drain timeout. Before that the peer may present a fresh token in RENEW:
  // checked by `verify`, it moves the expiry to the new token's (later only).
  void add_tunnel(TunnelSide side, const ClusterEntry& cluster, std::shared_ptr<tunnel::Session> session,
                  std::chrono::system_clock::time_point token_expiry, TokenVerifier verify);
  // Tunnels registered, all clusters and sides.
  std::size_t tunnel_count() const;
  // Live agent tunnels for a hybrid connection path (for the management API).
  unsigned agent_tunnels(const std::string& hybrid_connection) const;

  // GOAWAY on every tunnel; no new streams from then on.
  void drain();
  bool draining() const;
  std::int64_t active_streams() const;
  void close_all(const std::string& reason);
  // A token held by each tunnel's connection until it is fully closed.
  std::shared_ptr<void> connection_lease();
  // Blocks (shutdown only) until every leased connection is closed or the
  // deadline passes; true when all are closed.
  bool wait_connections_closed(std::chrono::steady_clock::time_point deadline);

  // Prometheus lines for the tunnels by cluster.
  std::string render_tunnel_metrics() const;

 private:
  // A tunnel's token expiry, on the session's strand.
  struct TokenClock {
    explicit TokenClock(const asio::any_io_executor& ex) : timer(ex) {}
    asio::steady_timer timer;
    std::chrono::system_clock::time_point expiry{};
    bool expired = false;
  };
  // Tunnels are keyed by the registry entry itself (one per full cluster
  // identity and hybrid connection), never by the cluster's name: names repeat
  // across resource groups and subscriptions.
  struct Entry {
    const ClusterEntry* cluster;
    TunnelSide side;
    std::weak_ptr<tunnel::Session> session;
    std::shared_ptr<TokenClock> clock;
  };
  static void arm(const std::shared_ptr<TokenClock>& clock, std::weak_ptr<tunnel::Session> session,
                  std::chrono::milliseconds drain);
  void route(const ClusterEntry* cluster, tunnel::TunnelStreamPtr client, tunnel::Metadata metadata);
  void try_agent(const ClusterEntry* cluster, tunnel::TunnelStreamPtr client, tunnel::Metadata metadata, unsigned attempt);
  std::shared_ptr<tunnel::Session> pick_agent(const ClusterEntry* cluster) const;
  // Why a client may not open another stream now (its fair share of a busy
  // cluster is used up), or nothing.
  std::optional<std::string> over_fair_share(const ClusterEntry* cluster, const tunnel::Session& client) const;
  void remove(const tunnel::Session* session);

  const RelayConfig& config_;
  RelayMetrics& metrics_;
  std::shared_ptr<spdlog::logger> logger_;
  mutable std::mutex mutex_;
  // Apart from mutex_: a lease may be released by a session destroyed while
  // mutex_ is held.
  std::mutex lease_mutex_;
  std::condition_variable connections_closed_;
  std::size_t leased_connections_ = 0;
  std::vector<Entry> tunnels_;
  bool draining_ = false;
};

// Forwards bytes both ways between two streams until both directions ended;
// an error on either side resets both. Beyond the flow-control windows it
// holds, per direction, at most one frame's bytes (64 KiB) while they are
// being forwarded, and nothing while the stream is idle.
void splice(tunnel::TunnelStreamPtr client, tunnel::TunnelStreamPtr agent, RelayMetrics& metrics,
            std::shared_ptr<spdlog::logger> logger);

}  // namespace clusterconnect::relay
