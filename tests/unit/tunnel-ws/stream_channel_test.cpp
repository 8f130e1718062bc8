// The mux over a byte stream (StreamChannel): two sessions end to end inside
// TLS on a loopback connection, frames that arrive a byte at a time, and a
// frame header no frame may carry.

#include <catch2/catch.hpp>

#include <future>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "clusterconnect/certificates.hpp"
#include "clusterconnect/tls_socket.hpp"
#include "protocol/frame.hpp"
#include "protocol/session.hpp"
#include "protocol/stream_channel.hpp"

using namespace clusterconnect;
using namespace clusterconnect::tunnel;
using namespace std::chrono_literals;
using tcp = asio::ip::tcp;

namespace {

struct Io {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  std::vector<std::thread> threads;
  std::shared_ptr<spdlog::logger> logger = std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  Io() {
    for (int i = 0; i < 2; ++i) threads.emplace_back([this] { io.run(); });
  }
  ~Io() {
    work.reset();
    io.stop();
    for (auto& t : threads) t.join();
  }
};

// A connected loopback pair, each end on its own strand.
std::pair<tcp::socket, tcp::socket> socket_pair(asio::io_context& io) {
  tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
  tcp::socket a(asio::make_strand(io)), b(asio::make_strand(io));
  a.connect(acceptor.local_endpoint());
  acceptor.accept(b);
  a.set_option(tcp::no_delay(true));
  b.set_option(tcp::no_delay(true));
  return {std::move(a), std::move(b)};
}

std::shared_ptr<Session> session(Io& io, std::unique_ptr<MessageChannel> channel, Role role, asio::any_io_executor ex) {
  SessionOptions o;
  o.role = role;
  o.name = role == Role::dialer ? "proxy end" : "agent end";
  return Session::create(ex, std::move(channel), o, io.logger);
}

template <typename T>
T wait(std::future<T>& f) {
  REQUIRE(f.wait_for(30s) == std::future_status::ready);
  return f.get();
}

// Reads a stream to its end, then calls `done` with what came.
void read_all(TunnelStreamPtr s, std::function<void(std::string)> done) {
  struct Reader : std::enable_shared_from_this<Reader> {
    TunnelStreamPtr s;
    std::string got, buf = std::string(64 * 1024, '\0');
    std::function<void(std::string)> done;
    void next() {
      s->async_read_some(asio::buffer(buf), [self = shared_from_this()](error_code ec, std::size_t n) {
        self->got.append(self->buf.data(), n);
        if (ec) return self->done(std::move(self->got));
        self->next();
      });
    }
  };
  auto r = std::make_shared<Reader>();
  r->s = std::move(s);
  r->done = std::move(done);
  r->next();
}

std::future<std::string> read_all(TunnelStreamPtr s) {
  auto p = std::make_shared<std::promise<std::string>>();
  auto f = p->get_future();
  read_all(std::move(s), [p](std::string got) { p->set_value(std::move(got)); });
  return f;
}

// Writes `data` and half-closes.
std::future<error_code> write_all(TunnelStreamPtr s, std::shared_ptr<const std::string> data) {
  struct Writer : std::enable_shared_from_this<Writer> {
    TunnelStreamPtr s;
    std::shared_ptr<const std::string> data;
    std::size_t at = 0;
    std::promise<error_code> done;
    void next() {
      if (at == data->size()) {
        return s->async_shutdown_send([self = shared_from_this()](error_code ec) { self->done.set_value(ec); });
      }
      asio::const_buffer b(data->data() + at, std::min<std::size_t>(data->size() - at, 100000));
      s->async_write_some(std::span<const asio::const_buffer>(&b, 1), [self = shared_from_this()](error_code ec, std::size_t n) {
        if (ec) return self->done.set_value(ec);
        self->at += n;
        self->next();
      });
    }
  };
  auto w = std::make_shared<Writer>();
  w->s = std::move(s);
  w->data = std::move(data);
  auto f = w->done.get_future();
  w->next();
  return f;
}

template <typename Tls>
Tls make_tls(tcp::socket s, const std::shared_ptr<asio::ssl::context>& ctx) {
  if constexpr (std::is_constructible_v<Tls, tcp::socket, std::shared_ptr<asio::ssl::context>>)
    return Tls(std::move(s), ctx);
  else
    return Tls(std::move(s), *ctx);
}

// Three 8 MiB streams echoed by the agent end through one session inside TLS.
template <typename Tls>
void echo_inside_tls() {
  Io io;
  auto [a, b] = socket_pair(io.io);
  // The agent end is the TLS client, the proxy end the server (as in a rendezvous).
  auto id = tls::create_ca("proxy", 1);
  REQUIRE(id);
  auto server_ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  auto client_ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  server_ctx->use_certificate_chain(asio::buffer(id.value().cert));
  server_ctx->use_private_key(asio::buffer(id.value().key), asio::ssl::context::pem);
  client_ctx->add_certificate_authority(asio::buffer(id.value().cert));
  client_ctx->set_verify_mode(asio::ssl::verify_peer);
  Tls proxy_tls = make_tls<Tls>(std::move(a), server_ctx), agent_tls = make_tls<Tls>(std::move(b), client_ctx);
  std::promise<error_code> hs_proxy, hs_agent;
  // Started on the sockets' own executors: an I/O object is not to be used
  // from the test's thread while its io threads run its completions.
  asio::post(proxy_tls.get_executor(), [&] {
    proxy_tls.async_handshake(asio::ssl::stream_base::server, [&](error_code ec) { hs_proxy.set_value(ec); });
  });
  asio::post(agent_tls.get_executor(), [&] {
    agent_tls.async_handshake(asio::ssl::stream_base::client, [&](error_code ec) { hs_agent.set_value(ec); });
  });
  auto fp = hs_proxy.get_future(), fa = hs_agent.get_future();
  REQUIRE_FALSE(wait(fp));
  REQUIRE_FALSE(wait(fa));

  auto proxy_ex = proxy_tls.get_executor(), agent_ex = agent_tls.get_executor();
  auto proxy = session(io, std::make_unique<StreamChannel<Tls>>(std::move(proxy_tls)), Role::dialer, proxy_ex);
  auto agent = session(io, std::make_unique<StreamChannel<Tls>>(std::move(agent_tls)), Role::acceptor, agent_ex);
  // The agent sends each stream's bytes back once it has them all.
  agent->on_incoming([](TunnelStreamPtr s, Metadata md) {
    CHECK(md.at("path") == "/api/v1/pods");
    s->accept();
    read_all(s, [s](std::string got) { write_all(s, std::make_shared<const std::string>(std::move(got))); });
  });
  proxy->start();
  agent->start();

  std::string bytes(8 << 20, '\0');
  std::uint64_t x = 0x9E3779B97F4A7C15ull;
  for (auto& c : bytes) x ^= x << 13, x ^= x >> 7, x ^= x << 17, c = static_cast<char>(x);
  auto data = std::make_shared<const std::string>(bytes);
  std::vector<std::future<std::string>> answers;
  for (int i = 0; i < 3; ++i) {  // several streams share the session
    std::promise<TunnelStreamPtr> opened;
    proxy->async_open({{"path", "/api/v1/pods"}}, [&](error_code ec, TunnelStreamPtr s, std::string reason) {
      INFO(reason);
      CHECK_FALSE(ec);
      opened.set_value(std::move(s));
    });
    auto fo = opened.get_future();
    auto s = wait(fo);
    REQUIRE(s);
    auto w = write_all(s, data);
    answers.push_back(read_all(s));
    REQUIRE_FALSE(wait(w));
  }
  for (auto& f : answers) {
    auto echoed = wait(f);
    CHECK(echoed.size() == bytes.size());
    CHECK(echoed == bytes);
  }
  proxy->close("test over");
  agent->close("test over");
}

}  // namespace

