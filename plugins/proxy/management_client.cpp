#include "management_client.hpp"

#include "clusterconnect/certificates.hpp"

#include <curl/curl.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

#include <nlohmann/json.hpp>

#include "clusterconnect/arm_audience.hpp"
#include "clusterconnect/ascii.hpp"
#include "clusterconnect/url.hpp"

namespace clusterconnect::proxy {
namespace {

constexpr std::size_t max_response_bytes = 4u << 20;

struct Response {
  long status = 0;
  std::string body;
  long retry_after = -1;
};

std::size_t on_body(char* data, std::size_t size, std::size_t n, void* user) {
  auto* r = static_cast<Response*>(user);
  if (r->body.size() + size * n > max_response_bytes) return 0;
  r->body.append(data, size * n);
  return size * n;
}

std::size_t on_header(char* data, std::size_t size, std::size_t n, void* user) {
  auto* r = static_cast<Response*>(user);
  std::string line(data, size * n);
  if (line.size() > 12 && strncasecmp(line.c_str(), "retry-after:", 12) == 0) {
    try {
      r->retry_after = std::stol(line.substr(12));
    } catch (...) {
    }
  }
  return size * n;
}

// Verified HTTPS only, bounded in time. The relay's CA from `ca_file`, else
// SSL_CERT_FILE / SSL_CERT_DIR as OpenSSL honours them (libcurl on its own
// reads only its built-in path).
void set_https_options(CURL* c, const std::string& ca_file, char* err) {
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
  if (!ca_file.empty()) {
    curl_easy_setopt(c, CURLOPT_CAINFO, ca_file.c_str());
  } else {
    if (const char* f = std::getenv("SSL_CERT_FILE"); f && *f) curl_easy_setopt(c, CURLOPT_CAINFO, f);
    if (const char* d = std::getenv("SSL_CERT_DIR"); d && *d) curl_easy_setopt(c, CURLOPT_CAPATH, d);
  }
}

// One request to the management endpoint: a POST of `body` when there is one,
// else a GET.
Result<Response> send_once(const std::string& url, const std::string* body, const std::string& token,
                           const std::string& ca_file) {
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) return fail("cannot initialise libcurl");
  Response r;
  curl_slist* headers = nullptr;
  if (body) headers = curl_slist_append(headers, "Content-Type: application/json");
  headers = curl_slist_append(headers, "Accept: application/json");
  std::string auth = "Authorization: Bearer " + token;
  headers = curl_slist_append(headers, auth.c_str());
  std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> header_guard(headers, curl_slist_free_all);
  char err[CURL_ERROR_SIZE] = {};
  CURL* c = curl.get();
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  if (body) {
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body->c_str());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(body->size()));
  }
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
  set_https_options(c, ca_file, err);
  CURLcode rc = curl_easy_perform(c);
  if (rc != CURLE_OK)
    return fail("cannot reach the management endpoint: " + std::string(err[0] ? err : curl_easy_strerror(rc)));
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  return r;
}

std::string arm_error(const Response& r) {
  try {
    auto j = nlohmann::json::parse(r.body);
    const auto& e = j.at("error");
    return e.value("code", std::string("Error")) + ": " + e.value("message", std::string());
  } catch (...) {
    return "HTTP " + std::to_string(r.status);
  }
}

}  // namespace

