#include "legs.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/write.hpp>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include "clusterconnect/certificates.hpp"
#include "clusterconnect/tls_context.hpp"
#include "clusterconnect/tls_socket.hpp"
#include "leg_base.hpp"
#include "protocol/stream_channel.hpp"
#include "rendezvous/client_hello.hpp"
#include "rendezvous/preamble.hpp"

namespace clusterconnect::tunnel::transport {

using tcp = asio::ip::tcp;
// OpenSSL straight on the socket: a message's records leave in one write.
using TlsSocket = tls::TlsSocket;
namespace rv = tunnel::rendezvous;

namespace {

// The peer must send a certificate; whether it is the right one is decided
// by its key's pin once the handshake is done, not by a CA.
void ask_for_peer_certificate(asio::ssl::context& ctx) {
  SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_3_VERSION);
  ctx.set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert);
  ctx.set_verify_callback([](bool, asio::ssl::verify_context&) { return true; });
}

std::string peer_pin(SSL* tls) {
  X509* peer = SSL_get1_peer_certificate(tls);
  if (!peer) return {};
  auto pin = tls::public_key_pin_of(peer);
  X509_free(peer);
  return pin;
}

// One attempt to build a tls-form leg: TCP to the rendezvous address, then
// what the side does on it (on_connected).
class TcpLeg : public LegBase {
 public:
  void run() {
    asio::dispatch(strand_, [self = self_as<TcpLeg>()] {
      self->arm_timer();
      self->resolver_.async_resolve(self->offer_.host, self->offer_.port,
                                    [self](error_code ec, tcp::resolver::results_type r) { self->on_resolve(ec, r); });
    });
  }

 protected:
  TcpLeg(asio::io_context& io, std::shared_ptr<asio::ssl::context> ctx, RendezvousOffer offer,
         std::shared_ptr<spdlog::logger> logger, LegHandler handler, std::chrono::milliseconds timeout)
      : LegBase(io, std::move(logger), std::move(handler), timeout),
        offer_(std::move(offer)),
        ctx_(std::move(ctx)),
        tls_(strand_, ctx_) {}

  // The TCP connection is up (TCP_NODELAY set).
  virtual void on_connected() = 0;

  std::string where() const { return offer_.host + ":" + offer_.port; }

  void close_socket() override {
    if (handed_over_) return;  // the session owns the connection now
    error_code ignored;
    tls_.lowest_layer().close(ignored);
  }

  void succeed(tunnel::SessionOptions options) {
    handed_over_ = true;
    LegBase::succeed(std::make_unique<tunnel::StreamChannel<TlsSocket>>(std::move(tls_)), std::move(options));
  }

  RendezvousOffer offer_;
  std::shared_ptr<asio::ssl::context> ctx_;
  TlsSocket tls_;
  bool handed_over_ = false;  // tls_ was moved into the session

 private:
  void on_resolve(error_code ec, const tcp::resolver::results_type& results) {
    if (ec) return fail(ec, "cannot resolve the rendezvous host " + offer_.host + ": " + describe(ec));
    asio::async_connect(tls_.lowest_layer(), results, [self = self_as<TcpLeg>()](error_code ec, const tcp::endpoint&) {
      if (ec) return self->fail(ec, "cannot connect to the rendezvous at " + self->where() + ": " + self->describe(ec));
      self->tls_.lowest_layer().set_option(tcp::no_delay(true), ec);
      // Unsent bytes stay in the session (where streams take turns) rather
      // than in the kernel's send queue, ahead of every other stream.
      const int lowat = 128 * 1024;
      ::setsockopt(self->tls_.lowest_layer().native_handle(), IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof lowat);
      self->on_connected();
    });
  }
};

class AgentDial final : public TcpLeg {
 public:
  AgentDial(asio::io_context& io, std::shared_ptr<asio::ssl::context> ctx, AgentLeg leg, std::shared_ptr<spdlog::logger> logger,
            LegHandler handler, std::chrono::milliseconds timeout)
      : TcpLeg(io, std::move(ctx), leg.offer, std::move(logger), std::move(handler), timeout), leg_(std::move(leg)) {}

 private:
  void on_connected() override {
    const auto name = rv::ticket_server_name(offer_.ticket, offer_.host);
    if (!SSL_set_tlsext_host_name(tls_.native_handle(), name.c_str()))
      return fail(asio::error::invalid_argument, "TLS refused the rendezvous server name");
    tls_.async_handshake(TlsSocket::handshake_type::client,
                         [self = self_as<AgentDial>()](error_code ec) { self->on_tls(ec); });
  }

  void on_tls(error_code ec) {
    if (ec) return fail(ec, "the TLS handshake with the proxy through " + where() + " failed: " + describe(ec));
    if (auto refused = check_proxy_key(tls_.native_handle(), leg_.proxy_pin); !refused.empty())
      return fail(asio::error::access_denied, refused);
    succeed(std::move(leg_.session));
  }

  AgentLeg leg_;
};

class ProxyDial final : public TcpLeg {
 public:
  ProxyDial(asio::io_context& io, std::shared_ptr<asio::ssl::context> ctx, ProxyLeg leg, std::shared_ptr<spdlog::logger> logger,
            LegHandler handler, std::chrono::milliseconds timeout)
      : TcpLeg(io, std::move(ctx), leg.offer, std::move(logger), std::move(handler), timeout), leg_(std::move(leg)) {}

