// TlsSocket: OpenSSL straight on a loopback socket, both roles. Every test
// runs the io_context on the test thread until the work runs out (bounded by
// a generous time limit, never waited on).

#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <openssl/ssl.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/write.hpp>

#include "clusterconnect/certificates.hpp"
#include "clusterconnect/tls_context.hpp"
#include "clusterconnect/tls_socket.hpp"

using namespace clusterconnect;
using namespace std::chrono_literals;
using tcp = asio::ip::tcp;
using tls::TlsSocket;

namespace {

constexpr auto kLimit = 60s;  // only reached if an operation never completes

std::string pattern(std::size_t n, std::uint64_t seed) {
  std::string s(n, '\0');
  std::uint64_t x = seed | 1;
  for (auto& c : s) x ^= x << 13, x ^= x >> 7, x ^= x << 17, c = static_cast<char>(x);
  return s;
}

struct Identity {
  tls::PemPair ca;
  std::shared_ptr<asio::ssl::context> server;
  std::shared_ptr<asio::ssl::context> client;
  Identity() {
    auto c = tls::create_ca("test CA", 1);
    REQUIRE(c.ok());
    ca = *c;
    auto leaf = tls::issue_server_cert(ca, {"localhost"}, {"127.0.0.1"}, 1);
    REQUIRE(leaf.ok());
    auto s = tls::make_server_context_pem(leaf->cert, leaf->key);
    REQUIRE(s.ok());
    server = *s;
    client = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
    client->add_certificate_authority(asio::buffer(ca.cert));
    client->set_verify_mode(asio::ssl::verify_peer);
  }
};

// A connected loopback pair, TLS on both ends; the client verifies "localhost".
struct Pair {
  asio::io_context io;
  Identity id;
  std::optional<TlsSocket> client, server;

  explicit Pair(int small_buffers = 0) {
    tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
    tcp::socket a(io), b(io);
    if (small_buffers > 0) {
      a.open(tcp::v4());
      a.set_option(asio::socket_base::send_buffer_size(small_buffers));
    }
    a.connect(acceptor.local_endpoint());
    acceptor.accept(b);
    if (small_buffers > 0) b.set_option(asio::socket_base::receive_buffer_size(small_buffers));
    a.set_option(tcp::no_delay(true));
    b.set_option(tcp::no_delay(true));
    client.emplace(std::move(a), id.client);
    server.emplace(std::move(b), id.server);
    REQUIRE(tls::set_client_host(client->native_handle(), "localhost"));
  }

  void run() {
    io.restart();
    io.run_for(kLimit);
  }

  // Runs what is ready until nothing is: every pending operation is then
  // waiting for the socket.
  void settle() {
    io.restart();
    for (int i = 0; i < 100000 && io.poll() > 0; ++i) {
    }
  }

  void handshake() {
    std::optional<error_code> c, s;
    client->async_handshake(TlsSocket::handshake_type::client, [&](error_code ec) { c = ec; });
    server->async_handshake(TlsSocket::handshake_type::server, [&](error_code ec) { s = ec; });
    run();
    REQUIRE(c);
    REQUIRE(s);
    INFO(c->message() << " / " << s->message());
    REQUIRE_FALSE(*c);
    REQUIRE_FALSE(*s);
  }
};

// Reads until an error (eof included), keeping everything.
struct Reader {
  TlsSocket& s;
  std::string got;
  std::vector<char> buf = std::vector<char>(256 * 1024);
  std::optional<error_code> end;
  std::size_t reads = 0;
  explicit Reader(TlsSocket& socket) : s(socket) {}
  void start() {
    s.async_read_some(asio::buffer(buf), [this](error_code ec, std::size_t n) {
      ++reads;
      got.append(buf.data(), n);
      if (ec) {
        end = ec;
        return;
      }
      start();
    });
  }
};

// Writes all of `data` and then close_notify.
void send_and_close(TlsSocket& s, const std::string& data, std::optional<error_code>& done) {
  asio::async_write(s, asio::buffer(data), [&s, &done](error_code ec, std::size_t) {
    if (ec) {
      done = ec;
      return;
    }
    s.async_shutdown_send([&done](error_code e) { done = e; });
  });
}

}  // namespace

TEST_CASE("TlsSocket handshakes in both roles with the server's name verified", "[tls][tls-socket]") {
  Pair p;
  p.handshake();
  CHECK(SSL_version(p.client->native_handle()) == TLS1_3_VERSION);
  const char* sni = SSL_get_servername(p.server->native_handle(), TLSEXT_NAMETYPE_host_name);
  REQUIRE(sni != nullptr);
  CHECK(std::string(sni) == "localhost");
}

