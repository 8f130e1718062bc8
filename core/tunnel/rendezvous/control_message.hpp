#pragma once
// The text messages of a listener's control channel, in Azure Relay Hybrid
// Connections' JSON shape:
//
//   relay -> agent  {"accept":{"address":"…","id":"…","connectHeaders":{…},
//                               "remoteEndpoint":{"address":"…","port":N}}}
//   agent -> relay  {"renewToken":{"token":"SharedAccessSignature …"}}
//
// and HTTP mode's pair, each followed by one binary message with the body
// when "body" is true:
//
//   relay -> listener {"request":{"address":"…","id":"…","requestTarget":"/…",
//                                 "method":"GET","remoteEndpoint":{…},
//                                 "requestHeaders":{…},"body":true}}
//   listener -> relay {"response":{"requestId":"…","statusCode":200,
//                                  "statusDescription":"OK",
//                                  "responseHeaders":{…},"body":true}}
//
// Our extension (docs/tunnel-protocol.md, "Drain"), sent only on a control
// channel whose listen handshake carried `drain_header`:
//
//   relay -> agent  {"drain":{"address":"tls://HOST:PORT","reason":"…"}}
//
// The relay replica whose rendezvous address is `address` is shutting down:
// the agent sends GOAWAY on each session whose rendezvous went through it.
//
// A request too large for the control channel is announced with its address
// and id only; the listener dials the address and gets it there. A message of
// a kind this side does not handle is reported as such, not as malformed.

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace clusterconnect::tunnel::rendezvous {

// The connect request's header that carries the pin of the proxy's
// ephemeral TLS key; the relay passes it to the agent in connectHeaders.
inline constexpr std::string_view proxy_key_pin_header = "x-clusterconnect-proxy-key-pin";
// In a listen handshake's response: the id of the relay replica that holds
// the control channel (absent without replicas). An agent spreads its
// control channels over distinct replicas with it.
inline constexpr std::string_view replica_header = "x-clusterconnect-replica";

// In a listen handshake: the listener understands `drain` messages. A
// Hybrid Connections listener that does not send it is never sent one.
inline constexpr std::string_view drain_header = "x-clusterconnect-drain";

// Azure Relay's limit for a control-channel message.
inline constexpr std::size_t max_control_message = 64 * 1024;

struct RemoteEndpoint {
  std::string address;
  std::uint16_t port = 0;
};

struct AcceptMessage {
  std::string address;  // where the listener dials its leg of the rendezvous
  std::string id;       // the rendezvous' id (for the tls form, its ticket)
  std::map<std::string, std::string> connect_headers;
  std::optional<RemoteEndpoint> remote_endpoint;
};

struct RenewTokenMessage {
  std::string token;
};

// HTTP mode. `method` empty: only announced, the request itself follows on
// the rendezvous WebSocket at `address`.
struct RequestMessage {
  std::string address;
  std::string id;
  std::string target;  // requestTarget: path and query as the sender sent them
  std::string method;
  std::optional<RemoteEndpoint> remote_endpoint;
  std::map<std::string, std::string> headers;
  bool body = false;
};

struct ResponseMessage {
  std::string request_id;
  unsigned status = 0;  // 100..999
  std::string description;
  std::map<std::string, std::string> headers;
  bool body = false;
};

// The replica whose rendezvous address is `address` (scheme://HOST:PORT, as
// the accept addresses it hands out begin) drains.
struct DrainMessage {
  std::string address;
  std::string reason;
};

// Whether a rendezvous dialed at `accept_address` went through the replica
// that a drain names by `drain_address`: the same scheme and authority
// (case-insensitive), whatever path or query the accept address carries.
bool rendezvous_through(std::string_view accept_address, std::string_view drain_address);

using ControlMessage = std::variant<AcceptMessage, RenewTokenMessage, RequestMessage, ResponseMessage, DrainMessage>;

struct ControlParse {
  enum class State { ok, unknown_kind, invalid };
  State state = State::invalid;
  ControlMessage message;
  std::string kind;   // unknown_kind: the message's key
  std::string error;  // invalid: what was wrong (never the token)
};

ControlParse parse_control_message(std::string_view text);
std::string to_json(const AcceptMessage& m);
std::string to_json(const RenewTokenMessage& m);
std::string to_json(const RequestMessage& m);
std::string to_json(const ResponseMessage& m);
std::string to_json(const DrainMessage& m);

}  // namespace clusterconnect::tunnel::rendezvous
