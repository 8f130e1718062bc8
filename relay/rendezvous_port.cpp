#include "rendezvous_port.hpp"

#include <algorithm>
#include <array>
#include <optional>
#include <variant>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/spdlog.h>

#include "rendezvous/client_hello.hpp"
#include "rendezvous/preamble.hpp"

namespace clusterconnect::relay {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;
namespace rv = tunnel::rendezvous;

namespace {
// A ClientHello at its size limit, in records of one byte more than needed.
constexpr std::size_t max_first_bytes = rv::max_client_hello + 1024;
}  // namespace

struct RendezvousPort::Leg {
  explicit Leg(tcp::socket s) : socket(std::move(s)) {}
  tcp::socket socket;
  std::vector<std::uint8_t> first_bytes;  // an agent's ClientHello, handed to the proxy's leg on pairing
  std::string peer;
  // Counted in `unpaired` until paired, refused or expired.
  std::shared_ptr<void> unpaired_lease;
};

// Reads a new connection's first bytes until it is known to be an agent's
// leg (a whole ClientHello) or a proxy's (a whole preamble line).
class RendezvousPort::Identify : public std::enable_shared_from_this<Identify> {
 public:
  Identify(std::shared_ptr<RendezvousPort> port, std::shared_ptr<Leg> leg)
      : port_(std::move(port)), leg_(std::move(leg)), timer_(leg_->socket.get_executor()) {}

  void start() {
    timer_.expires_after(port_->options_.identify_timeout);
    timer_.async_wait([self = shared_from_this()](error_code ec) {
      if (ec || self->decided_) return;
      self->decided_ = true;
      self->port_->logger_->debug("rendezvous leg from {}: nothing identified it in time", self->leg_->peer);
      self->port_->refuse(self->leg_, LegSide::agent, 408, "the leg did not identify itself in time");
    });
    read();
  }

 private:
  void read() {
    auto& buf = leg_->first_bytes;
    const std::size_t have = buf.size();
    buf.resize(have + 4096 > max_first_bytes ? max_first_bytes : have + 4096);
    leg_->socket.async_read_some(asio::buffer(buf.data() + have, buf.size() - have),
                                 [self = shared_from_this(), have](error_code ec, std::size_t n) {
                                   self->leg_->first_bytes.resize(have + n);
                                   self->on_read(ec);
                                 });
  }

  void on_read(error_code ec) {
    if (decided_) return;
    auto& port = *port_;
    const auto& bytes = leg_->first_bytes;
    if (ec) return decide_refused(LegSide::agent, 400, "the leg closed before it identified itself");
    switch (rv::classify_leg(bytes)) {
      case rv::Leg::undecided:
        return read();
      case rv::Leg::unknown:
        return decide_refused(LegSide::agent, 400, "not a rendezvous leg");
      case rv::Leg::agent: {
        auto hello = rv::peek_client_hello(bytes);
        if (hello.state == rv::HelloPeek::State::invalid) return decide_refused(LegSide::agent, 400, hello.error);
        if (hello.state == rv::HelloPeek::State::need_more) {
          if (bytes.size() >= max_first_bytes) return decide_refused(LegSide::agent, 400, "ClientHello too large");
          return read();
        }
        auto ticket = rv::ticket_from_server_name(hello.server_name, port.options_.relay_host);
        if (!ticket) return decide_refused(LegSide::agent, 400, "the ClientHello names no ticket of this relay");
        decided_ = true;
        timer_.cancel();
        return port.present(*ticket, LegSide::agent, leg_);
      }
      case rv::Leg::proxy: {
        auto line = rv::parse_preamble(bytes);
        if (line.state == rv::LinePeek::State::invalid) return decide_refused(LegSide::proxy, 400, line.error);
        if (line.state == rv::LinePeek::State::need_more) return read();
        // The proxy speaks again only after the relay's answer.
        if (line.consumed != bytes.size())
          return decide_refused(LegSide::proxy, 400, "bytes after the preamble before the relay's answer");
        decided_ = true;
        timer_.cancel();
        leg_->first_bytes.clear();
        leg_->first_bytes.shrink_to_fit();
        return port.present(line.ticket, LegSide::proxy, leg_);
      }
    }
  }

  void decide_refused(LegSide side, unsigned status, const std::string& why) {
    decided_ = true;
    timer_.cancel();
    port_->logger_->debug("rendezvous leg from {} refused: {}", leg_->peer, why);
    port_->refuse(leg_, side, status, why);
  }

