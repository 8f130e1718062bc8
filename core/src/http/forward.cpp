// The forwarding engine. The only Beast HTTP translation unit of core.
//
// One Session per inbound connection, on its own strand. Per request:
//   read head -> policy -> (connect upstream) -> two concurrent pumps:
//     A: request head + body, inbound -> upstream
//     B: response head(s) + body, upstream -> inbound
//   -> when both are done: next request, close, or (after 101) two raw pipes.
// Running A and B concurrently lets an upstream answer early (401, 413,
// 100-continue) without waiting for the whole request body.
#include "clusterconnect/http/forward.hpp"
#include "clusterconnect/ascii.hpp"
#include "clusterconnect/http/watch_resume.hpp"

#include <algorithm>
#include <array>
#include <cstdio>
#include <functional>
#include <iterator>
#include <limits>
#include <mutex>
#include <optional>
#include <vector>

#include "clusterconnect/stream_adapter.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/status.hpp>
#include <spdlog/spdlog.h>

namespace clusterconnect::http {
namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using Strand = asio::strand<asio::io_context::executor_type>;
// On the concrete strand: a timer on an any_io_executor allocates per wait.
using StrandTimer =
    asio::basic_waitable_timer<std::chrono::steady_clock, asio::wait_traits<std::chrono::steady_clock>, Strand>;
using Clock = std::chrono::steady_clock;

// Body bytes moved per read: one TLS record's worth at first. Also the
// granularity of chunk re-encoding: a chunk that arrives is forwarded as soon
// as it (or this much of it) is read.
constexpr std::size_t kPumpBuffer = 16 * 1024;
// A response of unknown length (a watch, `logs -f`, a chunked list) starts
// reading in pieces this small and grows only while reads come full: a held
// watch waits on 1 KiB instead of 16, and a transfer reaches the bulk size
// within a few reads.
constexpr std::size_t kQuietPumpBuffer = 1024;
// A direction whose read fills its buffer is a transfer in bulk: its buffer
// (and its read buffer) grow fourfold per filled read up to this, so it moves
// in fewer, larger pieces (one run of DATA frames and TLS records, one write,
// one wake-up per hop per piece). Quiet connections and watches keep the
// small size.
constexpr std::size_t kPumpBufferBulk = 256 * 1024;
// Read-buffer capacity reserved up front: Beast reads at most
// max(512, capacity - size) bytes per call, so an empty buffer would move
// bodies in 512-byte pieces, each becoming its own write downstream.
constexpr std::size_t kReadReserve = 16 * 1024;
// The reads that only wait for a peer to send (a held connection's next
// request, the client during a response, an idle upstream connection, a quiet
// response's next event) go into a few bytes of the session's own: they
// stand in for a readiness wait, so that no read buffer is held while
// nothing comes. What they bring moves to the read buffer, and the parser
// reads the rest from there.
constexpr std::size_t kIdleRead = 64;
// Bytes read and dropped while closing, so a client's unread pipelined data
// does not turn our close into a reset that destroys the response in flight.
constexpr std::size_t kLingerBytes = 1024 * 1024;
constexpr auto kLingerTime = std::chrono::seconds(2);
// The body of a non-200 answer to a resumed watch, kept for its ERROR event.
constexpr std::size_t kResumeErrorBody = 64 * 1024;

using clusterconnect::ascii_iequals;
using clusterconnect::ascii_istarts_with;
bool iequals(std::string_view a, std::string_view b) { return ascii_iequals(a, b); }
bool istarts_with(std::string_view s, std::string_view prefix) { return ascii_istarts_with(s, prefix); }

// RFC 9110 7.6.1: removed at every hop. Content-Length is not hop-by-hop but
// the engine re-derives it from the framing it actually uses.
bool is_hop_by_hop(std::string_view name) {
  return iequals(name, "connection") || iequals(name, "keep-alive") || iequals(name, "proxy-connection") ||
         iequals(name, "te") || iequals(name, "trailer") || iequals(name, "transfer-encoding") ||
         iequals(name, "upgrade");
}

// Comma-separated tokens of every Connection header, trimmed.
template <class Fields>
void connection_tokens(const Fields& fields, std::vector<std::string_view>& out) {
  out.clear();
  for (auto it = fields.find(bhttp::field::connection); it != fields.end() && it->name() == bhttp::field::connection;
       ++it) {
    std::string_view v = it->value();
    while (!v.empty()) {
      auto comma = v.find(',');
      std::string_view tok = v.substr(0, comma);
      while (!tok.empty() && (tok.front() == ' ' || tok.front() == '\t')) tok.remove_prefix(1);
      while (!tok.empty() && (tok.back() == ' ' || tok.back() == '\t')) tok.remove_suffix(1);
      if (!tok.empty() && out.size() < 64) out.push_back(tok);
      if (comma == std::string_view::npos) break;
      v.remove_prefix(comma + 1);
    }
  }
}

bool is_http_error(const error_code& ec) {
  return ec.category() == make_error_code(bhttp::error::end_of_stream).category();
}

// A parse error (as opposed to the stream ending early).
bool is_malformed(const error_code& ec) {
  return is_http_error(ec) && ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message;
}

bool named_in(std::string_view name, const std::vector<std::string_view>& tokens) {
  for (auto t : tokens)
    if (iequals(t, name)) return true;
  return false;
}

bool is_token_char(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-': case '.':
    case '^': case '_': case '`': case '|': case '~':
      return true;
    default:
      return false;
  }
}

bool valid_name(std::string_view n) {
  if (n.empty()) return false;
  for (char c : n)
    if (!is_token_char(c)) return false;
  return true;
}

// Values from a policy must not smuggle a header or a second request.
bool valid_value(std::string_view v) {
  for (char c : v)
    if (c == '\r' || c == '\n' || c == '\0') return false;
  return true;
}

bool valid_target(std::string_view t) {
  if (t.empty()) return false;
  for (char c : t)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return false;
  return true;
}

// What a head's fields take on the wire ("Name: value\r\n" each), plus room
// for the start line and the framing headers added here: a head is built in
// one allocation (its buffer is shed while the connection waits).
template <class Fields>
std::size_t wire_size(const Fields& fields, std::size_t start_line) {
  std::size_t n = start_line + 64;
  for (const auto& f : fields) n += f.name_string().size() + f.value().size() + 4;
  return n;
}

void append_header(std::string& out, std::string_view name, std::string_view value) {
  out.append(name);
  out.append(": ");
  out.append(value);
  out.append("\r\n");
}

void append_status_line(std::string& out, unsigned code, std::string_view reason) {
  out.append("HTTP/1.1 ");
  out.append(std::to_string(code));
  out.push_back(' ');
  out.append(reason);
  out.append("\r\n");
}

std::string_view reason_phrase(unsigned code) {
  auto r = bhttp::obsolete_reason(bhttp::int_to_status(code));
  return r.empty() ? std::string_view("Unknown") : std::string_view(r.data(), r.size());
}

// 502 for an upstream that cannot be reached or misbehaves. Plain text, not a
// Status: client-go puts a text/plain body into its error message on every
// path, while its discovery client (kubectl's first requests) reports a JSON
// Status body only as "unknown".
Reply gateway_reply(std::string message) {
  Reply r;
  r.status = 502;
  r.content_type = "text/plain; charset=utf-8";
  r.body = std::move(message);
  return r;
}

// Per upstream connection: the stream, its read buffer and its response
// parser. Shared with pending operations so a retried or abandoned connection
// never has its buffers reused underneath an operation still in flight.
struct Upstream {
  Upstream(StreamPtr s, Strand ex) : io(std::move(s), std::move(ex)) { buffer.reserve(kReadReserve); }
  StreamAdapter io;
  beast::flat_buffer buffer;
  std::optional<bhttp::response_parser<bhttp::buffer_body>> parser;
  // Between exchanges the read that watches the connection goes here, so the
  // read buffer and the last response's parser can be released meanwhile.
  std::array<char, kIdleRead> idle_bytes{};
  asio::mutable_buffer idle_read() {
    parser.reset();
    if (buffer.size() == 0) buffer.shrink_to_fit();
    return asio::buffer(idle_bytes);
  }
  // The idle read brought `n` bytes (the next response's first): to the read
  // buffer, made room for `reserve` bytes.
  void take_idle(std::size_t n, std::size_t reserve = kReadReserve) {
    if (n == 0) return;
    buffer.reserve(reserve);
    buffer.commit(asio::buffer_copy(buffer.prepare(n), asio::buffer(idle_bytes.data(), n)));
  }
  unsigned requests = 0;  // requests sent on it, for the retry rule
  // A chunked response's bytes announced by its chunk headers and delivered
  // so far: while they differ, the rest of a chunk is on its way.
  std::uint64_t chunk_bytes_announced = 0, body_bytes_delivered = 0;
  // What the parser calls per chunk header (by reference: a pointer here,
  // not a std::function).
  struct ChunkCounter {
    std::uint64_t* announced;
    void operator()(std::uint64_t size, std::string_view, error_code&) const { *announced += size; }
  } on_chunk_header{&chunk_bytes_announced};
  bool idle_reading = false;      // watch_upstream's read is out
  bool response_waiting = false;  // pump B waits for that read to finish
  unsigned waiting_attempt = 0;
  bool taken_from_pool = false;   // the pool's read may still be out (the taker's to finish)
  // Guarded by the pool's mutex: the read the pool keeps on an idle
  // connection, which the session that takes the connection inherits.
  bool in_pool = false;
  bool pool_reading = false;
  bool pool_read_done = false;  // it finished after the connection was taken
  error_code pool_read_ec;
  UniqueFunction<void(error_code)> pool_read_waiter;
};
using UpstreamPtr = std::shared_ptr<Upstream>;

