// The health endpoints over real loopback sockets, served by two io threads
// as in the agent.

#include <catch2/catch.hpp>

#include <atomic>
#include <thread>

#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include "health_server.hpp"

using namespace clusterconnect;
using namespace clusterconnect::agent;
using boost::asio::ip::tcp;

namespace {

struct Served {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(io);
  std::shared_ptr<HealthServer> server;
  std::vector<std::thread> threads;

  explicit Served(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    auto made = HealthServer::listen(
        io, "127.0.0.1:0",
        [](const std::string& path) -> HealthReply {
          if (path == "/healthz") return {200, "text/plain; charset=utf-8", "ok\n"};
          if (path == "/metrics") return {200, "text/plain; version=0.0.4; charset=utf-8", "m 1\n"};
          return {404, "text/plain; charset=utf-8", "not found\n"};
        },
        timeout);
    REQUIRE(made);
    server = made.value();
    for (int i = 0; i < 2; ++i) threads.emplace_back([this] { io.run(); });
  }
  ~Served() {
    server->close();
    work.reset();
    io.stop();
    for (auto& t : threads) t.join();
  }

  tcp::socket connect() {
    tcp::socket s(client_io);
    s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), server->port()));
    return s;
  }

  // Sends `request` and reads until the server closes.
  std::string exchange(const std::string& request) {
    auto s = connect();
    asio::write(s, asio::buffer(request));
    return read_all(s);
  }

  static std::string read_all(tcp::socket& s) {
    std::string out;
    char buf[4096];
    error_code ec;
    for (;;) {
      auto n = s.read_some(asio::buffer(buf), ec);
      out.append(buf, n);
      if (ec) break;
    }
    return out;
  }

  asio::io_context client_io;
};

}  // namespace

TEST_CASE("agent health: endpoints answer", "[agent][health]") {
  Served s;
  auto r = s.exchange("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(r.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(r.find("Content-Length: 3\r\n") != std::string::npos);
  CHECK(r.size() >= 3);
  CHECK(r.substr(r.size() - 3) == "ok\n");

  r = s.exchange("GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(r.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(r.find("version=0.0.4") != std::string::npos);

  CHECK(s.exchange("GET /nope HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404", 0) == 0);
  CHECK(s.exchange("POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n").rfind("HTTP/1.1 405", 0) == 0);

  r = s.exchange("HEAD /healthz HTTP/1.1\r\n\r\n");
  CHECK(r.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(r.find("Content-Length: 3\r\n") != std::string::npos);
  CHECK(r.substr(r.size() - 4) == "\r\n\r\n");  // no body
}

TEST_CASE("agent health: malformed and oversized requests get an error status", "[agent][health]") {
  Served s;
  CHECK(s.exchange("GARBAGE\r\n\r\n").rfind("HTTP/1.1 400", 0) == 0);
  const std::string big = "GET /healthz HTTP/1.1\r\nX-Fill: " + std::string(max_health_request_bytes, 'a') + "\r\n\r\n";
  CHECK(s.exchange(big).rfind("HTTP/1.1 431", 0) == 0);
  CHECK(s.exchange("POST /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").rfind("HTTP/1.1 413", 0) == 0);
}

TEST_CASE("agent health: a client that never finishes its request is closed", "[agent][health]") {
  Served s(std::chrono::milliseconds(200));
  // A partial request, then silence: the server closes at its deadline, and
  // meanwhile keeps serving others.
  auto slow = s.connect();
  asio::write(slow, asio::buffer(std::string("GET /healthz HTTP/1.1\r\nHost: x\r\n")));
  auto trickle = s.connect();
  asio::write(trickle, asio::buffer(std::string("GET /hea")));
  CHECK(s.exchange("GET /healthz HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 200", 0) == 0);
  // Reads return when the server closes; nothing was answered.
  CHECK(Served::read_all(slow).empty());
  CHECK(Served::read_all(trickle).empty());
}
