#include "ws_transport.hpp"

#include <spdlog/spdlog.h>

#include "clusterconnect/url.hpp"

namespace clusterconnect::tunnel_ws {

Result<DialTarget> make_dial_target(const RelayEndpoint& endpoint, std::string_view action) {
  auto url = parse_url(endpoint.url);
  if (!url) return fail("relay URL '" + endpoint.url + "': " + url.error());
  if (url->scheme != "wss" && url->scheme != "https")
    return fail("relay URL '" + endpoint.url + "' must use wss:// (the tunnel always uses TLS)");
  if (url->path.rfind("/$hc/", 0) != 0 || url->path.size() <= 5)
    return fail("relay URL '" + endpoint.url + "' must have the form wss://HOST/$hc/PATH");
  DialTarget t;
  t.host = url->host;
  t.port = url->port;
  t.host_header = url->authority();
  t.target = url->path + "?sb-hc-action=" + std::string(action);
  return t;
}

std::shared_ptr<TunnelClient> WsTransport::dial(RelayEndpoint endpoint, TokenSource token) noexcept {
  try {
    return make_client(host_, std::move(endpoint), std::move(token));
  } catch (const std::exception& e) {
    host_.logger()->error("tunnel-ws: dial: {}", e.what());
    return nullptr;
  }
}

std::shared_ptr<TunnelListener> WsTransport::listen(ListenOptions options, AcceptHandler on_stream) noexcept {
  try {
    return make_listener(host_, std::move(options), std::move(on_stream));
  } catch (const std::exception& e) {
    host_.logger()->error("tunnel-ws: listen: {}", e.what());
    return nullptr;
  }
}

}  // namespace clusterconnect::tunnel_ws
