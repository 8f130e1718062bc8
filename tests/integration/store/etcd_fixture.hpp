#pragma once
// One real etcd member on loopback for the store and replica tests: free
// ports, a temporary data directory, started and stopped by the test.

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "relay_fixture.hpp"
#include "test_env.hpp"

namespace clusterconnect::test {

inline unsigned short free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// One etcd member on loopback, ready (its /health answers true) or the test fails.
class EtcdServer {
 public:
  EtcdServer() {
    const std::string client = "http://127.0.0.1:" + std::to_string(free_port());
    const std::string peer = "http://127.0.0.1:" + std::to_string(free_port());
    url_ = client;
    std::vector<std::string> args = {"/usr/bin/etcd",
                                     "--name",
                                     "t",
                                     "--data-dir",
                                     (dir_.path() / "data").string(),
                                     "--listen-client-urls",
                                     client,
                                     "--advertise-client-urls",
                                     client,
                                     "--listen-peer-urls",
                                     peer,
                                     "--initial-advertise-peer-urls",
                                     peer,
                                     "--initial-cluster",
                                     "t=" + peer};
    pid_ = ::fork();
    if (pid_ == 0) {
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
  ~EtcdServer() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }
  // etcd://127.0.0.1:PORT
  std::string store() const { return "etcd://" + url_.substr(7); }
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
  std::string url_;
  pid_t pid_ = -1;
};

inline bool have_etcd() {
  if (::access("/usr/bin/etcd", X_OK) == 0) return true;
  WARN("skipped: /usr/bin/etcd is not installed (scripts/setup.sh installs etcd-server)");
  return false;
}

}  // namespace clusterconnect::test
