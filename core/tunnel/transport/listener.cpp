// Agent side of the rendezvous transports: N control channels to the relay,
// each reconnected with capped exponential backoff and jitter and kept alive
// past its token by renewToken. Every accept on any of them is answered by
// dialing the address it names (tls://HOST:PORT, or a wss:// accept URL) and,
// inside, TLS as the client with the agent's key; the session that comes up
// carries the proxy's streams to the agent until either end closes it.

#include <algorithm>
#include <map>
#include <optional>
#include <random>
#include <vector>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <spdlog/spdlog.h>

#include "clusterconnect/ascii.hpp"
#include "clusterconnect/sas_token.hpp"
#include "legs.hpp"
#include "relay_calls.hpp"
#include "rendezvous/control_message.hpp"
#include "rendezvous_transport.hpp"

namespace clusterconnect::tunnel::transport {

namespace {

namespace rv = tunnel::rendezvous;

// Rendezvous dialed at once; more accepts wait for none, they are refused
// (the relay times the connect out and the proxy says so).
constexpr std::size_t max_pending_legs = 256;
// Reconnects of one control channel in a row to land on a replica none of
// the others holds; after them it stays where it is.
constexpr unsigned max_spread_tries = 8;
// Relay replicas that announced draining, remembered so that a session that
// comes up through one a little later (an accept passed on by another
// replica just before the notice) gets GOAWAY too. The draining replica
// opens no rendezvous after its notice, so what is announced later than this
// names a new replica at the same address.
constexpr auto draining_memory = std::chrono::seconds(10);
constexpr std::size_t max_draining = 64;

std::optional<std::chrono::system_clock::time_point> token_expiry(const std::string& token) {
  auto t = parse_sas_token(token);
  if (!t) return std::nullopt;
  return std::chrono::system_clock::time_point(std::chrono::seconds(t->expiry));
}

class RendezvousListener final : public TunnelListener, public std::enable_shared_from_this<RendezvousListener> {
 public:
  RendezvousListener(HostServices& host, ListenOptions options, AcceptHandler on_stream)
      : io_(host.io_context()),
        strand_(asio::make_strand(host.io_context())),
        logger_(host.logger()),
        options_(std::move(options)),
        on_stream_(std::move(on_stream)),
        rng_(std::random_device{}()) {
    if (options_.tunnels == 0) options_.tunnels = 1;
    if (options_.backoff_initial.count() <= 0) options_.backoff_initial = std::chrono::milliseconds(200);
    if (options_.backoff_max < options_.backoff_initial) options_.backoff_max = options_.backoff_initial;
  }

  ~RendezvousListener() override {
    for (auto& slot : slots_)
      if (slot->channel) slot->channel->close();
    for (auto& [_, s] : sessions_) s.session->close("listener closed");
  }

  Result<void> prepare() {
    auto t = relay_target(options_.endpoint);
    if (!t) return fail(t.error());
    target_ = t.value();
    auto relay = relay_tls_context(options_.endpoint, *logger_);
    if (!relay) return fail("TLS setup for the relay: " + relay.error());
    relay_tls_ = relay.value();
    auto identity = agent_context(options_.identity_cert_file, options_.identity_key_file);
    if (!identity) return fail(identity.error());
    identity_ = identity.value();
    return {};
  }

  void start() {
    asio::dispatch(strand_, [self = shared_from_this()] {
      for (unsigned i = 0; i < self->options_.tunnels; ++i) {
        self->slots_.push_back(std::make_unique<Slot>(self->strand_, i, self->options_.backoff_initial));
        self->connect(*self->slots_.back());
      }
    });
  }

  ListenerStatus status() const noexcept override { return ListenerStatus{up_.load(std::memory_order_relaxed), options_.tunnels}; }

