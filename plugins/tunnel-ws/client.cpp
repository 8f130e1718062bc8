// Client side of the transport: one persistent tunnel per relay endpoint,
// (re)connected on demand, one stream per async_open.

#include <deque>
#include <variant>

#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <spdlog/spdlog.h>

#include "ws_transport.hpp"

namespace clusterconnect::tunnel_ws {

namespace {

// Bound on callers waiting for the tunnel to come up.
constexpr std::size_t max_waiters = 4096;

class WsTunnelClient final : public TunnelClient, public std::enable_shared_from_this<WsTunnelClient> {
 public:
  WsTunnelClient(HostServices& host, RelayEndpoint endpoint, TokenSource token)
      : io_(host.io_context()),
        strand_(asio::make_strand(host.io_context())),
        logger_(host.logger()),
        endpoint_(std::move(endpoint)),
        token_(std::move(token)) {}

  ~WsTunnelClient() override {
    if (session_) session_->close("client closed");
  }

  void async_open(OpenRequest request, OpenHandler handler) override {
    asio::dispatch(strand_, [self = shared_from_this(), md = std::move(request.metadata), h = std::move(handler)]() mutable {
      self->enqueue(Waiter{OpenWaiter{std::move(md), std::move(h)}});
    });
  }

  void async_connect(DoneHandler handler) override {
    asio::dispatch(strand_, [self = shared_from_this(), h = std::move(handler)]() mutable {
      self->enqueue(Waiter{std::move(h)});
    });
  }

  void close() noexcept override {
    try {
      asio::dispatch(strand_, [self = shared_from_this()] {
        self->closed_ = true;
        if (self->session_) self->session_->close("client closed");
        self->session_.reset();
        self->fail_waiters(asio::error::operation_aborted, "tunnel client closed");
      });
    } catch (...) {
    }
  }

 private:
  struct OpenWaiter {
    tunnel::Metadata metadata;
    OpenHandler handler;
  };
  using Waiter = std::variant<OpenWaiter, DoneHandler>;

  void enqueue(Waiter w) {
    if (closed_) return complete(std::move(w), asio::error::operation_aborted, "tunnel client closed");
    if (session_ && session_->usable()) return run(std::move(w));
    if (waiters_.size() >= max_waiters)
      return complete(std::move(w), asio::error::no_buffer_space, "too many streams waiting for the tunnel");
    waiters_.push_back(std::move(w));
    connect();
  }

  void run(Waiter w) {
    if (auto* o = std::get_if<OpenWaiter>(&w)) {
      session_->async_open(std::move(o->metadata), [h = std::move(o->handler)](error_code ec, tunnel::TunnelStreamPtr s,
                                                                               std::string reason) mutable {
        h(ec, std::move(s), std::move(reason));
      });
    } else {
      auto& h = std::get<DoneHandler>(w);
      asio::post(strand_, [h = std::move(h)]() mutable { h({}); });
    }
  }

  void complete(Waiter w, error_code ec, const std::string& reason) {
    if (auto* o = std::get_if<OpenWaiter>(&w)) {
      asio::post(strand_, [h = std::move(o->handler), ec, reason]() mutable { h(ec, nullptr, reason); });
    } else {
      asio::post(strand_, [h = std::move(std::get<DoneHandler>(w)), ec]() mutable { h(ec); });
    }
  }

  void fail_waiters(error_code ec, const std::string& reason) {
    auto list = std::move(waiters_);
    waiters_.clear();
    for (auto& w : list) complete(std::move(w), ec, reason);
  }

  void connect() {
    if (connecting_) return;
    auto target = make_dial_target(endpoint_, "connect");
    if (!target) return fail_waiters(asio::error::invalid_argument, target.error());
    if (!tls_) {
      auto ctx = make_tls_context(endpoint_, *logger_);
      if (!ctx) return fail_waiters(asio::error::invalid_argument, "TLS setup for the relay: " + ctx.error());
      tls_ = ctx.value();
    }
    std::string token;
    try {
      token = token_ ? token_() : std::string{};
    } catch (const std::exception& e) {
      return fail_waiters(asio::error::access_denied, std::string("cannot obtain a relay token: ") + e.what());
    }
    connecting_ = true;
    tunnel::SessionOptions options;
    options.role = tunnel::Role::dialer;
    options.name = "tunnel to " + target->host_header;
    async_dial(io_, std::move(*target), tls_, std::move(token), options, logger_,
               [self = shared_from_this()](error_code ec, std::shared_ptr<tunnel::Session> s, std::string reason) mutable {
                 asio::dispatch(self->strand_, [self, ec, s = std::move(s), reason = std::move(reason)]() mutable {
                   self->on_connected(ec, std::move(s), std::move(reason));
                 });
               });
  }

  void on_connected(error_code ec, std::shared_ptr<tunnel::Session> session, std::string reason) {
    connecting_ = false;
    if (closed_) {
      if (session) session->close("client closed");
      return;
    }
    if (ec) {
      logger_->warn("tunnel to {}: {}", endpoint_.url, reason);
      return fail_waiters(ec, reason);
    }
    logger_->debug("tunnel to {} established", endpoint_.url);
    session_ = std::move(session);
    session_->on_closed([weak = weak_from_this(), name = endpoint_.url](const std::string& why) {
      if (auto self = weak.lock()) self->logger_->debug("tunnel to {} closed: {}", name, why);
    });
    session_->start();
    auto list = std::move(waiters_);
    waiters_.clear();
    for (auto& w : list) run(std::move(w));
  }

  asio::io_context& io_;
  asio::strand<asio::io_context::executor_type> strand_;
  std::shared_ptr<spdlog::logger> logger_;
  RelayEndpoint endpoint_;
  TokenSource token_;
  std::shared_ptr<asio::ssl::context> tls_;
  std::shared_ptr<tunnel::Session> session_;
  std::deque<Waiter> waiters_;
  bool connecting_ = false;
  bool closed_ = false;
};

}  // namespace

std::shared_ptr<TunnelClient> make_client(HostServices& host, RelayEndpoint endpoint, TokenSource token) {
  return std::make_shared<WsTunnelClient>(host, std::move(endpoint), std::move(token));
}

}  // namespace clusterconnect::tunnel_ws
