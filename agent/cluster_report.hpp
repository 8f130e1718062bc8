#pragma once
// What the agent tells the relay about itself and its cluster when it opens a
// control channel (tunnel::rendezvous::AgentReport): the API server's version
// (GET /version), its nodes and their CPU capacity (GET /api/v1/nodes), a
// distribution and infrastructure guessed from them unless the operator
// named them, and the agent's own version. Gathered at start and refreshed
// periodically; the relay learns it on each control channel's handshake.

#include <memory>
#include <mutex>
#include <string>

#include "clusterconnect/http/forward.hpp"
#include "clusterconnect/unique_function.hpp"
#include "rendezvous/agent_report.hpp"

namespace clusterconnect::agent {

class ApiServer;

// The facts in the API server's answers (pure: tests feed it JSON).
// `version_json` is GET /version's body, `nodes_json` GET /api/v1/nodes';
// either may be empty when its request failed.
tunnel::rendezvous::AgentReport report_from_api(const std::string& version_json, const std::string& nodes_json);

// The latest report, shared between the gatherer and the listener's
// handshakes.
class ClusterReport {
 public:
  ClusterReport(std::string agent_version, std::string distribution, std::string infrastructure)
      : agent_version_(std::move(agent_version)),
        distribution_(std::move(distribution)),
        infrastructure_(std::move(infrastructure)) {
    latest_ = merged({});
  }
  tunnel::rendezvous::AgentReport latest() const {
    std::lock_guard lock(mutex_);
    return latest_;
  }
  // Asks the API server (two GETs, bounded) and keeps what it learned; a
  // failed request keeps the facts it would have given from before.
  void async_refresh(http::UpstreamConnector connector, std::shared_ptr<ApiServer> api, UniqueFunction<void()> done);

 private:
  tunnel::rendezvous::AgentReport merged(tunnel::rendezvous::AgentReport from_api) const;
  void keep(tunnel::rendezvous::AgentReport from_api);

  std::string agent_version_, distribution_, infrastructure_;
  mutable std::mutex mutex_;
  tunnel::rendezvous::AgentReport latest_;
};

}  // namespace clusterconnect::agent
