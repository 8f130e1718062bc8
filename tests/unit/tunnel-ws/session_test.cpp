// The mux session over in-memory channels: flow control, half-close, reset,
// and protocol errors closing only the offending tunnel.

#include <catch2/catch.hpp>

#include <array>
#include <atomic>
#include <deque>
#include <map>
#include <future>
#include <mutex>
#include <sstream>
#include <thread>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "protocol/session.hpp"

using namespace clusterconnect;
using namespace clusterconnect::tunnel;
using namespace std::chrono_literals;

namespace {

// One end of an in-memory message pipe. Writes go to the peer (or to a
// capture list when there is none); the test can inject raw messages.
class MemoryChannel final : public MessageChannel {
 public:
  struct State {
    asio::any_io_executor ex;
    std::deque<std::vector<std::uint8_t>> inbox;
    ReadHandler pending;
    // Written on the strand, polled by the test thread.
    std::atomic<bool> closed{false};
    std::uint16_t close_code = 0;
    std::string close_reason;
    std::shared_ptr<State> peer;
    std::vector<std::vector<std::uint8_t>> captured;
    // A peer that never reads: writes are taken and never complete.
    bool stall_writes = false;
    std::vector<DoneHandler> stalled;
  };

  explicit MemoryChannel(std::shared_ptr<State> s) : s_(std::move(s)) {}

  static void deliver(const std::shared_ptr<State>& s, std::vector<std::uint8_t> msg) {
    asio::post(s->ex, [s, msg = std::move(msg)]() mutable {
      if (s->closed) return;
      s->inbox.push_back(std::move(msg));
      pump(s);
    });
  }

  void async_read_message(ReadHandler handler) override {
    s_->pending = std::move(handler);
    asio::post(s_->ex, [s = s_] { pump(s); });
  }
  void async_write_message(asio::const_buffer message, DoneHandler handler) override {
    if (s_->stall_writes) {
      s_->stalled.push_back(std::move(handler));
      return;
    }
    std::vector<std::uint8_t> copy(static_cast<const std::uint8_t*>(message.data()),
                                   static_cast<const std::uint8_t*>(message.data()) + message.size());
    if (s_->peer) deliver(s_->peer, std::move(copy));
    else s_->captured.push_back(std::move(copy));
    asio::post(s_->ex, [h = std::move(handler)]() mutable { h({}); });
  }
  // Drops the references that tie the two ends and the session together,
  // so nothing outlives the test.
  void close(std::uint16_t code, std::string reason) noexcept override {
    if (s_->closed) return;
    s_->closed = true;
    s_->close_code = code;
    s_->close_reason = reason;
    if (!s_->stalled.empty())
      asio::post(s_->ex, [h = std::move(s_->stalled)]() mutable {
        for (auto& d : h) d(asio::error::operation_aborted);
      });
    if (auto p = std::move(s_->peer)) asio::post(p->ex, [p] {
        p->closed = true;
        if (auto h = std::move(p->pending)) h(asio::error::eof, {});
      });
    if (auto h = std::move(s_->pending)) asio::post(s_->ex, [h = std::move(h)]() mutable { h(asio::error::operation_aborted, {}); });
  }

