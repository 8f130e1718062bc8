// HTTP/2 upstream connections behind virtual HTTP/1.1 connections (see
// h2_upstream.hpp). The only nghttp2 translation unit.
//
// Everything (every HTTP/2 connection, every virtual connection) runs on one
// strand: a request is a few callbacks, and one TLS connection is serial
// anyway. The TLS streams complete on their own executors and come back here.
//
// Who owns whom (no cycle, so dropping the upstream, the engine's
// connections and the io_context frees everything):
//   the engine (or its pool) -> Virtual -> Impl -> Conn -> the TLS stream
//   Virtual -> the Conn its stream is on
// and the other way only observers: a Conn knows its streams' Virtuals by
// weak_ptr (a Virtual dropped with its stream open resets that stream), the
// Impl knows waiting Virtuals by weak_ptr, Conn knows the Impl by weak_ptr.
// A handler the engine left with a Virtual (a read waiting for the response)
// holds the engine's session, which holds the Virtual: when the io_context is
// destroyed first, its shutdown destroys those handlers as it destroys a
// socket's pending operations (Registry below).
#include "clusterconnect/http/h2_upstream.hpp"

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <spdlog/spdlog.h>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/http/status.hpp>

#include "clusterconnect/ascii.hpp"

namespace clusterconnect::http {
namespace {

using Strand = asio::strand<asio::io_context::executor_type>;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kReadBuffer = 16 * 1024;
// Request body bytes taken from the engine before its write waits for them
// to leave as DATA.
constexpr std::size_t kBodyQueue = 64 * 1024;
// The connection window is large: each stream's own window is the bound.
constexpr std::int32_t kConnectionWindow = (1 << 30);

bool iequals(std::string_view a, std::string_view b) { return ascii_iequals(a, b); }

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

// RFC 9113 8.2.2: connection-specific fields are not sent in HTTP/2.
bool connection_specific(std::string_view name) {
  return iequals(name, "connection") || iequals(name, "keep-alive") || iequals(name, "proxy-connection") ||
         iequals(name, "transfer-encoding") || iequals(name, "upgrade") || iequals(name, "te") || iequals(name, "host");
}

// The reason phrase HTTP/2 does not carry, as the forwarding engine names it.
std::string_view reason_phrase(unsigned code) {
  auto r = boost::beast::http::obsolete_reason(boost::beast::http::int_to_status(code));
  return r.empty() ? std::string_view("Unknown") : std::string_view(r.data(), r.size());
}

// A text/plain 502 in HTTP/1.1, for the engine to relay as the upstream's answer.
std::string gateway_response(std::string_view message) {
  std::string out = "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ";
  out += std::to_string(message.size());
  out += "\r\n\r\n";
  out += message;
  return out;
}

class Impl;
class Conn;

// ---- the request head the engine writes ------------------------------------

struct ParsedHead {
  std::string method, target, authority;
  std::vector<std::pair<std::string, std::string>> headers;  // lowercased names
  bool upgrade = false, chunked = false;
  std::uint64_t length = 0;
  bool has_length = false;
};

// The engine writes well-formed heads (it built them); anything else is refused.
bool parse_head(std::string_view text, ParsedHead& out) {
  auto eol = text.find("\r\n");
  if (eol == std::string_view::npos) return false;
  std::string_view line = text.substr(0, eol);
  auto sp1 = line.find(' ');
  auto sp2 = line.rfind(' ');
  if (sp1 == std::string_view::npos || sp2 == sp1) return false;
  out.method.assign(line.substr(0, sp1));
  out.target.assign(line.substr(sp1 + 1, sp2 - sp1 - 1));
  text.remove_prefix(eol + 2);
  while (!text.empty()) {
    eol = text.find("\r\n");
    if (eol == std::string_view::npos) return false;
    std::string_view h = text.substr(0, eol);
    text.remove_prefix(eol + 2);
    if (h.empty()) break;
    auto colon = h.find(':');
    if (colon == std::string_view::npos || colon == 0) return false;
    std::string_view name = h.substr(0, colon), value = h.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
    if (iequals(name, "upgrade")) out.upgrade = true;
    if (iequals(name, "transfer-encoding")) {
      if (ascii_iequals(value, "chunked")) out.chunked = true;
      continue;
    }
    if (iequals(name, "content-length")) {
      out.has_length = true;
      out.length = 0;
      for (char c : value) {
        if (c < '0' || c > '9') return false;
        out.length = out.length * 10 + static_cast<std::uint64_t>(c - '0');
      }
    }
    if (iequals(name, "host")) out.authority.assign(value);
    if (connection_specific(name)) continue;
    out.headers.emplace_back(lower(name), std::string(value));
  }
  return true;
}

// Decodes a chunked request body as the engine re-encodes it.
class ChunkDecoder {
 public:
  // Appends the payload of `in` to `out`; false on a malformed body.
  bool feed(std::string_view in, std::string& out) {
    while (!in.empty() && !done_) {
      switch (state_) {
        case State::size: {
          char c = in.front();
          in.remove_prefix(1);
          if (c == '\n') {
            state_ = remaining_ == 0 ? State::trailer : State::data;
            line_ = 0;
          } else if (!in_ext_) {
            int d = (c >= '0' && c <= '9')   ? c - '0'
                    : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                    : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                             : -1;
            if (d >= 0) {
              if (remaining_ > (1ull << 40)) return false;
              remaining_ = remaining_ * 16 + static_cast<std::uint64_t>(d);
            } else if (c == ';') {
              in_ext_ = true;
            } else if (c != '\r' && c != ' ' && c != '\t') {
              return false;
            }
          }
          break;
        }
        case State::data: {
          auto n = static_cast<std::size_t>(std::min<std::uint64_t>(remaining_, in.size()));
          out.append(in.substr(0, n));
          in.remove_prefix(n);
          remaining_ -= n;
          if (remaining_ == 0) state_ = State::data_end;
          break;
        }
        case State::data_end: {
          char c = in.front();
          in.remove_prefix(1);
          if (c == '\n') {
            state_ = State::size;
            in_ext_ = false;
          }
          break;
        }
        case State::trailer: {
          char c = in.front();
          in.remove_prefix(1);
          if (c == '\n') {
            if (line_ == 0) done_ = true;
            line_ = 0;
          } else if (c != '\r') {
            ++line_;
          }
          break;
        }
      }
    }
    return true;
  }
  bool done() const { return done_; }

