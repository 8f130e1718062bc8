#pragma once
// Both legs of a rendezvous, as the proxy and the agent run them, with
// OpenSSL on blocking sockets: the agent's leg is a TLS client whose server
// name carries the ticket, the proxy's leg sends its preamble, reads the
// relay's answer and runs the TLS server. Both ask for the other's
// certificate; the tests compare fingerprints, as the proxy pins the agent's.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <future>
#include <memory>
#include <string>

#include <catch2/catch.hpp>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "clusterconnect/certificates.hpp"
#include "rendezvous/preamble.hpp"

namespace clusterconnect::test {

// A blocking loopback TCP connection.
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
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
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
inline Ctx context(const SSL_METHOD* method, const Identity& me) {
  Ctx ctx(SSL_CTX_new(method), SSL_CTX_free);
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  SSL_CTX_use_certificate(ctx.get(), me.cert.get());
  SSL_CTX_use_PrivateKey(ctx.get(), me.key.get());
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, [](int, X509_STORE_CTX*) { return 1; });
  return ctx;
}

inline std::string peer_fingerprint(SSL* ssl, const Identity& any) {
  X509* peer = SSL_get1_peer_certificate(ssl);
  if (!peer) return {};
  auto fp = any.fingerprint(peer);
  X509_free(peer);
  return fp;
}

inline std::string read_all(SSL* ssl) {
  std::string out;
  char buf[16384];
  for (;;) {
    const int n = SSL_read(ssl, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

inline void write_all(SSL* ssl, const std::string& s) {
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
inline std::future<AgentResult> agent_leg(unsigned short port, std::string server_name, const Identity& me, const Identity& any) {
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
inline std::future<ProxyResult> proxy_leg(unsigned short port, std::string ticket, const Identity& me, const Identity& any,
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

inline std::string payload(std::size_t n) {
  std::string s(n, '\0');
  std::uint64_t x = 88172645463325252ull;
  for (auto& c : s) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    c = static_cast<char>(x);
  }
  return s;
}

}  // namespace clusterconnect::test
