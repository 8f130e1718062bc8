#include "health_server.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>

namespace clusterconnect::agent {
namespace {

using boost::asio::ip::tcp;
constexpr std::size_t max_request_bytes = 8192;

const char* reason(unsigned status) {
  switch (status) {
    case 200: return "OK";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

class Exchange : public std::enable_shared_from_this<Exchange> {
 public:
  Exchange(tcp::socket socket, std::shared_ptr<HealthHandler> handler)
      : socket_(std::move(socket)), timer_(socket_.get_executor()), buffer_(max_request_bytes), handler_(std::move(handler)) {}

  void start() {
    timer_.expires_after(std::chrono::seconds(5));
    timer_.async_wait([self = shared_from_this()](error_code ec) {
      if (!ec) self->socket_.close();
    });
    asio::async_read_until(socket_, buffer_, "\r\n\r\n", [self = shared_from_this()](error_code ec, std::size_t) {
      self->on_read(ec);
    });
  }

 private:
  void on_read(error_code ec) {
    if (ec) return finish();
    std::istream in(&buffer_);
    std::string method, target;
    in >> method >> target;
    HealthReply reply;
    if (method != "GET" && method != "HEAD") {
      reply = {405, "text/plain; charset=utf-8", "method not allowed\n"};
    } else {
      reply = (*handler_)(target.substr(0, target.find('?')));
    }
    response_ = "HTTP/1.1 " + std::to_string(reply.status) + " " + reason(reply.status) +
                "\r\nContent-Type: " + reply.content_type + "\r\nContent-Length: " + std::to_string(reply.body.size()) +
                "\r\nConnection: close\r\n\r\n";
    if (method != "HEAD") response_ += reply.body;
    asio::async_write(socket_, asio::buffer(response_), [self = shared_from_this()](error_code, std::size_t) {
      self->finish();
    });
  }

  void finish() {
    error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    timer_.cancel();
  }

  tcp::socket socket_;
  asio::steady_timer timer_;
  asio::streambuf buffer_;
  std::shared_ptr<HealthHandler> handler_;
  std::string response_;
};

class Server final : public HealthServer, public std::enable_shared_from_this<Server> {
 public:
  Server(asio::io_context& io, HealthHandler handler)
      : acceptor_(io), handler_(std::make_shared<HealthHandler>(std::move(handler))) {}

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
    if (ec == asio::error::address_in_use) return fail(address_port + " is already in use; choose another --health-listen");
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return fail("cannot listen on " + address_port + ": " + ec.message());
    return {};
  }

  void accept() {
    acceptor_.async_accept([self = shared_from_this()](error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !self->acceptor_.is_open()) return;
      if (!ec) std::make_shared<Exchange>(std::move(socket), self->handler_)->start();
      self->accept();
    });
  }

  unsigned short port() const override { return acceptor_.local_endpoint().port(); }
  void close() override {
    asio::post(acceptor_.get_executor(), [self = shared_from_this()] {
      error_code ignored;
      self->acceptor_.close(ignored);
    });
  }

 private:
  tcp::acceptor acceptor_;
  std::shared_ptr<HealthHandler> handler_;
};

}  // namespace

Result<std::shared_ptr<HealthServer>> HealthServer::listen(asio::io_context& io, const std::string& address_port,
                                                            HealthHandler handler) {
  auto server = std::make_shared<Server>(io, std::move(handler));
  if (auto r = server->bind(address_port); !r) return fail(r.error());
  server->accept();
  return std::shared_ptr<HealthServer>(server);
}

}  // namespace clusterconnect::agent