 private:
  enum class State { size, data, data_end, trailer };
  State state_ = State::size;
  std::uint64_t remaining_ = 0;
  std::size_t line_ = 0;
  bool in_ext_ = false, done_ = false;
};

// ---- every virtual connection on one io_context --------------------------------

class Virtual;

struct VirtualSet {
  std::mutex mu;
  std::unordered_set<Virtual*> all;
};

// An io_context service: its shutdown (the io_context is being destroyed,
// its threads have stopped) abandons what the virtual connections still
// hold, so the engine's handlers they keep go with the io_context's own.
class Registry final : public asio::execution_context::service {
 public:
  static inline asio::execution_context::id id;
  explicit Registry(asio::execution_context& context) : asio::execution_context::service(context) {}
  const std::shared_ptr<VirtualSet>& virtuals() const { return virtuals_; }

 private:
  void shutdown() override;
  std::shared_ptr<VirtualSet> virtuals_ = std::make_shared<VirtualSet>();
};

// ---- one virtual HTTP/1.1 connection ----------------------------------------

class Virtual final : public Stream, public std::enable_shared_from_this<Virtual> {
 public:
  Virtual(std::shared_ptr<Impl> owner, Strand strand);
  ~Virtual() override;

  asio::any_io_executor get_executor() override;
  void async_read_some(asio::mutable_buffer buffer, IoHandler handler) override;
  void async_write_some(std::span<const asio::const_buffer> buffers, IoHandler handler) override;
  void async_shutdown_send(DoneHandler handler) override;
  void reset(std::string_view reason) noexcept override;
  std::string describe() const override { return "HTTP/2 upstream stream"; }

  // From the connection (on the strand).
  void on_connection(std::shared_ptr<Conn> conn);  // a connection to submit on
  void on_no_connection(std::string reason);       // none could be opened
  // Whether the request may wait for one more connection after one failed
  // to open: once per request (nothing of it reached the API server).
  bool retry_connect() {
    if (connect_retried_) return false;
    connect_retried_ = true;
    return true;
  }
  void on_http1(StreamPtr stream);                 // use HTTP/1.1 on this stream
  void on_response_header(std::string_view name, std::string_view value);
  void on_headers_end(bool end_stream);
  void on_data(const std::uint8_t* data, std::size_t len);
  void on_end_stream();
  void on_stream_close(std::uint32_t error_code);
  void on_connection_lost(const std::string& why);
  ssize_t read_body(std::uint8_t* buf, std::size_t length, std::uint32_t* flags);
  // The io_context is being destroyed: the handlers kept here are destroyed
  // without being called, as its pending operations are.
  void abandon() noexcept;

 private:
  enum class Mode { idle, head, h2, http1, failed };

  void write_on_strand(std::vector<std::string_view> pieces, std::size_t total, IoHandler handler);
  bool feed_body(std::string_view bytes);
  void start_request();
  void submit();
  void go_http1();
  void fail_request(std::string message);
  void deliver();
  void maybe_idle();
  void to_idle();
  void detach_stream();
  void complete_write();
  void finish_http1_write(error_code ec);

  std::shared_ptr<Impl> owner_;
  std::shared_ptr<VirtualSet> virtuals_;
  Strand strand_;
  Mode mode_ = Mode::idle;
  StreamPtr http1_;            // after an upgrade or without h2: a real connection
  // Bytes written before that connection was there; the write that brought
  // them waits in write_waiting_, and a read in read_handler_ (one of each
  // at a time in either mode: a stream holds two handlers, not four).
  std::string http1_pending_;

  // The request: its head and body until it needs them no more. A request
  // without a body lets go of them at the response head, so a response that
  // streams (a watch) holds only its method.
  struct Pending {
    std::string head_text;
    std::string fallback_wire;  // the request as written, until it is submitted on HTTP/2
    ParsedHead head;
    std::optional<ChunkDecoder> chunks;
    std::uint64_t body_left = 0;
    std::string body;  // queued for DATA
    std::size_t body_pos = 0;
    std::size_t queued() const { return body.size() - body_pos; }
  };
  std::unique_ptr<Pending> req_;
  std::string method_;  // for logs, and for HEAD's bodiless response
  bool body_expected_ = false, body_complete_ = false, body_sent_any_ = false;
  bool connect_retried_ = false;  // waited once for a new connection after one failed to open
  // A write waiting for the queue to drain (h2) or for the connection (http1).
  IoHandler write_waiting_;
  std::size_t write_waiting_count_ = 0;
  bool deferred_ = false;
  unsigned tries_ = 0;

  // The stream.
  std::shared_ptr<Conn> conn_;
  std::int32_t stream_id_ = -1;

  // The response as HTTP/1.1.
  unsigned status_ = 0;
  std::string response_head_;
  bool has_length_ = false;
  bool head_emitted_ = false, chunked_ = false, response_done_ = false, stream_closed_ = false;
  std::string out_;
  std::size_t out_pos_ = 0;
  std::size_t owed_ = 0;  // body bytes delivered by DATA not yet given back to the window
  error_code error_;
  IoHandler read_handler_;
  asio::mutable_buffer read_buffer_;
};

// ---- one HTTP/2 connection ----------------------------------------------------

class Conn final : public std::enable_shared_from_this<Conn> {
 public:
  Conn(std::weak_ptr<Impl> owner, Strand strand, StreamPtr tls, std::shared_ptr<spdlog::logger> log,
       const H2Options& options, std::uint64_t id)
      : owner_(std::move(owner)),
        strand_(strand),
        tls_(std::move(tls)),
        log_(std::move(log)),
        window_(options.stream_window),
        ping_after_(options.ping_after),
        ping_timeout_(options.ping_timeout),
        idle_timeout_(options.idle_timeout),
        id_(id),
        timer_(strand) {}
  ~Conn() {
    if (session_) nghttp2_session_del(session_);
  }

