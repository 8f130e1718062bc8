// TLS connections as Stream, on TlsSocket (OpenSSL straight on the socket).
#include "clusterconnect/tls.hpp"
#include "clusterconnect/tls_alpn.hpp"

#include "clusterconnect/handler_slot.hpp"
#include "clusterconnect/tls_context.hpp"
#include "clusterconnect/tls_socket.hpp"

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/spdlog.h>

namespace clusterconnect::tls {
namespace {

using tcp = asio::ip::tcp;

class TlsStream final : public Stream, public std::enable_shared_from_this<TlsStream> {
 public:
  TlsStream(tcp::socket socket, std::shared_ptr<asio::ssl::context> context, std::string peer)
      : ssl_(std::move(socket), std::move(context)), peer_(std::move(peer)) {}

  TlsSocket& ssl() noexcept { return ssl_; }

  asio::any_io_executor get_executor() override { return ssl_.get_executor(); }

  void async_read_some(asio::mutable_buffer buffer, IoHandler handler) override {
    dispatch_on(ssl_.get_executor(), [self = shared_from_this(), buffer, h = std::move(handler)]() mutable {
      // The handler waits here (see handler_slot.hpp).
      self->read_done_ = std::move(h);
      // TlsSocket reads on while records have arrived and the buffer has room.
      self->ssl_.async_read_some(asio::buffer(buffer),
                                 [slot = ReadSlot(std::move(self))](error_code ec, std::size_t n) mutable {
                                   auto [me, h] = slot.take();
                                   // A peer that closes TCP without close_notify: see tls.hpp.
                                   if (ec == asio::ssl::error::stream_truncated) ec = asio::error::eof;
                                   h(ec, ec ? 0 : n);
                                 });
    });
  }

  void async_write_some(std::span<const asio::const_buffer> buffers, IoHandler handler) override {
    // The caller's list lives only for this call: its buffers are kept here.
    // TlsSocket puts small neighbours into one record.
    std::array<asio::const_buffer, 16> out;
    std::size_t n = 0, bytes = 0;
    for (const auto& b : buffers) {
      if (b.size() == 0) continue;
      if (n == out.size()) break;
      out[n++] = b;
      bytes += b.size();
    }
    dispatch_on(ssl_.get_executor(), [self = shared_from_this(), out, n, bytes, h = std::move(handler)]() mutable {
      if (bytes == 0) {
        post_on(self->ssl_.get_executor(), [h = std::move(h)]() mutable { h(error_code{}, 0); });
        return;
      }
      if (self->shutdown_sent_) {
        post_on(self->ssl_.get_executor(), [h = std::move(h)]() mutable { h(asio::error::shut_down, 0); });
        return;
      }
      // The whole buffers; each TlsSocket write sends its records together.
      // The buffers and the handler wait here (see handler_slot.hpp).
      self->write_bufs_ = out;
      self->write_first_ = 0;
      self->write_count_ = n;
      self->write_sent_ = 0;
      self->write_done_ = std::move(h);
      write_more(WriteSlot(std::move(self)));
    });
  }

  void async_shutdown_send(DoneHandler handler) override {
    dispatch_on(ssl_.get_executor(), [self = shared_from_this(), h = std::move(handler)]() mutable {
      self->do_shutdown_send(std::move(h));
    });
  }

  void reset(std::string_view) noexcept override {
    try {
      dispatch_on(ssl_.get_executor(), [self = shared_from_this()] {
        error_code ignored;
        self->ssl_.lowest_layer().close(ignored);
      });
    } catch (...) {
      // Only allocation can throw here; the socket then closes with the stream.
    }
  }

  std::string describe() const override { return peer_; }

 private:
  // The outstanding read's and write's handlers, and what the write has left.
  IoHandler read_done_, write_done_;
  std::array<asio::const_buffer, 16> write_bufs_;
  std::size_t write_first_ = 0, write_count_ = 0, write_sent_ = 0;
  using ReadSlot = HandlerSlot<TlsStream, &TlsStream::read_done_>;
  using WriteSlot = HandlerSlot<TlsStream, &TlsStream::write_done_>;

