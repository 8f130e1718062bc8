#include "replica_directory.hpp"

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "etcd_client.hpp"
#include "relay_metrics.hpp"

namespace clusterconnect::relay {

namespace {

constexpr std::size_t max_queued_calls = 256;
constexpr std::size_t max_owners_tried = 2;
constexpr std::size_t max_reply = 64 * 1024;
constexpr long connect_timeout_ms = 1000;
constexpr long call_timeout_ms = 2000;

std::string random_hex(std::size_t bytes) {
  std::string raw(bytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()), static_cast<int>(bytes)) != 1)
    throw std::runtime_error("replicas: no random bytes for an id");
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

// "sha256//BASE64" (libcurl's pinned public key) from a hex SHA-256 pin.
std::string curl_pin(const std::string& hex) {
  if (hex.size() != 64) return {};
  std::string raw;
  for (std::size_t i = 0; i < hex.size(); i += 2) raw += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return "sha256//" + base64_encode(raw);
}

std::int64_t as_int64(const nlohmann::json& j) {
  try {
    if (j.is_string()) return std::stoll(j.get<std::string>());
    if (j.is_number_integer()) return j.get<std::int64_t>();
  } catch (...) {
  }
  return 0;
}

// HOST:PORT of https://HOST:PORT[/…].
std::string host_of(const std::string& url) {
  auto start = url.find("://");
  std::string rest = start == std::string::npos ? url : url.substr(start + 3);
  return rest.substr(0, rest.find('/'));
}

std::int64_t unix_seconds(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

// A channels record's value: the count, when the agent was last seen, and
// what it last reported (only the facts it gave).
std::string channel_record(const AgentStatus& s) {
  nlohmann::json j{{"count", s.control_channels}};
  if (s.last_connected) j["last_seen"] = unix_seconds(*s.last_connected);
  const auto& r = s.report;
  nlohmann::json agent = nlohmann::json::object();
  if (!r.agent_version.empty()) agent["agent_version"] = r.agent_version;
  if (!r.kubernetes_version.empty()) agent["kubernetes_version"] = r.kubernetes_version;
  if (r.node_count) agent["node_count"] = *r.node_count;
  if (r.core_count) agent["core_count"] = *r.core_count;
  if (!r.distribution.empty()) agent["distribution"] = r.distribution;
  if (!r.infrastructure.empty()) agent["infrastructure"] = r.infrastructure;
  if (!agent.empty()) j["agent"] = std::move(agent);
  return j.dump();
}

// The record another replica wrote; fields that are missing or malformed
// are left out (the same limits as the listen handshake's headers).
AgentStatus parse_channel_record(const nlohmann::json& j) {
  AgentStatus s;
  if (!j.is_object()) return s;
  if (auto c = j.find("count"); c != j.end() && c->is_number_unsigned()) s.control_channels = c->get<std::size_t>();
  if (auto t = j.find("last_seen"); t != j.end() && t->is_number_integer())
    s.last_connected = std::chrono::system_clock::time_point(std::chrono::seconds(t->get<std::int64_t>()));
  auto a = j.find("agent");
  if (a == j.end() || !a->is_object()) return s;
  auto text = [&](const char* name) {
    auto v = a->find(name);
    if (v == a->end() || !v->is_string() ||
        v->get_ref<const std::string&>().size() > tunnel::rendezvous::max_agent_report_value)
      return std::string();
    return v->get<std::string>();
  };
  auto number = [&](const char* name) -> std::optional<std::uint32_t> {
    auto v = a->find(name);
    if (v == a->end() || !v->is_number_unsigned() || v->get<std::uint64_t>() > UINT32_MAX) return std::nullopt;
    return static_cast<std::uint32_t>(v->get<std::uint64_t>());
  };
  s.report.agent_version = text("agent_version");
  s.report.kubernetes_version = text("kubernetes_version");
  s.report.node_count = number("node_count");
  s.report.core_count = number("core_count");
  s.report.distribution = text("distribution");
  s.report.infrastructure = text("infrastructure");
  return s;
}

size_t collect(char* data, size_t size, size_t n, void* user) {
  auto* out = static_cast<std::string*>(user);
  if (out->size() + size * n > max_reply) return 0;
  out->append(data, size * n);
  return size * n;
}

class EtcdReplicaDirectory final : public ReplicaDirectory {
 public:
  EtcdReplicaDirectory(const EtcdOptions& store, ReplicaOptions options, std::shared_ptr<spdlog::logger> logger)
      : etcd_(store), prefix_(store.prefix + "replicas/"), options_(std::move(options)), logger_(std::move(logger)) {
    if (options_.id.empty()) options_.id = random_hex(8);
    advertise_host_ = host_of(options_.advertise_url);
  }
  ~EtcdReplicaDirectory() override { withdraw(); }

  void begin() {
    // The shared secret: the first replica creates it; every one reads it.
    const std::string secret_key = prefix_ + "secret";
    auto current = etcd_.get(secret_key);
    if (!current) throw std::runtime_error("replicas: " + current.error());
    if (current->empty()) {
      const std::string fresh = random_hex(32);
      auto created = etcd_.put_if(secret_key, &fresh, 0);
      count_write();
      if (!created) throw std::runtime_error("replicas: " + created.error());
      current = etcd_.get(secret_key);
      if (!current || current->empty())
        throw std::runtime_error("replicas: cannot read the replica secret at " + secret_key);
    }
    secret_ = current->front().value;
    if (std::string why; !register_all(why))
      throw std::runtime_error("replicas: cannot register this replica in etcd (" + etcd_.endpoints_text() +
                               "): " + why);
    {
      auto loaded = etcd_.range_prefix(prefix_);
      if (!loaded) throw std::runtime_error("replicas: " + loaded.error());
      load(loaded->first);
      watch_from_ = loaded->second + 1;
    }
    lease_thread_ = std::thread([this] { lease_loop(); });
    watch_thread_ = std::thread([this] { watch_loop(); });
    call_thread_ = std::thread([this] { call_loop(); });
    logger_->info("replica {} registered at {} (lease TTL {} s)", options_.id, options_.advertise_url,
                  options_.ttl.count());
  }

  const std::string& replica_id() const override { return options_.id; }
  const std::string& advertise_host() const override { return advertise_host_; }

  bool remote_channel(const std::string& identity) const override { return !owners(identity).empty(); }

  void forward_accept(const std::string& identity, std::string message, Done done) override {
    {
      std::lock_guard lock(call_mutex_);
      if (!calls_stopping_ && calls_.size() < max_queued_calls) {
        calls_.push_back(Call{identity, std::move(message), std::move(done)});
        call_cv_.notify_one();
        return;
      }
    }
    done(false, "too many calls to other replicas are waiting");
  }

  bool authentic(std::string_view secret) const override {
    return !secret_.empty() && secret.size() == secret_.size() &&
           CRYPTO_memcmp(secret.data(), secret_.data(), secret_.size()) == 0;
  }

  void channels_changed(const std::string& identity, const AgentStatus& here) override {
    std::lock_guard lock(mutex_);
    local_[identity] = here;
    dirty_.insert(identity);
    cv_.notify_all();
  }

  AgentStatus remote_status(const std::string& identity) const override {
    AgentStatus out;
    std::optional<std::chrono::system_clock::time_point> report_time;
    std::lock_guard lock(view_mutex_);
    auto it = published_.find(identity);
    if (it == published_.end()) return out;
    for (const auto& [id, s] : it->second) {
      if (id == options_.id || !members_.count(id)) continue;
      out.control_channels += s.control_channels;
      if (s.last_connected && (!out.last_connected || *s.last_connected > *out.last_connected))
        out.last_connected = s.last_connected;
      if (!s.report.empty() && (!report_time || (s.last_connected && *s.last_connected > *report_time))) {
        out.report = s.report;
        report_time = s.last_connected.value_or(std::chrono::system_clock::time_point{});
      }
    }
    if (out.control_channels > 0) out.last_connected = std::chrono::system_clock::now();
    return out;
  }

  void withdraw() noexcept override {
    if (withdrawn_.exchange(true)) return;
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      cv_.notify_all();
    }
    if (lease_thread_.joinable()) lease_thread_.join();
    // Every record of this replica goes at once: the others stop routing here.
    if (lease_ != 0) {
      auto revoked = etcd_.call("/v3/lease/revoke", {{"ID", std::to_string(lease_)}});
      count_write();
      if (!revoked)
        logger_->warn("replica {}: could not revoke its lease ({}); its records lapse with it", options_.id,
                      revoked.error());
      else
        logger_->info("replica {}: records removed from etcd", options_.id);
    }
    stop_watch_ = true;
    if (watch_thread_.joinable()) watch_thread_.join();
    std::deque<Call> left;
    {
      std::lock_guard lock(call_mutex_);
      calls_stopping_ = true;
      call_cv_.notify_all();
    }
    if (call_thread_.joinable()) call_thread_.join();
    {
      std::lock_guard lock(call_mutex_);
      left.swap(calls_);
    }
    for (auto& c : left) c.done(false, "the relay is shutting down");
  }

 private:
  struct Member {
    std::string url;
    std::string pin;
  };
  struct Call {
    std::string identity;
    std::string message;
    Done done;
  };

  std::string member_key(const std::string& id) const { return prefix_ + "members/" + id; }
  std::string channel_key(const std::string& identity) const {
    return prefix_ + "channels/" + identity + "/" + options_.id;
  }

  void count_write() {
    if (options_.metrics) options_.metrics->store_writes_total.fetch_add(1);
  }

  bool put_leased(const std::string& key, const std::string& value, std::string& why) {
    auto r =
        etcd_.call("/v3/kv/put",
                   {{"key", base64_encode(key)}, {"value", base64_encode(value)}, {"lease", std::to_string(lease_)}});
    count_write();
    if (!r) why = "cannot write " + key + ": " + r.error();
    return r.ok();
  }

  // A new lease with this replica's member record and the record of every
  // cluster whose control channels it held (how many records in `written`).
  bool register_all(std::string& why, std::size_t* written = nullptr) {
    auto grant = etcd_.call("/v3/lease/grant", {{"TTL", options_.ttl.count()}});
    count_write();
    if (!grant) {
      why = "no lease: " + grant.error();
      return false;
    }
    lease_ = as_int64(grant->value("ID", nlohmann::json()));
    if (lease_ == 0) {
      why = "etcd granted no lease id";
      return false;
    }
    if (!put_leased(member_key(options_.id),
                    nlohmann::json{{"url", options_.advertise_url}, {"pin", options_.key_pin}}.dump(), why))
      return false;
    std::map<std::string, AgentStatus> all;
    {
      std::lock_guard lock(mutex_);
      all = local_;
      dirty_.clear();
    }
    for (const auto& [identity, status] : all)
      if (!put_leased(channel_key(identity), channel_record(status), why)) return false;
    if (written) *written = 1 + all.size();
    return true;
  }

  void lease_loop() {
    using Clock = std::chrono::steady_clock;
    EtcdOutage outage(logger_, "replica " + options_.id + "'s lease and records",
                      "rendezvous go on from what this replica knows; its records are written again once etcd is back");
    // Three keepalives per TTL (in milliseconds: a TTL of 2 s is 666 ms apart,
    // not 0 s apart).
    const auto keepalive_every = std::chrono::duration_cast<std::chrono::milliseconds>(options_.ttl) / 3;
    auto next_keepalive = Clock::now() + keepalive_every;
    for (;;) {
      std::map<std::string, AgentStatus> changes;
      {
        std::unique_lock lock(mutex_);
        // Without a lease, changes wait for the next attempt (the backoff's
        // time), not for every channel that comes and goes.
        cv_.wait_until(lock, next_keepalive, [&] { return stopping_ || (lease_ != 0 && !dirty_.empty()); });
        if (stopping_) return;
        if (lease_ != 0) {
          for (const auto& identity : dirty_) changes[identity] = local_[identity];
          dirty_.clear();
        }
      }
      bool ok = true;
      std::string why;
      if (lease_ == 0) {
        std::size_t written = 0;
        ok = register_all(why, &written);
        if (ok)
          outage.recovered("registered again under a new lease (" + std::to_string(written) + " records written)");
      } else {
        for (const auto& [identity, status] : changes)
          ok = ok && put_leased(channel_key(identity), channel_record(status), why);
      }
      if (ok && Clock::now() >= next_keepalive) {
        if (options_.metrics) options_.metrics->store_keepalives_total.fetch_add(1);
        auto kept = etcd_.call("/v3/lease/keepalive", {{"ID", std::to_string(lease_)}});
        if (!kept) {
          why = "keepalive: " + kept.error();
          ok = false;
        } else {
          const auto& result = kept->contains("result") ? (*kept)["result"] : *kept;
          if (as_int64(result.value("TTL", nlohmann::json())) <= 0) {
            // The lease lapsed (etcd was away longer than the TTL): its
            // records are gone; write them again under a new one.
            logger_->warn("replica {}: its lease lapsed; registering again", options_.id);
            lease_ = 0;
            next_keepalive = Clock::now();
            continue;
          }
        }
      }
      if (!ok) {
        // Everything is written again, under a new lease, once etcd answers
        // (a failed put may have left a record stale).
        {
          std::lock_guard lock(mutex_);
          lease_ = 0;
        }
        next_keepalive = Clock::now() + outage.failed(why);
      } else if (Clock::now() >= next_keepalive) {
        next_keepalive = Clock::now() + keepalive_every;
      }
    }
  }

  void load(const std::vector<EtcdKeyValue>& kvs) {
    std::lock_guard lock(view_mutex_);
    members_.clear();
    published_.clear();
    for (const auto& kv : kvs) apply_locked(false, kv);
  }

  void apply_locked(bool deleted, const EtcdKeyValue& kv) {
    if (kv.key.rfind(prefix_, 0) != 0) return;
    const std::string rest = kv.key.substr(prefix_.size());
    if (rest.rfind("members/", 0) == 0) {
      const std::string id = rest.substr(8);
      if (deleted) {
        members_.erase(id);
        return;
      }
      auto j = nlohmann::json::parse(kv.value, nullptr, false);
      if (!j.is_object() || !j.contains("url") || !j["url"].is_string()) {
        logger_->warn("replica record {} is not valid JSON with a url: ignored", kv.key);
        return;
      }
      members_[id] = Member{j["url"].get<std::string>(), j.value("pin", std::string())};
    } else if (rest.rfind("channels/", 0) == 0) {
      const std::string tail = rest.substr(9);
      const auto slash = tail.rfind('/');
      if (slash == std::string::npos) return;
      const std::string identity = tail.substr(0, slash), id = tail.substr(slash + 1);
      if (!deleted) {
        published_[identity][id] = parse_channel_record(nlohmann::json::parse(kv.value, nullptr, false));
      } else if (auto it = published_.find(identity); it != published_.end()) {
        it->second.erase(id);
        if (it->second.empty()) published_.erase(it);
      }
    }
  }

  bool sleep_unless_stopping(std::chrono::steady_clock::duration d) {
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, d, [&] { return stop_watch_.load(); });
    return !stop_watch_;
  }

