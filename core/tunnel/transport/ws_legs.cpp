// The ws form of a rendezvous: both legs are WebSockets to the relay in Azure
// Relay Hybrid Connections' shape (the proxy's is a sender's connect, the
// agent's the accept address it was sent), and the relay passes their binary
// messages through. TLS runs inside them end to end, the same handshake and
// key checks as the tls form; then the mux.

#include <optional>

#include <spdlog/spdlog.h>

#include "clusterconnect/url.hpp"
#include "clusterconnect/version.hpp"
#include "leg_base.hpp"
#include "protocol/stream_channel.hpp"
#include "protocol/ws_bytes.hpp"
#include "relay_connection.hpp"
#include "rendezvous/control_message.hpp"

namespace clusterconnect::tunnel::transport {

namespace {

using InnerTls = asio::ssl::stream<tunnel::WsBytes>;

// One attempt: verified TLS to the relay, the WebSocket upgrade (the side's
// own), then TLS end to end inside the WebSocket.
class WsLeg : public LegBase {
 public:
  void run() {
    asio::dispatch(strand_, [self = self_as<WsLeg>()] {
      self->arm_timer();
      open_tls(self, self->resolver_, self->ws_->next_layer(), self->target_, self->timeout_,
               [self](error_code ec, std::string reason) {
                 if (ec) return self->fail(ec, std::move(reason));
                 beast::get_lowest_layer(*self->ws_).expires_never();
                 websocket::stream_base::timeout t{};
                 t.handshake_timeout = self->timeout_;
                 t.idle_timeout = websocket::stream_base::none();
                 t.keep_alive_pings = false;
                 self->ws_->set_option(t);
                 self->upgrade();
               });
    });
  }

 protected:
  WsLeg(asio::io_context& io, std::shared_ptr<asio::ssl::context> relay_tls, std::shared_ptr<asio::ssl::context> identity,
        RelayTarget target, std::shared_ptr<spdlog::logger> logger, LegHandler handler, std::chrono::milliseconds timeout)
      : LegBase(io, std::move(logger), std::move(handler), timeout),
        relay_tls_(std::move(relay_tls)),
        identity_(std::move(identity)),
        target_(std::move(target)) {
    ws_.emplace(strand_, *relay_tls_);
  }

  // Sends this side's upgrade on ws_; then handshake_inside() or fail().
  virtual void upgrade() = 0;
  // The peer's key once the inner handshake is done: empty when it is right.
  virtual std::string check_peer(InnerTls& tls) = 0;

  void handshake_inside(asio::ssl::stream_base::handshake_type side) {
    tunnel::configure_established(*ws_);
    inner_.emplace(tunnel::WsBytes(std::move(*ws_)), *identity_);
    ws_.reset();
    inner_->async_handshake(side, [self = self_as<WsLeg>()](error_code ec) {
      if (ec) return self->fail(ec, "the TLS handshake inside the rendezvous failed: " + self->describe(ec));
      if (auto refused = self->check_peer(*self->inner_); !refused.empty())
        return self->fail(asio::error::access_denied, std::move(refused));
      auto channel = std::make_unique<tunnel::StreamChannel<InnerTls>>(std::move(*self->inner_));
      self->inner_.reset();
      self->succeed(std::move(channel), std::move(self->options_));
    });
  }

  void close_socket() override {
    error_code ignored;
    if (inner_) inner_->lowest_layer().close(ignored);
    else if (ws_) beast::get_lowest_layer(*ws_).socket().close(ignored);
  }

  std::shared_ptr<asio::ssl::context> relay_tls_;
  std::shared_ptr<asio::ssl::context> identity_;
  RelayTarget target_;
  std::optional<tunnel::WsStream> ws_;
  std::optional<InnerTls> inner_;
  websocket::response_type res_;
  tunnel::SessionOptions options_;
};

class ProxyWsDial final : public WsLeg {
 public:
  ProxyWsDial(asio::io_context& io, std::shared_ptr<asio::ssl::context> identity, ProxyWsLeg leg,
              std::shared_ptr<spdlog::logger> logger, LegHandler handler, std::chrono::milliseconds timeout)
      : WsLeg(io, leg.relay_tls, std::move(identity), leg.target, std::move(logger), std::move(handler), timeout),
        leg_(std::move(leg)) {
    options_ = std::move(leg_.session);
  }

