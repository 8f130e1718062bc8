#include "rendezvous/agent_report.hpp"

#include <algorithm>
#include <charconv>

namespace clusterconnect::tunnel::rendezvous {
namespace {

constexpr std::string_view h_agent_version = "x-clusterconnect-agent-version";
constexpr std::string_view h_kubernetes_version = "x-clusterconnect-kubernetes-version";
constexpr std::string_view h_node_count = "x-clusterconnect-node-count";
constexpr std::string_view h_core_count = "x-clusterconnect-core-count";
constexpr std::string_view h_distribution = "x-clusterconnect-distribution";
constexpr std::string_view h_infrastructure = "x-clusterconnect-infrastructure";

// Printable ASCII without spaces at either end, bounded: these values end
// up in JSON and in logs.
bool acceptable(std::string_view v) {
  return !v.empty() && v.size() <= max_agent_report_value && v.front() != ' ' && v.back() != ' ' &&
         std::all_of(v.begin(), v.end(), [](char c) { return c >= ' ' && c <= '~'; });
}

std::optional<std::uint32_t> count(std::string_view v) {
  std::uint32_t n = 0;
  if (v.empty() || v.size() > 10) return std::nullopt;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || end != v.data() + v.size()) return std::nullopt;
  return n;
}

}  // namespace

bool AgentReport::empty() const noexcept {
  return agent_version.empty() && kubernetes_version.empty() && !node_count && !core_count && distribution.empty() &&
         infrastructure.empty();
}

std::vector<std::pair<std::string, std::string>> to_headers(const AgentReport& r) {
  std::vector<std::pair<std::string, std::string>> out;
  auto text = [&](std::string_view name, const std::string& v) {
    if (acceptable(v)) out.emplace_back(std::string(name), v);
  };
  text(h_agent_version, r.agent_version);
  text(h_kubernetes_version, r.kubernetes_version);
  if (r.node_count) out.emplace_back(std::string(h_node_count), std::to_string(*r.node_count));
  if (r.core_count) out.emplace_back(std::string(h_core_count), std::to_string(*r.core_count));
  text(h_distribution, r.distribution);
  text(h_infrastructure, r.infrastructure);
  return out;
}

AgentReport agent_report_from_headers(const std::function<std::string(std::string_view name)>& header) {
  AgentReport r;
  auto text = [&](std::string_view name) {
    std::string v = header(name);
    return acceptable(v) ? v : std::string();
  };
  r.agent_version = text(h_agent_version);
  r.kubernetes_version = text(h_kubernetes_version);
  r.node_count = count(header(h_node_count));
  r.core_count = count(header(h_core_count));
  r.distribution = text(h_distribution);
  r.infrastructure = text(h_infrastructure);
  return r;
}

}  // namespace clusterconnect::tunnel::rendezvous
