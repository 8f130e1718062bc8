#include "tunnel_switch.hpp"

#include <algorithm>
#include <map>

#include <spdlog/spdlog.h>

namespace clusterconnect::relay {

TunnelSwitch::TunnelSwitch(const RelayConfig& config, RelayMetrics& metrics, std::shared_ptr<spdlog::logger> logger)
    : config_(config), metrics_(metrics), logger_(std::move(logger)) {}

tunnel::SessionOptions TunnelSwitch::session_options(TunnelSide side, const std::string& name) const {
  tunnel::SessionOptions o;
  o.role = tunnel::Role::acceptor;
  o.name = name;
  o.stream_window = config_.limits.stream_window;
  o.tunnel_window = config_.limits.tunnel_window;
  o.max_streams =
      side == TunnelSide::client ? config_.limits.max_streams_per_client : config_.limits.max_streams_per_tunnel;
  o.ping_interval = config_.limits.ping_interval;
  o.idle_timeout = config_.limits.idle_timeout;
  o.open_timeout = config_.limits.open_timeout;
  return o;
}

bool TunnelSwitch::may_add_agent(const ClusterEntry& cluster) const {
  std::lock_guard lock(mutex_);
  std::size_t n = std::count_if(tunnels_.begin(), tunnels_.end(), [&](const Entry& e) {
    return e.side == TunnelSide::agent && e.cluster == &cluster && !e.session.expired();
  });
  return n < config_.limits.max_tunnels_per_cluster;
}

void TunnelSwitch::arm(const std::shared_ptr<TokenClock>& clock, std::weak_ptr<tunnel::Session> session,
                       std::chrono::milliseconds drain) {
  // expires_after cancels the wait of an earlier arm (it sees operation_aborted).
  clock->timer.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::max(clock->expiry - std::chrono::system_clock::now(), std::chrono::system_clock::duration::zero())));
  clock->timer.async_wait([clock, ws = std::move(session), drain](error_code ec) {
    auto s = ws.lock();
    if (ec || !s) return;
    clock->expired = true;
    s->goaway("token expired");
    clock->timer.expires_after(drain);
    clock->timer.async_wait([ws](error_code e) {
      if (auto s2 = ws.lock(); !e && s2) s2->close("token expired and the drain timeout passed");
    });
  });
}

void TunnelSwitch::add_tunnel(TunnelSide side, const ClusterEntry& cluster, std::shared_ptr<tunnel::Session> session,
                              std::chrono::system_clock::time_point token_expiry, TokenVerifier verify) {
  std::weak_ptr<TunnelSwitch> weak = shared_from_this();
  const ClusterEntry* entry = &cluster;
  const tunnel::Session* key = session.get();
  if (side == TunnelSide::client) {
    session->on_incoming([weak, entry](tunnel::TunnelStreamPtr stream, tunnel::Metadata md) {
      if (auto self = weak.lock()) self->route(entry, std::move(stream), std::move(md));
      else stream->reset(tunnel::RstCode::unavailable, "relay is shutting down");
    });
  }
  // An agent opens no streams towards the relay: the session refuses them.
  session->on_closed([weak, key](const std::string&) {
    if (auto self = weak.lock()) self->remove(key);
  });
  auto clock = std::make_shared<TokenClock>(session->get_executor());
  clock->expiry = token_expiry;
  const auto drain = config_.limits.drain_timeout;
  std::weak_ptr<tunnel::Session> ws = session;
  // Runs on the session's strand, like the expiry timer it re-arms.
  session->on_renew([clock, ws, drain, verify = std::move(verify), logger = logger_,
                     tunnel_name = session->name()](const std::string& token) -> tunnel::RenewVerdict {
    if (clock->expired) {
      logger->warn("{}: token renewal refused (401): the tunnel's token already expired", tunnel_name);
      return {401, "token renewal refused: the tunnel's token already expired; open a new tunnel"};
    }
    TokenCheck c = verify ? verify(token) : TokenCheck{false, 501, "no_renewal", "token renewal is not available", {}};
    if (!c.ok) {
      logger->warn("{}: token renewal refused ({}): {}; the tunnel still ends when its current token expires", tunnel_name,
                   c.status, c.reason);
      return {c.status, "token renewal refused: " + c.reason};
    }
    // A renewal never shortens the tunnel, and never extends it past the new token.
    if (c.expiry > clock->expiry) {
      clock->expiry = c.expiry;
      arm(clock, ws, drain);
    }
    logger->debug("{}: token renewed; the tunnel may live until {} (unix)", tunnel_name,
                  std::chrono::duration_cast<std::chrono::seconds>(clock->expiry.time_since_epoch()).count());
    return {};
  });
  arm(clock, ws, drain);
  bool drain_now = false;
  {
    std::lock_guard lock(mutex_);
    tunnels_.push_back(Entry{entry, side, session, clock});
    drain_now = draining_;
  }
  logger_->info("{} tunnel for cluster {} is up ({})", side == TunnelSide::agent ? "agent" : "client", cluster.resource_id(),
                session->name());
  session->start();
  if (drain_now) session->goaway("relay is shutting down");
}

