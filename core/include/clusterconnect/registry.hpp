#pragma once
// Capabilities of the loaded modules, by "kind:name". Duplicates are refused
// at load time, so a name means one provider.

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "clusterconnect/plugin.hpp"

namespace clusterconnect {

struct LoadedModule {
  std::string name;
  std::string version;
  std::string description;
  std::string path;
  std::vector<std::string> capabilities;
  Module* instance = nullptr;
};

class CapabilityRegistry {
 public:
  virtual ~CapabilityRegistry() = default;
  virtual const std::vector<LoadedModule>& modules() const noexcept = 0;
  // The module providing "kind:name", or null.
  virtual Module* provider(std::string_view capability) const noexcept = 0;

  std::shared_ptr<CommandCapability> command(std::string_view name) const;
  std::shared_ptr<TransportCapability> transport(std::string_view name) const;
  std::shared_ptr<CredentialCapability> credential(std::string_view name) const;
  std::shared_ptr<AuthenticatorCapability> authenticator(std::string_view name) const;
  std::shared_ptr<KubeconfigCapability> kubeconfig(std::string_view name) const;
};

}  // namespace clusterconnect
