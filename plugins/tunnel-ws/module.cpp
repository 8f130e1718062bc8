#include "clusterconnect/plugin.hpp"

namespace clusterconnect::tunnel_ws {
namespace {

const char* const capabilities[] = {"transport:ws"};

class ThisModule final : public Module {};

std::unique_ptr<Module> create(HostServices&) noexcept { return std::make_unique<ThisModule>(); }

const PluginDescriptor& descriptor() noexcept {
  static const PluginDescriptor d{CLUSTERCONNECT_ABI_STRING, "tunnel-ws", "0.1.0", "Multiplexed streams over WebSocket/TLS through a relay", capabilities,
                                  std::size(capabilities), &create};
  return d;
}

}  // namespace
}  // namespace clusterconnect::tunnel_ws

CLUSTERCONNECT_PLUGIN(clusterconnect::tunnel_ws::descriptor)
