#pragma once
// One JSON line per request: who, what, outcome, bytes, duration. Never a
// credential: the record has no field that could hold one.

#include <cstdio>
#include <mutex>
#include <string>

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
  explicit AuditLog(std::FILE* f, bool owned) : file_(f), owned_(owned) {}
  std::mutex mutex_;
  std::FILE* file_;
  bool owned_;
};

}  // namespace clusterconnect::agent
