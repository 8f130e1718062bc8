#pragma once
// Both ends of a rendezvous, end to end through the relay's splice: the agent
// is the TLS client (its certificate proves the key the relay's registry pins;
// the ticket rides in its server name), the proxy announces its ticket in a
// one-line preamble and is the TLS server (an ephemeral certificate whose pin
// the relay passed to the agent). Each check of the other's key is exact: a
// mismatch ends the leg with both pins named. On success the mux session over
// the TLS stream is created, not started.

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "clusterconnect/asio_fwd.hpp"
#include "clusterconnect/result.hpp"
#include "clusterconnect/unique_function.hpp"
#include "protocol/session.hpp"
#include "relay_calls.hpp"

namespace boost::asio::ssl {
class context;
}

namespace clusterconnect::tunnel_tls {

using LegHandler = UniqueFunction<void(error_code, std::shared_ptr<tunnel::Session>, std::string /*reason*/)>;

// TLS 1.3 contexts that ask for the peer's certificate and leave the trust
// decision to the pin check after the handshake.
Result<std::shared_ptr<asio::ssl::context>> agent_context(const std::string& cert_file, const std::string& key_file);
struct ProxyIdentity {
  std::shared_ptr<asio::ssl::context> context;
  std::string pin;
};
// A fresh key and self-signed certificate, held in memory only.
Result<ProxyIdentity> ephemeral_proxy_identity();

struct AgentLeg {
  RendezvousOffer offer;
  std::string proxy_pin;  // from the accept's connectHeaders; required
  tunnel::SessionOptions session;
};
void async_agent_leg(asio::io_context& io, std::shared_ptr<asio::ssl::context> identity, AgentLeg leg,
                     std::shared_ptr<spdlog::logger> logger, LegHandler handler,
                     std::chrono::milliseconds timeout = std::chrono::seconds(30));

struct ProxyLeg {
  RendezvousOffer offer;
  std::vector<std::string> agent_pins;  // lowercase hex
  std::string cluster;                  // for messages
  tunnel::SessionOptions session;
};
void async_proxy_leg(asio::io_context& io, std::shared_ptr<asio::ssl::context> identity, ProxyLeg leg,
                     std::shared_ptr<spdlog::logger> logger, LegHandler handler,
                     std::chrono::milliseconds timeout = std::chrono::seconds(35));

}  // namespace clusterconnect::tunnel_tls
