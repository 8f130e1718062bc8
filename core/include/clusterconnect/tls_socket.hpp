#pragma once
// TLS run by OpenSSL directly on a TCP socket, in the shape of
// asio::ssl::stream<tcp::socket> (async_handshake, async_read_some,
// async_write_some, next_layer, lowest_layer, native_handle), without Asio's
// engine and its BIO pair. OpenSSL reads with recv() from the socket into its
// own record buffer (several records per recv), and the records of one
// async_write_some are gathered in one buffer that leaves in one send() when
// the kernel has room. Idle, a connection holds no record buffers (OpenSSL's
// are released, ours shrink). Light header: no OpenSSL, no Asio SSL.
//
// One executor: every operation is started, and completes, on the socket's
// executor (a strand or a one-thread io_context). At most one read and one
// write are outstanding; the handshake takes the place of both. Handlers run
// from the executor, never inline from the initiating call. Pending operations
// keep the connection's state alive: closing the socket (or destroying this
// object) completes them with operation_aborted. A moved-from TlsSocket may
// only be destroyed or assigned to.
//
// Errors: a close_notify from the peer reads as asio::error::eof; a TCP end
// without one as asio::ssl::error::stream_truncated; TLS failures are errors
// in asio::error::get_ssl_category() carrying OpenSSL's error code, as Asio's
// stream reports them.

#include <cstddef>
#include <memory>
#include <utility>

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream_base.hpp>

#include "clusterconnect/asio_fwd.hpp"
#include "clusterconnect/executor_dispatch.hpp"
#include "clusterconnect/unique_function.hpp"

namespace boost::asio::ssl {
class context;
}
struct ssl_st;

namespace clusterconnect::tls {

class TlsSocket {
 public:
  using executor_type = asio::any_io_executor;
  using next_layer_type = asio::ip::tcp::socket;
  using lowest_layer_type = asio::ip::tcp::socket;
  using handshake_type = asio::ssl::stream_base::handshake_type;
  using native_handle_type = ssl_st*;

  // Largest plaintext one async_write_some takes: its records leave together.
  static constexpr std::size_t max_write = 256 * 1024;

  // `context` is kept alive as long as the connection (its verify callback
  // lives in it).
  TlsSocket(asio::ip::tcp::socket socket, std::shared_ptr<asio::ssl::context> context);
  TlsSocket(const executor_type& executor, std::shared_ptr<asio::ssl::context> context);
  TlsSocket(TlsSocket&&) noexcept;
  TlsSocket& operator=(TlsSocket&&) noexcept;
  ~TlsSocket();

  executor_type get_executor() noexcept;
  next_layer_type& next_layer() noexcept;
  lowest_layer_type& lowest_layer() noexcept { return next_layer(); }
  native_handle_type native_handle() noexcept;

  template <typename Handler>
  auto async_handshake(handshake_type type, Handler&& handler) {
    return asio::async_initiate<Handler, void(error_code)>(
        [this](auto h, handshake_type t) { start_handshake(t, bind_handler<void(error_code)>(std::move(h))); }, handler, type);
  }

  // Reads into the first non-empty buffer: whole records already received,
  // and what the socket has, while the buffer has room.
  template <typename MutableBuffers, typename Handler>
  auto async_read_some(const MutableBuffers& buffers, Handler&& handler) {
    return asio::async_initiate<Handler, void(error_code, std::size_t)>(
        [this](auto h, const MutableBuffers& b) {
          asio::mutable_buffer first;
          for (auto it = asio::buffer_sequence_begin(b); it != asio::buffer_sequence_end(b); ++it) {
            first = asio::mutable_buffer(*it);
            if (first.size() > 0) break;
          }
          start_read(first, bind_handler<void(error_code, std::size_t)>(std::move(h)));
        },
        handler, buffers);
  }

  // Encrypts up to max_write bytes of the buffers and completes once their
  // records are all in the kernel.
  template <typename ConstBuffers, typename Handler>
  auto async_write_some(const ConstBuffers& buffers, Handler&& handler) {
    return asio::async_initiate<Handler, void(error_code, std::size_t)>(
        [this](auto h, const ConstBuffers& b) {
          Pieces pieces;
          for (auto it = asio::buffer_sequence_begin(b); it != asio::buffer_sequence_end(b); ++it) {
            const asio::const_buffer one(*it);
            if (one.size() == 0) continue;
            if (pieces.count == Pieces::capacity) break;
            pieces.at[pieces.count++] = one;
          }
          start_write(pieces, bind_handler<void(error_code, std::size_t)>(std::move(h)));
        },
        handler, buffers);
  }

  // Sends close_notify, then a TCP FIN; reading goes on (half-close). Later
  // writes fail with asio::error::shut_down. No write may be outstanding.
  template <typename Handler>
  auto async_shutdown_send(Handler&& handler) {
    return asio::async_initiate<Handler, void(error_code)>(
        [this](auto h) { start_shutdown_send(bind_handler<void(error_code)>(std::move(h))); }, handler);
  }

  // Plaintext bytes of records received and decrypted but not read yet.
  std::size_t pending_plaintext() const noexcept;
  // Bytes buffered by this object (for tests and measurements): OpenSSL's
  // record buffers not included.
  std::size_t buffered_bytes() const noexcept;

  struct Core;  // the connection's state, shared with pending operations

 private:
  using Completion = UniqueFunction<void(error_code, std::size_t)>;
  struct Pieces {
    static constexpr std::size_t capacity = 16;
    asio::const_buffer at[capacity];
    std::size_t count = 0;
  };

  // A completion that runs the handler on its own executor, or directly
  // when that is the socket's (the common case: no extra hop, and the
  // handler alone is what the completion holds).
  template <typename Signature, typename H>
  UniqueFunction<Signature> bind_handler(H h) {
    auto ex = asio::get_associated_executor(h, get_executor());
    if (same_executor(ex, get_executor())) return UniqueFunction<Signature>(std::move(h));
    return UniqueFunction<Signature>([h = std::move(h), ex](auto... args) mutable {
      dispatch_on(ex, [h = std::move(h), args...]() mutable { h(args...); });
    });
  }

  void start_handshake(handshake_type type, UniqueFunction<void(error_code)> done);
  void start_read(asio::mutable_buffer buffer, Completion done);
  void start_write(const Pieces& pieces, Completion done);
  void start_shutdown_send(UniqueFunction<void(error_code)> done);

  std::shared_ptr<Core> core_;
};

}  // namespace clusterconnect::tls
