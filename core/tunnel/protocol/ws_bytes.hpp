#pragma once
// A WebSocket seen as a byte stream, for TLS to run inside it end to end:
// what is written leaves as one binary message per write, and reads take
// message bytes as they come, across message boundaries. Any Asio stream
// layer (asio::ssl::stream<WsBytes>) can sit on top. Heavy (Beast): include
// it only from the transport's WebSocket leg.

#include <memory>
#include <utility>

#include "ws_stream.hpp"

namespace clusterconnect::tunnel {

class WsBytes {
 public:
  using executor_type = WsStream::executor_type;
  using lowest_layer_type = boost::asio::ip::tcp::socket;

  explicit WsBytes(WsStream ws) : ws_(std::make_unique<WsStream>(std::move(ws))) {
    ws_->binary(true);
    ws_->auto_fragment(false);
  }

  executor_type get_executor() noexcept { return ws_->get_executor(); }
  lowest_layer_type& lowest_layer() noexcept { return boost::beast::get_lowest_layer(*ws_).socket(); }
  const lowest_layer_type& lowest_layer() const noexcept { return boost::beast::get_lowest_layer(*ws_).socket(); }
  WsStream& websocket() noexcept { return *ws_; }

  template <class MutableBuffers, class Handler>
  auto async_read_some(const MutableBuffers& buffers, Handler&& handler) {
    return ws_->async_read_some(buffers, std::forward<Handler>(handler));
  }

  template <class ConstBuffers, class Handler>
  auto async_write_some(const ConstBuffers& buffers, Handler&& handler) {
    return ws_->async_write(buffers, std::forward<Handler>(handler));
  }

 private:
  std::unique_ptr<WsStream> ws_;  // fixed in memory: pending operations refer to it
};

}  // namespace clusterconnect::tunnel
