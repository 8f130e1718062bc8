// Agent side of the transport: keeps N tunnels to the relay, reconnecting
// with capped exponential backoff and jitter; a tunnel that got GOAWAY is
// replaced at once and left to drain.

#include <optional>
#include <random>
#include <vector>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <spdlog/spdlog.h>

#include "clusterconnect/ascii.hpp"
#include "clusterconnect/sas_token.hpp"
#include "clusterconnect/url.hpp"
#include "ws_transport.hpp"

namespace clusterconnect::tunnel_ws {

namespace {

class WsTunnelListener final : public TunnelListener, public std::enable_shared_from_this<WsTunnelListener> {
 public:
  WsTunnelListener(HostServices& host, ListenOptions options, AcceptHandler on_stream)
      : io_(host.io_context()),
        strand_(asio::make_strand(host.io_context())),
        logger_(host.logger()),
        options_(std::move(options)),
        on_stream_(std::move(on_stream)),
        rng_(std::random_device{}()) {
    if (options_.tunnels == 0) options_.tunnels = 1;
    if (options_.backoff_initial.count() <= 0) options_.backoff_initial = std::chrono::milliseconds(200);
    if (options_.backoff_max < options_.backoff_initial) options_.backoff_max = options_.backoff_initial;
    hybrid_connection_ = hybrid_connection_of(options_.endpoint.url);
  }

  ~WsTunnelListener() override {
    for (auto& slot : slots_)
      if (slot->session) slot->session->close("listener closed");
  }

  void start() {
    asio::dispatch(strand_, [self = shared_from_this()] {
      for (unsigned i = 0; i < self->options_.tunnels; ++i) {
        self->slots_.push_back(std::make_unique<Slot>(self->strand_, i, self->options_.backoff_initial));
        self->connect(*self->slots_.back());
      }
    });
  }

  ListenerStatus status() const noexcept override {
    return ListenerStatus{up_.load(std::memory_order_relaxed), options_.tunnels};
  }

  void close() noexcept override {
    try {
      asio::dispatch(strand_, [self = shared_from_this()] {
        self->closed_ = true;
        for (auto& slot : self->slots_) {
          slot->timer.cancel();
          slot->renew_timer.cancel();
          if (slot->session) slot->session->close("listener closed");
          slot->session.reset();
        }
        self->up_ = 0;
      });
    } catch (...) {
    }
  }

 private:
  struct Slot {
    Slot(const asio::any_io_executor& ex, unsigned i, std::chrono::milliseconds b)
        : index(i), backoff(b), timer(ex), renew_timer(ex) {}
    unsigned index;
    std::chrono::milliseconds backoff;
    asio::steady_timer timer;
    asio::steady_timer renew_timer;
    std::shared_ptr<tunnel::Session> session;
    bool connecting = false;
    unsigned failures = 0;
  };

  // The hybrid connection path of a relay URL (decoded, without surrounding
  // slashes), as the relay names it in stream metadata.
  static std::string hybrid_connection_of(const std::string& relay_url) {
    auto url = parse_url(relay_url);
    if (!url || url->path.rfind("/$hc/", 0) != 0) return {};
    std::string path;
    if (!percent_decode(std::string_view(url->path).substr(5), path)) return {};
    while (!path.empty() && path.front() == '/') path.erase(0, 1);
    while (!path.empty() && path.back() == '/') path.pop_back();
    return path;
  }

  void connect(Slot& slot) {
    if (closed_ || slot.connecting) return;
    auto target = make_dial_target(options_.endpoint, "listen");
    if (!target) {
      logger_->error("tunnel-ws listener: {}", target.error());
      return;  // a bad URL does not get better by retrying
    }
    if (!tls_) {
      auto ctx = make_tls_context(options_.endpoint, *logger_);
      if (!ctx) {
        logger_->error("tunnel-ws listener: TLS setup for the relay: {}", ctx.error());
        return;
      }
      tls_ = ctx.value();
    }
    std::string token;
    if (options_.token) {
      auto t = options_.token();  // fresh on every (re)connect; never throws
      if (!t) {
        logger_->warn("tunnel-ws listener: cannot obtain a relay token: {}", t.error());
        return retry_later(slot);
      }
      token = std::move(t.value());
    }
    slot.connecting = true;
    auto expiry = token_expiry(token);
    tunnel::SessionOptions so;
    so.role = tunnel::Role::dialer;
    so.name = "agent tunnel " + std::to_string(slot.index) + " to " + target->host_header;
    async_dial(io_, std::move(*target), tls_, std::move(token), so, logger_,
               [weak = weak_from_this(), &slot, expiry](error_code ec, std::shared_ptr<tunnel::Session> s, std::string reason) mutable {
                 auto self = weak.lock();
                 if (!self) {
                   if (s) s->close("listener closed");
                   return;
                 }
                 asio::dispatch(self->strand_, [self, &slot, ec, s = std::move(s), reason = std::move(reason), expiry]() mutable {
                   self->on_connected(slot, ec, std::move(s), std::move(reason), expiry);
                 });
               });
  }

  static std::optional<std::chrono::system_clock::time_point> token_expiry(const std::string& token) {
    auto t = parse_sas_token(token);
    if (!t) return std::nullopt;
    return std::chrono::system_clock::time_point(std::chrono::seconds(t->expiry));
  }

