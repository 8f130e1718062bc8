// libFuzzer target: the rendezvous preamble, the relay's answer and the
// control-channel messages accept or refuse any input without crashing, and
// what they accept re-encodes to an input they accept the same way.

#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <variant>

#include "rendezvous/control_message.hpp"
#include "rendezvous/preamble.hpp"

using namespace clusterconnect::tunnel::rendezvous;

namespace {
std::span<const std::uint8_t> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::span<const std::uint8_t> in(data, size);
  (void)classify_leg(in);

  const PreamblePeek p = parse_preamble(in);
  if (p.state == LinePeek::State::complete) {
    if (p.consumed > size || p.consumed > max_preamble_line) std::abort();
    const auto again = parse_preamble(bytes_of(make_preamble(p.ticket)));
    if (again.state != LinePeek::State::complete || again.ticket != p.ticket) std::abort();
  }

  const ReplyPeek r = parse_reply(in);
  if (r.state == LinePeek::State::complete) {
    if (r.consumed > size || r.status < 100 || r.status > 599) std::abort();
    const auto again = parse_reply(bytes_of(make_reply(r.status, r.reason)));
    if (again.state != LinePeek::State::complete || again.status != r.status || again.reason != r.reason) std::abort();
  }

  const ControlParse c = parse_control_message(std::string_view(reinterpret_cast<const char*>(data), size));
  if (c.state == ControlParse::State::ok) {
    const std::string json = std::visit([](const auto& m) { return to_json(m); }, c.message);
    const ControlParse again = parse_control_message(json);
    if (again.state != ControlParse::State::ok || again.message.index() != c.message.index()) std::abort();
  }
  return 0;
}
