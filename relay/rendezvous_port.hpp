#pragma once
// The relay's rendezvous port. Both legs of every rendezvous connect here:
// an agent's leg opens with a TLS ClientHello whose server name carries the
// ticket, a proxy's leg with a preamble line naming it. The port tells them
// apart by their first byte, pairs them by ticket (RendezvousBook), answers
// the proxy's leg with one line, hands it the agent's ClientHello and from
// then on splices the two sockets. It never terminates TLS: what runs inside
// is end to end between the proxy and the agent.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <spdlog/logger.h>

#include "rendezvous/socket_splice.hpp"
#include "rendezvous_book.hpp"

namespace clusterconnect::relay {

struct RendezvousPortOptions {
  // The name agents put after their ticket in SNI: "<ticket>.<relay_host>".
  std::string relay_host;
  // A leg must identify itself (whole ClientHello or preamble line) within this.
  std::chrono::milliseconds identify_timeout{std::chrono::seconds(10)};
  // Connections not yet paired: being identified or waiting for their other leg.
  std::size_t max_unpaired = 1024;
  RendezvousLimits book;
  // At shutdown, how long a rendezvous already announced (its legs on their
  // way) may still take to pair; it is then spliced and drained like the others.
  std::chrono::milliseconds drain_pending{std::chrono::seconds(10)};
  // Without a pipe pool here the port makes one: 1 MiB pipes, 16 kept.
  tunnel::rendezvous::SpliceOptions splice;
};

struct RendezvousCounters {
  std::atomic<std::uint64_t> paired{0};
  std::atomic<std::uint64_t> expired{0};
  std::atomic<std::uint64_t> refused{0};  // unknown or spent tickets, malformed first bytes, limits, timeouts
  std::atomic<std::int64_t> unpaired{0};
  std::atomic<std::int64_t> splices_active{0};
  std::atomic<std::uint64_t> bytes_proxy_to_agent{0};
  std::atomic<std::uint64_t> bytes_agent_to_proxy{0};
  // At shutdown: splices that ended by themselves while the relay drained
  // (their session closed after GOAWAY), and those it had to close.
  std::atomic<std::uint64_t> drained{0};
  std::atomic<std::uint64_t> cut{0};
};

class RendezvousPort : public std::enable_shared_from_this<RendezvousPort> {
 public:
  static std::shared_ptr<RendezvousPort> listen(boost::asio::io_context& io, const boost::asio::ip::tcp::endpoint& at,
                                                RendezvousPortOptions options, std::shared_ptr<spdlog::logger> logger,
                                                boost::system::error_code& ec);
  ~RendezvousPort();

  unsigned short port() const { return port_; }

  // A rendezvous for a connect authorised for `cluster` with the credential
  // `client` names: its fresh ticket, or empty with `why` set when a pending
  // limit is reached.
  std::string open(const std::string& cluster, const std::string& client, std::string& why);
  // Withdraws a rendezvous whose connect went away; a leg that waits is closed.
  void cancel(const std::string& ticket);

  // Shutdown, first: splices go on, and each that ends from now on counts as
  // drained.
  void begin_drain();
  // begin_drain(), then blocks until no splice is left (true) or `deadline`
  // (false). Rendezvous pending when it is called pair meanwhile, for
  // `drain_pending` at most: they are not cut but drained as well.
  bool drain(std::chrono::steady_clock::time_point deadline);
  // The clusters (as open() named them) with a splice here now, or a
  // rendezvous pending (which a drain lets pair).
  std::vector<std::string> spliced_clusters();

  // Stops accepting and closes every leg and splice (those still splicing
  // count as cut).
  void close();

  const RendezvousCounters& counters() const { return counters_; }
  std::chrono::milliseconds ttl() const { return options_.book.ttl; }

 private:
  struct Leg;
  class Identify;
  friend class Identify;

  RendezvousPort(boost::asio::io_context& io, RendezvousPortOptions options, std::shared_ptr<spdlog::logger> logger);
  void do_accept();
  void arm_sweep();
  void present(const std::string& ticket, LegSide side, std::shared_ptr<Leg> leg);
  void pair(std::shared_ptr<Leg> proxy, std::shared_ptr<Leg> agent, const std::string& cluster);
  void refuse(const std::shared_ptr<Leg>& leg, LegSide side, unsigned status, const std::string& reason);
  void pairing_done();

  boost::asio::io_context& io_;
  boost::asio::strand<boost::asio::io_context::executor_type> strand_;  // the acceptor and the sweep
  boost::asio::ip::tcp::acceptor acceptor_;
  boost::asio::steady_timer sweep_;
  RendezvousPortOptions options_;
  std::shared_ptr<spdlog::logger> logger_;
  unsigned short port_ = 0;
  RendezvousCounters counters_;

  std::mutex mutex_;  // the book and the splice set
  RendezvousBook<std::shared_ptr<Leg>> book_;
  struct Spliced {
    std::weak_ptr<tunnel::rendezvous::SocketSplice> splice;  // empty while it starts
    std::string cluster;
  };
  // Each splice from the moment it is counted active to the moment it ends.
  std::map<std::uint64_t, Spliced> splices_;
  std::uint64_t next_splice_ = 0;
  std::size_t pairing_ = 0;  // paired, their splice not yet started
  std::condition_variable splice_ended_;  // also: a pending rendezvous paired, expired or was withdrawn
  bool draining_ = false;
  bool closed_ = false;
};

}  // namespace clusterconnect::relay
