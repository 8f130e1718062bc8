#pragma once
// Counters behind /metrics. Updated from any io thread.

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace clusterconnect::relay {

class RelayMetrics {
 public:
  std::atomic<std::int64_t> connections_active{0};
  // Registry records the store refused (malformed, or colliding with another).
  std::atomic<std::uint64_t> registry_records_refused_total{0};
  std::atomic<std::uint64_t> registry_snapshots_total{0};  // registries built from the store
  std::atomic<std::int64_t> registry_records_refused{0};  // refused now
  // Requests that changed etcd (puts, deletes, transactions, lease grants and
  // revocations; not lease keepalives), from this process.
  std::atomic<std::uint64_t> store_writes_total{0};
  std::atomic<std::uint64_t> store_keepalives_total{0};  // the replica lease's keepalives

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
  std::map<std::string, std::uint64_t> handshake_failures_;
  std::map<std::string, std::uint64_t> open_failures_;
};

}  // namespace clusterconnect::relay
