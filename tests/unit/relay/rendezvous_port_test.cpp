// The rendezvous port with real legs: an agent that runs an OpenSSL TLS
// client with its ticket in SNI, a proxy that sends its preamble, reads the
// relay's answer and runs the TLS server, mutual TLS end to end through the
// port's splice. And what the port refuses.

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <future>
#include <thread>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "clusterconnect/certificates.hpp"
#include "rendezvous/client_hello.hpp"
#include "rendezvous/preamble.hpp"
#include "rendezvous_port.hpp"
#include "spdlog/sinks/null_sink.h"

namespace asio = boost::asio;
using namespace clusterconnect;
using namespace clusterconnect::relay;
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
    auto t = port->open(cluster, why);
    REQUIRE(!t.empty());
    return t;
  }
};

struct Fd {
  int fd = -1;
  explicit Fd(unsigned short port) {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  }
  ~Fd() { ::close(fd); }
  void send(const std::string& s) const { REQUIRE(::send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size())); }
  // One line, CRLF included; empty at end of stream.
  std::string line() const {
    std::string out;
    char c;
    while (::recv(fd, &c, 1, 0) == 1) {
      out.push_back(c);
      if (c == '\n') break;
    }
    return out;
  }
  // True when the relay closed the connection (after any bytes it sent).
  bool closed_by_peer() const {
    char buf[256];
    for (;;) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) return true;
    }
  }
};

struct Identity {
  tls::PemPair pem;
  std::unique_ptr<X509, decltype(&X509_free)> cert{nullptr, X509_free};
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key{nullptr, EVP_PKEY_free};
  explicit Identity(const std::string& name) {
    auto p = tls::create_ca(name, 1);
    REQUIRE(p);
    pem = p.value();
    BIO* b = BIO_new_mem_buf(pem.cert.data(), static_cast<int>(pem.cert.size()));
    cert.reset(PEM_read_bio_X509(b, nullptr, nullptr, nullptr));
    BIO_free(b);
    b = BIO_new_mem_buf(pem.key.data(), static_cast<int>(pem.key.size()));
    key.reset(PEM_read_bio_PrivateKey(b, nullptr, nullptr, nullptr));
    BIO_free(b);
    REQUIRE(cert);
    REQUIRE(key);
  }
  std::string fingerprint(X509* x = nullptr) const {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    X509_digest(x ? x : cert.get(), EVP_sha256(), md, &n);
    return std::string(reinterpret_cast<char*>(md), n);
  }
};

using Ssl = std::unique_ptr<SSL, decltype(&SSL_free)>;
using Ctx = std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)>;

// Both TLS ends ask for the other's certificate and accept any: the test
// compares fingerprints itself, as the proxy pins the agent's key.
Ctx context(const SSL_METHOD* method, const Identity& me) {
  Ctx ctx(SSL_CTX_new(method), SSL_CTX_free);
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  SSL_CTX_use_certificate(ctx.get(), me.cert.get());
  SSL_CTX_use_PrivateKey(ctx.get(), me.key.get());
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, [](int, X509_STORE_CTX*) { return 1; });
  return ctx;
}

std::string peer_fingerprint(SSL* ssl, const Identity& any) {
  X509* peer = SSL_get1_peer_certificate(ssl);
  if (!peer) return {};
  auto fp = any.fingerprint(peer);
  X509_free(peer);
  return fp;
}

std::string read_all(SSL* ssl) {
  std::string out;
  char buf[16384];
  for (;;) {
    const int n = SSL_read(ssl, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

void write_all(SSL* ssl, const std::string& s) {
  std::size_t at = 0;
  while (at < s.size()) {
    const int n = SSL_write(ssl, s.data() + at, static_cast<int>(std::min<std::size_t>(s.size() - at, 16384)));
    REQUIRE(n > 0);
    at += static_cast<std::size_t>(n);
  }
}

struct AgentResult {
  bool handshake = false;
  std::string proxy_fingerprint;
  std::string received;
};

// The agent's leg: TLS client with the ticket in SNI; sends a greeting, reads
// what the proxy sends until it closes.
std::future<AgentResult> agent_leg(unsigned short port, std::string server_name, const Identity& me, const Identity& any) {
  return std::async(std::launch::async, [port, server_name, &me, &any] {
    AgentResult r;
    Fd fd(port);
    auto ctx = context(TLS_client_method(), me);
    Ssl ssl(SSL_new(ctx.get()), SSL_free);
    SSL_set_fd(ssl.get(), fd.fd);
    SSL_set_tlsext_host_name(ssl.get(), server_name.c_str());
    if (SSL_connect(ssl.get()) != 1) return r;
    r.handshake = true;
    r.proxy_fingerprint = peer_fingerprint(ssl.get(), any);
    write_all(ssl.get(), "hello from the agent");
    r.received = read_all(ssl.get());
    SSL_shutdown(ssl.get());
    return r;
  });
}

struct ProxyResult {
  std::string answer;
  bool handshake = false;
  std::string agent_fingerprint;
  std::string greeting;
};

// The proxy's leg: preamble, the relay's answer, then the TLS server end.
std::future<ProxyResult> proxy_leg(unsigned short port, std::string ticket, const Identity& me, const Identity& any,
                                   std::string payload) {
  return std::async(std::launch::async, [port, ticket, &me, &any, payload] {
    ProxyResult r;
    Fd fd(port);
    fd.send(tunnel::rendezvous::make_preamble(ticket));
    r.answer = fd.line();
    if (r.answer.find(" 200 ") == std::string::npos) return r;
    auto ctx = context(TLS_server_method(), me);
    Ssl ssl(SSL_new(ctx.get()), SSL_free);
    SSL_set_fd(ssl.get(), fd.fd);
    if (SSL_accept(ssl.get()) != 1) return r;
    r.handshake = true;
    r.agent_fingerprint = peer_fingerprint(ssl.get(), any);
    char buf[64];
    const int n = SSL_read(ssl.get(), buf, 20);
    if (n > 0) r.greeting.assign(buf, static_cast<std::size_t>(n));
    write_all(ssl.get(), payload);
    SSL_shutdown(ssl.get());
    return r;
  });
}

std::string payload(std::size_t n) {
  std::string s(n, '\0');
  std::uint64_t x = 88172645463325252ull;
  for (auto& c : s) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    c = static_cast<char>(x);
  }
  return s;
}

}  // namespace

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