 private:
  static void pump(const std::shared_ptr<State>& s) {
    if (!s->pending || s->inbox.empty()) return;
    auto msg = std::move(s->inbox.front());
    s->inbox.pop_front();
    auto h = std::move(s->pending);
    h({}, std::span<const std::uint8_t>(msg.data(), msg.size()));
  }
  std::shared_ptr<State> s_;
};

// A session clock that moves only when the test advances it. Due waits run
// on their timers' executors; cancelled ones get operation_aborted.
class ManualClock final : public SessionClock, public std::enable_shared_from_this<ManualClock> {
 public:
  time_point now() const override {
    std::lock_guard lock(mu_);
    return now_;
  }
  std::unique_ptr<Timer> make_timer(asio::any_io_executor ex) override {
    return std::make_unique<ManualTimer>(shared_from_this(), std::move(ex));
  }
  // Moves time forward and runs what became due.
  void advance(duration d) {
    std::vector<std::pair<asio::any_io_executor, WaitHandler>> due;
    {
      std::lock_guard lock(mu_);
      now_ += d;
      for (auto it = waits_.begin(); it != waits_.end();) {
        if (it->second.due <= now_) {
          due.emplace_back(it->second.ex, std::move(it->second.handler));
          it = waits_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& [ex, h] : due) asio::post(ex, [h = std::move(h)]() mutable { h({}); });
  }
  // Waits armed and not yet due or cancelled.
  std::size_t armed() const {
    std::lock_guard lock(mu_);
    return waits_.size();
  }

 private:
  struct Wait {
    asio::any_io_executor ex;
    time_point due;
    WaitHandler handler;
  };
  class ManualTimer final : public Timer {
   public:
    ManualTimer(std::shared_ptr<ManualClock> clock, asio::any_io_executor ex) : clock_(std::move(clock)), ex_(std::move(ex)) {}
    // A wait still armed is dropped (its owner is going away).
    ~ManualTimer() override { auto dropped = take(); }
    void async_wait_for(duration d, WaitHandler handler) override {
      cancel();
      std::lock_guard lock(clock_->mu_);
      clock_->waits_.emplace(this, Wait{ex_, clock_->now_ + d, std::move(handler)});
    }
    void cancel() noexcept override {
      if (auto h = take()) asio::post(ex_, [h = std::move(h)]() mutable { h(asio::error::operation_aborted); });
    }

   private:
    WaitHandler take() noexcept {
      std::lock_guard lock(clock_->mu_);
      auto it = clock_->waits_.find(this);
      if (it == clock_->waits_.end()) return nullptr;
      auto h = std::move(it->second.handler);
      clock_->waits_.erase(it);
      return h;
    }

   public:

   private:
    std::shared_ptr<ManualClock> clock_;
    asio::any_io_executor ex_;
  };

  mutable std::mutex mu_;
  time_point now_{};
  std::map<const Timer*, Wait> waits_;
};

struct Env {
  Env() : work(io.get_executor()) {
    sink_stream = std::make_shared<std::ostringstream>();
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(*sink_stream);
    logger = std::make_shared<spdlog::logger>("session-test", sink);
    logger->set_level(spdlog::level::debug);
    thread = std::thread([this] { io.run(); });
  }
  // Lets the sessions' closing work finish (it breaks their reference
  // cycles), bounded in time.
  ~Env() {
    work.reset();
    for (int i = 0; i < 300 && !io.stopped(); ++i) std::this_thread::sleep_for(10ms);
    io.stop();
    thread.join();
  }
  std::string log() {
    logger->flush();
    return sink_stream->str();
  }

  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  std::shared_ptr<std::ostringstream> sink_stream;
  std::shared_ptr<spdlog::logger> logger;
  std::thread thread;
};

struct Pair {
  std::shared_ptr<Session> dialer, acceptor;
  std::promise<TunnelStreamPtr> accepted;
  ~Pair() {
    dialer->close("test over");
    acceptor->close("test over");
  }
};

std::unique_ptr<Pair> make_pair(Env& env, SessionOptions base = {}) {
  auto p = std::make_unique<Pair>();
  auto ex = asio::make_strand(env.io);
  auto a = std::make_shared<MemoryChannel::State>();
  auto b = std::make_shared<MemoryChannel::State>();
  a->ex = ex;
  b->ex = ex;
  a->peer = b;
  b->peer = a;
  SessionOptions d = base, c = base;
  d.role = Role::dialer;
  d.name = "dialer";
  c.role = Role::acceptor;
  c.name = "acceptor";
  p->dialer = Session::create(ex, std::make_unique<MemoryChannel>(a), d, env.logger);
  p->acceptor = Session::create(ex, std::make_unique<MemoryChannel>(b), c, env.logger);
  auto* raw = p.get();
  p->acceptor->on_incoming([raw](TunnelStreamPtr s, Metadata) {
    s->accept();
    raw->accepted.set_value(std::move(s));
  });
  p->dialer->start();
  p->acceptor->start();
  return p;
}

bool wait_for(const std::function<bool()>& pred) {
  for (int i = 0; i < 500; ++i) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

TunnelStreamPtr open(Session& s, Metadata md = {}) {
  std::promise<TunnelStreamPtr> p;
  s.async_open(std::move(md), [&](error_code ec, TunnelStreamPtr st, std::string reason) {
    INFO(reason);
    CHECK_FALSE(ec);
    p.set_value(st);
  });
  auto f = p.get_future();
  REQUIRE(f.wait_for(5s) == std::future_status::ready);
  return f.get();
}

// Helpers keep their promise and buffer alive in shared state: a stream may
// complete an operation after the helper gave up waiting.
std::pair<error_code, std::size_t> write(Stream& s, const std::vector<std::uint8_t>& data) {
  auto data_copy = std::make_shared<std::vector<std::uint8_t>>(data);
  auto p = std::make_shared<std::promise<std::pair<error_code, std::size_t>>>();
  auto f = p->get_future();
  asio::const_buffer b(data_copy->data(), data_copy->size());
  s.async_write_some(std::span<const asio::const_buffer>(&b, 1),
                     [p, data_copy](error_code ec, std::size_t n) { p->set_value({ec, n}); });
  if (f.wait_for(2s) != std::future_status::ready) return {asio::error::timed_out, 0};
  return f.get();
}

std::pair<error_code, std::string> read(Stream& s, std::size_t max = 1 << 20) {
  auto p = std::make_shared<std::promise<std::pair<error_code, std::string>>>();
  auto buf = std::make_shared<std::string>(max, '\0');
  auto f = p->get_future();
  s.async_read_some(asio::buffer(*buf), [p, buf](error_code ec, std::size_t n) { p->set_value({ec, buf->substr(0, n)}); });
  if (f.wait_for(2s) != std::future_status::ready) return {asio::error::timed_out, {}};
  return f.get();
}

// A dialer session fed raw bytes by the test.
struct Victim {
  std::shared_ptr<MemoryChannel::State> state = std::make_shared<MemoryChannel::State>();
  std::shared_ptr<Session> session;
  // Shared with the session's handler, which may run after the Victim is gone.
  std::shared_ptr<std::promise<std::string>> closed = std::make_shared<std::promise<std::string>>();
  // Streams the peer opened, when the victim keeps them (on the strand).
  std::shared_ptr<std::vector<TunnelStreamPtr>> kept = std::make_shared<std::vector<TunnelStreamPtr>>();
  Victim(Env& env, Role role = Role::dialer, SessionOptions o = {}, bool stall_writes = false, bool keep_streams = false) {
    state->ex = asio::make_strand(env.io);
    state->stall_writes = stall_writes;
    o.role = role;
    o.name = "victim";
    session = Session::create(state->ex, std::make_unique<MemoryChannel>(state), o, env.logger);
    session->on_incoming([kept = keep_streams ? kept : nullptr](TunnelStreamPtr s, Metadata) {
      s->accept();
      if (kept) kept->push_back(std::move(s));
    });
    session->on_closed([closed = closed](const std::string& r) { closed->set_value(r); });
    session->start();
  }
  ~Victim() {
    session->close("test over");
    asio::post(state->ex, [kept = kept] { kept->clear(); });
  }
  void inject(std::vector<std::uint8_t> m) { MemoryChannel::deliver(state, std::move(m)); }
  std::string wait_closed() {
    auto f = closed->get_future();
    if (f.wait_for(5s) != std::future_status::ready) return "(still open)";
    return f.get();
  }
};

}  // namespace

TEST_CASE("a stream carries bytes both ways with half-close", "[session]") {
  Env env;
  auto p = make_pair(env);
  auto c = open(*p->dialer, {{"k", "v"}});
  auto fa = p->accepted.get_future();
  REQUIRE(fa.wait_for(5s) == std::future_status::ready);
  auto a = fa.get();
  std::vector<std::uint8_t> hello{'h', 'e', 'l', 'l', 'o'};
  CHECK(write(*c, hello).second == 5);
  CHECK(read(*a).second == "hello");
  std::promise<error_code> shut;
  c->async_shutdown_send([&](error_code ec) { shut.set_value(ec); });
  CHECK_FALSE(shut.get_future().get());
  CHECK(read(*a).first == asio::error::eof);
  CHECK(write(*a, hello).second == 5);  // the other direction still works
  CHECK(read(*c).second == "hello");
}

TEST_CASE("a write completes only within the peer's credit", "[session]") {
  Env env;
  auto p = make_pair(env);
  auto c = open(*p->dialer);
  auto a = p->accepted.get_future().get();
  std::vector<std::uint8_t> big(default_stream_window + 100000, 7);
  auto [ec, n] = write(*c, big);
  REQUIRE_FALSE(ec);
  CHECK(n == default_stream_window);  // everything the window allows, no more
  // The next write is parked until the reader frees credit.
  auto more = std::make_shared<std::vector<std::uint8_t>>(10, 1);
  auto parked = std::make_shared<std::promise<std::size_t>>();
  auto parked_f = parked->get_future();
  asio::const_buffer mb(more->data(), more->size());
  c->async_write_some(std::span<const asio::const_buffer>(&mb, 1), [parked, more](error_code, std::size_t n) { parked->set_value(n); });
  CHECK(parked_f.wait_for(300ms) == std::future_status::timeout);
  std::size_t got = 0;
  while (got < default_stream_window + 10) {
    auto [rec, s] = read(*a);
    REQUIRE_FALSE(rec);
    got += s.size();
  }
  REQUIRE(parked_f.wait_for(2s) == std::future_status::ready);
  CHECK(parked_f.get() == 10);
  CHECK(got == default_stream_window + 10);
}

TEST_CASE("reset reaches the peer, a refused open carries the reason", "[session]") {
  Env env;
  auto p = make_pair(env);
  auto c = open(*p->dialer);
  auto a = p->accepted.get_future().get();
  a->reset(RstCode::cancel, "bye");
  CHECK(read(*c).first == asio::error::connection_reset);

  Victim v(env, Role::dialer);  // unrelated; keeps the test honest about independence
  auto p2 = make_pair(env);
  p2->acceptor->on_incoming([](TunnelStreamPtr s, Metadata) { s->reset(RstCode::unavailable, "no agent connected for cluster x"); });
  std::promise<std::pair<error_code, std::string>> pr;
  p2->dialer->async_open({}, [&](error_code ec, TunnelStreamPtr, std::string reason) { pr.set_value({ec, reason}); });
  auto [ec, reason] = pr.get_future().get();
  CHECK(ec == asio::error::connection_refused);
  CHECK(reason == "no agent connected for cluster x");
}

TEST_CASE("protocol errors close that tunnel with a logged reason, others live on", "[session]") {
  Env env;
  auto healthy = make_pair(env);
  std::vector<std::uint8_t> m;
  std::string expect;
  SECTION("duplicate stream id") {
    encode_open(m, 2, "{}");
    encode_open(m, 2, "{}");
    expect = "duplicate stream id 2";
  }
  SECTION("stream id reuse") {
    encode_open(m, 4, "{}");
    encode_rst(m, 4, RstCode::cancel, "");
    encode_open(m, 2, "{}");
    expect = "stream id reuse: 2";
  }
  SECTION("stream id of the wrong parity") {
    encode_open(m, 3, "{}");
    expect = "wrong parity";
  }
  SECTION("window overflow") {
    encode_window(m, 0, max_window);
    expect = "WINDOW overflow on the tunnel";
  }
  SECTION("data beyond the stream's credit") {
    encode_open(m, 2, "{}");
    std::vector<std::uint8_t> chunk(max_data_payload, 1);
    for (std::size_t sent = 0; sent < default_stream_window; sent += chunk.size()) encode_data(m, 2, chunk);
    encode_data(m, 2, std::vector<std::uint8_t>{1});
    expect = "DATA beyond the credit of stream 2";
  }
  SECTION("data for a stream never opened") {
    encode_data(m, 8, std::vector<std::uint8_t>{1});
    expect = "never opened";
  }
  SECTION("truncated frame") {
    encode_data(m, 2, std::vector<std::uint8_t>(100, 1));
    m.resize(m.size() - 1);
    expect = "truncated frame payload";
  }
  SECTION("unknown frame type") {
    encode_header(m, static_cast<FrameType>(42), 0, 1, 0);
    expect = "unknown frame type";
  }
  SECTION("oversize frame") {
    encode_header(m, FrameType::data, 0, 2, max_data_payload + 1);
    m.resize(m.size() + max_data_payload + 1);
    expect = "frame payload over the limit";
  }
  Victim v(env);
  v.inject(m);
  const std::string reason = v.wait_closed();
  CHECK_THAT(reason, Catch::Contains(expect));
  // The channel closes (1002) once the GOAWAY is written, on the session's strand.
  CHECK(wait_for([&] { return v.state->closed.load(); }));
  asio::post(v.state->ex, [] {});
  std::promise<std::uint16_t> code;
  asio::post(v.state->ex, [&] { code.set_value(v.state->close_code); });
  CHECK(code.get_future().get() == 1002);
  CHECK_THAT(env.log(), Catch::Contains("victim: closing tunnel: protocol error") && Catch::Contains(expect));
  // The session told the peer why (GOAWAY with protocol_error) before closing.
  bool goaway = false;
  std::promise<std::vector<std::vector<std::uint8_t>>> captured;
  asio::post(v.state->ex, [&] { captured.set_value(v.state->captured); });
  for (const auto& msg : captured.get_future().get()) {
    std::size_t off = 0;
    while (off < msg.size()) {
      auto r = decode_frame(std::span<const std::uint8_t>(msg).subspan(off));
      if (r.error != DecodeError::none) break;
      if (r.frame.type == FrameType::goaway && code_reason(r.frame).code == static_cast<std::uint32_t>(GoawayCode::protocol_error))
        goaway = true;
      off += r.consumed;
    }
  }
  CHECK(goaway);
  // Another tunnel in the same process is unaffected.
  auto c = open(*healthy->dialer);
  auto a = healthy->accepted.get_future().get();
  std::vector<std::uint8_t> x{'x'};
  CHECK(write(*c, x).second == 1);
  CHECK(read(*a).second == "x");
}

TEST_CASE("GOAWAY: no new streams, running ones finish", "[session]") {
  Env env;
  auto p = make_pair(env);
  auto c = open(*p->dialer);
  auto a = p->accepted.get_future().get();
  p->acceptor->goaway("shutting down");
  REQUIRE(wait_for([&] { return !p->dialer->usable(); }));
  std::promise<std::string> refused;
  p->dialer->async_open({}, [&](error_code, TunnelStreamPtr, std::string r) { refused.set_value(r); });
  CHECK(refused.get_future().get() == "tunnel is draining");
  std::vector<std::uint8_t> x{'x'};
  CHECK(write(*c, x).second == 1);
  CHECK(read(*a).second == "x");
}

namespace {

// Advances `clock` by one ping interval once the session has armed its ping
// timer again (each tick is one on_ping_timer run).
bool tick(ManualClock& clock, std::chrono::milliseconds interval) {
  if (!wait_for([&] { return clock.armed() > 0; })) return false;
  clock.advance(interval);
  return true;
}

}  // namespace

TEST_CASE("keepalive: a silent peer is closed after the idle timeout, not before", "[session]") {
  Env env;
  auto clock = std::make_shared<ManualClock>();
  auto state = std::make_shared<MemoryChannel::State>();
  state->ex = asio::make_strand(env.io);
  SessionOptions o;
  o.name = "silent";
  o.ping_interval = 15s;
  o.idle_timeout = 45s;
  o.clock = clock;
  auto s = Session::create(state->ex, std::make_unique<MemoryChannel>(state), o, env.logger);
  auto closed = std::make_shared<std::promise<std::string>>();
  s->on_closed([closed](const std::string& r) { closed->set_value(r); });
  s->start();
  auto f = closed->get_future();
  // 45 s of silence is the limit, not past it: pings go out, the tunnel stays.
  for (int i = 0; i < 3; ++i) REQUIRE(tick(*clock, o.ping_interval));
  REQUIRE(wait_for([&] { return clock->armed() > 0; }));  // the third tick ran and re-armed
  CHECK_FALSE(s->closed());
  CHECK(f.wait_for(0s) == std::future_status::timeout);
  // One more interval: 60 s without a byte.
  REQUIRE(tick(*clock, o.ping_interval));
  REQUIRE(f.wait_for(60s) == std::future_status::ready);
  CHECK_THAT(f.get(), Catch::Contains("keepalive timeout: nothing received for 60 s"));
  std::promise<std::vector<std::vector<std::uint8_t>>> captured;
  asio::post(state->ex, [&] { captured.set_value(state->captured); });
  std::size_t pings = 0;
  for (const auto& msg : captured.get_future().get())
    for (std::size_t off = 0; off < msg.size();) {
      auto r = decode_frame(std::span<const std::uint8_t>(msg.data() + off, msg.size() - off));
      if (r.error != DecodeError::none) break;
      if (r.frame.type == FrameType::ping && !(r.frame.flags & flag_ack)) ++pings;
      off += r.consumed;
    }
  CHECK(pings == 3);
}

TEST_CASE("keepalive: a peer that answers pings keeps the tunnel however long it is idle", "[session]") {
  Env env;
  auto clock = std::make_shared<ManualClock>();
  SessionOptions o;
  o.ping_interval = 15s;
  o.idle_timeout = 45s;
  o.clock = clock;
  auto p = make_pair(env, o);
  // Ten minutes of virtual time. Before each step both sides have re-armed
  // and the strand has delivered what the last step sent (each side's ping
  // reaches the other, which counts as hearing from it).
  auto settle = [&] {
    for (int round = 0; round < 2; ++round) {
      std::promise<void> done;
      asio::post(p->dialer->get_executor(), [&] { done.set_value(); });
      done.get_future().wait();
    }
  };
  for (int i = 0; i < 40; ++i) {
    REQUIRE(wait_for([&] { return clock->armed() == 2; }));
    settle();
    clock->advance(o.ping_interval);
  }
  REQUIRE(wait_for([&] { return clock->armed() == 2; }));
  CHECK_FALSE(p->dialer->closed());
  CHECK_FALSE(p->acceptor->closed());
  auto c = open(*p->dialer);
  auto a = p->accepted.get_future().get();
  std::vector<std::uint8_t> x{'x'};
  CHECK(write(*c, x).second == 1);
  CHECK(read(*a).second == "x");
}

TEST_CASE("an open the peer never answers fails after the open timeout", "[session]") {
  Env env;
  auto clock = std::make_shared<ManualClock>();
  SessionOptions o;
  o.open_timeout = 15s;
  o.ping_interval = 1h;  // out of the way
  o.clock = clock;
  auto p = make_pair(env, o);
  std::promise<void> seen;
  p->acceptor->on_incoming([&seen, held = std::make_shared<std::vector<TunnelStreamPtr>>()](TunnelStreamPtr s, Metadata) {
    held->push_back(std::move(s));  // neither accepted nor reset
    seen.set_value();
  });
  auto result = std::make_shared<std::promise<std::pair<error_code, std::string>>>();
  p->dialer->async_open({}, [result](error_code ec, TunnelStreamPtr, std::string reason) { result->set_value({ec, reason}); });
  auto f = result->get_future();
  REQUIRE(seen.get_future().wait_for(60s) == std::future_status::ready);
  // Two ping timers plus the open timer are armed.
  REQUIRE(wait_for([&] { return clock->armed() == 3; }));
  clock->advance(o.open_timeout - 1ms);
  CHECK(f.wait_for(0s) == std::future_status::timeout);
  clock->advance(1ms);
  REQUIRE(f.wait_for(60s) == std::future_status::ready);
  auto [ec, reason] = f.get();
  CHECK(ec == asio::error::timed_out);
  CHECK(reason == "open timed out");
}

namespace {

std::pair<error_code, std::string> renew(Session& s, std::string token) {
  auto p = std::make_shared<std::promise<std::pair<error_code, std::string>>>();
  auto f = p->get_future();
  s.async_renew(std::move(token), [p](error_code ec, std::string reason) { p->set_value({ec, std::move(reason)}); });
  if (f.wait_for(5s) != std::future_status::ready) return {asio::error::timed_out, "test: renew did not complete"};
  return f.get();
}

}  // namespace

TEST_CASE("RENEW: the acceptor judges the token, the dialler learns the verdict, streams go on", "[session][renew]") {
  Env env;
  SessionOptions o;
  o.peer_accepts_renew = true;
  auto p = make_pair(env, o);
  std::vector<std::string> seen;
  std::mutex mutex;
  p->acceptor->on_renew([&](const std::string& token) -> RenewVerdict {
    std::lock_guard lock(mutex);
    seen.push_back(token);
    if (token == "good") return {};
    return {403, "token is not valid for this path"};
  });
  auto c = open(*p->dialer);
  auto a = p->accepted.get_future().get();

  auto ok = renew(*p->dialer, "good");
  CHECK_FALSE(ok.first);
  auto refused = renew(*p->dialer, "bad");
  CHECK(refused.first == asio::error::access_denied);
  CHECK(refused.second == "token is not valid for this path");
  {
    std::lock_guard lock(mutex);
    CHECK(seen == std::vector<std::string>{"good", "bad"});
  }
  // Neither outcome touches the tunnel or its streams.
  CHECK(p->dialer->usable());
  CHECK(p->acceptor->usable());
  std::vector<std::uint8_t> x{'x'};
  CHECK(write(*c, x).second == 1);
  CHECK(read(*a).second == "x");
  CHECK(write(*a, x).second == 1);
  CHECK(read(*c).second == "x");
  // Bounded input: a token over 4 KiB is not sent.
  CHECK(renew(*p->dialer, std::string(max_token_size + 1, 't')).first == asio::error::message_size);
  CHECK(renew(*p->dialer, "").first == asio::error::message_size);
}

TEST_CASE("RENEW: without a handler the acceptor refuses, without the peer announcing it the dialler does not send",
          "[session][renew]") {
  Env env;
  SECTION("no handler: refused with 501") {
    SessionOptions o;
    o.peer_accepts_renew = true;
    auto p = make_pair(env, o);
    auto r = renew(*p->dialer, "token");
    CHECK(r.first == asio::error::access_denied);
    CHECK_THAT(r.second, Catch::Contains("does not take token renewals"));
    CHECK(p->dialer->usable());
  }
  SECTION("peer did not announce RENEW") {
    auto p = make_pair(env);
    CHECK(renew(*p->dialer, "token").first == asio::error::operation_not_supported);
    CHECK(renew(*p->acceptor, "token").first == asio::error::operation_not_supported);
  }
}

TEST_CASE("RENEW: one in flight at a time, a closing tunnel fails it", "[session][renew]") {
  Env env;
  auto state = std::make_shared<MemoryChannel::State>();  // no peer: nothing answers
  state->ex = asio::make_strand(env.io);
  SessionOptions o;
  o.name = "lonely";
  o.peer_accepts_renew = true;
  auto s = Session::create(state->ex, std::make_unique<MemoryChannel>(state), o, env.logger);
  s->start();
  auto first = std::make_shared<std::promise<std::pair<error_code, std::string>>>();
  s->async_renew("one", [first](error_code ec, std::string r) { first->set_value({ec, std::move(r)}); });
  CHECK(renew(*s, "two").first == asio::error::in_progress);
  s->close("test over");
  auto f = first->get_future();
  REQUIRE(f.wait_for(5s) == std::future_status::ready);
  CHECK(f.get().first == asio::error::not_connected);
  // What went out: one RENEW on stream 0 carrying the token.
  std::promise<std::vector<std::vector<std::uint8_t>>> captured;
  asio::post(state->ex, [&] { captured.set_value(state->captured); });
  unsigned renews = 0;
  for (const auto& msg : captured.get_future().get()) {
    std::size_t off = 0;
    while (off < msg.size()) {
      auto r = decode_frame(std::span<const std::uint8_t>(msg).subspan(off));
      if (r.error != DecodeError::none) break;
      if (r.frame.type == FrameType::renew) {
        ++renews;
        CHECK(r.frame.stream == 0);
        CHECK(std::string(r.frame.payload.begin(), r.frame.payload.end()) == "one");
      }
      off += r.consumed;
    }
  }
  CHECK(renews == 1);
}

TEST_CASE("RENEW in the wrong direction or an unsolicited ACK is a protocol error", "[session][renew]") {
  Env env;
  std::vector<std::uint8_t> m;
  std::string expect;
  Role role = Role::dialer;
  SECTION("RENEW sent to the dialler") {
    encode_renew(m, "SharedAccessSignature x");
    expect = "RENEW from the side that accepted the tunnel";
  }
  SECTION("ACK with no RENEW in flight") {
    encode_renew_ack(m, 0, "");
    expect = "RENEW ACK without a RENEW in flight";
  }
  SECTION("ACK sent to the acceptor") {
    role = Role::acceptor;
    encode_renew_ack(m, 401, "no");
    expect = "RENEW ACK without a RENEW in flight";
  }
  SECTION("pipelined RENEWs") {
    role = Role::acceptor;
    for (int i = 0; i < 3; ++i) encode_renew(m, "SharedAccessSignature x");
    expect = "one RENEW in flight at a time";
  }
  SECTION("oversize token") {
    role = Role::acceptor;
    encode_header(m, FrameType::renew, 0, 0, max_token_size + 1);
    m.resize(m.size() + max_token_size + 1, 't');
    expect = "frame payload over the limit";
  }
  Victim v(env, role);
  v.inject(m);
  CHECK_THAT(v.wait_closed(), Catch::Contains(expect));
}

namespace {

std::pair<error_code, std::vector<std::uint8_t>> read_chunk(TunnelStream& s, std::size_t max) {
  auto p = std::make_shared<std::promise<std::pair<error_code, std::vector<std::uint8_t>>>>();
  auto f = p->get_future();
  s.async_read_chunk(max, [p](error_code ec, std::vector<std::uint8_t> c) { p->set_value({ec, std::move(c)}); });
  if (f.wait_for(2s) != std::future_status::ready) return {asio::error::timed_out, {}};
  return f.get();
}

}  // namespace

TEST_CASE("read_chunk hands over received bytes within the limit and returns their credit", "[session][splice]") {
  Env env;
  auto p = make_pair(env);
  auto c = open(*p->dialer);
  auto a = p->accepted.get_future().get();
  // Nothing received yet: the read waits (no buffer of the caller's is involved).
  auto pending = std::make_shared<std::promise<std::pair<error_code, std::vector<std::uint8_t>>>>();
  a->async_read_chunk(1000, [pending](error_code ec, std::vector<std::uint8_t> b) { pending->set_value({ec, std::move(b)}); });
  auto pf = pending->get_future();
  CHECK(pf.wait_for(100ms) == std::future_status::timeout);
  std::vector<std::uint8_t> hello{'h', 'e', 'l', 'l', 'o'};
  CHECK(write(*c, hello).second == 5);
  REQUIRE(pf.wait_for(2s) == std::future_status::ready);
  auto first = pf.get();
  CHECK_FALSE(first.first);
  CHECK(first.second == hello);
  // A frame larger than the limit comes in pieces of at most the limit.
  std::vector<std::uint8_t> big(3000);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::uint8_t>(i * 7);
  CHECK(write(*c, big).second == big.size());
  std::vector<std::uint8_t> got;
  while (got.size() < big.size()) {
    auto r = read_chunk(*a, 1000);
    REQUIRE_FALSE(r.first);
    CHECK(r.second.size() <= 1000);
    got.insert(got.end(), r.second.begin(), r.second.end());
  }
  CHECK(got == big);
  // Credit comes back as chunks are taken: more than a stream window goes through.
  std::vector<std::uint8_t> block(64 * 1024, 0x5A);
  std::size_t received = 0;
  auto reader = std::async(std::launch::async, [&] {
    while (received < 4 * default_stream_window) {
      auto r = read_chunk(*a, max_data_payload);
      if (r.first) return;
      received += r.second.size();
    }
  });
  // A write may take part of the block (what the credit allows): send exactly
  // the rest each time, so the total is exact.
  for (std::size_t sent = 0; sent < 4 * default_stream_window;) {
    const std::size_t n = std::min(block.size(), 4 * default_stream_window - sent);
    auto w = write(*c, std::vector<std::uint8_t>(block.begin(), block.begin() + static_cast<std::ptrdiff_t>(n)));
    REQUIRE_FALSE(w.first);
    sent += w.second;
  }
  reader.wait();
  CHECK(received == 4 * default_stream_window);
  // Half-close: eof after the bytes.
  std::promise<error_code> shut;
  c->async_shutdown_send([&](error_code ec) { shut.set_value(ec); });
  CHECK_FALSE(shut.get_future().get());
  CHECK(read_chunk(*a, 100).first == asio::error::eof);
}

TEST_CASE("a peer that sends but never reads is closed once its answers pile up", "[session][bounds]") {
  Env env;
  SessionOptions o;
  o.send_queue_limit = 64 * 1024;
  o.control_queue_limit = 4 * 1024;
  Victim v(env, Role::dialer, o, /*stall_writes=*/true);
  // Every PING asks for a PONG the peer will never read.
  std::vector<std::uint8_t> m;
  std::array<std::uint8_t, 8> opaque{};
  for (int i = 0; i < 10000; ++i) encode_ping(m, FrameType::ping, opaque);
  v.inject(m);
  const std::string reason = v.wait_closed();
  CHECK_THAT(reason, Catch::Contains("the peer is not reading"));
  CHECK(wait_for([&] { return v.state->closed.load(); }));
}

TEST_CASE("tiny DATA frames are held in few allocations, not one each", "[session][bounds]") {
  Env env;
  Victim v(env, Role::dialer, {}, false, /*keep_streams=*/true);
  // The peer opens a stream (even ids are the acceptor's) and sends 64 KiB as
  // one-byte frames; the victim accepts the stream and does not read it.
  constexpr std::size_t total = 64 * 1024;
  std::vector<std::uint8_t> m;
  encode_open(m, 2, "{}");
  for (std::size_t i = 0; i < total; ++i) encode_data(m, 2, std::vector<std::uint8_t>{static_cast<std::uint8_t>(i)});
  v.inject(m);
  auto held = [&] {
    std::promise<std::size_t> p;
    asio::post(v.state->ex, [&] { p.set_value(v.session->received_memory()); });
    return p.get_future().get();
  };
  REQUIRE(wait_for([&] { return held() >= total; }));
  CHECK(held() <= 2 * total + 4096);
  CHECK(v.session->active_streams() == 1);
}

namespace {

// A victim that accepted the stream the peer opened (id 2), with helpers to
// start reads before DATA arrives and to see the credit it gave back.
struct Receiver {
  Env& env;
  Victim v;
  TunnelStreamPtr stream;
  explicit Receiver(Env& e, SessionOptions o = {})
      : env(e), v(e, Role::dialer, std::move(o), false, /*keep_streams=*/true) {
    std::vector<std::uint8_t> m;
    encode_open(m, 2, "{}");
    v.inject(m);
    REQUIRE(wait_for([&] { return on_strand([&] { return v.kept->size(); }) == 1; }));
    stream = on_strand([&] { return v.kept->front(); });
  }
  template <class F>
  auto on_strand(F f) -> decltype(f()) {
    std::promise<decltype(f())> p;
    asio::post(v.state->ex, [&] { p.set_value(f()); });
    return p.get_future().get();
  }
  using ReadResult = std::pair<error_code, std::string>;
  // A read that waits for bytes to come; registered on the strand before
  // anything injected afterwards.
  std::future<ReadResult> start_read(std::size_t size) {
    auto p = std::make_shared<std::promise<ReadResult>>();
    auto buf = std::make_shared<std::string>(size, '\0');
    stream->async_read_some(asio::buffer(*buf), [p, buf](error_code ec, std::size_t n) {
      p->set_value({ec, buf->substr(0, n)});
    });
    return p->get_future();
  }
  static ReadResult get(std::future<ReadResult> f) {
    if (f.wait_for(2s) != std::future_status::ready) return {asio::error::timed_out, {}};
    return f.get();
  }
  // DATA frames for stream 2, all in one message.
  void inject_data(const std::vector<std::string>& payloads) {
    std::vector<std::uint8_t> m;
    for (const auto& p : payloads)
      encode_data(m, 2, std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(p.data()), p.size()));
    v.inject(m);
  }
  std::size_t held() {
    return on_strand([&] { return v.session->received_memory(); });
  }
  std::size_t spare() {
    return on_strand([&] { return v.session->spare_memory(); });
  }
  // The sum of the WINDOW increments sent for `stream` so far.
  std::uint64_t credit_returned(StreamId id) {
    return on_strand([&] {
      std::uint64_t sum = 0;
      for (const auto& msg : v.state->captured) {
        std::span<const std::uint8_t> rest(msg);
        while (!rest.empty()) {
          auto r = decode_frame(rest);
          if (r.error != DecodeError::none) break;
          if (r.frame.type == FrameType::window && r.frame.stream == id) sum += window_increment(r.frame);
          rest = rest.subspan(r.consumed);
        }
      }
      return sum;
    });
  }
};

std::string run_of(char c, std::size_t n) { return std::string(n, c); }

}  // namespace

TEST_CASE("session: a waiting read takes DATA straight into its buffer and nothing is held", "[session][direct]") {
  Env env;
  Receiver r(env);
  // Larger than the frame: the frame's bytes, and no buffer is left behind.
  auto f = r.start_read(1000);
  r.inject_data({run_of('a', 100)});
  auto got = Receiver::get(std::move(f));
  CHECK_FALSE(got.first);
  CHECK(got.second == run_of('a', 100));
  CHECK(r.held() == 0);
  // Frames of one message fill the waiting read up to its size, in order;
  // what it has no room for is held for the next read.
  f = r.start_read(100);
  r.inject_data({run_of('b', 60), run_of('c', 70), run_of('d', 30)});
  got = Receiver::get(std::move(f));
  CHECK(got.second == run_of('b', 60) + run_of('c', 40));
  CHECK(r.held() > 0);
  got = Receiver::get(r.start_read(1000));
  CHECK(got.second == run_of('c', 30) + run_of('d', 30));
  CHECK(r.held() == 0);
}

TEST_CASE("session: a read smaller than a frame takes it in pieces and later DATA queues behind the rest",
          "[session][direct]") {
  Env env;
  Receiver r(env);
  std::string frame1;
  for (int i = 0; i < 50; ++i) frame1 += static_cast<char>('A' + i % 26);
  auto f = r.start_read(10);
  r.inject_data({frame1});
  CHECK(Receiver::get(std::move(f)).second == frame1.substr(0, 10));
  // 40 bytes held and no read waiting: the next frame goes behind them, and
  // a read waiting when buffered bytes remain takes those first.
  r.inject_data({run_of('z', 50)});
  CHECK(Receiver::get(r.start_read(15)).second == frame1.substr(10, 15));
  CHECK(Receiver::get(r.start_read(1000)).second == frame1.substr(25) + run_of('z', 50));
  CHECK(r.held() == 0);
  // FIN after bytes a read was filled with: the bytes, then eof.
  f = r.start_read(1000);
  std::vector<std::uint8_t> m;
  const std::string tail = "tail";
  encode_data(m, 2, std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(tail.data()), tail.size()));
  encode_fin(m, 2);
  r.v.inject(m);
  CHECK(Receiver::get(std::move(f)).second == "tail");
  CHECK(Receiver::get(r.start_read(1000)).first == asio::error::eof);
}

TEST_CASE("session: credit comes back exactly for bytes read directly and from the buffer", "[session][direct]") {
  Env env;
  Receiver r(env);
  // The whole window (256 KiB) in 64 KiB frames, taken by reads of 50,000
  // bytes: some wait for the frames, some find them buffered.
  const std::size_t window = default_stream_window, read_size = 50000;
  std::string all;
  for (std::size_t i = 0; i < window; ++i) all += static_cast<char>('a' + (i * 7) % 26);
  std::string got;
  auto f = r.start_read(read_size);
  r.inject_data({all.substr(0, 64 * 1024), all.substr(64 * 1024, 64 * 1024)});
  got += Receiver::get(std::move(f)).second;
  r.inject_data({all.substr(128 * 1024, 64 * 1024), all.substr(192 * 1024)});
  for (int i = 0; i < 20 && got.size() < window; ++i) {
    auto rr = Receiver::get(r.start_read(read_size));
    REQUIRE_FALSE(rr.first);
    got += rr.second;
  }
  CHECK(got == all);
  // A WINDOW goes once a quarter of the window is unreturned, carrying all
  // of it.
  const std::uint64_t returned = r.credit_returned(2);
  CHECK(returned > window - window / 4);
  CHECK(returned <= window);
  // Exactly that much may come now; one byte more is beyond the credit.
  std::vector<std::string> frames;
  for (std::uint64_t left = returned; left > 0;) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, max_data_payload));
    frames.push_back(run_of('x', n));
    left -= n;
  }
  r.inject_data(frames);
  std::size_t more = 0;
  for (int i = 0; i < 40 && more < returned; ++i) more += Receiver::get(r.start_read(64 * 1024)).second.size();
  CHECK(more == returned);
  CHECK_FALSE(r.v.session->closed());
  // What the peer may still send is what came back since; one byte more is
  // refused.
  frames.clear();
  for (std::uint64_t left = r.credit_returned(2) - returned + 1; left > 0;) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, max_data_payload));
    frames.push_back(run_of('y', n));
    left -= n;
  }
  r.inject_data(frames);
  CHECK_THAT(r.v.wait_closed(), Catch::Contains("DATA beyond the credit of stream 2"));
}