  std::shared_ptr<RendezvousPort> port_;
  std::shared_ptr<Leg> leg_;
  asio::steady_timer timer_;
  bool decided_ = false;
};

RendezvousPort::RendezvousPort(asio::io_context& io, RendezvousPortOptions options, std::shared_ptr<spdlog::logger> logger)
    : io_(io),
      strand_(asio::make_strand(io)),
      acceptor_(strand_),
      sweep_(strand_),
      options_(std::move(options)),
      logger_(std::move(logger)),
      book_(options_.book) {
  // Large pipes move more bytes per splice(2); only directions with bytes in
  // flight hold one, so their number follows the traffic, not the connections.
  if (!options_.splice.pipes) options_.splice.pipes = std::make_shared<tunnel::rendezvous::PipePool>(1 << 20, 16);
}

RendezvousPort::~RendezvousPort() = default;

std::shared_ptr<RendezvousPort> RendezvousPort::listen(asio::io_context& io, const tcp::endpoint& at,
                                                       RendezvousPortOptions options, std::shared_ptr<spdlog::logger> logger,
                                                       error_code& ec) {
  std::shared_ptr<RendezvousPort> port(new RendezvousPort(io, std::move(options), std::move(logger)));
  auto& a = port->acceptor_;
  a.open(at.protocol(), ec);
  if (!ec) a.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) a.bind(at, ec);
  if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return nullptr;
  port->port_ = a.local_endpoint(ec).port();
  if (ec) return nullptr;
  port->do_accept();
  asio::dispatch(port->sweep_.get_executor(), [port] {
    std::lock_guard lock(port->mutex_);
    port->arm_sweep();
  });
  return port;
}

void RendezvousPort::do_accept() {
  acceptor_.async_accept(asio::make_strand(io_), [self = shared_from_this()](error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !self->acceptor_.is_open()) return;
    if (!ec) {
      error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);
      auto leg = std::make_shared<Leg>(std::move(socket));
      auto ep = leg->socket.remote_endpoint(ignored);
      leg->peer = ep.address().to_string() + ":" + std::to_string(ep.port());
      if (static_cast<std::size_t>(self->counters_.unpaired.load()) >= self->options_.max_unpaired) {
        self->counters_.refused.fetch_add(1);
        self->logger_->warn("rendezvous port: {} connections not yet paired, the maximum; closed the one from {}",
                            self->options_.max_unpaired, leg->peer);
        leg->socket.close(ignored);
      } else {
        self->counters_.unpaired.fetch_add(1);
        leg->unpaired_lease = std::shared_ptr<void>(nullptr, [weak = std::weak_ptr<RendezvousPort>(self)](void*) {
          if (auto port = weak.lock()) port->counters_.unpaired.fetch_sub(1);
        });
        asio::dispatch(leg->socket.get_executor(),
                       [self, leg] { std::make_shared<Identify>(self, leg)->start(); });
      }
    } else {
      self->logger_->warn("rendezvous port: accept failed: {}", ec.message());
    }
    self->do_accept();
  });
}

std::string RendezvousPort::open(const std::string& cluster, const std::string& client, std::string& why) {
  std::string ticket = rv::make_ticket();
  if (ticket.empty()) {
    why = "no random bytes for a ticket";
    return {};
  }
  std::lock_guard lock(mutex_);
  if (closed_) {
    why = "the relay is shutting down";
    return {};
  }
  if (!book_.open(ticket, cluster, client, RendezvousBook<std::shared_ptr<Leg>>::Clock::now(), why)) return {};
  return ticket;
}

void RendezvousPort::cancel(const std::string& ticket) {
  std::optional<RendezvousBook<std::shared_ptr<Leg>>::Expired> waiting;
  {
    std::lock_guard lock(mutex_);
    waiting = book_.cancel(ticket);
  }
  splice_ended_.notify_all();
  if (waiting) refuse(waiting->leg, waiting->side, 410, "the connect that opened this rendezvous went away");
}

