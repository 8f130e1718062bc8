#pragma once
// One real etcd member on loopback for the store and replica tests: free
// ports, a temporary data directory, started and stopped by the test.

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <stdexcept>

#include <openssl/evp.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "relay_fixture.hpp"
#include "test_env.hpp"

namespace clusterconnect::test {

// One etcd member on loopback, ready (its /health answers true) or the test fails.
class EtcdServer {
 public:
  EtcdServer() {
    client_ = "http://127.0.0.1:" + std::to_string(free_port());
    peer_ = "http://127.0.0.1:" + std::to_string(free_port());
    url_ = client_;
    start();
  }
  ~EtcdServer() { stop(SIGTERM); }

  // Starts the member (again: same data directory and ports) and waits
  // until its /health answers true, or the test fails.
  void start() {
    std::vector<std::string> args = {"/usr/bin/etcd",
                                     "--name",
                                     "t",
                                     "--data-dir",
                                     (dir_.path() / "data").string(),
                                     "--listen-client-urls",
                                     client_,
                                     "--advertise-client-urls",
                                     client_,
                                     "--listen-peer-urls",
                                     peer_,
                                     "--initial-advertise-peer-urls",
                                     peer_,
                                     "--initial-cluster",
                                     "t=" + peer_};
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      die_with_parent(parent);
      int fd = ::open((dir_.path() / "etcd.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    const bool ready = wait_until(
        [&] { return run("curl -s --max-time 1 " + url_ + "/health").output.find("\"true\"") != std::string::npos; },
        std::chrono::seconds(20));
    if (!ready) FAIL("etcd did not become healthy in 20 s");
  }
  // Stops the member with `sig` and reaps it (its data directory stays).
  void stop(int sig) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  // etcd://127.0.0.1:PORT
  std::string store() const { return "etcd://" + url_.substr(7); }
  const std::string& url() const { return url_; }
  // How many keys start with `prefix` (-1 when etcd does not answer).
  long count(const std::string& prefix) const {
    std::string end = prefix;
    end.back() = static_cast<char>(end.back() + 1);
    auto r = run("curl -sS --max-time 5 -X POST " + url_ + "/v3/kv/range -d " +
                 quote(nlohmann::json{{"key", b64(prefix)}, {"range_end", b64(end)}, {"count_only", true}}.dump()));
    auto j = nlohmann::json::parse(r.output, nullptr, false);
    if (r.status != 0 || !j.is_object()) return -1;
    return j.contains("count") ? std::stol(j["count"].get<std::string>()) : 0;
  }
  static std::string b64(const std::string& s) {
    std::string out(4 * ((s.size() + 2) / 3), '\0');
    EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(s.data()),
                    static_cast<int>(s.size()));
    return out;
  }
  // The keys under `prefix` with their lease's remaining TTL (-1: the key
  // has a lease etcd no longer knows; 0: no lease); empty when etcd does not answer.
  std::map<std::string, long> lease_ttls(const std::string& prefix) const {
    std::map<std::string, long> out;
    std::string end = prefix;
    end.back() = static_cast<char>(end.back() + 1);
    auto r = run("curl -sS --max-time 5 -X POST " + url_ + "/v3/kv/range -d " +
                 quote(nlohmann::json{{"key", b64(prefix)}, {"range_end", b64(end)}}.dump()));
    auto j = nlohmann::json::parse(r.output, nullptr, false);
    if (r.status != 0 || !j.is_object() || !j.contains("kvs")) return out;
    for (const auto& kv : j["kvs"]) {
      std::string key(3 * kv["key"].get<std::string>().size() / 4 + 3, '\0');
      const auto& k64 = kv["key"].get_ref<const std::string&>();
      int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(key.data()), reinterpret_cast<const unsigned char*>(k64.data()),
                              static_cast<int>(k64.size()));
      key.resize(static_cast<std::size_t>(std::max(n, 0)));
      while (!key.empty() && key.back() == '\0') key.pop_back();  // base64 padding
      const std::string lease = kv.value("lease", std::string("0"));
      long ttl = 0;
      if (lease != "0") {
        auto t = run("curl -sS --max-time 5 -X POST " + url_ + "/v3/lease/timetolive -d " +
                     quote(nlohmann::json{{"ID", lease}}.dump()));
        auto tj = nlohmann::json::parse(t.output, nullptr, false);
        ttl = tj.is_object() && tj.contains("TTL")
                  ? std::stol(tj["TTL"].is_string() ? tj["TTL"].get<std::string>()
                                                    : std::to_string(tj["TTL"].get<long>()))
                  : -1;
      }
      out[key] = ttl;
    }
    return out;
  }
  // The value of `key` as JSON (null when absent or etcd does not answer).
  nlohmann::json get_json(const std::string& key) const {
    auto r = run("curl -sS --max-time 5 -X POST " + url_ + "/v3/kv/range -d " +
                 quote(nlohmann::json{{"key", b64(key)}}.dump()));
    auto j = nlohmann::json::parse(r.output, nullptr, false);
    if (r.status != 0 || !j.is_object() || !j.contains("kvs")) return nullptr;
    const auto& v64 = j["kvs"][0]["value"].get_ref<const std::string&>();
    std::string v(3 * v64.size() / 4 + 3, '\0');
    int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(v.data()), reinterpret_cast<const unsigned char*>(v64.data()),
                            static_cast<int>(v64.size()));
    v.resize(static_cast<std::size_t>(std::max(n, 0)));
    while (!v.empty() && v.back() == '\0') v.pop_back();
    return nlohmann::json::parse(v, nullptr, false);
  }
  // Writes a raw value (base64 on the wire) under `key`.
  void put_raw(const std::string& key, const std::string& value) const {
    auto b64 = [](const std::string& s) {
      std::string out(4 * ((s.size() + 2) / 3), '\0');
      EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(s.data()),
                      static_cast<int>(s.size()));
      return out;
    };
    auto r = run("curl -sS --max-time 5 -X POST " + url_ + "/v3/kv/put -d " +
                 quote(nlohmann::json{{"key", b64(key)}, {"value", b64(value)}}.dump()));
    REQUIRE(r.status == 0);
  }

 private:
  TempDir dir_;
  std::string client_, peer_, url_;
  pid_t pid_ = -1;
};

inline bool have_etcd() {
  if (::access("/usr/bin/etcd", X_OK) == 0) return true;
  WARN("skipped: /usr/bin/etcd is not installed (scripts/setup.sh installs etcd-server)");
  return false;
}

}  // namespace clusterconnect::test
