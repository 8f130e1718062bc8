#include "relay_calls.hpp"

#include <deque>

#include <boost/asio/strand.hpp>
#include <spdlog/spdlog.h>

#include "clusterconnect/url.hpp"
#include "clusterconnect/version.hpp"
#include "relay_connection.hpp"
#include "rendezvous/control_message.hpp"

namespace clusterconnect::tunnel::transport {

namespace {

class WsControlChannel final : public ControlChannel, public std::enable_shared_from_this<WsControlChannel> {
 public:
  using Ws = websocket::stream<TlsStream>;
  WsControlChannel(Ws ws, asio::any_io_executor strand, std::string replica)
      : ws_(std::move(ws)), strand_(std::move(strand)), replica_(std::move(replica)) {}
  std::string replica() const override { return replica_; }

  void start(std::function<void(std::string)> on_message, std::function<void(std::string)> on_closed) override {
    asio::dispatch(strand_, [self = shared_from_this(), m = std::move(on_message), c = std::move(on_closed)]() mutable {
      self->on_message_ = std::move(m);
      self->on_closed_ = std::move(c);
      self->read();
    });
  }

  void send(std::string text) override {
    asio::dispatch(strand_, [self = shared_from_this(), text = std::move(text)]() mutable {
      if (self->ended_) return;
      self->queue_.push_back(std::move(text));
      self->write();
    });
  }

  void close() noexcept override {
    try {
      asio::dispatch(strand_, [self = shared_from_this()] { self->end("closed by this side", true); });
    } catch (...) {
    }
  }

 private:
  void read() {
    ws_.async_read(buffer_, [self = shared_from_this()](error_code ec, std::size_t) {
      if (ec) {
        std::string why = ec == websocket::error::closed ? "the relay closed the control channel" : ec.message();
        if (ec == websocket::error::closed && !self->ws_.reason().reason.empty())
          why += " (" + std::string(self->ws_.reason().reason.c_str()) + ")";
        return self->end(why, false);
      }
      if (!self->ws_.got_text()) {
        // An HTTP-mode request's body (Hybrid Connections): the request was
        // already answered, this side takes WebSocket connections only.
        self->buffer_.consume(self->buffer_.size());
        return self->read();
      }
      std::string text = beast::buffers_to_string(self->buffer_.data());
      self->buffer_.consume(self->buffer_.size());
      // A copy: the handler may close the channel, which drops its own.
      if (auto m = self->on_message_) m(std::move(text));
      if (!self->ended_) self->read();
    });
  }

  void write() {
    if (writing_ || queue_.empty() || ended_) return;
    writing_ = true;
    ws_.text(true);
    ws_.async_write(asio::buffer(queue_.front()), [self = shared_from_this()](error_code ec, std::size_t) {
      self->writing_ = false;
      self->queue_.pop_front();
      if (ec) return self->end("writing to the control channel failed: " + ec.message(), false);
      self->write();
    });
  }

  void end(const std::string& why, bool close_ws) {
    if (ended_) return;
    ended_ = true;
    if (close_ws && ws_.is_open()) {
      ws_.async_close(websocket::close_code::normal, [self = shared_from_this()](error_code) {});
    } else {
      error_code ignored;
      beast::get_lowest_layer(ws_).socket().close(ignored);
    }
    if (auto c = std::move(on_closed_)) c(why);
    on_message_ = nullptr;
  }

  Ws ws_;
  asio::any_io_executor strand_;
  std::string replica_;
  beast::flat_buffer buffer_;
  std::deque<std::string> queue_;
  std::function<void(std::string)> on_message_;
  std::function<void(std::string)> on_closed_;
  bool writing_ = false;
  bool ended_ = false;
};

class OpenControl : public std::enable_shared_from_this<OpenControl> {
 public:
  OpenControl(asio::io_context& io, RelayTarget target, std::shared_ptr<asio::ssl::context> tls, std::string token,
              std::shared_ptr<spdlog::logger> logger, ControlHandler handler, std::chrono::milliseconds timeout,
              std::vector<std::pair<std::string, std::string>> headers)
      : strand_(asio::make_strand(io)),
        resolver_(strand_),
        tls_(std::move(tls)),
        ws_(strand_, *tls_),
        target_(std::move(target)),
        token_(std::move(token)),
        logger_(std::move(logger)),
        handler_(std::move(handler)),
        timeout_(timeout),
        headers_(std::move(headers)) {}

  void run() {
    asio::dispatch(strand_, [self = shared_from_this()] {
      open_tls(self, self->resolver_, self->ws_.next_layer(), self->target_, self->timeout_,
               [self](error_code ec, std::string reason) {
                 if (ec) return self->fail(ec, std::move(reason));
                 self->upgrade();
               });
    });
  }

