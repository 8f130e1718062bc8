#include "session.hpp"

#include "clusterconnect/executor_dispatch.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <deque>
#include <map>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <spdlog/spdlog.h>

namespace clusterconnect::tunnel {

namespace {

class SteadyTimer final : public SessionClock::Timer {
 public:
  explicit SteadyTimer(const asio::any_io_executor& ex) : timer_(ex) {}
  void async_wait_for(SessionClock::duration d, SessionClock::WaitHandler handler) override {
    timer_.expires_after(d);
    timer_.async_wait(std::move(handler));
  }
  void cancel() noexcept override { timer_.cancel(); }

 private:
  asio::steady_timer timer_;
};

class SteadyClock final : public SessionClock {
 public:
  time_point now() const override { return std::chrono::steady_clock::now(); }
  std::unique_ptr<Timer> make_timer(asio::any_io_executor ex) override { return std::make_unique<SteadyTimer>(ex); }
};

}  // namespace

// DATA payloads below this are appended to the stream's last received chunk
// while it stays within coalesce_limit.
constexpr std::size_t coalesce_below = 4 * 1024;
constexpr std::size_t coalesce_limit = 16 * 1024;
// Emptied chunk buffers a session keeps for the next frames (a bulk stream
// whose reader lags a little buffers a frame and frees it, over and over).
// Kept only while DATA flows: the ping timer drops them after an idle interval.
constexpr std::size_t max_spare_chunks = 4;

std::shared_ptr<SessionClock> steady_session_clock() {
  static const auto clock = std::make_shared<SteadyClock>();
  return clock;
}

// A stream's received chunks, oldest first. A vector and a read position:
// an empty queue holds no memory (std::deque allocates a 512-byte block on
// construction, which every stream, idle ones included, would carry).
class ChunkQueue {
 public:
  using Chunk = std::vector<std::uint8_t>;
  bool empty() const { return head_ == items_.size(); }
  std::size_t size() const { return items_.size() - head_; }
  Chunk& front() { return items_[head_]; }
  Chunk& back() { return items_.back(); }
  Chunk& emplace_back(Chunk chunk) {
    // Slots already read go before the vector grows.
    if (head_ > 0 && items_.size() == items_.capacity()) {
      items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
    }
    return items_.emplace_back(std::move(chunk));
  }
  void pop_front() {
    Chunk().swap(items_[head_]);
    if (++head_ == items_.size()) {
      items_.clear();
      head_ = 0;
    }
  }
  void clear() {
    std::vector<Chunk>().swap(items_);
    head_ = 0;
  }
  auto begin() const { return items_.begin() + static_cast<std::ptrdiff_t>(head_); }
  auto end() const { return items_.end(); }

 private:
  std::vector<Chunk> items_;
  std::size_t head_ = 0;
};

// A handler that most streams never hold, kept out of line: empty, it costs a
// pointer instead of a handler's inline storage (streams held open by the
// thousand, each idle watch one, carry none of these).
template <class Fn>
class RareHandler;
template <class R, class... Args>
class RareHandler<UniqueFunction<R(Args...)>> {
  using Fn = UniqueFunction<R(Args...)>;

 public:
  RareHandler() noexcept = default;
  RareHandler& operator=(std::nullptr_t) noexcept {
    fn_.reset();
    return *this;
  }
  RareHandler& operator=(Fn fn) {
    if (fn) fn_ = std::make_unique<Fn>(std::move(fn));
    else fn_.reset();
    return *this;
  }
  explicit operator bool() const noexcept { return fn_ && *fn_; }
  R operator()(Args... args) { return (*fn_)(std::forward<Args>(args)...); }
  // The handler itself; this one is left empty.
  Fn take() noexcept {
    Fn out;
    if (fn_) out = std::move(*fn_);
    fn_.reset();
    return out;
  }

 private:
  std::unique_ptr<Fn> fn_;
};

struct StreamState {
  enum class Phase { opening, pending_accept, open, done };

  StreamId id = 0;
  bool local = false;  // this side opened it
  Phase phase = Phase::open;

  // Opening (local): completes on ACK or RST; the handle is handed out then.
  RareHandler<Session::OpenCallback> open_cb;
  TunnelStreamPtr pending_handle;
  std::unique_ptr<SessionClock::Timer> open_timer;

  std::int64_t send_credit = default_stream_window;
  std::int64_t recv_allowed = default_stream_window;  // what the peer may still send
  std::size_t recv_unacked = 0;                         // read but not yet returned

  // Received bytes not yet read: at most the stream window.
  ChunkQueue chunks;
  std::size_t front_offset = 0;
  std::size_t buffered = 0;

  bool remote_fin = false;
  bool local_fin = false;
  error_code reset_ec;
  // Sending: the writer's buffers are held until the scheduler takes them.
  bool ready = false;    // in one of the session's rings of streams with bytes to send
  bool in_turn = false;  // its turn was cut short by the tunnel's credit
  std::size_t deficit = 0;
  std::size_t write_left = 0;   // bytes of write_bufs not yet taken
  std::size_t write_taken = 0;  // bytes of the pending write already sent

  asio::mutable_buffer read_buf;
  IoHandler read_handler;
  // Bytes copied straight into read_buf by DATA that found the read waiting;
  // the read completes once the message is handled (see Completion), so
  // later frames of the same message join it while it has room.
  std::size_t read_filled = 0;
  bool read_posted = false;  // that completion is on its way
  std::size_t chunk_max = 0;
  RareHandler<TunnelStream::ChunkHandler> chunk_handler;  // a read in the async_read_chunk form
  std::vector<asio::const_buffer> write_bufs;
  IoHandler write_handler;
  RareHandler<DoneHandler> shutdown_handler;
};

// A stream operation's completion made while the session handles an event of
// its transport (a message read, a message written): it runs once that event
// is handled, from the same handler, instead of from a posted one (a turn of
// the event loop each). Such an event never runs inside a user's call, so
// no completion runs inside the call that started its operation.
struct Completion {
  std::shared_ptr<StreamState> direct;  // a read filled straight from DATA
  IoHandler io;
  RareHandler<TunnelStream::ChunkHandler> chunk;
  std::vector<std::uint8_t> bytes;  // the chunk's
  error_code ec;
  std::size_t n = 0;
};

// Marks the handling of a transport event (see Completion).
class EventScope {
 public:
  explicit EventScope(int& depth) noexcept : depth_(depth) { ++depth_; }
  ~EventScope() { --depth_; }
  EventScope(const EventScope&) = delete;
  EventScope& operator=(const EventScope&) = delete;

 private:
  int& depth_;
};

struct Session::Impl {
  Impl(const asio::any_io_executor& ex, SessionClock& clock) : ping_timer(clock.make_timer(ex)), last_rx(clock.now()) {}

  std::map<StreamId, std::shared_ptr<StreamState>> streams;
  StreamId next_local_id = 1;
  StreamId last_peer_id = 0;

  std::int64_t tunnel_send_credit = default_tunnel_window;
  std::int64_t tunnel_recv_allowed = default_tunnel_window;
  std::size_t tunnel_recv_unacked = 0;