  void close() noexcept override {
    try {
      asio::dispatch(strand_, [self = shared_from_this()] {
        self->closed_ = true;
        for (auto& slot : self->slots_) {
          slot->timer.cancel();
          slot->renew_timer.cancel();
          if (slot->channel) slot->channel->close();
          slot->channel.reset();
        }
        auto sessions = std::move(self->sessions_);
        self->sessions_.clear();
        for (auto& [_, s] : sessions) s.session->close("listener closed");
        self->up_ = 0;
      });
    } catch (...) {
    }
  }

 private:
  struct Slot {
    Slot(const asio::any_io_executor& ex, unsigned i, std::chrono::milliseconds b) : index(i), backoff(b), timer(ex), renew_timer(ex) {}
    unsigned index;
    std::chrono::milliseconds backoff;
    asio::steady_timer timer;
    asio::steady_timer renew_timer;
    std::shared_ptr<ControlChannel> channel;
    std::string token;  // the one the channel holds
    bool connecting = false;
    unsigned failures = 0;
    unsigned spread_tries = 0;  // reconnects in a row because the replica was taken
  };

  void connect(Slot& slot) {
    if (closed_ || slot.connecting) return;
    std::string token;
    if (options_.token) {
      auto t = options_.token();  // fresh on every (re)connect; never throws
      if (!t) {
        logger_->warn("control channel {}: cannot obtain a relay token: {}", slot.index, t.error());
        return retry_later(slot);
      }
      token = std::move(t.value());
    }
    std::vector<std::pair<std::string, std::string>> headers;
    if (options_.handshake_headers) headers = options_.handshake_headers();
    // This listener takes the relay's drain notices (GOAWAY at the rendezvous level).
    headers.emplace_back(std::string(rv::drain_header), "1");
    slot.connecting = true;
    async_open_control_channel(io_, *target_, relay_tls_, token, logger_,
                               [weak = weak_from_this(), &slot, token](error_code ec, std::shared_ptr<ControlChannel> c,
                                                                      std::string reason) mutable {
                                 auto self = weak.lock();
                                 if (!self) {
                                   if (c) c->close();
                                   return;
                                 }
                                 asio::dispatch(self->strand_, [self, &slot, ec, c = std::move(c), reason = std::move(reason),
                                                                token = std::move(token)]() mutable {
                                   self->on_channel(slot, ec, std::move(c), std::move(reason), std::move(token));
                                 });
                               },
                               std::chrono::seconds(10), std::move(headers));
  }

  void on_channel(Slot& slot, error_code ec, std::shared_ptr<ControlChannel> channel, std::string reason, std::string token) {
    slot.connecting = false;
    if (closed_) {
      if (channel) channel->close();
      return;
    }
    if (ec) {
      // The first failure is worth a warning; a relay that stays down is not
      // worth one line per attempt.
      if (slot.failures++ == 0) logger_->warn("control channel {}: {}", slot.index, reason);
      else logger_->debug("control channel {}: {}", slot.index, reason);
      return retry_later(slot);
    }
    // Behind one load-balanced address, a channel that lands on a replica
    // another of ours holds reconnects, a bounded number of times (there may
    // be fewer replicas than channels), so one replica's loss takes only its
    // share of them.
    if (const std::string replica = channel->replica(); !replica.empty()) {
      const bool taken = std::any_of(slots_.begin(), slots_.end(), [&](const std::unique_ptr<Slot>& other) {
        return other.get() != &slot && other->channel && other->channel->replica() == replica;
      });
      if (taken && slot.spread_tries < max_spread_tries) {
        ++slot.spread_tries;
        logger_->debug("control channel {}: replica {} already holds one of ours; reconnecting", slot.index, replica);
        channel->close();
        return connect(slot);
      }
      slot.spread_tries = 0;
    }
    // A relay that is not one of several replicas and drains takes no new
    // control channel: one that comes up is a relay started since, which may
    // answer at the draining one's address.
    if (channel->replica().empty()) draining_.clear();
    logger_->info("control channel {} to {} is up{}", slot.index, options_.endpoint.url,
                  channel->replica().empty() ? std::string() : " (replica " + channel->replica() + ")");
    slot.failures = 0;
    slot.backoff = options_.backoff_initial;
    slot.channel = channel;
    slot.token = std::move(token);
    up_.fetch_add(1, std::memory_order_relaxed);
    std::weak_ptr<ControlChannel> which = channel;
    channel->start(
        [weak = weak_from_this(), which](std::string text) {
          if (auto self = weak.lock())
            asio::dispatch(self->strand_, [self, which, text = std::move(text)] { self->on_message(text, which); });
        },
        [weak = weak_from_this(), &slot, which](std::string why) {
          if (auto self = weak.lock())
            asio::dispatch(self->strand_, [self, &slot, which, why = std::move(why)] { self->on_channel_gone(slot, which, why); });
        });
    schedule_renewal(slot);
  }

