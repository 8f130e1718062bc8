#include <catch2/catch.hpp>

#include "clusterconnect/certificates.hpp"
#include "clusterconnect/tls.hpp"
#include "clusterconnect/tls_context.hpp"
#include "test_env.hpp"

#include <boost/asio/ip/tcp.hpp>

using namespace clusterconnect;

namespace {

// Reads until eof (or an error) and hands over everything read.
void read_all(StreamPtr s, std::function<void(error_code, std::string)> done) {
  struct Reader : std::enable_shared_from_this<Reader> {
    StreamPtr s;
    std::function<void(error_code, std::string)> done;
    std::string data;
    char buf[4096];
    void next() {
      s->async_read_some(asio::buffer(buf), [self = shared_from_this()](error_code ec, std::size_t n) {
        self->data.append(self->buf, n);
        if (ec) return self->done(ec == asio::error::eof ? error_code{} : ec, std::move(self->data));
        self->next();
      });
    }
  };
  auto r = std::make_shared<Reader>();
  r->s = std::move(s);
  r->done = std::move(done);
  r->next();
}

void write_all(StreamPtr s, std::shared_ptr<std::string> data, std::function<void(error_code)> done,
               std::size_t off = 0) {
  if (off == data->size()) return done({});
  asio::const_buffer b(data->data() + off, data->size() - off);
  s->async_write_some(std::span<const asio::const_buffer>(&b, 1), [s, data, done, off](error_code ec, std::size_t n) {
    if (ec) return done(ec);
    write_all(s, data, done, off + n);
  });
}

struct Pki {
  test::TempDir dir;
  tls::PemPair ca;
  std::string ca_file;
  Pki() {
    auto c = tls::create_ca("test CA", 2);
    REQUIRE(c.ok());
    ca = *c;
    ca_file = (dir.path() / "ca.crt").string();
    REQUIRE(tls::write_private_file(ca_file, ca.cert).ok());
  }
  std::shared_ptr<asio::ssl::context> server(std::vector<std::string> dns, std::vector<std::string> ips) {
    auto leaf = tls::issue_server_cert(ca, std::move(dns), std::move(ips), 1);
    REQUIRE(leaf.ok());
    auto ctx = tls::make_server_context_pem(leaf->cert, leaf->key);
    REQUIRE(ctx.ok());
    return *ctx;
  }
  std::shared_ptr<asio::ssl::context> client() {
    auto ctx = tls::make_client_context({ca_file, false, {}, {}});
    REQUIRE(ctx.ok());
    return *ctx;
  }
};

// A server that answers "got:<what it read>" after the client's half-close,
// then half-closes itself.
std::shared_ptr<tls::TlsServer> echo_server(asio::io_context& io, std::shared_ptr<asio::ssl::context> ctx) {
  auto server = tls::TlsServer::listen(io, "127.0.0.1", 0, std::move(ctx), [](StreamPtr s) {
    read_all(s, [s](error_code ec, std::string got) {
      if (ec) return;
      write_all(s, std::make_shared<std::string>("got:" + got), [s](error_code ec) {
        if (!ec) s->async_shutdown_send([s](error_code) {});
      });
    });
  }, nullptr);
  REQUIRE(server.ok());
  return *server;
}

struct ConnectOutcome {
  bool done = false;
  error_code ec;
  StreamPtr stream;
  std::string reason;
};

ConnectOutcome connect(asio::io_context& io, const std::string& host, unsigned short port,
                       std::shared_ptr<asio::ssl::context> ctx) {
  ConnectOutcome out;
  tls::async_connect(io, host, std::to_string(port), std::move(ctx), [&](error_code ec, StreamPtr s, std::string why) {
    out.done = true;
    out.ec = ec;
    out.stream = std::move(s);
    out.reason = std::move(why);
  });
  io.restart();
  while (!out.done && io.run_one_for(std::chrono::seconds(5))) {
  }
  REQUIRE(out.done);
  return out;
}

}  // namespace