  // Unsent messages; frames coalesce into the last one up to max_message_size.
  std::deque<std::vector<std::uint8_t>> queue;
  std::size_t queued_bytes = 0;
  std::vector<std::uint8_t> write_buf;
  bool writing = false;
  // Streams with bytes to send and credit, in round-robin order. A write
  // that fits in one turn (a small response, a request, the tail of a
  // transfer) waits in `brief`, served before the others: it is sent whole in
  // the next message, however many transfers share the tunnel. Each takes at
  // most one turn per message, so the transfers keep the rest of it.
  std::deque<std::shared_ptr<StreamState>> brief;
  std::deque<std::shared_ptr<StreamState>> ready;

  // Chunk buffers emptied by reads, for the next frames to be buffered, and
  // the storage of the last message written, for the next one queued (WINDOW
  // answers to a bulk stream would otherwise allocate a message each).
  std::vector<std::vector<std::uint8_t>> spare_chunks;
  std::vector<std::uint8_t> spare_message;
  bool data_since_tick = false;  // DATA received or sent since the last ping tick

  // Dialler: the RENEW awaiting its ACK (at most one).
  RenewCallback renew_cb;
  bool renew_outstanding = false;
  // Acceptor: the numbers of the queued messages that hold RENEW|ACKs not yet
  // written. Messages are numbered as queued and written in order.
  std::uint64_t messages_queued = 0;
  std::uint64_t messages_written = 0;
  std::deque<std::uint64_t> renew_ack_messages;

  std::unique_ptr<SessionClock::Timer> ping_timer;
  SessionClock::time_point last_rx;
  std::uint64_t ping_counter = 0;

  bool started = false;
  bool closed = false;
  bool goaway_sent = false;
  bool peer_goaway = false;
  bool ids_exhausted = false;
  bool close_when_flushed = false;
  std::string close_reason;
  // After a protocol error: the GOAWAY telling the peer why, written once the
  // write in flight (if any) completes, then the channel is closed.
  std::vector<std::uint8_t> final_message;
  bool channel_closed = false;

