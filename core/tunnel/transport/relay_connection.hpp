#pragma once
// What both of the transport's Beast translation units need to talk to the
// relay itself: a verified TLS connection, and the relay's refusal in one
// line. Heavy (Beast + Asio SSL).

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <nlohmann/json.hpp>

#include "clusterconnect/tls_context.hpp"
#include "relay_calls.hpp"

namespace clusterconnect::tunnel::transport {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;

// What the relay said, in one line: status and its JSON error message.
template <class Body>
inline std::string describe_refusal(const http::response<Body>& res, std::string_view what) {
  std::string msg;
  const nlohmann::json j = nlohmann::json::parse(res.body(), nullptr, false);
  if (j.is_object() && j.contains("error") && j.at("error").is_object() && j.at("error").value("message", "") != "")
    msg = j.at("error").value("message", "");
  else if (!res.body().empty())
    msg = std::string(res.body().substr(0, 200));
  std::string line = "relay refused the " + std::string(what) + ": HTTP " + std::to_string(res.result_int());
  if (!msg.empty()) line += " (" + msg + ")";
  return line;
}

inline error_code refusal_code(http::status status) {
  if (status == http::status::unauthorized) return asio::error::access_denied;
  if (status == http::status::not_found) return asio::error::host_not_found;
  return asio::error::connection_refused;
}

// Resolve, connect (TCP_NODELAY) and the verified TLS handshake, bounded by
// the stream's timer; then `next(ec, reason)`.
template <class Self, class Stream, class Next>
void open_tls(std::shared_ptr<Self> self, tcp::resolver& resolver, Stream& tls, const RelayTarget& target,
              std::chrono::milliseconds timeout, Next next) {
  resolver.async_resolve(target.host, target.port, [self, &tls, &target, timeout, next = std::move(next)](
                                                       error_code ec, tcp::resolver::results_type results) mutable {
    if (ec) return next(ec, "cannot resolve " + target.host + ": " + ec.message());
    beast::get_lowest_layer(tls).expires_after(timeout);
    beast::get_lowest_layer(tls).async_connect(results, [self, &tls, &target, next = std::move(next)](
                                                            error_code ec, const tcp::endpoint&) mutable {
      if (ec) return next(ec, "cannot connect to " + target.host_header + ": " + ec.message());
      beast::get_lowest_layer(tls).socket().set_option(tcp::no_delay(true), ec);
      if (!tls::set_client_host(tls.native_handle(), target.host))
        return next(asio::error::invalid_argument, "TLS refused the host name " + target.host);
      tls.async_handshake(asio::ssl::stream_base::client, [self, &target, next = std::move(next)](error_code ec) mutable {
        if (ec) return next(ec, "TLS handshake with " + target.host_header + " failed: " + ec.message());
        next(error_code{}, std::string{});
      });
    });
  });
}

}  // namespace clusterconnect::tunnel::transport
