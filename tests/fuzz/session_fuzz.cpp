// libFuzzer target: a whole mux session, driven through its seams (a message
// channel and a clock that moves only when told), with the input as a script
// of peer messages, clock steps and user calls. Whatever the peer sends:
//   - nothing crashes and sanitizers stay quiet;
//   - every message the session writes is a sequence of well-formed frames;
//   - received bytes held stay within the windows the session advertised;
//   - every handler the user gave the session runs exactly once, at the
//     latest when the session is closed (nothing is lost, nothing hangs);
//   - the session reports its end once.

#include <cstdint>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>

#include "fuzz_input.hpp"
#include "protocol/session.hpp"

using namespace clusterconnect;
using namespace clusterconnect::tunnel;

namespace {

[[noreturn]] void broken(const char* what) {
  std::fprintf(stderr, "session_fuzz: invariant broken: %s\n", what);
  std::abort();
}

// What the user side has asked of the session and not yet been answered.
struct Ledger {
  std::size_t issued = 0;
  std::size_t answered = 0;
  void answer() {
    if (++answered > issued) broken("a handler ran twice");
  }
};

struct Channel {
  asio::any_io_executor ex;
  MessageChannel::ReadHandler pending_read;
  std::deque<std::vector<std::uint8_t>> inbox;
  std::deque<DoneHandler> pending_writes;
  bool closed = false;
  std::size_t written = 0;

  // The peer takes (or, with an error, drops) the oldest message in flight.
  void finish_write(error_code ec) {
    if (pending_writes.empty()) return;
    asio::post(ex, [h = std::move(pending_writes.front()), ec]() mutable { h(ec); });
    pending_writes.pop_front();
  }
};

void check_written(std::span<const std::uint8_t> message) {
  if (message.empty()) broken("an empty message was written");
  if (message.size() > max_message_size) broken("a message over the size limit was written");
  std::size_t off = 0;
  while (off < message.size()) {
    const DecodeResult r = decode_frame(message.subspan(off));
    if (r.error != DecodeError::none) broken("the session wrote a malformed frame");
    off += r.consumed;
  }
}

class FuzzChannel final : public MessageChannel {
 public:
  explicit FuzzChannel(std::shared_ptr<Channel> c) : c_(std::move(c)) {}

  void async_read_message(ReadHandler handler) override {
    if (c_->pending_read) broken("two message reads at once");
    if (c_->closed) {
      asio::post(c_->ex, [h = std::move(handler)]() mutable { h(asio::error::operation_aborted, {}); });
      return;
    }
    c_->pending_read = std::move(handler);
    asio::post(c_->ex, [c = c_] { pump(c); });
  }

  void async_write_message(asio::const_buffer message, DoneHandler handler) override {
    if (!c_->pending_writes.empty()) broken("two message writes at once");
    check_written({static_cast<const std::uint8_t*>(message.data()), message.size()});
    ++c_->written;
    if (c_->closed) {
      asio::post(c_->ex, [h = std::move(handler)]() mutable { h(asio::error::operation_aborted); });
      return;
    }
    c_->pending_writes.push_back(std::move(handler));
  }

  void close(std::uint16_t, std::string) noexcept override {
    if (c_->closed) return;
    c_->closed = true;
    if (auto h = std::move(c_->pending_read))
      asio::post(c_->ex, [h = std::move(h)]() mutable { h(asio::error::operation_aborted, {}); });
    while (!c_->pending_writes.empty()) c_->finish_write(asio::error::operation_aborted);
  }

  // Hands the oldest received message to the waiting read, on the strand.
  static void pump(const std::shared_ptr<Channel>& c) {
    if (!c->pending_read || c->inbox.empty() || c->closed) return;
    auto message = std::move(c->inbox.front());
    c->inbox.pop_front();
    auto h = std::move(c->pending_read);
    h({}, std::span<const std::uint8_t>(message.data(), message.size()));
  }

 private:
  std::shared_ptr<Channel> c_;
};

// Time moves only when the script says so.
class FuzzClock final : public SessionClock, public std::enable_shared_from_this<FuzzClock> {
 public:
  time_point now() const override { return now_; }
  std::unique_ptr<Timer> make_timer(asio::any_io_executor ex) override {
    return std::make_unique<FuzzTimer>(shared_from_this(), std::move(ex));
  }
  void advance(duration d) {
    now_ += d;
    for (auto it = waits_.begin(); it != waits_.end();) {
      if (it->second.due <= now_) {
        asio::post(it->second.ex, [h = std::move(it->second.handler)]() mutable { h({}); });
        it = waits_.erase(it);
      } else {
        ++it;
      }
    }
  }