  bool start();
  bool usable() const { return !dead_ && !draining_; }
  std::size_t active() const { return streams_.size(); }
  bool has_room() const {
    if (!usable()) return false;
    auto max = nghttp2_session_get_remote_settings(session_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    return streams_.size() + reserved_ < max;
  }
  void reserve() { ++reserved_; }
  void unreserve() {
    if (reserved_ > 0) --reserved_;
  }
  nghttp2_session* session() { return session_; }
  std::int32_t submit(const std::vector<nghttp2_nv>& nva, bool with_body, std::shared_ptr<Virtual> v);
  // The stream's Virtual no longer follows it.
  void forget(std::int32_t id) { erase_stream(id); }
  // The stream's Virtual is gone: the server stops sending it.
  void cancel(std::int32_t id);
  void flush();
  void close(const std::string& why);
  std::uint64_t id() const { return id_; }

 private:
  static Conn& of(void* user) { return *static_cast<Conn*>(user); }
  std::shared_ptr<Virtual> stream(std::int32_t id) {
    auto it = streams_.find(id);
    return it == streams_.end() ? nullptr : it->second.lock();
  }
  void erase_stream(std::int32_t id);
  // Liveness (H2Options::ping_after, ping_timeout, idle_timeout): one timer,
  // armed for the earliest deadline and re-armed when it fires.
  void schedule();
  void on_timer();
  void read();
  void on_read(error_code ec, std::size_t n);
  void on_write(error_code ec, std::size_t n);
  void fail(const std::string& why);
  void maybe_done();

  static int on_header(nghttp2_session*, const nghttp2_frame* frame, const std::uint8_t* name, std::size_t namelen,
                       const std::uint8_t* value, std::size_t valuelen, std::uint8_t, void* user) {
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    if (auto v = of(user).stream(frame->hd.stream_id))
      v->on_response_header({reinterpret_cast<const char*>(name), namelen},
                            {reinterpret_cast<const char*>(value), valuelen});
    return 0;
  }
  static int on_frame_recv(nghttp2_session*, const nghttp2_frame* frame, void* user) {
    auto& c = of(user);
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS:
        if (auto v = c.stream(frame->hd.stream_id)) v->on_headers_end((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0);
        break;
      case NGHTTP2_DATA:
        if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
          if (auto v = c.stream(frame->hd.stream_id)) v->on_end_stream();
        break;
      case NGHTTP2_GOAWAY:
        c.on_goaway(frame->goaway.last_stream_id, frame->goaway.error_code);
        break;
      case NGHTTP2_PING:
        if (frame->hd.flags & NGHTTP2_FLAG_ACK) c.ping_outstanding_ = false;
        break;
      default:
        break;
    }
    return 0;
  }
  static int on_data_chunk(nghttp2_session*, std::uint8_t, std::int32_t id, const std::uint8_t* data, std::size_t len,
                           void* user) {
    auto& c = of(user);
    if (auto v = c.stream(id))
      v->on_data(data, len);
    else
      nghttp2_session_consume(c.session_, id, len);  // nobody reads it: give the window back
    return 0;
  }
  static int on_stream_close(nghttp2_session*, std::int32_t id, std::uint32_t error_code, void* user) {
    auto& c = of(user);
    auto v = c.stream(id);
    c.erase_stream(id);
    if (error_code != NGHTTP2_NO_ERROR && error_code != NGHTTP2_REFUSED_STREAM) ++c.resets_;
    if (v) v->on_stream_close(error_code);
    return 0;
  }
  void on_goaway(std::int32_t last_stream_id, std::uint32_t error_code);

 public:
  std::uint64_t resets_ = 0;

 private:
  std::weak_ptr<Impl> owner_;
  Strand strand_;
  StreamPtr tls_;
  std::shared_ptr<spdlog::logger> log_;
  std::uint32_t window_;
  std::chrono::milliseconds ping_after_, ping_timeout_, idle_timeout_;
  std::uint64_t id_;
  asio::steady_timer timer_;
  Clock::time_point timer_at_{}, last_read_{}, idle_since_{}, ping_sent_{};
  std::uint64_t timer_generation_ = 0;
  bool timer_armed_ = false, ping_outstanding_ = false;
  nghttp2_session* session_ = nullptr;
  std::unordered_map<std::int32_t, std::weak_ptr<Virtual>> streams_;
  std::size_t reserved_ = 0;
  std::unique_ptr<std::uint8_t[]> rbuf_;
  std::string wbuf_, writing_buf_;
  bool writing_ = false, reading_ = false, dead_ = false, draining_ = false, in_callback_ = false;
};

// ---- the upstream: connections, waiting requests ------------------------------

class Impl final : public H2Upstream, public std::enable_shared_from_this<Impl> {
 public:
  Impl(asio::io_context& io, H2Connector h2, UpstreamConnector http1, H2Options options,
       std::shared_ptr<spdlog::logger> log)
      : strand_(asio::make_strand(io)),
        h2_(std::move(h2)),
        http1_(std::move(http1)),
        options_(options),
        log_(std::move(log)),
        virtuals_(asio::use_service<Registry>(static_cast<asio::execution_context&>(io)).virtuals()) {}

  UpstreamConnector connector() override {
    return [weak = weak_from_this()](ConnectHandler done) {
      auto self = weak.lock();
      if (!self) return done(asio::error::operation_aborted, nullptr, "HTTP/2 upstream closed");
      auto v = std::make_shared<Virtual>(self, self->strand_);
      done({}, std::move(v), {});
    };
  }

  H2Stats stats() const override {
    std::lock_guard lock(mu_);
    return stats_;
  }

  void close() override {
    asio::dispatch(strand_, [self = shared_from_this()] {
      self->closed_ = true;
      auto conns = self->conns_;
      for (auto& c : conns) c->close("HTTP/2 upstream closed");
    });
  }

  const H2Options& options() const { return options_; }
  std::shared_ptr<spdlog::logger> log() const { return log_; }
  const std::shared_ptr<VirtualSet>& virtuals() const { return virtuals_; }

  // A virtual connection wants to send a request (on the strand).
  void acquire(const std::shared_ptr<Virtual>& v) {
    if (closed_) return v->on_no_connection("the agent is shutting down");
    if (Clock::now() < http1_until_) return open_http1(v);
    for (auto& c : conns_) {
      if (c->has_room()) {
        c->reserve();
        return v->on_connection(c);
      }
    }
    waiting_.push_back(v);
    if (connecting_ * 1 < 1 || waiting_.size() > connecting_ * 100) open_h2();
  }

  // Upgrades and servers without h2.
  void open_http1(const std::shared_ptr<Virtual>& v) {
    count([](H2Stats& s) { ++s.http1_connections; });
    http1_([v, strand = strand_](error_code ec, StreamPtr s, std::string reason) mutable {
      asio::dispatch(strand, [v, ec, s = std::move(s), reason = std::move(reason)]() mutable {
        if (ec || !s) return v->on_no_connection(reason.empty() ? "cannot connect to the API server" : reason);
        v->on_http1(std::move(s));
      });
    });
  }

  void connection_ended(Conn* c) {
    auto it = std::find_if(conns_.begin(), conns_.end(), [&](auto& p) { return p.get() == c; });
    if (it != conns_.end()) conns_.erase(it);
    count([&](H2Stats& s) { s.connections = conns_.size(); });
    serve_waiting();
  }

  // A connection has room again (a stream ended, or SETTINGS arrived).
  void serve_waiting() {
    while (!waiting_.empty()) {
      auto v = waiting_.front().lock();
      if (!v) {
        waiting_.pop_front();
        continue;
      }
      std::shared_ptr<Conn> with_room;
      for (auto& c : conns_)
        if (c->has_room()) {
          with_room = c;
          break;
        }
      if (!with_room) {
        if (connecting_ == 0 && !closed_) open_h2();
        return;
      }
      waiting_.pop_front();
      with_room->reserve();
      v->on_connection(with_room);
    }
    close_spare();
  }

  template <class F>
  void count(F f) {
    std::lock_guard lock(mu_);
    f(stats_);
  }

