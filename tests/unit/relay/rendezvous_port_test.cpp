// The rendezvous port with real legs: an agent that runs an OpenSSL TLS
// client with its ticket in SNI, a proxy that sends its preamble, reads the
// relay's answer and runs the TLS server, mutual TLS end to end through the
// port's splice. And what the port refuses.

#include <catch2/catch.hpp>

#include <future>
#include <thread>

#include <openssl/bio.h>
#include <openssl/ssl.h>

#include "rendezvous/client_hello.hpp"
#include "rendezvous_legs.hpp"
#include "rendezvous_port.hpp"
#include "spdlog/sinks/null_sink.h"

namespace asio = boost::asio;
using namespace clusterconnect;
using namespace clusterconnect::relay;
using namespace clusterconnect::test;
using namespace std::chrono_literals;

namespace {

const std::string relay_host = "relay.test";
const std::string cluster = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Kubernetes/connectedClusters/c";

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds limit = 30s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return pred();
}

struct Relay {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard{io.get_executor()};
  std::shared_ptr<RendezvousPort> port;
  std::vector<std::thread> threads;
  explicit Relay(RendezvousPortOptions o = {}) {
    o.relay_host = relay_host;
    boost::system::error_code ec;
    port = RendezvousPort::listen(io, {asio::ip::make_address("127.0.0.1"), 0}, o,
                                  std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>()), ec);
    REQUIRE_FALSE(ec);
    REQUIRE(port);
    for (int i = 0; i < 2; ++i) threads.emplace_back([this] { io.run(); });
  }
  ~Relay() {
    port->close();
    guard.reset();
    io.stop();
    for (auto& t : threads) t.join();
  }
  std::string ticket() {
    std::string why;
    auto t = port->open(cluster, "client", why);
    REQUIRE(!t.empty());
    return t;
  }
};

// What an OpenSSL client sends first, its ticket in SNI.
std::string client_hello(const std::string& server_name) {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  REQUIRE(ctx);
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl.get(), in, out);
  REQUIRE(SSL_set_tlsext_host_name(ssl.get(), server_name.c_str()) == 1);
  SSL_set_connect_state(ssl.get());
  REQUIRE(SSL_do_handshake(ssl.get()) == -1);
  char* data = nullptr;
  const long n = BIO_get_mem_data(out, &data);
  REQUIRE(n > 0);
  return std::string(data, static_cast<std::size_t>(n));
}

// A rendezvous paired and spliced, held open by its two raw legs.
struct HeldSplice {
  std::unique_ptr<Fd> proxy, agent;
  explicit HeldSplice(Relay& relay) {
    const auto ticket = relay.ticket();
    agent = std::make_unique<Fd>(relay.port->port());
    agent->send(client_hello(tunnel::rendezvous::ticket_server_name(ticket, relay_host)));
    proxy = std::make_unique<Fd>(relay.port->port());
    proxy->send(tunnel::rendezvous::make_preamble(ticket));
    REQUIRE(proxy->line() == "CLUSTERCONNECT-RENDEZVOUS/1 200 paired\r\n");
  }
  void end() {
    proxy.reset();
    agent.reset();
  }
};

}  // namespace

TEST_CASE("a draining port splices on until its rendezvous end and counts them drained", "[relay][rendezvous]") {
  Relay relay;
  HeldSplice first(relay), second(relay);
  REQUIRE(wait_until([&] { return relay.port->counters().splices_active.load() == 2; }));
  CHECK(relay.port->spliced_clusters() == std::vector<std::string>{cluster});
  // The drain begins (its deadline passed at once: two splices are left)…
  CHECK_FALSE(relay.port->drain(std::chrono::steady_clock::now()));
  // …and goes on until they end.
  auto drained = std::async(std::launch::async, [&] { return relay.port->drain(std::chrono::steady_clock::now() + 60s); });
  first.end();
  REQUIRE(wait_until([&] { return relay.port->counters().drained.load() == 1; }));
  // Still splicing the other: bytes pass, the drain goes on.
  second.agent->send("still here");
  char buf[64];
  std::string got;
  for (int i = 0; i < 1000 && got.find("still here") == std::string::npos; ++i) {
    const auto n = ::recv(second.proxy->fd, buf, sizeof buf, 0);
    REQUIRE(n > 0);
    got.append(buf, static_cast<std::size_t>(n));
  }
  CHECK(got.find("still here") != std::string::npos);
  second.end();
  CHECK(drained.get());
  CHECK(relay.port->counters().drained.load() == 2);
  CHECK(relay.port->counters().cut.load() == 0);
  CHECK(relay.port->spliced_clusters().empty());
}