TEST_CASE("TlsSocket refuses a server certificate for another name", "[tls][tls-socket]") {
  Pair p;
  REQUIRE(tls::set_client_host(p.client->native_handle(), "not-this-host.example"));
  std::optional<error_code> c, s;
  p.client->async_handshake(TlsSocket::handshake_type::client, [&](error_code ec) { c = ec; });
  p.server->async_handshake(TlsSocket::handshake_type::server, [&](error_code ec) { s = ec; });
  p.run();
  REQUIRE(c);
  REQUIRE(s);
  CHECK(c->category() == asio::error::get_ssl_category());
  CHECK(SSL_get_verify_result(p.client->native_handle()) == X509_V_ERR_HOSTNAME_MISMATCH);
  CHECK(*s);  // the server learns of it (alert) and fails too
}

TEST_CASE("TlsSocket moves 64 MiB each way at once byte for byte", "[tls][tls-socket]") {
  Pair p;
  p.handshake();
  const auto up = pattern(64u << 20, 1), down = pattern(64u << 20, 2);
  Reader at_server(*p.server), at_client(*p.client);
  std::optional<error_code> up_done, down_done;
  at_server.start();
  at_client.start();
  send_and_close(*p.client, up, up_done);
  send_and_close(*p.server, down, down_done);
  p.run();
  REQUIRE(up_done);
  REQUIRE(down_done);
  CHECK_FALSE(*up_done);
  CHECK_FALSE(*down_done);
  REQUIRE(at_server.end);
  REQUIRE(at_client.end);
  CHECK(*at_server.end == asio::error::eof);
  CHECK(*at_client.end == asio::error::eof);
  CHECK(at_server.got.size() == up.size());
  CHECK(at_client.got.size() == down.size());
  CHECK(at_server.got == up);
  CHECK(at_client.got == down);
  // Reads take many records at once, not one record each.
  CHECK(at_server.reads < up.size() / (16 * 1024) / 2);
  // Nothing of ours stays buffered once the transfer is over.
  CHECK(p.client->buffered_bytes() <= 16 * 1024);
  CHECK(p.server->buffered_bytes() <= 16 * 1024);
}

TEST_CASE("TlsSocket carries many small writes in order", "[tls][tls-socket]") {
  Pair p;
  p.handshake();
  std::string expected;
  const auto source = pattern(200, 3);
  struct Writer {
    TlsSocket& s;
    const std::string& source;
    std::string& expected;
    std::optional<error_code> done;
    int left = 5000;
    void next() {
      if (left-- == 0) return s.async_shutdown_send([this](error_code ec) { done = ec; });
      const std::size_t n = 1 + static_cast<std::size_t>(left) % source.size();
      expected.append(source.data(), n);
      s.async_write_some(asio::buffer(source.data(), n), [this, n](error_code ec, std::size_t w) {
        CHECK(w == n);
        if (ec) {
          done = ec;
          return;
        }
        next();
      });
    }
  } writer{*p.client, source, expected, {}};
  Reader reader(*p.server);
  reader.start();
  writer.next();
  p.run();
  REQUIRE(writer.done);
  CHECK_FALSE(*writer.done);
  REQUIRE(reader.end);
  CHECK(*reader.end == asio::error::eof);
  CHECK(reader.got == expected);
}

// A read that finds the socket empty waits without asking it again: what
// arrived while no read was pending must still wake it.
TEST_CASE("TlsSocket reads what arrived while no read was pending, after the socket ran empty", "[tls][tls-socket]") {
  Pair p;
  p.handshake();
  std::array<char, 4096> buf{};
  const auto exchange = [&](const std::string& message) {
    std::optional<error_code> wrote;
    asio::async_write(*p.client, asio::buffer(message), [&](error_code ec, std::size_t) { wrote = ec; });
    p.run();  // the bytes are in the server's socket; no read is pending
    REQUIRE(wrote);
    REQUIRE_FALSE(*wrote);
    std::optional<error_code> read;
    std::string got;
    p.server->async_read_some(asio::buffer(buf), [&](error_code ec, std::size_t n) {
      read = ec;
      got.assign(buf.data(), n);
    });
    p.run();
    REQUIRE(read);
    REQUIRE_FALSE(*read);
    return got;
  };
  // Each read takes less than it asked for, so the socket was empty after it.
  CHECK(exchange("first") == "first");
  CHECK(exchange("second, sent once the first was read") == "second, sent once the first was read");
  CHECK(exchange(pattern(3000, 9)) == pattern(3000, 9));
}

