#pragma once
// The tunnel-ws transport: TunnelClient (dial) and TunnelListener (listen)
// over the tunnel protocol.

#include <memory>

#include "clusterconnect/host.hpp"
#include "clusterconnect/transport.hpp"
#include "dialer.hpp"

namespace clusterconnect::tunnel_ws {

// The dial target for `endpoint` plus action, or a one-line reason.
Result<DialTarget> make_dial_target(const RelayEndpoint& endpoint, std::string_view action);

// The verifying TLS client context for `endpoint` (warns on insecure_skip_verify).
Result<std::shared_ptr<asio::ssl::context>> make_tls_context(const RelayEndpoint& endpoint, spdlog::logger& logger);

std::shared_ptr<TunnelClient> make_client(HostServices& host, RelayEndpoint endpoint, TokenSource token);
std::shared_ptr<TunnelListener> make_listener(HostServices& host, ListenOptions options, AcceptHandler on_stream);

class WsTransport final : public TransportCapability {
 public:
  explicit WsTransport(HostServices& host) : host_(host) {}
  std::shared_ptr<TunnelClient> dial(RelayEndpoint endpoint, TokenSource token) noexcept override;
  std::shared_ptr<TunnelListener> listen(ListenOptions options, AcceptHandler on_stream) noexcept override;

 private:
  HostServices& host_;
};

}  // namespace clusterconnect::tunnel_ws
