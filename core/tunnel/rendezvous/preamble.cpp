#include "rendezvous/preamble.hpp"

#include "rendezvous/client_hello.hpp"

namespace clusterconnect::tunnel::rendezvous {

namespace {

template <typename Peek>
Peek invalid(std::string why) {
  Peek p;
  p.state = LinePeek::State::invalid;
  p.error = std::move(why);
  return p;
}

// The line without its CRLF, or need_more/invalid in `state`.
template <typename Peek>
bool take_line(std::span<const std::uint8_t> bytes, Peek& p, std::string_view& line) {
  const std::size_t scan = std::min(bytes.size(), max_preamble_line);
  for (std::size_t i = 0; i < scan; ++i) {
    const auto c = bytes[i];
    if (c == '\n') {
      if (i == 0 || bytes[i - 1] != '\r') {
        p = invalid<Peek>("a rendezvous line must end with CRLF");
        return false;
      }
      line = std::string_view(reinterpret_cast<const char*>(bytes.data()), i - 1);
      p.consumed = i + 1;
      return true;
    }
    if (c == '\r' && i + 1 < bytes.size() && bytes[i + 1] != '\n') {
      p = invalid<Peek>("a rendezvous line holds a bare CR");
      return false;
    }
    if (c != '\r' && (c < 0x20 || c > 0x7e)) {
      p = invalid<Peek>("a rendezvous line holds a control or non-ASCII byte");
      return false;
    }
  }
  if (bytes.size() >= max_preamble_line) p = invalid<Peek>("a rendezvous line longer than 256 bytes");
  return false;
}

bool starts_with_magic(std::string_view line, std::string_view& rest) {
  if (line.size() <= preamble_magic.size() || line.substr(0, preamble_magic.size()) != preamble_magic ||
      line[preamble_magic.size()] != ' ')
    return false;
  rest = line.substr(preamble_magic.size() + 1);
  return true;
}

}  // namespace

Leg classify_leg(std::span<const std::uint8_t> first) noexcept {
  if (first.empty()) return Leg::undecided;
  if (first[0] == 22) return Leg::agent;
  // Every byte of the magic so far, so a typo is caught before a line end.
  const std::size_t n = std::min(first.size(), preamble_magic.size());
  for (std::size_t i = 0; i < n; ++i)
    if (first[i] != static_cast<std::uint8_t>(preamble_magic[i])) return Leg::unknown;
  return n == preamble_magic.size() ? Leg::proxy : Leg::undecided;
}

std::string make_preamble(std::string_view ticket) {
  std::string out(preamble_magic);
  out.push_back(' ');
  out.append(ticket);
  out.append("\r\n");
  return out;
}

PreamblePeek parse_preamble(std::span<const std::uint8_t> bytes) {
  PreamblePeek p;
  std::string_view line, rest;
  if (!take_line(bytes, p, line)) return p;
  if (!starts_with_magic(line, rest)) return invalid<PreamblePeek>("not a rendezvous preamble");
  if (!is_ticket(rest)) return invalid<PreamblePeek>("the rendezvous preamble names no valid ticket");
  p.state = LinePeek::State::complete;
  p.ticket.assign(rest);
  for (auto& c : p.ticket)
    if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
  return p;
}

std::string make_reply(unsigned status, std::string_view reason) {
  if (status < 100 || status > 599) status = 500;
  std::string out(preamble_magic);
  out.push_back(' ');
  out.append(std::to_string(status));
  out.push_back(' ');
  const std::size_t room = max_preamble_line - out.size() - 2;  // the whole line, CRLF included, fits
  for (char c : reason.substr(0, room)) out.push_back(c >= 0x20 && c <= 0x7e ? c : '?');
  out.append("\r\n");
  return out;
}

ReplyPeek parse_reply(std::span<const std::uint8_t> bytes) {
  ReplyPeek p;
  std::string_view line, rest;
  if (!take_line(bytes, p, line)) return p;
  if (!starts_with_magic(line, rest)) return invalid<ReplyPeek>("the relay's answer is not a rendezvous line");
  if (rest.size() < 3 || rest[0] < '1' || rest[0] > '5' || rest[1] < '0' || rest[1] > '9' || rest[2] < '0' || rest[2] > '9' ||
      (rest.size() > 3 && rest[3] != ' '))
    return invalid<ReplyPeek>("the relay's answer carries no status");
  p.state = LinePeek::State::complete;
  p.status = static_cast<unsigned>((rest[0] - '0') * 100 + (rest[1] - '0') * 10 + (rest[2] - '0'));
  if (rest.size() > 4) p.reason.assign(rest.substr(4));
  return p;
}

}  // namespace clusterconnect::tunnel::rendezvous
