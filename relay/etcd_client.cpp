#include "etcd_client.hpp"

#include <curl/curl.h>
#include <openssl/evp.h>

#include <algorithm>
#include <memory>
#include <mutex>

#include <spdlog/spdlog.h>

#include "registry_store.hpp"

namespace clusterconnect::relay {

namespace {

constexpr std::size_t max_reply = 64 * 1024 * 1024;  // a whole registry's range
constexpr std::size_t max_watch_line = 16 * 1024 * 1024;

struct CurlGlobal {
  CurlGlobal() { curl_global_init(CURL_GLOBAL_DEFAULT); }
};

void curl_init_once() { static CurlGlobal g; }

using CurlPtr = std::unique_ptr<CURL, decltype(&curl_easy_cleanup)>;
using HeaderList = std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)>;

std::int64_t as_int64(const nlohmann::json& j) {
  // The gateway spells 64-bit integers as strings.
  if (j.is_string()) {
    try {
      return std::stoll(j.get<std::string>());
    } catch (...) {
      return 0;
    }
  }
  if (j.is_number_integer()) return j.get<std::int64_t>();
  return 0;
}

std::string b64field(const nlohmann::json& j, const char* field) {
  std::string out;
  if (j.contains(field) && j[field].is_string()) base64_decode(j[field].get<std::string>(), out);
  return out;
}

EtcdKeyValue parse_kv(const nlohmann::json& kv) {
  EtcdKeyValue out;
  out.key = b64field(kv, "key");
  out.value = b64field(kv, "value");
  if (kv.contains("mod_revision")) out.mod_revision = as_int64(kv["mod_revision"]);
  return out;
}

std::int64_t header_revision(const nlohmann::json& reply) {
  if (reply.contains("header") && reply["header"].is_object() && reply["header"].contains("revision"))
    return as_int64(reply["header"]["revision"]);
  return 0;
}

}  // namespace

