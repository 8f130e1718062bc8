// The splice of two rendezvous legs: bytes both ways at once, half-close
// passed on, a leg's reset or close() ending both, and the idle timeout.

#include <catch2/catch.hpp>

#include <future>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <openssl/evp.h>

#include "rendezvous/socket_splice.hpp"

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using namespace clusterconnect::tunnel::rendezvous;
using namespace std::chrono_literals;

namespace {

struct IoThreads {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard{io.get_executor()};
  std::vector<std::thread> threads;
  IoThreads() {
    for (int i = 0; i < 2; ++i) threads.emplace_back([this] { io.run(); });
  }
  ~IoThreads() {
    guard.reset();
    io.stop();
    for (auto& t : threads) t.join();
  }
};

// A connected pair: the test's end (blocking) and the relay's end.
struct Leg {
  tcp::socket peer;
  tcp::socket relay_end;
};

Leg make_leg(asio::io_context& relay_io, asio::io_context& test_io) {
  tcp::acceptor acceptor(relay_io, {asio::ip::make_address("127.0.0.1"), 0});
  tcp::socket peer(test_io);
  peer.connect(acceptor.local_endpoint());
  tcp::socket relay_end(relay_io);
  acceptor.accept(relay_end);
  return {std::move(peer), std::move(relay_end)};
}

struct Sha {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  Sha() { EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr); }
  ~Sha() { EVP_MD_CTX_free(ctx); }
  void add(const void* p, std::size_t n) { EVP_DigestUpdate(ctx, p, n); }
  std::string hex() {
    unsigned char md[32];
    unsigned len = 0;
    EVP_DigestFinal_ex(ctx, md, &len);
    std::string out;
    for (unsigned i = 0; i < len; ++i) out += "0123456789abcdef"[md[i] >> 4], out += "0123456789abcdef"[md[i] & 15];
    return out;
  }
};

struct Transfer {
  std::uint64_t bytes = 0;
  std::string sha;
  boost::system::error_code ec;
};

// Sends `total` pseudo-random bytes, then half-closes.
std::future<Transfer> send_bytes(tcp::socket& s, std::uint64_t total, std::uint64_t seed) {
  return std::async(std::launch::async, [&s, total, seed] {
    Transfer t;
    Sha sha;
    std::vector<std::uint8_t> buf(64 * 1024);
    std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    while (t.bytes < total) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), total - t.bytes));
      for (std::size_t i = 0; i < n; ++i) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[i] = static_cast<std::uint8_t>(x);
      }
      asio::write(s, asio::buffer(buf.data(), n), t.ec);
      if (t.ec) break;
      sha.add(buf.data(), n);
      t.bytes += n;
    }
    if (!t.ec) s.shutdown(tcp::socket::shutdown_send, t.ec);
    t.sha = sha.hex();
    return t;
  });
}

// Reads until end of stream or an error.
std::future<Transfer> receive_bytes(tcp::socket& s) {
  return std::async(std::launch::async, [&s] {
    Transfer t;
    Sha sha;
    std::vector<std::uint8_t> buf(64 * 1024);
    for (;;) {
      const std::size_t n = s.read_some(asio::buffer(buf), t.ec);
      if (t.ec) break;
      sha.add(buf.data(), n);
      t.bytes += n;
    }
    if (t.ec == asio::error::eof) t.ec = {};
    t.sha = sha.hex();
    return t;
  });
}

struct Rig {
  IoThreads relay;
  asio::io_context test_io;
  Leg a = make_leg(relay.io, test_io);
  Leg b = make_leg(relay.io, test_io);
  // Held by the splice's callback too: a splice that ends while the rig is
  // being torn down (its peers close) still has a promise to keep.
  std::shared_ptr<std::promise<SpliceResult>> result = std::make_shared<std::promise<SpliceResult>>();
  std::future<SpliceResult> future = result->get_future();
  std::shared_ptr<SocketSplice> splice;

  explicit Rig(SpliceOptions options = {}) {
    boost::system::error_code ec;
    splice = start_splice(std::move(a.relay_end), std::move(b.relay_end), options,
                          [p = result](const SpliceResult& r) { p->set_value(r); }, ec);
    REQUIRE_FALSE(ec);
    REQUIRE(splice);
  }
  SpliceResult wait() {
    REQUIRE(future.wait_for(120s) == std::future_status::ready);
    return future.get();
  }
};

}  // namespace

TEST_CASE("a splice moves every byte both ways at once", "[rendezvous][splice]") {
  Rig rig;
  const std::uint64_t forward = 64ull << 20, backward = 8ull << 20;
  auto send_a = send_bytes(rig.a.peer, forward, 1);
  auto send_b = send_bytes(rig.b.peer, backward, 2);
  auto recv_b = receive_bytes(rig.b.peer);
  auto recv_a = receive_bytes(rig.a.peer);
  auto sa = send_a.get(), sb = send_b.get(), rb = recv_b.get(), ra = recv_a.get();
  REQUIRE_FALSE(sa.ec);
  REQUIRE_FALSE(sb.ec);
  REQUIRE_FALSE(ra.ec);
  REQUIRE_FALSE(rb.ec);
  CHECK(rb.bytes == forward);
  CHECK(rb.sha == sa.sha);
  CHECK(ra.bytes == backward);
  CHECK(ra.sha == sb.sha);
  auto r = rig.wait();
  CHECK_FALSE(r.ec);
  CHECK(r.a_to_b == forward);
  CHECK(r.b_to_a == backward);
}

