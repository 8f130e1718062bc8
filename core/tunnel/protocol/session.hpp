#pragma once
// The multiplexing session of the tunnel protocol (docs/tunnel-protocol.md
// §3-§7), independent of the transport: it reads and writes whole messages
// through a MessageChannel and runs all its state on one strand. Each stream
// is a clusterconnect::Stream with credit-based backpressure.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "clusterconnect/stream.hpp"
#include "frame.hpp"

namespace spdlog {
class logger;
}

namespace clusterconnect::tunnel {

// One WebSocket (or a test double). All calls are made on the session's strand.
class MessageChannel {
 public:
  using ReadHandler = UniqueFunction<void(error_code, std::span<const std::uint8_t>)>;
  virtual ~MessageChannel() = default;
  // Reads one whole binary message; the bytes are valid during the handler
  // only. A text message completes with text_message_error.
  virtual void async_read_message(ReadHandler handler) = 0;
  // Writes one binary message; `message` stays valid until the handler runs.
  virtual void async_write_message(asio::const_buffer message, DoneHandler handler) = 0;
  // Closes the transport (best effort, bounded in time); idempotent.
  virtual void close(std::uint16_t ws_code, std::string reason) noexcept = 0;
};

// What a channel reports for a text message (a protocol error, §1).
inline error_code text_message_error() { return make_error_code(boost::system::errc::bad_message); }

enum class Role { dialer, acceptor };

// The time the session's timers (ping, idle, open) run on. The default is the
// steady clock; a test passes a clock it advances by hand, so timeouts happen
// without waiting for them.
class SessionClock {
 public:
  using duration = std::chrono::steady_clock::duration;
  using time_point = std::chrono::steady_clock::time_point;
  using WaitHandler = DoneHandler;
  class Timer {
   public:
    virtual ~Timer() = default;
    // Calls `handler` on the timer's executor once the clock has advanced by
    // `d`, with operation_aborted when cancelled, re-armed or destroyed first.
    virtual void async_wait_for(duration d, WaitHandler handler) = 0;
    virtual void cancel() noexcept = 0;
  };
  virtual ~SessionClock() = default;
  virtual time_point now() const = 0;
  virtual std::unique_ptr<Timer> make_timer(asio::any_io_executor ex) = 0;
};

// The steady clock, with asio timers.
std::shared_ptr<SessionClock> steady_session_clock();

struct SessionOptions {
  Role role = Role::dialer;
  std::string name = "tunnel";  // for logs
  std::uint32_t stream_window = default_stream_window;
  std::uint32_t tunnel_window = default_tunnel_window;
  std::size_t max_streams = 4096;
  std::size_t send_queue_limit = 1024 * 1024;
  // What may be queued beyond send_queue_limit in answer to the peer (PONG,
  // RST, WINDOW, RENEW|ACK). A peer that sends while never reading would
  // grow the queue without bound: past this the tunnel is closed.
  std::size_t control_queue_limit = 256 * 1024;
  // Fair sending: a write that fits in one turn of send_quantum bytes goes
  // whole before the others, which take turns of send_quantum bytes (deficit
  // round-robin). A message is built only when the transport is free, with
  // every queued control frame first and then DATA up to about
  // data_message_budget (at most send_queue_limit), so a small request waits
  // behind no bulk stream's turn or backlog, only the message in flight.
  std::size_t send_quantum = 16 * 1024;
  std::size_t data_message_budget = 128 * 1024;
  std::chrono::milliseconds ping_interval{15000};
  std::chrono::milliseconds idle_timeout{45000};
  std::chrono::milliseconds open_timeout{15000};
  // Dialler: the peer announced at the handshake that it takes RENEW (§1);
  // without it async_renew fails with operation_not_supported.
  bool peer_accepts_renew = false;
  // Null: the steady clock.
  std::shared_ptr<SessionClock> clock;
};

// The acceptor's answer to a RENEW: code 0 = accepted, else refused with a
// reason (sent back in RENEW|ACK; never contains the token).
struct RenewVerdict {
  std::uint32_t code = 0;
  std::string reason;
};

class Session;
struct StreamState;

// A stream of a session, as the rest of the program sees it. Dropping the
// last reference to an unfinished stream resets it.
class TunnelStream final : public Stream, public std::enable_shared_from_this<TunnelStream> {
 public:
  TunnelStream(std::shared_ptr<Session> session, std::shared_ptr<StreamState> state);
  ~TunnelStream() override;