 private:
  void upgrade() {
    beast::get_lowest_layer(ws_).expires_never();
    websocket::stream_base::timeout t{};
    t.handshake_timeout = timeout_;
    // The relay pings too; a channel silent for this long is dead.
    t.idle_timeout = std::chrono::seconds(60);
    t.keep_alive_pings = true;
    ws_.set_option(t);
    ws_.read_message_max(tunnel::rendezvous::max_control_message);
    ws_.set_option(websocket::stream_base::decorator([token = token_, headers = headers_](websocket::request_type& req) {
      req.set(http::field::user_agent, std::string("clusterconnect-transport/") + CLUSTERCONNECT_VERSION);
      for (const auto& [name, value] : headers) req.set(name, value);
      req.set("ServiceBusAuthorization", token);
    }));
    token_.clear();
    ws_.async_handshake(res_, target_.host_header, target_.path + "?sb-hc-action=listen",
                        [self = shared_from_this()](error_code ec) {
                          if (ec == websocket::error::upgrade_declined)
                            return self->fail(refusal_code(self->res_.result()), describe_refusal(self->res_, "control channel"));
                          if (ec) return self->fail(ec, "WebSocket upgrade with " + self->target_.host_header + " failed: " + ec.message());
                          std::string replica(self->res_[rendezvous::replica_header]);
                          if (replica.size() > 64) replica.clear();  // an id, not a payload
                          auto channel = std::make_shared<WsControlChannel>(std::move(self->ws_), self->strand_, std::move(replica));
                          self->handler_({}, std::move(channel), {});
                        });
  }

  void fail(error_code ec, std::string reason) {
    error_code ignored;
    beast::get_lowest_layer(ws_).socket().close(ignored);
    handler_(ec, nullptr, std::move(reason));
  }

  asio::strand<asio::io_context::executor_type> strand_;
  tcp::resolver resolver_;
  std::shared_ptr<asio::ssl::context> tls_;
  websocket::stream<TlsStream> ws_;
  RelayTarget target_;
  std::string token_;
  std::shared_ptr<spdlog::logger> logger_;
  ControlHandler handler_;
  std::chrono::milliseconds timeout_;
  std::vector<std::pair<std::string, std::string>> headers_;
  websocket::response_type res_;
};

class RequestRendezvous : public std::enable_shared_from_this<RequestRendezvous> {
 public:
  RequestRendezvous(asio::io_context& io, RelayTarget target, std::shared_ptr<asio::ssl::context> tls, std::string token,
                    std::string pin, OfferHandler handler, std::chrono::milliseconds timeout)
      : strand_(asio::make_strand(io)),
        resolver_(strand_),
        tls_(std::move(tls)),
        stream_(strand_, *tls_),
        target_(std::move(target)),
        handler_(std::move(handler)),
        timeout_(timeout) {
    req_.method(http::verb::post);
    req_.target(target_.path + "?sb-hc-action=connect");
    req_.version(11);
    req_.set(http::field::host, target_.host_header);
    req_.set(http::field::user_agent, std::string("clusterconnect-transport/") + CLUSTERCONNECT_VERSION);
    req_.set("ServiceBusAuthorization", std::move(token));
    req_.set(tunnel::rendezvous::proxy_key_pin_header, std::move(pin));
    req_.set(http::field::connection, "close");
    req_.content_length(0);
    parser_.body_limit(16 * 1024);
    parser_.header_limit(16 * 1024);
  }

  void run() {
    asio::dispatch(strand_, [self = shared_from_this()] {
      open_tls(self, self->resolver_, self->stream_, self->target_, self->timeout_, [self](error_code ec, std::string reason) {
        if (ec) return self->fail(ec, std::move(reason));
        http::async_write(self->stream_, self->req_, [self](error_code ec, std::size_t) {
          if (ec) return self->fail(ec, "sending the connect to " + self->target_.host_header + " failed: " + ec.message());
          http::async_read(self->stream_, self->buffer_, self->parser_, [self](error_code ec, std::size_t) { self->on_read(ec); });
        });
      });
    });
  }