void TunnelSwitch::remove(const tunnel::Session* session) {
  std::lock_guard lock(mutex_);
  tunnels_.erase(std::remove_if(tunnels_.begin(), tunnels_.end(),
                                [&](const Entry& e) {
                                  auto s = e.session.lock();
                                  if (s && s.get() != session) return false;
                                  // Cancelled on its own executor: timers are not thread-safe.
                                  if (auto c = e.clock) asio::post(c->timer.get_executor(), [c] { c->timer.cancel(); });
                                  return true;
                                }),
                 tunnels_.end());
}

std::size_t TunnelSwitch::tunnel_count() const {
  std::lock_guard lock(mutex_);
  return tunnels_.size();
}

unsigned TunnelSwitch::agent_tunnels(const std::string& hybrid_connection) const {
  const ClusterEntry* c = config_.cluster_by_path(hybrid_connection);
  if (!c) return 0;
  std::lock_guard lock(mutex_);
  unsigned n = 0;
  for (const auto& e : tunnels_) {
    auto s = e.session.lock();
    if (e.side == TunnelSide::agent && e.cluster == c && s && s->usable()) ++n;
  }
  return n;
}

std::shared_ptr<tunnel::Session> TunnelSwitch::pick_agent(const ClusterEntry* cluster) const {
  std::lock_guard lock(mutex_);
  std::shared_ptr<tunnel::Session> best;
  for (const auto& e : tunnels_) {
    if (e.side != TunnelSide::agent || e.cluster != cluster) continue;
    auto s = e.session.lock();
    if (!s || !s->usable()) continue;
    if (!best || s->active_streams() < best->active_streams()) best = std::move(s);
  }
  return best;
}

void TunnelSwitch::route(const ClusterEntry* cluster, tunnel::TunnelStreamPtr client, tunnel::Metadata metadata) {
  if (draining()) {
    metrics_.open_failure("draining");
    client->reset(tunnel::RstCode::refused, "relay is draining");
    return;
  }
  if (auto share = over_fair_share(cluster, *client->session())) {
    metrics_.open_failure("fair_share");
    client->reset(tunnel::RstCode::refused, *share);
    return;
  }
  // What the stream was authorised for, so the agent can refuse a stream meant
  // for another cluster. Set here, over anything the client sent.
  metadata[std::string(tunnel::metadata_cluster)] = cluster->resource_id();
  metadata[std::string(tunnel::metadata_hybrid_connection)] = cluster->hybrid_connection;
  try_agent(cluster, std::move(client), std::move(metadata), 0);
}

std::optional<std::string> TunnelSwitch::over_fair_share(const ClusterEntry* cluster,
                                                        const tunnel::Session& client) const {
  std::size_t capacity = 0, used = 0, clients = 0;
  {
    std::lock_guard lock(mutex_);
    for (const auto& e : tunnels_) {
      if (e.cluster != cluster) continue;
      auto s = e.session.lock();
      if (!s) continue;
      if (e.side == TunnelSide::client) {
        ++clients;
      } else if (s->usable()) {
        capacity += config_.limits.max_streams_per_tunnel;
        used += s->active_streams();
      }
    }
  }
  // Below three quarters of the agents' capacity everybody may open; above
  // it a client holding more than its share waits for its own streams to end.
  if (capacity == 0 || used * 4 < capacity * 3) return std::nullopt;
  const std::size_t share = std::max<std::size_t>(1, capacity / std::max<std::size_t>(1, clients));
  const std::size_t held = client.active_streams();  // includes this one
  if (held <= share) return std::nullopt;
  return "cluster " + cluster->name + " is busy (" + std::to_string(used) + " of " + std::to_string(capacity) +
         " streams in use) and this client already holds " + std::to_string(held - 1) + ", more than its share of " +
         std::to_string(share) + "; retry when some of its requests have finished";
}