TEST_CASE("the mux runs end to end inside TLS over a byte stream", "[session][stream-channel]") {
  echo_inside_tls<asio::ssl::stream<tcp::socket>>();
}

TEST_CASE("the mux runs end to end inside TLS run by OpenSSL on the socket", "[session][stream-channel]") {
  echo_inside_tls<tls::TlsSocket>();
}

TEST_CASE("frames that arrive a byte at a time reach the session whole, and an impossible length closes it",
          "[session][stream-channel]") {
  Io io;
  auto [peer, mine] = socket_pair(io.io);
  auto ex = mine.get_executor();
  auto agent = session(io, std::make_unique<StreamChannel<tcp::socket>>(std::move(mine)), Role::acceptor, ex);
  std::promise<std::string> first_bytes, closed;
  agent->on_incoming([&](TunnelStreamPtr s, Metadata md) {
    CHECK(md.at("k") == "v");
    s->accept();
    auto buf = std::make_shared<std::string>(64, '\0');
    s->async_read_some(asio::buffer(*buf), [&, s, buf](error_code ec, std::size_t n) {
      CHECK_FALSE(ec);
      first_bytes.set_value(buf->substr(0, n));
    });
  });
  agent->on_closed([&](const std::string& reason) { closed.set_value(reason); });
  agent->start();

  std::vector<std::uint8_t> wire;
  encode_open(wire, 1, serialize_metadata({{"k", "v"}}));
  const std::string hello = "hello";
  encode_data(wire, 1, std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(hello.data()), hello.size()));
  for (auto byte : wire) asio::write(peer, asio::buffer(&byte, 1));
  auto f = first_bytes.get_future();
  CHECK(wait(f) == "hello");

  // A DATA header announcing 16 MiB: no frame may be that long.
  std::vector<std::uint8_t> bad;
  encode_header(bad, FrameType::data, 0, 1, 16u << 20);
  asio::write(peer, asio::buffer(bad));
  auto fc = closed.get_future();
  CHECK_THAT(wait(fc), Catch::Contains("protocol error"));
}
