#include "registry_store.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <condition_variable>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <spdlog/spdlog.h>

#include "clusterconnect/ascii.hpp"
#include "clusterconnect/certificates.hpp"
#include "etcd_client.hpp"
#include "relay_metrics.hpp"

namespace clusterconnect::relay {

std::string ClusterName::resource_id() const {
  return "/subscriptions/" + subscription + "/resourceGroups/" + resource_group +
         "/providers/Microsoft.Kubernetes/connectedClusters/" + name;
}

bool ClusterName::matches(const nlohmann::json& record) const {
  auto field = [&](const char* f) {
    return record.contains(f) && record[f].is_string() ? record[f].get<std::string>() : std::string();
  };
  return record.is_object() && ascii_iequals(field("subscription"), subscription) &&
         ascii_iequals(field("resource_group"), resource_group) && ascii_iequals(field("name"), name);
}

std::shared_ptr<const Registry> RegistryStore::snapshot() const {
  std::lock_guard lock(mutex_);
  return current_;
}

void RegistryStore::on_change(ChangeListener listener) {
  std::lock_guard lock(mutex_);
  listener_ = std::move(listener);
}

void RegistryStore::publish(std::shared_ptr<const Registry> next) {
  std::shared_ptr<const Registry> before;
  ChangeListener listener;
  {
    std::lock_guard lock(mutex_);
    before = std::exchange(current_, next);
    listener = listener_;
  }
  if (listener) listener(*before, *next);
}

Registry RegistryStore::without(const Registry& registry, const ClusterName& cluster) {
  Registry r;
  r.role_definitions = registry.role_definitions;
  for (const auto& c : registry.clusters)
    if (!(ascii_iequals(c.subscription, cluster.subscription) && ascii_iequals(c.resource_group, cluster.resource_group) &&
          ascii_iequals(c.name, cluster.name)))
      r.clusters.push_back(c);
  return r;
}

// ---------------------------------------------------------------------------
// The file store.

namespace {

// What the file store watches: the file and every secret file it names.
std::string file_signature(const std::filesystem::path& file, const Registry* registry) {
  std::string sig;
  auto add = [&sig](const std::filesystem::path& p) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) {
      sig += p.string() + ":-;";
      return;
    }
    sig += p.string() + ":" + std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + ":" +
           std::to_string(st.st_size) + ":" + std::to_string(st.st_ino) + ";";
  };
  add(file);
  if (registry)
    for (const auto& c : registry->clusters)
      for (const auto& k : c.keys)
        if (!k.secret_file.empty()) add(k.secret_file);
  return sig;
}

nlohmann::json read_json_file(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) throw std::runtime_error("cannot read relay config " + file.string());
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) throw std::runtime_error("relay config " + file.string() + " is not valid JSON");
  return j;
}

