// libFuzzer target: the ClientHello peeker reads any bytes without reading
// past them, and its answer does not depend on how the bytes arrived: every
// prefix of an input it completes is need_more or the same answer.

#include <cstdint>
#include <cstdlib>

#include "rendezvous/client_hello.hpp"

using namespace clusterconnect::tunnel::rendezvous;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::span<const std::uint8_t> in(data, size);
  const HelloPeek whole = peek_client_hello(in);
  if (whole.state == HelloPeek::State::complete) {
    if (whole.server_name.size() > 255) std::abort();
    for (std::size_t n = 0; n < size; n += 1 + n / 8) {
      const HelloPeek part = peek_client_hello(in.first(n));
      if (part.state == HelloPeek::State::invalid) std::abort();
      if (part.state == HelloPeek::State::complete && part.server_name != whole.server_name) std::abort();
    }
    (void)ticket_from_server_name(whole.server_name, "relay.example.net");
  }
  return 0;
}
