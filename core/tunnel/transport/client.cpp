// Client side of the rendezvous transports: end-to-end sessions with the
// cluster's agents, made on demand by a rendezvous in the client's form (tls:
// connect, then a preamble on the rendezvous port; ws: a Hybrid Connections
// sender's WebSocket), inside which this side is the TLS server whose client
// must prove a pinned agent key; one stream per async_open. Streams
// share one session until it holds its maximum; then another rendezvous adds a
// session. A session that ends (agent or relay restart) is replaced by the
// next open.

#include <atomic>
#include <deque>
#include <vector>
#include <variant>

#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <spdlog/spdlog.h>

#include "clusterconnect/ascii.hpp"
#include "legs.hpp"
#include "relay_calls.hpp"
#include "rendezvous_transport.hpp"

namespace clusterconnect::tunnel::transport {

namespace {

// Bound on callers waiting for a session to come up.
constexpr std::size_t max_waiters = 4096;
// Streams one session carries at most (the mux's limit on either end).
const std::size_t streams_per_session = tunnel::SessionOptions{}.max_streams;

class RendezvousClient final : public TunnelClient, public std::enable_shared_from_this<RendezvousClient> {
 public:
  RendezvousClient(HostServices& host, RelayEndpoint endpoint, TokenSource token, Form form)
      : form_(form),
        io_(host.io_context()),
        strand_(asio::make_strand(host.io_context())),
        logger_(host.logger()),
        endpoint_(std::move(endpoint)),
        token_(std::move(token)) {
    for (auto& pin : endpoint_.agent_key_pins) pin = ascii_lowered(pin);
  }

  ~RendezvousClient() override {
    for (auto& l : sessions_) l->session->close("client closed");
  }

  void async_open(OpenRequest request, OpenHandler handler) override {
    asio::dispatch(strand_, [self = shared_from_this(), md = std::move(request.metadata), h = std::move(handler)]() mutable {
      self->enqueue(Waiter{OpenWaiter{std::move(md), std::move(h)}});
    });
  }

  void async_connect(DoneHandler handler) override {
    asio::dispatch(strand_, [self = shared_from_this(), h = std::move(handler)]() mutable { self->enqueue(Waiter{std::move(h)}); });
  }

  void close() noexcept override {
    try {
      asio::dispatch(strand_, [self = shared_from_this()] {
        self->closed_ = true;
        for (auto& l : self->sessions_) l->session->close("client closed");
        self->sessions_.clear();
        self->fail_waiters(asio::error::operation_aborted, "tunnel client closed");
      });
    } catch (...) {
    }
  }

 private:
  struct OpenWaiter {
    tunnel::Metadata metadata;
    OpenHandler handler;
    unsigned moved = 0;  // times it was refused by a draining session and opened again
  };
  // A draining session (the agent's GOAWAY, e.g. its relay replica shuts
  // down) refuses an open that crossed the GOAWAY; it is opened again on
  // another session, a few times at most. So is an open that the session's
  // close overtook before the agent answered it (an agent closes a session
  // with no stream left right after its GOAWAY): no byte of the stream was
  // sent, as nothing is before the agent's ACK.
  static constexpr unsigned max_moves = 3;
  using Waiter = std::variant<OpenWaiter, DoneHandler>;

  // A session and the opens it has been given that it has not answered yet
  // (they count against its limit before the mux counts them).
  struct Live {
    std::shared_ptr<tunnel::Session> session;
    std::atomic<std::size_t> opening{0};
  };

  // A usable session with room for one more stream; ended ones are dropped.
  std::shared_ptr<Live> pick() {
    std::erase_if(sessions_, [](const std::shared_ptr<Live>& l) { return l->session->closed(); });
    for (auto& l : sessions_)
      if (l->session->usable() && l->session->active_streams() + l->opening.load() < streams_per_session) return l;
    return nullptr;
  }

  void enqueue(Waiter w) {
    if (closed_) return complete(std::move(w), asio::error::operation_aborted, "tunnel client closed");
    if (auto l = pick()) return run(l, std::move(w));
    if (waiters_.size() >= max_waiters)
      return complete(std::move(w), asio::error::no_buffer_space, "too many streams waiting for the cluster");
    waiters_.push_back(std::move(w));
    connect();
  }

