#pragma once
// The HTTP/1.1 forwarding engine shared by the local proxy (inbound = TLS from
// kubectl, upstream = a tunnel stream) and the agent (inbound = a tunnel
// stream, upstream = TLS to the API server). Bodies are streamed, never
// buffered whole; upgraded connections (exec, attach, port-forward) become
// byte pipes. Free of Beast: the parser lives in core/src/http.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "clusterconnect/asio_fwd.hpp"
#include "clusterconnect/stream.hpp"
#include "clusterconnect/unique_function.hpp"

namespace spdlog {
class logger;
}

namespace clusterconnect::http {

struct Header {
  std::string name, value;
};

// One inbound request as the policy sees it. Hop-by-hop headers (Connection
// and the headers it names, Keep-Alive, Proxy-Connection, TE, Trailer,
// Transfer-Encoding, Upgrade) and Content-Length are not in `headers`: the
// engine owns framing and upgrades and re-adds them when forwarding.
struct RequestHead {
  std::string method, target;
  unsigned version = 11;  // 10 or 11
  std::vector<Header> headers;
  bool upgrade = false;      // a WebSocket or SPDY upgrade request (read-only)
  std::string upgrade_protocol;  // the Upgrade header's value when `upgrade`

  // Header names compare case-insensitively.
  const std::string* find(std::string_view name) const;
  std::vector<std::string> all(std::string_view name) const;
  void set(std::string name, std::string value);  // replaces every occurrence
  void add(std::string name, std::string value);
  std::size_t remove(std::string_view name);
  std::size_t remove_prefix(std::string_view prefix);
};

// A response the engine writes itself (policy rejection, 502, 431, ...).
struct Reply {
  unsigned status = 500;
  // Empty: application/json (left empty, it costs no allocation: every
  // Decision carries a Reply).
  std::string content_type;
  std::string body;
  std::vector<Header> headers;
};

// A Kubernetes metav1 Status body, which kubectl prints as the error message:
// {"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
//  "message":message,"reason":reason,"code":code}
Reply status_reply(unsigned code, std::string reason, std::string message);

// Who made a request, for its ExchangeRecord. A policy builds one per
// verified identity and shares it between that identity's requests: a
// connection held open (a watch) carries a pointer, not a copy.
struct Subject {
  std::string user;  // empty: not verified here
  std::vector<std::string> groups;
  std::vector<Header> notes;  // facts about the caller (an audit log's fields)
};

// What happened to one request, for audit logs and metrics. bytes_in/out are
// body bytes (request/response), or piped bytes after an upgrade.
struct ExchangeRecord {
  std::string method, target;
  std::shared_ptr<const Subject> subject;  // the Decision's (null: none was named)
  unsigned status = 0;
  std::uint64_t bytes_in = 0, bytes_out = 0;
  std::chrono::microseconds duration{};
  bool upgraded = false;
  std::vector<Header> notes;  // the exchange's own facts (why an upgraded one was closed)
};

struct Decision {
  bool forward = true;  // false: `reply` is sent instead
  Reply reply;
  std::shared_ptr<const Subject> subject;  // for the ExchangeRecord only
  // When set and the request is upgraded (exec, attach, port-forward), the
  // pipe is closed at this time: both streams are reset with
  // `pipe_deadline_reason` and the record gets the note {"closed", reason}.
  std::chrono::system_clock::time_point pipe_deadline{};
  std::string pipe_deadline_reason;
};

// One per server, shared by all its connections: must be thread-safe.
class ForwardPolicy {
 public:
  virtual ~ForwardPolicy() = default;
  // Rewrite `head` in place (it is forwarded after done(Decision{forward=true}))
  // or answer it. `head` stays valid until `done` is called; `done` may be
  // called from any thread, at most once.
  virtual void on_request(RequestHead& head, UniqueFunction<void(Decision)> done) = 0;
  virtual void on_complete(const ExchangeRecord&) noexcept {}
};

using ConnectHandler = UniqueFunction<void(error_code, StreamPtr, std::string reason)>;
// Opens a new upstream stream. Called on the session's strand; may complete on
// any thread. On failure `reason` is the body of a text/plain 502, which
// kubectl shows as: an error on the server ("<reason>") has prevented the
// request from succeeding. (A Status body would be shown as "unknown" by
// kubectl's discovery requests.)
using UpstreamConnector = std::function<void(ConnectHandler)>;

struct Limits {
  std::size_t header_limit = 64 * 1024;                   // request and response heads
  std::uint64_t body_limit = 3 * 1024 * 1024 * 1024ull;   // per request body; streamed, never buffered
  std::chrono::seconds header_timeout{30};  // from the first byte of a request to its end of head
  std::chrono::seconds idle_timeout{300};   // waiting for the next request on a kept-alive connection
  // Waiting for the first byte of a connection's first request: a connection
  // (or tunnel stream) opened and left silent is closed after this.
  std::chrono::seconds first_byte_timeout{30};
};

// What an exchange does when its upstream breaks (the local proxy: the
// tunnel session went away with a relay replica; the connector opens the
// next stream on a new session). Off by default: the agent's upstream is the
// API server itself.
struct Recovery {
  // A GET or HEAD whose upstream failed before a byte of the response went
  // to the client is sent once more on a new upstream. Other methods get a
  // 502 Status saying the upstream was lost, since they may have been applied.
  bool retry_safe = false;
  // A Kubernetes watch (JSON events) whose upstream broke mid-response is
  // re-issued from the resourceVersion of the last event delivered, and its
  // events continue in the same response (see watch_resume.hpp).
  bool resume_watches = false;
  // How long one break may be retried (with backoff) before the response is
  // ended cleanly, as an API server ends a watch at its timeout.
  std::chrono::milliseconds resume_for{30000};
  std::chrono::milliseconds first_backoff{100}, max_backoff{5000};
};

// Serves HTTP/1.1 on `inbound` until it closes; runs on its own strand of `io`.
// One upstream connection per inbound connection, opened on the first
// forwarded request and reopened when it closed.
void serve(asio::io_context& io, StreamPtr inbound, std::shared_ptr<ForwardPolicy> policy,
           UpstreamConnector connector, Limits limits, std::shared_ptr<spdlog::logger> logger,
           Recovery recovery = {});

struct PoolOptions {
  std::size_t max_idle = 256;              // idle connections kept; the oldest is closed beyond
  std::chrono::seconds idle_timeout{90};   // an idle connection unused this long is closed (Go's transport: 90 s)
};

struct PoolStats {
  std::uint64_t opened = 0;  // connections opened through the pool's connector
  std::uint64_t reused = 0;  // requests sent on a connection taken from the pool
  std::size_t idle = 0;      // connections in the pool now
};

// Idle upstream connections shared by every inbound connection of a process,
// so that a client holding its connection open between requests holds no
// upstream connection. One pool per upstream: the connections one connector
// opens (one endpoint, one TLS context) are interchangeable, and they carry
// no identity (credentials travel per request, in the request head).
//
// A connection goes back only after a response that ended cleanly, with no
// byte unread, no `Connection: close`, no upgrade, no error. The pool keeps
// a read on each idle connection and drops one that the upstream closes (or
// that sends anything); the next request takes the most recently used one.
// A request that finds a reused connection closed before any byte of the
// response is sent once more on a new connection when it has no body.
// Thread-safe.
class UpstreamPool {
 public:
  static std::shared_ptr<UpstreamPool> create(asio::io_context& io, UpstreamConnector connector, PoolOptions options,
                                              std::shared_ptr<spdlog::logger> logger = nullptr);
  virtual ~UpstreamPool() = default;
  virtual PoolStats stats() const = 0;
  // Closes the idle connections unused since before `now - idle_timeout`.
  // The pool's timer calls it; tests may call it with a time of their own.
  virtual void close_expired(std::chrono::steady_clock::time_point now) = 0;
  // Closes every idle connection and keeps none from now on (shutdown).
  virtual void close() = 0;
};

// As above, with upstream connections taken from and returned to `pool`
// between requests instead of one held per inbound connection. A retried or
// resumed request opens its new upstream through the pool's connector.
void serve(asio::io_context& io, StreamPtr inbound, std::shared_ptr<ForwardPolicy> policy,
           std::shared_ptr<UpstreamPool> pool, Limits limits, std::shared_ptr<spdlog::logger> logger,
           Recovery recovery = {});

// The forwarding engine's settings, made once per server and shared by every
// connection it serves (each keeps a pointer, not a copy). serve() above is
// the same for a server of one connection.
class Server {
 public:
  // One upstream connection per inbound connection.
  static std::shared_ptr<const Server> create(asio::io_context& io, UpstreamConnector connector, Limits limits,
                                              std::shared_ptr<spdlog::logger> logger, Recovery recovery = {});
  // Upstream connections taken from and returned to `pool`.
  static std::shared_ptr<const Server> create(asio::io_context& io, std::shared_ptr<UpstreamPool> pool, Limits limits,
                                              std::shared_ptr<spdlog::logger> logger, Recovery recovery = {});
  virtual ~Server() = default;
  // Serves HTTP/1.1 on `inbound` until it closes, on its own strand. Without
  // an inbound stream, a policy, or a connector (or pool), `inbound` is reset.
  virtual void serve(StreamPtr inbound, std::shared_ptr<ForwardPolicy> policy) const = 0;
};

}  // namespace clusterconnect::http