std::string safe_file_part(std::string s) {
  for (auto& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') c = '_';
  return s;
}

class FileStore final : public RegistryStore {
 public:
  FileStore(std::filesystem::path file, std::shared_ptr<spdlog::logger> logger)
      : file_(std::filesystem::absolute(std::move(file))), logger_(std::move(logger)) {
    auto config = std::make_shared<RelayConfig>(load_relay_config(file_));
    signature_ = file_signature(file_, config.get());
    publish(std::make_shared<Registry>(static_cast<const Registry&>(*config)));
  }
  ~FileStore() override { stop(); }

  std::string describe() const override { return "file " + file_.string(); }

  std::vector<nlohmann::json> cluster_records() const override {
    auto j = read_json_file(file_);
    std::vector<nlohmann::json> out;
    if (j.contains("clusters") && j["clusters"].is_array())
      for (const auto& c : j["clusters"]) out.push_back(c);
    return out;
  }

  void edit_cluster(const ClusterName& cluster, const RecordEdit& edit) override {
    auto j = read_json_file(file_);
    if (!j.is_object()) throw std::runtime_error(file_.string() + ": the top level must be a JSON object");
    if (!j.contains("clusters")) j["clusters"] = nlohmann::json::array();
    auto& clusters = j["clusters"];
    if (!clusters.is_array()) throw std::runtime_error(file_.string() + ": \"clusters\" must be an array");
    auto it = std::find_if(clusters.begin(), clusters.end(), [&](const nlohmann::json& c) { return cluster.matches(c); });
    nlohmann::json current = it == clusters.end() ? nlohmann::json() : *it;
    nlohmann::json next = edit(current);
    if (next.is_null()) {
      if (it != clusters.end()) clusters.erase(it);
    } else if (it != clusters.end()) {
      *it = next;
    } else {
      clusters.push_back(next);
    }
    // The whole file must still load, or nothing is written.
    try {
      parse_relay_config(j, file_.parent_path());
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(file_.string() + ": " + e.what());
    }
    // Mode 0600 whether or not the file holds secrets inline; atomic, so a
    // failed write leaves the old file (and a running relay reads either).
    if (auto r = tls::write_private_file(file_, j.dump(2) + "\n"); !r) throw std::runtime_error(r.error());
  }

  nlohmann::json store_secret(const ClusterName& cluster, const std::string& key_name, const std::string& secret) override {
    // The existing convention: secret_file beside the configuration, 0600.
    const std::string name =
        safe_file_part(cluster.resource_group) + "." + safe_file_part(cluster.name) + "." + safe_file_part(key_name) + ".key";
    if (auto r = tls::write_private_file(file_.parent_path() / name, secret + "\n"); !r) throw std::runtime_error(r.error());
    return {{"secret_file", name}};
  }

  void start_watching() override {
    thread_ = std::thread([this] { run(); });
  }

  void stop() noexcept override {
    {
      std::lock_guard lock(stop_mutex_);
      stopping_ = true;
    }
    stop_cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void run() {
    for (;;) {
      {
        std::unique_lock lock(stop_mutex_);
        if (stop_cv_.wait_for(lock, std::chrono::milliseconds(250), [this] { return stopping_; })) return;
      }
      auto current = snapshot();
      const auto sig = file_signature(file_, current.get());
      if (sig == signature_) continue;
      signature_ = sig;
      try {
        auto config = load_relay_config(file_);
        signature_ = file_signature(file_, &config);
        publish(std::make_shared<Registry>(static_cast<const Registry&>(config)));
        logger_->info("registry reloaded from {} ({} cluster(s))", file_.string(), config.clusters.size());
      } catch (const std::exception& e) {
        logger_->error("registry not reloaded, the previous one stays in force: {}", e.what());
      }
    }
  }

  std::filesystem::path file_;
  std::shared_ptr<spdlog::logger> logger_;
  std::string signature_;
  std::thread thread_;
  std::mutex stop_mutex_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
};

// ---------------------------------------------------------------------------
// The etcd store.

std::string lower(std::string s) { return ascii_lowered(std::move(s)); }

// The registry from every record: role definitions first, then clusters in
// key order. A record that does not parse (or collides with one before
// it) is left out and named once per revision.
Registry build_registry(const std::map<std::string, EtcdKeyValue>& records, const std::string& prefix,
                      std::map<std::string, std::string>* refused) {
  Registry reg;
  const std::string roles = prefix + "roles/";
  const std::string clusters = prefix + "clusters/";
  for (const auto& [key, kv] : records) {
    if (key.rfind(roles, 0) != 0) continue;
    try {
      auto j = nlohmann::json::parse(kv.value, nullptr, false);
      if (j.is_discarded()) throw std::runtime_error("not valid JSON");
      reg.role_definitions.push_back(parse_role_definition(j, "role definition", reg));
    } catch (const std::exception& e) {
      if (refused) (*refused)[key] = e.what();
    }
  }
  for (const auto& [key, kv] : records) {
    if (key.rfind(clusters, 0) != 0) continue;
    try {
      // Never the parser's own message: it quotes the text, secrets included.
      auto j = nlohmann::json::parse(kv.value, nullptr, false);
      if (j.is_discarded()) throw std::runtime_error("not valid JSON");
      reg.clusters.push_back(parse_cluster_entry(j, "cluster record", reg, {}));
    } catch (const std::exception& e) {
      if (refused) (*refused)[key] = e.what();
    }
  }
  return reg;
}


// The registry is the records under clusters/ and roles/; the rest of the
// prefix (replicas/: members, control channels, agent reports) changes with
// every agent that connects and is none of the registry's business.
bool registry_key(const std::string& key, const std::string& prefix) {
  return key.size() > prefix.size() && key.compare(0, prefix.size(), prefix) == 0 &&
         (key.compare(prefix.size(), 9, "clusters/") == 0 || key.compare(prefix.size(), 6, "roles/") == 0);
}

class EtcdStore final : public RegistryStore {
 public:
  EtcdStore(EtcdOptions options, std::shared_ptr<spdlog::logger> logger, RelayMetrics* metrics)
      : options_(std::move(options)), client_(options_), logger_(std::move(logger)), metrics_(metrics) {
    load_all();
  }
  ~EtcdStore() override { stop(); }

  std::string describe() const override { return "etcd " + client_.endpoints_text() + " (prefix " + options_.prefix + ")"; }

  std::vector<nlohmann::json> cluster_records() const override {
    auto r = client_.range_prefix(options_.prefix + "clusters/");
    if (!r) throw std::runtime_error(r.error());
    std::vector<nlohmann::json> out;
    for (const auto& kv : r->first) {
      auto j = nlohmann::json::parse(kv.value, nullptr, false);
      if (j.is_object()) out.push_back(std::move(j));
    }
    return out;
  }

  void edit_cluster(const ClusterName& cluster, const RecordEdit& edit) override {
    const std::string key = etcd_cluster_key(options_.prefix, cluster);
    for (int attempt = 0; attempt < 10; ++attempt) {
      auto got = client_.get(key);
      if (!got) throw std::runtime_error(got.error());
      nlohmann::json current;
      std::int64_t revision = 0;
      if (!got->empty()) {
        revision = got->front().mod_revision;
        current = nlohmann::json::parse(got->front().value, nullptr, false);
        if (current.is_discarded()) throw std::runtime_error("etcd record " + key + " is not valid JSON; remove it first");
      }
      nlohmann::json next = edit(current);
      std::string text;
      if (!next.is_null()) {
        // Checked against the rest of the registry as this store reads it now.
        auto fresh = read_registry();
        Registry others = without(fresh, cluster);
        parse_cluster_entry(next, "record " + key, others, {});
        text = next.dump();
      }
      auto done = client_.put_if(key, next.is_null() ? nullptr : &text, revision);
      if (metrics_) metrics_->store_writes_total.fetch_add(1);
      if (!done) throw std::runtime_error(done.error());
      if (done.value()) return;
    }
    throw std::runtime_error("etcd record " + key + " kept changing under this edit; retry");
  }

  nlohmann::json store_secret(const ClusterName&, const std::string&, const std::string& secret) override {
    return {{"secret", secret}};
  }

  void start_watching() override {
    thread_ = std::thread([this] { run(); });
  }

  void stop() noexcept override {
    {
      std::lock_guard lock(stop_mutex_);
      stopping_ = true;
    }
    stop_flag_ = true;  // ends a watch in progress (libcurl's progress callback)
    stop_cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  // Reads the whole prefix: the records and the revision to watch from.
  void load_all() {
    auto r = client_.range_prefix(options_.prefix);
    if (!r) throw std::runtime_error("registry store " + describe() + ": " + r.error());
    records_.clear();
    for (auto& kv : r->first)
      if (registry_key(kv.key, options_.prefix)) records_[kv.key] = std::move(kv);
    revision_ = r->second;
    rebuild();
  }

  Registry read_registry() const {
    auto r = client_.range_prefix(options_.prefix);
    if (!r) throw std::runtime_error(r.error());
    std::map<std::string, EtcdKeyValue> fresh;
    for (auto& kv : r->first) fresh[kv.key] = std::move(kv);
    return build_registry(fresh, options_.prefix, nullptr);
  }

  void rebuild() {
    std::map<std::string, std::string> refused;
    auto reg = std::make_shared<Registry>(build_registry(records_, options_.prefix, &refused));
    for (const auto& [key, why] : refused) {
      const auto rev = records_.count(key) ? records_.at(key).mod_revision : 0;
      auto it = reported_.find(key);
      if (it != reported_.end() && it->second == rev) continue;
      reported_[key] = rev;
      logger_->error("registry record {} refused: {}", key, why);
      if (metrics_) metrics_->registry_records_refused_total.fetch_add(1);
    }
    std::erase_if(reported_, [&](const auto& kv) { return !refused.count(kv.first); });
    if (metrics_) {
      metrics_->registry_records_refused.store(static_cast<std::int64_t>(refused.size()));
      metrics_->registry_snapshots_total.fetch_add(1);
    }
    publish(std::move(reg));
  }

  void run() {
    // While etcd is away the relay serves from the last registry it read:
    // control channels, rendezvous and tokens keep working; changes wait.
    EtcdOutage outage(logger_, "the registry watch on " + describe(),
                      "serving the registry as last read (changes apply once it is back)");
    while (!stopping()) {
      bool live = false;
      auto end = client_.watch_prefix(
          options_.prefix, revision_ + 1, stop_flag_,
          [this](const std::vector<EtcdEvent>& events, std::int64_t revision) {
            bool changed = false;
            for (const auto& e : events) {
              revision_ = std::max(revision_, e.kv.mod_revision);
              if (!registry_key(e.kv.key, options_.prefix)) continue;
              changed = true;
              if (e.deleted) records_.erase(e.kv.key);
              else records_[e.kv.key] = e.kv;
            }
            revision_ = std::max(revision_, revision);
            if (changed) rebuild();
          },
          [&] {
            live = true;
            outage.recovered("registry watch resumed from revision " + std::to_string(revision_ + 1));
          });
      if (stopping()) return;
      if (end.compacted) {
        // The changes since our revision are gone: read everything again.
        logger_->warn("registry watch on {}: {}; reading the whole registry again", describe(), end.error);
        try {
          load_all();
          continue;
        } catch (const std::exception& e) {
          end.error = e.what();
        }
      }
      // A watch that was live and ended is retried at once the first time
      // (etcd may have closed it for its own reasons); then with backoff.
      const auto wait = outage.failed(end.error);
      if (live && wait == EtcdOutage::first_retry) continue;
      std::unique_lock lock(stop_mutex_);
      if (stop_cv_.wait_for(lock, wait, [this] { return stopping_; })) return;
    }
  }

  bool stopping() {
    std::lock_guard lock(stop_mutex_);
    if (stopping_) stop_flag_ = true;
    return stopping_;
  }

  EtcdOptions options_;
  EtcdClient client_;
  std::shared_ptr<spdlog::logger> logger_;
  RelayMetrics* metrics_;
  std::map<std::string, EtcdKeyValue> records_;  // the store thread's (and the constructor's)
  std::map<std::string, std::int64_t> reported_;  // refused records already logged, at their revision
  std::int64_t revision_ = 0;
  std::thread thread_;
  std::mutex stop_mutex_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::atomic<bool> stop_flag_{false};
};

class FixedStore final : public RegistryStore {
 public:
  explicit FixedStore(Registry registry) { publish(std::make_shared<Registry>(std::move(registry))); }
  std::string describe() const override { return "no registry (give --config FILE or --store etcd://…)"; }
  std::vector<nlohmann::json> cluster_records() const override { return {}; }
  void edit_cluster(const ClusterName&, const RecordEdit&) override {
    throw std::runtime_error("no registry to edit: give --config FILE or --store etcd://HOST:PORT");
  }
  nlohmann::json store_secret(const ClusterName&, const std::string&, const std::string&) override {
    throw std::runtime_error("no registry to edit: give --config FILE or --store etcd://HOST:PORT");
  }
  void start_watching() override {}
  void stop() noexcept override {}
};

}  // namespace

std::unique_ptr<RegistryStore> make_fixed_store(Registry registry) { return std::make_unique<FixedStore>(std::move(registry)); }

std::unique_ptr<RegistryStore> make_file_store(std::filesystem::path file, std::shared_ptr<spdlog::logger> logger) {
  return std::make_unique<FileStore>(std::move(file), std::move(logger));
}

EtcdOptions parse_etcd_url(const std::string& url) {
  EtcdOptions o;
  std::string scheme;
  std::string rest;
  if (url.rfind("etcd://", 0) == 0) {
    scheme = "http://";
    rest = url.substr(7);
  } else if (url.rfind("etcds://", 0) == 0) {
    scheme = "https://";
    rest = url.substr(8);
  } else {
    throw std::runtime_error("--store must be etcd://HOST:PORT[,HOST:PORT…] (or etcds:// for TLS), got '" + url + "'");
  }
  std::size_t start = 0;
  while (start <= rest.size()) {
    auto end = rest.find(',', start);
    if (end == std::string::npos) end = rest.size();
    std::string hostport = rest.substr(start, end - start);
    while (!hostport.empty() && hostport.back() == '/') hostport.pop_back();
    if (hostport.empty() || hostport.find_first_of("/?#@ ") != std::string::npos || hostport.rfind(':') == std::string::npos)
      throw std::runtime_error("--store: '" + hostport + "' is not HOST:PORT (in " + url + ")");
    o.endpoints.push_back(scheme + hostport);
    start = end + 1;
  }
  return o;
}

std::unique_ptr<RegistryStore> make_etcd_store(EtcdOptions options, std::shared_ptr<spdlog::logger> logger,
                                               RelayMetrics* metrics) {
  return std::make_unique<EtcdStore>(std::move(options), std::move(logger), metrics);
}

std::string etcd_cluster_key(const std::string& prefix, const ClusterName& cluster) {
  return prefix + "clusters/" + lower(cluster.subscription) + "/" + lower(cluster.resource_group) + "/" + lower(cluster.name);
}

std::string etcd_role_key(const std::string& prefix, const std::string& role) { return prefix + "roles/" + lower(role); }

std::size_t import_file_registry(const std::filesystem::path& from, const EtcdOptions& to) {
  auto config = load_relay_config(from);
  const auto raw = read_json_file(from);
  EtcdClient client(to);
  if (raw.contains("role_definitions"))
    for (const auto& r : raw["role_definitions"])
      if (auto put = client.put(etcd_role_key(to.prefix, r.value("name", std::string())), r.dump()); !put)
        throw std::runtime_error(put.error());
  for (const auto& c : config.clusters) {
    // The record as the file has it, with every secret inline.
    nlohmann::json record = c.raw;
    record["hybrid_connection"] = c.hybrid_connection;
    record["keys"] = nlohmann::json::array();
    for (const auto& k : c.keys) record["keys"].push_back({{"name", k.name}, {"rights", k.rights}, {"secret", k.secret}});
    if (auto put = client.put(etcd_cluster_key(to.prefix, {c.subscription, c.resource_group, c.name}), record.dump()); !put)
      throw std::runtime_error(put.error());
  }
  return config.clusters.size();
}

}  // namespace clusterconnect::relay
