#pragma once
// Plain-HTTP endpoints for the kubelet's probes and Prometheus: /healthz,
// /readyz, /metrics. Bound to a pod-local address; serves no user traffic.
// HTTP/1.1 through Beast, one request per connection; a request head over
// max_health_request_bytes is answered 431, a malformed one 400, and a
// client that has not finished within the timeout is closed.

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "clusterconnect/asio_fwd.hpp"
#include "clusterconnect/result.hpp"

namespace clusterconnect::agent {

struct HealthReply {
  unsigned status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

inline constexpr std::size_t max_health_request_bytes = 8192;

// Called on an io thread, possibly on several at once.
using HealthHandler = std::function<HealthReply(const std::string& path)>;

class HealthServer {
 public:
  static Result<std::shared_ptr<HealthServer>> listen(asio::io_context& io, const std::string& address_port,
                                                       HealthHandler handler,
                                                       std::chrono::milliseconds timeout = std::chrono::seconds(5));
  virtual ~HealthServer() = default;
  virtual unsigned short port() const = 0;
  virtual void close() = 0;
};

}  // namespace clusterconnect::agent