  // Writes the rest of write_bufs_; then the handler gets every byte's count.
  static void write_more(WriteSlot slot) {
    auto& me = slot.owner();
    const std::span<const asio::const_buffer> rest(me.write_bufs_.data() + me.write_first_,
                                                   me.write_count_ - me.write_first_);
    me.ssl_.async_write_some(rest, [slot = std::move(slot)](error_code ec, std::size_t n) mutable {
      auto& me = slot.owner();
      me.write_sent_ += n;
      if (!ec && me.consume(n)) return write_more(std::move(slot));
      auto [self, h] = slot.take();
      h(ec, ec ? 0 : self->write_sent_);
    });
  }

  // Drops `n` written bytes from the front of write_bufs_; whether any remain.
  bool consume(std::size_t n) {
    while (n > 0 && write_first_ < write_count_) {
      auto& b = write_bufs_[write_first_];
      if (n < b.size()) {
        b += n;
        break;
      }
      n -= b.size();
      ++write_first_;
    }
    return write_first_ < write_count_;
  }

  // close_notify, then a TCP FIN, keeping the read side open (the peer's
  // close_notify is not waited for: that would race the stream's own read).
  void do_shutdown_send(DoneHandler handler) {
    if (shutdown_sent_) {
      post_on(ssl_.get_executor(), [h = std::move(handler)]() mutable { h(error_code{}); });
      return;
    }
    shutdown_sent_ = true;
    ssl_.async_shutdown_send([self = shared_from_this(), h = std::move(handler)](error_code ec) mutable { h(ec); });
  }

  TlsSocket ssl_;
  std::string peer_;
  bool shutdown_sent_ = false;
};

std::string endpoint_text(const tcp::endpoint& ep) {
  auto a = ep.address();
  return (a.is_v6() ? "[" + a.to_string() + "]" : a.to_string()) + ":" + std::to_string(ep.port());
}

std::string handshake_failure(const error_code& ec, SSL* ssl) {
  std::string msg = ec.message();
  long vr = SSL_get_verify_result(ssl);
  if (ec.category() == asio::error::get_ssl_category() && vr != X509_V_OK)
    msg += std::string(": ") + X509_verify_cert_error_string(vr);
  return msg;
}

// One outbound connection attempt; everything runs on one strand.
class ConnectOp : public std::enable_shared_from_this<ConnectOp> {
 public:
  ConnectOp(asio::io_context& io, std::string host, std::string port, std::shared_ptr<asio::ssl::context> context,
            ConnectHandler handler)
      : strand_(asio::make_strand(io)),
        resolver_(strand_),
        socket_(strand_),
        timer_(strand_),
        host_(std::move(host)),
        port_(std::move(port)),
        context_(std::move(context)),
        handler_(std::move(handler)) {}

  std::vector<std::string> alpn_;  // offered, in order; none when empty

  void start(std::chrono::milliseconds timeout) {
    asio::dispatch(strand_, [self = shared_from_this(), timeout] {
      self->timer_.expires_after(timeout);
      self->timer_.async_wait([self](error_code ec) {
        if (ec) return;
        self->timed_out_ = true;
        self->resolver_.cancel();
        error_code ignored;
        self->socket_.close(ignored);
        if (self->stream_) self->stream_->ssl().lowest_layer().close(ignored);
      });
      // "[::1]" as written in URLs; the resolver wants the bare literal.
      std::string name = self->host_;
      if (name.size() >= 2 && name.front() == '[' && name.back() == ']') name = name.substr(1, name.size() - 2);
      self->resolver_.async_resolve(name, self->port_,
                                    [self](error_code ec, tcp::resolver::results_type results) {
                                      self->on_resolve(ec, std::move(results));
                                    });
    });
  }

 private:
  std::string where() const { return host_ + ":" + port_; }

  void on_resolve(error_code ec, tcp::resolver::results_type results) {
    if (ec) return finish(ec, "cannot resolve " + host_ + ": " + reason(ec));
    asio::async_connect(socket_, results, [self = shared_from_this()](error_code ec, const tcp::endpoint& ep) {
      self->on_connect(ec, ep);
    });
  }