 private:
  void on_connected() override {
    preamble_ = rv::make_preamble(offer_.ticket);
    asio::async_write(tls_.next_layer(), asio::buffer(preamble_), [self = self_as<ProxyDial>()](error_code ec, std::size_t) {
      if (ec) return self->fail(ec, "cannot send the rendezvous preamble to " + self->where() + ": " + self->describe(ec));
      self->read_reply();
    });
  }

  // The relay's answer, a byte at a time: what follows its line end is the
  // agent's ClientHello, which belongs to TLS.
  void read_reply() {
    asio::async_read(tls_.next_layer(), asio::buffer(&byte_, 1), [self = self_as<ProxyDial>()](error_code ec, std::size_t) {
      if (ec)
        return self->fail(ec, "the relay closed the rendezvous at " + self->where() + " without an answer: " + self->describe(ec));
      self->reply_.push_back(static_cast<std::uint8_t>(self->byte_));
      auto r = rv::parse_reply(self->reply_);
      if (r.state == rv::LinePeek::State::need_more) return self->read_reply();
      if (r.state == rv::LinePeek::State::invalid)
        return self->fail(asio::error::invalid_argument, "the relay's rendezvous answer is malformed: " + r.error);
      if (r.status != 200)
        return self->fail(r.status == 504 ? asio::error::timed_out : asio::error::connection_refused,
                          "the relay refused the rendezvous: " + std::to_string(r.status) + " " + r.reason);
      self->tls_.async_handshake(TlsSocket::handshake_type::server, [self](error_code ec) { self->on_tls(ec); });
    });
  }

  void on_tls(error_code ec) {
    if (ec) return fail(ec, "the TLS handshake with the agent of " + leg_.cluster + " failed: " + describe(ec));
    if (auto refused = check_agent_key(tls_.native_handle(), leg_.agent_pins, leg_.cluster); !refused.empty())
      return fail(asio::error::access_denied, refused);
    succeed(std::move(leg_.session));
  }

  ProxyLeg leg_;
  std::string preamble_;
  char byte_ = 0;
  std::vector<std::uint8_t> reply_;
};

}  // namespace

std::string check_proxy_key(SSL* tls, const std::string& expected_pin) {
  const auto got = peer_pin(tls);
  if (got == expected_pin) return {};
  return "the rendezvous peer proved key sha256:" + got + ", not the proxy's sha256:" + expected_pin + " the relay announced";
}

std::string check_agent_key(SSL* tls, const std::vector<std::string>& pins, const std::string& cluster) {
  const auto got = peer_pin(tls);
  if (std::find(pins.begin(), pins.end(), got) != pins.end()) return {};
  std::string want;
  for (const auto& p : pins) want += (want.empty() ? "sha256:" : " or sha256:") + p;
  return "the agent that answered for cluster " + cluster + " proved key sha256:" + got + ", but the relay's registry pins " +
         want + " for it: refused, nothing was sent to it";
}

Result<std::shared_ptr<asio::ssl::context>> agent_context(const std::string& cert_file, const std::string& key_file) {
  if (cert_file.empty() || key_file.empty())
    return fail("the tls transport needs the agent's certificate and key (identity_cert_file, identity_key_file)");
  for (const auto& file : {cert_file, key_file})
    if (auto readable = tls::read_small_file(file); !readable) return fail(readable.error());
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  error_code ec;
  ctx->use_certificate_chain_file(cert_file, ec);
  if (ec) return fail("agent certificate " + cert_file + ": " + ec.message());
  ctx->use_private_key_file(key_file, asio::ssl::context::pem, ec);
  if (ec) return fail("agent key " + key_file + ": " + ec.message());
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1)
    return fail("agent key " + key_file + " does not match the certificate " + cert_file);
  ask_for_peer_certificate(*ctx);
  return ctx;
}

Result<ProxyIdentity> ephemeral_proxy_identity() {
  auto pem = tls::create_ca("clusterconnect proxy", 1);
  if (!pem) return fail("cannot make the proxy's TLS key: " + pem.error());
  auto ctx = tls::make_server_context_pem(pem->cert, pem->key);
  if (!ctx) return fail("cannot make the proxy's TLS context: " + ctx.error());
  auto pin = tls::public_key_pin(pem->cert);
  if (!pin) return fail(pin.error());
  ask_for_peer_certificate(*ctx.value());
  return ProxyIdentity{ctx.value(), pin.value()};
}

void async_agent_leg(asio::io_context& io, std::shared_ptr<asio::ssl::context> identity, AgentLeg leg,
                     std::shared_ptr<spdlog::logger> logger, LegHandler handler, std::chrono::milliseconds timeout) {
  std::make_shared<AgentDial>(io, std::move(identity), std::move(leg), std::move(logger), std::move(handler), timeout)->run();
}

void async_proxy_leg(asio::io_context& io, std::shared_ptr<asio::ssl::context> identity, ProxyLeg leg,
                     std::shared_ptr<spdlog::logger> logger, LegHandler handler, std::chrono::milliseconds timeout) {
  std::make_shared<ProxyDial>(io, std::move(identity), std::move(leg), std::move(logger), std::move(handler), timeout)->run();
}

}  // namespace clusterconnect::tunnel::transport
