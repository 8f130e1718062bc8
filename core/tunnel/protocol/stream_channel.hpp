#pragma once
// MessageChannel over a byte stream: the mux run end to end inside TLS
// through a rendezvous, where no WebSocket frames the messages. Frames are
// self-delimiting, so a "message" read is the run of whole frames received
// so far (a partial frame waits for its rest); what the session writes is
// whole frames and goes out as it is. Header-only, for any Asio stream
// (tls::TlsSocket, asio::ssl::stream<tcp::socket>, or a plain socket in
// tests); no Beast. A TlsSocket sends the records of each write_some (up to
// 256 KiB of a message) in one socket write.

#include <cstring>
#include <memory>
#include <vector>

#include <boost/asio/post.hpp>
#include <boost/asio/socket_base.hpp>

#include "clusterconnect/executor_dispatch.hpp"
#include "clusterconnect/handler_slot.hpp"
#include "frame.hpp"
#include "session.hpp"

namespace clusterconnect::tunnel {

template <typename Stream>
class StreamChannel final : public MessageChannel {
 public:
  // What one read may take in; a frame is at most 64 KiB plus its header.
  static constexpr std::size_t read_buffer_size = 256 * 1024;

  // `lease` is released once the channel and every handler holding it are gone.
  explicit StreamChannel(Stream stream, std::shared_ptr<void> lease = {})
      : core_(std::make_shared<Core>(std::move(stream), std::move(lease))) {}
  ~StreamChannel() override { close(1001, "going away"); }

  void async_read_message(ReadHandler handler) override {
    auto core = core_;
    core->drop_delivered();
    read_more(std::move(core), std::move(handler));
  }

  void async_write_message(asio::const_buffer message, DoneHandler handler) override {
    // The handler waits in the core (see handler_slot.hpp).
    core_->write_done = std::move(handler);
    write_more(WriteSlot(core_), message);
  }

  void close(std::uint16_t, std::string) noexcept override {
    auto& core = *core_;
    if (core.closing) return;
    core.closing = true;
    error_code ignored;
    // The mux's GOAWAY is the orderly end; the transport just stops.
    core.stream.lowest_layer().shutdown(asio::socket_base::shutdown_both, ignored);
    core.stream.lowest_layer().close(ignored);
  }

  Stream& stream() { return core_->stream; }

 private:
  struct Core {
    Core(Stream s, std::shared_ptr<void> l) : stream(std::move(s)), lease(std::move(l)) {}
    Stream stream;
    std::shared_ptr<void> lease;
    std::vector<std::uint8_t> buf;
    std::size_t filled = 0;     // bytes received into buf
    std::size_t delivered = 0;  // of which handed to the session last time
    bool closing = false;
    // The outstanding read's and write's handlers (one each at most).
    ReadHandler read_done;
    DoneHandler write_done;

    void drop_delivered() {
      if (delivered == 0) return;
      std::memmove(buf.data(), buf.data() + delivered, filled - delivered);
      filled -= delivered;
      delivered = 0;
    }
    // The length of the leading run of whole frames. A header announcing a
    // payload longer than any frame may carry is handed over alone (after
    // the whole frames before it): the session's decoder reports it as the
    // protocol error it is, instead of this side waiting for bytes that
    // would never fit.
    std::size_t whole_frames() const {
      std::size_t at = 0;
      while (filled - at >= frame_header_size) {
        const std::uint8_t* h = buf.data() + at;
        const std::size_t length = std::size_t{h[6]} << 24 | std::size_t{h[7]} << 16 | std::size_t{h[8]} << 8 | h[9];
        if (length > max_data_payload) return at == 0 ? frame_header_size : at;
        if (filled - at - frame_header_size < length) break;
        at += frame_header_size + length;
      }
      return at;
    }
  };

  using WriteSlot = HandlerSlot<Core, &Core::write_done>;
  using ReadSlot = HandlerSlot<Core, &Core::read_done>;

  // write_some until all of `rest` is written (asio::async_write's operation
  // is not nothrow-movable: a UniqueFunction would keep it on the heap).
  static void write_more(WriteSlot slot, asio::const_buffer rest) {
    auto& core = slot.owner();
    core.stream.async_write_some(rest, [slot = std::move(slot), rest](error_code ec, std::size_t n) mutable {
      if (!ec && n < rest.size()) return write_more(std::move(slot), rest + n);
      auto [c, h] = slot.take();
      h(ec);
    });
  }

  // `initiating`: called from async_read_message, not from a read's completion.
  static void read_more(std::shared_ptr<Core> core, ReadHandler handler, bool initiating = true) {
    if (const std::size_t n = core->whole_frames(); n > 0) {
      core->delivered = n;
      // In a read's completion the message is delivered at once: this is
      // already the executor, and a post would cost a turn of the event loop.
      if (!initiating) return handler(error_code{}, std::span<const std::uint8_t>(core->buf.data(), n));
      // From async_read_message, delivered from the executor, never from
      // inside that call: the session asks for the next message from its handler.
      core->read_done = std::move(handler);
      post_on(core->stream.get_executor(), [p = ReadSlot(core), n]() mutable {
        auto [c, h] = p.take();
        h(error_code{}, std::span<const std::uint8_t>(c->buf.data(), n));
      });
      return;
    }
    // Room for several of the largest frames; read as much as has arrived.
    if (core->buf.size() < read_buffer_size) core->buf.resize(read_buffer_size);
    auto* at = core->buf.data() + core->filled;
    const std::size_t room = core->buf.size() - core->filled;
    core->read_done = std::move(handler);
    core->stream.async_read_some(asio::buffer(at, room), [p = ReadSlot(core)](error_code ec, std::size_t got) mutable {
      auto [c, h] = p.take();
      if (ec) return h(ec, {});
      c->filled += got;
      read_more(std::move(c), std::move(h), false);
    });
  }

  std::shared_ptr<Core> core_;
};

}  // namespace clusterconnect::tunnel