  void watch_loop() {
    EtcdOutage outage(logger_, "replica " + options_.id + "'s view of the replicas",
                      "connects are forwarded to the replicas as last seen");
    std::int64_t from = watch_from_;
    while (!stop_watch_) {
      std::string why;
      if (from == 0) {
        auto loaded = etcd_.range_prefix(prefix_);
        if (loaded) {
          load(loaded->first);
          from = loaded->second + 1;
        } else {
          why = loaded.error();
        }
      }
      if (from != 0) {
        auto end = etcd_.watch_prefix(
            prefix_, from, stop_watch_,
            [&](const std::vector<EtcdEvent>& events, std::int64_t revision) {
              std::lock_guard lock(view_mutex_);
              for (const auto& e : events) apply_locked(e.deleted, e.kv);
              if (revision > 0) from = revision + 1;
            },
            [&] { outage.recovered("replicas read again and watched"); });
        if (stop_watch_) return;
        why = end.error;
        from = 0;  // read them all again: changes may have been missed
      }
      if (!sleep_unless_stopping(outage.failed(why))) return;
    }
  }

  // Live replicas other than this one that hold a control channel of the
  // cluster, with their records.
  std::vector<std::pair<std::string, Member>> owners(const std::string& identity) const {
    std::vector<std::pair<std::string, Member>> out;
    std::lock_guard lock(view_mutex_);
    auto it = published_.find(identity);
    if (it == published_.end()) return out;
    for (const auto& [id, status] : it->second) {
      if (id == options_.id || status.control_channels == 0) continue;
      if (auto m = members_.find(id); m != members_.end()) out.emplace_back(id, m->second);
    }
    return out;
  }

