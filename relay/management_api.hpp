#pragma once
// The relay's ARM-shaped management API (listClusterUserCredential and the
// cluster resource). The relay's HTTP front end hands every request that is
// not a tunnel handshake or a health/metrics endpoint to it.

#include <map>
#include <memory>
#include <string>

#include "clusterconnect/unique_function.hpp"

namespace clusterconnect::relay {

struct ManagementRequest {
  std::string method;
  std::string target;  // path and query, as received
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
};

struct ManagementResponse {
  unsigned status = 404;
  std::string content_type = "application/json";
  std::string body;
};

class ManagementApi {
 public:
  virtual ~ManagementApi() = default;
  // Completes on any thread; must not block an io thread.
  virtual void handle(ManagementRequest request, UniqueFunction<void(ManagementResponse)> respond) = 0;
};

}  // namespace clusterconnect::relay
