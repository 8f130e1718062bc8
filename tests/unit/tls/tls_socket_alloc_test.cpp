// TlsSocket's own heap allocations per operation (every operator new of this
// binary is counted; OpenSSL's buffers come from malloc and are not).

#include <catch2/catch.hpp>

#include <memory>
#include <optional>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/strand.hpp>

#include "../core/alloc_counter.hpp"
#include "clusterconnect/certificates.hpp"
#include "clusterconnect/tls_context.hpp"
#include "clusterconnect/tls_socket.hpp"

using namespace clusterconnect;
using tcp = asio::ip::tcp;
using tls::TlsSocket;

namespace {

struct Contexts {
  std::shared_ptr<asio::ssl::context> server, client;
  Contexts() {
    auto ca = tls::create_ca("test CA", 1);
    REQUIRE(ca.ok());
    auto leaf = tls::issue_server_cert(*ca, {"localhost"}, {"127.0.0.1"}, 1);
    REQUIRE(leaf.ok());
    auto s = tls::make_server_context_pem(leaf->cert, leaf->key);
    REQUIRE(s.ok());
    server = *s;
    client = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
    client->add_certificate_authority(asio::buffer(ca->cert));
    client->set_verify_mode(asio::ssl::verify_peer);
  }
};

// Allocations over `rounds` round trips of one byte each way between two
// TlsSockets whose TCP sockets have executors made by `executor(io)`. Each
// read starts before its peer writes, so it waits for the socket.
template <class MakeExecutor>
long allocations_for_round_trips(const Contexts& ctx, int rounds, MakeExecutor executor) {
  asio::io_context io(1);
  tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
  tcp::socket a(executor(io)), b(executor(io));
  a.connect(acceptor.local_endpoint());
  acceptor.accept(b);
  a.set_option(tcp::no_delay(true));
  b.set_option(tcp::no_delay(true));
  TlsSocket client(std::move(a), ctx.client), server(std::move(b), ctx.server);
  REQUIRE(tls::set_client_host(client.native_handle(), "localhost"));

  std::optional<error_code> c, s;
  client.async_handshake(TlsSocket::handshake_type::client, [&](error_code ec) { c = ec; });
  server.async_handshake(TlsSocket::handshake_type::server, [&](error_code ec) { s = ec; });
  while (!(c && s) && io.run_one() > 0) {
  }
  REQUIRE(c);
  REQUIRE(s);
  REQUIRE_FALSE(*c);
  REQUIRE_FALSE(*s);

  char out = 'x', in = 0;
  bool failed = false;
  auto send_receive = [&](TlsSocket& from, TlsSocket& to) {
    bool read = false, written = false;
    to.async_read_some(asio::buffer(&in, 1), [&](error_code ec, std::size_t n) {
      failed |= ec || n != 1;
      read = true;
    });
    from.async_write_some(asio::buffer(&out, 1), [&](error_code ec, std::size_t n) {
      failed |= ec || n != 1;
      written = true;
    });
    io.restart();  // the last handlers may have left it out of work
    while (!(read && written) && io.run_one() > 0) {
    }
    failed |= !(read && written);
  };
  auto round_trips = [&](int n) {
    for (int i = 0; i < n; ++i) {
      send_receive(client, server);
      send_receive(server, client);
    }
  };
  round_trips(20);  // Asio's per-thread operation memory settles
  const long before = allocations();
  round_trips(rounds);
  const long used = allocations() - before;
  REQUIRE_FALSE(failed);
  return used;
}

}  // namespace

TEST_CASE("TlsSocket on a strand allocates per wait only the strand's own operation", "[tls][tls-socket]") {
  // A strand queues each completion as an operation of its own: one
  // allocation per wait more than on the io_context's executor. Through an
  // any_io_executor holding the strand, each wait also took work on a heap
  // copy of the strand and dispatched through further copies (four more).
  const Contexts ctx;
  constexpr int rounds = 200;
  const long plain = allocations_for_round_trips(ctx, rounds, [](asio::io_context& io) { return io.get_executor(); });
  const long strand =
      allocations_for_round_trips(ctx, rounds, [](asio::io_context& io) { return asio::make_strand(io); });
  INFO(plain << " allocations on the io_context's executor, " << strand << " on a strand, for " << rounds
             << " round trips (a wait for each read)");
  const long waits = 2 * rounds;
  CHECK(strand - plain <= waits + waits / 2);
}
