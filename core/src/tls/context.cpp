#include "clusterconnect/tls_context.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/ip/address.hpp>

namespace clusterconnect::tls {
namespace {

std::string openssl_reason(const error_code& ec) {
  std::string msg = ec.message();
  // Asio's ssl category message already carries the OpenSSL reason string;
  // add the queued detail if any (e.g. the file that did not parse).
  if (unsigned long e = ERR_get_error(); e != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    msg += std::string(" (") + buf + ")";
  }
  ERR_clear_error();
  return msg;
}

std::shared_ptr<asio::ssl::context> base_context(asio::ssl::context::method method) {
  auto ctx = std::make_shared<asio::ssl::context>(method);
  SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION);
  ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_compression |
                   asio::ssl::context::single_dh_use);
  // A retried write may come from a different buffer address (the stream's
  // gather buffer is reused), which OpenSSL otherwise rejects.
  SSL_CTX_set_mode(ctx->native_handle(), SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  return ctx;
}

// OpenSSL fills a certificate's extension cache (key identifiers, flags) on
// first use. Two handshakes verifying against the same trusted certificate at
// once may both fill it: one writes the cache while the other compares key
// identifiers from it (a data race inside libcrypto that ThreadSanitizer
// reports in ASN1_STRING_cmp; openssl/openssl#32609). Fill it now, while the
// context is not yet shared.
void fill_extension_caches(SSL_CTX* ctx) {
  STACK_OF(X509)* certs = X509_STORE_get1_all_certs(SSL_CTX_get_cert_store(ctx));
  for (int i = 0; i < sk_X509_num(certs); ++i) (void)X509_get_extension_flags(sk_X509_value(certs, i));
  sk_X509_pop_free(certs, X509_free);
}

}  // namespace

Result<std::shared_ptr<asio::ssl::context>> make_client_context(const ClientOptions& options) {
  auto ctx = base_context(asio::ssl::context::tls_client);
  error_code ec;
  if (options.insecure_skip_verify) {
    ctx->set_verify_mode(asio::ssl::verify_none, ec);
  } else {
    ctx->set_verify_mode(asio::ssl::verify_peer, ec);
    if (!options.ca_file.empty()) {
      ctx->load_verify_file(options.ca_file, ec);
      if (ec) return fail("cannot load CA file " + options.ca_file + ": " + openssl_reason(ec));
      fill_extension_caches(ctx->native_handle());
    } else {
      ctx->set_default_verify_paths(ec);
      if (ec) return fail("cannot load the system CA certificates: " + openssl_reason(ec));
    }
  }
  if (options.client_cert_file.empty() != options.client_key_file.empty())
    return fail("a client certificate needs both a certificate file and a key file");
  if (!options.client_cert_file.empty()) {
    ctx->use_certificate_chain_file(options.client_cert_file, ec);
    if (ec) return fail("cannot load client certificate " + options.client_cert_file + ": " + openssl_reason(ec));
    ctx->use_private_key_file(options.client_key_file, asio::ssl::context::pem, ec);
    if (ec) return fail("cannot load client key " + options.client_key_file + ": " + openssl_reason(ec));
    if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
      ERR_clear_error();
      return fail("client key " + options.client_key_file + " does not match certificate " + options.client_cert_file);
    }
  }
  return ctx;
}

Result<std::shared_ptr<asio::ssl::context>> make_server_context_files(const std::string& cert_file,
                                                                     const std::string& key_file) {
  auto ctx = base_context(asio::ssl::context::tls_server);
  error_code ec;
  ctx->use_certificate_chain_file(cert_file, ec);
  if (ec) return fail("cannot load server certificate " + cert_file + ": " + openssl_reason(ec));
  ctx->use_private_key_file(key_file, asio::ssl::context::pem, ec);
  if (ec) return fail("cannot load server key " + key_file + ": " + openssl_reason(ec));
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
    ERR_clear_error();
    return fail("server key " + key_file + " does not match certificate " + cert_file);
  }
  return ctx;
}

Result<std::shared_ptr<asio::ssl::context>> make_server_context_pem(const std::string& cert_pem,
                                                                   const std::string& key_pem) {
  auto ctx = base_context(asio::ssl::context::tls_server);
  error_code ec;
  ctx->use_certificate_chain(asio::buffer(cert_pem), ec);
  if (ec) return fail("cannot load server certificate: " + openssl_reason(ec));
  ctx->use_private_key(asio::buffer(key_pem), asio::ssl::context::pem, ec);
  if (ec) return fail("cannot load server key: " + openssl_reason(ec));
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
    ERR_clear_error();
    return fail("server key does not match its certificate");
  }
  return ctx;
}

void disable_session_tickets(asio::ssl::context& ctx) {
  SSL_CTX_set_num_tickets(ctx.native_handle(), 0);
  SSL_CTX_set_options(ctx.native_handle(), SSL_OP_NO_TICKET);
  SSL_CTX_set_session_cache_mode(ctx.native_handle(), SSL_SESS_CACHE_OFF);
}

bool set_client_host(SSL* ssl, const std::string& host) {
  std::string name = host;
  if (name.size() >= 2 && name.front() == '[' && name.back() == ']') name = name.substr(1, name.size() - 2);
  if (name.empty()) return false;
  error_code ec;
  asio::ip::make_address(name, ec);
  if (!ec) {
    // IP literal: no SNI (RFC 6066 forbids it), verify the IP subjectAltName.
    return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str()) == 1;
  }
  if (SSL_set_tlsext_host_name(ssl, name.c_str()) != 1) return false;
  SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  return SSL_set1_host(ssl, name.c_str()) == 1;
}

}  // namespace clusterconnect::tls