  asio::any_io_executor get_executor() override;
  void async_read_some(asio::mutable_buffer buffer, IoHandler handler) override;
  void async_write_some(std::span<const asio::const_buffer> buffers, IoHandler handler) override;
  void async_shutdown_send(DoneHandler handler) override;
  void reset(std::string_view reason) noexcept override;
  std::string describe() const override;
  // Not once the session may open no more streams (GOAWAY either way, closed).
  bool reusable() const noexcept override;

  // Like async_read_some, but hands over up to `max` received bytes as they
  // are held (moved, not copied, when a whole received frame fits): a caller
  // that forwards them needs no buffer of its own while the stream is idle.
  // Credit is returned as the bytes are taken, as for a read. `spent` gives
  // back a chunk an earlier read handed over, once its bytes are used: its
  // storage carries later ones, so a forwarder costs no allocation per chunk.
  using ChunkHandler = UniqueFunction<void(error_code, std::vector<std::uint8_t>)>;
  void async_read_chunk(std::size_t max, ChunkHandler handler, std::vector<std::uint8_t> spent = {});

  // For a stream the peer opened: answer OPEN|ACK. Until then the peer waits.
  void accept() noexcept;
  void reset(RstCode code, std::string_view reason) noexcept;
  StreamId id() const noexcept;
  const std::shared_ptr<Session>& session() const noexcept { return session_; }

 private:
  std::shared_ptr<Session> session_;
  std::shared_ptr<StreamState> state_;
};

using TunnelStreamPtr = std::shared_ptr<TunnelStream>;

class Session : public std::enable_shared_from_this<Session> {
 public:
  using OpenCallback = UniqueFunction<void(error_code, TunnelStreamPtr, std::string /*reason*/)>;
  // A stream the peer opened. Call accept() or reset() on it (now or later).
  using IncomingHandler = std::function<void(TunnelStreamPtr, Metadata)>;
  using EventHandler = std::function<void(const std::string& reason)>;
  // Acceptor: judges a token the dialler sent in RENEW.
  using RenewHandler = std::function<RenewVerdict(const std::string& token)>;
  // Dialler: the outcome of async_renew; `reason` is the peer's when refused.
  using RenewCallback = UniqueFunction<void(error_code, std::string /*reason*/)>;

  static std::shared_ptr<Session> create(asio::any_io_executor strand, std::unique_ptr<MessageChannel> channel,
                                         SessionOptions options, std::shared_ptr<spdlog::logger> logger);
  ~Session();

  // Handlers are set before start() and called on the strand.
  void on_incoming(IncomingHandler h) { incoming_handler_ = std::move(h); }
  void on_goaway(EventHandler h) { goaway_handler_ = std::move(h); }
  void on_closed(EventHandler h) { closed_handler_ = std::move(h); }
  // Without one, an acceptor refuses RENEW (code 501).
  void on_renew(RenewHandler h) { renew_handler_ = std::move(h); }

  void start();
  void async_open(Metadata metadata, OpenCallback callback);
  // Dialler: sends RENEW with a fresh token; completes on the peer's RENEW|ACK
  // with {} (accepted), access_denied + reason (refused), in_progress (one is
  // already outstanding), operation_not_supported (the peer did not announce
  // RENEW), or not_connected (the tunnel closed first).
  void async_renew(std::string token, RenewCallback callback);
  bool peer_accepts_renew() const noexcept { return options_.peer_accepts_renew; }
  // Sends GOAWAY: no new streams either way; closes once the streams are done.
  void goaway(std::string reason);
  // Closes the tunnel now; streams are reset.
  void close(std::string reason);

  asio::any_io_executor get_executor() const { return strand_; }
  const std::string& name() const noexcept { return options_.name; }
  // Safe from any thread (for routing decisions and metrics).
  std::size_t active_streams() const noexcept { return active_streams_.load(std::memory_order_relaxed); }
  bool usable() const noexcept { return usable_.load(std::memory_order_relaxed); }
  bool closed() const noexcept { return closed_flag_.load(std::memory_order_relaxed); }
  // On the strand: the memory holding received bytes not yet read, over all
  // streams (allocations and their bookkeeping, not only the payload).
  std::size_t received_memory() const;
  // On the strand: buffers kept empty for reuse while DATA flows (dropped at
  // the first ping tick of an idle tunnel).
  std::size_t spare_memory() const;

