#pragma once
// TLS connections as clusterconnect::Stream: an outbound connector and a
// listener. Light on purpose: the TLS stream (TlsSocket) lives in core/src/tls.
//
// Half-close: async_shutdown_send sends a TLS close_notify and then a TCP FIN;
// the peer reads eof (Go's tls.Conn.CloseWrite and OpenSSL behave the same),
// and this side can keep reading. A peer that closes TCP without close_notify
// is also read as eof: HTTP and the upgraded protocols carry their own framing,
// so a truncation is still detected above.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "clusterconnect/asio_fwd.hpp"
#include "clusterconnect/result.hpp"
#include "clusterconnect/stream.hpp"
#include "clusterconnect/unique_function.hpp"

namespace boost::asio::ssl {
class context;
}
namespace spdlog {
class logger;
}

namespace clusterconnect::tls {

using ConnectHandler = UniqueFunction<void(error_code, StreamPtr, std::string /*reason*/)>;

// Resolves `host`, connects (TCP_NODELAY) and handshakes with SNI and host
// name/IP verification against `context`. The whole attempt is bounded by
// `timeout`. On failure `reason` is one user-facing line ("TLS handshake with
// api.example:443 failed: certificate verify failed (...)"). The handler runs
// on the new stream's executor (or a strand of `io` on failure).
void async_connect(asio::io_context& io, std::string host, std::string port,
                   std::shared_ptr<asio::ssl::context> context, ConnectHandler handler,
                   std::chrono::milliseconds timeout = std::chrono::seconds(10));

struct ServerLimits {
  std::chrono::milliseconds handshake_timeout = std::chrono::seconds(10);
  std::size_t max_pending_handshakes = 256;  // further connections wait in the backlog
};

// Accepts TCP connections, sets TCP_NODELAY, completes the TLS handshake and
// hands each connection to on_stream (on the stream's own strand).
class TlsServer {
 public:
  using StreamCallback = std::function<void(StreamPtr)>;

  virtual ~TlsServer() = default;

  // Binds address:port (port 0 = an ephemeral port). A busy port is a Failure
  // "127.0.0.1:47011 is already in use".
  static Result<std::shared_ptr<TlsServer>> listen(asio::io_context& io, std::string address,
                                                   unsigned short port,
                                                   std::shared_ptr<asio::ssl::context> context,
                                                   StreamCallback on_stream,
                                                   std::shared_ptr<spdlog::logger> logger,
                                                   ServerLimits limits = {});

  virtual unsigned short port() const noexcept = 0;
  // Stops accepting; connections already handed out are not affected.
  // Thread-safe, idempotent. The pending accept keeps the server alive, so
  // dropping the last reference without close() does not stop it.
  // `address` must be an IP literal ("127.0.0.1", "::1", "0.0.0.0").
  virtual void close() noexcept = 0;
};

}  // namespace clusterconnect::tls