class Pool final : public UpstreamPool, public std::enable_shared_from_this<Pool> {
 public:
  Pool(asio::io_context& io, UpstreamConnector connector, PoolOptions options, std::shared_ptr<spdlog::logger> logger)
      : connector_(std::move(connector)), options_(options), log_(std::move(logger)), timer_strand_(asio::make_strand(io)),
        timer_(timer_strand_) {}

  PoolStats stats() const override {
    std::lock_guard lock(mu_);
    return {opened_, reused_, idle_.size()};
  }

  // Opens a new connection (counted).
  void connect(ConnectHandler done) {
    {
      std::lock_guard lock(mu_);
      ++opened_;
    }
    connector_(std::move(done));
  }

  // The most recently used idle connection, or null. Its idle read may still
  // be out: the taker finishes it with await_read.
  UpstreamPtr take() {
    UpstreamPtr up;
    std::vector<UpstreamPtr> stale;
    {
      std::lock_guard lock(mu_);
      // Connections that may carry no new exchange (a draining tunnel's
      // streams) are closed rather than kept: they would keep it alive.
      for (auto it = idle_.begin(); it != idle_.end();) {
        if (it->up->io.stream()->reusable()) {
          ++it;
          continue;
        }
        it->up->in_pool = false;
        stale.push_back(std::move(it->up));
        it = idle_.erase(it);
      }
      if (!idle_.empty()) {
        up = std::move(idle_.back().up);
        idle_.pop_back();
        up->in_pool = false;
        up->taken_from_pool = true;
        ++reused_;
      }
    }
    for (auto& s : stale) s->io.stream()->reset("upstream connection no longer reusable");
    return up;
  }

  // Calls `then` (on any thread) when the read the pool left on a taken
  // connection finishes: with an error if the upstream closed it meanwhile,
  // with no error when the response's first bytes are in its buffer.
  void await_read(const UpstreamPtr& up, UniqueFunction<void(error_code)> then) {
    error_code ec;
    {
      std::lock_guard lock(mu_);
      if (up->pool_reading) {
        up->pool_read_waiter = std::move(then);
        return;
      }
      ec = up->pool_read_done ? up->pool_read_ec : error_code{};
      up->pool_read_done = false;
    }
    then(ec);
  }

  // Takes back a connection whose exchange completed cleanly with nothing
  // left unread; the caller has checked that it is reusable.
  void give(UpstreamPtr up) {
    up->taken_from_pool = false;
    up->pool_reading = true;
    up->pool_read_done = false;
    auto& stream = up->io.stream();
    // The read starts before the connection can be taken, so a taker never
    // writes a request into a connection that nobody reads.
    stream->async_read_some(up->idle_read(), [weak = weak_from_this(), up](error_code ec, std::size_t n) mutable {
      auto self = weak.lock();
      if (!self) return up->io.stream()->reset("upstream pool gone");
      self->on_idle_read(std::move(up), ec, n);
    });
    std::vector<UpstreamPtr> evicted;
    bool arm = false;
    {
      std::lock_guard lock(mu_);
      if (up->pool_read_done || closed_ || !stream->reusable()) {
        evicted.push_back(std::move(up));
      } else {
        while (idle_.size() >= options_.max_idle && !idle_.empty()) {
          evicted.push_back(std::move(idle_.front().up));
          evicted.back()->in_pool = false;
          idle_.erase(idle_.begin());
        }
        if (options_.max_idle > 0) {
          up->in_pool = true;
          idle_.push_back({std::move(up), Clock::now()});
          arm = !timer_armed_;
          timer_armed_ = true;
        } else {
          evicted.push_back(std::move(up));
        }
      }
    }
    for (auto& e : evicted) e->io.stream()->reset("upstream pool full");
    if (arm) arm_timer();
  }

  void close_expired(Clock::time_point now) override {
    std::vector<UpstreamPtr> expired;
    {
      std::lock_guard lock(mu_);
      while (!idle_.empty() && now - idle_.front().since >= options_.idle_timeout) {
        expired.push_back(std::move(idle_.front().up));
        expired.back()->in_pool = false;
        idle_.erase(idle_.begin());
      }
    }
    if (!expired.empty() && log_ && log_->should_log(spdlog::level::debug))
      log_->debug("upstream pool: closing {} idle connection(s) unused for {} s", expired.size(),
                  options_.idle_timeout.count());
    for (auto& e : expired) e->io.stream()->reset("idle upstream connection expired");
  }

  void close() override {
    std::vector<Entry> all;
    {
      std::lock_guard lock(mu_);
      closed_ = true;
      all.swap(idle_);
      for (auto& e : all) e.up->in_pool = false;
    }
    for (auto& e : all) e.up->io.stream()->reset("upstream pool closed");
    asio::dispatch(timer_strand_, [self = shared_from_this()] { self->timer_.cancel(); });
  }

 private:
  struct Entry {
    UpstreamPtr up;
    Clock::time_point since;
  };

  void on_idle_read(UpstreamPtr up, error_code ec, std::size_t n) {
    UniqueFunction<void(error_code)> waiter;
    bool drop = false;
    {
      std::lock_guard lock(mu_);
      up->pool_reading = false;
      up->take_idle(n);
      if (up->in_pool) {
        up->in_pool = false;
        auto it = std::find_if(idle_.begin(), idle_.end(), [&](const Entry& e) { return e.up == up; });
        if (it != idle_.end()) idle_.erase(it);
        drop = true;
      } else if (up->pool_read_waiter) {
        waiter = std::move(up->pool_read_waiter);
        up->pool_read_waiter = nullptr;
      } else {
        up->pool_read_done = true;
        up->pool_read_ec = ec;
      }
    }
    if (drop) {
      // Closed (an API server's idle timeout), failed, or bytes nobody asked for.
      if (log_ && log_->should_log(spdlog::level::debug)) {
        if (ec) log_->debug("upstream pool: idle connection ended: {}", ec.message());
        else log_->debug("upstream pool: idle connection sent unsolicited bytes");
      }
      up->io.stream()->reset("idle upstream connection not reusable");
      return;
    }
    if (waiter) waiter(ec);
  }

  // One timer for the whole pool, set for the oldest idle connection.
  void arm_timer() {
    asio::dispatch(timer_strand_, [self = shared_from_this()] {
      Clock::time_point next;
      {
        std::lock_guard lock(self->mu_);
        if (self->idle_.empty() || self->closed_) {
          self->timer_armed_ = false;
          return;
        }
        next = self->idle_.front().since + self->options_.idle_timeout;
      }
      self->timer_.expires_at(next);
      self->timer_.async_wait([weak = self->weak_from_this()](error_code ec) {
        auto self = weak.lock();
        if (!self || ec) return;
        self->close_expired(Clock::now());
        self->arm_timer();
      });
    });
  }

  UpstreamConnector connector_;
  PoolOptions options_;
  std::shared_ptr<spdlog::logger> log_;
  Strand timer_strand_;
  StrandTimer timer_;
  mutable std::mutex mu_;
  std::vector<Entry> idle_;  // oldest first
  std::uint64_t opened_ = 0, reused_ = 0;
  bool timer_armed_ = false, closed_ = false;
};

// A server's settings, which its sessions share (each keeps a pointer, not a
// copy of every setting: thousands of watches are thousands of sessions).
class Settings final : public Server, public std::enable_shared_from_this<Settings> {
 public:
  Settings(asio::io_context& io, UpstreamConnector connector, std::shared_ptr<Pool> pool, Limits limits,
           std::shared_ptr<spdlog::logger> log, Recovery recovery)
      : io(io),
        connector(std::move(connector)),
        pool(std::move(pool)),
        limits(limits),
        log(std::move(log)),
        recovery(recovery) {}
  void serve(StreamPtr inbound, std::shared_ptr<ForwardPolicy> policy) const override;

  asio::io_context& io;
  const UpstreamConnector connector;
  const std::shared_ptr<Pool> pool;  // null: one upstream connection held per inbound connection
  const Limits limits;
  const std::shared_ptr<spdlog::logger> log;
  const Recovery recovery;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(StreamPtr inbound, std::shared_ptr<ForwardPolicy> policy, std::shared_ptr<const Settings> settings)
      : strand_(asio::make_strand(settings->io)),
        in_(std::move(inbound), strand_),
        policy_(std::move(policy)),
        cfg_(std::move(settings)),
        timer_(strand_) {}

  void start() {
    asio::dispatch(strand_, [self = shared_from_this()] { self->wait_request(); });
  }

 private:
  // ---- waiting for and reading a request head -------------------------------

  void wait_request() {
    rec_ = ExchangeRecord{};
    head_.method.clear();
    aborting_ = false;
    req_.reset();
    if (in_reading_) {
      // The read that watched the client during the last response is still
      // out; it becomes this request's first read (see on_client_read).
      shed_buffers();
      waiting_request_ = true;
      arm_timer(in_buf_.size() > 0 ? cfg_->limits.header_timeout : wait_timeout());
      return;
    }
    if (in_buf_.size() > 0) {
      // A pipelined request is already here.
      arm_timer(cfg_->limits.header_timeout);
      read_request_head();
      return;
    }
    // Wait for the first byte with the idle timeout (the first-byte timeout
    // before the connection's first request); the header timeout starts with
    // it, so a slow sender cannot hold the connection for long.
    shed_buffers();
    arm_timer(wait_timeout());
    in_reading_ = true;
    in_.async_read_some(asio::buffer(peek_), [self = shared_from_this()](error_code ec, std::size_t n) {
      self->in_reading_ = false;
      if (ec) {
        self->cancel_timer();
        if (ec != asio::error::eof) self->log_failure(ec, "read request");
        return self->close_session();
      }
      self->in_buf_.reserve(kReadReserve);
      self->take_peeked(n);
      self->arm_timer(self->cfg_->limits.header_timeout);
      self->read_request_head();
    });
  }

