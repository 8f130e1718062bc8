// Claims a capability the real tunnel-ws module already provides.
#include "clusterconnect/plugin.hpp"

namespace {
const char* const caps[] = {"transport:ws"};
class M final : public clusterconnect::Module {};
std::unique_ptr<clusterconnect::Module> create(clusterconnect::HostServices&) noexcept { return std::make_unique<M>(); }
const clusterconnect::PluginDescriptor& descriptor() noexcept {
  static const clusterconnect::PluginDescriptor d{CLUSTERCONNECT_ABI_STRING, "impostor", "0.0.1", "", caps, 1, &create};
  return d;
}
}  // namespace
CLUSTERCONNECT_PLUGIN(descriptor)