 private:
  void open_h2() {
    if (conns_.size() + connecting_ >= options_.max_connections) return;
    ++connecting_;
    h2_([weak = weak_from_this(), strand = strand_](error_code ec, StreamPtr s, std::string alpn,
                                                    std::string reason) mutable {
      asio::dispatch(strand,
                     [weak, ec, s = std::move(s), alpn = std::move(alpn), reason = std::move(reason)]() mutable {
                       auto self = weak.lock();
                       if (!self) {
                         if (s) s->reset("HTTP/2 upstream closed");
                         return;
                       }
                       self->on_h2_connect(ec, std::move(s), alpn, reason);
                     });
    });
  }

  void on_h2_connect(error_code ec, StreamPtr s, const std::string& alpn, const std::string& reason) {
    --connecting_;
    if (ec || !s) {
      // The requests that waited for it were not sent: each waits for one
      // more connection (a refused connect or a handshake timeout may not
      // happen twice), then fails.
      const std::string why = reason.empty() ? "cannot connect to the API server" : reason;
      auto waiting = std::move(waiting_);
      waiting_.clear();
      for (auto& w : waiting) {
        auto v = w.lock();
        if (!v) continue;
        if (!closed_ && v->retry_connect()) waiting_.push_back(std::move(w));
        else v->on_no_connection(why);
      }
      if (!waiting_.empty()) {
        count([](H2Stats& st) { ++st.connects_retried; });
        if (log_) log_->info("API server: {}; trying a new connection for {} waiting request(s)", why, waiting_.size());
        if (connecting_ == 0) open_h2();
      }
      return;
    }
    if (alpn != "h2") {
      // The server speaks HTTP/1.1 only: this connection is one, and for a
      // while every request gets one.
      if (log_)
        log_->info("API server did not choose HTTP/2 (ALPN: {}): using HTTP/1.1 connections",
                   alpn.empty() ? "none" : alpn);
      http1_until_ = Clock::now() + options_.recheck_after;
      auto waiting = std::move(waiting_);
      waiting_.clear();
      bool first = true;
      for (auto& w : waiting) {
        auto v = w.lock();
        if (!v) continue;
        if (first) {
          first = false;
          count([](H2Stats& st) { ++st.http1_connections; });
          v->on_http1(s);
        } else {
          open_http1(v);
        }
      }
      if (first) s->reset("not needed");
      return;
    }
    auto c = std::make_shared<Conn>(weak_from_this(), strand_, std::move(s), log_, options_, ++next_id_);
    if (!c->start()) {
      c->close("HTTP/2 session could not start");
      return serve_waiting();
    }
    conns_.push_back(c);
    count([&](H2Stats& st) {
      ++st.connections_opened;
      st.connections = conns_.size();
    });
    if (log_ && log_->should_log(spdlog::level::debug))
      log_->debug("API server: HTTP/2 connection {} opened ({} open)", c->id(), conns_.size());
    serve_waiting();
  }

  // One idle connection is kept; more are closed.
  void close_spare() {
    bool kept = false;
    std::vector<std::shared_ptr<Conn>> spare;
    for (auto& c : conns_) {
      if (c->active() > 0 || !c->usable()) continue;
      if (!kept)
        kept = true;
      else
        spare.push_back(c);
    }
    for (auto& c : spare) c->close("spare HTTP/2 connection");
  }

  Strand strand_;
  H2Connector h2_;
  UpstreamConnector http1_;
  H2Options options_;
  std::shared_ptr<spdlog::logger> log_;
  std::vector<std::shared_ptr<Conn>> conns_;
  std::deque<std::weak_ptr<Virtual>> waiting_;
  std::size_t connecting_ = 0;
  std::uint64_t next_id_ = 0;
  Clock::time_point http1_until_{};
  bool closed_ = false;
  std::shared_ptr<VirtualSet> virtuals_;
  mutable std::mutex mu_;  // stats_ only
  H2Stats stats_;
};

// ---- Conn --------------------------------------------------------------------

bool Conn::start() {
  nghttp2_session_callbacks* cbs = nullptr;
  if (nghttp2_session_callbacks_new(&cbs) != 0) return false;
  nghttp2_session_callbacks_set_on_header_callback(cbs, &Conn::on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, &Conn::on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, &Conn::on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, &Conn::on_stream_close);
  nghttp2_option* opt = nullptr;
  nghttp2_option_new(&opt);
  // Window updates are sent as the engine reads (nghttp2_session_consume).
  nghttp2_option_set_no_auto_window_update(opt, 1);
  int rv = nghttp2_session_client_new2(&session_, cbs, this, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);
  if (rv != 0) {
    session_ = nullptr;
    return false;
  }
  nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, window_},
  };
  if (nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, 2) != 0) return false;
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, kConnectionWindow);
  rbuf_.reset(new std::uint8_t[kReadBuffer]);
  last_read_ = idle_since_ = Clock::now();
  read();
  flush();
  schedule();
  return true;
}

void Conn::erase_stream(std::int32_t id) {
  if (streams_.erase(id) == 0) return;
  if (auto owner = owner_.lock())
    owner->count([](H2Stats& s) {
      if (s.active_streams) --s.active_streams;
    });
  if (streams_.empty()) {
    idle_since_ = Clock::now();
    schedule();
  }
}

void Conn::cancel(std::int32_t id) {
  auto it = streams_.find(id);
  if (dead_ || it == streams_.end() || !it->second.expired()) return;
  erase_stream(id);
  nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
  flush();
}

void Conn::schedule() {
  if (dead_) return;
  const bool pinging = ping_after_.count() > 0 && ping_timeout_.count() > 0;
  auto next = Clock::time_point::max();
  if (ping_outstanding_)
    next = ping_sent_ + ping_timeout_;
  else if (pinging)
    next = last_read_ + ping_after_;
  if (streams_.empty() && reserved_ == 0 && idle_timeout_.count() > 0)
    next = std::min(next, idle_since_ + idle_timeout_);
  if (next == Clock::time_point::max()) return;
  if (timer_armed_ && timer_at_ <= next) return;
  timer_armed_ = true;
  timer_at_ = next;
  const auto generation = ++timer_generation_;
  timer_.expires_at(next);
  // Weak: a waiting timer does not keep a connection.
  timer_.async_wait([weak = weak_from_this(), generation](error_code) {
    auto self = weak.lock();
    if (!self || self->timer_generation_ != generation) return;
    self->timer_armed_ = false;
    self->on_timer();
  });
}

