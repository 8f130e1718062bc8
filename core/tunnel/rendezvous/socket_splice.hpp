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
#include <mutex>
#include <string>
#include <vector>
#include <boost/system/error_code.hpp>

#include <boost/asio/ip/tcp.hpp>

namespace clusterconnect::tunnel::rendezvous {

struct SpliceResult {
  std::uint64_t a_to_b = 0;
  std::uint64_t b_to_a = 0;
  boost::system::error_code ec;  // empty when both directions reached end of stream
  std::string reason;  // for a log line
};

// Pipes for splicing. A direction of a splice holds one only while its bytes
// are in flight and gives it back empty, so held-open connections that are
// quiet (watches, idle exec sessions) hold no pipe, and large pipes stay
// affordable: the kernel charges a pipe's capacity to the user
// (`pipe-user-pages-soft`) whether it holds bytes or not. Thread-safe.
class PipePool {
 public:
  // `pipe_size`: bytes a pipe may hold (the kernel rounds to pages; 0: its
  // default, 64 KiB); `keep`: empty pipes kept for reuse.
  PipePool(int pipe_size, std::size_t keep);
  ~PipePool();
  PipePool(const PipePool&) = delete;
  PipePool& operator=(const PipePool&) = delete;

  struct Fds {
    int read = -1, write = -1;
  };
  // An empty pipe (non-blocking, close-on-exec), reused or new.
  bool take(Fds& out, boost::system::error_code& ec);
  // Back, empty; closed instead when the pool already keeps `keep`.
  void give(Fds fds) noexcept;
  std::size_t kept() const;
  std::size_t created() const;

 private:
  const int pipe_size_;
  const std::size_t keep_;
  mutable std::mutex mutex_;
  std::vector<Fds> free_;
  std::size_t created_ = 0;
};

struct SpliceOptions {
  std::chrono::milliseconds idle_timeout{std::chrono::minutes(10)};
  // Where the splice's pipes come from; null: a pool of its own (kernel-sized pipes).
  std::shared_ptr<PipePool> pipes;
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
// `done` not called) only when the sockets cannot be made non-blocking.
std::shared_ptr<SocketSplice> start_splice(boost::asio::ip::tcp::socket a, boost::asio::ip::tcp::socket b,
                                           SpliceOptions options, SocketSplice::Done done, boost::system::error_code& ec);

}  // namespace clusterconnect::tunnel::rendezvous
