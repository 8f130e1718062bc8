#pragma once
// HTTP/2 to one upstream (the API server), behind the HTTP/1.1 engine of
// forward.hpp. The engine keeps speaking HTTP/1.1 to its upstream; the
// connections this hands out are virtual: each request written to one
// becomes a stream on a shared HTTP/2 connection, and its response is read
// back as HTTP/1.1 (status line, headers without pseudo-headers, chunked when
// there is no content-length, each DATA frame as it arrives). Idle, a virtual
// connection holds no stream and no buffer, so a watch costs a stream, not a
// TLS connection.
//
// Upgrade requests (exec, attach, port-forward) and servers that do not pick
// h2 by ALPN get real HTTP/1.1 connections from `http1`. Response DATA is
// acknowledged (WINDOW_UPDATE) only as the engine reads it, so a slow reader
// holds at most one stream window. MAX_CONCURRENT_STREAMS is honoured (another
// connection opens when every one is full); requests waiting for a
// connection that fails to open wait for one more, then fail; after a GOAWAY new requests go
// to a new connection and the refused streams of bodiless requests are sent
// again; a stream reset before its response head reads as a 502 that says
// so, after it as a reset of the engine's upstream. An idle connection is
// checked with PING (H2Options). Free of Beast and
// nghttp2: the session lives in core/src/http/h2_upstream.cpp.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "clusterconnect/asio_fwd.hpp"
#include "clusterconnect/http/forward.hpp"

namespace spdlog {
class logger;
}

namespace clusterconnect::http {

// Opens a TLS connection offering h2 and http/1.1; `alpn` is what the server
// chose ("h2", "http/1.1" or empty).
using H2ConnectHandler = UniqueFunction<void(error_code, StreamPtr, std::string alpn, std::string reason)>;
using H2Connector = std::function<void(H2ConnectHandler)>;

struct H2Options {
  std::uint32_t stream_window = 256 * 1024;  // bytes of one response buffered at most while its reader is slow
  std::size_t max_connections = 64;          // HTTP/2 connections kept at once
  std::size_t header_limit = 64 * 1024;      // request and response heads
  // After a server answered with http/1.1 (no h2), how long requests use
  // HTTP/1.1 connections before h2 is offered again.
  std::chrono::seconds recheck_after{60};
  // Liveness, as Go's http2 Transport (ReadIdleTimeout, PingTimeout,
  // IdleConnTimeout): a peer that vanished without a FIN (a dropped NAT
  // entry, a dead host) is noticed in seconds, not when TCP gives up.
  // After `ping_after` with no frame received a PING is sent; without its ACK
  // within `ping_timeout` the connection is closed and its streams are
  // retried or failed as after a GOAWAY. A connection without streams for
  // `idle_timeout` is closed. Zero turns each off.
  std::chrono::milliseconds ping_after{std::chrono::seconds(30)};
  std::chrono::milliseconds ping_timeout{std::chrono::seconds(15)};
  std::chrono::milliseconds idle_timeout{std::chrono::seconds(90)};
};

struct H2Stats {
  std::uint64_t connections_opened = 0;  // TLS connections that negotiated h2
  std::uint64_t streams_opened = 0;      // requests sent as HTTP/2 streams
  std::uint64_t streams_retried = 0;     // refused by a GOAWAY and sent again
  std::uint64_t connects_retried = 0;    // connections that failed to open, tried again for the requests waiting
  std::uint64_t streams_reset = 0;       // reset by the server
  std::uint64_t http1_connections = 0;   // handed out as HTTP/1.1 (upgrades, no h2)
  std::uint64_t ping_timeouts = 0;       // connections closed for a PING without ACK
  std::uint64_t idle_closed = 0;         // connections closed after idle_timeout without streams
  std::size_t connections = 0;           // HTTP/2 connections open now
  std::size_t active_streams = 0;        // streams open now
};

class H2Upstream {
 public:
  static std::shared_ptr<H2Upstream> create(asio::io_context& io, H2Connector h2, UpstreamConnector http1,
                                            H2Options options, std::shared_ptr<spdlog::logger> logger = nullptr);
  virtual ~H2Upstream() = default;
  // What the engine (or its UpstreamPool) opens connections with.
  virtual UpstreamConnector connector() = 0;
  virtual H2Stats stats() const = 0;
  // Closes every HTTP/2 connection (shutdown).
  virtual void close() = 0;
};

}  // namespace clusterconnect::http