TEST_CASE("TLS round trip with half-close in both directions", "[tls]") {
  asio::io_context io;
  Pki pki;
  auto server = echo_server(io, pki.server({"localhost"}, {"127.0.0.1"}));

  for (const char* host : {"localhost", "127.0.0.1"}) {
    INFO(host);
    auto c = connect(io, host, server->port(), pki.client());
    REQUIRE_FALSE(c.ec);
    REQUIRE(c.stream);
    bool finished = false;
    std::string reply;
    write_all(c.stream, std::make_shared<std::string>(std::string(100000, 'x') + "end"), [&](error_code ec) {
      REQUIRE_FALSE(ec);
      c.stream->async_shutdown_send([&](error_code ec) {
        REQUIRE_FALSE(ec);
        // The server only answers once it has read our close_notify as eof,
        // so reading its answer proves our half-close and that our read
        // side stayed open.
        read_all(c.stream, [&](error_code ec, std::string got) {
          CHECK_FALSE(ec);
          reply = std::move(got);
          finished = true;
        });
      });
    });
    io.restart();
    while (!finished && io.run_one_for(std::chrono::seconds(5))) {
    }
    REQUIRE(finished);
    CHECK(reply == "got:" + std::string(100000, 'x') + "end");
  }
  server->close();
}

TEST_CASE("TLS over IPv6 loopback with a bracketed host", "[tls]") {
  asio::io_context io;
  Pki pki;
  auto server = tls::TlsServer::listen(io, "::1", 0, pki.server({}, {"::1"}), [](StreamPtr) {}, nullptr);
  if (!server.ok()) CLUSTERCONNECT_SKIP("no IPv6 loopback here (enable ::1 on lo): " << server.error());
  auto c = connect(io, "[::1]", (*server)->port(), pki.client());
  CHECK_FALSE(c.ec);
  CHECK(c.reason.empty());
  (*server)->close();
}

TEST_CASE("TLS client refuses a certificate from another CA", "[tls]") {
  asio::io_context io;
  Pki pki, other;
  auto server = echo_server(io, other.server({"localhost"}, {"127.0.0.1"}));
  auto c = connect(io, "localhost", server->port(), pki.client());
  CHECK(c.ec);
  CHECK_FALSE(c.stream);
  CHECK_THAT(c.reason, Catch::Contains("TLS handshake with localhost:") && Catch::Contains("certificate verify failed"));
  server->close();
}

TEST_CASE("TLS client refuses a certificate for another host name or IP", "[tls]") {
  asio::io_context io;
  Pki pki;
  auto server = echo_server(io, pki.server({"api.example.test"}, {"10.1.2.3"}));
  auto by_name = connect(io, "localhost", server->port(), pki.client());
  CHECK(by_name.ec);
  CHECK_THAT(by_name.reason, Catch::Contains("mismatch"));
  auto by_ip = connect(io, "127.0.0.1", server->port(), pki.client());
  CHECK(by_ip.ec);
  CHECK_THAT(by_ip.reason, Catch::Contains("mismatch"));
  server->close();
}

TEST_CASE("insecure_skip_verify accepts any certificate", "[tls]") {
  asio::io_context io;
  Pki pki, other;
  auto server = echo_server(io, other.server({"api.example.test"}, {}));
  auto ctx = tls::make_client_context({{}, true, {}, {}});
  REQUIRE(ctx.ok());
  auto c = connect(io, "127.0.0.1", server->port(), *ctx);
  CHECK_FALSE(c.ec);
  CHECK(c.stream);
  server->close();
}

TEST_CASE("connection refused and timeouts are reported with the address", "[tls]") {
  asio::io_context io;
  Pki pki;
  unsigned short port;
  {
    asio::ip::tcp::acceptor a(io, {asio::ip::make_address("127.0.0.1"), 0});
    port = a.local_endpoint().port();
  }
  auto c = connect(io, "127.0.0.1", port, pki.client());
  CHECK(c.ec);
  CHECK_THAT(c.reason, Catch::Contains("cannot connect to 127.0.0.1:" + std::to_string(port)));

  // A listener that never handshakes.
  asio::ip::tcp::acceptor silent(io, {asio::ip::make_address("127.0.0.1"), 0});
  ConnectOutcome out;
  tls::async_connect(io, "127.0.0.1", std::to_string(silent.local_endpoint().port()), pki.client(),
                     [&](error_code ec, StreamPtr, std::string why) {
                       out.done = true;
                       out.ec = ec;
                       out.reason = why;
                     },
                     std::chrono::milliseconds(200));
  io.restart();
  while (!out.done && io.run_one_for(std::chrono::seconds(5))) {
  }
  REQUIRE(out.done);
  CHECK(out.ec == asio::error::timed_out);
  CHECK_THAT(out.reason, Catch::Contains("timed out"));
}