std::string base64_encode(const std::string& in) {
  std::string out(4 * ((in.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(in.data()),
                          static_cast<int>(in.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

bool base64_decode(const std::string& in, std::string& out) {
  if (in.size() % 4 != 0) return false;
  out.assign(3 * in.size() / 4, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(in.data()),
                          static_cast<int>(in.size()));
  if (n < 0) return false;
  std::size_t len = static_cast<std::size_t>(n);
  if (!in.empty() && in[in.size() - 1] == '=') --len;
  if (in.size() > 1 && in[in.size() - 2] == '=') --len;
  out.resize(len);
  return true;
}

std::string prefix_end(std::string prefix) {
  while (!prefix.empty()) {
    auto& last = prefix.back();
    if (static_cast<unsigned char>(last) < 0xff) {
      last = static_cast<char>(static_cast<unsigned char>(last) + 1);
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');  // every key
}

std::chrono::milliseconds EtcdOutage::failed(const std::string& why) {
  ++attempts_;
  if (!away_) {
    away_ = true;
    since_ = std::chrono::steady_clock::now();
    next_ = first_retry;
    logger_->warn("etcd is away for {} ({}); {}; retrying every {} ms at most", what_, why, consequence_,
                  max_retry.count());
  } else {
    logger_->debug("etcd still away for {} ({})", what_, why);
  }
  const auto wait = next_;
  next_ = std::min(next_ * 2, max_retry);
  return wait;
}

void EtcdOutage::recovered(const std::string& how) {
  if (!away_) return;
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - since_).count();
  logger_->info("etcd is back for {} after {} ms and {} attempts: {}", what_, ms, attempts_, how);
  away_ = false;
  attempts_ = 0;
  next_ = first_retry;
}

struct EtcdClient::Handles {
  static constexpr std::size_t max_idle = 4;  // calls at once: the store thread, the lease's and an admin command's
  std::mutex mu;
  std::vector<CurlPtr> idle;
  std::atomic<std::uint64_t> opened{0};

  CurlPtr take() {
    {
      std::lock_guard lock(mu);
      if (!idle.empty()) {
        CurlPtr h = std::move(idle.back());
        idle.pop_back();
        curl_easy_reset(h.get());  // options go; its connections stay
        return h;
      }
    }
    return CurlPtr(curl_easy_init(), curl_easy_cleanup);
  }
  void give(CurlPtr h) {
    std::lock_guard lock(mu);
    if (idle.size() < max_idle) idle.push_back(std::move(h));
  }
};

EtcdClient::EtcdClient(const EtcdOptions& options)
    : endpoints_(options.endpoints),
      ca_file_(options.ca_file),
      cert_file_(options.cert_file),
      key_file_(options.key_file),
      handles_(std::make_shared<Handles>()) {
  curl_init_once();
}

std::uint64_t EtcdClient::connections_opened() const { return handles_->opened.load(); }

std::string EtcdClient::endpoints_text() const {
  std::string out;
  for (const auto& e : endpoints_) out += (out.empty() ? "" : ", ") + e;
  return out;
}

namespace {

struct Transfer {
  std::string body;
  bool too_large = false;
  std::size_t limit = max_reply;
  // Streaming (watch): each complete line goes here; the transfer ends when it answers false.
  std::function<bool(const std::string&)> on_line;
  const std::atomic<bool>* stop = nullptr;
};

size_t on_write(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const std::size_t len = size * n;
  if (t->body.size() + len > t->limit) {
    t->too_large = true;
    return 0;
  }
  t->body.append(data, len);
  if (t->on_line) {
    std::size_t nl;
    while ((nl = t->body.find('\n')) != std::string::npos) {
      std::string line = t->body.substr(0, nl);
      t->body.erase(0, nl + 1);
      if (!line.empty() && !t->on_line(line)) return 0;
    }
    // The gateway ends each message with a newline, but a message may also
    // arrive whole without one: a complete JSON object is a message.
    if (!t->body.empty() && t->body.back() == '}' && nlohmann::json::accept(t->body)) {
      std::string line;
      line.swap(t->body);
      if (!t->on_line(line)) return 0;
    }
  }
  return len;
}

int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  return t->stop && t->stop->load() ? 1 : 0;
}

// A JSON POST to etcd's gateway: the body, the reply into `t`, TLS when the
// endpoint is https (with a client certificate when one is configured).
void post_json(CURL* curl, const std::string& url, curl_slist* headers, const std::string& payload, Transfer& t,
               char* errbuf, const std::string& ca_file, const std::string& cert_file, const std::string& key_file) {
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, payload.c_str());
  curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, static_cast<long>(payload.size()));
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 3000L);
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  if (!ca_file.empty()) curl_easy_setopt(curl, CURLOPT_CAINFO, ca_file.c_str());
  if (!cert_file.empty()) curl_easy_setopt(curl, CURLOPT_SSLCERT, cert_file.c_str());
  if (!key_file.empty()) curl_easy_setopt(curl, CURLOPT_SSLKEY, key_file.c_str());
}

}  // namespace

Result<nlohmann::json> EtcdClient::call(const std::string& path, const nlohmann::json& body) const {
  std::string errors;
  const std::string payload = body.dump();
  for (const auto& endpoint : endpoints_) {
    CurlPtr curl = handles_->take();
    if (!curl) return fail("etcd: cannot create an HTTP handle");
    Transfer t;
    HeaderList headers(curl_slist_append(nullptr, "Content-Type: application/json"), curl_slist_free_all);
    const std::string url = endpoint + path;
    char errbuf[CURL_ERROR_SIZE] = {};
    post_json(curl.get(), url, headers.get(), payload, t, errbuf, ca_file_, cert_file_, key_file_);
    curl_easy_setopt(curl.get(), CURLOPT_TIMEOUT_MS, 10000L);
    CURLcode rc = curl_easy_perform(curl.get());
    long connects = 0;
    curl_easy_getinfo(curl.get(), CURLINFO_NUM_CONNECTS, &connects);
    handles_->opened += static_cast<std::uint64_t>(std::max(0L, connects));
    if (rc != CURLE_OK) {
      errors += (errors.empty() ? "" : "; ") + endpoint + ": " + (errbuf[0] ? errbuf : curl_easy_strerror(rc));
      continue;
    }
    long status = 0;
    curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &status);
    // Its connection is kept for the next call (the handle's options are
    // reset then); a failed transfer's handle goes with its connection.
    handles_->give(std::move(curl));
    auto reply = nlohmann::json::parse(t.body, nullptr, false);
    if (status != 200) {
      std::string message = reply.is_object() && reply.contains("message") && reply["message"].is_string()
                                ? reply["message"].get<std::string>()
                                : "HTTP " + std::to_string(status);
      return fail("etcd " + endpoint + path + ": " + message);
    }
    if (!reply.is_object()) return fail("etcd " + endpoint + path + ": the reply is not a JSON object");
    return reply;
  }
  return fail("cannot reach etcd (" + errors + ")");
}

Result<std::pair<std::vector<EtcdKeyValue>, std::int64_t>> EtcdClient::range_prefix(const std::string& prefix) const {
  auto reply = call("/v3/kv/range", {{"key", base64_encode(prefix)}, {"range_end", base64_encode(prefix_end(prefix))}});
  if (!reply) return fail(reply.error());
  std::vector<EtcdKeyValue> out;
  if (reply->contains("kvs") && (*reply)["kvs"].is_array())
    for (const auto& kv : (*reply)["kvs"]) out.push_back(parse_kv(kv));
  return std::make_pair(std::move(out), header_revision(*reply));
}

Result<std::vector<EtcdKeyValue>> EtcdClient::get(const std::string& key) const {
  auto reply = call("/v3/kv/range", {{"key", base64_encode(key)}});
  if (!reply) return fail(reply.error());
  std::vector<EtcdKeyValue> out;
  if (reply->contains("kvs") && (*reply)["kvs"].is_array())
    for (const auto& kv : (*reply)["kvs"]) out.push_back(parse_kv(kv));
  return out;
}

Result<bool> EtcdClient::put_if(const std::string& key, const std::string* value, std::int64_t expected) const {
  nlohmann::json op = value ? nlohmann::json{{"request_put", {{"key", base64_encode(key)}, {"value", base64_encode(*value)}}}}
                            : nlohmann::json{{"request_delete_range", {{"key", base64_encode(key)}}}};
  nlohmann::json txn{{"compare",
                      {{{"key", base64_encode(key)},
                        {"target", "MOD"},
                        {"result", "EQUAL"},
                        {"mod_revision", std::to_string(expected)}}}},
                     {"success", {op}}};
  auto reply = call("/v3/kv/txn", txn);
  if (!reply) return fail(reply.error());
  return reply->value("succeeded", false);
}

Result<void> EtcdClient::put(const std::string& key, const std::string& value) const {
  auto reply = call("/v3/kv/put", {{"key", base64_encode(key)}, {"value", base64_encode(value)}});
  if (!reply) return fail(reply.error());
  return {};
}

EtcdClient::WatchEnd EtcdClient::watch_prefix(
    const std::string& prefix, std::int64_t start_revision, const std::atomic<bool>& stop,
    const std::function<void(const std::vector<EtcdEvent>&, std::int64_t revision)>& on_events,
    const std::function<void()>& on_created) const {
  WatchEnd end;
  const std::string payload = nlohmann::json{{"create_request",
                                              {{"key", base64_encode(prefix)},
                                               {"range_end", base64_encode(prefix_end(prefix))},
                                               {"start_revision", std::to_string(start_revision)}}}}
                                  .dump();
  std::string errors;
  for (const auto& endpoint : endpoints_) {
    if (stop) break;
    CurlPtr curl(curl_easy_init(), curl_easy_cleanup);
    if (!curl) return {"cannot create an HTTP handle", false};
    Transfer t;
    t.limit = max_watch_line;
    t.stop = &stop;
    bool cancelled = false;
    bool delivered = false;  // then the caller resumes from a later revision than this call's
    t.on_line = [&](const std::string& line) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_object()) return true;
      if (j.contains("error")) {
        end.error = "watch error from " + endpoint;
        return false;
      }
      const auto& r = j.contains("result") ? j["result"] : j;
      if (r.value("created", false) && on_created) on_created();
      if (r.value("canceled", false)) {
        cancelled = true;
        end.compacted = r.contains("compact_revision") && as_int64(r["compact_revision"]) > 0;
        end.error = "etcd cancelled the watch" + std::string(end.compacted ? " (revision compacted)" : "");
        return false;
      }
      std::vector<EtcdEvent> events;
      if (r.contains("events") && r["events"].is_array())
        for (const auto& e : r["events"]) {
          EtcdEvent ev;
          ev.deleted = e.value("type", std::string()) == "DELETE";
          if (e.contains("kv")) ev.kv = parse_kv(e["kv"]);
          events.push_back(std::move(ev));
        }
      if (!events.empty()) {
        delivered = true;
        on_events(events, header_revision(r));
      }
      return !stop.load();
    };
    HeaderList headers(curl_slist_append(nullptr, "Content-Type: application/json"), curl_slist_free_all);
    const std::string url = endpoint + "/v3/watch";
    char errbuf[CURL_ERROR_SIZE] = {};
    post_json(curl.get(), url, headers.get(), payload, t, errbuf, ca_file_, cert_file_, key_file_);
    curl_easy_setopt(curl.get(), CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(curl.get(), CURLOPT_XFERINFODATA, &t);
    curl_easy_setopt(curl.get(), CURLOPT_NOPROGRESS, 0L);
    // A watch is idle for as long as the registry does not change: TCP
    // keepalive finds a peer that went away.
    curl_easy_setopt(curl.get(), CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(curl.get(), CURLOPT_TCP_KEEPIDLE, 5L);
    curl_easy_setopt(curl.get(), CURLOPT_TCP_KEEPINTVL, 2L);
    CURLcode rc = curl_easy_perform(curl.get());
    if (stop || cancelled || !end.error.empty()) return end;
    if (rc == CURLE_OK) {
      end.error = "etcd " + endpoint + " ended the watch";
      return end;
    }
    errors += (errors.empty() ? "" : "; ") + endpoint + ": " + (errbuf[0] ? errbuf : curl_easy_strerror(rc));
    if (delivered) break;
  }
  end.error = errors.empty() ? "stopped" : "watch: " + errors;
  return end;
}

}  // namespace clusterconnect::relay
