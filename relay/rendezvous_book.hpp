#pragma once
// The relay's pending rendezvous: a proxy's authenticated connect gets a
// fresh ticket, the relay sends `accept` with it to one of the cluster's
// listeners, and the two legs that name the ticket (the proxy's in its
// preamble, the agent's in its ClientHello) are paired here, in whichever
// order they arrive. A ticket is single-use and lives `ttl`; it routes, it
// grants nothing: the cluster was decided when the connect was authorised.
//
// `Leg` is whatever holds a connection (a socket); the book only keeps and
// hands back legs, and is used from one thread or under the caller's lock.

#include <chrono>
#include <cstddef>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace clusterconnect::relay {

enum class LegSide { proxy, agent };

struct RendezvousLimits {
  std::size_t pending_per_cluster = 256;
  std::size_t pending_total = 10000;
  std::chrono::milliseconds ttl{std::chrono::seconds(30)};
  // Of a cluster's, opened with one client's credential (its connect token):
  // one leaked or looping client cannot take the cluster's whole budget.
  std::size_t pending_per_client = 32;
};

template <typename Leg>
class RendezvousBook {
 public:
  using Clock = std::chrono::steady_clock;

  struct Parked {};
  struct Paired {
    Leg proxy;
    Leg agent;
    std::string cluster;
  };
  struct Refused {
    Leg leg;  // handed back, for the caller to answer and close
    std::string reason;
  };
  struct Expired {
    Leg leg;
    LegSide side;
    std::string cluster;
  };

  explicit RendezvousBook(RendezvousLimits limits = {}) : limits_(limits) {}

  // Registers a rendezvous for `cluster` under `ticket` (fresh, from
  // make_ticket), opened by `client` (a key for its credential; empty: not
  // counted per client). False, with nothing registered, when the client, the
  // cluster or the relay already has its maximum pending, or the ticket is in
  // use.
  bool open(const std::string& ticket, const std::string& cluster, Clock::time_point now, std::string& why) {
    return open(ticket, cluster, std::string(), now, why);
  }
  bool open(const std::string& ticket, const std::string& cluster, const std::string& client, Clock::time_point now,
            std::string& why) {
    if (!client.empty()) {
      auto c = per_client_.find(client);
      if (c != per_client_.end() && c->second >= limits_.pending_per_client) {
        why = "this client has " + std::to_string(c->second) + " rendezvous pending, its maximum; retry shortly";
        return false;
      }
    }
    if (entries_.size() >= limits_.pending_total) {
      why = "the relay has " + std::to_string(entries_.size()) + " rendezvous pending, its maximum; retry shortly";
      return false;
    }
    auto& n = per_cluster_[cluster];
    if (n >= limits_.pending_per_cluster) {
      why = "the cluster has " + std::to_string(n) + " rendezvous pending, its maximum; retry shortly";
      return false;
    }
    const auto expiry = now + limits_.ttl;
    if (!entries_.emplace(ticket, Entry{cluster, client, expiry, std::nullopt, std::nullopt}).second) {
      why = "ticket in use";
      return false;
    }
    ++n;
    if (!client.empty()) ++per_client_[client];
    by_expiry_.emplace_back(expiry, ticket);  // the ttl is fixed: opening order is expiry order
    return true;
  }

  // A leg that names `ticket`: parked until the other side's leg arrives,
  // or paired with it (and the ticket is spent). Refused for a ticket that is
  // unknown, spent or expired, or when this side's leg is already there.
  std::variant<Parked, Paired, Refused> present(const std::string& ticket, LegSide side, Leg leg, Clock::time_point now) {
    auto it = entries_.find(ticket);
    if (it == entries_.end()) return Refused{std::move(leg), "no rendezvous is pending under this ticket"};
    Entry& e = it->second;
    if (now >= e.expiry) {
      // Left for expire() to hand back the leg that waits, if any.
      return Refused{std::move(leg), "the rendezvous expired"};
    }
    auto& mine = side == LegSide::proxy ? e.proxy : e.agent;
    auto& theirs = side == LegSide::proxy ? e.agent : e.proxy;
    if (mine) return Refused{std::move(leg), "this side of the rendezvous is already connected"};
    if (!theirs) {
      mine.emplace(std::move(leg));
      return Parked{};
    }
    Leg other = std::move(*theirs);
    Paired p{side == LegSide::proxy ? std::move(leg) : std::move(other),
             side == LegSide::proxy ? std::move(other) : std::move(leg), e.cluster};
    erase(it);
    return p;
  }

  // Withdraws a rendezvous (its connect was cancelled): the leg that waits,
  // if any, is handed back.
  std::optional<Expired> cancel(const std::string& ticket) {
    auto it = entries_.find(ticket);
    if (it == entries_.end()) return std::nullopt;
    std::optional<Expired> out;
    if (it->second.proxy) out = Expired{std::move(*it->second.proxy), LegSide::proxy, it->second.cluster};
    else if (it->second.agent) out = Expired{std::move(*it->second.agent), LegSide::agent, it->second.cluster};
    erase(it);
    return out;
  }

  // Removes every rendezvous past its ttl and hands back the legs that
  // waited in them, to be answered (504) and closed.
  std::vector<Expired> expire(Clock::time_point now) {
    std::vector<Expired> out;
    while (!by_expiry_.empty() && by_expiry_.front().first <= now) {
      auto it = entries_.find(by_expiry_.front().second);
      by_expiry_.pop_front();
      if (it == entries_.end()) continue;  // paired or cancelled before it expired
      if (it->second.proxy) out.push_back(Expired{std::move(*it->second.proxy), LegSide::proxy, it->second.cluster});
      if (it->second.agent) out.push_back(Expired{std::move(*it->second.agent), LegSide::agent, it->second.cluster});
      erase(it);
    }
    return out;
  }

  std::size_t pending() const { return entries_.size(); }
  std::size_t pending(const std::string& cluster) const {
    auto it = per_cluster_.find(cluster);
    return it == per_cluster_.end() ? 0 : it->second;
  }
  // The clusters with a rendezvous pending.
  std::vector<std::string> pending_clusters() const {
    std::vector<std::string> out;
    out.reserve(per_cluster_.size());
    for (const auto& [c, _] : per_cluster_) out.push_back(c);
    return out;
  }
  // When the oldest rendezvous expires, for the caller's timer.
  std::optional<Clock::time_point> next_expiry() const {
    if (by_expiry_.empty()) return std::nullopt;
    return by_expiry_.front().first;
  }

 private:
  struct Entry {
    std::string cluster;
    std::string client;
    Clock::time_point expiry;
    std::optional<Leg> proxy;
    std::optional<Leg> agent;
  };
  using Map = std::unordered_map<std::string, Entry>;

  typename Map::iterator erase(typename Map::iterator it) {
    auto c = per_cluster_.find(it->second.cluster);
    if (c != per_cluster_.end() && --c->second == 0) per_cluster_.erase(c);
    if (!it->second.client.empty()) {
      auto k = per_client_.find(it->second.client);
      if (k != per_client_.end() && --k->second == 0) per_client_.erase(k);
    }
    return entries_.erase(it);
  }

  RendezvousLimits limits_;
  Map entries_;
  std::map<std::string, std::size_t> per_cluster_;
  std::unordered_map<std::string, std::size_t> per_client_;
  std::deque<std::pair<Clock::time_point, std::string>> by_expiry_;
};

}  // namespace clusterconnect::relay