 private:
  void upgrade() override {
    ws_->set_option(websocket::stream_base::decorator([token = std::move(leg_.token), pin = leg_.own_pin](websocket::request_type& req) {
      req.set(http::field::user_agent, std::string("clusterconnect-transport/") + CLUSTERCONNECT_VERSION);
      req.set("ServiceBusAuthorization", token);
      req.set(tunnel::rendezvous::proxy_key_pin_header, pin);
    }));
    // The relay answers the upgrade once the agent has taken the rendezvous.
    ws_->async_handshake(res_, target_.host_header, target_.path + "?sb-hc-action=connect",
                         [self = self_as<ProxyWsDial>()](error_code ec) {
                           if (ec == websocket::error::upgrade_declined) {
                             const auto status = self->res_.result();
                             return self->fail(status == http::status::gateway_timeout ? error_code(asio::error::timed_out)
                                                                                       : refusal_code(status),
                                               describe_refusal(self->res_, "connect"));
                           }
                           if (ec)
                             return self->fail(ec, "the WebSocket connect to " + self->target_.host_header +
                                                       " failed: " + self->describe(ec));
                           self->handshake_inside(asio::ssl::stream_base::server);
                         });
  }

  std::string check_peer(InnerTls& tls) override {
    return check_agent_key(tls.native_handle(), leg_.agent_pins, target_.hybrid_connection);
  }

  ProxyWsLeg leg_;
};

class AgentWsDial final : public WsLeg {
 public:
  AgentWsDial(asio::io_context& io, std::shared_ptr<asio::ssl::context> identity, AgentWsLeg leg, RelayTarget target,
              std::string request_target, std::shared_ptr<spdlog::logger> logger, LegHandler handler,
              std::chrono::milliseconds timeout)
      : WsLeg(io, leg.relay_tls, std::move(identity), std::move(target), std::move(logger), std::move(handler), timeout),
        leg_(std::move(leg)),
        request_target_(std::move(request_target)) {
    options_ = std::move(leg_.session);
  }

 private:
  void upgrade() override {
    ws_->set_option(websocket::stream_base::decorator([](websocket::request_type& req) {
      req.set(http::field::user_agent, std::string("clusterconnect-transport/") + CLUSTERCONNECT_VERSION);
    }));
    ws_->async_handshake(res_, target_.host_header, request_target_, [self = self_as<AgentWsDial>()](error_code ec) {
      if (ec == websocket::error::upgrade_declined)
        return self->fail(refusal_code(self->res_.result()), describe_refusal(self->res_, "rendezvous"));
      if (ec) return self->fail(ec, "the rendezvous WebSocket to " + self->target_.host_header + " failed: " + self->describe(ec));
      self->handshake_inside(asio::ssl::stream_base::client);
    });
  }

  std::string check_peer(InnerTls& tls) override { return check_proxy_key(tls.native_handle(), leg_.proxy_pin); }

  AgentWsLeg leg_;
  std::string request_target_;
};

}  // namespace

void async_agent_ws_leg(asio::io_context& io, std::shared_ptr<asio::ssl::context> identity, AgentWsLeg leg,
                        std::shared_ptr<spdlog::logger> logger, LegHandler handler, std::chrono::milliseconds timeout) {
  auto url = parse_url(leg.address);
  if (!url || url->scheme != "wss")
    return handler(asio::error::invalid_argument, nullptr, "the rendezvous address '" + leg.address + "' is not a wss:// URL");
  RelayTarget target;
  target.host = url->host;
  target.port = url->port;
  target.host_header = url->authority();
  target.path = url->path;
  std::string request_target = url->path + (url->query.empty() ? "" : "?" + url->query);
  std::make_shared<AgentWsDial>(io, std::move(identity), std::move(leg), std::move(target), std::move(request_target),
                                std::move(logger), std::move(handler), timeout)
      ->run();
}

void async_proxy_ws_leg(asio::io_context& io, std::shared_ptr<asio::ssl::context> identity, ProxyWsLeg leg,
                        std::shared_ptr<spdlog::logger> logger, LegHandler handler, std::chrono::milliseconds timeout) {
  std::make_shared<ProxyWsDial>(io, std::move(identity), std::move(leg), std::move(logger), std::move(handler), timeout)->run();
}

}  // namespace clusterconnect::tunnel::transport
