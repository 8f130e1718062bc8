#pragma once
// `connectedk8s connect -n NAME -g GROUP`: registers the cluster with the
// relay (ARM's PUT of the connectedClusters resource, with the agent's public
// key), fetches its listen key (listKeys) and installs the agent through the
// cluster's API server. `--dry-run -o yaml` prints the objects instead, with
// their secrets replaced unless --show-secrets is given.

#include <string>

#include "clusterconnect/command.hpp"
#include "clusterconnect/host.hpp"
#include "sign_in.hpp"

namespace clusterconnect::onboarding {

struct ConnectOptions {
  std::string name;
  std::string resource_group;
  std::string subscription;
  std::string kube_context;
  std::string kubeconfig;
  std::string location = "local";
  std::string tenant;
  std::string image;
  SignInOptions sign_in;           // its ca_file is also installed as the agent's relay-ca
  unsigned timeout_seconds = 300;  // for connectivityStatus: Connected; 0: do not wait
  bool dry_run = false;
  bool show_secrets = false;
  std::string output = "yaml";
};

class ConnectCommand final : public CommandCapability {
 public:
  explicit ConnectCommand(HostServices& host) : host_(host) {}
  CLI::App* add_to(CLI::App& root) noexcept override;
  int run() noexcept override;

 private:
  int connect();
  HostServices& host_;
  ConnectOptions opts_;
};

}  // namespace clusterconnect::onboarding