void RendezvousPort::arm_sweep() {
  // Once a second: a leg waits at most a second past its rendezvous' ttl.
  sweep_.expires_after(std::chrono::seconds(1));
  sweep_.async_wait([weak = weak_from_this()](error_code ec) {
    auto self = weak.lock();
    if (ec || !self) return;
    std::vector<RendezvousBook<std::shared_ptr<Leg>>::Expired> gone;
    {
      std::lock_guard lock(self->mutex_);
      if (self->closed_) return;
      gone = self->book_.expire(RendezvousBook<std::shared_ptr<Leg>>::Clock::now());
      self->arm_sweep();
    }
    if (!gone.empty()) self->splice_ended_.notify_all();
    for (auto& e : gone) {
      self->counters_.expired.fetch_add(1);
      const long ttl = static_cast<long>(std::chrono::duration_cast<std::chrono::seconds>(self->options_.book.ttl).count());
      self->refuse(e.leg, e.side, 504,
                   e.side == LegSide::proxy ? "no agent answered within " + std::to_string(ttl) + " s"
                                            : "the proxy did not come within " + std::to_string(ttl) + " s");
    }
  });
}

void RendezvousPort::present(const std::string& ticket, LegSide side, std::shared_ptr<Leg> leg) {
  using Book = RendezvousBook<std::shared_ptr<Leg>>;
  std::variant<Book::Parked, Book::Paired, Book::Refused> r;
  bool closed = false;
  {
    std::lock_guard lock(mutex_);
    closed = closed_;
    if (closed) r = Book::Refused{std::move(leg), "the relay is shutting down"};
    else r = book_.present(ticket, side, std::move(leg), Book::Clock::now());
    if (std::holds_alternative<Book::Paired>(r)) ++pairing_;
  }
  splice_ended_.notify_all();
  if (auto* p = std::get_if<Book::Paired>(&r)) return pair(std::move(p->proxy), std::move(p->agent), p->cluster);
  if (auto* f = std::get_if<Book::Refused>(&r)) {
    logger_->info("rendezvous leg from {} refused: {}", f->leg->peer, f->reason);
    refuse(f->leg, side, closed ? 503 : 404, f->reason);
  }
}

void RendezvousPort::pair(std::shared_ptr<Leg> proxy, std::shared_ptr<Leg> agent, const std::string& cluster) {
  counters_.paired.fetch_add(1);
  logger_->debug("rendezvous for {} paired: proxy {} with agent {}", cluster, proxy->peer, agent->peer);
  // The answer and the agent's ClientHello in one write, then only splicing.
  auto head = std::make_shared<std::string>(rv::make_reply(200, "paired"));
  std::array<asio::const_buffer, 2> out{asio::buffer(*head), asio::buffer(agent->first_bytes)};
  asio::async_write(proxy->socket, out,
                    [self = shared_from_this(), proxy, agent, head, cluster](error_code ec, std::size_t) mutable {
                      if (ec) {
                        self->logger_->info("rendezvous for {}: the proxy's leg went away before pairing: {}", cluster,
                                            ec.message());
                        error_code ignored;
                        agent->socket.close(ignored);
                        proxy->socket.close(ignored);
                        self->pairing_done();
                        return;
                      }
                      const std::uint64_t hello_bytes = agent->first_bytes.size();
                      std::uint64_t id = 0;
                      {
                        // Counted and listed together, so that what spliced_clusters()
                        // says agrees with splices_active at every moment.
                        std::lock_guard lock(self->mutex_);
                        id = self->next_splice_++;
                        self->splices_.emplace(id, Spliced{{}, cluster});
                        self->counters_.splices_active.fetch_add(1);
                      }
                      std::weak_ptr<RendezvousPort> weak = self;
                      auto done = [weak, id, cluster, hello_bytes](const rv::SpliceResult& r) {
                        auto port = weak.lock();
                        if (!port) return;
                        {
                          std::lock_guard lock(port->mutex_);
                          port->splices_.erase(id);
                          port->counters_.splices_active.fetch_sub(1);
                          if (port->draining_ && !port->closed_) port->counters_.drained.fetch_add(1);
                        }
                        port->splice_ended_.notify_all();
                        port->counters_.bytes_proxy_to_agent.fetch_add(r.a_to_b);
                        port->counters_.bytes_agent_to_proxy.fetch_add(r.b_to_a + hello_bytes);
                        port->logger_->debug("rendezvous for {} ended ({}): {} bytes to the agent, {} to the proxy",
                                             cluster, r.reason, r.a_to_b, r.b_to_a + hello_bytes);
                      };
                      error_code sec;
                      auto splice = rv::start_splice(std::move(proxy->socket), std::move(agent->socket),
                                                     self->options_.splice, std::move(done), sec);
                      // The legs are paired now: no longer counted as waiting.
                      proxy->unpaired_lease.reset();
                      agent->unpaired_lease.reset();
                      agent->first_bytes = {};
                      if (!splice) {
                        {
                          std::lock_guard lock(self->mutex_);
                          self->splices_.erase(id);
                          self->counters_.splices_active.fetch_sub(1);
                        }
                        self->logger_->error("rendezvous for {}: cannot splice: {}", cluster, sec.message());
                        return self->pairing_done();
                      }
                      {
                        std::lock_guard lock(self->mutex_);
                        if (self->closed_) {
                          splice->close("the relay is shutting down");
                        } else if (auto it = self->splices_.find(id); it != self->splices_.end()) {
                          it->second.splice = splice;  // (gone already if it ended at once)
                        }
                      }
                      self->pairing_done();
                    });
}

