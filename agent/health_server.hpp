#pragma once
// Plain-HTTP endpoints for the kubelet's probes and Prometheus: /healthz,
// /readyz, /metrics. Bound to a pod-local address; serves no user traffic.

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

using HealthHandler = std::function<HealthReply(const std::string& path)>;

class HealthServer {
 public:
  static Result<std::shared_ptr<HealthServer>> listen(asio::io_context& io, const std::string& address_port,
                                                       HealthHandler handler);
  virtual ~HealthServer() = default;
  virtual unsigned short port() const = 0;
  virtual void close() = 0;
};

}  // namespace clusterconnect::agent
