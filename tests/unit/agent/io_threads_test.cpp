// Shutdown lets the io threads finish the work in flight (close frames,
// resets) instead of stopping them after a fixed sleep; a peer that never
// answers cannot hold it up past the bound.

#include <catch2/catch.hpp>

#include <atomic>
#include <future>
#include <string>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>

#include "io_threads.hpp"

using namespace clusterconnect;
using namespace clusterconnect::agent;
using boost::asio::ip::tcp;

namespace {

// A connected loopback pair: `server` lives on `io`, `client` is blocking.
struct Pair {
  asio::io_context client_io;
  tcp::socket server, client{client_io};
  explicit Pair(asio::io_context& io) : server(io) {
    tcp::acceptor acceptor(client_io, {asio::ip::make_address("127.0.0.1"), 0});
    client.connect(acceptor.local_endpoint());
    tcp::socket accepted(client_io);
    acceptor.accept(accepted);
    server.assign(tcp::v4(), accepted.release());
  }
};

}  // namespace

TEST_CASE("agent io threads: finishing runs the work in flight to completion", "[agent][shutdown]") {
  asio::io_context io;
  Pair pair(io);
  std::promise<std::string> got;
  char buf[16];
  IoThreads threads(io, 2);
  pair.server.async_read_some(asio::buffer(buf), [&](error_code ec, std::size_t n) {
    got.set_value(ec ? "error: " + ec.message() : std::string(buf, n));
  });
  // Shutdown starts while the read is still pending; the peer answers later.
  auto finished = std::async(std::launch::async, [&] { return threads.finish(std::chrono::seconds(60)); });
  asio::write(pair.client, asio::buffer(std::string("bye")));
  CHECK(finished.get());  // ran out of work, not stopped
  auto result = got.get_future();
  REQUIRE(result.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
  CHECK(result.get() == "bye");
}

TEST_CASE("agent io threads: a peer that never answers cannot hold shutdown past its bound", "[agent][shutdown]") {
  asio::io_context io;
  Pair pair(io);
  char buf[16];
  std::atomic<bool> handled{false};
  IoThreads threads(io, 2);
  pair.server.async_read_some(asio::buffer(buf), [&](error_code, std::size_t) { handled = true; });
  CHECK_FALSE(threads.finish(std::chrono::milliseconds(100)));  // stopped at the bound
  CHECK_FALSE(handled);
}
