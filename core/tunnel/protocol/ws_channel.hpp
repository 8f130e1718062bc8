#pragma once
// MessageChannel over a Beast WebSocket. Heavy (Beast + Asio SSL): include it
// only from the WebSocket glue translation units (the module's dialer and the
// relay's front end).

#include "clusterconnect/asio_fwd.hpp"

#include <boost/beast/core.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include "session.hpp"

namespace clusterconnect::tunnel {

inline constexpr const char* subprotocol = "clusterconnect.tunnel.v1";
// Handshake response header listing optional frames the acceptor takes
// (comma-separated); "renew" = RENEW (docs/tunnel-protocol.md §1, §5).
inline constexpr const char* features_header = "Clusterconnect-Tunnel-Features";
inline constexpr const char* feature_renew = "renew";

using WsStream = boost::beast::websocket::stream<boost::beast::ssl_stream<boost::beast::tcp_stream>>;

// Settings shared by both ends once the handshake is done: binary messages,
// bounded message size, no Beast idle timeout (the session's PING does that).
inline void configure_established(WsStream& ws) {
  namespace websocket = boost::beast::websocket;
  boost::beast::get_lowest_layer(ws).expires_never();
  ws.binary(true);
  ws.auto_fragment(false);
  ws.read_message_max(max_message_size + 1024);
  ws.write_buffer_bytes(64 * 1024);
  websocket::stream_base::timeout t{};
  t.handshake_timeout = std::chrono::seconds(5);  // also bounds the closing handshake
  t.idle_timeout = websocket::stream_base::none();
  t.keep_alive_pings = false;
  ws.set_option(t);
}

class WsChannel final : public MessageChannel {
 public:
  // `lease` is released once the connection is closed and no handler holds
  // it any more (after the closing handshake), so an owner can wait for that.
  explicit WsChannel(WsStream ws, std::shared_ptr<void> lease = {})
      : core_(std::make_shared<Core>(std::move(ws), std::move(lease))) {}
  ~WsChannel() override { close(1001, "going away"); }

  void async_read_message(ReadHandler handler) override {
    auto core = core_;
    core->buffer.clear();
    core->ws.async_read(core->buffer, [core, h = std::move(handler)](error_code ec, std::size_t) mutable {
      if (!ec && !core->ws.got_binary()) ec = text_message_error();
      auto data = core->buffer.cdata();
      h(ec, std::span<const std::uint8_t>(static_cast<const std::uint8_t*>(data.data()), ec ? 0 : data.size()));
    });
  }

  void async_write_message(asio::const_buffer message, DoneHandler handler) override {
    core_->ws.async_write(message, [h = std::move(handler)](error_code ec, std::size_t) mutable { h(ec); });
  }

  void close(std::uint16_t ws_code, std::string reason) noexcept override {
    auto core = core_;
    if (core->closing) return;
    core->closing = true;
    try {
      if (!core->ws.is_open()) {
        boost::beast::get_lowest_layer(core->ws).close();
        return;
      }
      if (reason.size() > 120) reason.resize(120);  // a close frame carries at most 123 bytes of reason
      boost::beast::websocket::close_reason cr;
      cr.code = ws_code;
      cr.reason = reason;
      core->ws.async_close(cr, [core](error_code) {
        boost::beast::get_lowest_layer(core->ws).close();
      });
    } catch (...) {
      error_code ignored;
      boost::beast::get_lowest_layer(core->ws).socket().close(ignored);
    }
  }

 private:
  // Shared with pending handlers so a close may outlive the channel.
  struct Core {
    Core(WsStream w, std::shared_ptr<void> l) : ws(std::move(w)), lease(std::move(l)) {}
    WsStream ws;
    std::shared_ptr<void> lease;
    boost::beast::flat_buffer buffer;
    bool closing = false;
  };
  std::shared_ptr<Core> core_;
};

}  // namespace clusterconnect::tunnel
