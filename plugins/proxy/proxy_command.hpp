#pragma once

#include <string>
#include <vector>

#include "clusterconnect/command.hpp"
#include "clusterconnect/host.hpp"

namespace clusterconnect::proxy {

struct ProxyOptions {
  std::string name;
  std::string resource_group;
  std::string subscription;
  std::string token;          // service-account mode
  std::string file;           // kubeconfig path, "-" for stdout
  unsigned port = 47011;
  std::string kube_context;
  std::string endpoint;       // relay management endpoint
  std::string ca_file;        // CA bundle for the relay (default: system store)
  std::string ready_file;
  std::string output = "text";
  std::vector<std::string> command;  // after "--": CI mode
};

class ProxyCommand final : public CommandCapability {
 public:
  explicit ProxyCommand(HostServices& host) : host_(host) {}
  CLI::App* add_to(CLI::App& root) noexcept override;
  int run() noexcept override;

 private:
  HostServices& host_;
  ProxyOptions opts_;
};

}  // namespace clusterconnect::proxy