 private:
  void on_read(error_code ec) {
    if (ec) return fail(ec, "reading the relay's answer to connect failed: " + ec.message());
    const auto& res = parser_.get();
    if (res.result() != http::status::ok) return fail(refusal_code(res.result()), describe_refusal(res, "connect"));
    auto j = nlohmann::json::parse(res.body(), nullptr, false);
    if (!j.is_object() || !j.contains("rendezvous") || !j["rendezvous"].is_object() ||
        !j["rendezvous"].value("address", nlohmann::json()).is_string() ||
        !j["rendezvous"].value("ticket", nlohmann::json()).is_string())
      return fail(asio::error::invalid_argument, "the relay's answer to connect names no rendezvous");
    auto offer = parse_rendezvous_address(j["rendezvous"]["address"].get<std::string>());
    if (!offer) return fail(asio::error::invalid_argument, "the relay's rendezvous address: " + offer.error());
    offer->ticket = j["rendezvous"]["ticket"].get<std::string>();
    error_code ignored;
    beast::get_lowest_layer(stream_).socket().close(ignored);
    handler_({}, std::move(offer.value()), {});
  }

  void fail(error_code ec, std::string reason) {
    error_code ignored;
    beast::get_lowest_layer(stream_).socket().close(ignored);
    handler_(ec, {}, std::move(reason));
  }

  asio::strand<asio::io_context::executor_type> strand_;
  tcp::resolver resolver_;
  std::shared_ptr<asio::ssl::context> tls_;
  TlsStream stream_;
  RelayTarget target_;
  OfferHandler handler_;
  std::chrono::milliseconds timeout_;
  http::request<http::empty_body> req_;
  beast::flat_buffer buffer_;
  http::response_parser<http::string_body> parser_;
};

}  // namespace

Result<RelayTarget> relay_target(const RelayEndpoint& endpoint) {
  auto url = parse_url(endpoint.url);
  if (!url) return fail("relay URL '" + endpoint.url + "': " + url.error());
  if (url->scheme != "wss" && url->scheme != "https")
    return fail("relay URL '" + endpoint.url + "' must use wss:// (the relay is reached over TLS)");
  if (url->path.rfind("/$hc/", 0) != 0 || url->path.size() <= 5)
    return fail("relay URL '" + endpoint.url + "' must have the form wss://HOST/$hc/PATH");
  RelayTarget t;
  t.host = url->host;
  t.port = url->port;
  t.host_header = url->authority();
  t.path = url->path;
  if (!percent_decode(std::string_view(url->path).substr(5), t.hybrid_connection))
    return fail("relay URL '" + endpoint.url + "': the path is not valid percent-encoding");
  while (!t.hybrid_connection.empty() && t.hybrid_connection.back() == '/') t.hybrid_connection.pop_back();
  return t;
}

Result<std::shared_ptr<asio::ssl::context>> relay_tls_context(const RelayEndpoint& endpoint, spdlog::logger& logger) {
  if (endpoint.insecure_skip_verify)
    logger.warn("TLS certificate verification of the relay {} is OFF (insecure_skip_verify): for development only",
                endpoint.url);
  tls::ClientOptions o;
  o.ca_file = endpoint.ca_file;
  o.insecure_skip_verify = endpoint.insecure_skip_verify;
  return tls::make_client_context(o);
}

Result<RendezvousOffer> parse_rendezvous_address(const std::string& address) {
  constexpr std::string_view scheme = "tls://";
  if (address.rfind(scheme, 0) != 0) return fail("'" + address + "' is not a tls:// address");
  std::string_view rest = std::string_view(address).substr(scheme.size());
  RendezvousOffer o;
  std::string_view port;
  if (!rest.empty() && rest.front() == '[') {
    auto close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':')
      return fail("'" + address + "' has no port");
    o.host = std::string(rest.substr(1, close - 1));
    port = rest.substr(close + 2);
  } else {
    auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) return fail("'" + address + "' has no port");
    o.host = std::string(rest.substr(0, colon));
    port = rest.substr(colon + 1);
  }
  if (o.host.empty() || port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos)
    return fail("'" + address + "' is not tls://HOST:PORT");
  o.port = std::string(port);
  return o;
}

void async_open_control_channel(asio::io_context& io, RelayTarget target, std::shared_ptr<asio::ssl::context> tls,
                                std::string token, std::shared_ptr<spdlog::logger> logger, ControlHandler handler,
                                std::chrono::milliseconds timeout, std::vector<std::pair<std::string, std::string>> headers) {
  std::make_shared<OpenControl>(io, std::move(target), std::move(tls), std::move(token), std::move(logger),
                                std::move(handler), timeout, std::move(headers))
      ->run();
}

void async_request_rendezvous(asio::io_context& io, RelayTarget target, std::shared_ptr<asio::ssl::context> tls,
                              std::string token, std::string own_key_pin, OfferHandler handler,
                              std::chrono::milliseconds timeout) {
  std::make_shared<RequestRendezvous>(io, std::move(target), std::move(tls), std::move(token), std::move(own_key_pin),
                                      std::move(handler), timeout)
      ->run();
}

}  // namespace clusterconnect::tunnel::transport