  void call_loop() {
    CURL* curl = curl_easy_init();  // one handle: its connections to the owners are reused
    std::size_t turn = 0;
    for (;;) {
      Call call;
      {
        std::unique_lock lock(call_mutex_);
        call_cv_.wait(lock, [&] { return calls_stopping_ || !calls_.empty(); });
        if (calls_stopping_) break;
        call = std::move(calls_.front());
        calls_.pop_front();
      }
      auto candidates = owners(call.identity);
      std::string why;
      bool sent = false;
      if (!curl) why = "cannot create an HTTP handle";
      for (std::size_t i = 0; curl && i < std::min(candidates.size(), max_owners_tried) && !sent; ++i) {
        const auto& [id, member] = candidates[(turn + i) % candidates.size()];
        std::string failure;
        sent = post(curl, member, call, failure);
        if (!sent) {
          why += (why.empty() ? "" : "; ") + ("replica " + id + ": " + failure);
          logger_->info("replica {}: forwarding an accept to replica {} failed: {}", options_.id, id, failure);
        }
      }
      ++turn;
      if (candidates.empty()) why = "no replica holds a control channel of the cluster";
      call.done(sent, why);
    }
    if (curl) curl_easy_cleanup(curl);
  }

  bool post(CURL* curl, const Member& member, const Call& call, std::string& why) {
    const std::string pin = curl_pin(member.pin);
    if (pin.empty()) {
      why = "its record has no key pin";
      return false;
    }
    const std::string url = member.url + std::string(replica_accept_path);
    const std::string body = nlohmann::json{{"cluster", call.identity}, {"message", call.message}}.dump();
    curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
    headers = curl_slist_append(headers, (std::string(replica_secret_header) + ": " + secret_).c_str());
    headers = curl_slist_append(headers, (std::string(replica_id_header) + ": " + options_.id).c_str());
    std::string reply;
    char errbuf[CURL_ERROR_SIZE] = {};
    curl_easy_reset(curl);
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &reply);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout_ms);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, call_timeout_ms);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "https");
    // The owner is authenticated by the key it registered in etcd, not by a
    // CA: replicas may run with development or private certificates.
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 0L);
    curl_easy_setopt(curl, CURLOPT_PINNEDPUBLICKEY, pin.c_str());
    const CURLcode rc = curl_easy_perform(curl);
    curl_slist_free_all(headers);
    if (rc != CURLE_OK) {
      why = errbuf[0] ? errbuf : curl_easy_strerror(rc);
      return false;
    }
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    if (status == 200) return true;
    auto j = nlohmann::json::parse(reply, nullptr, false);
    why = "HTTP " + std::to_string(status);
    if (j.is_object() && j.contains("error") && j["error"].is_object() &&
        j["error"].value("message", nlohmann::json()).is_string())
      why += ": " + j["error"]["message"].get<std::string>();
    return false;
  }

  EtcdClient etcd_;
  std::string prefix_;
  ReplicaOptions options_;
  std::string advertise_host_;
  std::string secret_;
  std::shared_ptr<spdlog::logger> logger_;
  std::atomic<bool> withdrawn_{false};

  // The lease and the records under it (the lease thread writes them).
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::int64_t lease_ = 0;
  std::map<std::string, AgentStatus> local_;  // by cluster identity: this replica's channels
  std::set<std::string> dirty_;
  std::thread lease_thread_;

  // Every replica's records, as watched.
  mutable std::mutex view_mutex_;
  std::map<std::string, Member> members_;
  // cluster identity -> replica id -> what that replica published
  std::map<std::string, std::map<std::string, AgentStatus>> published_;
  std::int64_t watch_from_ = 0;
  std::atomic<bool> stop_watch_{false};
  std::thread watch_thread_;

  std::mutex call_mutex_;
  std::condition_variable call_cv_;
  std::deque<Call> calls_;
  bool calls_stopping_ = false;
  std::thread call_thread_;
};

}  // namespace

std::shared_ptr<ReplicaDirectory> ReplicaDirectory::start(const EtcdOptions& store, ReplicaOptions options,
                                                          std::shared_ptr<spdlog::logger> logger) {
  if (options.advertise_url.rfind("https://", 0) != 0)
    throw std::runtime_error(
        "--advertise-url must be https://HOST:PORT (where other replicas and agents reach this one), got '" +
        options.advertise_url + "'");
  if (options.ttl.count() < 2) throw std::runtime_error("--replica-ttl must be at least 2 seconds");
  auto directory = std::make_shared<EtcdReplicaDirectory>(store, std::move(options), std::move(logger));
  directory->begin();
  return directory;
}

}  // namespace clusterconnect::relay
