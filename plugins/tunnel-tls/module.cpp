#include <spdlog/spdlog.h>

#include "clusterconnect/plugin.hpp"
#include "tls_transport.hpp"

namespace clusterconnect::tunnel_tls {

std::shared_ptr<TunnelClient> TlsTransport::dial(RelayEndpoint endpoint, TokenSource token) noexcept {
  try {
    return make_client(host_, std::move(endpoint), std::move(token));
  } catch (const std::exception& e) {
    host_.logger()->error("tunnel-tls: dial: {}", e.what());
    return nullptr;
  }
}

std::shared_ptr<TunnelListener> TlsTransport::listen(ListenOptions options, AcceptHandler on_stream) noexcept {
  try {
    return make_listener(host_, std::move(options), std::move(on_stream));
  } catch (const std::exception& e) {
    host_.logger()->error("tunnel-tls: listen: {}", e.what());
    return nullptr;
  }
}

namespace {

const char* const capabilities[] = {"transport:tls"};

class ThisModule final : public Module {
 public:
  explicit ThisModule(HostServices& host) : host_(host) {}
  std::shared_ptr<TransportCapability> transport(std::string_view name) noexcept override {
    if (name != "tls") return nullptr;
    if (!transport_) transport_ = std::make_shared<TlsTransport>(host_);
    return transport_;
  }

 private:
  HostServices& host_;
  std::shared_ptr<TlsTransport> transport_;
};

std::unique_ptr<Module> create(HostServices& host) noexcept { return std::make_unique<ThisModule>(host); }

const PluginDescriptor& descriptor() noexcept {
  static const PluginDescriptor d{CLUSTERCONNECT_ABI_STRING, "tunnel-tls", "0.1.0",
                                  "Streams end to end in TLS between proxy and agent, through a relay's rendezvous",
                                  capabilities, std::size(capabilities), &create};
  return d;
}

}  // namespace
}  // namespace clusterconnect::tunnel_tls

CLUSTERCONNECT_PLUGIN(clusterconnect::tunnel_tls::descriptor)