void Conn::on_timer() {
  if (dead_) return;
  const auto now = Clock::now();
  if (ping_outstanding_ && now >= ping_sent_ + ping_timeout_) {
    if (auto owner = owner_.lock()) owner->count([](H2Stats& s) { ++s.ping_timeouts; });
    return fail("the API server did not answer a PING within " + std::to_string(ping_timeout_.count()) +
                " ms: the HTTP/2 connection is taken as dead");
  }
  if (streams_.empty() && reserved_ == 0 && idle_timeout_.count() > 0 && now >= idle_since_ + idle_timeout_) {
    if (auto owner = owner_.lock()) owner->count([](H2Stats& s) { ++s.idle_closed; });
    if (log_ && log_->should_log(spdlog::level::debug))
      log_->debug("API server: HTTP/2 connection {} idle for {} ms: closed", id_, idle_timeout_.count());
    return close("idle HTTP/2 connection closed");
  }
  if (!ping_outstanding_ && ping_after_.count() > 0 && ping_timeout_.count() > 0 && now >= last_read_ + ping_after_) {
    // Nothing heard for a while: is the server still there?
    if (nghttp2_submit_ping(session_, NGHTTP2_FLAG_NONE, nullptr) == 0) {
      ping_outstanding_ = true;
      ping_sent_ = now;
      flush();
      if (dead_) return;
    }
  }
  schedule();
}

std::int32_t Conn::submit(const std::vector<nghttp2_nv>& nva, bool with_body, std::shared_ptr<Virtual> v) {
  unreserve();
  nghttp2_data_provider provider{};
  // By stream id: the Virtual may be gone (then the stream is reset).
  provider.read_callback = [](nghttp2_session*, std::int32_t id, std::uint8_t* buf, std::size_t length,
                              std::uint32_t* flags, nghttp2_data_source*, void* user) -> ssize_t {
    auto v = of(user).stream(id);
    if (!v) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return v->read_body(buf, length, flags);
  };
  auto id = nghttp2_submit_request(session_, nullptr, nva.data(), nva.size(), with_body ? &provider : nullptr, nullptr);
  if (id < 0) return id;
  streams_[id] = v;
  if (auto owner = owner_.lock())
    owner->count([](H2Stats& s) {
      ++s.streams_opened;
      ++s.active_streams;
    });
  flush();
  return id;
}

void Conn::read() {
  if (dead_ || reading_) return;
  reading_ = true;
  tls_->async_read_some(asio::buffer(rbuf_.get(), kReadBuffer),
                        [self = shared_from_this()](error_code ec, std::size_t n) {
                          asio::dispatch(self->strand_, [self, ec, n] { self->on_read(ec, n); });
                        });
}

void Conn::on_read(error_code ec, std::size_t n) {
  reading_ = false;
  if (dead_) return;
  if (ec)
    return fail(ec == asio::error::eof ? std::string("the API server closed the HTTP/2 connection")
                                       : "HTTP/2 connection to the API server failed: " + ec.message());
  auto keep = shared_from_this();
  last_read_ = Clock::now();
  auto rv = nghttp2_session_mem_recv(session_, rbuf_.get(), n);
  if (rv < 0)
    return fail(std::string("HTTP/2 protocol error from the API server: ") + nghttp2_strerror(static_cast<int>(rv)));
  flush();
  if (dead_) return;
  if (auto owner = owner_.lock()) owner->serve_waiting();
  read();
  maybe_done();
}

void Conn::flush() {
  if (dead_ || writing_ || !session_) return;
  for (;;) {
    const std::uint8_t* data = nullptr;
    auto n = nghttp2_session_mem_send(session_, &data);
    if (n < 0) return fail(std::string("HTTP/2 session error: ") + nghttp2_strerror(static_cast<int>(n)));
    if (n == 0) break;
    wbuf_.append(reinterpret_cast<const char*>(data), static_cast<std::size_t>(n));
    if (wbuf_.size() >= 64 * 1024) break;
  }
  if (wbuf_.empty()) return maybe_done();
  writing_ = true;
  writing_buf_.swap(wbuf_);
  wbuf_.clear();
  std::array<asio::const_buffer, 1> b{asio::buffer(writing_buf_)};
  tls_->async_write_some(b, [self = shared_from_this()](error_code ec, std::size_t n) {
    asio::dispatch(self->strand_, [self, ec, n] { self->on_write(ec, n); });
  });
}

void Conn::on_write(error_code ec, std::size_t n) {
  writing_ = false;
  if (dead_) return;
  if (ec) return fail("writing to the API server failed: " + ec.message());
  if (n < writing_buf_.size()) {
    // The rest goes first.
    writing_buf_.erase(0, n);
    wbuf_.insert(0, writing_buf_);
  }
  writing_buf_.clear();
  flush();
}

void Conn::on_goaway(std::int32_t last_stream_id, std::uint32_t error_code) {
  draining_ = true;
  if (log_)
    log_->info("API server sent GOAWAY on HTTP/2 connection {} (last stream {}, {}): new requests use a new connection",
               id_, last_stream_id, nghttp2_http2_strerror(error_code));
}

void Conn::maybe_done() {
  if (dead_) return;
  if (draining_ && streams_.empty() && !writing_) return close("drained after GOAWAY");
  if (!nghttp2_session_want_read(session_) && !nghttp2_session_want_write(session_) && !writing_)
    return close("HTTP/2 session ended");
}

void Conn::fail(const std::string& why) {
  if (dead_) return;
  if (log_) log_->info("HTTP/2 connection {} to the API server ended: {}", id_, why);
  close(why);
}

void Conn::close(const std::string& why) {
  if (dead_) return;
  dead_ = true;
  timer_.cancel();
  auto streams = std::move(streams_);
  streams_.clear();
  if (auto owner = owner_.lock())
    owner->count([&](H2Stats& s) { s.active_streams -= std::min(s.active_streams, streams.size()); });
  for (auto& [id, w] : streams)
    if (auto v = w.lock()) v->on_connection_lost(why);
  tls_->reset(why);
  if (auto owner = owner_.lock()) owner->connection_ended(this);
}

// ---- Virtual -------------------------------------------------------------------

Virtual::Virtual(std::shared_ptr<Impl> owner, Strand strand)
    : owner_(std::move(owner)), virtuals_(owner_->virtuals()), strand_(strand) {
  std::lock_guard lock(virtuals_->mu);
  virtuals_->all.insert(this);
}

Virtual::~Virtual() {
  {
    std::lock_guard lock(virtuals_->mu);
    virtuals_->all.erase(this);
  }
  // Dropped by the engine with its stream open (the engine resets a stream
  // it gives up; this is for one that did not): the server stops sending it.
  if (conn_ && stream_id_ > 0) asio::post(strand_, [conn = std::move(conn_), id = stream_id_] { conn->cancel(id); });
}

void Virtual::abandon() noexcept {
  stream_id_ = -1;
  conn_.reset();
  auto read = std::move(read_handler_);
  auto write = std::move(write_waiting_);
  auto http1 = std::move(http1_);
  read_handler_ = nullptr;
  write_waiting_ = nullptr;
  mode_ = Mode::failed;
}

