#include "https_request.hpp"

#include <cstdlib>
#include <memory>

#include <curl/curl.h>

namespace clusterconnect::onboarding {
namespace {

constexpr std::size_t max_response = 4 * 1024 * 1024;

size_t collect(char* data, size_t size, size_t n, void* out) {
  auto* body = static_cast<std::string*>(out);
  if (body->size() + size * n > max_response) return 0;
  body->append(data, size * n);
  return size * n;
}

}  // namespace

Result<HttpsResponse> https_request(const HttpsRequest& q) {
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> c(curl_easy_init(), &curl_easy_cleanup);
  if (!c) return fail("cannot start an HTTP client");
  char err[CURL_ERROR_SIZE] = {0};
  HttpsResponse r;
  curl_easy_setopt(c.get(), CURLOPT_URL, q.url.c_str());
  curl_easy_setopt(c.get(), CURLOPT_ERRORBUFFER, err);
  curl_easy_setopt(c.get(), CURLOPT_CONNECTTIMEOUT, 10L);
  curl_easy_setopt(c.get(), CURLOPT_TIMEOUT, 30L);
  curl_easy_setopt(c.get(), CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c.get(), CURLOPT_PROTOCOLS_STR, "https");
  curl_easy_setopt(c.get(), CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(c.get(), CURLOPT_SSL_VERIFYHOST, 2L);
  curl_blob ca{const_cast<char*>(q.ca_pem.data()), q.ca_pem.size(), CURL_BLOB_NOCOPY};
  if (!q.ca_pem.empty()) {
    curl_easy_setopt(c.get(), CURLOPT_CAINFO_BLOB, &ca);
  } else if (!q.ca_file.empty()) {
    curl_easy_setopt(c.get(), CURLOPT_CAINFO, q.ca_file.c_str());
  } else if (const char* f = std::getenv("SSL_CERT_FILE"); f && *f) {
    // As OpenSSL honours it (libcurl on its own does not).
    curl_easy_setopt(c.get(), CURLOPT_CAINFO, f);
  }
  curl_blob cert{const_cast<char*>(q.client_cert_pem.data()), q.client_cert_pem.size(), CURL_BLOB_NOCOPY};
  curl_blob key{const_cast<char*>(q.client_key_pem.data()), q.client_key_pem.size(), CURL_BLOB_NOCOPY};
  if (!q.client_cert_pem.empty()) {
    curl_easy_setopt(c.get(), CURLOPT_SSLCERT_BLOB, &cert);
    curl_easy_setopt(c.get(), CURLOPT_SSLKEY_BLOB, &key);
  }
  curl_slist* headers = nullptr;
  const std::string auth = "Authorization: Bearer " + q.bearer_token;
  if (!q.bearer_token.empty()) headers = curl_slist_append(headers, auth.c_str());
  headers = curl_slist_append(headers, "Accept: application/json");
  const std::string ct = "Content-Type: " + q.content_type;
  if (!q.content_type.empty()) headers = curl_slist_append(headers, ct.c_str());
  std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> owned(headers, &curl_slist_free_all);
  curl_easy_setopt(c.get(), CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(c.get(), CURLOPT_CUSTOMREQUEST, q.method.c_str());
  if (q.method != "GET" && q.method != "DELETE") {
    curl_easy_setopt(c.get(), CURLOPT_POSTFIELDS, q.body.data());
    curl_easy_setopt(c.get(), CURLOPT_POSTFIELDSIZE, static_cast<long>(q.body.size()));
  }
  curl_easy_setopt(c.get(), CURLOPT_WRITEFUNCTION, &collect);
  curl_easy_setopt(c.get(), CURLOPT_WRITEDATA, &r.body);
  if (CURLcode rc = curl_easy_perform(c.get()); rc != CURLE_OK)
    return fail(err[0] ? std::string(err) : curl_easy_strerror(rc));
  curl_easy_getinfo(c.get(), CURLINFO_RESPONSE_CODE, &r.status);
  return r;
}

}  // namespace clusterconnect::onboarding
