#include "clusterconnect/kubeconfig.hpp"
#include "clusterconnect/plugin.hpp"
#include "yaml_kubeconfig.hpp"

namespace clusterconnect::kubeconfig {
namespace {

const char* const capabilities[] = {"kubeconfig:yaml"};

class KubeconfigModule final : public Module {
 public:
  std::shared_ptr<KubeconfigCapability> kubeconfig(std::string_view name) noexcept override {
    if (name != "yaml") return nullptr;
    try {
      return std::make_shared<YamlKubeconfig>();
    } catch (...) {
      return nullptr;
    }
  }
};

std::unique_ptr<Module> create(HostServices&) noexcept { return std::make_unique<KubeconfigModule>(); }

const PluginDescriptor& descriptor() noexcept {
  static const PluginDescriptor d{CLUSTERCONNECT_ABI_STRING, "kubeconfig", "0.1.0",
                                  "Reads, merges and writes kubeconfig files safely", capabilities, 1, &create};
  return d;
}

}  // namespace
}  // namespace clusterconnect::kubeconfig

CLUSTERCONNECT_PLUGIN(clusterconnect::kubeconfig::descriptor)