TEST_CASE("what still splices when the drain times out is cut", "[relay][rendezvous]") {
  Relay relay;
  HeldSplice held(relay);
  REQUIRE(wait_until([&] { return relay.port->counters().splices_active.load() == 1; }));
  CHECK_FALSE(relay.port->drain(std::chrono::steady_clock::now()));  // the deadline has passed
  relay.port->close();
  CHECK(held.proxy->closed_by_peer());
  CHECK(relay.port->counters().cut.load() == 1);
  CHECK(relay.port->counters().drained.load() == 0);
}

TEST_CASE("a rendezvous pending when the drain begins pairs and is drained instead of refused", "[relay][rendezvous][drain]") {
  Relay relay;
  const auto ticket = relay.ticket();
  // The agent's leg is parked; the proxy's is on its way.
  Fd agent(relay.port->port());
  agent.send(client_hello(tunnel::rendezvous::ticket_server_name(ticket, relay_host)));
  REQUIRE(wait_until([&] { return relay.port->counters().unpaired.load() == 1; }));
  // Told to drain other replicas' agents of it, like a cluster spliced here.
  CHECK(relay.port->spliced_clusters() == std::vector<std::string>{cluster});
  relay.port->begin_drain();
  auto drained = std::async(std::launch::async, [&] { return relay.port->drain(std::chrono::steady_clock::now() + 60s); });
  Fd proxy(relay.port->port());
  proxy.send(tunnel::rendezvous::make_preamble(ticket));
  CHECK(proxy.line() == "CLUSTERCONNECT-RENDEZVOUS/1 200 paired\r\n");
  REQUIRE(wait_until([&] { return relay.port->counters().splices_active.load() == 1; }));
  // The drain waits for the splice it let pair…
  CHECK(drained.wait_for(0s) == std::future_status::timeout);
  ::shutdown(proxy.fd, SHUT_RDWR);
  ::shutdown(agent.fd, SHUT_RDWR);
  // …which ends by itself: drained, not cut.
  CHECK(drained.get());
  CHECK(relay.port->counters().drained.load() == 1);
  CHECK(relay.port->counters().cut.load() == 0);
}

TEST_CASE("a draining port waits for a pending rendezvous no longer than its grace", "[relay][rendezvous][drain]") {
  RendezvousPortOptions o;
  o.drain_pending = 200ms;
  Relay relay(o);
  Fd waiting(relay.port->port());
  waiting.send(tunnel::rendezvous::make_preamble(relay.ticket()));  // no agent comes
  REQUIRE(wait_until([&] { return relay.port->counters().unpaired.load() == 1; }));
  // Nothing splices: the drain ends after the grace, far before its deadline.
  CHECK(relay.port->drain(std::chrono::steady_clock::now() + 60s));
  CHECK(relay.port->counters().expired.load() == 0);  // long before the rendezvous' own 30 s
  relay.port->close();
  CHECK(waiting.line() == "CLUSTERCONNECT-RENDEZVOUS/1 503 the relay is shutting down\r\n");
}

TEST_CASE("legs that name one ticket run mutual TLS end to end through the port, in either order", "[relay][rendezvous]") {
  Relay relay;
  const Identity agent_id("agent"), proxy_id("proxy");
  const auto data = payload(4 << 20);
  for (bool agent_first : {false, true}) {
    INFO((agent_first ? "agent first" : "proxy first"));
    const auto ticket = relay.ticket();
    const auto unpaired = relay.port->counters().unpaired.load();
    std::future<AgentResult> agent;
    std::future<ProxyResult> proxy;
    if (agent_first) {
      agent = agent_leg(relay.port->port(), tunnel::rendezvous::ticket_server_name(ticket, relay_host), agent_id, proxy_id);
      REQUIRE(wait_until([&] { return relay.port->counters().unpaired.load() == unpaired + 1; }));
      proxy = proxy_leg(relay.port->port(), ticket, proxy_id, agent_id, data);
    } else {
      proxy = proxy_leg(relay.port->port(), ticket, proxy_id, agent_id, data);
      REQUIRE(wait_until([&] { return relay.port->counters().unpaired.load() == unpaired + 1; }));
      agent = agent_leg(relay.port->port(), tunnel::rendezvous::ticket_server_name(ticket, relay_host), agent_id, proxy_id);
    }
    auto p = proxy.get();
    auto a = agent.get();
    CHECK(p.answer == "CLUSTERCONNECT-RENDEZVOUS/1 200 paired\r\n");
    REQUIRE(p.handshake);
    REQUIRE(a.handshake);
    CHECK(p.agent_fingerprint == agent_id.fingerprint());  // what the proxy pins
    CHECK(a.proxy_fingerprint == proxy_id.fingerprint());
    CHECK(p.greeting == "hello from the agent");
    CHECK(a.received.size() == data.size());
    CHECK(a.received == data);
  }
  CHECK(relay.port->counters().paired.load() == 2);
  REQUIRE(wait_until([&] { return relay.port->counters().splices_active.load() == 0; }));
  CHECK(relay.port->counters().bytes_proxy_to_agent.load() > 2 * data.size());
  CHECK(relay.port->counters().bytes_agent_to_proxy.load() > 0);
  CHECK(relay.port->counters().unpaired.load() == 0);
}

