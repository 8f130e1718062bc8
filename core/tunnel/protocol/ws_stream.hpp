#pragma once
// The WebSocket over TLS both ends of the ws rendezvous form and the relay
// use. Heavy (Beast + Asio SSL): include it only from the WebSocket glue
// translation units (the transport's ws legs, the relay's front end and pump).

#include "clusterconnect/asio_fwd.hpp"

#include <boost/beast/core.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include "frame.hpp"

namespace clusterconnect::tunnel {

using WsStream = boost::beast::websocket::stream<boost::beast::ssl_stream<boost::beast::tcp_stream>>;

// Settings for a WebSocket that carries a byte stream once the handshake is
// done: binary messages, bounded message size, no Beast idle timeout (the
// mux session's PING inside keeps it alive).
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

}  // namespace clusterconnect::tunnel
