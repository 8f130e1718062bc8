#pragma once
// Both ends of a rendezvous, in either form. The agent is the TLS client (its
// certificate proves the key the relay's registry pins), the proxy the TLS
// server (an ephemeral certificate whose pin the relay passed to the agent).
//   tls form: raw TCP legs the relay splices; the agent's ticket rides in its
//             server name, the proxy announces its ticket in a preamble line.
//   ws form:  WebSocket legs in Hybrid Connections' shape (the proxy's is the
//             sender's connect, the agent's the accept address); TLS runs
//             inside them, one binary message per record.
// Each check of the other's key is exact: a mismatch ends the leg with both
// pins named. On success the mux session over the TLS stream is created, not
// started.

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
struct ssl_st;

namespace clusterconnect::tunnel::transport {

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

// The ws form. The agent dials the accept address the relay announced (a
// wss:// URL used as it is), verifying the relay's certificate.
struct AgentWsLeg {
  std::string address;
  std::shared_ptr<asio::ssl::context> relay_tls;
  std::string proxy_pin;
  tunnel::SessionOptions session;
};
void async_agent_ws_leg(asio::io_context& io, std::shared_ptr<asio::ssl::context> identity, AgentWsLeg leg,
                        std::shared_ptr<spdlog::logger> logger, LegHandler handler,
                        std::chrono::milliseconds timeout = std::chrono::seconds(30));

// The proxy connects as a Hybrid Connections sender, with its connect token
// and its key's pin as headers; the relay completes the upgrade once the
// agent has accepted. access_denied on 401, host_not_found when no agent
// listens, timed_out when none answered in time.
struct ProxyWsLeg {
  RelayTarget target;
  std::shared_ptr<asio::ssl::context> relay_tls;
  std::string token;
  std::string own_pin;
  std::vector<std::string> agent_pins;  // lowercase hex
  tunnel::SessionOptions session;
};
void async_proxy_ws_leg(asio::io_context& io, std::shared_ptr<asio::ssl::context> identity, ProxyWsLeg leg,
                        std::shared_ptr<spdlog::logger> logger, LegHandler handler,
                        std::chrono::milliseconds timeout = std::chrono::seconds(40));

// The pin checks both forms make once the handshake is done: empty when the
// peer proved the key expected, else the reason (both pins named).
std::string check_proxy_key(ssl_st* tls, const std::string& expected_pin);
std::string check_agent_key(ssl_st* tls, const std::vector<std::string>& pins, const std::string& cluster);

}  // namespace clusterconnect::tunnel::transport