  // A connection held open between requests (kubectl keeps its connections)
  // keeps no body buffers, heads or read buffer while it waits: with a pool
  // it holds nothing else either. Only the read into peek_ may be out.
  void shed_buffers() {
    a_ = PumpBuffer{};
    b_ = PumpBuffer{};
    in_buf_.shrink_to_fit();
    std::string().swap(req_wire_);
    std::string().swap(res_wire_);
    std::vector<Header>().swap(head_.headers);
    std::vector<std::string_view>().swap(tokens_);
    resume_.reset();
    watch_live_ = false;
  }

  // Bytes the small read between requests brought, to the read buffer.
  void take_peeked(std::size_t n) {
    in_buf_.commit(asio::buffer_copy(in_buf_.prepare(n), asio::buffer(peek_.data(), n)));
  }

  std::chrono::seconds wait_timeout() const {
    return heads_read_ == 0 ? std::min(cfg_->limits.first_byte_timeout, cfg_->limits.idle_timeout)
                            : cfg_->limits.idle_timeout;
  }

  void read_request_head() {
    // The parser exists from a request's first byte until it was read.
    req_ = std::make_unique<bhttp::request_parser<bhttp::buffer_body>>();
    req_->header_limit(static_cast<std::uint32_t>(std::min<std::size_t>(cfg_->limits.header_limit, UINT32_MAX)));
    req_->body_limit(cfg_->limits.body_limit);
    in_reading_ = true;
    bhttp::async_read_header(in_, in_buf_, *req_, [self = shared_from_this()](error_code ec, std::size_t) {
      self->in_reading_ = false;
      self->cancel_timer();
      self->on_request_head(ec);
    });
  }

  void on_request_head(error_code ec) {
    if (ec) {
      if (ec == bhttp::error::header_limit)
        return reply_and_close(status_reply(
            431, "RequestHeaderFieldsTooLarge",
            "request header exceeds the limit of " + std::to_string(cfg_->limits.header_limit) + " bytes"));
      if (ec == bhttp::error::body_limit)
        return reply_and_close(
            status_reply(413, "RequestEntityTooLarge",
                         "request body exceeds the limit of " + std::to_string(cfg_->limits.body_limit) + " bytes"));
      if (is_malformed(ec))
        return reply_and_close(status_reply(400, "BadRequest", "malformed HTTP request: " + ec.message()));
      if (timed_out_) log_failure(ec, "request head timed out");
      else log_failure(ec, "read request head");
      return close_session();
    }
    ++heads_read_;
    auto& m = req_->get();
    if (m.version() != 10 && m.version() != 11)
      return reply_and_close(status_reply(400, "BadRequest", "unsupported HTTP version"));

    head_.method.assign(m.method_string());
    head_.target.assign(m.target());
    head_.version = m.version();
    head_.headers.clear();
    head_.headers.reserve(static_cast<std::size_t>(std::distance(m.begin(), m.end())));
    head_.upgrade = false;
    head_.upgrade_protocol.clear();
    connection_tokens(m, tokens_);
    bool upgrade_token = false;
    for (auto t : tokens_)
      if (iequals(t, "upgrade")) upgrade_token = true;
    for (const auto& f : m) {
      std::string_view name = f.name_string();
      if (iequals(name, "upgrade") && upgrade_token && head_.version == 11) {
        std::string_view v = f.value();
        if (iequals(v, "websocket") || istarts_with(v, "spdy/")) {
          head_.upgrade = true;
          head_.upgrade_protocol.assign(v);
        }
        continue;
      }
      if (is_hop_by_hop(name) || iequals(name, "content-length") || named_in(name, tokens_)) continue;
      head_.headers.push_back({std::string(name), std::string(f.value())});
    }
    req_chunked_ = req_->chunked();
    req_length_ = req_->content_length() ? *req_->content_length() : 0;
    req_has_body_ = !req_->is_done();
    req_declared_length_ = req_->content_length().has_value();
    client_keep_alive_ = req_->keep_alive();

    rec_ = ExchangeRecord{};
    rec_.method = head_.method;
    rec_.target = head_.target;
    started_ = Clock::now();
    retried_ = false;

    // A watch that may have to be resumed keeps the client's head as it came:
    // a resumed watch goes through the policy again (the proxy's current
    // token, not the one the watch began with).
    resume_.reset();
    if (may_resume()) {
      resume_ = std::make_shared<ResumableWatch>(strand_);
      resume_->client_head = head_;
    }
    try {
      policy_->on_request(head_, [self = shared_from_this()](Decision d) mutable {
        asio::dispatch(self->strand_, [self, d = std::move(d)]() mutable { self->on_decision(std::move(d)); });
      });
    } catch (const std::exception& e) {
      log_failure({}, std::string("policy threw: ") + e.what());
      reply_and_continue(status_reply(500, "InternalError", "request could not be processed"));
    }
  }

  void on_decision(Decision d) {
    rec_.subject = std::move(d.subject);
    pipe_deadline_ = d.pipe_deadline;
    // Only an upgraded connection is closed at the deadline: any other
    // request (a watch held for long) keeps no copy of the reason.
    if (head_.upgrade) pipe_deadline_reason_ = std::move(d.pipe_deadline_reason);
    else std::string().swap(pipe_deadline_reason_);
    if (!d.forward) return reply_and_continue(std::move(d.reply));
    if (!build_request_wire())
      return reply_and_continue(status_reply(500, "InternalError", "request headers could not be forwarded"));
    // The wire form is what goes upstream, retries included.
    std::vector<Header>().swap(head_.headers);
    watch_live_ = resuming_ = false;
    if (may_resume()) {
      if (!resume_) resume_ = std::make_shared<ResumableWatch>(strand_);
      resume_->lines.emplace(head_.target);
    } else {
      resume_.reset();
      // The record keeps the target as asked (for it and for log lines).
      std::string().swap(head_.target);
    }
    attempt_request();
  }

  bool may_resume() const {
    return cfg_->recovery.resume_watches && !head_.upgrade && !req_has_body_ &&
           is_watch_request(head_.method, head_.target);
  }

  // The request head as sent upstream: always HTTP/1.1, framing re-derived.
  bool build_request_wire() { return build_wire(head_, req_wire_); }
  bool build_wire(const RequestHead& head, std::string& wire) {
    if (!valid_name(head.method) || !valid_target(head.target)) return false;
    wire.clear();
    std::size_t size = head.method.size() + head.target.size() + 64 + head.upgrade_protocol.size();
    for (const auto& h : head.headers) size += h.name.size() + h.value.size() + 4;
    wire.reserve(size);
    wire.append(head.method);
    wire.push_back(' ');
    wire.append(head.target);
    wire.append(" HTTP/1.1\r\n");
    for (const auto& h : head.headers) {
      if (!valid_name(h.name) || !valid_value(h.value)) return false;
      // A policy must not reintroduce framing or hop-by-hop headers.
      if (is_hop_by_hop(h.name) || iequals(h.name, "content-length")) continue;
      append_header(wire, h.name, h.value);
    }
    if (req_chunked_) append_header(wire, "Transfer-Encoding", "chunked");
    else if (req_has_body_ || req_declared_length_)
      append_header(wire, "Content-Length", std::to_string(req_length_));
    if (head.upgrade) {
      append_header(wire, "Connection", "Upgrade");
      append_header(wire, "Upgrade", head.upgrade_protocol);
    }
    wire.append("\r\n");
    return true;
  }

  // ---- upstream connection ----------------------------------------------------

  void attempt_request() {
    if (up_) return send_request();
    // A retry goes to a new connection: the others in the pool may have been
    // closed by the same event.
    if (cfg_->pool && !retried_) {
      if (auto up = cfg_->pool->take()) {
        up->io.rebind(strand_);
        up_ = std::move(up);
        return send_request();
      }
    }
    cfg_->connector([self = shared_from_this()](error_code ec, StreamPtr stream, std::string reason) mutable {
      asio::dispatch(self->strand_, [self, ec, stream = std::move(stream), reason = std::move(reason)]() mutable {
        self->on_upstream(ec, std::move(stream), std::move(reason));
      });
    });
  }

  void on_upstream(error_code ec, StreamPtr stream, std::string reason) {
    if (ec || !stream) {
      if (reason.empty()) reason = "cannot reach the upstream: " + (ec ? ec.message() : std::string("no stream"));
      log_failure(ec, "connect upstream: " + reason);
      return reply_and_continue(gateway_reply(std::move(reason)));
    }
    up_ = std::make_shared<Upstream>(std::move(stream), strand_);
    send_request();
  }

  void send_request() {
    ++attempt_;
    ++up_->requests;
    req_done_ = res_done_ = false;
    request_failed_ = false;
    interim_ = false;
    response_started_ = false;
    upgrade_ = false;
    up_keep_alive_ = true;
    close_after_ = !client_keep_alive_;
    if (up_->idle_reading) {
      // The read that watched the idle connection is still out: the
      // response's first bytes (or the close) will complete it.
      up_->response_waiting = true;
      up_->waiting_attempt = attempt_;
    } else if (up_->taken_from_pool) {
      // The same, for the read the pool kept on the connection.
      up_->taken_from_pool = false;
      cfg_->pool->await_read(up_, [self = shared_from_this(), up = up_, attempt = attempt_](error_code ec) mutable {
        asio::dispatch(self->strand_, [self, up = std::move(up), ec, attempt]() mutable {
          if (self->aborting_ || attempt != self->attempt_) return;
          if (ec) return self->upstream_failed(ec, std::move(up));
          self->read_response_head(std::move(up));
        });
      });
    } else {
      read_response_head(up_);
    }
    if (!req_has_body_ || in_buf_.size() == 0) {
      // Head alone: the body may wait for 100-continue, and a head that
      // waits for body bytes would delay the exchange.
      write_request(up_, true, 0, !req_has_body_);
    } else {
      read_request_body(up_, true);
    }
  }

