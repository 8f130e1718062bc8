// Client side of the transport: one persistent tunnel per relay endpoint,
// (re)connected on demand, one stream per async_open. The tunnel outlives
// its token: a fresh one from the TokenSource is sent in RENEW before the
// current one expires, so long-lived streams (watch, logs -f, exec) go on.

#include <algorithm>
#include <deque>
#include <optional>
#include <variant>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <spdlog/spdlog.h>

#include "clusterconnect/sas_token.hpp"
#include "ws_transport.hpp"

namespace clusterconnect::tunnel_ws {

namespace {

// Bound on callers waiting for the tunnel to come up.
constexpr std::size_t max_waiters = 4096;

// The TokenSource is asked at half the current token's remaining lifetime,
// never less often than every few minutes (a token without a readable
// expiry included) and never more often than twice a second.
constexpr auto renew_check_max = std::chrono::minutes(5);
constexpr auto renew_check_min = std::chrono::milliseconds(500);

std::optional<std::chrono::system_clock::time_point> token_expiry(const std::string& token) {
  auto t = parse_sas_token(token);
  if (!t) return std::nullopt;
  return std::chrono::system_clock::time_point(std::chrono::seconds(t->expiry));
}

class WsTunnelClient final : public TunnelClient, public std::enable_shared_from_this<WsTunnelClient> {
 public:
  WsTunnelClient(HostServices& host, RelayEndpoint endpoint, TokenSource token)
      : io_(host.io_context()),
        strand_(asio::make_strand(host.io_context())),
        logger_(host.logger()),
        endpoint_(std::move(endpoint)),
        token_(std::move(token)),
        renew_timer_(strand_) {}

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
        self->renew_timer_.cancel();
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
    if (token_) {
      auto t = token_();  // never throws: the host's exceptions end at its side
      if (!t) return fail_waiters(asio::error::operation_not_supported, "cannot dial the relay: no relay token: " + t.error());
      token = std::move(t.value());
    }
    connecting_ = true;
    dialled_token_ = token;
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
    token_current_ = std::move(dialled_token_);
    token_tried_.clear();
    if (session_->peer_accepts_renew()) {
      schedule_renewal();
    } else {
      renew_timer_.cancel();
      logger_->debug("tunnel to {}: the relay takes no token renewals; the tunnel ends when its token expires",
                     endpoint_.url);
    }
    auto list = std::move(waiters_);
    waiters_.clear();
    for (auto& w : list) run(std::move(w));
  }

  void schedule_renewal() {
    std::chrono::milliseconds delay = renew_check_max;
    if (auto expiry = token_expiry(token_current_)) {
      auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(*expiry - std::chrono::system_clock::now());
      delay = std::clamp<std::chrono::milliseconds>(remaining / 2, renew_check_min, renew_check_max);
    }
    renew_timer_.expires_after(delay);
    renew_timer_.async_wait([weak = weak_from_this(), session = std::weak_ptr<tunnel::Session>(session_)](error_code ec) {
      auto self = weak.lock();
      if (ec || !self) return;
      self->check_token(session);
    });
  }

  // Sends RENEW when the TokenSource has a token the tunnel has not seen yet.
  void check_token(const std::weak_ptr<tunnel::Session>& which) {
    auto session = which.lock();
    // A closed or draining tunnel is not renewed; the next tunnel schedules its own.
    if (closed_ || !session || session != session_ || !session->usable()) return;
    // Once the tunnel's token expired the relay refuses renewals and drains it.
    if (auto expiry = token_expiry(token_current_); expiry && *expiry <= std::chrono::system_clock::now()) return;
    std::string token;
    if (token_) {
      auto t = token_();
      if (!t) {
        logger_->warn("tunnel to {}: cannot obtain a fresh relay token: {}", endpoint_.url, t.error());
        return schedule_renewal();
      }
      token = std::move(t.value());
    }
    if (token.empty() || token == token_current_ || token == token_tried_) return schedule_renewal();
    token_tried_ = token;
    session->async_renew(token, [weak = weak_from_this(), which, token](error_code ec, std::string reason) mutable {
      auto self = weak.lock();
      if (!self) return;
      asio::dispatch(self->strand_, [self, which, token = std::move(token), ec, reason = std::move(reason)]() mutable {
        self->on_renewed(which, std::move(token), ec, reason);
      });
    });
  }

  void on_renewed(const std::weak_ptr<tunnel::Session>& which, std::string token, error_code ec, const std::string& reason) {
    auto session = which.lock();
    if (closed_ || !session || session != session_) return;
    if (ec == asio::error::not_connected) return;  // the tunnel closed; the next open redials
    if (ec) {
      // The tunnel lives on until its current token expires; a later token
      // from the TokenSource is tried again.
      logger_->warn("tunnel to {}: {}; the tunnel ends when its current token expires", endpoint_.url, reason);
    } else {
      logger_->debug("tunnel to {}: token renewed", endpoint_.url);
      token_current_ = std::move(token);
    }
    schedule_renewal();
  }

  asio::io_context& io_;
  asio::strand<asio::io_context::executor_type> strand_;
  std::shared_ptr<spdlog::logger> logger_;
  RelayEndpoint endpoint_;
  TokenSource token_;
  asio::steady_timer renew_timer_;
  std::string dialled_token_;  // the token of the dial in progress
  std::string token_current_;  // the token the live tunnel holds
  std::string token_tried_;    // the last token sent in RENEW (not resent when refused)
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
