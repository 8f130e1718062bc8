#pragma once
// Raw Hybrid Connections peers for the relay's tests: an agent's control
// channel, and a WebSocket to the relay's public port (a sender, or a
// listener's accept or request rendezvous), every operation bounded.

#include <catch2/catch.hpp>

#include <chrono>
#include <future>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include "relay_fixture.hpp"
#include "rendezvous/control_message.hpp"

namespace clusterconnect::test {

namespace beast = boost::beast;
namespace websocket = boost::beast::websocket;
namespace rv = clusterconnect::tunnel::rendezvous;
using namespace std::chrono_literals;

// An agent's control channel: a WebSocket to the relay that offers no
// subprotocol, read with a time limit.
class ControlClient {
 public:
  ControlClient(const RelayProcess& relay, const std::string& path, const std::string& token) {
    ctx_.load_verify_file(relay.ca_file());
    ctx_.set_verify_mode(asio::ssl::verify_peer);
    asio::ip::tcp::resolver resolver(io_);
    beast::get_lowest_layer(ws_).connect(resolver.resolve("127.0.0.1", std::to_string(relay.port())));
    ws_.next_layer().handshake(asio::ssl::stream_base::client);
    ws_.set_option(websocket::stream_base::decorator(
        [token](websocket::request_type& req) { req.set("ServiceBusAuthorization", token); }));
    ws_.handshake(relay.host(), "/$hc/" + path + "?sb-hc-action=listen");
  }

  // The next text message, or nothing when the channel closed (then
  // close_code() says how).
  std::optional<std::string> next(std::chrono::seconds limit = 30s) {
    bool done = false;
    std::optional<std::string> got;
    ws_.async_read(buffer_, [&](beast::error_code ec, std::size_t) {
      done = true;
      if (!ec) got = beast::buffers_to_string(buffer_.data());
      buffer_.consume(buffer_.size());
    });
    io_.restart();
    io_.run_for(limit);
    REQUIRE(done);
    return got;
  }
  void send_text(const std::string& text) {
    ws_.text(true);
    ws_.write(asio::buffer(text));
  }
  void send_binary(const std::string& bytes) {
    ws_.binary(true);
    ws_.write(asio::buffer(bytes));
  }
  unsigned close_code() const { return ws_.reason().code; }
  std::string close_reason() const { return std::string(ws_.reason().reason.c_str()); }

 private:
  asio::io_context io_;
  asio::ssl::context ctx_{asio::ssl::context::tls_client};
  websocket::stream<beast::ssl_stream<beast::tcp_stream>> ws_{io_, ctx_};
  beast::flat_buffer buffer_;
};

// One raw WebSocket to the relay's public port (a Hybrid Connections sender
// or a listener's accept), every operation bounded.
class RawWs {
 public:
  explicit RawWs(const RelayProcess& relay) {
    ctx_.load_verify_file(relay.ca_file());
    ctx_.set_verify_mode(asio::ssl::verify_peer);
    asio::ip::tcp::resolver resolver(io_);
    beast::get_lowest_layer(ws_).connect(resolver.resolve("127.0.0.1", std::to_string(relay.port())));
    ws_.next_layer().handshake(asio::ssl::stream_base::client);
  }

  beast::error_code upgrade(const std::string& host, const std::string& target, std::map<std::string, std::string> headers,
                            std::chrono::seconds limit = 40s) {
    ws_.set_option(websocket::stream_base::decorator([headers](websocket::request_type& req) {
      for (const auto& [k, v] : headers) req.set(k, v);
    }));
    beast::error_code result = asio::error::timed_out;
    ws_.async_handshake(response, host, target, [&](beast::error_code ec) { result = ec; });
    run(limit);
    return result;
  }

  // The next message: (text?, bytes), or nothing when the socket closed.
  std::optional<std::pair<bool, std::string>> read(std::chrono::seconds limit = 20s) {
    std::optional<std::pair<bool, std::string>> got;
    bool done = false;
    beast::flat_buffer buffer;
    ws_.async_read(buffer, [&](beast::error_code ec, std::size_t) {
      done = true;
      if (!ec) got.emplace(ws_.got_text(), beast::buffers_to_string(buffer.data()));
    });
    run(limit);
    REQUIRE(done);
    return got;
  }

  void write(bool text, const std::string& bytes) {
    ws_.text(text);
    bool done = false;
    ws_.async_write(asio::buffer(bytes), [&](beast::error_code ec, std::size_t) {
      REQUIRE_FALSE(ec);
      done = true;
    });
    run(20s);
    REQUIRE(done);
  }

  void close(std::uint16_t code, const std::string& reason) {
    bool done = false;
    websocket::close_reason why;
    why.code = code;
    why.reason = reason;
    ws_.async_close(why, [&](beast::error_code) { done = true; });
    run(20s);
    CHECK(done);
  }

  websocket::close_reason reason() const { return ws_.reason(); }
  websocket::response_type response;

 private:
  void run(std::chrono::seconds limit) {
    io_.restart();
    io_.run_for(limit);
  }

  asio::io_context io_;
  asio::ssl::context ctx_{asio::ssl::context::tls_client};
  websocket::stream<beast::ssl_stream<beast::tcp_stream>> ws_{io_, ctx_};
};

// The accept the relay sent the listener for a parked sender.
inline rv::AcceptMessage next_accept(ControlClient& agent) {
  auto text = agent.next();
  REQUIRE(text);
  auto m = rv::parse_control_message(*text);
  REQUIRE(m.state == rv::ControlParse::State::ok);
  auto* accept = std::get_if<rv::AcceptMessage>(&m.message);
  REQUIRE(accept);
  return *accept;
}

// "wss://HOST/PATH?QUERY" -> "/PATH?QUERY".
inline std::string target_of(const std::string& url) {
  const auto slash = url.find('/', url.find("://") + 3);
  return url.substr(slash);
}

// A sender's upgrade to connect on `path` at `relay`, parked until its
// listener answers. (A future, so that a failed REQUIRE still waits for the
// upgrade to end.)
inline std::future<beast::error_code> park_sender(RawWs& sender, const RelayProcess& relay, const std::string& path,
                                                  const std::string& token) {
  return std::async(std::launch::async, [&sender, host = relay.host(), path, token] {
    return sender.upgrade(host, "/$hc/" + path + "?sb-hc-action=connect", {{"ServiceBusAuthorization", token}});
  });
}

// The listener's accept at `relay` pairs it with the parked sender, and one
// text message passes from the sender to the listener.
inline void pair_and_pass(RawWs& listener, const RelayProcess& relay, const rv::AcceptMessage& accept,
                          std::future<beast::error_code>& parked, RawWs& sender, const std::string& text) {
  REQUIRE_FALSE(listener.upgrade(relay.host(), target_of(accept.address), {}));
  REQUIRE_FALSE(parked.get());
  sender.write(true, text);
  auto got = listener.read();
  REQUIRE(got);
  CHECK(got->second == text);
}

}  // namespace clusterconnect::test
