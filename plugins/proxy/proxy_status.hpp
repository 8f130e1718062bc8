#pragma once
// `connectedk8s proxy status`: the proxies this user runs, their clusters,
// local addresses and kubeconfig contexts, as a table or as JSON (-o json).

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "running_proxies.hpp"

namespace clusterconnect::proxy {

// One line per cluster under a header; "no connectedk8s proxy is running"
// when there is none.
std::string status_text(const std::vector<RunningProxy>& running);

// {"proxies": [{"pid", "started", "state", "endpoint", "kubeconfig", "port",
//   "clusters": [{"subscription", "resourceGroup", "name", "context", "server"}]}]}
nlohmann::json status_json(const std::vector<RunningProxy>& running);

}  // namespace clusterconnect::proxy
