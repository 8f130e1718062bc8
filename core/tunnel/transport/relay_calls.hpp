#pragma once
// The tls transport's two calls to the relay itself, both over verified TLS:
// a listener's control channel (a WebSocket of JSON text messages, in Azure
// Relay Hybrid Connections' shape) and a client's connect, which returns a
// rendezvous. Light header: the Beast code lives in relay_calls.cpp only.

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <spdlog/fwd.h>

#include "clusterconnect/asio_fwd.hpp"
#include "clusterconnect/result.hpp"
#include "clusterconnect/transport.hpp"
#include "clusterconnect/unique_function.hpp"

namespace boost::asio::ssl {
class context;
}

namespace clusterconnect::tunnel::transport {

struct RelayTarget {
  std::string host;         // for DNS, SNI and certificate verification
  std::string port;
  std::string host_header;  // host[:port]
  std::string path;         // /$hc/PATH, as given (percent-encoded)
  std::string hybrid_connection;  // PATH, decoded, for messages
};

Result<RelayTarget> relay_target(const RelayEndpoint& endpoint);

// The verifying TLS client context for the relay (warns on insecure_skip_verify).
Result<std::shared_ptr<asio::ssl::context>> relay_tls_context(const RelayEndpoint& endpoint, spdlog::logger& logger);

class ControlChannel {
 public:
  virtual ~ControlChannel() = default;
  // Reads until the channel ends: `on_message` for each text message, then
  // `on_closed` once with the reason. Both run on the channel's strand.
  virtual void start(std::function<void(std::string)> on_message, std::function<void(std::string)> on_closed) = 0;
  // Queues one text message (renewToken).
  virtual void send(std::string text) = 0;
  virtual void close() noexcept = 0;
  // The relay replica that holds it, as its handshake named it (empty when
  // the relay runs without replicas).
  virtual std::string replica() const { return {}; }
};

using ControlHandler = UniqueFunction<void(error_code, std::shared_ptr<ControlChannel>, std::string /*reason*/)>;

// wss://RELAY/$hc/PATH?sb-hc-action=listen with the listen token, no
// subprotocol. access_denied when the relay refused the token (401).
// `headers` go on the handshake as they are.
void async_open_control_channel(asio::io_context& io, RelayTarget target, std::shared_ptr<asio::ssl::context> tls,
                                std::string token, std::shared_ptr<spdlog::logger> logger, ControlHandler handler,
                                std::chrono::milliseconds timeout = std::chrono::seconds(10),
                                std::vector<std::pair<std::string, std::string>> headers = {});

struct RendezvousOffer {
  std::string host;  // where to dial the leg
  std::string port;
  std::string ticket;
};

using OfferHandler = UniqueFunction<void(error_code, RendezvousOffer, std::string /*reason*/)>;

// POST /$hc/PATH?sb-hc-action=connect with the connect token and the pin of
// this side's TLS key. access_denied on 401, host_not_found on 404 (no agent
// listening), otherwise the relay's message.
void async_request_rendezvous(asio::io_context& io, RelayTarget target, std::shared_ptr<asio::ssl::context> tls,
                              std::string token, std::string own_key_pin, OfferHandler handler,
                              std::chrono::milliseconds timeout = std::chrono::seconds(10));

// "tls://HOST:PORT" as the relay announces a rendezvous address.
Result<RendezvousOffer> parse_rendezvous_address(const std::string& address);

}  // namespace clusterconnect::tunnel::transport
