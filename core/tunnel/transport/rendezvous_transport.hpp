#pragma once
// The rendezvous transports: the relay only pairs the two legs and moves their
// bytes; TLS and the stream mux run end to end between the proxy (dial) and
// the agent (listen). Two forms of the proxy's leg, one contract:
//   tls - a raw TCP leg to the relay's rendezvous port, spliced (default);
//   ws  - a WebSocket exactly as Azure Relay Hybrid Connections' sender, for
//         networks that force an HTTP proxy, and for Azure Relay itself.
// The agent's listener answers either: each `accept` names its address, and
// the agent dials that (tls://HOST:PORT or wss://…?sb-hc-action=accept…).

#include <memory>
#include <string>

#include "clusterconnect/host.hpp"
#include "clusterconnect/transport.hpp"

namespace clusterconnect::tunnel::transport {

enum class Form { tls, ws };

std::shared_ptr<TunnelClient> make_client(HostServices& host, RelayEndpoint endpoint, TokenSource token, Form form);
std::shared_ptr<TunnelListener> make_listener(HostServices& host, ListenOptions options, AcceptHandler on_stream);

class RendezvousTransport final : public TransportCapability {
 public:
  RendezvousTransport(HostServices& host, Form form) : host_(host), form_(form) {}
  std::shared_ptr<TunnelClient> dial(RelayEndpoint endpoint, TokenSource token) noexcept override;
  std::shared_ptr<TunnelListener> listen(ListenOptions options, AcceptHandler on_stream) noexcept override;

 private:
  HostServices& host_;
  Form form_;
};

}  // namespace clusterconnect::tunnel::transport
