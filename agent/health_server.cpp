#include "health_server.hpp"

#include <optional>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

namespace clusterconnect::agent {
namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using boost::asio::ip::tcp;

// One connection: everything it does (read, timeout, write, close) runs on
// its own strand, so the timeout never closes the socket under a read on
// another thread.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(tcp::socket socket, std::shared_ptr<HealthHandler> handler, std::chrono::milliseconds timeout)
      : stream_(std::move(socket)), handler_(std::move(handler)), timeout_(timeout) {}

  void start() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read(); });
  }

 private:
  void read() {
    parser_.emplace();
    parser_->header_limit(max_health_request_bytes);
    parser_->body_limit(0);  // probes and scrapes send no body
    // One deadline for the whole exchange: a client that sends its request a
    // byte at a time is closed when it passes.
    stream_.expires_after(timeout_);
    bhttp::async_read(stream_, buffer_, *parser_,
                      [self = shared_from_this()](error_code ec, std::size_t) { self->on_read(ec); });
  }

  void on_read(error_code ec) {
    if (ec == bhttp::error::header_limit) return respond(431, "request header fields too large\n", false);
    if (ec == bhttp::error::body_limit) return respond(413, "a request body is not accepted here\n", false);
    if (ec == beast::error::timeout || ec == bhttp::error::end_of_stream || ec == asio::error::eof ||
        ec == asio::error::connection_reset || ec == asio::error::operation_aborted) {
      return close();
    }
    if (ec) return respond(400, "malformed HTTP request\n", false);
    const auto& req = parser_->get();
    const bool head = req.method() == bhttp::verb::head;
    if (req.method() != bhttp::verb::get && !head) return respond(405, "method not allowed\n", false);
    std::string_view target(req.target().data(), req.target().size());
    HealthReply reply = (*handler_)(std::string(target.substr(0, target.find('?'))));
    content_type_ = std::move(reply.content_type);
    respond(reply.status, std::move(reply.body), head);
  }

  void respond(unsigned status, std::string body, bool head) {
    res_.emplace();
    res_->version(11);
    res_->result(status);
    res_->set(bhttp::field::content_type, content_type_.empty() ? "text/plain; charset=utf-8" : content_type_);
    res_->keep_alive(false);
    res_->content_length(body.size());
    if (!head) res_->body() = std::move(body);
    stream_.expires_after(timeout_);
    bhttp::async_write(stream_, *res_, [self = shared_from_this()](error_code, std::size_t) { self->close(); });
  }

  void close() {
    error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::empty_body>> parser_;
  std::optional<bhttp::response<bhttp::string_body>> res_;
  std::string content_type_;
  std::shared_ptr<HealthHandler> handler_;
  std::chrono::milliseconds timeout_;
};

class Server final : public HealthServer, public std::enable_shared_from_this<Server> {
 public:
  Server(asio::io_context& io, HealthHandler handler, std::chrono::milliseconds timeout)
      : io_(io),
        acceptor_(asio::make_strand(io)),
        handler_(std::make_shared<HealthHandler>(std::move(handler))),
        timeout_(timeout) {}

  Result<void> bind(const std::string& address_port) {
    auto colon = address_port.rfind(':');
    if (colon == std::string::npos) return fail("--health-listen must be ADDRESS:PORT, got '" + address_port + "'");
    error_code ec;
    auto address = asio::ip::make_address(address_port.substr(0, colon), ec);
    if (ec) return fail("--health-listen: bad address in '" + address_port + "'");
    unsigned long port = 0;
    try {
      port = std::stoul(address_port.substr(colon + 1));
    } catch (...) {
      return fail("--health-listen: bad port in '" + address_port + "'");
    }
    if (port > 65535) return fail("--health-listen: bad port in '" + address_port + "'");
    tcp::endpoint ep(address, static_cast<unsigned short>(port));
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (ec == asio::error::address_in_use)
      return fail(address_port + " is already in use; choose another --health-listen");
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return fail("cannot listen on " + address_port + ": " + ec.message());
    port_ = acceptor_.local_endpoint(ec).port();
    return {};
  }

  // Runs on the acceptor's strand, as does close().
  void accept() {
    acceptor_.async_accept(asio::make_strand(io_), [self = shared_from_this()](error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !self->acceptor_.is_open()) return;
      if (!ec) std::make_shared<Connection>(std::move(socket), self->handler_, self->timeout_)->start();
      self->accept();
    });
  }

  asio::any_io_executor acceptor_executor() { return acceptor_.get_executor(); }
  unsigned short port() const override { return port_; }
  void close() override {
    asio::post(acceptor_.get_executor(), [self = shared_from_this()] {
      error_code ignored;
      self->acceptor_.close(ignored);
    });
  }

 private:
  asio::io_context& io_;
  tcp::acceptor acceptor_;
  std::shared_ptr<HealthHandler> handler_;
  std::chrono::milliseconds timeout_;
  unsigned short port_ = 0;
};

}  // namespace

Result<std::shared_ptr<HealthServer>> HealthServer::listen(asio::io_context& io, const std::string& address_port,
                                                           HealthHandler handler, std::chrono::milliseconds timeout) {
  auto server = std::make_shared<Server>(io, std::move(handler), timeout);
  if (auto r = server->bind(address_port); !r) return fail(r.error());
  asio::dispatch(server->acceptor_executor(), [server] { server->accept(); });
  return std::shared_ptr<HealthServer>(server);
}

}  // namespace clusterconnect::agent