 private:
  struct Wait {
    asio::any_io_executor ex;
    time_point due;
    WaitHandler handler;
  };
  class FuzzTimer final : public Timer {
   public:
    FuzzTimer(std::shared_ptr<FuzzClock> clock, asio::any_io_executor ex)
        : clock_(std::move(clock)), ex_(std::move(ex)) {}
    ~FuzzTimer() override { clock_->waits_.erase(this); }
    void async_wait_for(duration d, WaitHandler handler) override {
      cancel();
      clock_->waits_.emplace(this, Wait{ex_, clock_->now_ + d, std::move(handler)});
    }
    void cancel() noexcept override {
      auto it = clock_->waits_.find(this);
      if (it == clock_->waits_.end()) return;
      asio::post(ex_, [h = std::move(it->second.handler)]() mutable { h(asio::error::operation_aborted); });
      clock_->waits_.erase(it);
    }

   private:
    std::shared_ptr<FuzzClock> clock_;
    asio::any_io_executor ex_;
  };

  time_point now_{};
  std::map<const Timer*, Wait> waits_;
};

// A stream as the user side holds it, with the buffers its operations use.
struct Handle {
  TunnelStreamPtr stream;
  bool incoming = false;
  bool reading = false;
  bool writing = false;
  bool shutting = false;
  std::vector<std::uint8_t> read_buf;
  std::vector<std::uint8_t> write_buf;
};

constexpr std::uint32_t stream_window = 64 * 1024;
constexpr std::uint32_t tunnel_window = 256 * 1024;

std::vector<std::uint8_t> peer_frame(fuzz::Input& in) {
  std::vector<std::uint8_t> out;
  const std::uint8_t kind = in.byte() % 10;
  const StreamId id = in.byte() % 16;
  switch (kind) {
    case 0:
      encode_open(out, id, R"({"cluster":"c"})");
      break;
    case 1:
      encode_open_ack(out, id);
      break;
    case 2: {
      const std::size_t n = 1 + in.u16() % 8192;
      std::vector<std::uint8_t> payload(n, 0x5a);
      encode_data(out, id, payload);
      break;
    }
    case 3:
      encode_window(out, id, 1 + in.u32() % max_window);
      break;
    case 4:
      encode_fin(out, id);
      break;
    case 5:
      encode_rst(out, id, static_cast<RstCode>(1 + in.byte() % 7), "r");
      break;
    case 6: {
      const std::array<std::uint8_t, 8> opaque{1, 2, 3, 4, 5, 6, 7, in.byte()};
      encode_ping(out, in.byte() % 2 ? FrameType::ping : FrameType::pong, opaque);
      break;
    }
    case 7:
      encode_goaway(out, static_cast<GoawayCode>(in.byte() % 3), "g");
      break;
    case 8:
      encode_renew(out, std::string(1 + in.byte() % 64, 't'));
      break;
    default:
      encode_renew_ack(out, in.byte() % 2, "a");
      break;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  asio::io_context io(1);
  auto strand = asio::make_strand(io);
  auto channel = std::make_shared<Channel>();
  channel->ex = strand;
  auto clock = std::make_shared<FuzzClock>();
  auto logger = std::make_shared<spdlog::logger>("session-fuzz", std::make_shared<spdlog::sinks::null_sink_st>());

  const std::uint8_t setup = in.byte();
  SessionOptions options;
  options.role = setup & 1 ? Role::acceptor : Role::dialer;
  options.stream_window = stream_window;
  options.tunnel_window = tunnel_window;
  options.max_streams = 8;
  options.send_queue_limit = 64 * 1024;
  options.control_queue_limit = 16 * 1024;
  options.send_quantum = 4 * 1024;
  options.data_message_budget = 32 * 1024;
  options.peer_accepts_renew = (setup & 2) != 0;
  options.clock = clock;
  auto session = Session::create(strand, std::make_unique<FuzzChannel>(channel), options, logger);

  Ledger ledger;
  std::vector<std::shared_ptr<Handle>> handles;
  int closed_reports = 0;
  const bool auto_accept = (setup & 4) != 0;
  session->on_incoming([&](TunnelStreamPtr s, Metadata) {
    auto h = std::make_shared<Handle>();
    h->stream = std::move(s);
    h->incoming = true;
    if (auto_accept) h->stream->accept();
    handles.push_back(std::move(h));
  });
  session->on_closed([&](const std::string&) { ++closed_reports; });
  session->on_renew([](const std::string& token) { return RenewVerdict{token.size() % 2 ? 0u : 403u, "no"}; });
  session->start();

  auto settle = [&] {
    for (int i = 0; i < 100000 && io.poll() > 0; ++i) {
    }
    io.restart();
  };
  auto pick = [&]() -> std::shared_ptr<Handle> {
    const std::uint8_t k = in.byte();
    if (handles.empty()) return nullptr;
    return handles[k % handles.size()];
  };
  auto deliver = [&](std::vector<std::uint8_t> message) {
    if (message.empty() || message.size() > max_message_size) return;
    channel->inbox.push_back(std::move(message));
    asio::post(channel->ex, [c = channel] { FuzzChannel::pump(c); });
  };

  settle();
  for (int step = 0; step < 4096 && !in.done(); ++step) {
    switch (in.byte() % 14) {
      case 0: {  // raw bytes from the peer, most likely malformed
        auto raw = in.bytes(in.u16() % 2048);
        deliver(std::vector<std::uint8_t>(raw.begin(), raw.end()));
        break;
      }
      case 1: {  // well-formed frames from the peer, one message
        std::vector<std::uint8_t> message;
        for (int n = 1 + in.byte() % 4; n > 0; --n) {
          auto f = peer_frame(in);
          message.insert(message.end(), f.begin(), f.end());
        }
        deliver(std::move(message));
        break;
      }
      case 2:  // the peer takes the message in flight
        channel->finish_write({});
        break;
      case 3:
        clock->advance(std::chrono::seconds(in.byte() % 64));
        break;
      case 4: {
        ++ledger.issued;
        session->async_open({{"cluster", "c"}}, [&](error_code ec, TunnelStreamPtr s, std::string) {
          ledger.answer();
          if (!ec && s) {
            auto h = std::make_shared<Handle>();
            h->stream = std::move(s);
            handles.push_back(std::move(h));
          }
        });
        break;
      }
      case 5: {
        auto h = pick();
        if (!h || h->reading) break;
        h->reading = true;
        h->read_buf.assign(1 + in.u16() % (2 * stream_window), 0);
        ++ledger.issued;
        if (in.byte() % 2) {
          const std::size_t cap = h->read_buf.size();
          h->stream->async_read_some(asio::buffer(h->read_buf), [&, h, cap](error_code, std::size_t n) {
            if (n > cap) broken("a read reported more bytes than its buffer holds");
            h->reading = false;
            ledger.answer();
          });
        } else {
          const std::size_t max = h->read_buf.size();
          h->stream->async_read_chunk(max, [&, h, max](error_code, std::vector<std::uint8_t> chunk) {
            if (chunk.size() > max) broken("a chunk read handed over more bytes than asked for");
            h->reading = false;
            ledger.answer();
          });
        }
        break;
      }
      case 6: {
        auto h = pick();
        if (!h || h->writing || h->shutting) break;
        h->writing = true;
        h->write_buf.assign(1 + in.u16() % (4 * stream_window), 0xa5);
        const std::size_t len = h->write_buf.size();
        ++ledger.issued;
        const asio::const_buffer b(h->write_buf.data(), len);
        h->stream->async_write_some(std::span<const asio::const_buffer>(&b, 1), [&, h, len](error_code, std::size_t n) {
          if (n > len) broken("a write reported more bytes than it was given");
          h->writing = false;
          ledger.answer();
        });
        break;
      }
      case 7: {
        auto h = pick();
        if (!h || h->shutting || h->writing) break;
        h->shutting = true;
        ++ledger.issued;
        h->stream->async_shutdown_send([&, h](error_code) { ledger.answer(); });
        break;
      }
      case 8:
        if (auto h = pick()) h->stream->reset("fuzz");
        break;
      case 9:
        if (auto h = pick(); h && h->incoming) h->stream->accept();
        break;
      case 10:  // the user lets go of a stream (its operations still answer)
        if (!handles.empty()) handles.erase(handles.begin() + in.byte() % handles.size());
        break;
      case 11:
        session->goaway("fuzz");
        break;
      case 12:
        if (options.role == Role::dialer) {
          ++ledger.issued;
          session->async_renew(std::string(1 + in.byte() % 32, 'x'), [&](error_code, std::string) { ledger.answer(); });
        }
        break;
      default:
        session->close("fuzz");
        break;
    }
    settle();
    if (session->received_memory() > 4 * static_cast<std::size_t>(tunnel_window) + 64 * 1024)
      broken("received bytes held beyond the advertised windows");
  }

  // The end: the tunnel closes; every handler must have run by then.
  session->close("end of input");
  settle();
  handles.clear();
  settle();
  for (int i = 0; i < 8 && !channel->pending_writes.empty(); ++i) {
    channel->finish_write(asio::error::operation_aborted);
    settle();
  }
  if (ledger.answered != ledger.issued) broken("a handler given to the session never ran");
  if (closed_reports != 1) broken("the session did not report its end exactly once");
  session.reset();
  settle();
  return 0;
}