  // The relay checks the token only at the handshake and sends GOAWAY when it
  // expires; replacing the tunnel at 80 % of the token's remaining lifetime,
  // with a fresh token, keeps the agent reachable without a gap.
  void schedule_renewal(Slot& slot, std::optional<std::chrono::system_clock::time_point> expiry) {
    slot.renew_timer.cancel();
    if (!expiry) return;
    auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(*expiry - std::chrono::system_clock::now());
    auto delay = std::max<std::chrono::milliseconds>(remaining * 4 / 5, std::chrono::seconds(1));
    slot.renew_timer.expires_after(delay);
    slot.renew_timer.async_wait([weak = weak_from_this(), &slot](error_code ec) {
      if (ec) return;
      if (auto self = weak.lock()) {
        self->logger_->debug("agent tunnel {}: renewing before the token expires", slot.index);
        self->connect(slot);
      }
    });
  }

  void on_connected(Slot& slot, error_code ec, std::shared_ptr<tunnel::Session> session, std::string reason,
                    std::optional<std::chrono::system_clock::time_point> expiry) {
    slot.connecting = false;
    if (closed_) {
      if (session) session->close("listener closed");
      return;
    }
    if (ec) {
      // The first failure is worth a warning; a relay that stays down is not
      // worth one line per attempt.
      if (slot.failures++ == 0) logger_->warn("agent tunnel {}: {}", slot.index, reason);
      else logger_->debug("agent tunnel {}: {}", slot.index, reason);
      return retry_later(slot);
    }
    logger_->info("agent tunnel {} to {} is up", slot.index, options_.endpoint.url);
    slot.failures = 0;
    slot.backoff = options_.backoff_initial;
    if (auto old = std::exchange(slot.session, session)) {
      old->goaway("replaced by a tunnel with a renewed token");  // drains, then closes
    } else {
      up_.fetch_add(1, std::memory_order_relaxed);
    }
    schedule_renewal(slot, expiry);
    auto on_stream = on_stream_;
    session->on_incoming([on_stream, expected = hybrid_connection_, logger = logger_](tunnel::TunnelStreamPtr stream,
                                                                                      tunnel::Metadata md) {
      // The relay names the cluster each stream was authorised for; a stream
      // for any other cluster (a relay bug or a hostile relay) never reaches
      // the API server, with whatever credentials it carries.
      auto it = md.find(std::string(tunnel::metadata_hybrid_connection));
      if (it == md.end() || !ascii_iequals(it->second, expected)) {
        const std::string got = it == md.end() ? std::string("no cluster") : "hybrid connection " + it->second;
        logger->warn("refused a stream for {}: this agent serves hybrid connection {}", got, expected);
        stream->reset(tunnel::RstCode::refused, "this agent serves another cluster (stream was for " + got + ")");
        return;
      }
      stream->accept();
      if (on_stream) on_stream(std::move(stream), md);
    });
    std::weak_ptr<tunnel::Session> ws = session;
    session->on_goaway([weak = weak_from_this(), &slot, ws](const std::string&) {
      if (auto self = weak.lock())
        asio::dispatch(self->strand_, [self, &slot, ws] { self->on_session_gone(slot, ws, true); });
    });
    session->on_closed([weak = weak_from_this(), &slot, ws](const std::string&) {
      if (auto self = weak.lock())
        asio::dispatch(self->strand_, [self, &slot, ws] { self->on_session_gone(slot, ws, false); });
    });
    session->start();
  }

  // A GOAWAY'd tunnel is released by its slot (it drains on its own) and the
  // slot dials its replacement at once; a closed one waits for the backoff.
  void on_session_gone(Slot& slot, const std::weak_ptr<tunnel::Session>& which, bool goaway) {
    if (closed_ || slot.session != which.lock() || !slot.session) return;
    slot.session.reset();
    up_.fetch_sub(1, std::memory_order_relaxed);
    if (goaway) connect(slot);
    else retry_later(slot);
  }

  void retry_later(Slot& slot) {
    std::uniform_real_distribution<double> jitter(0.8, 1.2);
    auto delay = std::chrono::milliseconds(static_cast<long long>(static_cast<double>(slot.backoff.count()) * jitter(rng_)));
    slot.backoff = std::min(slot.backoff * 2, options_.backoff_max);
    slot.timer.expires_after(delay);
    slot.timer.async_wait([weak = weak_from_this(), &slot](error_code ec) {
      if (ec) return;
      if (auto self = weak.lock()) self->connect(slot);
    });
  }

  asio::io_context& io_;
  asio::strand<asio::io_context::executor_type> strand_;
  std::shared_ptr<spdlog::logger> logger_;
  ListenOptions options_;
  AcceptHandler on_stream_;
  std::shared_ptr<asio::ssl::context> tls_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::atomic<unsigned> up_{0};
  bool closed_ = false;
  std::string hybrid_connection_;
  std::mt19937 rng_;
};

}  // namespace

std::shared_ptr<TunnelListener> make_listener(HostServices& host, ListenOptions options, AcceptHandler on_stream) {
  auto l = std::make_shared<WsTunnelListener>(host, std::move(options), std::move(on_stream));
  l->start();
  return l;
}

}  // namespace clusterconnect::tunnel_ws