  // ---- pump A: request body, inbound -> upstream -----------------------------

  void read_request_body(UpstreamPtr up, bool with_head) {
    auto& body = req_->get().body();
    if (a_.grow) in_buf_.reserve(a_.next_size());
    body.data = a_.for_read();
    body.size = a_.size;
    in_reading_ = true;
    bhttp::async_read_some(in_, in_buf_, *req_,
                           [self = shared_from_this(), up = std::move(up), with_head, attempt = attempt_](
                               error_code ec, std::size_t) mutable {
                             self->in_reading_ = false;
                             if (ec == bhttp::error::need_buffer) ec = {};
                             self->on_request_body(ec, std::move(up), with_head, attempt);
                           });
  }

  void on_request_body(error_code ec, UpstreamPtr up, bool with_head, unsigned attempt) {
    if (aborting_ || attempt != attempt_) return;
    if (ec) {
      if (ec == bhttp::error::body_limit)
        return abort_exchange(
            status_reply(413, "RequestEntityTooLarge",
                         "request body exceeds the limit of " + std::to_string(cfg_->limits.body_limit) + " bytes"));
      if (is_malformed(ec))
        return abort_exchange(status_reply(400, "BadRequest", "malformed request body: " + ec.message()));
      log_failure(ec, "read request body");
      return abort_exchange(std::nullopt);
    }
    std::size_t n = a_.size - req_->get().body().size;
    a_.read(n);
    rec_.bytes_in += n;
    write_request(std::move(up), with_head, n, req_->is_done());
  }

  void write_request(UpstreamPtr up, bool with_head, std::size_t n, bool last) {
    std::size_t k = 0;
    // Copied into the write operation: the session keeps no buffer list.
    std::array<asio::const_buffer, 5> a_out{};
    if (with_head) a_out[k++] = asio::buffer(req_wire_);
    if (n > 0) {
      if (req_chunked_) {
        int len = std::snprintf(a_chunk_, sizeof a_chunk_, "%zx\r\n", n);
        a_out[k++] = asio::buffer(a_chunk_, static_cast<std::size_t>(len));
        a_out[k++] = asio::buffer(a_buf(), n);
        a_out[k++] = asio::buffer("\r\n", 2);
      } else {
        a_out[k++] = asio::buffer(a_buf(), n);
      }
    }
    if (last && req_chunked_) a_out[k++] = asio::buffer("0\r\n\r\n", 5);
    if (k == 0) {
      if (!last) return read_request_body(std::move(up), false);  // only chunk framing was parsed
      req_done_ = true;
      return maybe_finish();
    }
    auto& io = up->io;
    asio::async_write(io, a_out,
                      [self = shared_from_this(), up = std::move(up), last, attempt = attempt_](error_code ec,
                                                                                                std::size_t) mutable {
                        if (self->aborting_ || attempt != self->attempt_) return;
                        if (ec) {
                          self->log_failure(ec, "write request upstream");
                          self->req_done_ = true;
                          self->request_failed_ = true;
                          // The upstream answered and went away before
                          // taking the whole body: the answer stands.
                          if (self->res_done_) return self->maybe_finish();
                          // Otherwise pump B sees the broken upstream and
                          // decides between a retry, a 502 and a reset. A
                          // body already half sent cannot be retried.
                          if (self->req_has_body_) up->io.stream()->reset("request write failed");
                          return;
                        }
                        if (!last) return self->read_request_body(std::move(up), false);
                        self->req_done_ = true;
                        self->maybe_finish();
                      });
  }

  // ---- pump B: response, upstream -> inbound ---------------------------------

  void read_response_head(UpstreamPtr up) {
    up->parser.emplace();
    up->chunk_bytes_announced = up->body_bytes_delivered = 0;
    up->parser->on_chunk_header(up->on_chunk_header);
    up->parser->header_limit(static_cast<std::uint32_t>(std::min<std::size_t>(cfg_->limits.header_limit, UINT32_MAX)));
    // Watches and logs never end. Not boost::none: Beast 1.74 compares a
    // Content-Length against an empty optional as "over the limit".
    up->parser->body_limit(std::numeric_limits<std::uint64_t>::max());
    if (head_.method == "HEAD") up->parser->skip(true);
    auto& io = up->io;
    auto& buffer = up->buffer;
    auto& parser = *up->parser;
    bhttp::async_read_header(io, buffer, parser,
                             [self = shared_from_this(), up = std::move(up), attempt = attempt_](
                                 error_code ec, std::size_t) mutable {
                               self->on_response_head(ec, std::move(up), attempt);
                             });
  }

  void on_response_head(error_code ec, UpstreamPtr up, unsigned attempt) {
    if (aborting_ || attempt != attempt_) return;
    if (resuming_) return on_resumed_head(ec, std::move(up));
    if (ec) return upstream_failed(ec, std::move(up));
    auto& p = *up->parser;
    auto& m = p.get();
    const unsigned status = m.result_int();
    // The parser takes any three digits ("021" too); a status under 100
    // cannot be passed on as one (clients refuse "HTTP/1.1 21").
    if (status < 100)
      return upstream_protocol_error(std::move(up), "upstream answered with status " + std::to_string(status));
    rec_.status = status;
    res_chunked_ = false;

    res_wire_.clear();
    std::string_view reason = m.reason();
    res_wire_.reserve(wire_size(m, reason.size() + 16));
    append_status_line(res_wire_, status, reason.empty() || !valid_value(reason) ? reason_phrase(status) : reason);
    connection_tokens(m, tokens_);
    const bool bodiless = (status >= 100 && status < 200) || status == 204 || status == 304 || head_.method == "HEAD";
    // The framing headers of a 304 or a HEAD response describe the resource,
    // not this message: they are kept as sent.
    const bool keep_framing = status == 304 || head_.method == "HEAD";
    for (const auto& f : m) {
      std::string_view name = f.name_string();
      if (iequals(name, "upgrade")) {
        if (status == 101) append_header(res_wire_, name, f.value());
        continue;
      }
      if (iequals(name, "transfer-encoding") || iequals(name, "content-length")) {
        if (keep_framing) append_header(res_wire_, name, f.value());
        continue;
      }
      if (is_hop_by_hop(name) || named_in(name, tokens_)) continue;
      append_header(res_wire_, name, f.value());
    }

    if (status == 101) {
      if (!head_.upgrade) return upstream_protocol_error(std::move(up), "upstream switched protocols unasked");
      append_header(res_wire_, "Connection", "Upgrade");
      res_wire_.append("\r\n");
      upgrade_ = true;
      rec_.upgraded = true;
      return write_response(std::move(up), true, {}, true);
    }
    interim_ = false;
    if (status >= 100 && status < 200) {
      // Interim response (100 Continue, 103 Early Hints): relay it and
      // wait for the final one.
      res_wire_.append("\r\n");
      interim_ = true;
      return write_response(std::move(up), true, {}, false);
    }
    up_keep_alive_ = p.keep_alive();
    if (!bodiless) {
      if (auto len = p.content_length()) {
        append_header(res_wire_, "Content-Length", std::to_string(*len));
      } else if (p.chunked() && head_.version == 11) {
        append_header(res_wire_, "Transfer-Encoding", "chunked");
        res_chunked_ = true;
      } else {
        // Close-delimited (or chunked to an HTTP/1.0 client): the end of the
        // body is the end of the connection.
        close_after_ = true;
      }
    }
    if (close_after_) append_header(res_wire_, "Connection", "close");
    else if (head_.version == 10) append_header(res_wire_, "Connection", "keep-alive");
    res_wire_.append("\r\n");
    // A watch's events are followed line by line only in a chunked JSON
    // response: that is what can continue from another upstream.
    watch_live_ =
        resume_ && resume_->lines && status == 200 && res_chunked_ &&
        is_json_watch_body(field_value(m, bhttp::field::content_type), field_value(m, bhttp::field::content_encoding));
    shed_response_fields(p);

    if (p.is_done()) return write_response(std::move(up), true, {}, true);
    if (!p.content_length() && !bodiless) b_.first = kQuietPumpBuffer;
    if (up->buffer.size() > 0) return read_response_body(std::move(up), true);
    // Nothing of the body is here yet (a watch): the head goes now.
    write_response(std::move(up), true, {}, false);
  }

  void read_response_body(UpstreamPtr up, bool with_head) {
    auto& body = up->parser->get().body();
    const bool grow = b_.grow;
    body.data = b_.for_read();
    body.size = b_.size;
    // The upstream read buffer follows the pump's size: grown with it, and
    // for a response of unknown length no larger than it.
    if (grow) {
      up->buffer.reserve(b_.size);
    } else if (b_.first == kQuietPumpBuffer && up->buffer.size() < b_.size && up->buffer.capacity() > 2 * b_.size) {
      // What is left unparsed (a chunk's CRLF) moves along.
      up->buffer.shrink_to_fit();
      up->buffer.reserve(b_.size);
    }
    auto& io = up->io;
    auto& buffer = up->buffer;
    auto& parser = *up->parser;
    bhttp::async_read_some(io, buffer, parser,
                           [self = shared_from_this(), up = std::move(up), with_head, attempt = attempt_](
                               error_code ec, std::size_t consumed) mutable {
                             if (self->aborting_ || attempt != self->attempt_) return;
                             if (ec == bhttp::error::need_buffer) ec = {};
                             // Framing included: a read that took most of the room
                             // means more is coming, so the next one gets more room.
                             if (consumed >= self->b_.size - self->b_.size / 4) self->b_.read(self->b_.size);
                             if (ec) return self->response_body_failed(std::move(up), ec);
                             std::size_t n = self->b_.size - up->parser->get().body().size;
                             up->body_bytes_delivered += n;
                             self->b_.read(n);
                             const bool last = up->parser->is_done();
                             std::string_view body(self->b_buf(), n);
                             // Only whole event lines go to a watch's client.
                             if (self->watch_live_) body = self->resume_->lines->feed(body, last);
                             self->rec_.bytes_out += body.size();
                             self->write_response(std::move(up), with_head, body, last);
                           });
  }

