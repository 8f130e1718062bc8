#pragma once
// Counters behind /metrics. Updated from any io thread.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace clusterconnect::relay {

class RelayMetrics {
 public:
  std::atomic<std::int64_t> streams_active{0};
  std::atomic<std::uint64_t> streams_total{0};
  std::atomic<std::uint64_t> bytes_client_to_agent{0};
  std::atomic<std::uint64_t> bytes_agent_to_client{0};
  std::atomic<std::int64_t> connections_active{0};

  void stream_started() {
    streams_active.fetch_add(1);
    streams_total.fetch_add(1);
  }
  void stream_finished() {
    if (streams_active.fetch_sub(1) == 1) {
      std::lock_guard lock(mutex_);
      idle_.notify_all();
    }
  }
  // Blocks (control plane only: shutdown) until no stream is spliced or the
  // deadline passes; true when idle.
  bool wait_idle(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock lock(mutex_);
    return idle_.wait_until(lock, deadline, [&] { return streams_active.load() <= 0; });
  }

  void handshake_failure(const std::string& reason) { bump(handshake_failures_, reason); }
  void open_failure(const std::string& reason) { bump(open_failures_, reason); }

  std::map<std::string, std::uint64_t> handshake_failures() const { return snapshot(handshake_failures_); }
  std::map<std::string, std::uint64_t> open_failures() const { return snapshot(open_failures_); }

 private:
  void bump(std::map<std::string, std::uint64_t>& m, const std::string& key) {
    std::lock_guard lock(mutex_);
    ++m[key];
  }
  std::map<std::string, std::uint64_t> snapshot(const std::map<std::string, std::uint64_t>& m) const {
    std::lock_guard lock(mutex_);
    return m;
  }
  mutable std::mutex mutex_;
  std::condition_variable idle_;
  std::map<std::string, std::uint64_t> handshake_failures_;
  std::map<std::string, std::uint64_t> open_failures_;
};

}  // namespace clusterconnect::relay
