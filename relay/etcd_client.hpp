#pragma once
// etcd's v3 API as JSON over HTTP/1.1 (its gRPC gateway, `/v3/…`), on
// libcurl. Control plane: blocking calls, made from the relay's store thread
// and admin commands, never from an io thread. Keys and values are base64 on
// the wire; these helpers take and give them as plain strings.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "clusterconnect/result.hpp"

namespace spdlog {
class logger;
}

namespace clusterconnect::relay {

struct EtcdOptions;

struct EtcdKeyValue {
  std::string key;
  std::string value;
  std::int64_t mod_revision = 0;
};

struct EtcdEvent {
  bool deleted = false;
  EtcdKeyValue kv;
};

class EtcdClient {
 public:
  explicit EtcdClient(const EtcdOptions& options);

  // POST `path` (e.g. "/v3/kv/range") with `body` to the first endpoint
  // that answers; the reply's JSON, or why none did (naming the endpoints).
  Result<nlohmann::json> call(const std::string& path, const nlohmann::json& body) const;

  // Every key under `prefix`, and the store's revision they were read at.
  Result<std::pair<std::vector<EtcdKeyValue>, std::int64_t>> range_prefix(const std::string& prefix) const;
  Result<std::vector<EtcdKeyValue>> get(const std::string& key) const;
  // Writes `value` (or deletes, when null) only if the key's mod_revision is
  // still `expected` (0: the key does not exist). False when it changed.
  Result<bool> put_if(const std::string& key, const std::string* value, std::int64_t expected) const;
  Result<void> put(const std::string& key, const std::string& value) const;

  // Streams the changes under `prefix` from `start_revision` until `stop`,
  // the connection ends (an error), or etcd cancels the watch (e.g. the
  // revision was compacted: `compacted` is set). Blocking.
  struct WatchEnd {
    std::string error;
    bool compacted = false;
  };
  // `on_created` runs once etcd has accepted the watch (it is live from then on).
  WatchEnd watch_prefix(const std::string& prefix, std::int64_t start_revision, const std::atomic<bool>& stop,
                        const std::function<void(const std::vector<EtcdEvent>&, std::int64_t revision)>& on_events,
                        const std::function<void()>& on_created = {}) const;

  std::string endpoints_text() const;
  // Connections to etcd that call() has opened so far. A call made on a
  // connection kept from an earlier one opens none.
  std::uint64_t connections_opened() const;

 private:
  std::vector<std::string> endpoints_;
  std::string ca_file_, cert_file_, key_file_;
  // The HTTP handles of finished calls, with their connections: the next
  // call takes one (etcd keeps HTTP/1.1 connections open), so a lease's
  // keepalive or a store write costs no new TCP connection and TLS handshake.
  struct Handles;
  std::shared_ptr<Handles> handles_;
};

// How a loop that talks to etcd (a watch, a lease's keepalive) waits while
// etcd is away: retries doubling from 100 ms to 1 s (bounded, never a busy
// loop, and soon back once etcd is), one warning when etcd goes away and one
// line when it answers again, not one per attempt. One loop's own.
class EtcdOutage {
 public:
  static constexpr std::chrono::milliseconds first_retry{100};
  static constexpr std::chrono::milliseconds max_retry{1000};

  EtcdOutage(std::shared_ptr<spdlog::logger> logger, std::string what, std::string consequence)
      : logger_(std::move(logger)), what_(std::move(what)), consequence_(std::move(consequence)) {}
  // An attempt failed: how long to wait before the next one.
  std::chrono::milliseconds failed(const std::string& why);
  // An attempt succeeded; `how` says what the loop did to catch up (logged
  // only when etcd had been away).
  void recovered(const std::string& how);
  bool away() const noexcept { return away_; }

 private:
  std::shared_ptr<spdlog::logger> logger_;
  std::string what_, consequence_;
  bool away_ = false;
  std::chrono::steady_clock::time_point since_;
  std::chrono::milliseconds next_ = first_retry;
  unsigned attempts_ = 0;
};

std::string base64_encode(const std::string& in);
bool base64_decode(const std::string& in, std::string& out);
// The key just past every key that starts with `prefix` (etcd's range_end).
std::string prefix_end(std::string prefix);

}  // namespace clusterconnect::relay