TEST_CASE("TlsSocket reads close_notify as eof and a bare TCP end as truncation", "[tls][tls-socket]") {
  Pair p;
  p.handshake();
  Reader reader(*p.server);
  reader.start();
  const std::string hello = "hello";
  bool close_notify = GENERATE(true, false);
  std::optional<error_code> wrote;
  asio::async_write(*p.client, asio::buffer(hello), [&](error_code ec, std::size_t) {
    wrote = ec;
    if (close_notify) {
      p.client->async_shutdown_send([](error_code) {});
    } else {
      p.client->lowest_layer().shutdown(tcp::socket::shutdown_send);
    }
  });
  p.run();
  REQUIRE(wrote);
  CHECK_FALSE(*wrote);
  REQUIRE(reader.end);
  CHECK(reader.got == hello);
  if (close_notify)
    CHECK(*reader.end == asio::error::eof);
  else
    CHECK(*reader.end == asio::ssl::error::stream_truncated);
}

TEST_CASE("TlsSocket half-closes: after close_notify it still reads", "[tls][tls-socket]") {
  Pair p;
  p.handshake();
  std::optional<error_code> shut, late_write;
  p.client->async_shutdown_send([&](error_code ec) {
    shut = ec;
    p.client->async_write_some(asio::buffer("x", 1), [&](error_code e, std::size_t) { late_write = e; });
  });
  Reader at_server(*p.server);
  at_server.start();
  p.run();  // the server reads eof
  REQUIRE(shut);
  CHECK_FALSE(*shut);
  REQUIRE(late_write);
  CHECK(*late_write == asio::error::shut_down);
  REQUIRE(at_server.end);
  CHECK(*at_server.end == asio::error::eof);
  // The client, closed for writing, reads the server's answer.
  Reader at_client(*p.client);
  at_client.start();
  std::optional<error_code> answered;
  const std::string answer = "still here";
  send_and_close(*p.server, answer, answered);
  p.run();
  REQUIRE(answered);
  CHECK_FALSE(*answered);
  REQUIRE(at_client.end);
  CHECK(*at_client.end == asio::error::eof);
  CHECK(at_client.got == answer);
}

TEST_CASE("TlsSocket aborts a pending read when its socket closes or the object goes", "[tls][tls-socket]") {
  Pair p;
  p.handshake();
  Reader reader(*p.server);
  reader.start();
  p.settle();
  REQUIRE_FALSE(reader.end);  // waiting for the socket
  const bool destroy = GENERATE(false, true);
  if (destroy)
    p.server.reset();
  else
    p.server->lowest_layer().close();
  p.run();
  REQUIRE(reader.end);
  CHECK(*reader.end == asio::error::operation_aborted);
  CHECK(reader.reads == 1);
}

TEST_CASE("TlsSocket aborts a pending write when its socket closes", "[tls][tls-socket]") {
  Pair p(64 * 1024);
  p.handshake();
  const auto data = pattern(32u << 20, 4);  // far more than the socket buffers hold
  std::optional<error_code> wrote;
  std::size_t calls = 0;
  asio::async_write(*p.client, asio::buffer(data), [&](error_code ec, std::size_t) {
    ++calls;
    wrote = ec;
  });
  p.settle();
  REQUIRE_FALSE(wrote);  // the peer reads nothing: the write waits for room
  CHECK(p.client->buffered_bytes() > 0);
  const bool destroy = GENERATE(false, true);
  if (destroy)
    p.client.reset();
  else
    p.client->lowest_layer().close();
  p.run();
  REQUIRE(wrote);
  CHECK(*wrote == asio::error::operation_aborted);
  CHECK(calls == 1);
}

namespace {

struct KeyUpdates {
  int sent = 0;
  int received = 0;
};

void count_key_updates(int write_p, int, int content_type, const void* buf, std::size_t len, SSL*, void* arg) {
  if (content_type != SSL3_RT_HANDSHAKE || len == 0) return;
  if (static_cast<const unsigned char*>(buf)[0] != SSL3_MT_KEY_UPDATE) return;
  auto* k = static_cast<KeyUpdates*>(arg);
  (write_p ? k->sent : k->received) += 1;
}

}  // namespace

