#include "http_client.hpp"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>

#include "clusterconnect/url.hpp"

namespace clusterconnect::auth {
namespace {

void global_init_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct Transfer {
  std::string body;
  std::optional<long> retry_after_s;
  bool too_large = false;
};

size_t on_body(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t len = size * n;
  if (t->body.size() + len > max_response_size) {
    t->too_large = true;
    return 0;  // aborts the transfer
  }
  t->body.append(data, len);
  return len;
}

size_t on_header(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t len = size * n;
  std::string line(data, len);
  auto colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    if (name == "retry-after") {
      std::string value = line.substr(colon + 1);
      value.erase(0, value.find_first_not_of(" \t"));
      // Only the delta-seconds form; an HTTP-date falls back to our backoff.
      if (!value.empty() && std::isdigit(static_cast<unsigned char>(value[0]))) {
        try {
          t->retry_after_s = std::stol(value);
        } catch (...) {
        }
      }
    }
  }
  return len;
}

// The CA bundle: the policy's file, else SSL_CERT_FILE / SSL_CERT_DIR as
// OpenSSL itself honours them (libcurl only reads its built-in path), else
// the system store.
void set_trust_anchors(CURL* c, const std::string& ca_file) {
  if (!ca_file.empty()) {
    curl_easy_setopt(c, CURLOPT_CAINFO, ca_file.c_str());
    return;
  }
  if (const char* f = std::getenv("SSL_CERT_FILE"); f && *f) curl_easy_setopt(c, CURLOPT_CAINFO, f);
  if (const char* d = std::getenv("SSL_CERT_DIR"); d && *d) curl_easy_setopt(c, CURLOPT_CAPATH, d);
}

bool retryable_status(long status) { return status == 429 || (status >= 500 && status <= 599); }

}  // namespace

Result<void> check_url_allowed(const std::string& url, const HttpPolicy& policy) {
  auto u = parse_url(url);
  if (!u) return fail("identity provider URL '" + url + "' is not valid: " + u.error());
  if (u->scheme == "https") return {};
  if (u->scheme == "http") {
    if (!u->is_loopback_host()) return fail("identity provider URL '" + url + "' must use https (plain http is only allowed to a loopback host)");
    if (!policy.allow_http_loopback) {
      return fail("identity provider URL '" + url + "' uses plain http; set allow_http_loopback to true to allow it for a local test provider");
    }
    return {};
  }
  return fail("identity provider URL '" + url + "' must use https");
}

HttpClient::HttpClient(HttpPolicy policy) : policy_(std::move(policy)) { global_init_once(); }

Result<HttpResponse> HttpClient::get(const std::string& url) const { return perform(url, nullptr, nullptr); }

Result<HttpResponse> HttpClient::get(const std::string& url, const std::vector<std::string>& headers) const {
  return perform(url, nullptr, nullptr, headers);
}

Result<HttpResponse> HttpClient::post_form(const std::string& url, const std::string& body) const {
  return perform(url, &body, "Content-Type: application/x-www-form-urlencoded");
}

Result<HttpResponse> HttpClient::post_json(const std::string& url, const std::string& body) const {
  return perform(url, &body, "Content-Type: application/json");
}

Result<HttpResponse> HttpClient::perform(const std::string& url, const std::string* form_body, const char* content_type,
                                         const std::vector<std::string>& extra_headers) const {
  if (auto ok = check_url_allowed(url, policy_); !ok) return fail(ok.error());
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl(curl_easy_init(), &curl_easy_cleanup);
  if (!curl) return fail("could not initialise libcurl");

  std::string last_error;
  auto backoff = policy_.first_backoff;
  const int attempts = std::max(1, policy_.max_attempts);
  for (int attempt = 1; attempt <= attempts; ++attempt) {
    Transfer t;
    char errbuf[CURL_ERROR_SIZE] = {0};
    CURL* c = curl.get();
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, policy_.allow_http_loopback ? "http,https" : "https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    set_trust_anchors(c, policy_.ca_file);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(policy_.connect_timeout.count()));
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(policy_.total_timeout.count()));
    curl_easy_setopt(c, CURLOPT_USERAGENT, "clusterconnect/0.1");
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, &on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
    struct curl_slist* headers = curl_slist_append(nullptr, "Accept: application/json");
    if (content_type) headers = curl_slist_append(headers, content_type);
    for (const auto& h : extra_headers) headers = curl_slist_append(headers, h.c_str());
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    if (form_body) {
      curl_easy_setopt(c, CURLOPT_POST, 1L);
      curl_easy_setopt(c, CURLOPT_POSTFIELDS, form_body->c_str());
      curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(form_body->size()));
    }
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(headers);

    std::chrono::milliseconds wait = backoff;
    if (rc == CURLE_OK) {
      HttpResponse r;
      curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
      char* ct = nullptr;
      if (curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct) r.content_type = ct;
      r.body = std::move(t.body);
      if (!retryable_status(r.status) || attempt == attempts) return r;
      last_error = "HTTP " + std::to_string(r.status);
      if (t.retry_after_s) {
        auto ra = std::chrono::seconds(std::clamp<long>(*t.retry_after_s, 0, static_cast<long>(policy_.max_retry_after.count())));
        wait = std::chrono::duration_cast<std::chrono::milliseconds>(ra);
      }
    } else {
      if (t.too_large) return fail("response from " + url + " is larger than " + std::to_string(max_response_size) + " bytes");
      last_error = errbuf[0] ? errbuf : curl_easy_strerror(rc);
      // Certificate and URL problems will not heal by retrying.
      if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE || rc == CURLE_UNSUPPORTED_PROTOCOL ||
          rc == CURLE_URL_MALFORMAT || rc == CURLE_SSL_CERTPROBLEM)
        break;
    }
    if (attempt < attempts) {
      std::this_thread::sleep_for(wait);
      backoff *= 2;
    }
  }
  return fail("request to " + url + " failed: " + last_error);
}

std::function<Result<std::string>(const std::string& url)> http_fetcher(HttpPolicy policy) {
  auto client = std::make_shared<HttpClient>(std::move(policy));
  return [client](const std::string& url) -> Result<std::string> {
    auto r = client->get(url);
    if (!r) return fail(r.error());
    if (r->status != 200) return fail("GET " + url + " answered HTTP " + std::to_string(r->status));
    return std::move(r->body);
  };
}

}  // namespace clusterconnect::auth
