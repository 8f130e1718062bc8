#include "clusterconnect/kubeconfig.hpp"
#include "clusterconnect/plugin.hpp"

namespace clusterconnect::kubeconfig {
namespace {

const char* const capabilities[] = {"kubeconfig:yaml"};

class KubeconfigModule final : public Module {};

std::unique_ptr<Module> create(HostServices&) noexcept { return std::make_unique<KubeconfigModule>(); }

const PluginDescriptor& descriptor() noexcept {
  static const PluginDescriptor d{CLUSTERCONNECT_ABI_STRING, "kubeconfig", "0.1.0",
                                  "Reads, merges and writes kubeconfig files safely", capabilities, 1, &create};
  return d;
}

}  // namespace
}  // namespace clusterconnect::kubeconfig

CLUSTERCONNECT_PLUGIN(clusterconnect::kubeconfig::descriptor)
