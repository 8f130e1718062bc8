#pragma once
// TLS contexts for every TLS endpoint of the system (kubectl -> local proxy,
// proxy/agent -> relay, agent -> API server). Free of Beast so the tunnel's
// WebSocket code can use it with its own stream types.

#include <memory>
#include <string>

#include "clusterconnect/asio_fwd.hpp"
#include "clusterconnect/result.hpp"

#include <boost/asio/ssl/context.hpp>

namespace clusterconnect::tls {

struct ClientOptions {
  std::string ca_file;                // PEM bundle; empty = the system's default paths
  bool insecure_skip_verify = false;  // dev only; the caller logs the warning
  std::string client_cert_file;       // optional client certificate (PEM chain) ...
  std::string client_key_file;        // ... and its key
};

// TLS 1.2 or newer; verify_peer unless insecure_skip_verify. Host-name
// verification is per connection: see set_client_host.
Result<std::shared_ptr<asio::ssl::context>> make_client_context(const ClientOptions& options);

// TLS 1.2 or newer server contexts from a PEM chain and key, as files or in memory.
Result<std::shared_ptr<asio::ssl::context>> make_server_context_files(const std::string& cert_file,
                                                                     const std::string& key_file);
Result<std::shared_ptr<asio::ssl::context>> make_server_context_pem(const std::string& cert_pem,
                                                                   const std::string& key_pem);

// A server whose clients never resume sessions (kubectl, client-go and curl
// processes start afresh): no TLS 1.3 session tickets, so a handshake neither
// computes nor sends them and a connection keeps no resumable session.
void disable_session_tickets(asio::ssl::context& ctx);

// Prepares a client connection to `host` before its handshake: SNI (DNS names
// only) and verification of the certificate's DNS or IP subjectAltName.
// `host` may be an IPv6 literal with or without brackets. Returns false if
// OpenSSL refused the name (the handshake must not proceed then).
bool set_client_host(SSL* ssl, const std::string& host);

}  // namespace clusterconnect::tls