Result<ClusterCredential> list_cluster_user_credential(const ManagementClientOptions& o, const ClusterRef& cluster,
                                                       const std::string& access_token, bool token_mode) {
  auto endpoint = parse_url(o.endpoint);
  if (!endpoint) return fail("--endpoint: " + endpoint.error());
  if (endpoint->scheme != "https") return fail("--endpoint must be an https:// URL");
  std::string url = "https://" + endpoint->authority() + "/subscriptions/" + percent_encode(cluster.subscription) +
                    "/resourceGroups/" + percent_encode(cluster.resource_group) +
                    "/providers/Microsoft.Kubernetes/connectedClusters/" + percent_encode(cluster.name) +
                    "/listClusterUserCredential?api-version=" + o.api_version;
  std::string body = nlohmann::json{{"authenticationMethod", token_mode ? "Token" : "AAD"}, {"clientProxy", true}}.dump();

  Response r;
  for (int attempt = 0;; ++attempt) {
    auto sent = send_once(url, &body, access_token, o.ca_file);
    if (!sent) {
      if (attempt >= 3) return fail(sent.error());
      std::this_thread::sleep_for(std::chrono::milliseconds(250 << attempt));
      continue;
    }
    r = std::move(sent.value());
    bool retryable = r.status == 429 || r.status >= 500;
    if (!retryable || attempt >= 3) break;
    auto wait = r.retry_after >= 0 ? std::chrono::milliseconds(std::min(r.retry_after, 30L) * 1000)
                                   : std::chrono::milliseconds(250 << attempt);
    std::this_thread::sleep_for(wait);
  }
  if (r.status == 401) return fail("the management endpoint refused the sign-in (" + arm_error(r) + ")");
  if (r.status == 403)
    return fail("you have no role assignment that allows connecting to cluster " + cluster.name + " (" + arm_error(r) + ")");
  if (r.status == 404)
    return fail("cluster " + cluster.name + " was not found in resource group " + cluster.resource_group + " (" + arm_error(r) + ")");
  if (r.status != 200) return fail("listClusterUserCredential failed: " + arm_error(r));
  try {
    auto j = nlohmann::json::parse(r.body);
    const auto& hc = j.at("hybridConnectionConfig");
    ClusterCredential c;
    c.relay = hc.at("relay").get<std::string>();
    c.hybrid_connection = hc.at("hybridConnectionName").get<std::string>();
    c.token = hc.at("token").get<std::string>();
    c.expires_on = std::chrono::system_clock::time_point(std::chrono::seconds(hc.at("expirationTime").get<std::int64_t>()));
    if (hc.contains("agentKeyPins")) {
      for (const auto& pin : hc.at("agentKeyPins")) {
        if (!pin.is_string() || !tls::is_public_key_pin(pin.get<std::string>()))
          return fail("listClusterUserCredential returned an agent key pin that is not 64 hex digits");
        c.agent_key_pins.push_back(pin.get<std::string>());
      }
    }
    if (c.relay.empty() || c.hybrid_connection.empty() || c.token.empty())
      return fail("listClusterUserCredential returned an incomplete hybridConnectionConfig");
    return c;
  } catch (const std::exception& e) {
    return fail(std::string("listClusterUserCredential returned an unexpected body: ") + e.what());
  }
}

Result<ClusterRef> parse_cluster_id(const std::string& id) {
  std::vector<std::string> seg;
  std::size_t start = 0;
  while (start <= id.size() && seg.size() < 16) {
    auto end = id.find('/', start);
    if (end == std::string::npos) end = id.size();
    seg.push_back(id.substr(start, end - start));
    start = end + 1;
  }
  auto is = [&](std::size_t i, std::string_view word) {
    return seg.size() > i && ascii_iequals(seg[i], word);
  };
  if (seg.size() != 9 || !seg[0].empty() || !is(1, "subscriptions") || !is(3, "resourcegroups") || !is(5, "providers") ||
      !is(6, "microsoft.kubernetes") || !is(7, "connectedclusters") || seg[2].empty() || seg[4].empty() || seg[8].empty())
    return fail("'" + id.substr(0, 200) + "' is not a connected cluster's resource ID");
  ClusterRef ref;
  if (!percent_decode(seg[2], ref.subscription) || !percent_decode(seg[4], ref.resource_group) ||
      !percent_decode(seg[8], ref.name))
    return fail("'" + id.substr(0, 200) + "' is not a connected cluster's resource ID");
  return ref;
}

