#pragma once
// `connectedk8s proxy`: sign in once, fetch each cluster's connection
// details, listen locally (one port per cluster), write one kubeconfig context
// per cluster, then serve until stopped (or, with `-- COMMAND`, until the
// command exits). `connectedk8s proxy status` lists the proxies that run.

#include <string>
#include <vector>

#include "clusterconnect/command.hpp"
#include "clusterconnect/host.hpp"

namespace clusterconnect::proxy {

struct ProxyOptions {
  std::vector<std::string> names;  // -n NAME or -n GROUP/NAME, repeated
  bool all = false;                // --all: every cluster the user can read
  std::string resource_group;
  std::string subscription;
  std::string token;          // service-account mode (visible in the process list)
  std::string token_file;     // service-account mode: file holding the token, "-" for stdin
  std::string file;           // kubeconfig path, "-" for stdout
  unsigned port = 47011;
  std::string kube_context;
  std::string endpoint;       // relay management endpoint
  std::string ca_file;        // CA bundle for the relay (default: system store)
  std::string authority_ca_file;  // CA bundle for the identity provider (default: system store)
  std::string ready_file;
  std::string output = "text";
  std::string auth_method = "auto";
  std::string management_resource;  // empty: the relay's, from its /metadata/endpoints
  std::string server_app_id = "6256c85f-0aad-4d50-b960-e6e9b21efe35";
  bool allow_http_loopback_authority = false;
  bool pop = false;  // proof-of-possession tokens, each request signed for the cluster
  unsigned refresh_seconds = 60;
  std::string transport = "tls";  // tls: end to end with the agent; ws: the relay's tunnels
  std::vector<std::string> command;  // after "--": CI mode
};

class ProxyCommand final : public CommandCapability {
 public:
  explicit ProxyCommand(HostServices& host) : host_(host) {}
  CLI::App* add_to(CLI::App& root) noexcept override;
  int run() noexcept override;

 private:
  int run_proxy();
  int run_status();
  HostServices& host_;
  ProxyOptions opts_;
  CLI::App* status_ = nullptr;
  std::string status_output_ = "text";
};

}  // namespace clusterconnect::proxy