void Registry::shutdown() {
  std::vector<std::shared_ptr<Virtual>> alive;
  {
    std::lock_guard lock(virtuals_->mu);
    for (auto* v : virtuals_->all)
      if (auto p = v->weak_from_this().lock()) alive.push_back(std::move(p));
  }
  for (auto& v : alive) v->abandon();
}

asio::any_io_executor Virtual::get_executor() { return strand_; }

void Virtual::async_write_some(std::span<const asio::const_buffer> buffers, IoHandler handler) {
  // Views only: the caller's buffers stay valid until the write completes,
  // and the bytes are taken (parsed or queued) on the strand before that.
  std::vector<std::string_view> pieces;
  std::size_t total = 0;
  for (auto& b : buffers) {
    if (b.size() == 0) continue;
    pieces.emplace_back(static_cast<const char*>(b.data()), b.size());
    total += b.size();
  }
  asio::dispatch(strand_,
                 [self = shared_from_this(), pieces = std::move(pieces), total, h = std::move(handler)]() mutable {
                   self->write_on_strand(std::move(pieces), total, std::move(h));
                 });
}

void Virtual::write_on_strand(std::vector<std::string_view> pieces, std::size_t total, IoHandler handler) {
  auto complete = [this](IoHandler h, error_code ec, std::size_t n) {
    asio::post(strand_, [h = std::move(h), ec, n]() mutable { h(ec, n); });
  };
  if (mode_ == Mode::failed) return complete(std::move(handler), asio::error::connection_reset, 0);
  if (mode_ == Mode::http1) {
    if (http1_) {
      std::vector<asio::const_buffer> bufs;
      for (auto p : pieces) bufs.emplace_back(p.data(), p.size());
      return http1_->async_write_some(bufs, std::move(handler));
    }
    for (auto p : pieces) http1_pending_.append(p);
    write_waiting_ = std::move(handler);
    write_waiting_count_ = total;
    return;
  }
  std::string_view body_rest;
  std::string joined;
  if (mode_ == Mode::h2 && body_complete_ && head_emitted_ && out_pos_ == out_.size()) {
    // The engine read the whole response by its framing (Content-Length)
    // before END_STREAM came in a frame of its own: this is the next
    // request. The old stream finishes unread (its window is given back).
    detach_stream();
    to_idle();
  }
  if (mode_ == Mode::idle) {
    mode_ = Mode::head;
    req_ = std::make_unique<Pending>();
    method_.clear();
  }
  for (auto p : pieces) joined.append(p);
  std::string_view in(joined);
  if (mode_ == Mode::head) {
    auto& r = *req_;
    auto before = r.head_text.size();
    r.head_text.append(in);
    auto end = r.head_text.find("\r\n\r\n");
    const auto limit = owner_->options().header_limit;
    if (end == std::string::npos) {
      if (r.head_text.size() > limit) {
        mode_ = Mode::failed;
        return complete(std::move(handler), asio::error::message_size, 0);
      }
      return complete(std::move(handler), {}, total);
    }
    if (!parse_head(std::string_view(r.head_text).substr(0, end + 4), r.head) || r.head.method.empty()) {
      mode_ = Mode::failed;
      return complete(std::move(handler), asio::error::invalid_argument, 0);
    }
    method_ = r.head.method;
    body_rest = in.substr(end + 4 - before);
    if (r.head.upgrade) {
      // exec, attach, port-forward: an HTTP/1.1 connection of its own.
      http1_pending_ = std::move(r.head_text);
      write_waiting_ = std::move(handler);
      write_waiting_count_ = total;
      req_.reset();
      go_http1();
      return;
    }
    r.fallback_wire = std::move(r.head_text);
    r.head_text.clear();
    body_expected_ = r.head.chunked || (r.head.has_length && r.head.length > 0);
    if (r.head.chunked)
      r.chunks.emplace();
    else
      r.body_left = r.head.length;
    body_complete_ = !body_expected_;
    body_sent_any_ = false;
    tries_ = 0;
    start_request();
  } else {
    body_rest = in;
    if (req_ && stream_id_ < 0 && !conn_) req_->fallback_wire.append(in);
  }
  if (!body_rest.empty() && !feed_body(body_rest)) {
    mode_ = Mode::failed;
    return complete(std::move(handler), asio::error::invalid_argument, 0);
  }
  if (req_ && req_->queued() > kBodyQueue && mode_ != Mode::failed) {
    write_waiting_ = std::move(handler);
    write_waiting_count_ = total;
    return;
  }
  complete(std::move(handler), {}, total);
}

bool Virtual::feed_body(std::string_view bytes) {
  // Bytes after the body: the engine never sends them.
  if (body_complete_ || !req_) return true;
  auto& r = *req_;
  if (r.chunks) {
    if (!r.chunks->feed(bytes, r.body)) return false;
    if (r.chunks->done()) body_complete_ = true;
  } else {
    auto n = static_cast<std::size_t>(std::min<std::uint64_t>(bytes.size(), r.body_left));
    r.body.append(bytes.substr(0, n));
    r.body_left -= n;
    if (r.body_left == 0) body_complete_ = true;
  }
  if (deferred_ && conn_ && stream_id_ > 0) {
    deferred_ = false;
    nghttp2_session_resume_data(conn_->session(), stream_id_);
    conn_->flush();
  }
  return true;
}

ssize_t Virtual::read_body(std::uint8_t* buf, std::size_t length, std::uint32_t* flags) {
  // A request without a body keeps no queue once answered: nothing to send.
  if (!req_) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return 0;
  }
  auto& r = *req_;
  std::size_t n = std::min(length, r.queued());
  if (n > 0) {
    std::memcpy(buf, r.body.data() + r.body_pos, n);
    r.body_pos += n;
    body_sent_any_ = true;
    if (r.body_pos == r.body.size()) {
      r.body.clear();
      r.body_pos = 0;
    }
    if (write_waiting_ && r.queued() <= kBodyQueue) complete_write();
  }
  if (body_complete_ && r.queued() == 0) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
  }
  if (n == 0) {
    deferred_ = true;
    return NGHTTP2_ERR_DEFERRED;
  }
  return static_cast<ssize_t>(n);
}

void Virtual::complete_write() {
  auto h = std::move(write_waiting_);
  write_waiting_ = nullptr;
  asio::post(strand_, [h = std::move(h), n = write_waiting_count_]() mutable { h({}, n); });
}

void Virtual::start_request() {
  mode_ = Mode::h2;
  status_ = 0;
  response_head_.clear();
  head_emitted_ = chunked_ = response_done_ = stream_closed_ = has_length_ = connect_retried_ = false;
  error_ = {};
  owed_ = 0;
  owner_->acquire(shared_from_this());
}

