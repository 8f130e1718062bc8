// The session's sending side: control frames overtake DATA not yet sent, and
// streams share the transport by deficit round-robin within their credit.
// Driven on the test's own thread (io_context::poll) through a channel whose
// writes complete only when the test releases them: no timing involved.

#include <catch2/catch.hpp>

#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include "protocol/session.hpp"

using namespace clusterconnect;
using namespace clusterconnect::tunnel;

namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

struct ChannelState {
  asio::any_io_executor ex;
  std::deque<std::vector<std::uint8_t>> inbox;
  MessageChannel::ReadHandler pending_read;
  std::vector<std::vector<std::uint8_t>> written;
  DoneHandler held_write;
  bool closed = false;
};

// Writes are recorded at once and complete when the test releases them.
class HeldChannel final : public MessageChannel {
 public:
  explicit HeldChannel(std::shared_ptr<ChannelState> s) : s_(std::move(s)) {}
  void async_read_message(ReadHandler handler) override {
    s_->pending_read = std::move(handler);
    asio::post(s_->ex, [s = s_] { pump(s); });
  }
  void async_write_message(asio::const_buffer message, DoneHandler handler) override {
    const auto* p = static_cast<const std::uint8_t*>(message.data());
    s_->written.emplace_back(p, p + message.size());
    s_->held_write = std::move(handler);
  }
  void close(std::uint16_t, std::string) noexcept override {
    if (s_->closed) return;
    s_->closed = true;
    if (auto h = std::move(s_->pending_read))
      asio::post(s_->ex, [h = std::move(h)]() mutable { h(asio::error::operation_aborted, {}); });
    if (auto h = std::move(s_->held_write))
      asio::post(s_->ex, [h = std::move(h)]() mutable { h(asio::error::operation_aborted); });
  }
  static void pump(const std::shared_ptr<ChannelState>& s) {
    if (!s->pending_read || s->inbox.empty()) return;
    auto msg = std::move(s->inbox.front());
    s->inbox.pop_front();
    auto h = std::move(s->pending_read);
    h({}, std::span<const std::uint8_t>(msg.data(), msg.size()));
  }

 private:
  std::shared_ptr<ChannelState> s_;
};

struct Sent {
  FrameType type;
  std::uint8_t flags;
  StreamId stream;
  std::size_t length;
  std::size_t message;  // index of the message that carried it
};

struct WriteResult {
  bool done = false;
  error_code ec;
  std::size_t n = 0;
};

// A dialler session whose peer is the test.
struct Rig {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard{io.get_executor()};
  std::shared_ptr<ChannelState> st = std::make_shared<ChannelState>();
  std::shared_ptr<Session> session;
  // Buffers of writes in flight, kept until the rig goes away.
  std::vector<std::shared_ptr<std::vector<std::uint8_t>>> payloads;

