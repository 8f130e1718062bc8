#pragma once
// The tls transport: the relay only pairs and splices; TLS and the stream
// mux run end to end between the proxy (dial) and the agent (listen).

#include <memory>

#include "clusterconnect/host.hpp"
#include "clusterconnect/transport.hpp"

namespace clusterconnect::tunnel_tls {

std::shared_ptr<TunnelClient> make_client(HostServices& host, RelayEndpoint endpoint, TokenSource token);
std::shared_ptr<TunnelListener> make_listener(HostServices& host, ListenOptions options, AcceptHandler on_stream);

class TlsTransport final : public TransportCapability {
 public:
  explicit TlsTransport(HostServices& host) : host_(host) {}
  std::shared_ptr<TunnelClient> dial(RelayEndpoint endpoint, TokenSource token) noexcept override;
  std::shared_ptr<TunnelListener> listen(ListenOptions options, AcceptHandler on_stream) noexcept override;

 private:
  HostServices& host_;
};

}  // namespace clusterconnect::tunnel_tls