  void response_body_failed(UpstreamPtr up, error_code ec) {
    // Nothing has reached the client yet (the head goes with the first body
    // bytes): as if the head had failed, a 502 or a retry. A watch resumed
    // here would send its client a body without a head.
    if (!response_started_) return upstream_failed(ec, std::move(up), true);
    // A watch continues from another upstream.
    if (watch_live_) return start_resume(std::move(up), ec);
    // The response is under way: the client can only learn of the
    // truncation by a reset.
    log_failure(ec, "read response body");
    abort_exchange(std::nullopt);
  }

  // The next piece of a response body. A chunked response of unknown length
  // that has stayed quiet (a watch between events, a quiet `logs -f`) holds
  // no body or read buffer between chunks: a read of a few bytes waits for
  // the upstream to send, then the parser reads on from there.
  void next_response_body(UpstreamPtr up) {
    auto& p = *up->parser;
    if (b_.first != kQuietPumpBuffer || b_.grow || b_.size > kQuietPumpBuffer || !p.chunked())
      return read_response_body(std::move(up), false);
    // Framing here unparsed (the CRLF that ends a chunk, the next chunk's
    // header) is parsed first, with no body buffer.
    p.get().body().data = nullptr;
    p.get().body().size = 0;
    bool need_more = up->buffer.size() == 0;
    for (int i = 0; i < 8 && !need_more; ++i) {
      error_code ec;
      const std::size_t used = p.put(up->buffer.data(), ec);
      up->buffer.consume(used);
      if (ec == bhttp::error::need_more)
        need_more = true;
      else if (ec == bhttp::error::need_buffer || (!ec && used == 0))
        break;
      else if (ec)
        return response_body_failed(std::move(up), ec);
      else if (p.is_done())
        return end_response_body(std::move(up));
      else
        need_more = up->buffer.size() == 0;
    }
    const std::uint64_t chunk_left = up->chunk_bytes_announced - up->body_bytes_delivered;
    if (!need_more) {
      // Body bytes are here. When they are the start of a chunk that goes
      // on, the rest is read to them first, so that the chunk is not
      // forwarded in a small piece and the rest.
      if (chunk_left > up->buffer.size() && up->buffer.size() < kQuietPumpBuffer) {
        // Before `up` moves into the call (the order of arguments is unspecified).
        const std::size_t more = std::min<std::uint64_t>(chunk_left, kQuietPumpBuffer) - up->buffer.size();
        return top_up_chunk(std::move(up), more);
      }
      return read_response_body(std::move(up), false);
    }
    // The upstream is in the middle of sending a chunk.
    if (chunk_left > 0) return read_response_body(std::move(up), false);
    b_.release();
    up->buffer.shrink_to_fit();
    auto& io = up->io;
    auto bytes = asio::buffer(up->idle_bytes);
    io.async_read_some(bytes, [self = shared_from_this(), up = std::move(up), attempt = attempt_](
                                  error_code ec, std::size_t n) mutable {
      if (self->aborting_ || attempt != self->attempt_) return;
      up->take_idle(n, kQuietPumpBuffer);
      if (ec && n == 0) {
        // An upstream that ended mid-response.
        if (ec == asio::error::eof) ec = bhttp::error::partial_message;
        return self->response_body_failed(std::move(up), ec);
      }
      self->next_response_body(std::move(up));
    });
  }

  // Reads up to `more` bytes of a chunk under way into the read buffer.
  void top_up_chunk(UpstreamPtr up, std::size_t more) {
    auto& io = up->io;
    auto room = up->buffer.prepare(more);
    io.async_read_some(room, [self = shared_from_this(), up = std::move(up), attempt = attempt_](
                                 error_code ec, std::size_t n) mutable {
      if (self->aborting_ || attempt != self->attempt_) return;
      up->buffer.commit(n);
      if (ec && n == 0) {
        if (ec == asio::error::eof) ec = bhttp::error::partial_message;
        return self->response_body_failed(std::move(up), ec);
      }
      self->read_response_body(std::move(up), false);
    });
  }

  // The body ended while no body buffer was out.
  void end_response_body(UpstreamPtr up) {
    const std::string_view tail = watch_live_ ? resume_->lines->feed({}, true) : std::string_view();
    rec_.bytes_out += tail.size();
    write_response(std::move(up), false, tail, true);
  }

  // `body` is in b_ or in resume_: it stays put until the write completes.
  void write_response(UpstreamPtr up, bool with_head, std::string_view body, bool last) {
    if (with_head) response_started_ = true;
    std::size_t k = 0;
    std::array<asio::const_buffer, 5> b_out{};
    if (with_head) b_out[k++] = asio::buffer(res_wire_);
    if (!body.empty()) {
      if (res_chunked_) {
        int len = std::snprintf(b_chunk_, sizeof b_chunk_, "%zx\r\n", body.size());
        b_out[k++] = asio::buffer(b_chunk_, static_cast<std::size_t>(len));
        b_out[k++] = asio::buffer(body.data(), body.size());
        b_out[k++] = asio::buffer("\r\n", 2);
      } else {
        b_out[k++] = asio::buffer(body.data(), body.size());
      }
    }
    if (last && res_chunked_ && !interim_) b_out[k++] = asio::buffer("0\r\n\r\n", 5);
    if (k == 0) {
      // Only framing was parsed, or a close-delimited body just ended.
      if (!last) return next_response_body(std::move(up));
      res_done_ = true;
      return maybe_finish();
    }
    asio::async_write(in_, b_out,
                      [self = shared_from_this(), up = std::move(up), last, attempt = attempt_](error_code ec,
                                                                                                std::size_t) mutable {
                        if (self->aborting_ || attempt != self->attempt_) return;
                        if (ec) {
                          self->log_failure(ec, "write response");
                          return self->abort_exchange(std::nullopt);
                        }
                        if (self->interim_) {
                          self->interim_ = false;
                          return self->read_response_head(std::move(up));
                        }
                        if (!last) {
                          self->release_request(true);
                          return self->next_response_body(std::move(up));
                        }
                        self->res_done_ = true;
                        self->maybe_finish();
                      });
  }

  // Before any response byte reached the client. `head_read`: the upstream's
  // head came, its body broke.
  void upstream_failed(error_code ec, UpstreamPtr up, bool head_read = false) {
    log_failure(ec, head_read ? "read response body" : "read response head");
    up->io.stream()->reset("upstream failed");
    if (up_ == up) up_.reset();
    // A kept-alive upstream may have closed just as the request went out:
    // retry once on a new connection when nothing of the request could have
    // been acted on twice (no body, and not the connection's first request).
    const bool reused = up->requests > 1;
    const bool closed = ec == bhttp::error::end_of_stream || ec == asio::error::eof ||
                        ec == asio::error::connection_reset || ec == asio::error::broken_pipe;
    if (reused && closed && !retried_ && !req_has_body_ && !response_started_) {
      retried_ = true;
      return attempt_request();
    }
    if (reused && closed && req_has_body_ && !response_started_ && !cfg_->recovery.retry_safe)
      return finish_with_reply(gateway_reply(
          "upstream closed a reused connection before responding; the " + head_.method +
          " request was not sent again because its body had been sent and may have been acted on: check its "
          "effect, then retry"));
    if (ec == bhttp::error::header_limit)
      return finish_with_reply(gateway_reply("upstream response header exceeds the limit"));
    if (is_malformed(ec))
      return finish_with_reply(gateway_reply("upstream sent an invalid response: " + ec.message()));
    if (cfg_->recovery.retry_safe) {
      // The upstream went away (a lost tunnel session) before answering. A
      // read is sent once more on a new upstream; anything else may have
      // been applied, so the client decides.
      if (is_safe_method() && !retried_ && !req_has_body_ && !response_started_) {
        retried_ = true;
        if (cfg_->log)
          cfg_->log->info("http {}: upstream lost before the response to {} {}: sending it again", peer(), head_.method,
                          target_path());
        return attempt_request();
      }
      if (!is_safe_method())
        return finish_with_reply(status_reply(
            502, "ServiceUnavailable",
            "the session to the cluster was lost before the cluster answered this " + head_.method +
                " request; it was not sent again because it may have been applied: check its effect, then retry"));
    }
    finish_with_reply(gateway_reply(head_read ? "upstream response broke before any of it reached the client"
                                              : "upstream closed the connection before responding"));
  }

  void upstream_protocol_error(UpstreamPtr up, std::string what) {
    log_failure({}, what);
    up->io.stream()->reset(what);
    if (up_ == up) up_.reset();
    if (!response_started_) return finish_with_reply(gateway_reply(what));
    abort_exchange(std::nullopt);
  }

  // A reply instead of the upstream's response, mid-exchange. Pump A may still
  // be reading the request body; the connection closes after the reply then.
  void finish_with_reply(Reply reply) {
    ++attempt_;  // stale pump operations stop here
    if (!req_done_ && req_has_body_) {
      aborting_ = true;
      return reply_and_close(std::move(reply));
    }
    reply_and_continue(std::move(reply));
  }