  void on_connect(error_code ec, const tcp::endpoint& ep) {
    if (ec) return finish(ec, "cannot connect to " + where() + ": " + reason(ec));
    error_code ignored;
    socket_.set_option(tcp::no_delay(true), ignored);
    stream_ = std::make_shared<TlsStream>(std::move(socket_), context_, where() + " (" + endpoint_text(ep) + ")");
    if (!set_client_host(stream_->ssl().native_handle(), host_))
      return finish(asio::error::invalid_argument, "cannot verify TLS host name " + host_);
    if (!alpn_.empty()) {
      std::string wire;
      for (const auto& p : alpn_) {
        wire.push_back(static_cast<char>(p.size()));
        wire.append(p);
      }
      // SSL_set_alpn_protos returns 0 on success.
      if (SSL_set_alpn_protos(stream_->ssl().native_handle(), reinterpret_cast<const unsigned char*>(wire.data()),
                              static_cast<unsigned>(wire.size())) != 0)
        return finish(asio::error::invalid_argument, "cannot offer ALPN protocols");
    }
    stream_->ssl().async_handshake(TlsSocket::handshake_type::client,
                                   [self = shared_from_this()](error_code ec) { self->on_handshake(ec); });
  }

  void on_handshake(error_code ec) {
    if (ec)
      return finish(ec, "TLS handshake with " + where() + " failed: " +
                            (timed_out_ ? reason(ec) : handshake_failure(ec, stream_->ssl().native_handle())));
    finish({}, {});
  }

  std::string reason(const error_code& ec) const { return timed_out_ ? std::string("timed out") : ec.message(); }

  void finish(error_code ec, std::string why) {
    timer_.cancel();
    if (timed_out_ && ec) ec = asio::error::timed_out;
    auto h = std::move(handler_);
    StreamPtr stream;
    if (!ec) stream = std::move(stream_);
    stream_.reset();
    h(ec, std::move(stream), std::move(why));
  }

  asio::strand<asio::io_context::executor_type> strand_;
  tcp::resolver resolver_;
  tcp::socket socket_;
  asio::steady_timer timer_;
  std::string host_, port_;
  std::shared_ptr<asio::ssl::context> context_;
  ConnectHandler handler_;
  std::shared_ptr<TlsStream> stream_;
  bool timed_out_ = false;
};

class TlsServerImpl final : public TlsServer, public std::enable_shared_from_this<TlsServerImpl> {
 public:
  TlsServerImpl(asio::io_context& io, std::shared_ptr<asio::ssl::context> context, StreamCallback on_stream,
                std::shared_ptr<spdlog::logger> logger, ServerLimits limits)
      : io_(io),
        strand_(asio::make_strand(io)),
        acceptor_(strand_),
        retry_timer_(strand_),
        context_(std::move(context)),
        on_stream_(std::move(on_stream)),
        logger_(std::move(logger)),
        limits_(limits) {}

  Result<void> bind(const std::string& address, unsigned short port) {
    error_code ec;
    auto addr = asio::ip::make_address(address, ec);
    if (ec) return fail("cannot listen on " + address + ": not an IP address");
    tcp::endpoint ep(addr, port);
    const std::string where = endpoint_text(ep);
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (ec == asio::error::address_in_use) return fail(where + " is already in use");
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec == asio::error::address_in_use) return fail(where + " is already in use");
    if (ec) return fail("cannot listen on " + where + ": " + ec.message());
    port_ = acceptor_.local_endpoint(ec).port();
    return {};
  }

  void start() {
    asio::dispatch(strand_, [self = shared_from_this()] { self->do_accept(); });
  }

  unsigned short port() const noexcept override { return port_; }

  void close() noexcept override {
    try {
      asio::dispatch(strand_, [self = shared_from_this()] {
        self->closed_ = true;
        error_code ignored;
        self->acceptor_.close(ignored);
        self->retry_timer_.cancel();
      });
    } catch (...) {
    }
  }

 private:
  void do_accept() {
    if (closed_ || accepting_) return;
    if (pending_.load() >= limits_.max_pending_handshakes) return;  // resumed by a finished handshake
    accepting_ = true;
    acceptor_.async_accept(asio::make_strand(io_), [self = shared_from_this()](error_code ec, tcp::socket socket) {
      self->accepting_ = false;
      self->on_accept(ec, std::move(socket));
    });
  }

