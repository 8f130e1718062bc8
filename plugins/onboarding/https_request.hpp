#pragma once
// One HTTPS request, blocking (control plane): peer and host name verified,
// a CA given inline or as a file (else $SSL_CERT_FILE / the system store),
// an optional client certificate or bearer token, bounded time and size.

#include <string>

#include "clusterconnect/result.hpp"

namespace clusterconnect::onboarding {

struct HttpsRequest {
  std::string method;
  std::string url;
  std::string body;
  std::string content_type;  // empty: none
  std::string bearer_token;  // empty: none
  std::string ca_pem;        // inline CA bundle, or
  std::string ca_file;       // a CA bundle file
  std::string client_cert_pem, client_key_pem;
};

struct HttpsResponse {
  long status = 0;
  std::string body;
};

// Fails only when no answer came (connection, TLS, timeout, a body over 4 MiB).
Result<HttpsResponse> https_request(const HttpsRequest& request);

}  // namespace clusterconnect::onboarding