  // The exchange cannot complete. Before the response started, the client
  // gets `reply` (if any) and a close; after, a reset.
  void abort_exchange(std::optional<Reply> reply) {
    aborting_ = true;
    if (resume_) resume_->timer.cancel();
    drop_upstream("exchange aborted");
    if (reply && !response_started_) return reply_and_close(std::move(*reply));
    rec_.status = rec_.status ? rec_.status : 499;
    complete_record();
    in_.stream()->reset("exchange aborted");
  }

  // ---- resuming a watch whose upstream broke -----------------------------------

  bool is_safe_method() const { return head_.method == "GET" || head_.method == "HEAD"; }

  // The request's path without its query, for log lines.
  std::string_view target_path() const {
    const std::string& t = head_.target.empty() ? rec_.target : head_.target;
    return std::string_view(t).substr(0, t.find('?'));
  }

  // Resets the current upstream, if any, and lets go of it.
  void drop_upstream(const char* why) {
    if (!up_) return;
    up_->io.stream()->reset(why);
    up_.reset();
  }

  // Once the final response head is read and its wire form built, only the
  // parser's framing state is needed: the fields (a node per header) and the
  // reason go, so a long response (a watch) holds none of its head.
  template <class Parser>
  static void shed_response_fields(Parser& p) {
    p.get().clear();
    p.get().reason({});
  }

  template <class Fields>
  static std::string_view field_value(const Fields& m, bhttp::field f) {
    auto it = m.find(f);
    if (it == m.end()) return {};
    auto v = it->value();
    return {v.data(), v.size()};
  }

  // The watch's upstream broke mid-response. The client has every whole
  // event line up to the break; the watch is asked again from there.
  void start_resume(UpstreamPtr up, error_code ec) {
    log_failure(ec, "watch upstream broke");
    up->io.stream()->reset("watch upstream broke");
    if (up_ == up) up_.reset();
    ++attempt_;  // the broken upstream's operations stop here
    resume_->lines->discard_partial();
    if (!resume_->lines->resumable()) {
      if (cfg_->log)
        cfg_->log->info("http {}: watch {} broke and cannot resume (no resourceVersion to resume from): ending it",
                        peer(), target_path());
      return end_watch();
    }
    resuming_ = true;
    resume_->deadline = Clock::now() + cfg_->recovery.resume_for;
    resume_->backoff = cfg_->recovery.first_backoff;
    if (cfg_->log)
      cfg_->log->info("http {}: watch {} broke ({}): resuming from resourceVersion {}", peer(), target_path(),
                      ec.message(),
                      resume_->lines->resource_version().empty() ? std::string("as first asked")
                                                                 : resume_->lines->resource_version());
    resume_connect();
  }

  void resume_connect() {
    // The deadline also bounds a connect or a response head that never comes.
    resume_->timer.expires_at(resume_->deadline);
    resume_->timer.async_wait([self = shared_from_this(), attempt = attempt_](error_code ec) {
      if (ec || self->aborting_ || self->closing_ || attempt != self->attempt_ || !self->resuming_) return;
      if (self->cfg_->log)
        self->cfg_->log->info("http {}: watch {} could not resume in time: ending it", self->peer(),
                              self->target_path());
      self->end_watch();
    });
    cfg_->connector([self = shared_from_this(), attempt = attempt_](error_code ec, StreamPtr stream,
                                                                    std::string reason) mutable {
      asio::dispatch(self->strand_, [self, ec, stream = std::move(stream), reason = std::move(reason), attempt]() mutable {
        self->on_resume_upstream(ec, std::move(stream), std::move(reason), attempt);
      });
    });
  }

  void on_resume_upstream(error_code ec, StreamPtr stream, std::string reason, unsigned attempt) {
    if (aborting_ || closing_ || attempt != attempt_) {
      if (stream) stream->reset("exchange ended");
      return;
    }
    if (ec || !stream) return retry_resume(reason.empty() ? "no upstream" : reason);
    auto up = std::make_shared<Upstream>(std::move(stream), strand_);
    up_ = up;
    ++up->requests;
    if (!resume_->client_head) {
      // Same head, new target: req_wire_ starts "METHOD TARGET HTTP/1.1".
      resume_->wire = req_wire_;
      const std::size_t start = head_.method.size() + 1;
      resume_->wire.replace(start, head_.target.size(), resume_->lines->resume_target());
      return send_resume(std::move(up));
    }
    // The client's request again, with the new target, through the policy:
    // what it adds (the proxy's access token) is what holds now.
    resume_->head = *resume_->client_head;
    resume_->head.target = resume_->lines->resume_target();
    try {
      policy_->on_request(resume_->head, [self = shared_from_this(), up, attempt = attempt_,
                                          state = resume_](Decision d) mutable {
        asio::dispatch(self->strand_, [self, up = std::move(up), d = std::move(d), attempt, state]() mutable {
          if (self->aborting_ || self->closing_ || attempt != self->attempt_ || self->resume_ != state) return;
          if (!d.forward) {
            if (self->cfg_->log)
              self->cfg_->log->info("http {}: watch {} could not resume: the request was refused ({}): ending it",
                                    self->peer(), self->target_path(), d.reply.status);
            return self->end_watch();
          }
          if (!self->build_wire(self->resume_->head, self->resume_->wire)) return self->end_watch();
          self->send_resume(std::move(up));
        });
      });
    } catch (const std::exception& e) {
      log_failure({}, std::string("policy threw: ") + e.what());
      end_watch();
    }
  }

  void send_resume(UpstreamPtr up) {
    asio::async_write(up->io, asio::buffer(resume_->wire),
                      [self = shared_from_this(), up, attempt = attempt_](error_code ec, std::size_t) mutable {
                        if (self->aborting_ || attempt != self->attempt_) return;
                        if (ec) return self->retry_resume("write: " + ec.message());
                        self->read_response_head(std::move(up));
                      });
  }

  void retry_resume(const std::string& why) {
    log_failure({}, "resuming the watch: " + why);
    drop_upstream("watch resume failed");
    ++attempt_;
    if (Clock::now() + resume_->backoff >= resume_->deadline) {
      if (cfg_->log) cfg_->log->info("http {}: watch {} could not resume ({}): ending it", peer(), target_path(), why);
      return end_watch();
    }
    resume_->timer.expires_after(resume_->backoff);
    resume_->backoff = std::min(resume_->backoff * 2, cfg_->recovery.max_backoff);
    resume_->timer.async_wait([self = shared_from_this(), attempt = attempt_](error_code ec) {
      if (ec || self->aborting_ || self->closing_ || attempt != self->attempt_ || !self->resume_) return;
      self->resume_connect();
    });
  }

  void on_resumed_head(error_code ec, UpstreamPtr up) {
    if (ec) return retry_resume("response head: " + ec.message());
    auto& p = *up->parser;
    const unsigned status = p.get().result_int();
    if (status == 200 && p.chunked() &&
        is_json_watch_body(field_value(p.get(), bhttp::field::content_type),
                           field_value(p.get(), bhttp::field::content_encoding))) {
      resuming_ = false;
      resume_->timer.cancel();
      up_keep_alive_ = p.keep_alive();
      shed_response_fields(p);
      if (cfg_->log) cfg_->log->info("http {}: watch {} resumed", peer(), target_path());
      if (p.is_done()) return write_response(std::move(up), false, resume_->lines->feed({}, true), true);
      return read_response_body(std::move(up), false);
    }
    // An upstream that cannot answer now may answer on the next attempt.
    if (status <= 200 || status == 502 || status == 503 || status == 504)
      return retry_resume("answered HTTP " + std::to_string(status));
    // Anything else (410 Gone: the version was compacted) ends the watch
    // with an ERROR event carrying the answer, as an API server would.
    resume_->error_body.clear();
    read_resume_error(std::move(up), status);
  }

  void read_resume_error(UpstreamPtr up, unsigned status) {
    auto& p = *up->parser;
    if (p.is_done() || resume_->error_body.size() >= kResumeErrorBody) return end_watch_with_error(status);
    auto& body = p.get().body();
    body.data = b_.for_read();
    body.size = b_.size;
    auto& io = up->io;
    auto& buffer = up->buffer;
    bhttp::async_read_some(io, buffer, p, [self = shared_from_this(), up, status, attempt = attempt_](
                                              error_code ec, std::size_t) mutable {
      if (self->aborting_ || attempt != self->attempt_) return;
      if (ec == bhttp::error::need_buffer) ec = {};
      const std::size_t n = self->b_.size - up->parser->get().body().size;
      self->resume_->error_body.append(self->b_buf(), n);
      if (ec) return self->end_watch_with_error(status);
      self->read_resume_error(std::move(up), status);
    });
  }

  void end_watch_with_error(unsigned status) {
    resume_->timer.cancel();
    drop_upstream("watch ended");
    if (cfg_->log)
      cfg_->log->info("http {}: watch {} could not resume: the cluster answered HTTP {}", peer(), target_path(),
                      status);
    resuming_ = false;
    resume_->error_event = watch_error_event(status, resume_->error_body);
    rec_.bytes_out += resume_->error_event.size();
    write_response(nullptr, false, resume_->error_event, true);
  }

  // Ends the chunked response cleanly, as an API server ends a watch at its
  // timeout: the client watches again (or, kubectl get -w, exits).
  void end_watch() {
    resuming_ = false;
    watch_live_ = false;
    ++attempt_;  // a connect or read still out for the resume stops here
    drop_upstream("watch ended");
    write_response(nullptr, false, {}, true);
  }

  // ---- end of an exchange ---------------------------------------------------

  void maybe_finish() {
    if (req_done_ && !res_done_) {
      release_request(false);
      return watch_client();
    }
    if (!req_done_ || !res_done_) return;
    if (upgrade_) return start_pipes();
    complete_record();
    if (request_failed_) close_after_ = true;
    if (!up_keep_alive_ || request_failed_) release_upstream();
    else if (up_ && cfg_->pool && (close_after_ || in_buf_.size() == 0))
      return_to_pool();
    else if (up_) watch_upstream(up_);
    if (close_after_) return close_session();
    wait_request();
  }