TEST_CASE("the port refuses legs it cannot pair, with a reason for a proxy", "[relay][rendezvous]") {
  Relay relay;
  const Identity agent_id("agent"), proxy_id("proxy");
  const auto unknown = tunnel::rendezvous::make_ticket();

  SECTION("a proxy with a ticket that was never issued") {
    Fd fd(relay.port->port());
    fd.send(tunnel::rendezvous::make_preamble(unknown));
    CHECK(fd.line() == "CLUSTERCONNECT-RENDEZVOUS/1 404 no rendezvous is pending under this ticket\r\n");
    CHECK(fd.closed_by_peer());
  }
  SECTION("a ticket is spent by its pairing") {
    const auto ticket = relay.ticket();
    auto proxy = proxy_leg(relay.port->port(), ticket, proxy_id, agent_id, "x");
    auto agent = agent_leg(relay.port->port(), tunnel::rendezvous::ticket_server_name(ticket, relay_host), agent_id, proxy_id);
    REQUIRE(proxy.get().handshake);
    REQUIRE(agent.get().handshake);
    Fd again(relay.port->port());
    again.send(tunnel::rendezvous::make_preamble(ticket));
    CHECK_THAT(again.line(), Catch::Contains(" 404 "));
  }
  SECTION("an agent whose ClientHello names an unknown ticket or another relay") {
    const auto ticket = relay.ticket();
    CHECK_FALSE(agent_leg(relay.port->port(), tunnel::rendezvous::ticket_server_name(unknown, relay_host), agent_id, proxy_id)
                    .get()
                    .handshake);
    CHECK_FALSE(agent_leg(relay.port->port(), tunnel::rendezvous::ticket_server_name(ticket, "other.test"), agent_id, proxy_id)
                    .get()
                    .handshake);
    CHECK_FALSE(agent_leg(relay.port->port(), relay_host, agent_id, proxy_id).get().handshake);
  }
  SECTION("bytes that are neither leg") {
    Fd fd(relay.port->port());
    fd.send("GET / HTTP/1.1\r\nHost: relay.test\r\n\r\n");
    CHECK(fd.closed_by_peer());
  }
  SECTION("a proxy that talks before the relay's answer") {
    const auto ticket = relay.ticket();
    Fd fd(relay.port->port());
    fd.send(tunnel::rendezvous::make_preamble(ticket) + "early");
    CHECK_THAT(fd.line(), Catch::Contains(" 400 bytes after the preamble"));
  }
  CHECK(wait_until([&] { return relay.port->counters().refused.load() >= 1; }));
  CHECK(relay.port->counters().paired.load() <= 1);
}

TEST_CASE("a proxy whose agent never comes gets 504 when the rendezvous expires", "[relay][rendezvous]") {
  RendezvousPortOptions o;
  o.book.ttl = 1s;
  Relay relay(o);
  Fd fd(relay.port->port());
  fd.send(tunnel::rendezvous::make_preamble(relay.ticket()));
  CHECK(fd.line() == "CLUSTERCONNECT-RENDEZVOUS/1 504 no agent answered within 1 s\r\n");
  CHECK(relay.port->counters().expired.load() == 1);
}

TEST_CASE("a leg that does not identify itself in time is closed, and unpaired legs are bounded", "[relay][rendezvous]") {
  RendezvousPortOptions o;
  o.identify_timeout = 200ms;
  o.max_unpaired = 1;
  Relay relay(o);
  Fd silent(relay.port->port());
  REQUIRE(wait_until([&] { return relay.port->counters().unpaired.load() == 1; }));
  Fd second(relay.port->port());  // over the limit: closed at once
  CHECK(second.closed_by_peer());
  CHECK(silent.closed_by_peer());  // after the identify timeout
  REQUIRE(wait_until([&] { return relay.port->counters().unpaired.load() == 0; }));
}

TEST_CASE("closing the port answers waiting proxies and ends splices", "[relay][rendezvous]") {
  Relay relay;
  const Identity agent_id("agent"), proxy_id("proxy");
  Fd waiting(relay.port->port());
  waiting.send(tunnel::rendezvous::make_preamble(relay.ticket()));
  REQUIRE(wait_until([&] { return relay.port->counters().unpaired.load() == 1; }));
  relay.port->close();
  CHECK(waiting.line() == "CLUSTERCONNECT-RENDEZVOUS/1 503 the relay is shutting down\r\n");
}
