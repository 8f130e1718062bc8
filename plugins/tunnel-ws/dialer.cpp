#include "dialer.hpp"
#include "ws_transport.hpp"

#include "protocol/ws_channel.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "clusterconnect/tls_context.hpp"
#include "clusterconnect/version.hpp"

namespace clusterconnect::tunnel_ws {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;

namespace {

// The relay's refusal as one line: status and its JSON error message.
std::string describe_refusal(const websocket::response_type& res) {
  std::string msg;
  auto j = nlohmann::json::parse(res.body(), nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_object() && j["error"].value("message", "") != "")
    msg = j["error"]["message"].get<std::string>();
  else if (!res.body().empty())
    msg = res.body().substr(0, 200);
  std::string line = "relay refused the tunnel: HTTP " + std::to_string(res.result_int());
  if (!msg.empty()) line += " (" + msg + ")";
  return line;
}

bool lists_feature(std::string_view header, std::string_view feature) {
  while (!header.empty()) {
    auto comma = header.find(',');
    std::string_view item = header.substr(0, comma);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (item == feature) return true;
    header = comma == std::string_view::npos ? std::string_view{} : header.substr(comma + 1);
  }
  return false;
}

class Dial : public std::enable_shared_from_this<Dial> {
 public:
  Dial(asio::io_context& io, DialTarget target, std::shared_ptr<asio::ssl::context> tls, std::string token,
       tunnel::SessionOptions options, std::shared_ptr<spdlog::logger> logger, DialHandler handler,
       std::chrono::milliseconds timeout)
      : strand_(asio::make_strand(io)),
        resolver_(strand_),
        tls_(std::move(tls)),
        ws_(strand_, *tls_),
        target_(std::move(target)),
        token_(std::move(token)),
        options_(std::move(options)),
        logger_(std::move(logger)),
        handler_(std::move(handler)),
        timeout_(timeout) {}

  void run() {
    asio::dispatch(strand_, [self = shared_from_this()] {
      self->resolver_.async_resolve(self->target_.host, self->target_.port,
                                    [self](error_code ec, tcp::resolver::results_type r) { self->on_resolve(ec, r); });
    });
  }

 private:
  void on_resolve(error_code ec, const tcp::resolver::results_type& results) {
    if (ec) return fail(ec, "cannot resolve " + target_.host + ": " + ec.message());
    beast::get_lowest_layer(ws_).expires_after(timeout_);
    beast::get_lowest_layer(ws_).async_connect(
        results, [self = shared_from_this()](error_code e, const tcp::endpoint&) { self->on_connect(e); });
  }

  void on_connect(error_code ec) {
    if (ec) return fail(ec, "cannot connect to " + target_.host_header + ": " + ec.message());
    beast::get_lowest_layer(ws_).socket().set_option(tcp::no_delay(true), ec);
    if (!tls::set_client_host(ws_.next_layer().native_handle(), target_.host))
      return fail(asio::error::invalid_argument, "TLS refused the host name " + target_.host);
    ws_.next_layer().async_handshake(asio::ssl::stream_base::client,
                                     [self = shared_from_this()](error_code e) { self->on_tls(e); });
  }

  void on_tls(error_code ec) {
    if (ec) return fail(ec, "TLS handshake with " + target_.host_header + " failed: " + ec.message());
    // Beast's own timer takes over from the TCP stream's for the upgrade.
    beast::get_lowest_layer(ws_).expires_never();
    websocket::stream_base::timeout t{};
    t.handshake_timeout = timeout_;
    t.idle_timeout = websocket::stream_base::none();
    t.keep_alive_pings = false;
    ws_.set_option(t);
    ws_.set_option(websocket::stream_base::decorator([token = token_](websocket::request_type& req) {
      req.set(http::field::user_agent, std::string("clusterconnect-tunnel-ws/") + CLUSTERCONNECT_VERSION);
      req.set(http::field::sec_websocket_protocol, tunnel::subprotocol);
      req.set("ServiceBusAuthorization", token);
    }));
    token_.clear();
    ws_.async_handshake(res_, target_.host_header, target_.target,
                        [self = shared_from_this()](error_code e) { self->on_upgrade(e); });
  }

  void on_upgrade(error_code ec) {
    if (ec == websocket::error::upgrade_declined) {
      // 401: the token was refused (expired, wrong key): the caller may fetch
      // a new one and dial again.
      if (res_.result() == http::status::unauthorized) return fail(asio::error::access_denied, describe_refusal(res_));
      return fail(ec, describe_refusal(res_));
    }
    if (ec) return fail(ec, "WebSocket upgrade with " + target_.host_header + " failed: " + ec.message());
    if (res_[http::field::sec_websocket_protocol] != tunnel::subprotocol)
      return fail(asio::error::no_protocol_option, std::string("relay did not agree to ") + tunnel::subprotocol);
    tunnel::configure_established(ws_);
    options_.peer_accepts_renew = lists_feature(res_[tunnel::features_header], tunnel::feature_renew);
    auto session = tunnel::Session::create(strand_, std::make_unique<tunnel::WsChannel>(std::move(ws_)), std::move(options_), logger_);
    handler_({}, std::move(session), {});
  }

  void fail(error_code ec, std::string reason) {
    error_code ignored;
    beast::get_lowest_layer(ws_).socket().close(ignored);
    handler_(ec, nullptr, std::move(reason));
  }

  asio::strand<asio::io_context::executor_type> strand_;
  tcp::resolver resolver_;
  std::shared_ptr<asio::ssl::context> tls_;
  tunnel::WsStream ws_;
  DialTarget target_;
  std::string token_;
  tunnel::SessionOptions options_;
  std::shared_ptr<spdlog::logger> logger_;
  DialHandler handler_;
  std::chrono::milliseconds timeout_;
  websocket::response_type res_;
};

}  // namespace

Result<std::shared_ptr<asio::ssl::context>> make_tls_context(const RelayEndpoint& endpoint, spdlog::logger& logger) {
  if (endpoint.insecure_skip_verify)
    logger.warn("TLS certificate verification of the relay {} is OFF (insecure_skip_verify): for development only",
                endpoint.url);
  tls::ClientOptions o;
  o.ca_file = endpoint.ca_file;
  o.insecure_skip_verify = endpoint.insecure_skip_verify;
  return tls::make_client_context(o);
}

void async_dial(asio::io_context& io, DialTarget target, std::shared_ptr<asio::ssl::context> tls, std::string token,
                tunnel::SessionOptions options, std::shared_ptr<spdlog::logger> logger, DialHandler handler,
                std::chrono::milliseconds timeout) {
  std::make_shared<Dial>(io, std::move(target), std::move(tls), std::move(token), std::move(options), std::move(logger),
                         std::move(handler), timeout)
      ->run();
}

}  // namespace clusterconnect::tunnel_ws
