#include "rendezvous_transport.hpp"

#include <spdlog/spdlog.h>

namespace clusterconnect::tunnel::transport {

std::shared_ptr<TunnelClient> RendezvousTransport::dial(RelayEndpoint endpoint, TokenSource token) noexcept {
  try {
    return make_client(host_, std::move(endpoint), std::move(token), form_);
  } catch (const std::exception& e) {
    host_.logger()->error("transport: dial: {}", e.what());
    return nullptr;
  }
}

std::shared_ptr<TunnelListener> RendezvousTransport::listen(ListenOptions options, AcceptHandler on_stream) noexcept {
  try {
    return make_listener(host_, std::move(options), std::move(on_stream));
  } catch (const std::exception& e) {
    host_.logger()->error("transport: listen: {}", e.what());
    return nullptr;
  }
}

}  // namespace clusterconnect::tunnel::transport
