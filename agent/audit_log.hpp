#pragma once
// One JSON line per request: who, what, outcome, bytes, duration. Never a
// credential: the record has no field that could hold one. Lines are written
// by a thread of their own, so a slow disk never stalls an io thread; when
// the queue is full, writers wait rather than drop a record.

#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "clusterconnect/http/forward.hpp"
#include "clusterconnect/result.hpp"

namespace clusterconnect::agent {

class AuditLog {
 public:
  // "-" writes to stdout; "" disables the log.
  static Result<std::unique_ptr<AuditLog>> open(const std::string& path);
  ~AuditLog();
  void write(const http::ExchangeRecord& record, const std::string& auth_method);

 private:
  AuditLog(std::FILE* f, bool owned);
  void drain();

  static constexpr std::size_t max_queued = 65536;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::condition_variable room_;
  std::deque<std::string> queue_;
  bool stopping_ = false;
  std::FILE* file_;
  bool owned_;
  std::thread writer_;
};

}  // namespace clusterconnect::agent
