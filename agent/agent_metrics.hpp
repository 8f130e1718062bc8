#pragma once
// The agent's Prometheus metrics: requests by code, authentication failures by
// reason, active streams, upgrades, and a request latency histogram.

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace clusterconnect::agent {

// The shared pool of API server connections, when there is one.
struct UpstreamCounts {
  bool pooled = false;
  std::uint64_t opened = 0, reused = 0;
  std::size_t idle = 0;
  // HTTP/2 to the API server (--upstream-http2 auto).
  bool http2 = false;
  std::uint64_t h2_connections_opened = 0, h2_streams_opened = 0, h2_streams_reset = 0, h2_streams_retried = 0;
  std::size_t h2_connections = 0, h2_streams_active = 0;
  std::uint64_t h2_ping_timeouts = 0, h2_connects_retried = 0;
};

class AgentMetrics {
 public:
  void request_done(unsigned code, std::chrono::microseconds duration, bool upgraded);
  void auth_failure(const std::string& reason);
  void audit_dropped() { audit_dropped_.fetch_add(1, std::memory_order_relaxed); }
  void stream_opened() { streams_active_.fetch_add(1, std::memory_order_relaxed); }
  void stream_closed() { streams_active_.fetch_sub(1, std::memory_order_relaxed); }
  // Prometheus text exposition format; `tunnels_up` comes from the transport.
  std::string render(unsigned tunnels_up, const UpstreamCounts& upstream = {}) const;

 private:
  static constexpr std::array<double, 11> bounds_{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5};
  mutable std::mutex mutex_;
  std::map<unsigned, std::uint64_t> requests_by_code_;
  std::map<std::string, std::uint64_t> auth_failures_;
  std::array<std::uint64_t, bounds_.size() + 1> buckets_{};
  double latency_sum_ = 0;
  std::uint64_t latency_count_ = 0;
  std::uint64_t upgrades_ = 0;
  std::atomic<std::int64_t> streams_active_{0};
  std::atomic<std::uint64_t> audit_dropped_{0};
};

}  // namespace clusterconnect::agent
