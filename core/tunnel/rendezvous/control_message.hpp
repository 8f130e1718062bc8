#pragma once
// The text messages of a listener's control channel, in Azure Relay Hybrid
// Connections' JSON shape:
//
//   relay -> agent  {"accept":{"address":"…","id":"…","connectHeaders":{…},
//                               "remoteEndpoint":{"address":"…","port":N}}}
//   agent -> relay  {"renewToken":{"token":"SharedAccessSignature …"}}
//
// Hybrid Connections defines more kinds (HTTP mode's "request"); a message of
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

using ControlMessage = std::variant<AcceptMessage, RenewTokenMessage>;

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

}  // namespace clusterconnect::tunnel::rendezvous
