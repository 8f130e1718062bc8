#include "clusterconnect/plugin.hpp"

namespace clusterconnect::entra {
namespace {

const char* const capabilities[] = {"credential:entra", "authenticator:entra"};

class ThisModule final : public Module {};

std::unique_ptr<Module> create(HostServices&) noexcept { return std::make_unique<ThisModule>(); }

const PluginDescriptor& descriptor() noexcept {
  static const PluginDescriptor d{CLUSTERCONNECT_ABI_STRING, "auth-entra", "0.1.0", "Microsoft Entra ID sign-in and token validation", capabilities,
                                  std::size(capabilities), &create};
  return d;
}

}  // namespace
}  // namespace clusterconnect::entra

CLUSTERCONNECT_PLUGIN(clusterconnect::entra::descriptor)