void Virtual::on_connection(std::shared_ptr<Conn> conn) {
  if (mode_ != Mode::h2) {
    conn->unreserve();
    return;
  }
  conn_ = std::move(conn);
  submit();
}

void Virtual::submit() {
  std::vector<nghttp2_nv> nva;
  auto nv = [&](std::string_view name, std::string_view value) {
    nva.push_back({reinterpret_cast<std::uint8_t*>(const_cast<char*>(name.data())),
                   reinterpret_cast<std::uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
                   NGHTTP2_NV_FLAG_NONE});
  };
  if (!req_) {
    conn_->unreserve();
    conn_.reset();
    return fail_request("the request was no longer there to send");
  }
  const auto& head = req_->head;
  static const std::string scheme = "https";
  nv(":method", head.method);
  nv(":scheme", scheme);
  nv(":authority", head.authority);
  nv(":path", head.target);
  for (auto& [name, value] : head.headers) nv(name, value);
  deferred_ = false;
  std::string().swap(req_->fallback_wire);
  auto id = conn_->submit(nva, body_expected_, shared_from_this());
  if (id < 0) {
    conn_.reset();
    return fail_request(std::string("could not send the request on HTTP/2: ") + nghttp2_strerror(id));
  }
  stream_id_ = id;
}

void Virtual::on_no_connection(std::string reason) {
  if (mode_ != Mode::h2 && mode_ != Mode::http1) return;
  if (mode_ == Mode::http1) {
    // An upgrade that found no connection: the engine reads a 502.
    mode_ = Mode::h2;
  }
  fail_request(std::move(reason));
}

// The engine reads a 502 with `message` in place of the response.
void Virtual::fail_request(std::string message) {
  if (owner_->log()) {
    // After the response head the target is no longer kept.
    if (!req_ || req_->head.target.empty())
      owner_->log()->info("API server request {}: {}", method_, message);
    else
      owner_->log()->info("API server request {} {}: {}", method_,
                          std::string_view(req_->head.target).substr(0, req_->head.target.find('?')), message);
  }
  if (head_emitted_) {
    error_ = asio::error::connection_reset;
    mode_ = Mode::failed;
  } else {
    out_ += gateway_response(message);
    head_emitted_ = true;
    response_done_ = stream_closed_ = true;
    body_complete_ = true;
  }
  if (write_waiting_) complete_write();
  deliver();
}

void Virtual::go_http1() {
  mode_ = Mode::http1;
  owner_->open_http1(shared_from_this());
}

void Virtual::on_http1(StreamPtr stream) {
  if (mode_ != Mode::http1 && mode_ != Mode::h2) {
    stream->reset("not needed");
    return;
  }
  if (mode_ == Mode::h2) {
    // The server did not pick h2: this request goes over HTTP/1.1 as the
    // engine wrote it.
    mode_ = Mode::http1;
    if (req_) {
      http1_pending_ = std::move(req_->fallback_wire) + http1_pending_;
      req_->fallback_wire.clear();
      req_->body.clear();
      req_->body_pos = 0;
    }
    // A write waiting for the body queue now waits for the connection.
  }
  http1_ = std::move(stream);
  auto pending = std::make_shared<std::string>(std::move(http1_pending_));
  http1_pending_.clear();
  if (pending->empty()) return finish_http1_write({});
  // The whole of it, in as many writes as it takes.
  auto step = std::make_shared<UniqueFunction<void(error_code, std::size_t)>>();
  auto offset = std::make_shared<std::size_t>(0);
  *step = [self = shared_from_this(), pending, step, offset](error_code ec, std::size_t n) mutable {
    asio::dispatch(self->strand_, [self, pending, step, offset, ec, n]() mutable {
      if (ec) {
        *step = nullptr;
        return self->finish_http1_write(ec);
      }
      *offset += n;
      if (*offset >= pending->size()) {
        *step = nullptr;
        return self->finish_http1_write({});
      }
      std::array<asio::const_buffer, 1> b{asio::buffer(pending->data() + *offset, pending->size() - *offset)};
      self->http1_->async_write_some(b, [step](error_code e, std::size_t k) { (*step)(e, k); });
    });
  };
  std::array<asio::const_buffer, 1> b{asio::buffer(*pending)};
  http1_->async_write_some(b, [step](error_code e, std::size_t k) { (*step)(e, k); });
}

void Virtual::finish_http1_write(error_code ec) {
  // The engine's read may have started before the request head said where
  // it goes (or before the connection was there).
  auto read = std::move(read_handler_);
  read_handler_ = nullptr;
  const auto read_buffer = read_buffer_;
  if (write_waiting_) {
    auto h = std::move(write_waiting_);
    write_waiting_ = nullptr;
    h(ec, ec ? 0 : write_waiting_count_);
  }
  if (read) http1_->async_read_some(read_buffer, std::move(read));
}

void Virtual::on_response_header(std::string_view name, std::string_view value) {
  if (head_emitted_ && status_ >= 200) return;  // trailers: not relayed
  if (name == ":status") {
    status_ = 0;
    for (char c : value)
      if (c >= '0' && c <= '9') status_ = status_ * 10 + static_cast<unsigned>(c - '0');
    return;
  }
  if (!name.empty() && name.front() == ':') return;
  if (connection_specific(name)) return;
  if (iequals(name, "content-length")) {
    // (For HEAD and 304 it describes the resource, not this message: kept.)
    chunked_ = false;
    has_length_ = true;
  }
  response_head_.append(name);
  response_head_.append(": ");
  response_head_.append(value);
  response_head_.append("\r\n");
}

void Virtual::on_headers_end(bool end_stream) {
  if (head_emitted_ && status_ >= 200) {
    if (end_stream) on_end_stream();
    return;
  }
  std::string head = "HTTP/1.1 " + std::to_string(status_) + " " + std::string(reason_phrase(status_)) + "\r\n";
  if (status_ >= 100 && status_ < 200) {
    // Interim (100 Continue): relayed; the final head follows.
    out_ += head + "\r\n";
    response_head_.clear();
    has_length_ = false;
    deliver();
    return;
  }
  const bool bodiless = method_ == "HEAD" || status_ == 204 || status_ == 304;
  head += response_head_;
  std::string().swap(response_head_);
  // The final head came: the request is not submitted again, and a long
  // response (a watch) keeps only its method (for logs). A body still on
  // its way keeps its queue.
  if (!body_expected_) {
    req_.reset();
  } else if (req_) {
    std::vector<std::pair<std::string, std::string>>().swap(req_->head.headers);
    std::string().swap(req_->head.authority);
    std::string().swap(req_->head.target);
  }
  if (!bodiless && !has_length_) {
    if (end_stream)
      head += "Content-Length: 0\r\n";
    else {
      head += "Transfer-Encoding: chunked\r\n";
      chunked_ = true;
    }
  }
  head += "\r\n";
  out_ += head;
  head_emitted_ = true;
  if (end_stream) on_end_stream();
  deliver();
}

