#pragma once
// One JSON line per request: who (user, groups, oid, tid; or, for a token
// passed through unverified, the user it names), what (method, path, query),
// outcome, bytes, duration. Never a credential: query parameters that can
// carry one are redacted, and no other field can hold one. Lines are written
// by a thread of their own, so a slow disk never stalls an io thread; when
// the queue is full a record is dropped and counted, never waited for.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "clusterconnect/http/forward.hpp"
#include "clusterconnect/result.hpp"

namespace clusterconnect::agent {

// The query of a request target for the audit record, with the value of
// every parameter that can carry a credential (access_token, token, id_token,
// sig, code, secret, password, ...) replaced by "[redacted]".
std::string audit_query(std::string_view target);

// Appends `s` as the inside of a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD.
void json_escape(std::string& out, std::string_view s);

class AuditLog {
 public:
  // "-" writes to stdout; "" disables the log.
  static constexpr std::size_t default_max_queued = 65536;
  static Result<std::unique_ptr<AuditLog>> open(const std::string& path, std::size_t max_queued = default_max_queued);
  ~AuditLog();
  // Never blocks: false when the record was dropped because the queue is full.
  bool write(const http::ExchangeRecord& record, const std::string& auth_method);
  std::uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  // How long the writer gathers records after the first one before writing them.
  static constexpr std::chrono::milliseconds batch_window{10};

 private:
  AuditLog(std::FILE* f, bool owned, std::size_t max_queued);
  void drain();

  std::size_t max_queued_;
  std::atomic<std::uint64_t> dropped_{0};
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::string> queue_;
  bool stopping_ = false;
  bool idle_ = false;  // the writer waits for a record (and must be woken for one)
  std::FILE* file_;
  bool owned_;
  std::thread writer_;
};

}  // namespace clusterconnect::agent