// After a small read the splice waits for the leg instead of reading it again
// (see drained_below): bytes that are already there, or that come while it
// waits, must still wake it.
TEST_CASE("a splice passes on small messages one at a time and segments queued before it starts",
          "[rendezvous][splice]") {
  IoThreads relay;
  asio::io_context test_io;
  Leg a = make_leg(relay.io, test_io), b = make_leg(relay.io, test_io);
  a.peer.set_option(tcp::no_delay(true));
  b.peer.set_option(tcp::no_delay(true));
  // 64 segments of 8 bytes, all in the relay's socket before the splice starts.
  std::string queued;
  for (int i = 0; i < 64; ++i) {
    const std::string segment = "seg" + std::to_string(1000 + i) + "|";
    asio::write(a.peer, asio::buffer(segment));
    queued += segment;
  }
  while (a.relay_end.available() < queued.size()) std::this_thread::yield();
  auto result = std::make_shared<std::promise<SpliceResult>>();
  auto future = result->get_future();
  boost::system::error_code ec;
  auto splice = start_splice(
      std::move(a.relay_end), std::move(b.relay_end), {}, [result](const SpliceResult& r) { result->set_value(r); },
      ec);
  REQUIRE_FALSE(ec);
  std::string got(queued.size(), '\0');
  asio::read(b.peer, asio::buffer(got));
  CHECK(got == queued);
  // Request and answer, each sent only once the other side has read the last.
  for (std::size_t i = 1; i <= 200; ++i) {
    const std::string request(i * 37 % 3000 + 1, static_cast<char>('a' + i % 26));
    asio::write(a.peer, asio::buffer(request));
    std::string seen(request.size(), '\0');
    asio::read(b.peer, asio::buffer(seen));
    REQUIRE(seen == request);
    const std::string answer(i * 53 % 5000 + 1, static_cast<char>('A' + i % 26));
    asio::write(b.peer, asio::buffer(answer));
    std::string back(answer.size(), '\0');
    asio::read(a.peer, asio::buffer(back));
    REQUIRE(back == answer);
  }
  splice->close("test done");
  REQUIRE(future.wait_for(120s) == std::future_status::ready);
}

TEST_CASE("a splice passes a half-close on and keeps the other direction open", "[rendezvous][splice]") {
  Rig rig;
  rig.a.peer.shutdown(tcp::socket::shutdown_send);  // a has nothing to say
  auto eof_at_b = receive_bytes(rig.b.peer);
  auto at_b = eof_at_b.get();  // b sees the end of a's stream first...
  CHECK_FALSE(at_b.ec);
  CHECK(at_b.bytes == 0);
  auto send_b = send_bytes(rig.b.peer, 1 << 20, 3);  // ...and may still answer
  auto recv_a = receive_bytes(rig.a.peer);
  auto sb = send_b.get();
  auto ra = recv_a.get();
  REQUIRE_FALSE(sb.ec);
  CHECK(ra.bytes == 1u << 20);
  CHECK(ra.sha == sb.sha);
  auto r = rig.wait();
  CHECK_FALSE(r.ec);
  CHECK(r.a_to_b == 0);
  CHECK(r.b_to_a == 1u << 20);
}

TEST_CASE("a leg that resets ends the splice and closes the other leg", "[rendezvous][splice]") {
  Rig rig;
  auto send_a = send_bytes(rig.a.peer, 1ull << 30, 4);  // more than the legs can buffer
  // b reads a little, then resets its connection.
  std::vector<std::uint8_t> some(1024);
  asio::read(rig.b.peer, asio::buffer(some));
  rig.b.peer.set_option(asio::socket_base::linger(true, 0));
  rig.b.peer.close();
  auto r = rig.wait();
  CHECK(r.ec);
  CHECK_FALSE(r.reason.empty());
  auto sa = send_a.get();
  CHECK(sa.ec);  // a's connection was closed under it
  CHECK(sa.bytes < (1ull << 30));
}

TEST_CASE("close() ends a splice and both legs see the end", "[rendezvous][splice]") {
  Rig rig;
  auto recv_a = receive_bytes(rig.a.peer);
  auto recv_b = receive_bytes(rig.b.peer);
  rig.splice->close("relay is shutting down");
  auto r = rig.wait();
  CHECK(r.ec == asio::error::operation_aborted);
  CHECK(r.reason == "relay is shutting down");
  CHECK(recv_a.get().bytes == 0);
  CHECK(recv_b.get().bytes == 0);
}

TEST_CASE("a splice with no byte for its idle timeout ends", "[rendezvous][splice]") {
  SpliceOptions o;
  o.idle_timeout = 100ms;
  Rig rig(o);
  auto r = rig.wait();
  CHECK(r.ec == asio::error::timed_out);
  CHECK_THAT(r.reason, Catch::Contains("idle"));
}

TEST_CASE("a quiet splice holds no pipe, and its pipes are reused", "[rendezvous][splice]") {
  auto pool = std::make_shared<PipePool>(0, 4);
  SpliceOptions o;
  o.pipes = pool;
  Rig rig(o);
  // Every pipe the splice made is back in the pool.
  auto quiet = [&] {
    for (int i = 0; i < 3000 && (pool->created() == 0 || pool->kept() != pool->created()); ++i)
      std::this_thread::sleep_for(10ms);
    return pool->created() > 0 && pool->kept() == pool->created();
  };
  REQUIRE(quiet());  // both directions looked for bytes, found none and gave their pipe back
  std::vector<std::uint8_t> out(1024, 7), in(1024);
  for (int round = 0; round < 3; ++round) {
    asio::write(rig.a.peer, asio::buffer(out));
    asio::read(rig.b.peer, asio::buffer(in));
    asio::write(rig.b.peer, asio::buffer(out));
    asio::read(rig.a.peer, asio::buffer(in));
    CHECK(in == out);
    REQUIRE(quiet());
  }
  CHECK(pool->created() <= 2);  // one per direction at the most, reused round after round
}
