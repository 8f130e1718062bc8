#pragma once
// The ws form of a rendezvous at the relay: a Hybrid Connections sender's
// WebSocket and the listener's accept WebSocket, paired; every message one
// takes in leaves on the other as it came (text or binary, fragment by
// fragment, so no message is held whole), and a close on either end closes
// the other with the same code and reason. The relay reads nothing in them:
// what runs inside is end to end. Heavy (Beast): front_end.cpp and
// ws_pump.cpp only.

#include <atomic>
#include <cstdint>
#include <memory>

#include "protocol/ws_stream.hpp"

namespace clusterconnect::relay {

struct WsRendezvousCounters {
  std::atomic<std::uint64_t> paired{0};
  std::atomic<std::uint64_t> rejected{0};  // by the listener, with its status
  std::atomic<std::uint64_t> expired{0};
  std::atomic<std::int64_t> active{0};
  std::atomic<std::uint64_t> bytes_sender_to_listener{0};
  std::atomic<std::uint64_t> bytes_listener_to_sender{0};
};

class WsPump {
 public:
  virtual ~WsPump() = default;
  // Closes both ends (1001 with `reason`); thread-safe, idempotent.
  virtual void close(const std::string& reason) noexcept = 0;
};

// Both streams are upgraded and idle; each keeps its own executor (strand).
// `lease` is held until both ends are closed.
std::shared_ptr<WsPump> start_ws_pump(tunnel::WsStream sender, tunnel::WsStream listener, WsRendezvousCounters& counters,
                                      std::shared_ptr<void> lease);

}  // namespace clusterconnect::relay