Result<std::vector<ClusterRef>> list_connected_clusters(const ManagementClientOptions& o, const std::string& subscription,
                                                        const std::string& resource_group,
                                                        const std::string& access_token) {
  auto endpoint = parse_url(o.endpoint);
  if (!endpoint) return fail("--endpoint: " + endpoint.error());
  if (endpoint->scheme != "https") return fail("--endpoint must be an https:// URL");
  const std::string base = "https://" + endpoint->authority();
  std::string url = base + "/subscriptions/" + percent_encode(subscription) +
                    (resource_group.empty() ? "" : "/resourceGroups/" + percent_encode(resource_group)) +
                    "/providers/Microsoft.Kubernetes/connectedClusters?api-version=" + o.api_version;
  const std::string scope = resource_group.empty() ? "subscription " + subscription : "resource group " + resource_group;
  std::vector<ClusterRef> out;
  // Pages are bounded, and a nextLink is followed only on the same endpoint:
  // the bearer token goes nowhere else.
  constexpr int max_pages = 100;
  constexpr std::size_t max_clusters = 10000;
  for (int page = 0; !url.empty(); ++page) {
    if (page >= max_pages) return fail("the list of clusters in " + scope + " has more than 100 pages; name the clusters with -n");
    Response r;
    for (int attempt = 0;; ++attempt) {
      auto sent = send_once(url, nullptr, access_token, o.ca_file);
      if (!sent) {
        if (attempt >= 3) return fail(sent.error());
        std::this_thread::sleep_for(std::chrono::milliseconds(250 << attempt));
        continue;
      }
      r = std::move(sent.value());
      if (!(r.status == 429 || r.status >= 500) || attempt >= 3) break;
      auto wait = r.retry_after >= 0 ? std::chrono::milliseconds(std::min(r.retry_after, 30L) * 1000)
                                     : std::chrono::milliseconds(250 << attempt);
      std::this_thread::sleep_for(wait);
    }
    if (r.status == 401) return fail("the management endpoint refused the sign-in (" + arm_error(r) + ")");
    if (r.status == 404) return fail(scope + " was not found (" + arm_error(r) + ")");
    if (r.status != 200) return fail("listing the connected clusters of " + scope + " failed: " + arm_error(r));
    url.clear();
    try {
      auto j = nlohmann::json::parse(r.body);
      for (const auto& item : j.at("value")) {
        auto ref = parse_cluster_id(item.at("id").get<std::string>());
        if (!ref) return fail("the list of connected clusters holds " + ref.error());
        if (out.size() >= max_clusters) return fail("the list of clusters in " + scope + " is too long; name the clusters with -n");
        out.push_back(std::move(ref.value()));
      }
      if (auto next = j.find("nextLink"); next != j.end() && next->is_string() && !next->get<std::string>().empty()) {
        url = next->get<std::string>();
        if (url.rfind(base + "/", 0) != 0)
          return fail("the list of connected clusters continues on another host (" + url.substr(0, 200) +
                      "); refusing to send the token there");
      }
    } catch (const std::exception& e) {
      return fail("the list of connected clusters of " + scope + " has an unexpected body: " + e.what());
    }
  }
  return out;
}

Result<std::string> discover_management_audience(const ManagementClientOptions& o) {
  auto endpoint = parse_url(o.endpoint);
  if (!endpoint) return fail("--endpoint: " + endpoint.error());
  if (endpoint->scheme != "https") return fail("--endpoint must be an https:// URL");
  const std::string url = "https://" + endpoint->authority() + "/metadata/endpoints?api-version=2022-09-01";
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) return fail("cannot initialise libcurl");
  Response r;
  char err[CURL_ERROR_SIZE] = {};
  CURL* c = curl.get();
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
  set_https_options(c, o.ca_file, err);
  if (CURLcode rc = curl_easy_perform(c); rc != CURLE_OK)
    return fail("cannot reach the management endpoint: " + std::string(err[0] ? err : curl_easy_strerror(rc)));
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  if (r.status != 200)
    return fail("the management endpoint does not publish its audience (/metadata/endpoints: " + arm_error(r) +
                "); pass --management-resource");
  std::string audience;
  try {
    const auto document = nlohmann::json::parse(r.body);
    const auto& audiences = document.at("authentication").at("audiences");
    if (audiences.is_array() && !audiences.empty()) audience = audiences.at(0).get<std::string>();
  } catch (const std::exception&) {
  }
  if (audience.empty())
    return fail("the management endpoint's /metadata/endpoints names no audience; pass --management-resource");
  if (is_arm_audience(audience))
    return fail("the management endpoint asks for an Azure Resource Manager token (" + audience +
                "), which would be good for all your subscriptions; refusing. Its operator must register an application "
                "for the relay");
  return audience;
}

}  // namespace clusterconnect::proxy