  // Once the request is read and forwarded and the response under way, a
  // long response (a watch) keeps none of the request: no parser, no wire
  // form (a retry can no longer happen), no response head once it is
  // written (`head_written`).
  void release_request(bool head_written) {
    if (!req_done_ || !response_started_ || upgrade_ || head_.upgrade) return;
    if (req_ && req_->is_done()) req_.reset();
    std::vector<std::string_view>().swap(tokens_);
    // A watch resumed without the client's head is the same request again.
    if (!resume_ || resume_->client_head) std::string().swap(req_wire_);
    if (head_written && !interim_) std::string().swap(res_wire_);
  }

  // While a response streams (a watch, `logs -f`) and the request is
  // complete, keep a read on the client: its close must end the exchange and
  // release the upstream, or a quiet `logs -f` would hold it forever.
  // Bytes read meanwhile (a pipelined request) stay in in_buf_ for the next
  // request.
  void watch_client() {
    if (in_reading_ || closing_ || aborting_ || head_.upgrade || res_done_) return;
    // Pipelined bytes already here prove the client is alive, and a read for
    // more would wait for bytes the client only sends after our response.
    if (in_buf_.size() > 0) return;
    in_buf_.shrink_to_fit();  // the request is read: a long response holds no read buffer
    in_reading_ = true;
    in_.async_read_some(asio::buffer(peek_), [self = shared_from_this()](error_code ec, std::size_t n) {
      self->in_reading_ = false;
      self->take_peeked(n);
      self->on_client_read(ec, n);
    });
  }

  void on_client_read(error_code ec, std::size_t n) {
    if (closing_) {
      lingered_ += n;
      if (!ec && lingered_ <= kLingerBytes) {
        in_buf_.clear();
        return linger();
      }
      timer_.cancel();
      return;
    }
    if (aborting_) return;
    if (waiting_request_) {
      // The exchange finished while this read was out.
      waiting_request_ = false;
      if (ec) {
        cancel_timer();
        return close_session();
      }
      in_buf_.reserve(kReadReserve);
      arm_timer(cfg_->limits.header_timeout);
      return read_request_head();
    }
    if (ec) {
      log_failure(ec, "client left during the response");
      return abort_exchange(std::nullopt);
    }
    watch_client();
  }

  // Keeps a read on an idle upstream connection, so that one the upstream
  // closed (an API server's idle timeout, a tunnel stream that ended) is
  // dropped before the next request is written into it; only a request
  // without a body could be retried after the fact.
  void watch_upstream(UpstreamPtr up) {
    if (up->idle_reading || closing_) return;
    up->idle_reading = true;
    auto& io = up->io;
    io.async_read_some(up->idle_read(), [self = shared_from_this(), up](error_code ec, std::size_t n) mutable {
      up->idle_reading = false;
      up->take_idle(n);
      self->on_upstream_idle_read(ec, std::move(up));
    });
  }

  void on_upstream_idle_read(error_code ec, UpstreamPtr up) {
    if (up->response_waiting) {
      up->response_waiting = false;
      if (aborting_ || up->waiting_attempt != attempt_) return;
      if (ec) return upstream_failed(ec, std::move(up));
      return read_response_head(std::move(up));
    }
    if (up_ != up) return;  // already released
    // Closed, failed, or bytes nobody asked for: not reusable.
    if (ec) log_failure(ec, "idle upstream connection ended");
    else log_failure({}, "idle upstream connection sent unsolicited bytes");
    up_->io.stream()->reset("idle upstream connection not reusable");
    up_.reset();
  }

