#pragma once
// Reads the server name a TLS client asks for from the first bytes it sends,
// without terminating TLS: the relay pairs an agent's rendezvous leg by the
// one-time ticket in that name and then splices the bytes, ClientHello
// included, to the proxy, which completes the handshake end to end.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace clusterconnect::tunnel::rendezvous {

// A ClientHello larger than this is refused (real ones are 200 B to 2 KiB;
// post-quantum key shares push them towards 2 KiB, far below the cap).
inline constexpr std::size_t max_client_hello = 16 * 1024;

struct HelloPeek {
  enum class State { need_more, complete, invalid };
  State state = State::need_more;
  // complete: the host_name of the server_name extension, empty when the
  // client sent none.
  std::string server_name;
  // invalid: what was wrong, for a log line.
  std::string error;
};

// Looks at the bytes received so far on a connection (all of them, from the
// first). need_more until the whole ClientHello handshake message is there,
// however it is split into TLS records and TCP segments; invalid as soon as
// the bytes cannot be the start of a TLS ClientHello or break its limits.
HelloPeek peek_client_hello(std::span<const std::uint8_t> bytes, std::size_t limit = max_client_hello);

// Random, single-use rendezvous tickets: 32 lowercase hex digits (128 bits),
// short enough to be the first label of a DNS name (at most 63 bytes).
inline constexpr std::size_t ticket_length = 32;
std::string make_ticket();
bool is_ticket(std::string_view s) noexcept;

// The server name an agent puts in its ClientHello for a ticket:
// "<ticket>.<relay host>", the relay host without a port.
std::string ticket_server_name(std::string_view ticket, std::string_view relay_host);
// The ticket in such a name, if it is one for this relay (host compared
// without regard to case, a trailing dot allowed).
std::optional<std::string> ticket_from_server_name(std::string_view server_name, std::string_view relay_host);

}  // namespace clusterconnect::tunnel::rendezvous