  explicit Rig(SessionOptions o = {}) {
    st->ex = io.get_executor();
    o.role = Role::dialer;
    o.name = "fair";
    session = Session::create(io.get_executor(), std::make_unique<HeldChannel>(st), o, nullptr);
    session->start();
    run();
  }
  ~Rig() {
    session->close("test over");
    run();
    session.reset();
    guard.reset();
    io.poll();
  }
  void run() { io.poll(); }
  // Completes the write in flight, if any, and runs what follows.
  bool release() {
    auto h = std::move(st->held_write);
    st->held_write = nullptr;
    if (!h) return false;
    h({});
    run();
    return true;
  }
  // Releases writes until the session has nothing more to send (bounded).
  void drain() {
    for (int i = 0; i < 100000 && release(); ++i) {
    }
  }
  void inject(std::vector<std::uint8_t> m) {
    st->inbox.push_back(std::move(m));
    HeldChannel::pump(st);
    run();
  }
  TunnelStreamPtr open() {
    TunnelStreamPtr out;
    session->async_open({}, [&](error_code ec, TunnelStreamPtr s, std::string) {
      REQUIRE_FALSE(ec);
      out = std::move(s);
    });
    run();
    drain();
    const auto frames = sent();
    REQUIRE_FALSE(frames.empty());
    REQUIRE(frames.back().type == FrameType::open);
    std::vector<std::uint8_t> ack;
    encode_open_ack(ack, frames.back().stream);
    inject(std::move(ack));
    REQUIRE(out);
    return out;
  }
  void grant(StreamId id, std::uint32_t increment) {
    std::vector<std::uint8_t> m;
    encode_window(m, id, increment);
    inject(std::move(m));
  }
  std::shared_ptr<WriteResult> write(TunnelStream& s, std::size_t size) {
    auto data = std::make_shared<std::vector<std::uint8_t>>(size, static_cast<std::uint8_t>(s.id()));
    payloads.push_back(data);
    auto r = std::make_shared<WriteResult>();
    asio::const_buffer b(data->data(), data->size());
    s.async_write_some(std::span<const asio::const_buffer>(&b, 1), [r](error_code ec, std::size_t n) {
      r->done = true;
      r->ec = ec;
      r->n = n;
    });
    run();
    return r;
  }
  // Every frame written so far, in order.
  std::vector<Sent> sent() const {
    std::vector<Sent> out;
    for (std::size_t i = 0; i < st->written.size(); ++i) {
      std::span<const std::uint8_t> msg(st->written[i]);
      std::size_t off = 0;
      while (off < msg.size()) {
        auto r = decode_frame(msg.subspan(off));
        REQUIRE(r.error == DecodeError::none);
        out.push_back({r.frame.type, r.frame.flags, r.frame.stream, r.frame.payload.size(), i});
        off += r.consumed;
      }
    }
    return out;
  }
  std::size_t data_of(StreamId id, std::size_t from_message = 0) const {
    std::size_t n = 0;
    for (const auto& f : sent())
      if (f.type == FrameType::data && f.stream == id && f.message >= from_message) n += f.length;
    return n;
  }
};

}  // namespace

TEST_CASE("fair send: a small write overtakes a bulk stream's backlog after at most one turn", "[session][fair]") {
  SessionOptions o;
  Rig rig(o);
  auto bulk = rig.open();
  auto small = rig.open();
  rig.grant(bulk->id(), 8 * MiB);
  auto big = rig.write(*bulk, 4 * MiB);
  // One message is in flight; the rest of the backlog is still the writer's.
  REQUIRE(rig.st->held_write);
  const std::size_t in_flight = rig.data_of(bulk->id());
  CHECK(in_flight > 0);
  CHECK(in_flight <= o.data_message_budget + o.send_quantum);
  const std::size_t mark = rig.st->written.size();

  auto tiny = rig.write(*small, 200);
  for (int i = 0; i < 1000 && rig.data_of(small->id()) == 0 && rig.release(); ++i) {
  }
  // Bulk bytes sent after the small write was made, before its DATA.
  std::size_t bulk_before = 0;
  bool seen = false;
  for (const auto& f : rig.sent()) {
    if (f.message < mark || f.type != FrameType::data) continue;
    if (f.stream == small->id()) {
      seen = true;
      CHECK(f.length == 200);
      break;
    }
    bulk_before += f.length;
  }
  CHECK(seen);
  CHECK(bulk_before <= o.send_quantum);
  CHECK(tiny->done);
  CHECK(tiny->n == 200);
  CHECK_FALSE(big->done);  // the backlog is still being sent

  rig.drain();
  CHECK(big->done);
  CHECK(big->n == 4 * MiB);
  CHECK(rig.data_of(bulk->id()) == 4 * MiB);
  // A stream alone on the tunnel still sends large frames, never over 64 KiB.
  std::size_t largest = 0;
  for (const auto& f : rig.sent())
    if (f.type == FrameType::data) largest = std::max(largest, f.length);
  CHECK(largest > o.send_quantum);
  CHECK(largest <= max_data_payload);
}