 private:
  friend class TunnelStream;
  Session(asio::any_io_executor strand, std::unique_ptr<MessageChannel> channel, SessionOptions options,
          std::shared_ptr<spdlog::logger> logger);

  // Stream operations, on the strand.
  void do_read(const std::shared_ptr<StreamState>& s, asio::mutable_buffer buffer, IoHandler handler);
  void do_read_chunk(const std::shared_ptr<StreamState>& s, std::size_t max, TunnelStream::ChunkHandler handler,
                     std::vector<std::uint8_t> spent);
  void do_write(const std::shared_ptr<StreamState>& s, std::span<const asio::const_buffer> buffers, IoHandler handler);
  void do_shutdown(const std::shared_ptr<StreamState>& s, DoneHandler handler);
  void do_reset(const std::shared_ptr<StreamState>& s, RstCode code, std::string reason, bool abandoned);
  void do_accept(const std::shared_ptr<StreamState>& s);

  // Inbound.
  void do_read_message();
  void on_message(error_code ec, std::span<const std::uint8_t> bytes);
  void handle_message(error_code ec, std::span<const std::uint8_t> bytes);
  bool on_frame(const Frame& f);  // false: protocol error already handled
  bool on_open(const Frame& f);
  bool on_data(const Frame& f);
  // Received bytes into a waiting read (none buffered before them); returns
  // those it had no room for.
  std::span<const std::uint8_t> deliver_direct(const std::shared_ptr<StreamState>& s,
                                               std::span<const std::uint8_t> bytes);
  void finish_direct_read(const std::shared_ptr<StreamState>& s);
  // A stream operation's completion: run at the end of the transport event
  // being handled (a message read or written), else posted. complete_io
  // takes the handler out of `handler`; complete_chunk the stream's chunk
  // handler.
  void complete_direct_read(const std::shared_ptr<StreamState>& s);
  void complete_io(IoHandler& handler, error_code ec, std::size_t n);
  void complete_chunk(const std::shared_ptr<StreamState>& s, error_code ec, std::vector<std::uint8_t> bytes);
  void run_completions();
  std::vector<std::uint8_t> take_chunk(std::size_t n);
  void recycle_chunk(std::vector<std::uint8_t>&& chunk);
  bool on_window(const Frame& f);
  bool on_fin(const Frame& f);
  bool on_rst(const Frame& f);
  bool on_renew(const Frame& f);
  bool protocol_error(std::string reason);

  // Outbound.
  std::vector<std::uint8_t>& out_for(std::size_t frame_size);
  void flush();
  void on_write(error_code ec);
  void handle_written(error_code ec);
  void write_final_message();
  void close_channel();
  void schedule(const std::shared_ptr<StreamState>& s);
  void fill_data(std::vector<std::uint8_t>& message);
  void complete_write(const std::shared_ptr<StreamState>& s);

  // Lifecycle.
  void on_ping_timer(error_code ec);
  void fail(std::string reason, bool protocol);
  void finish_stream(const std::shared_ptr<StreamState>& s);
  void complete_read(const std::shared_ptr<StreamState>& s);
  void complete_chunk_read(const std::shared_ptr<StreamState>& s);
  void consumed(const std::shared_ptr<StreamState>& s, std::size_t n);
  void discard_buffer(const std::shared_ptr<StreamState>& s);
  void fail_stream_ops(const std::shared_ptr<StreamState>& s, error_code ec);
  void maybe_close_drained();
  bool is_peer_id(StreamId id) const noexcept;
  void update_usable();

  struct Impl;
  std::unique_ptr<Impl> impl_;
  asio::any_io_executor strand_;
  std::unique_ptr<MessageChannel> channel_;
  SessionOptions options_;
  std::shared_ptr<spdlog::logger> logger_;
  IncomingHandler incoming_handler_;
  EventHandler goaway_handler_;
  EventHandler closed_handler_;
  RenewHandler renew_handler_;
  std::atomic<std::size_t> active_streams_{0};
  std::atomic<bool> usable_{false};
  std::atomic<bool> closed_flag_{false};
};

}  // namespace clusterconnect::tunnel