void TunnelSwitch::try_agent(const ClusterEntry* cluster, tunnel::TunnelStreamPtr client, tunnel::Metadata metadata,
                             unsigned attempt) {
  auto agent = pick_agent(cluster);
  if (!agent) {
    metrics_.open_failure("no_agent");
    client->reset(tunnel::RstCode::unavailable, "no agent connected for cluster " + cluster->name + " (" +
                                                    cluster->resource_id() + ")");
    return;
  }
  auto md = metadata;
  agent->async_open(std::move(md), [weak = weak_from_this(), client, cluster, metadata = std::move(metadata), attempt,
                                    agent_session = std::weak_ptr<tunnel::Session>(agent)](
                                       error_code ec, tunnel::TunnelStreamPtr agent_stream, std::string reason) mutable {
    auto self = weak.lock();
    if (!self) {
      client->reset(tunnel::RstCode::unavailable, "relay is shutting down");
      return;
    }
    if (ec) {
      // The tunnel closed or started draining between the choice and the
      // open: another tunnel of the cluster may serve. A refusal by the agent
      // itself (RST) is final.
      auto s = agent_session.lock();
      const bool tunnel_gone = ec != asio::error::connection_refused || !s || !s->usable();
      if (tunnel_gone && attempt < 2) {
        self->try_agent(cluster, std::move(client), std::move(metadata), attempt + 1);
        return;
      }
      self->metrics_.open_failure("agent_refused");
      client->reset(tunnel::RstCode::unavailable, "agent for cluster " + cluster->name + " refused the stream: " + reason);
      return;
    }
    client->accept();
    splice(std::move(client), std::move(agent_stream), self->metrics_, self->logger_);
  });
}

void TunnelSwitch::drain() {
  std::vector<std::shared_ptr<tunnel::Session>> sessions;
  {
    std::lock_guard lock(mutex_);
    draining_ = true;
    for (const auto& e : tunnels_)
      if (auto s = e.session.lock()) sessions.push_back(std::move(s));
  }
  for (auto& s : sessions) s->goaway("relay is shutting down");
}

bool TunnelSwitch::draining() const {
  std::lock_guard lock(mutex_);
  return draining_;
}

std::int64_t TunnelSwitch::active_streams() const { return metrics_.streams_active.load(); }

void TunnelSwitch::close_all(const std::string& reason) {
  std::vector<std::shared_ptr<tunnel::Session>> sessions;
  {
    std::lock_guard lock(mutex_);
    for (const auto& e : tunnels_)
      if (auto s = e.session.lock()) sessions.push_back(std::move(s));
  }
  for (auto& s : sessions) s->close(reason);
}

std::shared_ptr<void> TunnelSwitch::connection_lease() {
  {
    std::lock_guard lock(lease_mutex_);
    ++leased_connections_;
  }
  // The switch outlives every connection: main() waits for them before it ends.
  return std::shared_ptr<void>(nullptr, [self = shared_from_this()](void*) {
    std::lock_guard lock(self->lease_mutex_);
    if (--self->leased_connections_ == 0) self->connections_closed_.notify_all();
  });
}

bool TunnelSwitch::wait_connections_closed(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock lock(lease_mutex_);
  return connections_closed_.wait_until(lock, deadline, [&] { return leased_connections_ == 0; });
}

std::string TunnelSwitch::render_tunnel_metrics() const {
  // Labelled by hybrid connection: unique in the registry, where names are not.
  std::map<std::string, std::pair<unsigned, unsigned>> by_cluster;  // agent, client
  for (const auto& c : config_.clusters) by_cluster[c.hybrid_connection];
  {
    std::lock_guard lock(mutex_);
    for (const auto& e : tunnels_) {
      auto s = e.session.lock();
      if (!s || s->closed()) continue;
      auto& p = by_cluster[e.cluster->hybrid_connection];
      (e.side == TunnelSide::agent ? p.first : p.second)++;
    }
  }
  std::string out =
      "# HELP clusterconnect_relay_tunnels Tunnels connected, by cluster and side.\n"
      "# TYPE clusterconnect_relay_tunnels gauge\n";
  for (const auto& [name, p] : by_cluster) {
    out += "clusterconnect_relay_tunnels{hybrid_connection=\"" + name + "\",side=\"agent\"} " + std::to_string(p.first) + "\n";
    out += "clusterconnect_relay_tunnels{hybrid_connection=\"" + name + "\",side=\"client\"} " + std::to_string(p.second) + "\n";
  }
  return out;
}

}  // namespace clusterconnect::relay
