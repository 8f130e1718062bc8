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

using ControlMessage = std::variant<AcceptMessage, RenewTokenMessage, RequestMessage, ResponseMessage>;

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

}  // namespace clusterconnect::tunnel::rendezvous