void Virtual::on_data(const std::uint8_t* data, std::size_t len) {
  if (len == 0) return;
  if (chunked_) {
    char size[32];
    int k = std::snprintf(size, sizeof size, "%zx\r\n", len);
    out_.append(size, static_cast<std::size_t>(k));
    out_.append(reinterpret_cast<const char*>(data), len);
    out_.append("\r\n");
  } else {
    out_.append(reinterpret_cast<const char*>(data), len);
  }
  owed_ += len;
  deliver();
}

void Virtual::on_end_stream() {
  if (response_done_) return;
  response_done_ = true;
  if (chunked_) out_.append("0\r\n\r\n");
  deliver();
}

void Virtual::on_stream_close(std::uint32_t error_code) {
  stream_closed_ = true;
  auto conn = std::move(conn_);
  conn_.reset();
  stream_id_ = -1;
  owner_->count([&](H2Stats& s) {
    if (error_code != NGHTTP2_NO_ERROR && error_code != NGHTTP2_REFUSED_STREAM) ++s.streams_reset;
  });
  if (response_done_ || mode_ != Mode::h2) {
    maybe_idle();
    return;
  }
  if (error_code == NGHTTP2_REFUSED_STREAM && !head_emitted_ && !body_sent_any_ && !body_expected_ && tries_ < 3) {
    // Not processed by the server (RFC 9113 8.7): sent again elsewhere.
    ++tries_;
    owner_->count([](H2Stats& s) { ++s.streams_retried; });
    stream_closed_ = false;
    owner_->acquire(shared_from_this());
    return;
  }
  std::string what =
      error_code == NGHTTP2_NO_ERROR
          ? std::string("the API server ended the HTTP/2 stream before the response was complete")
          : std::string("the API server reset the HTTP/2 stream (") + nghttp2_http2_strerror(error_code) + ")";
  if (head_emitted_ && owner_->log()) owner_->log()->info("API server request {}: {}", method_, what);
  fail_request(what + (head_emitted_ ? "" : " before responding"));
}

void Virtual::on_connection_lost(const std::string& why) {
  conn_.reset();
  stream_id_ = -1;
  if (response_done_) return maybe_idle();
  if (!head_emitted_ && !body_sent_any_ && !body_expected_ && tries_ < 3 && why != "HTTP/2 upstream closed") {
    ++tries_;
    owner_->count([](H2Stats& s) { ++s.streams_retried; });
    return owner_->acquire(shared_from_this());
  }
  stream_closed_ = true;
  fail_request(why);
}

void Virtual::async_read_some(asio::mutable_buffer buffer, IoHandler handler) {
  asio::dispatch(strand_, [self = shared_from_this(), buffer, h = std::move(handler)]() mutable {
    if (self->mode_ == Mode::http1) {
      if (self->http1_ && !self->write_waiting_) return self->http1_->async_read_some(buffer, std::move(h));
      self->read_handler_ = std::move(h);
      self->read_buffer_ = buffer;
      return;
    }
    self->read_handler_ = std::move(h);
    self->read_buffer_ = buffer;
    self->deliver();
  });
}

void Virtual::deliver() {
  if (!read_handler_) return;
  std::size_t avail = out_.size() - out_pos_;
  if (avail == 0 && !error_) return;
  auto h = std::move(read_handler_);
  read_handler_ = nullptr;
  if (avail == 0) {
    asio::post(strand_, [h = std::move(h), ec = error_]() mutable { h(ec, 0); });
    return;
  }
  std::size_t n = std::min(avail, read_buffer_.size());
  std::memcpy(read_buffer_.data(), out_.data() + out_pos_, n);
  out_pos_ += n;
  if (out_pos_ == out_.size()) {
    // Drained: a quiet response (a watch between events) holds no copy of
    // what it delivered last.
    std::string().swap(out_);
    out_pos_ = 0;
  }
  // The window opens as the engine reads; framing bytes count as body here
  // (a few bytes per frame): the bound stays one window and a little.
  if (owed_ > 0 && conn_ && stream_id_ > 0) {
    std::size_t give = std::min(owed_, n);
    owed_ -= give;
    nghttp2_session_consume(conn_->session(), stream_id_, give);
    conn_->flush();
  } else if (owed_ > 0 && !conn_) {
    owed_ = 0;
  }
  asio::post(strand_, [h = std::move(h), n]() mutable { h({}, n); });
  maybe_idle();
}

// Between requests a virtual connection holds nothing.
void Virtual::maybe_idle() {
  if (mode_ != Mode::h2 || !response_done_ || !stream_closed_ || out_pos_ != out_.size() || !body_complete_) return;
  to_idle();
}

void Virtual::detach_stream() {
  if (conn_ && stream_id_ > 0) conn_->forget(stream_id_);
  conn_.reset();
  stream_id_ = -1;
}

void Virtual::to_idle() {
  mode_ = Mode::idle;
  req_.reset();
  method_.clear();
  std::string().swap(out_);
  out_pos_ = 0;
  owed_ = 0;
}

void Virtual::async_shutdown_send(DoneHandler handler) {
  asio::dispatch(strand_, [self = shared_from_this(), h = std::move(handler)]() mutable {
    if (self->mode_ == Mode::http1 && self->http1_) return self->http1_->async_shutdown_send(std::move(h));
    asio::post(self->strand_, [h = std::move(h)]() mutable { h({}); });
  });
}

void Virtual::reset(std::string_view reason) noexcept {
  asio::dispatch(strand_, [self = shared_from_this(), why = std::string(reason)]() mutable {
    if (self->http1_) self->http1_->reset(why);
    if (self->conn_ && self->stream_id_ > 0) {
      nghttp2_submit_rst_stream(self->conn_->session(), NGHTTP2_FLAG_NONE, self->stream_id_, NGHTTP2_CANCEL);
      self->conn_->flush();
    }
    self->mode_ = Mode::failed;
    self->error_ = asio::error::operation_aborted;
    self->out_.clear();
    self->out_pos_ = 0;
    self->deliver();
    if (self->write_waiting_) {
      auto h = std::move(self->write_waiting_);
      self->write_waiting_ = nullptr;
      asio::post(self->strand_, [h = std::move(h)]() mutable { h(asio::error::operation_aborted, 0); });
    }
  });
}

}  // namespace

std::shared_ptr<H2Upstream> H2Upstream::create(asio::io_context& io, H2Connector h2, UpstreamConnector http1,
                                               H2Options options, std::shared_ptr<spdlog::logger> logger) {
  return std::make_shared<Impl>(io, std::move(h2), std::move(http1), options, std::move(logger));
}

}  // namespace clusterconnect::http