  // renewToken at 80 % of the token's remaining lifetime; the relay closes a
  // channel whose token expired.
  void schedule_renewal(Slot& slot) {
    slot.renew_timer.cancel();
    auto expiry = token_expiry(slot.token);
    if (!expiry) return;
    auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(*expiry - std::chrono::system_clock::now());
    slot.renew_timer.expires_after(std::max<std::chrono::milliseconds>(remaining * 4 / 5, std::chrono::milliseconds(500)));
    slot.renew_timer.async_wait([weak = weak_from_this(), &slot](error_code ec) {
      if (ec) return;
      if (auto self = weak.lock()) self->renew(slot);
    });
  }

  void renew(Slot& slot) {
    if (closed_ || !slot.channel || !options_.token) return;
    auto t = options_.token();
    if (!t) {
      logger_->warn("control channel {}: cannot obtain a fresh relay token: {}", slot.index, t.error());
      return schedule_renewal(slot);
    }
    if (t.value() == slot.token) return schedule_renewal(slot);
    slot.token = std::move(t.value());
    slot.channel->send(rv::to_json(rv::RenewTokenMessage{slot.token}));
    logger_->debug("control channel {}: token renewed", slot.index);
    schedule_renewal(slot);
  }

  void on_channel_gone(Slot& slot, const std::weak_ptr<ControlChannel>& which, const std::string& why) {
    if (closed_ || !slot.channel || slot.channel != which.lock()) return;
    logger_->warn("control channel {}: {}", slot.index, why);
    slot.channel.reset();
    slot.renew_timer.cancel();
    up_.fetch_sub(1, std::memory_order_relaxed);
    retry_later(slot);
  }

  // Hybrid Connections HTTP mode: a listener without a request handler
  // answers 501, as Microsoft's SDKs do. A request only announced (too large
  // for the control channel) gets the same answer there.
  void refuse_request(const rv::RequestMessage& request, const std::weak_ptr<ControlChannel>& which) {
    logger_->info("control channel: refused an HTTP request{} (this agent takes rendezvous connections only)",
                  request.method.empty() ? std::string() : " " + request.method);
    rv::ResponseMessage response;
    response.request_id = request.id;
    response.status = 501;
    response.description = "Not Implemented";
    if (auto channel = which.lock()) channel->send(rv::to_json(response));
  }