  // Completions waiting for the end of the transport event being handled.
  std::vector<Completion> completions;
  int event_depth = 0;
  bool running_completions = false;
};

// ---------------------------------------------------------------------------
// TunnelStream

TunnelStream::TunnelStream(std::shared_ptr<Session> session, std::shared_ptr<StreamState> state)
    : session_(std::move(session)), state_(std::move(state)) {}

TunnelStream::~TunnelStream() {
  try {
    post_on(session_->strand_, [session = session_, state = state_] {
      session->do_reset(state, RstCode::cancel, "stream abandoned", true);
    });
  } catch (...) {
  }
}

asio::any_io_executor TunnelStream::get_executor() { return session_->strand_; }

void TunnelStream::async_read_some(asio::mutable_buffer buffer, IoHandler handler) {
  dispatch_on(session_->strand_, [self = shared_from_this(), buffer, h = std::move(handler)]() mutable {
    self->session_->do_read(self->state_, buffer, std::move(h));
  });
}

void TunnelStream::async_read_chunk(std::size_t max, ChunkHandler handler, std::vector<std::uint8_t> spent) {
  dispatch_on(session_->strand_,
                 [self = shared_from_this(), max, h = std::move(handler), spent = std::move(spent)]() mutable {
                   self->session_->do_read_chunk(self->state_, max, std::move(h), std::move(spent));
                 });
}

void TunnelStream::async_write_some(std::span<const asio::const_buffer> buffers, IoHandler handler) {
  // The caller's list lives only for this call: kept here, without an
  // allocation. A write_some may take fewer buffers than it was given.
  std::array<asio::const_buffer, 16> copy;
  std::size_t n = 0;
  for (const auto& b : buffers) {
    if (n == copy.size()) break;
    copy[n++] = b;
  }
  dispatch_on(session_->strand_, [self = shared_from_this(), copy, n, h = std::move(handler)]() mutable {
    self->session_->do_write(self->state_, std::span<const asio::const_buffer>(copy.data(), n), std::move(h));
  });
}

void TunnelStream::async_shutdown_send(DoneHandler handler) {
  dispatch_on(session_->strand_, [self = shared_from_this(), h = std::move(handler)]() mutable {
    self->session_->do_shutdown(self->state_, std::move(h));
  });
}

void TunnelStream::reset(std::string_view reason) noexcept { reset(RstCode::cancel, reason); }

void TunnelStream::reset(RstCode code, std::string_view reason) noexcept {
  try {
    dispatch_on(session_->strand_, [session = session_, state = state_, code, r = std::string(reason)]() mutable {
      session->do_reset(state, code, std::move(r), false);
    });
  } catch (...) {
  }
}

void TunnelStream::accept() noexcept {
  try {
    dispatch_on(session_->strand_, [session = session_, state = state_] { session->do_accept(state); });
  } catch (...) {
  }
}

StreamId TunnelStream::id() const noexcept { return state_->id; }

std::string TunnelStream::describe() const { return "stream " + std::to_string(state_->id) + " on " + session_->name(); }
bool TunnelStream::reusable() const noexcept { return session_->usable(); }

// ---------------------------------------------------------------------------
// Session

std::shared_ptr<Session> Session::create(asio::any_io_executor strand, std::unique_ptr<MessageChannel> channel,
                                         SessionOptions options, std::shared_ptr<spdlog::logger> logger) {
  return std::shared_ptr<Session>(new Session(std::move(strand), std::move(channel), std::move(options), std::move(logger)));
}

Session::Session(asio::any_io_executor strand, std::unique_ptr<MessageChannel> channel, SessionOptions options,
                 std::shared_ptr<spdlog::logger> logger)
    : strand_(std::move(strand)),
      channel_(std::move(channel)),
      options_(std::move(options)),
      logger_(logger ? std::move(logger) : spdlog::default_logger()) {
  if (!options_.clock) options_.clock = steady_session_clock();
  impl_ = std::make_unique<Impl>(strand_, *options_.clock);
  // Windows can only be raised above the protocol defaults (no negotiation).
  options_.stream_window = std::clamp<std::uint32_t>(options_.stream_window, default_stream_window, max_window);
  options_.tunnel_window = std::clamp<std::uint32_t>(options_.tunnel_window, default_tunnel_window, max_window);
  impl_->next_local_id = options_.role == Role::dialer ? 1 : 2;
}

Session::~Session() = default;

void Session::start() {
  // Usable at once: opens issued after start() queue behind it on the strand.
  usable_.store(true, std::memory_order_relaxed);
  dispatch_on(strand_, [self = shared_from_this()] {
    auto& m = *self->impl_;
    if (m.started || m.closed) return;
    m.started = true;
    m.last_rx = self->options_.clock->now();
    if (self->options_.tunnel_window > default_tunnel_window) {
      std::uint32_t extra = self->options_.tunnel_window - default_tunnel_window;
      encode_window(self->out_for(frame_header_size + 4), 0, extra);
      m.tunnel_recv_allowed += extra;
    }
    self->update_usable();
    self->do_read_message();
    self->flush();
    m.ping_timer->async_wait_for(self->options_.ping_interval, [self](error_code ec) { self->on_ping_timer(ec); });
  });
}

void Session::update_usable() {
  auto& m = *impl_;
  usable_.store(m.started && !m.closed && !m.goaway_sent && !m.peer_goaway && !m.ids_exhausted, std::memory_order_relaxed);
}

bool Session::is_peer_id(StreamId id) const noexcept {
  const bool own_odd = options_.role == Role::dialer;
  return ((id % 2) == 1) != own_odd;
}

void Session::async_open(Metadata metadata, OpenCallback callback) {
  dispatch_on(strand_, [self = shared_from_this(), md = std::move(metadata), cb = std::move(callback)]() mutable {
    auto& m = *self->impl_;
    auto refuse = [&](error_code ec, std::string reason) {
      post_on(self->strand_, [cb = std::move(cb), ec, reason = std::move(reason)]() mutable { cb(ec, nullptr, std::move(reason)); });
    };
    if (m.closed) return refuse(asio::error::not_connected, "tunnel closed: " + m.close_reason);
    if (m.goaway_sent || m.peer_goaway || m.ids_exhausted) return refuse(asio::error::connection_refused, "tunnel is draining");
    if (m.streams.size() >= self->options_.max_streams)
      return refuse(asio::error::no_buffer_space, "too many streams on this tunnel");
    std::string json = serialize_metadata(md);
    if (json.size() > max_metadata_size) return refuse(asio::error::message_size, "stream metadata over 4 KiB");
    const StreamId id = m.next_local_id;
    if (id > 0xFFFFFFFFu - 2) {
      m.ids_exhausted = true;
      self->update_usable();
    } else {
      m.next_local_id += 2;
    }

    auto s = std::make_shared<StreamState>();
    s->id = id;
    s->local = true;
    s->phase = StreamState::Phase::opening;
    s->open_cb = std::move(cb);
    s->pending_handle = std::make_shared<TunnelStream>(self, s);
    m.streams.emplace(id, s);
    self->active_streams_.fetch_add(1, std::memory_order_relaxed);

    encode_open(self->out_for(frame_header_size + json.size()), id, json);
    if (self->options_.stream_window > default_stream_window) {
      std::uint32_t extra = self->options_.stream_window - default_stream_window;
      encode_window(self->out_for(frame_header_size + 4), id, extra);
      s->recv_allowed += extra;
    }
    s->open_timer = self->options_.clock->make_timer(self->strand_);
    s->open_timer->async_wait_for(self->options_.open_timeout, [weak = std::weak_ptr<Session>(self), s](error_code ec) {
      auto self = weak.lock();
      if (ec || !self || s->phase != StreamState::Phase::opening) return;
      encode_rst(self->out_for(frame_header_size + 4 + 32), s->id, RstCode::cancel, "open timed out");
      auto cb = std::move(s->open_cb);
      s->pending_handle.reset();
      self->finish_stream(s);
      self->flush();
      post_on(self->strand_, [cb = std::move(cb)]() mutable { cb(asio::error::timed_out, nullptr, "open timed out"); });
    });
    self->flush();
  });
}

void Session::async_renew(std::string token, RenewCallback callback) {
  dispatch_on(strand_, [self = shared_from_this(), token = std::move(token), cb = std::move(callback)]() mutable {
    auto& m = *self->impl_;
    auto refuse = [&](error_code ec, std::string reason) {
      post_on(self->strand_, [cb = std::move(cb), ec, reason = std::move(reason)]() mutable { cb(ec, std::move(reason)); });
    };
    if (m.closed) return refuse(asio::error::not_connected, "tunnel closed: " + m.close_reason);
    if (self->options_.role != Role::dialer || !self->options_.peer_accepts_renew)
      return refuse(asio::error::operation_not_supported, "the relay does not take token renewals on this tunnel");
    if (m.renew_outstanding) return refuse(asio::error::in_progress, "a token renewal is already in flight");
    if (token.empty() || token.size() > max_token_size) return refuse(asio::error::message_size, "token empty or over 4 KiB");
    m.renew_outstanding = true;
    m.renew_cb = std::move(cb);
    encode_renew(self->out_for(frame_header_size + token.size()), token);
    self->flush();
  });
}

void Session::goaway(std::string reason) {
  dispatch_on(strand_, [self = shared_from_this(), reason = std::move(reason)] {
    auto& m = *self->impl_;
    if (m.closed || m.goaway_sent) return;
    m.goaway_sent = true;
    self->update_usable();
    encode_goaway(self->out_for(frame_header_size + 4 + reason.size()), GoawayCode::normal, reason);
    self->flush();
    self->maybe_close_drained();
  });
}

void Session::close(std::string reason) {
  dispatch_on(strand_, [self = shared_from_this(), reason = std::move(reason)]() mutable { self->fail(std::move(reason), false); });
}

// ---------------------------------------------------------------------------
// Inbound

void Session::do_read_message() {
  channel_->async_read_message(
      [self = shared_from_this()](error_code ec, std::span<const std::uint8_t> bytes) { self->on_message(ec, bytes); });
}

void Session::on_message(error_code ec, std::span<const std::uint8_t> bytes) {
  {
    EventScope event(impl_->event_depth);
    handle_message(ec, bytes);
  }
  run_completions();
}

void Session::handle_message(error_code ec, std::span<const std::uint8_t> bytes) {
  auto& m = *impl_;
  if (m.closed) return;
  if (ec == text_message_error()) {
    protocol_error("text WebSocket message");
    return;
  }
  if (ec) {
    fail("transport: " + ec.message(), false);
    return;
  }
  m.last_rx = options_.clock->now();
  std::size_t off = 0;
  while (off < bytes.size()) {
    DecodeResult r = decode_frame(bytes.subspan(off));
    if (r.error != DecodeError::none) {
      protocol_error(std::string("malformed frame: ") + to_string(r.error));
      return;
    }
    off += r.consumed;
    if (!on_frame(r.frame) || m.closed) return;
    if (m.queued_bytes > options_.send_queue_limit + options_.control_queue_limit) {
      fail("the peer is not reading: " + std::to_string(m.queued_bytes) + " bytes are queued for it", false);
      return;
    }
  }
  flush();
  do_read_message();
}

bool Session::protocol_error(std::string reason) {
  fail("protocol error: " + reason, true);
  return false;
}

bool Session::on_frame(const Frame& f) {
  auto& m = *impl_;
  switch (f.type) {
    case FrameType::open: return on_open(f);
    case FrameType::data: return on_data(f);
    case FrameType::window: return on_window(f);
    case FrameType::fin: return on_fin(f);
    case FrameType::rst: return on_rst(f);
    case FrameType::ping: {
      std::array<std::uint8_t, 8> opaque{};
      std::memcpy(opaque.data(), f.payload.data(), 8);
      encode_ping(out_for(frame_header_size + 8), FrameType::pong, opaque);
      return true;
    }
    case FrameType::pong: return true;
    case FrameType::renew: return on_renew(f);
    case FrameType::goaway: {
      CodeReason cr = code_reason(f);
      if (!m.peer_goaway) {
        m.peer_goaway = true;
        update_usable();
        logger_->info("{}: peer is going away (code {}): {}", options_.name, cr.code, cr.reason);
        if (goaway_handler_) goaway_handler_(cr.reason);
        maybe_close_drained();
      }
      return true;
    }
  }
  return protocol_error("unknown frame type");
}

bool Session::on_open(const Frame& f) {
  auto& m = *impl_;
  const StreamId id = f.stream;
  if (f.flags & flag_ack) {
    auto it = m.streams.find(id);
    if (it != m.streams.end() && it->second->local && it->second->phase == StreamState::Phase::opening) {
      auto s = it->second;
      s->phase = StreamState::Phase::open;
      if (s->open_timer) s->open_timer->cancel();
      auto handle = std::move(s->pending_handle);
      auto cb = std::move(s->open_cb);
      post_on(strand_, [cb = std::move(cb), handle = std::move(handle)]() mutable { cb({}, std::move(handle), {}); });
      return true;
    }
    // An ACK racing our own RST (open timeout) is harmless.
    if (it == m.streams.end() && !is_peer_id(id) && id < m.next_local_id) return true;
    return protocol_error("OPEN ACK for stream " + std::to_string(id) + " that is not opening");
  }
  if (!is_peer_id(id)) return protocol_error("OPEN with stream id " + std::to_string(id) + " of the wrong parity");
  if (m.streams.count(id)) return protocol_error("duplicate stream id " + std::to_string(id));
  if (id <= m.last_peer_id) return protocol_error("stream id reuse: " + std::to_string(id));
  m.last_peer_id = id;
  Metadata md;
  if (!parse_metadata(f.payload, md)) return protocol_error("OPEN metadata is not a JSON object of strings");
  auto refuse = [&](std::string_view reason) {
    encode_rst(out_for(frame_header_size + 4 + reason.size()), id, RstCode::refused, reason);
    return true;
  };
  if (m.goaway_sent) return refuse("tunnel is draining");
  if (m.streams.size() >= options_.max_streams) return refuse("too many streams on this tunnel");
  if (!incoming_handler_) return refuse("this side accepts no streams");
  auto s = std::make_shared<StreamState>();
  s->id = id;
  s->local = false;
  s->phase = StreamState::Phase::pending_accept;
  m.streams.emplace(id, s);
  active_streams_.fetch_add(1, std::memory_order_relaxed);
  incoming_handler_(std::make_shared<TunnelStream>(shared_from_this(), s), std::move(md));
  return true;
}

bool Session::on_data(const Frame& f) {
  auto& m = *impl_;
  const std::size_t n = f.payload.size();
  if (static_cast<std::int64_t>(n) > m.tunnel_recv_allowed) return protocol_error("DATA beyond the tunnel's credit");
  auto it = m.streams.find(f.stream);
  if (it == m.streams.end()) {
    const bool known = is_peer_id(f.stream) ? f.stream <= m.last_peer_id : f.stream < m.next_local_id;
    if (!known) return protocol_error("DATA for stream " + std::to_string(f.stream) + " that was never opened");
    // The stream ended here while these bytes were in flight: drop them, but
    // the tunnel credit they used must come back.
    m.tunnel_recv_allowed -= static_cast<std::int64_t>(n);
    consumed(nullptr, n);
    return true;
  }
  auto s = it->second;
  if (s->phase == StreamState::Phase::opening) return protocol_error("DATA before OPEN ACK on stream " + std::to_string(f.stream));
  if (s->remote_fin) return protocol_error("DATA after FIN on stream " + std::to_string(f.stream));
  if (static_cast<std::int64_t>(n) > s->recv_allowed)
    return protocol_error("DATA beyond the credit of stream " + std::to_string(f.stream));
  m.tunnel_recv_allowed -= static_cast<std::int64_t>(n);
  s->recv_allowed -= static_cast<std::int64_t>(n);
  m.data_since_tick = true;
  // Nothing buffered ahead of these bytes: a waiting read takes them as they
  // are, and only what it has no room for is buffered.
  const std::span<const std::uint8_t> rest = s->buffered == 0 ? deliver_direct(s, f.payload) : f.payload;
  const std::size_t r = rest.size();
  if (r == 0) return true;
  // Small frames are gathered into one allocation (grown geometrically, at
  // most coalesce_limit), so the memory held stays within about twice the
  // bytes held whatever the peer's framing; a large frame keeps its own.
  if (r < coalesce_below && !s->chunks.empty() && s->chunks.back().size() + r <= coalesce_limit) {
    auto& back = s->chunks.back();
    back.insert(back.end(), rest.begin(), rest.end());
  } else {
    auto& chunk = s->chunks.emplace_back(take_chunk(r < coalesce_below ? std::max<std::size_t>(r, 256) : r));
    chunk.assign(rest.begin(), rest.end());
  }
  s->buffered += r;
  if (s->read_handler || s->chunk_handler) complete_read(s);
  return true;
}

std::span<const std::uint8_t> Session::deliver_direct(const std::shared_ptr<StreamState>& s,
                                                      std::span<const std::uint8_t> bytes) {
  std::size_t k = 0;
  if (s->read_handler) {
    k = std::min(s->read_buf.size() - s->read_filled, bytes.size());
    if (k == 0) return bytes;
    std::memcpy(static_cast<std::uint8_t*>(s->read_buf.data()) + s->read_filled, bytes.data(), k);
    s->read_filled += k;
    if (!s->read_posted) {
      s->read_posted = true;
      complete_direct_read(s);
    }
  } else if (s->chunk_handler) {
    k = std::min(s->chunk_max, bytes.size());
    auto out = take_chunk(k);
    out.assign(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(k));
    complete_chunk(s, {}, std::move(out));
  } else {
    return bytes;
  }
  consumed(s, k);
  return bytes.subspan(k);
}

void Session::finish_direct_read(const std::shared_ptr<StreamState>& s) {
  const std::size_t n = s->read_filled;
  s->read_filled = 0;
  s->read_posted = false;
  auto h = std::move(s->read_handler);
  s->read_handler = nullptr;
  if (h) h({}, n);
}

void Session::complete_direct_read(const std::shared_ptr<StreamState>& s) {
  auto& m = *impl_;
  if (m.event_depth > 0) {
    m.completions.emplace_back().direct = s;
    return;
  }
  post_on(strand_, [self = shared_from_this(), s] { self->finish_direct_read(s); });
}

void Session::complete_io(IoHandler& handler, error_code ec, std::size_t n) {
  auto& m = *impl_;
  auto h = std::move(handler);
  handler = nullptr;
  if (m.event_depth > 0) {
    auto& c = m.completions.emplace_back();
    c.io = std::move(h);
    c.ec = ec;
    c.n = n;
    return;
  }
  post_on(strand_, [h = std::move(h), ec, n]() mutable { h(ec, n); });
}

void Session::complete_chunk(const std::shared_ptr<StreamState>& s, error_code ec, std::vector<std::uint8_t> bytes) {
  auto& m = *impl_;
  if (m.event_depth > 0) {
    auto& c = m.completions.emplace_back();
    c.chunk = std::move(s->chunk_handler);
    c.bytes = std::move(bytes);
    c.ec = ec;
    return;
  }
  post_on(strand_, [h = std::move(s->chunk_handler), ec, out = std::move(bytes)]() mutable { h(ec, std::move(out)); });
}

void Session::run_completions() {
  auto& m = *impl_;
  // A transport event handled inside a completion (none is today) leaves
  // its completions to this loop.
  if (m.event_depth > 0 || m.running_completions) return;
  m.running_completions = true;
  struct Done {
    Impl& m;
    ~Done() { m.running_completions = false; }
  } done{m};
  // By index: a completion may queue more (they run in this loop).
  for (std::size_t i = 0; i < m.completions.size(); ++i) {
    Completion c = std::move(m.completions[i]);
    if (c.direct)
      finish_direct_read(c.direct);
    else if (c.io)
      c.io(c.ec, c.n);
    else if (c.chunk)
      c.chunk(c.ec, std::move(c.bytes));
  }
  m.completions.clear();
}

std::vector<std::uint8_t> Session::take_chunk(std::size_t n) {
  auto& spare = impl_->spare_chunks;
  // Within twice the bytes, so what a stream holds stays within about twice
  // what it buffers.
  for (auto it = spare.begin(); it != spare.end(); ++it) {
    if (it->capacity() >= n && it->capacity() <= 2 * n) {
      auto out = std::move(*it);
      spare.erase(it);
      return out;
    }
  }
  std::vector<std::uint8_t> out;
  out.reserve(n);
  return out;
}

void Session::recycle_chunk(std::vector<std::uint8_t>&& chunk) {
  auto& spare = impl_->spare_chunks;
  if (impl_->closed || chunk.capacity() < coalesce_below || chunk.capacity() > max_data_payload ||
      spare.size() >= max_spare_chunks)
    return;
  chunk.clear();
  spare.push_back(std::move(chunk));
}

bool Session::on_window(const Frame& f) {
  auto& m = *impl_;
  const std::int64_t inc = window_increment(f);
  if (f.stream == 0) {
    if (m.tunnel_send_credit + inc > max_window) return protocol_error("WINDOW overflow on the tunnel");
    m.tunnel_send_credit += inc;
    return true;  // the streams waiting for it are still in their rings
  }
  auto it = m.streams.find(f.stream);
  if (it == m.streams.end()) {
    const bool known = is_peer_id(f.stream) ? f.stream <= m.last_peer_id : f.stream < m.next_local_id;
    if (!known) return protocol_error("WINDOW for stream " + std::to_string(f.stream) + " that was never opened");
    return true;
  }
  auto s = it->second;
  if (s->send_credit + inc > max_window) return protocol_error("WINDOW overflow on stream " + std::to_string(f.stream));
  s->send_credit += inc;
  schedule(s);
  return true;
}

bool Session::on_fin(const Frame& f) {
  auto& m = *impl_;
  auto it = m.streams.find(f.stream);
  if (it == m.streams.end()) {
    const bool known = is_peer_id(f.stream) ? f.stream <= m.last_peer_id : f.stream < m.next_local_id;
    if (!known) return protocol_error("FIN for stream " + std::to_string(f.stream) + " that was never opened");
    return true;
  }
  auto s = it->second;
  if (s->phase == StreamState::Phase::opening) return protocol_error("FIN before OPEN ACK on stream " + std::to_string(f.stream));
  if (s->remote_fin) return protocol_error("second FIN on stream " + std::to_string(f.stream));
  s->remote_fin = true;
  if (s->read_handler || s->chunk_handler) complete_read(s);
  if (s->local_fin) finish_stream(s);
  return true;
}

bool Session::on_rst(const Frame& f) {
  auto& m = *impl_;
  auto it = m.streams.find(f.stream);
  if (it == m.streams.end()) return true;  // already gone on this side
  auto s = it->second;
  CodeReason cr = code_reason(f);
  if (s->phase == StreamState::Phase::opening) {
    auto cb = std::move(s->open_cb);
    s->pending_handle.reset();
    finish_stream(s);
    post_on(strand_, [cb = std::move(cb), reason = std::move(cr.reason)]() mutable {
      cb(asio::error::connection_refused, nullptr, reason.empty() ? "stream refused by the peer" : std::move(reason));
    });
    return true;
  }
  logger_->debug("{}: stream {} reset by peer (code {}): {}", options_.name, f.stream, cr.code, cr.reason);
  s->reset_ec = asio::error::connection_reset;
  fail_stream_ops(s, s->reset_ec);
  discard_buffer(s);
  finish_stream(s);
  return true;
}

bool Session::on_renew(const Frame& f) {
  auto& m = *impl_;
  if (f.flags & flag_ack) {
    if (options_.role != Role::dialer || !m.renew_outstanding) return protocol_error("RENEW ACK without a RENEW in flight");
    m.renew_outstanding = false;
    error_code ec;
    std::string reason;
    if (!f.payload.empty()) {
      CodeReason cr = code_reason(f);
      ec = asio::error::access_denied;
      reason = cr.reason.empty() ? "token renewal refused (code " + std::to_string(cr.code) + ")" : std::move(cr.reason);
    }
    if (auto cb = std::move(m.renew_cb)) {
      m.renew_cb = nullptr;
      post_on(strand_, [cb = std::move(cb), ec, reason = std::move(reason)]() mutable { cb(ec, std::move(reason)); });
    }
    return true;
  }
  // Only the side that dialled presents tokens.
  if (options_.role != Role::acceptor) return protocol_error("RENEW from the side that accepted the tunnel");
  // A dialler waits for each ACK before its next RENEW, so at most one ACK can
  // still be unwritten here (its write completion racing the peer's next
  // RENEW). More means pipelined RENEWs: refused so ACKs cannot pile up.
  while (!m.renew_ack_messages.empty() && m.renew_ack_messages.front() <= m.messages_written) m.renew_ack_messages.pop_front();
  if (m.renew_ack_messages.size() >= 2) return protocol_error("RENEW while earlier ones are unanswered (one RENEW in flight at a time)");
  RenewVerdict v;
  if (renew_handler_) {
    v = renew_handler_(std::string(reinterpret_cast<const char*>(f.payload.data()), f.payload.size()));
  } else {
    v.code = 501;
    v.reason = "this side does not take token renewals";
  }
  if (v.code != 0 && v.reason.empty()) v.reason = "token renewal refused";
  encode_renew_ack(out_for(frame_header_size + 4 + std::min(v.reason.size(), max_reason_size)), v.code, v.reason);
  m.renew_ack_messages.push_back(m.messages_queued);
  return true;
}

// ---------------------------------------------------------------------------
// Stream operations

void Session::complete_read(const std::shared_ptr<StreamState>& s) {
  if (s->chunk_handler) return complete_chunk_read(s);
  // A read being filled straight from DATA completes as posted; what comes
  // after waits for the next read.
  if (!s->read_handler || s->read_posted) return;
  if (s->buffered > 0) {
    auto* dst = static_cast<std::uint8_t*>(s->read_buf.data());
    std::size_t want = std::min(s->read_buf.size(), s->buffered), got = 0;
    while (got < want) {
      auto& front = s->chunks.front();
      std::size_t k = std::min(want - got, front.size() - s->front_offset);
      std::memcpy(dst + got, front.data() + s->front_offset, k);
      got += k;
      s->front_offset += k;
      if (s->front_offset == front.size()) {
        recycle_chunk(std::move(front));
        s->chunks.pop_front();
        s->front_offset = 0;
      }
    }
    s->buffered -= got;
    complete_io(s->read_handler, {}, got);
    consumed(s, got);
    flush();
    return;
  }
  if (s->reset_ec) {
    complete_io(s->read_handler, s->reset_ec, 0);
  } else if (s->remote_fin) {
    complete_io(s->read_handler, asio::error::eof, 0);
  }
}

void Session::complete_chunk_read(const std::shared_ptr<StreamState>& s) {
  if (s->buffered > 0) {
    std::vector<std::uint8_t> out;
    auto& front = s->chunks.front();
    // A whole frame's bytes are handed over as they are; small ones are
    // gathered so a forwarder does not emit a frame per tiny chunk.
    if (s->front_offset == 0 && front.size() <= s->chunk_max && (s->chunks.size() == 1 || front.size() >= s->chunk_max / 2)) {
      out = std::move(front);
      s->chunks.pop_front();
    } else {
      out = take_chunk(std::min(s->chunk_max, s->buffered));
      while (out.size() < s->chunk_max && !s->chunks.empty()) {
        auto& f = s->chunks.front();
        std::size_t k = std::min(s->chunk_max - out.size(), f.size() - s->front_offset);
        out.insert(out.end(), f.begin() + static_cast<std::ptrdiff_t>(s->front_offset),
                   f.begin() + static_cast<std::ptrdiff_t>(s->front_offset + k));
        s->front_offset += k;
        if (s->front_offset == f.size()) {
          recycle_chunk(std::move(f));
          s->chunks.pop_front();
          s->front_offset = 0;
        }
      }
    }
    const std::size_t got = out.size();
    s->buffered -= got;
    complete_chunk(s, {}, std::move(out));
    consumed(s, got);
    flush();
    return;
  }
  if (s->reset_ec) {
    complete_chunk(s, s->reset_ec, {});
  } else if (s->remote_fin) {
    complete_chunk(s, asio::error::eof, {});
  }
}

void Session::consumed(const std::shared_ptr<StreamState>& s, std::size_t n) {
  auto& m = *impl_;
  if (m.closed) return;
  m.tunnel_recv_unacked += n;
  if (m.tunnel_recv_unacked >= options_.tunnel_window / 4) {
    auto inc = static_cast<std::uint32_t>(m.tunnel_recv_unacked);
    encode_window(out_for(frame_header_size + 4), 0, inc);
    m.tunnel_recv_allowed += inc;
    m.tunnel_recv_unacked = 0;
  }
  if (!s || s->phase == StreamState::Phase::done || s->remote_fin) return;
  s->recv_unacked += n;
  if (s->recv_unacked >= options_.stream_window / 4) {
    auto inc = static_cast<std::uint32_t>(s->recv_unacked);
    encode_window(out_for(frame_header_size + 4), s->id, inc);
    s->recv_allowed += inc;
    s->recv_unacked = 0;
  }
}

void Session::discard_buffer(const std::shared_ptr<StreamState>& s) {
  if (s->buffered == 0) return;
  std::size_t n = s->buffered;
  s->chunks.clear();
  s->front_offset = 0;
  s->buffered = 0;
  consumed(nullptr, n);
  flush();
}

void Session::do_read_chunk(const std::shared_ptr<StreamState>& s, std::size_t max, TunnelStream::ChunkHandler handler,
                            std::vector<std::uint8_t> spent) {
  if (spent.capacity() > 0) recycle_chunk(std::move(spent));
  if (s->read_handler || s->chunk_handler) {
    post_on(strand_, [h = std::move(handler)]() mutable { h(asio::error::in_progress, {}); });
    return;
  }
  if (max == 0) {
    post_on(strand_, [h = std::move(handler)]() mutable { h({}, {}); });
    return;
  }
  s->chunk_max = max;
  s->chunk_handler = std::move(handler);
  complete_read(s);
}

void Session::do_read(const std::shared_ptr<StreamState>& s, asio::mutable_buffer buffer, IoHandler handler) {
  if (s->read_handler || s->chunk_handler) {
    post_on(strand_, [h = std::move(handler)]() mutable { h(asio::error::in_progress, 0); });
    return;
  }
  if (buffer.size() == 0) {
    post_on(strand_, [h = std::move(handler)]() mutable { h({}, 0); });
    return;
  }
  s->read_buf = buffer;
  s->read_handler = std::move(handler);
  complete_read(s);
}

void Session::do_write(const std::shared_ptr<StreamState>& s, std::span<const asio::const_buffer> buffers, IoHandler handler) {
  error_code ec = s->reset_ec;
  if (!ec && s->local_fin) ec = asio::error::shut_down;
  if (!ec && s->write_handler) ec = asio::error::in_progress;
  if (ec) {
    post_on(strand_, [h = std::move(handler), ec]() mutable { h(ec, 0); });
    return;
  }
  std::size_t total = 0;
  for (const auto& b : buffers) total += b.size();
  if (total == 0) {
    post_on(strand_, [h = std::move(handler)]() mutable { h({}, 0); });
    return;
  }
  s->write_bufs.assign(buffers.begin(), buffers.end());  // the list's storage serves the stream's next writes
  s->write_handler = std::move(handler);
  s->write_left = total;
  s->write_taken = 0;
  schedule(s);
  flush();
}

// A stream joins the ring when it has bytes, is open and has credit; it
// leaves when its write is done, it is reset, or its credit runs out (a
// WINDOW brings it back).
void Session::schedule(const std::shared_ptr<StreamState>& s) {
  if (s->ready || !s->write_handler || s->reset_ec || s->phase != StreamState::Phase::open || s->send_credit <= 0)
    return;
  s->ready = true;
  s->in_turn = false;
  s->deficit = 0;
  const bool fits = s->write_left <= std::clamp<std::size_t>(options_.send_quantum, 1, max_data_payload);
  (fits ? impl_->brief : impl_->ready).push_back(s);
}

// The brief writes first, then deficit round-robin over the other ready
// streams, appending DATA to `message`.
// A stream's turn is send_quantum bytes (bytes are divisible, so the deficit
// carries over only when the tunnel's credit cuts a turn short); the budget is
// checked between turns, so no turn is split across messages by it.
void Session::fill_data(std::vector<std::uint8_t>& message) {
  auto& m = *impl_;
  const std::size_t quantum = std::clamp<std::size_t>(options_.send_quantum, 1, max_data_payload);
  const std::size_t budget =
      std::max<std::size_t>(1, std::min(options_.data_message_budget, options_.send_queue_limit));
  std::size_t data = 0;
  // The DATA frame that ends `message`, which the same stream's next turn
  // extends (a stream alone in the ring sends frames of up to 64 KiB).
  std::size_t tail_header = message.size();
  StreamId tail_stream = 0;
  while ((!m.brief.empty() || !m.ready.empty()) && data < budget && m.tunnel_send_credit > 0 &&
         message.size() + 2 * (frame_header_size + quantum) <= max_message_size) {
    auto& ring = m.brief.empty() ? m.ready : m.brief;
    auto s = std::move(ring.front());
    ring.pop_front();
    if (!s->write_handler || s->reset_ec || s->phase != StreamState::Phase::open || s->send_credit <= 0) {
      s->ready = false;
      continue;
    }
    if (!s->in_turn) s->deficit = quantum;
    s->in_turn = false;
    const auto n = static_cast<std::size_t>(
        std::min<std::int64_t>({static_cast<std::int64_t>(s->deficit), static_cast<std::int64_t>(s->write_left),
                                s->send_credit, m.tunnel_send_credit}));
    if (tail_stream == s->id && message.size() - tail_header - frame_header_size + n <= max_data_payload) {
      // Only the length changes: the header's last four bytes, big-endian.
      const auto length = static_cast<std::uint32_t>(message.size() - tail_header - frame_header_size + n);
      auto* field = message.data() + tail_header + frame_header_size - 4;
      for (int i = 0; i < 4; ++i) field[i] = static_cast<std::uint8_t>(length >> (24 - 8 * i));
    } else {
      tail_header = message.size();
      tail_stream = s->id;
      encode_header(message, FrameType::data, 0, s->id, static_cast<std::uint32_t>(n));
    }
    std::size_t copied = 0;
    auto& bufs = s->write_bufs;
    std::size_t bi = 0;
    while (copied < n) {
      auto& b = bufs[bi];
      const std::size_t k = std::min(n - copied, b.size());
      const auto* p = static_cast<const std::uint8_t*>(b.data());
      message.insert(message.end(), p, p + k);
      b += k;
      copied += k;
      if (b.size() == 0) ++bi;
    }
    bufs.erase(bufs.begin(), bufs.begin() + static_cast<std::ptrdiff_t>(bi));
    s->deficit -= n;
    s->write_left -= n;
    s->write_taken += n;
    s->send_credit -= static_cast<std::int64_t>(n);
    m.tunnel_send_credit -= static_cast<std::int64_t>(n);
    data += n;
    m.data_since_tick = true;
    if (s->write_left == 0 || s->send_credit == 0) {
      s->ready = false;
      complete_write(s);
      tail_stream = 0;  // a FIN may follow in the control queue
    } else if (s->deficit > 0) {
      s->in_turn = true;  // cut short by the tunnel's credit: it goes on first
      ring.push_front(std::move(s));
    } else {
      m.ready.push_back(std::move(s));
    }
  }
}

// The pending write took all the bytes it will take (its buffers, or what the
// peer's credit allowed); a FIN asked for meanwhile follows the data.
void Session::complete_write(const std::shared_ptr<StreamState>& s) {
  const std::size_t written = s->write_taken;
  s->write_taken = 0;
  s->write_left = 0;
  s->write_bufs.clear();
  complete_io(s->write_handler, {}, written);
  if (s->shutdown_handler) {
    // Into the control queue: a later message than this stream's data, and it
    // keeps the queue non-empty so a drained tunnel closes only after it.
    encode_fin(out_for(frame_header_size), s->id);
    s->local_fin = true;
    post_on(strand_, [h = std::move(s->shutdown_handler)]() mutable { h({}); });
    s->shutdown_handler = nullptr;
    if (s->remote_fin) finish_stream(s);
  }
}

void Session::do_shutdown(const std::shared_ptr<StreamState>& s, DoneHandler handler) {
  error_code ec = s->reset_ec;
  if (!ec && s->shutdown_handler) ec = asio::error::in_progress;
  if (ec || s->local_fin) {
    post_on(strand_, [h = std::move(handler), ec]() mutable { h(ec); });
    return;
  }
  if (s->write_handler || s->phase != StreamState::Phase::open) {
    s->shutdown_handler = std::move(handler);  // FIN follows the pending write / accept
    return;
  }
  encode_fin(out_for(frame_header_size), s->id);
  s->local_fin = true;
  post_on(strand_, [h = std::move(handler)]() mutable { h({}); });
  if (s->remote_fin) finish_stream(s);
  flush();
}

void Session::do_accept(const std::shared_ptr<StreamState>& s) {
  if (s->phase != StreamState::Phase::pending_accept || impl_->closed) return;
  s->phase = StreamState::Phase::open;
  encode_open_ack(out_for(frame_header_size), s->id);
  if (options_.stream_window > default_stream_window) {
    std::uint32_t extra = options_.stream_window - default_stream_window;
    encode_window(out_for(frame_header_size + 4), s->id, extra);
    s->recv_allowed += extra;
  }
  if (s->write_handler) {
    schedule(s);
  } else if (s->shutdown_handler) {
    do_shutdown(s, s->shutdown_handler.take());
  }
  flush();
}

void Session::do_reset(const std::shared_ptr<StreamState>& s, RstCode code, std::string reason, bool abandoned) {
  if (s->phase == StreamState::Phase::done) {
    if (abandoned) discard_buffer(s);
    return;
  }
  if (impl_->closed) return;
  if (s->phase == StreamState::Phase::opening) return;  // no handle exists yet
  encode_rst(out_for(frame_header_size + 4 + std::min(reason.size(), max_reason_size)), s->id, code, reason);
  s->reset_ec = asio::error::operation_aborted;
  fail_stream_ops(s, s->reset_ec);
  discard_buffer(s);
  finish_stream(s);
  flush();
}

void Session::fail_stream_ops(const std::shared_ptr<StreamState>& s, error_code ec) {
  // A read already filled completes with its bytes; the next one fails.
  if (s->read_handler && !s->read_posted) complete_io(s->read_handler, ec, 0);
  if (s->chunk_handler) complete_chunk(s, ec, {});
  if (s->write_handler) complete_io(s->write_handler, ec, 0);
  if (s->shutdown_handler) post_on(strand_, [h = std::move(s->shutdown_handler), ec]() mutable { h(ec); });
  s->write_bufs.clear();
}

void Session::finish_stream(const std::shared_ptr<StreamState>& s) {
  if (s->phase == StreamState::Phase::done) return;
  s->phase = StreamState::Phase::done;
  if (s->open_timer) s->open_timer->cancel();
  if (impl_->streams.erase(s->id)) active_streams_.fetch_sub(1, std::memory_order_relaxed);
  maybe_close_drained();
}

std::size_t Session::received_memory() const {
  std::size_t total = 0;
  for (const auto& [id, s] : impl_->streams) {
    // Each chunk: its allocation and the vector that owns it.
    for (const auto& c : s->chunks) total += c.capacity() + sizeof(c);
  }
  return total;
}

std::size_t Session::spare_memory() const {
  std::size_t total = impl_->spare_message.capacity();
  for (const auto& c : impl_->spare_chunks) total += c.capacity();
  return total;
}

void Session::maybe_close_drained() {
  auto& m = *impl_;
  if (m.closed || !(m.goaway_sent || m.peer_goaway) || !m.streams.empty()) return;
  // Close only once everything queued (the last DATA and FIN) is on the wire.
  if (m.writing || !m.queue.empty()) {
    m.close_when_flushed = true;
    return;
  }
  fail("drained after GOAWAY", false);
}

// ---------------------------------------------------------------------------
// Outbound

std::vector<std::uint8_t>& Session::out_for(std::size_t frame_size) {
  auto& m = *impl_;
  if (m.queue.empty() || m.queue.back().size() + frame_size > max_message_size) {
    const std::size_t reserve = std::min<std::size_t>(std::max<std::size_t>(frame_size, 16 * 1024), max_message_size);
    if (m.spare_message.capacity() >= reserve) {
      m.queue.push_back(std::move(m.spare_message));
      m.spare_message = std::vector<std::uint8_t>();
    } else {
      m.queue.emplace_back();
      m.queue.back().reserve(reserve);
    }
    ++m.messages_queued;
  }
  m.queued_bytes += frame_size;
  return m.queue.back();
}

void Session::flush() {
  auto& m = *impl_;
  if (m.writing || m.closed) return;
  std::vector<std::uint8_t> message;
  if (!m.queue.empty()) {
    message = std::move(m.queue.front());
    m.queue.pop_front();
    if (m.spare_message.capacity() == 0) {
      m.spare_message = std::move(m.write_buf);  // not in flight: flush runs only when idle
      m.spare_message.clear();
    }
  } else {
    message = std::move(m.write_buf);  // keeps its capacity
    message.clear();
  }
  // Every control frame goes before DATA not yet taken: DATA joins only the
  // last queued message, or one of its own.
  if (m.queue.empty() && (!m.brief.empty() || !m.ready.empty())) {
    const bool own = message.empty();
    if (own) ++m.messages_queued;
    const std::size_t before = message.size();
    fill_data(message);
    m.queued_bytes += message.size() - before;
    if (own && message.empty()) --m.messages_queued;
  }
  if (message.empty()) {
    m.write_buf = std::move(message);
    return;
  }
  m.write_buf = std::move(message);
  m.writing = true;
  channel_->async_write_message(asio::buffer(m.write_buf), [self = shared_from_this()](error_code ec) { self->on_write(ec); });
}

void Session::write_final_message() {
  auto& m = *impl_;
  m.write_buf = std::move(m.final_message);
  m.final_message.clear();
  m.writing = true;
  channel_->async_write_message(asio::buffer(m.write_buf), [self = shared_from_this()](error_code) {
    self->impl_->writing = false;
    self->close_channel();
  });
}

void Session::close_channel() {
  auto& m = *impl_;
  if (m.channel_closed) return;
  m.channel_closed = true;
  m.ping_timer->cancel();
  channel_->close(m.close_reason.rfind("protocol error", 0) == 0 ? 1002 : 1000, m.close_reason);
}

void Session::on_write(error_code ec) {
  {
    EventScope event(impl_->event_depth);
    handle_written(ec);
  }
  run_completions();
}

void Session::handle_written(error_code ec) {
  auto& m = *impl_;
  m.writing = false;
  ++m.messages_written;
  m.queued_bytes -= m.write_buf.size();
  m.write_buf.clear();
  if (m.closed) {
    if (!m.final_message.empty()) write_final_message();
    return;
  }
  if (ec) {
    fail("transport: " + ec.message(), false);
    return;
  }
  flush();
  if (m.close_when_flushed && !m.writing && m.queue.empty()) fail("drained after GOAWAY", false);
}

void Session::on_ping_timer(error_code ec) {
  auto& m = *impl_;
  if (ec || m.closed) return;
  if (!m.data_since_tick) {
    m.spare_chunks.clear();
    m.spare_message = std::vector<std::uint8_t>();
    if (!m.writing) m.write_buf = std::vector<std::uint8_t>();  // else it would become the spare
  }
  m.data_since_tick = false;
  auto idle = options_.clock->now() - m.last_rx;
  if (idle > options_.idle_timeout) {
    encode_goaway(out_for(frame_header_size + 4 + 32), GoawayCode::keepalive_timeout, "keepalive timeout");
    flush();
    fail("keepalive timeout: nothing received for " +
             std::to_string(std::chrono::duration_cast<std::chrono::seconds>(idle).count()) + " s",
         false);
    return;
  }
  std::array<std::uint8_t, 8> opaque{};
  ++m.ping_counter;
  for (int i = 0; i < 8; ++i) opaque[i] = static_cast<std::uint8_t>(m.ping_counter >> (56 - 8 * i));
  encode_ping(out_for(frame_header_size + 8), FrameType::ping, opaque);
  flush();
  m.ping_timer->async_wait_for(options_.ping_interval, [self = shared_from_this()](error_code e) { self->on_ping_timer(e); });
}

void Session::fail(std::string reason, bool protocol) {
  auto& m = *impl_;
  if (m.closed) return;
  if (protocol) {
    logger_->warn("{}: closing tunnel: {}", options_.name, reason);
  } else if (reason.rfind("drained", 0) == 0) {
    logger_->debug("{}: closing tunnel: {}", options_.name, reason);
  } else {
    logger_->info("{}: closing tunnel: {}", options_.name, reason);
  }
  m.closed = true;
  m.close_reason = reason;
  closed_flag_.store(true, std::memory_order_relaxed);
  update_usable();
  m.ping_timer->cancel();
  m.queue.clear();
  m.spare_chunks.clear();
  m.spare_message = std::vector<std::uint8_t>();
  m.queued_bytes = m.writing ? m.write_buf.size() : 0;
  if (protocol) {
    encode_goaway(m.final_message, GoawayCode::protocol_error, reason);
    if (!m.writing) write_final_message();
    // Bounded: a peer that does not read gets its socket closed anyway.
    m.ping_timer->async_wait_for(std::chrono::seconds(5), [self = shared_from_this()](error_code ec) {
      if (!ec) self->close_channel();
    });
  } else {
    close_channel();
  }

  auto streams = std::move(m.streams);
  m.streams.clear();
  active_streams_.store(0, std::memory_order_relaxed);
  for (auto& [id, s] : streams) {
    if (s->open_timer) s->open_timer->cancel();
    if (s->phase == StreamState::Phase::opening) {
      auto cb = std::move(s->open_cb);
      s->pending_handle.reset();
      post_on(strand_, [cb = std::move(cb), r = "tunnel closed: " + reason]() mutable {
        cb(asio::error::connection_aborted, nullptr, std::move(r));
      });
    } else {
      s->reset_ec = asio::error::connection_reset;
      fail_stream_ops(s, s->reset_ec);
    }
    s->phase = StreamState::Phase::done;
  }
  for (auto* ring : {&m.brief, &m.ready}) {
    for (auto& s : *ring) s->ready = false;
    ring->clear();
  }
  if (auto cb = std::move(m.renew_cb)) {
    m.renew_cb = nullptr;
    post_on(strand_, [cb = std::move(cb), r = "tunnel closed: " + reason]() mutable { cb(asio::error::not_connected, std::move(r)); });
  }
  if (auto h = std::move(closed_handler_)) {
    closed_handler_ = nullptr;
    h(reason);
  }
  incoming_handler_ = nullptr;
  goaway_handler_ = nullptr;
  renew_handler_ = nullptr;
}

}  // namespace clusterconnect::tunnel
