#include "listener_registry.hpp"

#include <algorithm>

#include "relay_config.hpp"

namespace clusterconnect::relay {

void ListenerRegistry::on_count_change(CountObserver observer) {
  std::lock_guard lock(mutex_);
  observer_ = std::move(observer);
}

std::optional<std::uint64_t> ListenerRegistry::add(const ClusterEntry* cluster, std::weak_ptr<ControlChannelSink> sink,
                                                   tunnel::rendezvous::AgentReport report) {
  std::lock_guard lock(mutex_);
  std::erase_if(listeners_, [](const Listener& l) { return l.sink.expired(); });
  const auto identity = cluster->identity();
  const auto n = std::count_if(listeners_.begin(), listeners_.end(), [&](const Listener& l) { return l.identity == identity; });
  if (static_cast<std::size_t>(n) >= max_per_cluster_) return std::nullopt;
  listeners_.push_back(Listener{next_id_, identity, cluster->hybrid_connection, std::move(sink), 0});
  auto& seen = seen_[identity];
  seen.last_connected = std::chrono::system_clock::now();
  if (!report.empty()) seen.report = std::move(report);
  if (observer_) observer_(identity, status_locked(identity));
  return next_id_++;
}

void ListenerRegistry::remove(std::uint64_t id) {
  std::lock_guard lock(mutex_);
  auto it = std::find_if(listeners_.begin(), listeners_.end(), [&](const Listener& l) { return l.id == id; });
  if (it == listeners_.end()) return;
  const std::string identity = it->identity;
  seen_[identity].last_connected = std::chrono::system_clock::now();
  listeners_.erase(it);
  if (observer_) observer_(identity, status_locked(identity));
}

AgentStatus ListenerRegistry::status(const std::string& identity) const {
  std::lock_guard lock(mutex_);
  return status_locked(identity);
}

AgentStatus ListenerRegistry::status_locked(const std::string& identity) const {
  AgentStatus out;
  out.control_channels = static_cast<std::size_t>(std::count_if(
      listeners_.begin(), listeners_.end(), [&](const Listener& l) { return l.identity == identity && !l.sink.expired(); }));
  if (auto it = seen_.find(identity); it != seen_.end()) {
    out.last_connected = out.control_channels > 0 ? std::chrono::system_clock::now() : it->second.last_connected;
    out.report = it->second.report;
  }
  return out;
}

std::optional<std::uint64_t> ListenerRegistry::send_to_one(const ClusterEntry* cluster, const std::string& text,
                                                         const std::optional<std::string>& binary) {
  // Candidates in order of last use, chosen under the lock, sent outside it.
  struct Candidate {
    std::uint64_t last_used;
    std::uint64_t id;
    std::shared_ptr<ControlChannelSink> sink;
  };
  std::vector<Candidate> candidates;
  const auto identity = cluster->identity();
  {
    std::lock_guard lock(mutex_);
    for (auto& l : listeners_)
      if (l.identity == identity)
        if (auto s = l.sink.lock()) candidates.push_back(Candidate{l.last_used, l.id, std::move(s)});
    std::stable_sort(candidates.begin(), candidates.end(), [](const auto& a, const auto& b) { return a.last_used < b.last_used; });
  }
  for (auto& c : candidates) {
    if (!c.sink->send(text, binary)) continue;
    std::lock_guard lock(mutex_);
    const auto stamp = ++use_clock_;
    for (auto& l : listeners_)
      if (l.id == c.id) l.last_used = stamp;
    return c.id;
  }
  return std::nullopt;
}

std::size_t ListenerRegistry::count(const ClusterEntry* cluster) const {
  const auto identity = cluster->identity();
  std::lock_guard lock(mutex_);
  return static_cast<std::size_t>(std::count_if(listeners_.begin(), listeners_.end(), [&](const Listener& l) {
    return l.identity == identity && !l.sink.expired();
  }));
}

std::map<std::string, std::size_t> ListenerRegistry::counts() const {
  std::lock_guard lock(mutex_);
  std::map<std::string, std::size_t> out;
  for (const auto& l : listeners_)
    if (!l.sink.expired()) ++out[l.hybrid_connection];
  return out;
}

void ListenerRegistry::close_all(std::uint16_t code, const std::string& reason) {
  std::vector<std::shared_ptr<ControlChannelSink>> sinks;
  {
    std::lock_guard lock(mutex_);
    for (auto& l : listeners_)
      if (auto s = l.sink.lock()) sinks.push_back(std::move(s));
  }
  for (auto& s : sinks) s->close(code, reason);
}

std::size_t ListenerRegistry::send_to_drain_takers(const std::string& text,
                                                  const std::function<bool(const std::string& identity)>& of) {
  std::vector<std::shared_ptr<ControlChannelSink>> sinks;
  {
    std::lock_guard lock(mutex_);
    for (auto& l : listeners_)
      if (!of || of(l.identity))
        if (auto s = l.sink.lock(); s && s->takes_drain()) sinks.push_back(std::move(s));
  }
  std::size_t sent = 0;
  for (auto& s : sinks) sent += s->send(text) ? 1 : 0;
  return sent;
}

std::size_t ListenerRegistry::close_unless(const std::function<bool(const std::string& identity)>& keep, std::uint16_t code,
                                           const std::string& reason) {
  std::vector<std::shared_ptr<ControlChannelSink>> sinks;
  {
    std::lock_guard lock(mutex_);
    for (auto& l : listeners_)
      if (!keep(l.identity))
        if (auto s = l.sink.lock()) sinks.push_back(std::move(s));
  }
  for (auto& s : sinks) s->close(code, reason);
  return sinks.size();
}

}  // namespace clusterconnect::relay