  void run(const std::shared_ptr<Live>& l, Waiter w) {
    if (auto* o = std::get_if<OpenWaiter>(&w)) {
      ++l->opening;
      const unsigned moved = o->moved;
      tunnel::Metadata again = o->metadata;
      l->session->async_open(std::move(o->metadata), [self = shared_from_this(), l, h = std::move(o->handler), moved,
                                                      again = std::move(again)](error_code ec, tunnel::TunnelStreamPtr s,
                                                                                std::string reason) mutable {
        --l->opening;
        const bool unseen = (ec == asio::error::connection_refused && !l->session->usable()) ||
                            ec == asio::error::connection_aborted || ec == asio::error::not_connected;
        if (unseen && moved < max_moves) {
          self->logger_->debug("a stream refused by a draining session ({}): opening it on another", reason);
          return asio::dispatch(self->strand_, [self, w = OpenWaiter{std::move(again), std::move(h), moved + 1}]() mutable {
            self->enqueue(std::move(w));
          });
        }
        h(ec, std::move(s), std::move(reason));
      });
    } else {
      asio::post(strand_, [h = std::move(std::get<DoneHandler>(w))]() mutable { h({}); });
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
    if (!target_) {
      auto t = relay_target(endpoint_);
      if (!t) return fail_waiters(asio::error::invalid_argument, t.error());
      target_ = t.value();
      auto ctx = relay_tls_context(endpoint_, *logger_);
      if (!ctx) return fail_waiters(asio::error::invalid_argument, "TLS setup for the relay: " + ctx.error());
      relay_tls_ = ctx.value();
    }
    if (endpoint_.agent_key_pins.empty())
      return fail_waiters(asio::error::access_denied,
                          "the relay's registry pins no agent key for " + target_->hybrid_connection +
                              ": the tls transport only talks to an agent whose key is registered");
    if (!identity_) {
      auto id = ephemeral_proxy_identity();
      if (!id) return fail_waiters(asio::error::invalid_argument, id.error());
      identity_ = id.value();
    }
    std::string token;
    if (token_) {
      auto t = token_();  // never throws: the host's exceptions end at its side
      if (!t) return fail_waiters(asio::error::operation_not_supported, "cannot reach the relay: no relay token: " + t.error());
      token = std::move(t.value());
    }
    connecting_ = true;
    if (form_ == Form::ws) {
      ProxyWsLeg leg;
      leg.target = *target_;
      leg.relay_tls = relay_tls_;
      leg.token = std::move(token);
      leg.own_pin = identity_->pin;
      leg.agent_pins = endpoint_.agent_key_pins;
      leg.session = session_options();
      return async_proxy_ws_leg(io_, identity_->context, std::move(leg), logger_, leg_done());
    }
    async_request_rendezvous(io_, *target_, relay_tls_, std::move(token), identity_->pin,
                             [self = shared_from_this()](error_code ec, RendezvousOffer offer, std::string reason) mutable {
                               asio::dispatch(self->strand_, [self, ec, offer = std::move(offer), reason = std::move(reason)]() mutable {
                                 self->on_offer(ec, std::move(offer), std::move(reason));
                               });
                             });
  }

  void on_offer(error_code ec, RendezvousOffer offer, std::string reason) {
    if (closed_) return;
    if (ec) {
      connecting_ = false;
      logger_->warn("connect to {}: {}", endpoint_.url, reason);
      return fail_waiters(ec, reason);
    }
    ProxyLeg leg;
    leg.offer = std::move(offer);
    leg.agent_pins = endpoint_.agent_key_pins;
    leg.cluster = target_->hybrid_connection;
    leg.session = session_options();
    async_proxy_leg(io_, identity_->context, std::move(leg), logger_, leg_done());
  }

  tunnel::SessionOptions session_options() const {
    tunnel::SessionOptions o;
    o.role = tunnel::Role::dialer;
    o.name = "session with the agent of " + target_->hybrid_connection;
    o.stream_window = tunnel::bulk_stream_window;
    return o;
  }

  LegHandler leg_done() {
    return [self = shared_from_this()](error_code ec, std::shared_ptr<tunnel::Session> s, std::string reason) mutable {
      asio::dispatch(self->strand_, [self, ec, s = std::move(s), reason = std::move(reason)]() mutable {
        self->on_session(ec, std::move(s), std::move(reason));
      });
    };
  }

  void on_session(error_code ec, std::shared_ptr<tunnel::Session> session, std::string reason) {
    connecting_ = false;
    if (closed_) {
      if (session) session->close("client closed");
      return;
    }
    if (ec) {
      // A refused agent key is a security event, and its reason says it all.
      if (ec == asio::error::access_denied) logger_->error("{}", reason);
      else logger_->warn("rendezvous with the agent of {}: {}", target_->hybrid_connection, reason);
      return fail_waiters(ec, reason);
    }
    auto live = std::make_shared<Live>();
    live->session = std::move(session);
    live->session->on_closed([weak = weak_from_this(), name = target_->hybrid_connection](const std::string& why) {
      if (auto self = weak.lock()) self->logger_->debug("session with the agent of {} closed: {}", name, why);
    });
    live->session->start();
    sessions_.push_back(live);
    logger_->debug("end-to-end session with the agent of {} established ({} open)", target_->hybrid_connection,
                   sessions_.size());
    // Waiters go to sessions with room; past that they wait for one more.
    auto list = std::move(waiters_);
    waiters_.clear();
    for (auto& w : list) {
      if (auto l = pick()) run(l, std::move(w));
      else waiters_.push_back(std::move(w));
    }
    if (!waiters_.empty()) connect();
  }

  Form form_;
  asio::io_context& io_;
  asio::strand<asio::io_context::executor_type> strand_;
  std::shared_ptr<spdlog::logger> logger_;
  RelayEndpoint endpoint_;
  TokenSource token_;
  std::optional<RelayTarget> target_;
  std::shared_ptr<asio::ssl::context> relay_tls_;
  std::optional<ProxyIdentity> identity_;
  std::vector<std::shared_ptr<Live>> sessions_;
  std::deque<Waiter> waiters_;
  bool connecting_ = false;
  bool closed_ = false;
};

}  // namespace

std::shared_ptr<TunnelClient> make_client(HostServices& host, RelayEndpoint endpoint, TokenSource token, Form form) {
  return std::make_shared<RendezvousClient>(host, std::move(endpoint), std::move(token), form);
}

}  // namespace clusterconnect::tunnel::transport
