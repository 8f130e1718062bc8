#pragma once
// Blocking HTTPS for identity providers (discovery, keys, token
// endpoint), on libcurl. Control plane only: callers run it on their own
// thread, never on an io thread.

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "clusterconnect/result.hpp"

namespace clusterconnect::auth {

struct HttpPolicy {
  std::string ca_file;               // CA bundle; when empty SSL_CERT_FILE / SSL_CERT_DIR, else the system store
  bool allow_http_loopback = false;  // plain http:// only to 127.0.0.0/8, ::1, localhost
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds total_timeout{15000};
  int max_attempts = 3;  // retries on 429, 5xx and transport errors
  std::chrono::milliseconds first_backoff{500};
  std::chrono::seconds max_retry_after{30};
};

struct HttpResponse {
  long status = 0;
  std::string body;
  std::string content_type;
};

// Refuses anything but https://, or http:// to a loopback host when the
// policy allows it. The message says what to change.
Result<void> check_url_allowed(const std::string& url, const HttpPolicy& policy);

class HttpClient {
 public:
  explicit HttpClient(HttpPolicy policy);

  Result<HttpResponse> get(const std::string& url) const;
  // GET with extra request headers ("Name: value"), e.g. an Authorization
  // header; they are sent only to `url` (redirects are never followed).
  Result<HttpResponse> get(const std::string& url, const std::vector<std::string>& headers) const;
  // application/x-www-form-urlencoded POST.
  Result<HttpResponse> post_form(const std::string& url, const std::string& body) const;
  Result<HttpResponse> post_json(const std::string& url, const std::string& body) const;

  const HttpPolicy& policy() const noexcept { return policy_; }

 private:
  Result<HttpResponse> perform(const std::string& url, const std::string* body, const char* content_type,
                               const std::vector<std::string>& headers = {}) const;

  HttpPolicy policy_;
};

// A blocking GET that answers the body of a 200 response, else the reason:
// what the key cache (JwksCache::Fetch) uses by default.
std::function<Result<std::string>(const std::string& url)> http_fetcher(HttpPolicy policy);

// Responses larger than this are cut off and fail: discovery documents and
// key sets are a few KiB.
constexpr std::size_t max_response_size = 1024 * 1024;

}  // namespace clusterconnect::auth
