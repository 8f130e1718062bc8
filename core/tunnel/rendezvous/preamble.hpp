#pragma once
// The proxy's rendezvous leg: one line naming the ticket its authenticated
// connect was given, and the relay's one-line answer, after which the leg
// carries the agent's bytes (its ClientHello first) and the proxy's answer
// to them, end to end:
//
//   proxy -> relay   "CLUSTERCONNECT-RENDEZVOUS/1 <ticket>\r\n"
//   relay -> proxy   "CLUSTERCONNECT-RENDEZVOUS/1 200 paired\r\n"
//                    "CLUSTERCONNECT-RENDEZVOUS/1 504 no agent answered within 30 s\r\n"
//
// An agent's leg opens with a TLS record (first byte 22), a proxy's with this
// line (first byte 'C'), so one port takes both.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace clusterconnect::tunnel::rendezvous {

inline constexpr std::string_view preamble_magic = "CLUSTERCONNECT-RENDEZVOUS/1";
inline constexpr std::size_t max_preamble_line = 256;

enum class Leg { undecided, agent, proxy, unknown };
// Which side a connection to the rendezvous port is, from its first bytes.
Leg classify_leg(std::span<const std::uint8_t> first) noexcept;

struct LinePeek {
  enum class State { need_more, complete, invalid };
  State state = State::need_more;
  std::size_t consumed = 0;  // complete: the line's length, CRLF included
  std::string error;         // invalid: what was wrong
};

struct PreamblePeek : LinePeek {
  std::string ticket;
};
std::string make_preamble(std::string_view ticket);
// need_more until a whole line is there; invalid beyond max_preamble_line
// bytes without a line end, or for anything but the magic and a ticket.
PreamblePeek parse_preamble(std::span<const std::uint8_t> bytes);

struct ReplyPeek : LinePeek {
  unsigned status = 0;  // 200 paired; 4xx/5xx refused, with the reason
  std::string reason;
};
// The reason is reduced to printable ASCII and cut to fit the line.
std::string make_reply(unsigned status, std::string_view reason);
ReplyPeek parse_reply(std::span<const std::uint8_t> bytes);

}  // namespace clusterconnect::tunnel::rendezvous
