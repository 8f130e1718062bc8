#pragma once
// Moves the bytes of a paired rendezvous between its two TCP legs with
// splice(2) through one pipe per direction: the relay never copies them into
// its own memory, holds no per-stream state, and cannot read what it moves
// (TLS runs end to end inside).
//
// Each direction runs until its reader sees end of stream, which is passed on
// as a half-close (shutdown(SHUT_WR)) of the other leg, so either side may
// finish sending first. The splice ends when both directions have, when
// either leg fails, on close(), or after `idle_timeout` without a byte either
// way; then both sockets are closed and `done` runs once.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <boost/system/error_code.hpp>

#include <boost/asio/ip/tcp.hpp>

namespace clusterconnect::tunnel::rendezvous {

struct SpliceResult {
  std::uint64_t a_to_b = 0;
  std::uint64_t b_to_a = 0;
  boost::system::error_code ec;  // empty when both directions reached end of stream
  std::string reason;  // for a log line
};

struct SpliceOptions {
  std::chrono::milliseconds idle_timeout{std::chrono::minutes(10)};
  // Bytes a pipe may hold; the kernel rounds to pages (default 64 KiB).
  int pipe_size = 0;
};

class SocketSplice {
 public:
  using Done = std::function<void(const SpliceResult&)>;
  virtual ~SocketSplice() = default;
  // Safe from any thread; `done` runs on the sockets' executor.
  virtual void close(std::string reason) = 0;
};

// Both sockets must be connected and share one executor (a strand or a
// single-threaded io_context): the splice's handlers run there. Fails (with
// `done` not called) only when pipes cannot be created.
std::shared_ptr<SocketSplice> start_splice(boost::asio::ip::tcp::socket a, boost::asio::ip::tcp::socket b,
                                           SpliceOptions options, SocketSplice::Done done, boost::system::error_code& ec);

}  // namespace clusterconnect::tunnel::rendezvous
