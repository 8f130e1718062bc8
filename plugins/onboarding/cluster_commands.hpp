#pragma once
// `connectedk8s show -n NAME -g GROUP`, `connectedk8s list [-g GROUP]` (the
// ARM-shaped resources, -o json or table) and `connectedk8s delete -n NAME
// -g GROUP` (the agent's objects in the cluster, then the resource).

#include <string>

#include "clusterconnect/command.hpp"
#include "clusterconnect/host.hpp"
#include "sign_in.hpp"

namespace clusterconnect::onboarding {

class ClusterCommand final : public CommandCapability {
 public:
  enum class Verb { show, list, remove };
  ClusterCommand(HostServices& host, Verb verb) : host_(host), verb_(verb) {}
  CLI::App* add_to(CLI::App& root) noexcept override;
  int run() noexcept override;

 private:
  int run_delete(const ManagementTarget& m);
  HostServices& host_;
  Verb verb_;
  SignInOptions sign_in_;
  std::string name_, resource_group_, subscription_, output_ = "json";
  std::string kubeconfig_, kube_context_;
  bool relay_only_ = false, yes_ = false;
};

}  // namespace clusterconnect::onboarding