TEST_CASE("TlsSocket answers a TLS 1.3 KeyUpdate the server sends mid-stream", "[tls][tls-socket]") {
  Pair p;
  p.handshake();
  KeyUpdates at_server, at_client;
  SSL_set_msg_callback(p.server->native_handle(), count_key_updates);
  SSL_set_msg_callback_arg(p.server->native_handle(), &at_server);
  SSL_set_msg_callback(p.client->native_handle(), count_key_updates);
  SSL_set_msg_callback_arg(p.client->native_handle(), &at_client);

  const auto first = pattern(1u << 20, 5), second = pattern(1u << 20, 6), reply = pattern(300000, 7);
  Reader at_client_reader(*p.client);
  at_client_reader.start();
  std::optional<error_code> served;
  asio::async_write(*p.server, asio::buffer(first), [&](error_code ec, std::size_t) {
    REQUIRE_FALSE(ec);
    // The next record goes out under new keys, and the client must update too.
    REQUIRE(SSL_key_update(p.server->native_handle(), SSL_KEY_UPDATE_REQUESTED) == 1);
    send_and_close(*p.server, second, served);
  });
  p.run();
  REQUIRE(served);
  CHECK_FALSE(*served);
  REQUIRE(at_client_reader.end);
  CHECK(*at_client_reader.end == asio::error::eof);
  CHECK(at_client_reader.got == first + second);
  CHECK(at_server.sent == 1);
  CHECK(at_client.received == 1);

  // The client's answer (its own KeyUpdate) leaves before its next data; the
  // server reads that data under the client's new keys.
  Reader at_server_reader(*p.server);
  at_server_reader.start();
  std::optional<error_code> replied;
  send_and_close(*p.client, reply, replied);
  p.run();
  REQUIRE(replied);
  CHECK_FALSE(*replied);
  REQUIRE(at_server_reader.end);
  CHECK(*at_server_reader.end == asio::error::eof);
  CHECK(at_server_reader.got == reply);
  CHECK(at_client.sent == 1);
  CHECK(at_server.received == 1);
}

TEST_CASE("TlsSocket sends the records of one write together", "[tls][tls-socket]") {
  Pair p;
  p.handshake();
  // Ten full records: written one by one they would be ten TCP segments at least.
  const auto data = pattern(160 * 1024, 8);
  const int fd = p.client->lowest_layer().native_handle();
  // The kernel's tcp_info is longer than glibc's: tcpi_segs_out sits at byte
  // 136 (after the 8 one-byte fields, 24 u32 and 4 u64), a fixed place in its ABI.
  auto segments_out = [fd] {
    alignas(8) unsigned char raw[256] = {};
    socklen_t len = sizeof raw;
    REQUIRE(::getsockopt(fd, IPPROTO_TCP, TCP_INFO, raw, &len) == 0);
    REQUIRE(len >= 144);
    tcp_info info{};
    std::memcpy(&info, raw, sizeof info);
    std::uint32_t segs_out = 0;
    std::memcpy(&segs_out, raw + 136, sizeof segs_out);
    return std::pair<std::uint32_t, std::uint32_t>(segs_out, info.tcpi_snd_mss);
  };
  const auto [before, mss] = segments_out();
  const std::size_t one_send = (data.size() + 10 * 22 + mss - 1) / mss;  // records' overhead included
  if (one_send + 1 >= 10) {
    WARN("this loopback's MSS (" << mss << ") cannot tell one send from ten");
    return;
  }
  std::optional<error_code> wrote;
  std::size_t written = 0;
  p.client->async_write_some(asio::buffer(data), [&](error_code ec, std::size_t n) {
    wrote = ec;
    written = n;
  });
  p.run();
  REQUIRE(wrote);
  CHECK_FALSE(*wrote);
  CHECK(written == data.size());
  const auto [after, mss_after] = segments_out();
  (void)mss_after;
  // One send: as many segments as the MSS needs, and perhaps one pure ACK.
  CHECK(after - before <= one_send + 1);
}

TEST_CASE("TlsSocket puts small neighbouring pieces in one record and keeps no output buffer once sent",
          "[tls][tls-socket]") {
  Pair p;
  p.handshake();
  // Records the server receives, counted by OpenSSL's message callback (one
  // SSL3_RT_HEADER call per record).
  static int records = 0;
  records = 0;
  SSL_set_msg_callback(p.server->native_handle(), [](int write_p, int, int content_type, const void*, size_t, SSL*, void*) {
    if (!write_p && content_type == SSL3_RT_HEADER) ++records;
  });
  const std::string head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::string size_line = "1f4\r\n", body = pattern(500, 9), crlf = "\r\n";
  const std::array<asio::const_buffer, 4> pieces{asio::buffer(head), asio::buffer(size_line), asio::buffer(body),
                                                 asio::buffer(crlf)};
  const std::string expected = head + size_line + body + crlf;
  std::optional<error_code> wrote;
  std::size_t written = 0;
  p.client->async_write_some(pieces, [&](error_code ec, std::size_t n) {
    wrote = ec;
    written = n;
    if (!ec) p.client->async_shutdown_send([](error_code) {});
  });
  Reader reader(*p.server);
  reader.start();
  p.run();
  REQUIRE(wrote);
  CHECK_FALSE(*wrote);
  CHECK(written == expected.size());
  CHECK(reader.got == expected);
  // The four pieces in one record, then close_notify in another.
  CHECK(records == 2);
  CHECK(p.client->buffered_bytes() == 0);
}