void RendezvousPort::pairing_done() {
  {
    std::lock_guard lock(mutex_);
    --pairing_;
  }
  splice_ended_.notify_all();
}

void RendezvousPort::refuse(const std::shared_ptr<Leg>& leg, LegSide side, unsigned status, const std::string& reason) {
  if (status != 504) counters_.refused.fetch_add(1);  // expiry is counted apart
  if (side != LegSide::proxy) {
    // An agent's leg has sent TLS; there is no line to answer it with.
    asio::dispatch(leg->socket.get_executor(), [leg] {
      error_code ignored;
      leg->socket.close(ignored);
    });
    return;
  }
  auto line = std::make_shared<std::string>(rv::make_reply(status, reason));
  asio::dispatch(leg->socket.get_executor(), [leg, line] {
    asio::async_write(leg->socket, asio::buffer(*line), [leg, line](error_code, std::size_t) {
      error_code ignored;
      leg->socket.shutdown(tcp::socket::shutdown_both, ignored);
      leg->socket.close(ignored);
    });
  });
}

void RendezvousPort::begin_drain() {
  std::lock_guard lock(mutex_);
  draining_ = true;
}

bool RendezvousPort::drain(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock lock(mutex_);
  draining_ = true;
  // A rendezvous announced before the drain has its legs on their way: it
  // pairs, and its agent, told of the drain, sends GOAWAY on its session as
  // soon as it is up, so it ends like the others instead of failing here.
  const auto pending_until = std::min(deadline, std::chrono::steady_clock::now() + options_.drain_pending);
  splice_ended_.wait_until(lock, pending_until, [&] { return closed_ || (book_.pending() == 0 && pairing_ == 0); });
  return splice_ended_.wait_until(lock, deadline,
                                  [&] { return closed_ || (counters_.splices_active.load() <= 0 && pairing_ == 0); });
}

std::vector<std::string> RendezvousPort::spliced_clusters() {
  std::vector<std::string> out;
  std::lock_guard lock(mutex_);
  for (const auto& [id, s] : splices_)
    if (std::find(out.begin(), out.end(), s.cluster) == out.end()) out.push_back(s.cluster);
  for (auto& c : book_.pending_clusters())
    if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(std::move(c));
  return out;
}

void RendezvousPort::close() {
  std::vector<std::shared_ptr<tunnel::rendezvous::SocketSplice>> splices;
  std::vector<RendezvousBook<std::shared_ptr<Leg>>::Expired> waiting;
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
    for (auto& [id, w] : splices_)
      if (auto s = w.splice.lock()) splices.push_back(std::move(s));
    splices_.clear();
    // Those still splicing (a splice that just ended may still be held here;
    // one being set up is closed as soon as it starts).
    counters_.cut.fetch_add(static_cast<std::uint64_t>(std::max<std::int64_t>(0, counters_.splices_active.load())));
    waiting = book_.expire(RendezvousBook<std::shared_ptr<Leg>>::Clock::time_point::max());
  }
  asio::post(acceptor_.get_executor(), [self = shared_from_this()] {
    error_code ignored;
    self->acceptor_.close(ignored);
    self->sweep_.cancel();
  });
  for (auto& s : splices) s->close("the relay is shutting down");
  for (auto& e : waiting) refuse(e.leg, e.side, 503, "the relay is shutting down");
}

}  // namespace clusterconnect::relay