  void on_message(const std::string& text, const std::weak_ptr<ControlChannel>& which) {
    if (closed_) return;
    auto m = rv::parse_control_message(text);
    if (m.state == rv::ControlParse::State::unknown_kind) return logger_->debug("control channel: ignored a {} message", m.kind);
    if (m.state != rv::ControlParse::State::ok) return logger_->warn("control channel: a malformed message: {}", m.error);
    if (auto* request = std::get_if<rv::RequestMessage>(&m.message)) return refuse_request(*request, which);
    if (auto* drain = std::get_if<rv::DrainMessage>(&m.message)) return on_drain(*drain);
    auto* accept = std::get_if<rv::AcceptMessage>(&m.message);
    if (!accept) return;
    // Header names in connectHeaders are matched without regard to case.
    std::string proxy_pin;
    for (const auto& [name, value] : accept->connect_headers)
      if (ascii_iequals(name, rv::proxy_key_pin_header)) proxy_pin = value;
    if (proxy_pin.empty()) return logger_->warn("control channel: an accept names no proxy key; not answered");
    const bool ws = accept->address.rfind("wss://", 0) == 0;
    std::optional<RendezvousOffer> offer;
    if (!ws) {
      auto parsed = parse_rendezvous_address(accept->address);
      if (!parsed) return logger_->warn("control channel: an accept with an unusable address: {}", parsed.error());
      offer = std::move(parsed.value());
      offer->ticket = accept->id;
    }
    if (dialing_.size() >= max_pending_legs)
      return logger_->warn("control channel: {} rendezvous already being dialed; not answered", dialing_.size());
    // An accept through a replica that drains is dialed all the same: a tls
    // accept has no refusal (its proxy would wait for the relay to time the
    // rendezvous out) and a ws rejection would go through that replica. Its
    // session is told GOAWAY as soon as it is up.
    const std::uint64_t leg_id = ++last_leg_;
    dialing_.emplace(leg_id, Dialing{accept->address, draining_reason(accept->address)});
    tunnel::SessionOptions session;
    session.role = tunnel::Role::acceptor;
    session.stream_window = tunnel::bulk_stream_window;
    session.name = "session with a proxy" + (accept->remote_endpoint ? " at " + accept->remote_endpoint->address : std::string());
    LegHandler done = [weak = weak_from_this(), leg_id](error_code ec, std::shared_ptr<tunnel::Session> s, std::string reason) mutable {
      auto self = weak.lock();
      if (!self) {
        if (s) s->close("listener closed");
        return;
      }
      asio::dispatch(self->strand_, [self, ec, s = std::move(s), reason = std::move(reason), leg_id]() mutable {
        self->on_leg(ec, std::move(s), reason, leg_id);
      });
    };
    if (ws) {
      AgentWsLeg leg;
      leg.address = accept->address;
      leg.relay_tls = relay_tls_;
      leg.proxy_pin = ascii_lowered(proxy_pin);
      leg.session = std::move(session);
      return async_agent_ws_leg(io_, identity_, std::move(leg), logger_, std::move(done));
    }
    AgentLeg leg;
    leg.offer = std::move(*offer);
    leg.proxy_pin = ascii_lowered(proxy_pin);
    leg.session = std::move(session);
    async_agent_leg(io_, identity_, std::move(leg), logger_, std::move(done));
  }

  // The reason to give a session through `address` because its replica
  // drains, if it does.
  std::optional<std::string> draining_reason(const std::string& address) {
    const auto now = std::chrono::steady_clock::now();
    std::erase_if(draining_, [&](const Draining& d) { return d.until <= now; });
    for (const auto& d : draining_)
      if (rv::rendezvous_through(address, d.address)) return d.reason;
    return std::nullopt;
  }

  // The relay replica at `drain.address` is shutting down: every session
  // whose rendezvous it splices gets GOAWAY, so the proxy opens its next
  // streams on a new rendezvous (elsewhere) and this one ends once its
  // streams are done, before the replica cuts it. A session that came up
  // after an earlier notice gets it too: the notice is idempotent. So does
  // one still being dialed through it, or announced a little later, as soon
  // as it is up.
  void on_drain(const rv::DrainMessage& drain) {
    const std::string reason = drain.reason.empty() ? "the relay replica is draining" : drain.reason;
    const auto until = std::chrono::steady_clock::now() + draining_memory;
    auto known = std::find_if(draining_.begin(), draining_.end(),
                              [&](const Draining& d) { return ascii_iequals(d.address, drain.address); });
    if (known != draining_.end()) {
      known->until = until;
      known->reason = reason;
    } else {
      if (draining_.size() >= max_draining)
        draining_.erase(std::min_element(draining_.begin(), draining_.end(),
                                         [](const Draining& a, const Draining& b) { return a.until < b.until; }));
      draining_.push_back(Draining{drain.address, reason, until});
    }
    std::size_t dialing = 0;
    for (auto& [_, d] : dialing_) {
      if (!rv::rendezvous_through(d.address, drain.address)) continue;
      d.drain_reason = reason;
      ++dialing;
    }
    std::size_t n = 0;
    for (auto& [_, s] : sessions_) {
      if (!rv::rendezvous_through(s.address, drain.address)) continue;
      s.session->goaway(reason);
      ++n;
    }
    logger_->info("control channel: relay replica {} is draining; GOAWAY on {} session(s){}{}", drain.address, n,
                  dialing ? ", and on " + std::to_string(dialing) + " being dialed once up" : std::string(),
                  drain.reason.empty() ? std::string() : " (" + drain.reason + ")");
  }

