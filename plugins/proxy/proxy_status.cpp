#include "proxy_status.hpp"

#include <algorithm>

#include "cluster_selection.hpp"

namespace clusterconnect::proxy {
namespace {

std::string kubeconfig_text(const RunningProxy& p) {
  if (p.kubeconfig.empty()) return "(printed)";
  return p.private_kubeconfig ? p.kubeconfig + " (its command's)" : p.kubeconfig;
}

}  // namespace

std::string status_text(const std::vector<RunningProxy>& running) {
  if (running.empty()) return "no connectedk8s proxy is running\n";
  const std::vector<std::string> header{"PID", "CLUSTER", "ADDRESS", "CONTEXT", "KUBECONFIG"};
  std::vector<std::vector<std::string>> rows;
  for (const auto& p : running) {
    bool first = true;
    for (const auto& c : p.clusters) {
      rows.push_back({first ? std::to_string(p.pid) : "", display_name(c.ref), c.server.empty() ? "(starting)" : c.server,
                      c.context, first ? kubeconfig_text(p) : ""});
      first = false;
    }
  }
  std::vector<std::size_t> width(header.size());
  for (std::size_t i = 0; i < header.size(); ++i) {
    width[i] = header[i].size();
    for (const auto& r : rows) width[i] = std::max(width[i], r[i].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (std::size_t i = 0; i < cells.size(); ++i) {
      out += cells[i];
      if (i + 1 < cells.size()) out += std::string(width[i] - cells[i].size() + 2, ' ');
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out + "\n";
  };
  std::string out = line(header);
  for (const auto& r : rows) out += line(r);
  return out;
}

nlohmann::json status_json(const std::vector<RunningProxy>& running) {
  nlohmann::json proxies = nlohmann::json::array();
  for (const auto& p : running) {
    auto j = to_json(p);
    j.erase("processStart");
    proxies.push_back(std::move(j));
  }
  return {{"proxies", std::move(proxies)}};
}

}  // namespace clusterconnect::proxy