TEST_CASE("a busy port is a Failure naming the address and port", "[tls]") {
  asio::io_context io;
  Pki pki;
  auto ctx = pki.server({"localhost"}, {});
  auto first = tls::TlsServer::listen(io, "127.0.0.1", 0, ctx, [](StreamPtr) {}, nullptr);
  REQUIRE(first.ok());
  auto port = (*first)->port();
  CHECK(port != 0);
  auto second = tls::TlsServer::listen(io, "127.0.0.1", port, ctx, [](StreamPtr) {}, nullptr);
  REQUIRE_FALSE(second.ok());
  CHECK(second.error() == "127.0.0.1:" + std::to_string(port) + " is already in use");
  (*first)->close();
  CHECK_FALSE(tls::TlsServer::listen(io, "not-an-ip", 0, ctx, [](StreamPtr) {}, nullptr).ok());
}

TEST_CASE("server handshake timeout drops silent clients", "[tls]") {
  asio::io_context io;
  Pki pki;
  tls::ServerLimits limits;
  limits.handshake_timeout = std::chrono::milliseconds(100);
  auto server = tls::TlsServer::listen(io, "127.0.0.1", 0, pki.server({"localhost"}, {}), [](StreamPtr) {}, nullptr,
                                       limits);
  REQUIRE(server.ok());
  asio::ip::tcp::socket raw(io);
  raw.connect({asio::ip::make_address("127.0.0.1"), (*server)->port()});
  char b[16];
  bool closed = false;
  raw.async_read_some(asio::buffer(b), [&](error_code ec, std::size_t) { closed = ec == asio::error::eof; });
  io.restart();
  auto start = std::chrono::steady_clock::now();
  while (!closed && io.run_one_for(std::chrono::seconds(3))) {
  }
  CHECK(closed);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(2));
  (*server)->close();
}

// Go's crypto/x509 (kubectl) enforces the local CA's name constraints too:
// a certificate the CA signed for another name is refused for that name.
#include <thread>

TEST_CASE("kubectl refuses a certificate the local CA signed for a non-loopback name", "[tls][kubectl][ca]") {
  if (::access("/usr/bin/kubectl", X_OK) != 0) {
    WARN("kubectl not installed; skipped");
    return;
  }
  test::TempDir dir;
  auto ca = tls::load_or_create_ca(dir.path() / "ca", "connectedk8s local CA");
  REQUIRE(ca.ok());
  auto leaf = tls::issue_server_cert(*ca, {"api.example.test"}, {}, 1);
  REQUIRE(leaf.ok());
  auto ctx = tls::make_server_context_pem(leaf->cert, leaf->key);
  REQUIRE(ctx.ok());
  asio::io_context io;
  auto guard = asio::make_work_guard(io);
  auto server = tls::TlsServer::listen(io, "127.0.0.1", 0, *ctx, [](StreamPtr) {}, nullptr);
  REQUIRE(server.ok());
  std::thread runner([&io] { io.run(); });
  auto r = test::run("/usr/bin/kubectl --kubeconfig=/dev/null --token=local-test --request-timeout=10s "
                     "--server=https://127.0.0.1:" + std::to_string((*server)->port()) +
                     " --tls-server-name=api.example.test --certificate-authority=" +
                     test::quote((dir.path() / "ca" / "ca.crt").string()) + " get --raw /version </dev/null");
  asio::post(io, [&] { (*server)->close(); });
  guard.reset();
  io.stop();
  runner.join();
  INFO(r.output);
  CHECK(r.status != 0);
  CHECK_THAT(r.output, Catch::Contains("not authorized to sign for this name"));
}
