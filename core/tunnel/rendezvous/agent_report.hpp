#pragma once
// What an agent reports about itself and its cluster when it opens a control
// channel: headers of the listen handshake, one per fact. Azure Relay ignores
// request headers it does not know, and a listener that sends none (hyco-ws,
// an older agent) is served as before, so this stays compatible both ways.
//
//   x-clusterconnect-agent-version:      0.9.0
//   x-clusterconnect-kubernetes-version: v1.32.2        (GET /version gitVersion)
//   x-clusterconnect-node-count:         3              (nodes listed)
//   x-clusterconnect-core-count:         12             (sum of status.capacity.cpu)
//   x-clusterconnect-distribution:       k3s            (heuristic, or the operator's flag)
//   x-clusterconnect-infrastructure:     generic
//
// Each value is short printable ASCII; a header that is malformed is dropped
// (the others still count), never a reason to refuse the channel.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace clusterconnect::tunnel::rendezvous {

struct AgentReport {
  std::string agent_version;
  std::string kubernetes_version;
  std::optional<std::uint32_t> node_count;
  std::optional<std::uint32_t> core_count;
  std::string distribution;
  std::string infrastructure;

  bool empty() const noexcept;
  bool operator==(const AgentReport&) const = default;
};

inline constexpr std::size_t max_agent_report_value = 128;

// The handshake headers for `report` (only the facts it knows).
std::vector<std::pair<std::string, std::string>> to_headers(const AgentReport& report);
// The report in a handshake's headers; `header` returns a header's value by
// (lower-case) name, empty when absent.
AgentReport agent_report_from_headers(const std::function<std::string(std::string_view name)>& header);

}  // namespace clusterconnect::tunnel::rendezvous