TEST_CASE("fair send: control frames queued after DATA leave before it", "[session][fair]") {
  Rig rig;
  auto bulk = rig.open();
  auto other = rig.open();
  rig.grant(bulk->id(), 8 * MiB);
  auto big = rig.write(*bulk, 2 * MiB);
  REQUIRE(rig.st->held_write);
  const std::size_t mark = rig.st->written.size();
  // While a message is in flight: the peer pings, another stream is reset,
  // and the bulk stream asks to half-close behind its pending write.
  std::vector<std::uint8_t> ping;
  std::array<std::uint8_t, 8> opaque{1, 2, 3, 4, 5, 6, 7, 8};
  encode_ping(ping, FrameType::ping, opaque);
  rig.inject(std::move(ping));
  other->reset("no longer needed");
  bool shut = false;
  bulk->async_shutdown_send([&](error_code ec) { shut = !ec; });
  rig.run();
  REQUIRE(rig.release());
  const auto frames = rig.sent();
  std::vector<Sent> next;
  for (const auto& f : frames)
    if (f.message == mark) next.push_back(f);
  REQUIRE(next.size() >= 3);
  CHECK(next[0].type == FrameType::pong);
  CHECK(next[1].type == FrameType::rst);
  CHECK(next[1].stream == other->id());
  for (std::size_t i = 2; i < next.size(); ++i) CHECK(next[i].type == FrameType::data);
  // The FIN follows every byte of the stream's data.
  CHECK_FALSE(shut);
  rig.drain();
  CHECK(big->done);
  CHECK(shut);
  const auto all = rig.sent();
  std::size_t last_data = 0, fin = 0;
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (all[i].stream != bulk->id()) continue;
    if (all[i].type == FrameType::data) last_data = i;
    if (all[i].type == FrameType::fin) fin = i;
  }
  CHECK(fin > last_data);
  CHECK(rig.data_of(bulk->id()) == 2 * MiB);
}

TEST_CASE("fair send: two bulk streams share the transport within one quantum", "[session][fair]") {
  SessionOptions o;
  Rig rig(o);
  auto a = rig.open();
  auto b = rig.open();
  rig.grant(a->id(), 8 * MiB);
  rig.grant(b->id(), 8 * MiB);
  auto wa = rig.write(*a, 2 * MiB);
  auto wb = rig.write(*b, 2 * MiB);
  // The first message went out before b had written; count from the next.
  const std::size_t mark = rig.st->written.size();
  const std::size_t a0 = rig.data_of(a->id());
  rig.drain();
  REQUIRE(wa->done);
  REQUIRE(wb->done);
  CHECK(wa->n == 2 * MiB);
  CHECK(wb->n == 2 * MiB);
  std::int64_t da = 0, db = 0, worst = 0;
  for (const auto& f : rig.sent()) {
    if (f.message < mark || f.type != FrameType::data) continue;
    if (f.stream == a->id()) da += static_cast<std::int64_t>(f.length);
    if (f.stream == b->id()) db += static_cast<std::int64_t>(f.length);
    if (a0 + static_cast<std::size_t>(da) >= 2 * MiB) break;  // a is done; b goes on alone
    worst = std::max(worst, std::abs(da - db));
  }
  CHECK(da > static_cast<std::int64_t>(MiB));
  CHECK(worst <= static_cast<std::int64_t>(o.send_quantum));
}