  void complete_record() {
    rec_.duration = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started_);
    try {
      policy_->on_complete(rec_);
    } catch (...) {
    }
  }

  // Between requests the connection goes back to the pool when nothing of
  // this exchange can follow it there: the response ended cleanly and by its
  // own framing, nothing unread, no upgrade asked for, no read out.
  void return_to_pool() {
    auto& p = up_->parser;
    const bool reusable = p && p->is_done() && !p->need_eof() && up_->buffer.size() == 0 && !up_->idle_reading &&
                          !up_->taken_from_pool && !head_.upgrade && !upgrade_ && !resuming_;
    if (!reusable) return release_upstream();
    cfg_->pool->give(std::move(up_));
    up_.reset();
  }

  void release_upstream() {
    if (!up_) return;
    auto up = std::move(up_);
    auto s = up->io.stream();
    s->async_shutdown_send([s](error_code) {});
  }

  // ---- replies the engine writes itself ---------------------------------------

  void serialize_reply(const Reply& r, bool close) {
    res_wire_.clear();
    append_status_line(res_wire_, r.status, reason_phrase(r.status));
    const std::string_view content_type =
        r.content_type.empty() ? std::string_view("application/json") : std::string_view(r.content_type);
    if (valid_value(content_type)) append_header(res_wire_, "Content-Type", content_type);
    append_header(res_wire_, "Content-Length", std::to_string(r.body.size()));
    for (const auto& h : r.headers) {
      if (!valid_name(h.name) || !valid_value(h.value) || is_hop_by_hop(h.name) || iequals(h.name, "content-length") ||
          iequals(h.name, "content-type"))
        continue;
      append_header(res_wire_, h.name, h.value);
    }
    if (close) append_header(res_wire_, "Connection", "close");
    res_wire_.append("\r\n");
    if (head_.method != "HEAD") res_wire_.append(r.body);
  }

  // Answers the current request and keeps the connection when the request
  // was read completely; otherwise the unread body forces a close.
  void reply_and_continue(Reply reply) {
    // A read still out here is watch_client's (the body was read completely).
    const bool keep = client_keep_alive_ && (!req_ || req_->is_done()) && !aborting_;
    if (!keep) return reply_and_close(std::move(reply));
    rec_.status = reply.status;
    serialize_reply(reply, false);
    asio::async_write(in_, asio::buffer(res_wire_), [self = shared_from_this()](error_code ec, std::size_t) {
      self->complete_record();
      if (ec) {
        self->log_failure(ec, "write reply");
        return self->close_session();
      }
      self->wait_request();
    });
  }

  void reply_and_close(Reply reply) {
    aborting_ = true;
    rec_.status = reply.status;
    serialize_reply(reply, true);
    asio::async_write(in_, asio::buffer(res_wire_), [self = shared_from_this()](error_code ec, std::size_t) {
      if (!self->rec_.method.empty()) self->complete_record();
      if (ec) self->log_failure(ec, "write reply");
      self->close_session();
    });
  }

  // ---- closing ----------------------------------------------------------------

  // Half-closes the inbound stream and drains what the client still sends
  // for a moment, so that our close does not become a reset that discards
  // the response the client has not read yet.
  void close_session() {
    if (closing_) return;
    closing_ = true;
    cancel_timer();
    if (resume_) resume_->timer.cancel();
    release_upstream();
    auto self = shared_from_this();
    in_.stream()->async_shutdown_send([self](error_code ec) {
      asio::dispatch(self->strand_, [self, ec] {
        if (ec) return self->in_.stream()->reset("closing");
        self->timer_.expires_after(kLingerTime);
        self->timer_.async_wait([self](error_code e) {
          if (!e) self->in_.stream()->reset("closing");
        });
        // A read still out (a pump's or watch_client's) lingers for us.
        if (!self->in_reading_) self->linger();
      });
    });
  }

  void linger() {
    in_.async_read_some(asio::buffer(a_.for_read(), a_.size), [self = shared_from_this()](error_code ec,
                                                                                             std::size_t n) {
      self->lingered_ += n;
      if (ec || self->lingered_ > kLingerBytes) {
        self->timer_.cancel();
        return;
      }
      self->linger();
    });
  }

  // ---- upgraded connections -------------------------------------------------

  void start_pipes() {
    auto up = up_;
    up_.reset();  // never reused for another request
    if (!up) return close_session();
    pipes_open_ = 2;
    // A deadline already passed: no byte crosses.
    if (!arm_pipe_deadline(up)) return;
    // Bytes that arrived behind the heads belong to the new protocol.
    pipe_flush(up, true);
    pipe_flush(up, false);
  }

  // The policy's deadline for the upgraded connection (e.g. the expiry of
  // the token that opened it). The request timers are idle during pipes.
  // False when it has already passed and the connection was closed.
  bool arm_pipe_deadline(const UpstreamPtr& up) {
    if (pipe_deadline_ == std::chrono::system_clock::time_point{}) return true;
    auto left = std::chrono::duration_cast<std::chrono::steady_clock::duration>(pipe_deadline_ - std::chrono::system_clock::now());
    if (left <= std::chrono::steady_clock::duration::zero()) {
      close_at_deadline(up);
      return false;
    }
    timer_.expires_after(left);
    timer_.async_wait([self = shared_from_this(), up, gen = ++timer_gen_](error_code ec) {
      if (ec || gen != self->timer_gen_ || self->pipes_open_ == 0) return;
      self->close_at_deadline(up);
    });
    return true;
  }

  void close_at_deadline(const UpstreamPtr& up) {
    pipes_open_ = 0;
    const std::string reason = pipe_deadline_reason_.empty() ? "connection deadline reached" : pipe_deadline_reason_;
    if (cfg_->log) cfg_->log->info("http {}: upgraded connection closed: {}", peer(), reason);
    rec_.notes.push_back({"closed", reason});
    up->io.stream()->reset(reason);
    in_.stream()->reset(reason);
    complete_record();
  }

  // inbound -> upstream when `to_upstream`, else upstream -> inbound.
  void pipe_flush(UpstreamPtr up, bool to_upstream) {
    beast::flat_buffer& pending = to_upstream ? in_buf_ : up->buffer;
    if (pending.size() == 0) return pipe_read(std::move(up), to_upstream);
    auto data = pending.data();
    auto write = [self = shared_from_this(), up, to_upstream](error_code ec, std::size_t) mutable {
      if (ec) return self->pipe_failed(ec, std::move(up));
      (to_upstream ? self->in_buf_ : up->buffer).consume(SIZE_MAX);
      self->pipe_read(std::move(up), to_upstream);
    };
    if (to_upstream) {
      rec_.bytes_in += data.size();
      asio::async_write(up->io, data, std::move(write));
    } else {
      rec_.bytes_out += data.size();
      asio::async_write(in_, data, std::move(write));
    }
  }

  void pipe_read(UpstreamPtr up, bool to_upstream) {
    PumpBuffer& pb = to_upstream ? a_ : b_;
    char* buf = pb.for_read();
    const std::size_t size = pb.size;
    auto on_read = [self = shared_from_this(), up, to_upstream, buf](error_code ec, std::size_t n) mutable {
      if (ec == asio::error::eof) return self->pipe_eof(std::move(up), to_upstream);
      if (ec) return self->pipe_failed(ec, std::move(up));
      (to_upstream ? self->a_ : self->b_).read(n);
      auto on_write = [self, up, to_upstream](error_code ec, std::size_t) mutable {
        if (ec) return self->pipe_failed(ec, std::move(up));
        self->pipe_read(std::move(up), to_upstream);
      };
      if (to_upstream) {
        self->rec_.bytes_in += n;
        asio::async_write(up->io, asio::buffer(buf, n), std::move(on_write));
      } else {
        self->rec_.bytes_out += n;
        asio::async_write(self->in_, asio::buffer(buf, n), std::move(on_write));
      }
    };
    if (to_upstream) in_.async_read_some(asio::buffer(buf, size), std::move(on_read));
    else up->io.async_read_some(asio::buffer(buf, size), std::move(on_read));
  }

  void pipe_eof(UpstreamPtr up, bool to_upstream) {
    auto target = to_upstream ? up->io.stream() : in_.stream();
    target->async_shutdown_send([self = shared_from_this(), up](error_code ec) mutable {
      asio::dispatch(self->strand_, [self, up = std::move(up), ec]() mutable {
        if (ec) return self->pipe_failed(ec, std::move(up));
        self->pipe_closed(std::move(up));
      });
    });
  }

  void pipe_failed(error_code ec, UpstreamPtr up) {
    if (pipes_open_ == 0) return;
    log_failure(ec, "upgraded stream");
    pipes_open_ = 0;
    cancel_timer();
    up->io.stream()->reset("peer failed");
    in_.stream()->reset("peer failed");
    complete_record();
  }

  void pipe_closed(UpstreamPtr) {
    if (pipes_open_ == 0 || --pipes_open_ > 0) return;
    cancel_timer();
    complete_record();
    // Both directions ended cleanly; the streams close when released.
  }

  // ---- buffers, timers and logging ----------------------------------------------

  // One direction's body buffer: allocated on first use, grown between reads.
  struct PumpBuffer {
    std::unique_ptr<char[]> bytes;
    std::size_t size = 0;
    bool grow = false;
    // Where the next read goes (growing first if the last read filled it).
    std::size_t first = kPumpBuffer;
    std::size_t next_size() const { return bytes ? std::min(size * 4, kPumpBufferBulk) : first; }
    char* for_read() {
      if (!bytes || grow) {
        size = next_size();
        bytes.reset(new char[size]);
        grow = false;
      }
      return bytes.get();
    }
    char* data() { return bytes.get(); }
    // Lets go of the bytes; the next read starts again at `first`.
    void release() {
      bytes.reset();
      size = 0;
      grow = false;
    }
    void read(std::size_t n) {
      if (n == size && size < kPumpBufferBulk) grow = true;
    }
  };

  char* a_buf() { return a_.data(); }
  char* b_buf() { return b_.data(); }

  void arm_timer(std::chrono::seconds after) {
    timed_out_ = false;
    timer_.expires_after(after);
    timer_.async_wait([self = shared_from_this(), gen = ++timer_gen_](error_code ec) {
      if (ec || gen != self->timer_gen_) return;
      self->timed_out_ = true;
      self->in_.stream()->reset("timeout waiting for a request");
    });
  }

  void cancel_timer() {
    ++timer_gen_;
    timer_.cancel();
  }

  // For log lines only: built when one is written, not kept.
  std::string peer() const { return in_.stream()->describe(); }

  void log_failure(error_code ec, std::string_view what) {
    if (!cfg_->log || !cfg_->log->should_log(spdlog::level::debug)) return;
    if (ec)
      cfg_->log->debug("http {}: {}: {}", peer(), what, ec.message());
    else
      cfg_->log->debug("http {}: {}", peer(), what);
  }

  Strand strand_;
  StreamAdapter in_;
  std::shared_ptr<ForwardPolicy> policy_;
  std::shared_ptr<const Settings> cfg_;
  StrandTimer timer_;

  // What a watch that may be resumed keeps; only such a watch has one.
  struct ResumableWatch {
    explicit ResumableWatch(const Strand& strand) : timer(strand) {}
    std::optional<RequestHead> client_head;  // its head before the policy
    std::optional<WatchEventLines> lines;    // once forwarded: its events, line by line
    StrandTimer timer;                       // backoff between attempts to resume
    Clock::time_point deadline;
    std::chrono::milliseconds backoff{};
    RequestHead head;  // the resumed request, through the policy
    std::string wire, error_body, error_event;
  };
  // Shared with a policy call for a resumed request, which holds its head.
  std::shared_ptr<ResumableWatch> resume_;
  bool watch_live_ = false;  // its response is followed line by line
  bool resuming_ = false;    // between a break and the resumed response's head

  beast::flat_buffer in_buf_;
  std::array<char, kIdleRead> peek_{};
  std::unique_ptr<bhttp::request_parser<bhttp::buffer_body>> req_;
  RequestHead head_;
  std::vector<std::string_view> tokens_;
  std::string req_wire_, res_wire_;
  // Allocated on first use: most requests have no body, and a connection
  // that is only held open needs neither.
  PumpBuffer a_, b_;  // a: inbound -> upstream, b: upstream -> inbound
  char a_chunk_[24] = {}, b_chunk_[24] = {};

  UpstreamPtr up_;
  ExchangeRecord rec_;
  Clock::time_point started_;
  std::chrono::system_clock::time_point pipe_deadline_{};
  std::string pipe_deadline_reason_;
  std::uint64_t req_length_ = 0;
  std::size_t lingered_ = 0;
  unsigned attempt_ = 0;
  unsigned timer_gen_ = 0;
  std::uint64_t heads_read_ = 0;  // request heads read on this connection
  int pipes_open_ = 0;
  bool req_chunked_ = false, req_has_body_ = false, req_declared_length_ = false, client_keep_alive_ = true;
  bool req_done_ = false, res_done_ = false, res_chunked_ = false, interim_ = false;
  bool response_started_ = false, upgrade_ = false, up_keep_alive_ = true, close_after_ = false;
  bool request_failed_ = false, retried_ = false, aborting_ = false, closing_ = false;
  bool in_reading_ = false, timed_out_ = false, waiting_request_ = false;
};

}  // namespace

void Settings::serve(StreamPtr inbound, std::shared_ptr<ForwardPolicy> policy) const {
  if (!inbound || !policy || !connector) {
    if (inbound) inbound->reset("forwarding engine misconfigured");
    return;
  }
  std::make_shared<Session>(std::move(inbound), std::move(policy), shared_from_this())->start();
}

std::shared_ptr<const Server> Server::create(asio::io_context& io, UpstreamConnector connector, Limits limits,
                                             std::shared_ptr<spdlog::logger> logger, Recovery recovery) {
  return std::make_shared<Settings>(io, std::move(connector), nullptr, limits, std::move(logger), recovery);
}

std::shared_ptr<const Server> Server::create(asio::io_context& io, std::shared_ptr<UpstreamPool> pool, Limits limits,
                                             std::shared_ptr<spdlog::logger> logger, Recovery recovery) {
  auto p = std::static_pointer_cast<Pool>(std::move(pool));
  UpstreamConnector connector;
  if (p)
    connector = [weak = std::weak_ptr<Pool>(p)](ConnectHandler done) {
      if (auto pool = weak.lock()) return pool->connect(std::move(done));
      done(asio::error::operation_aborted, nullptr, "the upstream pool is closed");
    };
  return std::make_shared<Settings>(io, std::move(connector), std::move(p), limits, std::move(logger), recovery);
}

void serve(asio::io_context& io, StreamPtr inbound, std::shared_ptr<ForwardPolicy> policy, UpstreamConnector connector,
           Limits limits, std::shared_ptr<spdlog::logger> logger, Recovery recovery) {
  Server::create(io, std::move(connector), limits, std::move(logger), recovery)
      ->serve(std::move(inbound), std::move(policy));
}

std::shared_ptr<UpstreamPool> UpstreamPool::create(asio::io_context& io, UpstreamConnector connector,
                                                   PoolOptions options, std::shared_ptr<spdlog::logger> logger) {
  if (!connector) return nullptr;
  return std::make_shared<Pool>(io, std::move(connector), options, std::move(logger));
}

void serve(asio::io_context& io, StreamPtr inbound, std::shared_ptr<ForwardPolicy> policy,
           std::shared_ptr<UpstreamPool> pool, Limits limits, std::shared_ptr<spdlog::logger> logger,
           Recovery recovery) {
  Server::create(io, std::move(pool), limits, std::move(logger), recovery)
      ->serve(std::move(inbound), std::move(policy));
}

}  // namespace clusterconnect::http