TEST_CASE("session: buffers kept for reuse go once the tunnel is idle for a ping interval", "[session][direct]") {
  Env env;
  auto clock = std::make_shared<ManualClock>();
  SessionOptions o;
  o.clock = clock;
  o.ping_interval = 15s;
  o.idle_timeout = 3600s;
  Receiver r(env, o);
  // 10 KiB into a 1 KiB read: the rest is buffered, then read, and its chunk
  // is kept for the next frames.
  auto f = r.start_read(1024);
  r.inject_data({run_of('p', 10 * 1024)});
  CHECK(Receiver::get(std::move(f)).second.size() == 1024);
  CHECK(Receiver::get(r.start_read(64 * 1024)).second == run_of('p', 9 * 1024));
  CHECK(r.held() == 0);
  CHECK(r.spare() > 0);
  // A tick after DATA keeps them; the next, with none since, drops them.
  REQUIRE(tick(*clock, o.ping_interval));
  REQUIRE(wait_for([&] { return clock->armed() > 0; }));
  CHECK(r.spare() > 0);
  REQUIRE(tick(*clock, o.ping_interval));
  REQUIRE(wait_for([&] { return clock->armed() > 0; }));
  CHECK(r.spare() == 0);
  CHECK_FALSE(r.v.session->closed());
}