TEST_CASE("fair send: every stream stays within its credit and the tunnel's", "[session][fair]") {
  Rig rig;
  auto a = rig.open();  // default window only
  auto b = rig.open();
  rig.grant(b->id(), 2 * MiB);
  auto wa = rig.write(*a, 1 * MiB);
  auto wb = rig.write(*b, 1 * MiB);
  rig.drain();
  // a got what its window allows and its write says so; b got everything.
  REQUIRE(wa->done);
  CHECK(wa->n == default_stream_window);
  CHECK(rig.data_of(a->id()) == default_stream_window);
  REQUIRE(wb->done);
  CHECK(wb->n == 1 * MiB);
  CHECK(rig.data_of(b->id()) == 1 * MiB);
  // More credit for a: exactly that much more.
  rig.grant(a->id(), 10000);
  auto wa2 = rig.write(*a, 50000);
  rig.drain();
  REQUIRE(wa2->done);
  CHECK(wa2->n == 10000);
  CHECK(rig.data_of(a->id()) == default_stream_window + 10000);

  SECTION("the tunnel's credit bounds all streams together") {
    rig.grant(a->id(), 16 * MiB);
    rig.grant(b->id(), 16 * MiB);
    auto big_a = rig.write(*a, 10 * MiB);
    auto big_b = rig.write(*b, 10 * MiB);
    rig.drain();
    const std::size_t total = rig.data_of(a->id()) + rig.data_of(b->id());
    CHECK(total == default_tunnel_window);
    CHECK_FALSE(big_a->done);
    CHECK_FALSE(big_b->done);
    rig.grant(0, 1 * MiB);
    rig.drain();
    CHECK(rig.data_of(a->id()) + rig.data_of(b->id()) == default_tunnel_window + 1 * MiB);
  }
}

TEST_CASE("fair send: a small write goes before the turns of many bulk streams", "[session][fair]") {
  SessionOptions o;
  Rig rig(o);
  constexpr int transfers = 12;
  std::vector<TunnelStreamPtr> bulk;
  std::vector<std::shared_ptr<WriteResult>> writes;
  for (int i = 0; i < transfers; ++i) {
    bulk.push_back(rig.open());
    rig.grant(bulk.back()->id(), 8 * MiB);
  }
  auto small = rig.open();
  for (auto& b : bulk) writes.push_back(rig.write(*b, 1 * MiB));
  REQUIRE(rig.st->held_write);
  // Every transfer has a backlog; two messages on, each has had turns.
  rig.release();
  rig.release();
  REQUIRE(rig.st->held_write);
  const std::size_t mark = rig.st->written.size();  // the message after the one in flight

  auto tiny = rig.write(*small, 300);
  REQUIRE(rig.release());
  // The next message opens with the small write, whole: no bulk turn before it,
  // though twelve transfers (192 KiB of turns per round) are waiting.
  std::vector<Sent> next;
  for (const auto& f : rig.sent())
    if (f.message == mark && f.type == FrameType::data) next.push_back(f);
  REQUIRE_FALSE(next.empty());
  CHECK(next.front().stream == small->id());
  CHECK(next.front().length == 300);
  CHECK(tiny->done);
  // The transfers fill the rest of that message and all finish.
  CHECK(next.size() > 1);
  rig.drain();
  for (std::size_t i = 0; i < writes.size(); ++i) {
    CHECK(writes[i]->done);
    CHECK(writes[i]->n == 1 * MiB);
  }
}

TEST_CASE("fair send: brief writes take one turn each per message and leave the rest to transfers", "[session][fair]") {
  SessionOptions o;
  Rig rig(o);
  auto bulk = rig.open();
  rig.grant(bulk->id(), 8 * MiB);
  std::vector<TunnelStreamPtr> chatty;
  for (int i = 0; i < 4; ++i) chatty.push_back(rig.open());
  auto big = rig.write(*bulk, 2 * MiB);
  REQUIRE(rig.st->held_write);
  const std::size_t mark = rig.st->written.size();
  std::vector<std::shared_ptr<WriteResult>> small;
  for (auto& c : chatty) small.push_back(rig.write(*c, 8 * KiB));
  REQUIRE(rig.release());
  std::size_t small_bytes = 0, bulk_bytes = 0;
  for (const auto& f : rig.sent()) {
    if (f.message != mark || f.type != FrameType::data) continue;
    (f.stream == bulk->id() ? bulk_bytes : small_bytes) += f.length;
  }
  CHECK(small_bytes == 4 * 8 * KiB);
  CHECK(bulk_bytes > 0);  // the transfer still moves in the same message
  for (auto& w : small) CHECK(w->done);
  rig.drain();
  CHECK(big->done);
}
