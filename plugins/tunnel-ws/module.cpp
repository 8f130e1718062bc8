#include "clusterconnect/plugin.hpp"
#include "rendezvous_transport.hpp"

namespace clusterconnect::tunnel_ws {
namespace {

const char* const capabilities[] = {"transport:ws"};

class ThisModule final : public Module {
 public:
  explicit ThisModule(HostServices& host) : host_(host) {}
  std::shared_ptr<TransportCapability> transport(std::string_view name) noexcept override {
    if (name != "ws") return nullptr;
    if (!transport_) transport_ = std::make_shared<tunnel::transport::RendezvousTransport>(host_, tunnel::transport::Form::ws);
    return transport_;
  }

 private:
  HostServices& host_;
  std::shared_ptr<tunnel::transport::RendezvousTransport> transport_;
};

std::unique_ptr<Module> create(HostServices& host) noexcept { return std::make_unique<ThisModule>(host); }

const PluginDescriptor& descriptor() noexcept {
  static const PluginDescriptor d{CLUSTERCONNECT_ABI_STRING, "tunnel-ws", "0.2.0",
                                  "Streams end to end in TLS between proxy and agent, through a Hybrid Connections WebSocket rendezvous",
                                  capabilities, std::size(capabilities), &create};
  return d;
}

}  // namespace
}  // namespace clusterconnect::tunnel_ws

CLUSTERCONNECT_PLUGIN(clusterconnect::tunnel_ws::descriptor)