  void on_accept(error_code ec, tcp::socket socket) {
    if (closed_ || ec == asio::error::operation_aborted) return;
    if (ec) {
      // EMFILE and friends: back off instead of spinning, keep listening.
      if (logger_) logger_->warn("accept on port {} failed: {}", port_, ec.message());
      retry_timer_.expires_after(std::chrono::milliseconds(100));
      retry_timer_.async_wait([self = shared_from_this()](error_code e) {
        if (!e) self->do_accept();
      });
      return;
    }
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    auto remote = socket.remote_endpoint(ignored);
    auto stream = std::make_shared<TlsStream>(std::move(socket), context_, endpoint_text(remote));
    ++pending_;
    handshake(std::move(stream));
    do_accept();
  }

  void handshake(std::shared_ptr<TlsStream> stream) {
    auto ex = stream->get_executor();
    auto timer = std::make_shared<asio::steady_timer>(ex);
    timer->expires_after(limits_.handshake_timeout);
    timer->async_wait([weak = std::weak_ptr<TlsStream>(stream)](error_code ec) {
      if (ec) return;
      if (auto s = weak.lock()) {
        error_code ignored;
        s->ssl().lowest_layer().close(ignored);
      }
    });
    asio::dispatch(ex, [self = shared_from_this(), stream, timer]() mutable {
      stream->ssl().async_handshake(TlsSocket::handshake_type::server, [self, stream, timer](error_code ec) mutable {
        timer->cancel();
        self->on_handshake(ec, std::move(stream));
      });
    });
  }

  void on_handshake(error_code ec, std::shared_ptr<TlsStream> stream) {
    if (pending_-- == limits_.max_pending_handshakes)
      asio::dispatch(strand_, [self = shared_from_this()] { self->do_accept(); });
    if (ec) {
      if (logger_) logger_->debug("TLS handshake from {} failed: {}", stream->describe(), ec.message());
      return;
    }
    if (on_stream_) on_stream_(std::move(stream));
  }

  asio::io_context& io_;
  asio::strand<asio::io_context::executor_type> strand_;
  tcp::acceptor acceptor_;
  asio::steady_timer retry_timer_;
  std::shared_ptr<asio::ssl::context> context_;
  StreamCallback on_stream_;
  std::shared_ptr<spdlog::logger> logger_;
  ServerLimits limits_;
  unsigned short port_ = 0;
  std::atomic<std::size_t> pending_{0};
  bool accepting_ = false;
  bool closed_ = false;
};

}  // namespace

void async_connect(asio::io_context& io, std::string host, std::string port,
                   std::shared_ptr<asio::ssl::context> context, ConnectHandler handler,
                   std::chrono::milliseconds timeout) {
  auto op = std::make_shared<ConnectOp>(io, std::move(host), std::move(port), std::move(context), std::move(handler));
  op->start(timeout);
}

void async_connect(asio::io_context& io, std::string host, std::string port,
                   std::shared_ptr<asio::ssl::context> context, std::vector<std::string> alpn,
                   ConnectHandler handler, std::chrono::milliseconds timeout) {
  auto op = std::make_shared<ConnectOp>(io, std::move(host), std::move(port), std::move(context), std::move(handler));
  op->alpn_ = std::move(alpn);
  op->start(timeout);
}

std::string alpn_protocol(const Stream& stream) {
  auto* tls = dynamic_cast<const TlsStream*>(&stream);
  if (!tls) return {};
  const unsigned char* data = nullptr;
  unsigned len = 0;
  SSL_get0_alpn_selected(const_cast<TlsStream*>(tls)->ssl().native_handle(), &data, &len);
  return data ? std::string(reinterpret_cast<const char*>(data), len) : std::string();
}

Result<std::shared_ptr<TlsServer>> TlsServer::listen(asio::io_context& io, std::string address, unsigned short port,
                                                     std::shared_ptr<asio::ssl::context> context,
                                                     StreamCallback on_stream, std::shared_ptr<spdlog::logger> logger,
                                                     ServerLimits limits) {
  if (!context) return fail("TLS server needs a TLS context");
  auto server = std::make_shared<TlsServerImpl>(io, std::move(context), std::move(on_stream), std::move(logger), limits);
  if (auto r = server->bind(address, port); !r) return fail(r.error());
  server->start();
  return std::shared_ptr<TlsServer>(server);
}

}  // namespace clusterconnect::tls