  void on_leg(error_code ec, std::shared_ptr<tunnel::Session> session, const std::string& reason, std::uint64_t leg_id) {
    auto dialed = dialing_.extract(leg_id);
    if (dialed.empty()) {
      if (session) session->close("listener closed");
      return;
    }
    std::string address = std::move(dialed.mapped().address);
    std::optional<std::string> drain_reason = std::move(dialed.mapped().drain_reason);
    if (!drain_reason) drain_reason = draining_reason(address);
    if (closed_) {
      if (session) session->close("listener closed");
      return;
    }
    if (ec) return logger_->warn("rendezvous: {}", reason);
    auto on_stream = on_stream_;
    session->on_incoming([on_stream](tunnel::TunnelStreamPtr stream, tunnel::Metadata md) {
      stream->accept();
      if (on_stream) on_stream(std::move(stream), md);
    });
    auto* key = session.get();
    session->on_closed([weak = weak_from_this(), key](const std::string& why) {
      if (auto self = weak.lock())
        asio::dispatch(self->strand_, [self, key, why] {
          self->logger_->debug("a session with a proxy ended: {}", why);
          self->sessions_.erase(key);
        });
    });
    sessions_.emplace(key, Live{session, address});
    logger_->debug("a session with a proxy is up ({} open)", sessions_.size());
    session->start();
    if (drain_reason) {
      // Its proxy opens no stream on it but moves to a new rendezvous; an
      // open already on its way is refused (or, if the session has closed,
      // never seen), and opened again there.
      logger_->info("rendezvous: a session through {} came up while that relay replica drains; GOAWAY", address);
      session->goaway(*drain_reason);
    }
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
  std::optional<RelayTarget> target_;
  std::shared_ptr<asio::ssl::context> relay_tls_;
  std::shared_ptr<asio::ssl::context> identity_;
  std::vector<std::unique_ptr<Slot>> slots_;
  // A session, and the accept address its rendezvous was dialed at (which
  // replica splices it, for drain notices).
  struct Live {
    std::shared_ptr<tunnel::Session> session;
    std::string address;
  };
  std::map<tunnel::Session*, Live> sessions_;
  // Rendezvous being dialed: the accept address, and the GOAWAY reason its
  // session gets once up when its replica announced draining.
  struct Dialing {
    std::string address;
    std::optional<std::string> drain_reason;
  };
  std::map<std::uint64_t, Dialing> dialing_;
  std::uint64_t last_leg_ = 0;
  struct Draining {
    std::string address;
    std::string reason;
    std::chrono::steady_clock::time_point until;
  };
  std::vector<Draining> draining_;  // at most max_draining
  std::atomic<unsigned> up_{0};
  bool closed_ = false;
  std::mt19937 rng_;
};

}  // namespace

std::shared_ptr<TunnelListener> make_listener(HostServices& host, ListenOptions options, AcceptHandler on_stream) {
  auto l = std::make_shared<RendezvousListener>(host, std::move(options), std::move(on_stream));
  if (auto ready = l->prepare(); !ready) {
    host.logger()->error("transport listener: {}", ready.error());
    return nullptr;
  }
  l->start();
  return l;
}

}  // namespace clusterconnect::tunnel::transport
